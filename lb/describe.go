package lb

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/l4lb/l4lb/lb/balance"
	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/flowhash"
	"github.com/l4lb/l4lb/pkg/maglev"
)

// findListener returns the bound listener called name whose address is dst
// (any of them when dst is not given).
func (s *Server) findListener(name string, dst netip.Addr) *listener {
	var first *listener
	for _, l := range s.listeners {
		if l.cfg.Name != name {
			continue
		}
		if first == nil {
			first = l
		}
		if dst.IsValid() && l.bindA.IP == dst.Unmap() {
			return l
		}
	}
	return first
}

// endpoint is what Route needs of a TCP listener or a UDP front.
type endpoint struct {
	zone     string
	ip       netip.Addr
	port     uint16
	route    *route // for the SNI asked about, on a listener with rules
	hasRules bool
}

// findEndpoint finds the named listener's TCP or UDP side, preferring the one
// bound to dst.
func (s *Server) findEndpoint(name, protocol string, dst netip.Addr, sni string) *endpoint {
	if protocol == "tcp" {
		if l := s.findListener(name, dst); l != nil {
			return &endpoint{l.zone, l.bindA.IP, l.port(), l.routeFor(sni), len(l.rules) > 0}
		}
		return nil
	}
	var first *udpFront
	for _, u := range s.udp {
		if u.cfg.Name != name {
			continue
		}
		if first == nil || (dst.IsValid() && u.bindA.IP == dst.Unmap()) {
			first = u
		}
	}
	if first == nil {
		return nil
	}
	port := first.cfg.Port
	if len(first.socks) > 0 {
		port = first.Addr().(*net.UDPAddr).AddrPort().Port()
	}
	return &endpoint{first.zone, first.bindA.IP, port, first.route.Load(), false}
}

// Route answers which target a new flow from src to dst would get, and why,
// by the same computation as a real connection. sni is the name a TLS
// client's hello asks for, on a listener with SNI rules ("": none).
func (s *Server) Route(listenerName, src, dst, protocol, sni string) (api.Route, error) {
	if protocol == "" {
		protocol = "tcp"
	}
	if protocol != "tcp" && protocol != "udp" {
		return api.Route{}, fmt.Errorf("%w: protocol: want tcp or udp, got %q", api.ErrInvalid, protocol)
	}
	srcAP, err := netip.ParseAddrPort(src)
	if err != nil {
		return api.Route{}, fmt.Errorf("%w: src: want IP:PORT, got %q", api.ErrInvalid, src)
	}
	var dstAP netip.AddrPort
	if dst != "" {
		if dstAP, err = netip.ParseAddrPort(dst); err != nil {
			return api.Route{}, fmt.Errorf("%w: dst: want IP:PORT, got %q", api.ErrInvalid, dst)
		}
	}
	if sni != "" && protocol != "tcp" {
		return api.Route{}, fmt.Errorf("%w: sni: SNI rules route TCP flows only", api.ErrInvalid)
	}
	sni = strings.TrimSuffix(strings.ToLower(sni), ".")
	l, proto := s.findEndpoint(listenerName, protocol, dstAP.Addr(), sni), uint8(flowhash.ProtoTCP)
	if protocol == "udp" {
		proto = flowhash.ProtoUDP
	}
	if l == nil {
		return api.Route{}, fmt.Errorf("%w: no %s listener %q", api.ErrNotFound, protocol, listenerName)
	}
	if sni != "" && !l.hasRules {
		return api.Route{}, fmt.Errorf("%w: sni: listener %q has no SNI rules", api.ErrInvalid, listenerName)
	}
	if !dstAP.IsValid() {
		dstAP = netip.AddrPortFrom(l.ip, l.port)
		if l.ip.IsUnspecified() {
			return api.Route{}, fmt.Errorf("%w: dst: listener %q binds every address; say which one the client reaches", api.ErrInvalid, listenerName)
		}
	}
	srcAP = netip.AddrPortFrom(srcAP.Addr().Unmap(), srcAP.Port())
	dstAP = netip.AddrPortFrom(dstAP.Addr().Unmap(), dstAP.Port())
	g, snap, key := l.route.lookup(proto, l.zone, srcAP, dstAP)
	out := api.Route{Listener: listenerName, Protocol: protocol, Source: srcAP.String(), Destination: dstAP.String(),
		Zone: l.zone, TargetGroup: g.Name(), Key: "5-tuple", Hash: fmt.Sprintf("%#016x", key), FailOpen: snap.FailOpen}
	if snap.Balance.Stickiness {
		out.Key = "source_ip"
	}
	var buf [1 + balance.Retries]int
	for _, i := range snap.Balance.Pick(key, buf[:]) {
		out.Preference = append(out.Preference, snap.Targets[i].Name)
	}
	if len(out.Preference) == 0 {
		out.Why = "no target can take new flows: the client would be reset"
		return out, nil
	}
	out.Target = out.Preference[0]
	var why []string
	if l.hasRules {
		if sni == "" {
			why = append(why, "a ClientHello without a server name takes the listener's own group")
		} else {
			why = append(why, fmt.Sprintf("SNI %q routes to target group %s", sni, g.Name()))
		}
	}
	why = append(why, fmt.Sprintf("%s hash %s owns slot %d of the Maglev table", out.Key, out.Hash, key%maglev.DefaultSize))
	if len(s.cfg.Zones) > 0 && l.zone != "" && !g.CrossZone() {
		why = append(why, fmt.Sprintf("built from zone %s's targets (cross-zone off)", l.zone))
	}
	if snap.FailOpen {
		why = append(why, "too few healthy targets: routing fails open to every registered target")
	} else {
		why = append(why, "built from the healthy targets")
	}
	if len(out.Preference) > 1 && protocol == "tcp" {
		why = append(why, "a refused connect retries "+strings.Join(out.Preference[1:], ", "))
	}
	if protocol == "udp" {
		out.Preference = out.Preference[:1] // a datagram has no connect to retry
		why = append(why, "an existing flow of this 5-tuple stays on its own target")
	}
	out.Why = strings.Join(why, "; ")
	return out, nil
}

