// Package fastpath forwards UDP flows inside the kernel: a tc ingress
// program (tcx) rewrites the destination of a client's datagrams to the
// flow's target before routing, and an egress program rewrites the source of
// the target's replies back to the listener address after routing, so a
// datagram costs l4lb no system call at all.
//
// It is the kernel half of a UDP listener whose target group preserves the
// client IP (the target sees the client's own address, as it would with
// preserve_client_ip in user space) and sends no PROXY header. The user-space
// listener stays bound and takes whatever the program passes on: IPv6,
// fragments, IPv4 options.
//
// A first datagram picks its target exactly as user space does (same flow
// hash, same Maglev table, which user space writes into the kernel on every
// change), and the flow is then pinned in a bounded flow map: a full map
// refuses new flows and counts them. Flows idle past their listener's
// timeout are swept from user space.
//
//	p, err := fastpath.New(fastpath.Options{MaxFlows: 65536, Services: 4})
//	id, err := p.AddService(vip, 120*time.Second, false)
//	err = p.SetTable(id, slots) // one target per Maglev slot
//	err = p.Attach("lo")
package fastpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/pkg/maglev"
)

// Options size the kernel maps; they are fixed for the life of a Path.
type Options struct {
	MaxFlows int // flows pinned at once (default 65536)
	Services int // listener addresses served (default 16)
}

// Path is the loaded program, its maps and its attachments.
type Path struct {
	opts                           Options
	services, tables, flows, stats *ebpf.Map
	ingress, egress                *ebpf.Program

	mu    sync.Mutex
	links []link.Link
	svcs  []*service
}

type service struct {
	vip    netip.AddrPort
	idle   time.Duration
	sticky bool
	active int // which of the service's two tables the program reads
}

// Stats are one service's counters since the Path was made.
type Stats struct {
	PacketsIn, BytesIn   uint64 // client → target
	PacketsOut, BytesOut uint64 // target → client
	NewFlows             uint64
	RefusedFull          uint64 // the flow map was full
	RefusedNoTarget      uint64 // the table had no target
	RefusedCollision     uint64 // another listener's flow holds the same target-side tuple
}

// Flow is one pinned flow, as the sweep sees it.
type Flow struct {
	Service int
	Client  netip.AddrPort
	Target  netip.AddrPort
}

// ErrUnsupported means the kernel refused the program or its maps (no BPF,
// no tcx, or not permitted).
var ErrUnsupported = errors.New("fastpath: kernel UDP fast path unavailable")

// New loads the program with empty maps. It attaches nowhere yet.
func New(opts Options) (*Path, error) {
	if opts.MaxFlows <= 0 {
		opts.MaxFlows = 65536
	}
	if opts.Services <= 0 {
		opts.Services = 16
	}
	if opts.Services > svcMask {
		return nil, fmt.Errorf("fastpath: %d services; at most %d", opts.Services, svcMask)
	}
	p := &Path{opts: opts}
	specs := []struct {
		m    **ebpf.Map
		spec ebpf.MapSpec
	}{
		{&p.services, ebpf.MapSpec{Name: "l4lb_svcs", Type: ebpf.Hash, KeySize: 8, ValueSize: svcValSize, MaxEntries: uint32(opts.Services)}},
		{&p.tables, ebpf.MapSpec{Name: "l4lb_tables", Type: ebpf.Array, KeySize: 4, ValueSize: slotValSize, MaxEntries: uint32(2 * opts.Services * maglev.DefaultSize)}},
		// Each flow has two entries: client side and target side.
		{&p.flows, ebpf.MapSpec{Name: "l4lb_flows", Type: ebpf.Hash, KeySize: flowKeySize, ValueSize: flowValSize, MaxEntries: uint32(2 * opts.MaxFlows), Flags: flowMapFlags(opts.MaxFlows)}},
		{&p.stats, ebpf.MapSpec{Name: "l4lb_stats", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: statValSize, MaxEntries: uint32(opts.Services * statKinds)}},
	}
	for _, s := range specs {
		m, err := ebpf.NewMap(&s.spec)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("%w: map %s: %v", ErrUnsupported, s.spec.Name, err)
		}
		*s.m = m
	}
	m := maps{p.services.FD(), p.tables.FD(), p.flows.FD(), p.stats.FD()}
	for _, side := range []struct {
		prog   **ebpf.Program
		name   string
		egress bool
	}{{&p.ingress, "l4lb_udp_in", false}, {&p.egress, "l4lb_udp_out", true}} {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name:         side.name,
			Type:         ebpf.SchedCLS,
			License:      "Apache-2.0",
			Instructions: program(m, side.egress),
		})
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("%w: program %s: %v", ErrUnsupported, side.name, err)
		}
		*side.prog = prog
	}
	return p, nil
}

