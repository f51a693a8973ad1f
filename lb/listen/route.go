// Package listen is the layer the TCP and UDP data planes share, in three
// file sets: route* is what a listener forwards to (routes, SNI rules,
// ACLs); admit* is whether a flow may start (the descriptor budgets, the
// per-source limit, the loop guard, the reasons a flow is refused and their
// counters); socket* is the listener sockets (socket options, transparent
// sockets, binding and handover, a reload's difference, the set of listener
// addresses a plane serves).
//
//	r, err := listen.NewRoute(lc, reg)
//	g, view, key := r.Lookup(flowhash.ProtoTCP, zone, client, vip)
//	prefs := view.Balance.Pick(key, buf[:])
package listen

import (
	"fmt"
	"net/netip"

	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/flowhash"
)

// Route is what a listener forwards to: one target group, or several weighted
// ones. It is immutable; listeners swap whole routes.
type Route struct {
	Groups []*registry.Group
	cum    []int // cumulative forward weights, parallel to groups
	total  int
	// sticky picks the group by the client's address, not the flow's: every
	// group of a weighted forward has stickiness on, so a client stays in
	// one group (a canary's users see one version), as NLB's target group
	// stickiness on a forward action keeps them.
	sticky bool
}

// Pick chooses the group of a flow from its hash, so a flow (and, with
// stickiness, a client) always lands in the same group.
func (r *Route) Pick(h uint64) *registry.Group {
	if len(r.Groups) == 1 {
		return r.Groups[0]
	}
	// Rehash so the group choice is independent of the slot within a table.
	v := int(flowhash.Rehash(h) % uint64(r.total))
	for i, c := range r.cum {
		if v < c {
			return r.Groups[i]
		}
	}
	return r.Groups[len(r.Groups)-1]
}

func NewRoute(l *config.Listener, reg *registry.Registry) (*Route, error) {
	r := &Route{}
	add := func(name string, w int) error {
		g := reg.Group(name)
		if g == nil {
			return fmt.Errorf("listener %s: no target group %q", l.Name, name)
		}
		if w == 0 {
			return nil
		}
		r.total += w
		r.Groups = append(r.Groups, g)
		r.cum = append(r.cum, r.total)
		return nil
	}
	if l.TargetGroup != "" {
		if err := add(l.TargetGroup, 1); err != nil {
			return nil, err
		}
	}
	for _, f := range l.Forward {
		if err := add(f.TargetGroup, f.Weight); err != nil {
			return nil, err
		}
	}
	if len(r.Groups) == 0 {
		return nil, fmt.Errorf("listener %s: forwards to no target group", l.Name)
	}
	r.sticky = len(r.Groups) > 1
	for _, g := range r.Groups {
		r.sticky = r.sticky && g.Config().Attributes.Stickiness
	}
	return r, nil
}

// ACL is a listener's source filter: deny wins over allow.
type ACL struct {
	Allow, Deny []netip.Prefix
	allowAll    bool
}

func NewACL(l *config.Listener) ACL {
	a := ACL{Allow: l.Allow, Deny: l.Deny}
	// allowAll skips the allow scan when both families are fully allowed.
	v4, v6 := false, false
	for _, p := range l.Allow {
		if p.Bits() == 0 {
			v4 = v4 || p.Addr().Is4()
			v6 = v6 || p.Addr().Is6()
		}
	}
	a.allowAll = v4 && v6
	return a
}

// Permits says whether a flow from ip may pass.
func (a *ACL) Permits(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range a.Deny {
		if p.Contains(ip) {
			return false
		}
	}
	if a.allowAll {
		return true
	}
	for _, p := range a.Allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Lookup picks the group of a flow, the routing view of the zone it arrived
// in, and its Maglev key: the 5-tuple hash, or the source IP's with
// stickiness. Among sticky weighted groups the group, too, is the source
// IP's.
func (r *Route) Lookup(proto uint8, zone string, src, dst netip.AddrPort) (*registry.Group, *registry.View, uint64) {
	key := flowhash.Flow(proto, src, dst)
	if r.sticky {
		key = flowhash.Source(src.Addr())
	}
	g := r.Pick(key)
	snap := g.Snapshot().ForZone(zone)
	if snap.Balance.Stickiness {
		key = flowhash.Source(src.Addr())
	}
	return g, snap, key
}

// KernelReason says why a listener address with this route cannot be
// forwarded by a kernel fast path, or "": the kernel rewrites addresses and
// nothing else, so it needs a specific address and one target group that
// keeps the client's address and sends no PROXY header. The data planes add
// their own protocol's reasons.
func (r *Route) KernelReason(bind config.BindAddr) string {
	switch {
	case bind.IP.IsUnspecified() || bind.IP.Zone() != "":
		return "the bind address is a wildcard or has a zone"
	case len(r.Groups) != 1:
		return "it forwards to weighted target groups"
	case !r.Groups[0].Config().Attributes.PreserveClientIP && r.Groups[0].Config().Forwarding != config.ForwardDSR:
		return "its target group does not preserve the client IP (preserve_client_ip.enabled)"
	case r.Groups[0].Config().Attributes.ProxyProtocolV2:
		return "its target group sends a PROXY header"
	}
	return ""
}