// Flows lists up to limit active flows (of one listener when named).
func (s *Server) Flows(listenerName string, limit int) ([]api.Flow, error) {
	if listenerName != "" && s.findListener(listenerName, netip.Addr{}) == nil {
		return nil, fmt.Errorf("%w: no listener %q", api.ErrNotFound, listenerName)
	}
	if limit <= 0 {
		limit = 100
	}
	out := []api.Flow{}
	now := time.Now()
	s.flows.each(func(f *flow) bool {
		if listenerName != "" && f.l.cfg.Name != listenerName {
			return true
		}
		out = append(out, api.Flow{Listener: f.l.cfg.Name, Protocol: "TCP", Client: f.client.RemoteAddr().String(),
			Target: f.tgt.Name, TargetGroup: f.tgt.Group().Name(), AgeSeconds: now.Sub(f.start).Seconds()})
		return len(out) < limit
	})
	return out, nil
}

// ZoneHealth reports whether every listener bound in zone can reach a healthy
// target there, counting against the dns_failover minimum when one is set.
func (s *Server) ZoneHealth(zone string) (api.ZoneHealth, error) {
	if !slices.ContainsFunc(s.cfg.Zones, func(z config.Zone) bool { return z.Name == zone }) {
		return api.ZoneHealth{}, fmt.Errorf("%w: no zone %q", api.ErrNotFound, zone)
	}
	out := api.ZoneHealth{Zone: zone, Healthy: true, Listeners: map[string]string{}}
	check := func(name string, routes []*route) {
		status := out.Listeners[name] // a TCP_UDP listener is checked on both
		if status == "" {
			status = "ok"
		}
		for _, r := range routes {
			for _, g := range r.groups {
				if why := g.ZoneProblem(zone); why != "" {
					status = why
				}
			}
		}
		if status != "ok" {
			out.Healthy = false
		}
		out.Listeners[name] = status
	}
	for _, l := range s.listeners {
		if l.zone == zone {
			check(l.cfg.Name, l.allRoutes())
		}
	}
	for _, u := range s.udp {
		if u.zone == zone {
			check(u.cfg.Name, []*route{u.route.Load()})
		}
	}
	return out, nil
}
