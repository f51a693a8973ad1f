package fastpath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/pkg/flowhash"
)

// The flow maps from user space: sweeping idle and closed flows, ending a
// target's flows, counting evictions, and reading and decoding entries.

// Sweep removes the flows idle past their service's timeout and calls live
// for each flow that stays. A flow is idle when neither direction has moved.
// The maps are read in batches, a few system calls for a whole table.
func (p *Path) Sweep(live func(Flow)) (expired int, err error) {
	p.mu.Lock()
	idle := make([]uint64, len(p.svcs))
	for i, s := range p.svcs {
		idle[i] = uint64(s.idle)
	}
	p.mu.Unlock()
	removed := make([]uint64, len(idle))
	var errs []error
	for _, fp := range p.fams {
		for _, m := range fp.flowMaps(p.opts.Protocol) {
			n, err := fp.sweep(m, m == fp.syn, &p.opts, idle, removed, live)
			expired += n
			errs = append(errs, err)
		}
	}
	addRemoved(p, removed)
	return expired, errors.Join(errs...)
}

// addRemoved adds to each service's count of flows removed by user space.
func addRemoved(p *Path, removed []uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, n := range removed {
		if i < len(p.svcs) {
			p.svcs[i].removed += n
		}
	}
}

// Evicted is how many of service id's flows the kernel evicted to make room
// (the flow maps are LRU hashes), given live, the flows the last Sweep saw:
// every flow made and not removed by a sweep or EndFlowsTo, nor alive.
func (p *Path) Evicted(id, live int) uint64 {
	st, err := p.Stats(id)
	if err != nil {
		return 0
	}
	p.mu.Lock()
	gone := p.svcs[id].removed + uint64(live)
	p.mu.Unlock()
	if st.NewFlows < gone {
		return 0
	}
	return st.NewFlows - gone
}

// flowMaps are the maps that hold a family's flows: for TCP, the
// established and the embryonic ones.
func (fp *famPath) flowMaps(proto uint8) []*ebpf.Map {
	if proto == flowhash.ProtoTCP {
		return []*ebpf.Map{fp.flows, fp.syn}
	}
	return []*ebpf.Map{fp.flows}
}

// sweep removes the idle flows of one of a family's flow maps (embryonic:
// TCP's map of incomplete handshakes). A TCP flow is idle after its
// service's timeout, TCPSynTimeout while embryonic, or TCPLinger once
// closed (o's timeouts).
func (fp *famPath) sweep(m *ebpf.Map, embryonic bool, o *Options, idle, removed []uint64, live func(Flow)) (expired int, err error) {
	type entry struct {
		key, val []byte
		last     uint64
	}
	type reply struct {
		last  uint64
		flags uint16 // the whole service field
	}
	var fwd []entry
	replied := map[string]reply{}
	now := monotonic()
	err = fp.readAll(m, func(k, v []byte) {
		last := fp.last(v)
		if svc := fp.svc(v); svc&replyFlag != 0 {
			replied[string(k)] = reply{last, svc}
		} else {
			fwd = append(fwd, entry{bytes.Clone(k), bytes.Clone(v), last})
		}
	})
	if err != nil {
		return 0, err
	}
	isIdle := func(flags uint16, last uint64) bool {
		svc := int(flags & svcMask)
		if svc >= len(idle) || now < last {
			return false
		}
		limit := idle[svc]
		switch {
		case flags&closedFlag != 0:
			limit = min(limit, uint64(o.TCPLinger))
		case embryonic:
			limit = min(limit, uint64(o.TCPSynTimeout))
		}
		return now-last > limit
	}
	val := make([]byte, fp.f.valSize)
	var errs []error
	for _, e := range fwd {
		f := fp.decode(e.key, e.val)
		rkey := fp.reverseKey(e.key, e.val)
		r, paired := replied[string(rkey)]
		delete(replied, string(rkey))
		if !isIdle(fp.svc(e.val)|r.flags&closedFlag, max(e.last, r.last)) {
			if live != nil {
				live(f)
			}
			continue
		}
		if m.LookupAndDelete(e.key, val) != nil {
			continue
		}
		if fp.last(val) != e.last {
			// A datagram came since the read: the flow lives on. (If the
			// program made the entry again meanwhile, that one stands.)
			if err := m.Update(e.key, val, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
				errs = append(errs, fmt.Errorf("fastpath: restoring a live flow: %w", err))
			}
			if live != nil {
				live(f)
			}
			continue
		}
		if paired {
			errs = append(errs, deleteFlow(m, rkey))
		}
		expired++
		removed[f.Service]++
	}
	// Target-side entries whose client side was evicted: their flow is
	// gone, and once idle they only hold a place.
	for k, r := range replied {
		if isIdle(r.flags, r.last) {
			errs = append(errs, deleteFlow(m, []byte(k)))
		}
	}
	return expired, errors.Join(errs...)
}