// AddService serves a listener address: datagrams to it are forwarded once
// SetTable has given it targets. It returns the service's id.
func (p *Path) AddService(vip netip.AddrPort, idle time.Duration, sticky bool) (int, error) {
	if !vip.Addr().Is4() || vip.Addr().IsUnspecified() {
		return 0, fmt.Errorf("fastpath: %s: only a specific IPv4 address can be served", vip)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.svcs) == p.opts.Services {
		return 0, fmt.Errorf("fastpath: %s: all %d services in use", vip, p.opts.Services)
	}
	for _, s := range p.svcs {
		if s.vip == vip {
			return 0, fmt.Errorf("fastpath: %s served twice", vip)
		}
	}
	p.svcs = append(p.svcs, &service{vip: vip, idle: idle, sticky: sticky})
	return len(p.svcs) - 1, nil
}

// SetTable gives service id its Maglev table: the target of every slot
// (maglev.DefaultSize of them), or nil for a service with no usable target.
// The program switches to the new table at once; pinned flows keep their
// targets.
func (p *Path) SetTable(id int, slots []netip.AddrPort) error {
	if slots != nil && len(slots) != maglev.DefaultSize {
		return fmt.Errorf("fastpath: a table has %d slots, not %d", len(slots), maglev.DefaultSize)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.svcs[id]
	next := 1 - s.active
	base := uint32((2*id + next) * maglev.DefaultSize)
	keys := make([]uint32, maglev.DefaultSize)
	vals := make([][slotValSize]byte, maglev.DefaultSize)
	for i := range keys {
		keys[i] = base + uint32(i)
		if slots != nil {
			putAddr(vals[i][:], slots[i])
		}
	}
	if _, err := p.tables.BatchUpdate(keys, vals, nil); err != nil {
		return fmt.Errorf("fastpath: writing table: %w", err)
	}
	var key [8]byte
	putAddr(key[:], s.vip)
	var val [svcValSize]byte
	binary.NativeEndian.PutUint32(val[0:], base)
	if s.sticky {
		binary.NativeEndian.PutUint32(val[4:], svcSticky)
	}
	binary.NativeEndian.PutUint32(val[8:], uint32(id))
	if err := p.services.Update(key, val, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("fastpath: switching table: %w", err)
	}
	s.active = next
	return nil
}

// Attach runs the programs on the named interface (tcx, alongside any other
// programs there): the ingress one where clients' datagrams arrive, the
// egress one where replies leave towards clients. Attach every such
// interface; "lo" serves clients and targets on this host.
func (p *Path) Attach(ifname string) error {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("fastpath: %w", err)
	}
	for _, a := range []struct {
		prog *ebpf.Program
		at   ebpf.AttachType
	}{{p.ingress, ebpf.AttachTCXIngress}, {p.egress, ebpf.AttachTCXEgress}} {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifi.Index, Program: a.prog, Attach: a.at})
		if err != nil {
			return fmt.Errorf("%w: attaching to %s: %v", ErrUnsupported, ifname, err)
		}
		p.mu.Lock()
		p.links = append(p.links, l)
		p.mu.Unlock()
	}
	return nil
}

// Stats returns service id's counters, summed over CPUs.
func (p *Path) Stats(id int) (Stats, error) {
	var st Stats
	dst := []*[2]uint64{
		statForward: {}, statReply: {}, statNewFlow: {}, statFull: {}, statNoTarget: {}, statCollide: {},
	}
	for kind, d := range dst {
		var per [][statValSize]byte
		if err := p.stats.Lookup(uint32(id*statKinds+kind), &per); err != nil {
			return st, fmt.Errorf("fastpath: reading stats: %w", err)
		}
		for _, v := range per {
			d[0] += binary.NativeEndian.Uint64(v[0:])
			d[1] += binary.NativeEndian.Uint64(v[8:])
		}
	}
	st.PacketsIn, st.BytesIn = dst[statForward][0], dst[statForward][1]
	st.PacketsOut, st.BytesOut = dst[statReply][0], dst[statReply][1]
	st.NewFlows = dst[statNewFlow][0]
	st.RefusedFull = dst[statFull][0]
	st.RefusedNoTarget = dst[statNoTarget][0]
	st.RefusedCollision = dst[statCollide][0]
	return st, nil
}

