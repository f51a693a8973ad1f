package lb

import (
	"fmt"
	"net/netip"

	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/flowhash"
)

// route is what a listener forwards to: one target group, or several weighted
// ones. It is immutable; listeners swap whole routes.
type route struct {
	groups []*registry.Group
	cum    []int // cumulative forward weights, parallel to groups
	total  int
}

// pick chooses the group of a flow from its hash, so a flow (and, with
// stickiness, a client) always lands in the same group.
func (r *route) pick(h uint64) *registry.Group {
	if len(r.groups) == 1 {
		return r.groups[0]
	}
	// Rehash so the group choice is independent of the slot within a table.
	v := int(flowhash.Rehash(h) % uint64(r.total))
	for i, c := range r.cum {
		if v < c {
			return r.groups[i]
		}
	}
	return r.groups[len(r.groups)-1]
}

func buildRoute(l *config.Listener, reg *registry.Registry) (*route, error) {
	r := &route{}
	add := func(name string, w int) error {
		g := reg.Group(name)
		if g == nil {
			return fmt.Errorf("listener %s: no target group %q", l.Name, name)
		}
		if w == 0 {
			return nil
		}
		r.total += w
		r.groups = append(r.groups, g)
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
	if len(r.groups) == 0 {
		return nil, fmt.Errorf("listener %s: forwards to no target group", l.Name)
	}
	return r, nil
}

// acl is a listener's source filter: deny wins over allow.
type acl struct {
	allow, deny []netip.Prefix
	allowAll    bool
}

func newACL(l *config.Listener) acl {
	a := acl{allow: l.Allow, deny: l.Deny}
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

func (a *acl) permits(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range a.deny {
		if p.Contains(ip) {
			return false
		}
	}
	if a.allowAll {
		return true
	}
	for _, p := range a.allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// lookup picks the group of a flow, the routing view of the zone it arrived
// in, and its Maglev key: the 5-tuple hash, or the source IP's with
// stickiness.
func (r *route) lookup(proto uint8, zone string, src, dst netip.AddrPort) (*registry.Group, *registry.View, uint64) {
	key := flowhash.Flow(proto, src, dst)
	g := r.pick(key)
	snap := g.Snapshot().ForZone(zone)
	if snap.Balance.Stickiness {
		key = flowhash.Source(src.Addr())
	}
	return g, snap, key
}