// deleteFlow deletes a flow entry; one that is gone already (the program,
// an eviction or another sweep took it) is no error.
func deleteFlow(m *ebpf.Map, key []byte) error {
	if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("fastpath: deleting a flow entry: %w", err)
	}
	return nil
}

// EndFlowsTo removes every flow pinned to one of targets, both of its
// entries, and returns how many there were. Each flow map is read once,
// however many targets: a group that fails at once ends all its targets'
// flows in one pass. The clients' next datagrams make new flows.
func (p *Path) EndFlowsTo(targets ...netip.AddrPort) (int, error) {
	var want [2]map[string]bool // per family: the targets' encoded addresses
	for _, t := range targets {
		t = netip.AddrPortFrom(t.Addr().Unmap(), t.Port())
		i := 0
		if !t.Addr().Is4() {
			i = 1
		}
		b := make([]byte, p.fams[i].f.addrLen+2)
		putAddr(b, t)
		if want[i] == nil {
			want[i] = map[string]bool{}
		}
		want[i][string(b)] = true
	}
	n := 0
	var errs []error
	removed := make([]uint64, len(p.svcs))
	for i, fp := range p.fams {
		if want[i] == nil {
			continue
		}
		size := fp.f.addrLen + 2
		for _, m := range fp.flowMaps(p.opts.Protocol) {
			var keys, rkeys, vals [][]byte
			err := fp.readAll(m, func(k, v []byte) {
				if fp.svc(v)&replyFlag == 0 && want[i][string(v[:size])] {
					keys, rkeys, vals = append(keys, bytes.Clone(k)), append(rkeys, fp.reverseKey(k, v)), append(vals, bytes.Clone(v))
				}
			})
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for j := range keys {
				err := m.Delete(keys[j])
				if err == nil {
					n++
					if svc := int(fp.svc(vals[j]) & svcMask); svc < len(removed) {
						removed[svc]++
					}
				} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
					errs = append(errs, fmt.Errorf("fastpath: deleting a flow entry: %w", err))
				}
				errs = append(errs, deleteFlow(m, rkeys[j]))
			}
		}
	}
	addRemoved(p, removed)
	return n, errors.Join(errs...)
}

// List calls fn for each flow the maps hold (its client-side entry), until
// fn returns false. It reads the maps and changes nothing.
func (p *Path) List(fn func(Flow) bool) error {
	now := monotonic()
	more := true
	for _, fp := range p.fams {
		for _, m := range fp.flowMaps(p.opts.Protocol) {
			if !more {
				return nil
			}
			err := fp.readAll(m, func(k, v []byte) {
				if !more || fp.svc(v)&replyFlag != 0 {
					return
				}
				f := fp.decode(k, v)
				if last := fp.last(v); now > last {
					f.Idle = time.Duration(now - last)
				}
				more = fn(f)
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// readAll calls fn for every entry of one of the family's flow maps. The
// slices are only valid during the call: fn copies what it keeps.
func (fp *famPath) readAll(m *ebpf.Map, fn func(k, v []byte)) error {
	if fp.f.keySize == ipv4.keySize {
		return readBatch(m, func(k flowKey4, v flowVal4) { fn(k[:], v[:]) })
	}
	return readBatch(m, func(k flowKey6, v flowVal6) { fn(k[:], v[:]) })
}

// readBatch reads a whole map in batches of fixed-size keys and values.
func readBatch[K, V any](m *ebpf.Map, fn func(K, V)) error {
	const chunk = 4096
	keys := make([]K, chunk)
	vals := make([]V, chunk)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			fn(keys[i], vals[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("fastpath: reading flows: %w", err)
		}
	}
}

func (fp *famPath) addr(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b[:fp.f.addrLen])
	return a
}

func (fp *famPath) svc(v []byte) uint16 { return binary.NativeEndian.Uint16(v[fp.f.svcOff:]) }

func (fp *famPath) last(v []byte) uint64 { return binary.NativeEndian.Uint64(v[fp.f.lastOff:]) }

func (fp *famPath) decode(key, val []byte) Flow {
	a := int(fp.f.addrLen)
	return Flow{
		Service: int(fp.svc(val) & svcMask),
		Client:  netip.AddrPortFrom(fp.addr(key), binary.BigEndian.Uint16(key[2*a:])),
		Target:  netip.AddrPortFrom(fp.addr(val), binary.BigEndian.Uint16(val[a:])),
	}
}

// reverseKey is the target-side tuple of a flow: target, client, target
// port, client port.
func (fp *famPath) reverseKey(key, val []byte) []byte {
	a := int(fp.f.addrLen)
	r := make([]byte, fp.f.keySize)
	copy(r[0:a], val[0:a])
	copy(r[a:2*a], key[0:a])
	copy(r[2*a:2*a+2], val[a:a+2])
	copy(r[2*a+2:2*a+4], key[2*a:2*a+2])
	return r
}

// monotonic is the clock bpf_ktime_get_ns reads.
func monotonic() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}
