package fastpath

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
)

// QUIC services: the program routes a new flow's first datagram by the
// server ID in its connection ID (bpf/fastpath.c, quic_classify).

// RouteQUIC makes service id route QUIC by connection ID from its next
// SetTable on: a new flow's first datagram goes to the target its server
// ID names (ids; pkg/quiclb's layout, connIDLen bytes in a short header),
// whatever the client's address, else by the table; a version other than
// 1, or a datagram too short for its connection ID, is dropped. Call it
// again with the new IDs whenever they change; entries of IDs no longer
// named are removed.
func (p *Path) RouteQUIC(id int, connIDLen int, ids map[uint64]netip.AddrPort) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.svcs[id]
	s.flags |= svcQUIC
	s.quicLen = uint8(connIDLen)
	key := func(sid uint64) fastpathBPFQuicKey { return fastpathBPFQuicKey{Svc: uint32(id), Id: sid} }
	for sid, t := range ids {
		if !t.IsValid() || familyOf(&p.fams, t.Addr().Unmap()) != s.fam {
			continue
		}
		t = netip.AddrPortFrom(t.Addr().Unmap(), t.Port())
		var err error
		if s.fam.f.addrLen == 4 {
			err = s.fam.quic.Update(key(sid), fastpathBPFSlot4{Addr: words(t.Addr())[0], Port: netOrder(t.Port())}, ebpf.UpdateAny)
		} else {
			err = s.fam.quic.Update(key(sid), fastpathBPFSlot6{Addr: words(t.Addr()), Port: netOrder(t.Port())}, ebpf.UpdateAny)
		}
		if err != nil {
			return fmt.Errorf("fastpath: writing server ID %#x: %w", sid, err)
		}
	}
	for sid := range s.quicIDs {
		if _, ok := ids[sid]; !ok {
			if err := s.fam.quic.Delete(key(sid)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("fastpath: removing server ID %#x: %w", sid, err)
			}
		}
	}
	s.quicIDs = maps.Clone(ids)
	return p.addPorts(portsTargets, slices.Collect(maps.Values(ids)))
}
