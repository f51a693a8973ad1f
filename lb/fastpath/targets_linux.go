package fastpath

import (
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
		var have []netip.AddrPort
		errs = append(errs, fp.eachTarget(func(t netip.AddrPort, _ fastpathBPFTargetStat) { have = append(have, t) }))
		for _, t := range have {
			if want[t] {
				delete(want, t)
				continue
			}
			if err := fp.targets.Delete(slotKey(t)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("fastpath: forgetting target %s: %w", t, err))
			}
		}
	}
	for t := range want {
		fp := familyOf(&p.fams, t.Addr())
		if err := fp.targets.Update(slotKey(t), &fastpathBPFTargetStat{}, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
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
		errs = append(errs, fp.eachTarget(func(t netip.AddrPort, v fastpathBPFTargetStat) {
			out[t] = Resets{SYN: v.SynRst, Other: v.Rst}
		}))
	}
	return out, errors.Join(errs...)
}

// eachTarget calls fn with each watched target of the family and its
// counts.
func (fp *famPath) eachTarget(fn func(netip.AddrPort, fastpathBPFTargetStat)) error {
	it := fp.targets.Iterate()
	var val fastpathBPFTargetStat
	if fp.f.addrLen == 4 {
		var k fastpathBPFSlot4
		for it.Next(&k, &val) {
			fn(netip.AddrPortFrom(fromWords([]uint32{k.Addr}, 4), netOrder(k.Port)), val)
		}
	} else {
		var k fastpathBPFSlot6
		for it.Next(&k, &val) {
			fn(netip.AddrPortFrom(fromWords(k.Addr[:], 16), netOrder(k.Port)), val)
		}
	}
	return it.Err()
}