// Sweep removes the flows idle past their service's timeout and calls live
// for each flow that stays. A flow is idle when neither direction has moved.
// The map is read in batches, a few system calls for the whole table.
func (p *Path) Sweep(live func(Flow)) (expired int, err error) {
	p.mu.Lock()
	idle := make([]uint64, len(p.svcs))
	for i, s := range p.svcs {
		idle[i] = uint64(s.idle)
	}
	p.mu.Unlock()
	type entry struct {
		key  [flowKeySize]byte
		val  [flowValSize]byte
		last uint64
	}
	var fwd []entry
	replied := map[[flowKeySize]byte]uint64{}
	now := monotonic()
	err = readAll(p.flows, func(k [flowKeySize]byte, v [flowValSize]byte) {
		last := binary.NativeEndian.Uint64(v[8:])
		if binary.NativeEndian.Uint16(v[6:])&replyFlag != 0 {
			replied[k] = last
		} else {
			fwd = append(fwd, entry{k, v, last})
		}
	})
	if err != nil {
		return 0, err
	}
	var rkey [flowKeySize]byte
	var val [flowValSize]byte
	for _, e := range fwd {
		f := decodeFlow(e.key, e.val)
		reverseKey(&rkey, e.key, e.val)
		last := max(e.last, replied[rkey])
		if f.Service >= len(idle) || now < last || now-last <= idle[f.Service] {
			if live != nil {
				live(f)
			}
			continue
		}
		if p.flows.LookupAndDelete(e.key, &val) != nil {
			continue
		}
		if binary.NativeEndian.Uint64(val[8:]) != e.last {
			// A datagram came since the read: the flow lives on.
			p.flows.Update(e.key, val, ebpf.UpdateNoExist)
			if live != nil {
				live(f)
			}
			continue
		}
		p.flows.Delete(rkey)
		expired++
	}
	return expired, nil
}

// EndFlowsTo removes every flow pinned to target, both of its entries, and
// returns how many there were. The clients' next datagrams make new flows.
func (p *Path) EndFlowsTo(target netip.AddrPort) (int, error) {
	var want [6]byte
	putAddr(want[:], target)
	var keys, rkeys [][flowKeySize]byte
	var rkey [flowKeySize]byte
	err := readAll(p.flows, func(k [flowKeySize]byte, v [flowValSize]byte) {
		if binary.NativeEndian.Uint16(v[6:])&replyFlag == 0 && [6]byte(v[0:6]) == want {
			reverseKey(&rkey, k, v)
			keys, rkeys = append(keys, k), append(rkeys, rkey)
		}
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for i := range keys {
		if p.flows.Delete(keys[i]) == nil {
			n++
		}
		p.flows.Delete(rkeys[i])
	}
	return n, nil
}

// readAll calls fn for every entry of a flow map.
func readAll(m *ebpf.Map, fn func([flowKeySize]byte, [flowValSize]byte)) error {
	const chunk = 4096
	keys := make([][flowKeySize]byte, chunk)
	vals := make([][flowValSize]byte, chunk)
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

// Close detaches the program and frees the maps; pinned flows end with it.
func (p *Path) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	p.links = nil
	for _, prog := range []*ebpf.Program{p.ingress, p.egress} {
		if prog != nil {
			errs = append(errs, prog.Close())
		}
	}
	for _, m := range []*ebpf.Map{p.services, p.tables, p.flows, p.stats} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

// flowMapFlags preallocates the flow map (the fastest kind) up to a million
// flows, about 100 MB of kernel memory; a larger bound allocates entries as
// flows arrive instead of holding gigabytes for a table that may never fill.
func flowMapFlags(maxFlows int) uint32 {
	if maxFlows > 1<<20 {
		return unix.BPF_F_NO_PREALLOC
	}
	return 0
}

// putAddr writes an IPv4 address and port in network order: the layout of
// a slot value and of a service key.
func putAddr(b []byte, a netip.AddrPort) {
	ip := a.Addr().As4()
	copy(b[0:4], ip[:])
	binary.BigEndian.PutUint16(b[4:6], a.Port())
}

func decodeFlow(key [flowKeySize]byte, val [flowValSize]byte) Flow {
	return Flow{
		Service: int(binary.NativeEndian.Uint16(val[6:]) & svcMask),
		Client:  netip.AddrPortFrom(netip.AddrFrom4([4]byte(key[0:4])), binary.BigEndian.Uint16(key[8:])),
		Target:  netip.AddrPortFrom(netip.AddrFrom4([4]byte(val[0:4])), binary.BigEndian.Uint16(val[4:])),
	}
}

// reverseKey is the target-side tuple of a flow: target, client, target
// port, client port.
func reverseKey(dst *[flowKeySize]byte, key [flowKeySize]byte, val [flowValSize]byte) {
	copy(dst[0:4], val[0:4])
	copy(dst[4:8], key[0:4])
	copy(dst[8:10], val[4:6])
	copy(dst[10:12], key[8:10])
}

// monotonic is the clock bpf_ktime_get_ns reads.
func monotonic() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}
