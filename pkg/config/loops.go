package config

import (
	"fmt"
	"net/netip"
)

// CheckLoops finds targets that are l4lb's own listening addresses: a
// listener's bound address and port, or the port of a wildcard listener
// (0.0.0.0, ::) at any local address. A flow sent there comes back to l4lb
// and is forwarded again, until every descriptor is used. isLocal says
// which addresses are this host's; loopback addresses always are.
// Normalize runs it with loopback alone; serve, validate and every reload
// run it again with the host's addresses.
func CheckLoops(cfg *Config, isLocal func(netip.Addr) bool) Errors {
	var errs Errors
	for gi := range cfg.TargetGroups {
		g := &cfg.TargetGroups[gi]
		for ti, t := range g.Targets {
			if l, ok := ListenerAt(cfg, g.Protocol, t.Address, isLocal); ok {
				errs.add(fmt.Sprintf("target_groups[%d].targets[%d].address", gi, ti),
					"%s is l4lb's own listener %q; forwarding to it would loop", t.Address, l)
			}
		}
	}
	return errs
}

// ListenerAt names the listener of cfg that a flow of protocol proto sent
// to addr would reach, if any (see CheckLoops).
func ListenerAt(cfg *Config, proto Protocol, addr netip.AddrPort, isLocal func(netip.Addr) bool) (string, bool) {
	ip := addr.Addr().Unmap()
	local := ip.IsLoopback() || (isLocal != nil && isLocal(ip))
	for _, l := range cfg.Listeners {
		if l.Port != addr.Port() || !(proto.HasTCP() && l.Protocol.HasTCP() || proto.HasUDP() && l.Protocol.HasUDP()) {
			continue
		}
		for _, b := range l.Bind {
			bip := b.IP.Unmap()
			// A wildcard bind of either family takes IPv4 too (IPv6
			// sockets are dual-stack unless IPV6_V6ONLY).
			if bip == ip || (bip.IsUnspecified() && local && (bip.Is6() || ip.Is4())) {
				return l.Name, true
			}
		}
	}
	return "", false
}
