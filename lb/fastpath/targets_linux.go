package fastpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Resets are the TCP resets a target sent through the kernel path since it
// was first watched.
type Resets struct {
	SYN   uint64 // answers to a SYN: the target refused the connection
	Other uint64 // resets of established flows
}

// WatchTargets sets the TCP targets whose resets the programs count: those
// not counted yet start at zero, and those left out are forgotten. At most
// Options.MaxTargets are watched.
func (p *Path) WatchTargets(targets []netip.AddrPort) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	want := map[netip.AddrPort]bool{}
	for _, t := range targets {
		want[netip.AddrPortFrom(t.Addr().Unmap(), t.Port())] = true
	}
	var errs []error
	for _, fp := range p.fams {
		key := make([]byte, fp.f.slotValSize)
		var have []netip.AddrPort
		it := fp.targets.Iterate()
		var val fastpathBPFTargetStat
		for it.Next(&key, &val) {
			have = append(have, netip.AddrPortFrom(fp.addr(key), binary.BigEndian.Uint16(key[fp.f.addrLen:])))
		}
		errs = append(errs, it.Err())
		for _, t := range have {
			if want[t] {
				delete(want, t)
				continue
			}
			k := make([]byte, fp.f.slotValSize)
			putAddr(k, t)
			if err := fp.targets.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("fastpath: forgetting target %s: %w", t, err))
			}
		}
	}
	for t := range want {
		fp := p.familyOf(t.Addr())
		k := make([]byte, fp.f.slotValSize)
		putAddr(k, t)
		if err := fp.targets.Update(k, &fastpathBPFTargetStat{}, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			errs = append(errs, fmt.Errorf("fastpath: watching target %s: %w", t, err))
		}
	}
	return errors.Join(errs...)
}

// TargetResets reads the reset counts of every watched target.
func (p *Path) TargetResets() (map[netip.AddrPort]Resets, error) {
	out := map[netip.AddrPort]Resets{}
	var errs []error
	for _, fp := range p.fams {
		key := make([]byte, fp.f.slotValSize)
		var val fastpathBPFTargetStat
		it := fp.targets.Iterate()
		for it.Next(&key, &val) {
			t := netip.AddrPortFrom(fp.addr(key), binary.BigEndian.Uint16(key[fp.f.addrLen:]))
			out[t] = Resets{SYN: val.SynRst, Other: val.Rst}
		}
		errs = append(errs, it.Err())
	}
	return out, errors.Join(errs...)
}
