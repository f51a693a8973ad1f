package registry

import (
	"slices"

	"github.com/l4lb/l4lb/lb/balance"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/quiclb"
)

// Snapshot is the immutable routing view of a group: per zone, the Maglev
// table over the targets that may take new flows there.
type Snapshot struct {
	All   *View            // cross-zone, or a listener outside every zone
	Zones map[string]*View // without cross-zone: each zone's own view
	// ServerIDs (QUIC and TCP_QUIC groups) maps a server ID to the target
	// that issues it, while its connections' packets are to reach it:
	// initial, healthy, or draining (until its deregistration delay ends).
	ServerIDs map[uint64]*Target

	counts  map[string]stateCounts // per zone ("" for none), for the gauges
	targets int                    // registered, draining ones included
}

// stateCounts counts a zone's healthy and unhealthy targets.
type stateCounts struct{ healthy, unhealthy int }

// View is the routing view from one zone.
type View struct {
	Balance  *balance.Group
	Targets  []*Target // parallel to Balance.Targets
	FailOpen bool      // too few healthy targets: routing to all live ones
	Counted  bool      // FailOpen with unhealthy targets: count such flows
}

// ForZone is the view a listener in zone routes with.
func (s *Snapshot) ForZone(zone string) *View {
	if v, ok := s.Zones[zone]; ok {
		return v
	}
	return s.All
}

func (s *Snapshot) forZoneOf(t *Target) *View {
	if t.zone == "" {
		return s.All
	}
	return s.ForZone(t.zone)
}

// plan is what a rebuild computes a snapshot from: the targets' routing
// fields, copied under the group's lock, and the balance groups of the
// snapshot in force (built), taken again for a view whose targets did not
// change: a Maglev table of 65537 slots is milliseconds of work, and most
// changes (a target on its first checks, another zone's) leave most views
// as they were. A plan reads no target's guarded fields, so the tables are
// computed without the lock.
type plan struct {
	name      string
	attrs     config.Attributes
	crossZone bool
	zones     []string // the config's
	members   []member
	built     []*balance.Group
}

// member is a target as a rebuild reads it: copied under g.mu, so that the
// tables can be computed without holding it.
type member struct {
	t      *Target
	state  State
	zone   string
	weight int
	quicID string
}

// snapshot computes the routing snapshot of the plan.
func (p plan) snapshot() (*Snapshot, error) {
	ms := p.members
	all, err := p.view(ms)
	if err != nil {
		return nil, err
	}
	snap := &Snapshot{All: all, Zones: map[string]*View{}, ServerIDs: serverIDs(ms), counts: countStates(ms), targets: len(ms)}
	if p.crossZone {
		return snap, nil
	}
	// A zone's view is often the group's (zone-less targets): the table
	// just computed serves it too.
	p.built = append(slices.Clip(p.built), all.Balance)
	// Without cross-zone each zone routes among its own targets (and
	// zone-less ones), failing open within the zone as NLB's nodes do. A
	// zone with no targets at all uses the group-wide view.
	names := map[string]bool{}
	for _, z := range p.zones {
		names[z] = true
	}
	for _, m := range ms {
		if m.zone != "" {
			names[m.zone] = true
		}
	}
	for z := range names {
		var in []member
		for _, m := range ms {
			if m.zone == z || m.zone == "" {
				in = append(in, m)
			}
		}
		if len(in) == 0 {
			continue
		}
		zv, err := p.view(in)
		if err != nil {
			return nil, err
		}
		if len(zv.Targets) == 0 && len(all.Targets) > 0 {
			// Nothing left to route to in the zone (its last target
			// drains, say): new flows that still arrive, before the
			// routers hear the zone's withdrawal, go to the other zones'
			// targets rather than being reset, as NLB's cross-zone
			// fail-over does.
			zv = all
		}
		snap.Zones[z] = zv
	}
	return snap, nil
}

// view builds the routing view over targets: the healthy ones, or, below the
// minimum healthy count or percentage (NLB's unhealthy state routing), every
// live one. A balance group of p.built with the same spec is taken as it is.
func (p plan) view(ms []member) (*View, error) {
	a := &p.attrs
	var healthy, live []member
	unhealthy := 0
	for _, m := range ms {
		if m.state == Healthy {
			healthy = append(healthy, m)
		}
		if m.state.live() {
			live = append(live, m)
		}
		if m.state.unhealthy() {
			unhealthy++
		}
	}
	failOpen := len(healthy) < max(a.UnhealthyRoutingMinHealthyCount, 1) ||
		(a.UnhealthyRoutingMinHealthyPercentage > 0 && len(healthy)*100 < a.UnhealthyRoutingMinHealthyPercentage*len(live))
	use := healthy
	if failOpen {
		use = live
	}
	spec := balance.GroupSpec{Name: p.name, Stickiness: a.Stickiness}
	targets := make([]*Target, len(use))
	for i, m := range use {
		targets[i] = m.t
		spec.Targets = append(spec.Targets, balance.Target{Addr: m.t.Addr, Zone: m.zone, Weight: m.weight})
	}
	i := slices.IndexFunc(p.built, func(b *balance.Group) bool {
		return b.Name == spec.Name && b.Stickiness == spec.Stickiness && slices.Equal(b.Targets, spec.Targets)
	})
	if i >= 0 {
		return &View{Balance: p.built[i], Targets: targets, FailOpen: failOpen, Counted: failOpen && unhealthy > 0}, nil
	}
	bal, err := balance.NewGroup(spec)
	if err != nil {
		return nil, err
	}
	return &View{Balance: bal, Targets: targets, FailOpen: failOpen, Counted: failOpen && unhealthy > 0}, nil
}

// serverIDs maps the server IDs of the targets that take their
// connections' packets; nil for a group without them.
func serverIDs(ms []member) map[uint64]*Target {
	var out map[uint64]*Target
	for _, m := range ms {
		if m.quicID == "" || !(m.state == Initial || m.state == Healthy || m.state == Draining) {
			continue
		}
		id, err := quiclb.ParseServerID(m.quicID)
		if err != nil {
			continue // checked at registration
		}
		if out == nil {
			out = map[uint64]*Target{}
		}
		out[id] = m.t
	}
	return out
}

// countStates counts each zone's healthy and unhealthy targets.
func countStates(ms []member) map[string]stateCounts {
	out := map[string]stateCounts{}
	for _, m := range ms {
		c := out[m.zone]
		switch {
		case m.state == Healthy:
			c.healthy++
		case m.state.unhealthy():
			c.unhealthy++
		}
		out[m.zone] = c
	}
	return out
}
