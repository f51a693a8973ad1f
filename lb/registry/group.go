package registry

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/balance"
	"github.com/l4lb/l4lb/lb/events"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
	"github.com/l4lb/l4lb/pkg/quiclb"
)

// Group is a target group: its registered targets (guarded by mu) and its
// current Snapshot, swapped whole on every change.
type Group struct {
	r         *Registry
	cfg       atomic.Pointer[config.TargetGroup] // replaced whole by a reload
	crossZone atomic.Bool
	mu        sync.Mutex
	targets   []*Target
	snap      atomic.Pointer[Snapshot]
	zonesSeen map[string]bool // zones whose state gauges were set
	// settling is set on a group a reload added: until it has served in a
	// zone (ZoneProblem found it able to), it is no problem for that zone,
	// as targets on their first checks are none at start. A prefix is
	// withdrawn only when a group that was serving stops.
	settling bool
	served   map[string]bool // zones the group has been able to serve

	// UnhealthyRouting counts flows routed while the group fails open with
	// unhealthy targets in the view.
	UnhealthyRouting prometheus.Counter
}

// Snapshot is the immutable routing view of a group: per zone, the Maglev
// table over the targets that may take new flows there.
type Snapshot struct {
	All   *View            // cross-zone, or a listener outside every zone
	Zones map[string]*View // without cross-zone: each zone's own view
	// ServerIDs (QUIC and TCP_QUIC groups) maps a server ID to the target
	// that issues it, while its connections' packets are to reach it:
	// initial, healthy, or draining (until its deregistration delay ends).
	ServerIDs map[uint64]*Target
}

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

func newGroup(r *Registry, tg *config.TargetGroup) (*Group, error) {
	c := *tg
	g := &Group{r: r, zonesSeen: map[string]bool{}, served: map[string]bool{}}
	g.cfg.Store(&c)
	g.crossZone.Store(tg.CrossZoneEnabled(r.Config().CrossZone))
	g.UnhealthyRouting = r.m.Counter(metrics.UnhealthyRoutingFlows, tg.Name)
	for _, t := range tg.Targets {
		nt := g.newTarget(t.Address, t.Zone, t.Weight, t.QUICServerID)
		nt.fromFile = true
		g.targets = append(g.targets, nt)
	}
	if err := g.rebuild(); err != nil {
		return nil, err
	}
	return g, nil
}

// Name is the group's name.
func (g *Group) Name() string { return g.Config().Name }

// Config is the group's configuration now; a reload replaces it whole, so a
// flow reads it once. Callers must not change it.
func (g *Group) Config() *config.TargetGroup { return g.cfg.Load() }

// CrossZone says whether every zone routes to every zone's targets.
func (g *Group) CrossZone() bool { return g.crossZone.Load() }

// Snapshot is the group's current routing view.
func (g *Group) Snapshot() *Snapshot { return g.snap.Load() }

// Targets lists the registered targets now, draining ones included.
func (g *Group) Targets() []*Target {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]*Target(nil), g.targets...)
}

// rebuild computes a new snapshot from the targets' states and tells the
// subscribers. Called with g.mu held (or before the group is shared).
func (g *Group) rebuild() error {
	built := g.built()
	all, err := g.view(g.targets, built)
	if err != nil {
		return err
	}
	snap := &Snapshot{All: all, Zones: map[string]*View{}, ServerIDs: g.serverIDs()}
	if !g.crossZone.Load() {
		// Without cross-zone each zone routes among its own targets (and
		// zone-less ones), failing open within the zone as NLB's nodes do.
		// A zone with no targets at all uses the group-wide view.
		names := map[string]bool{}
		for _, z := range g.r.Config().Zones {
			names[z.Name] = true
		}
		for _, t := range g.targets {
			if t.zone != "" {
				names[t.zone] = true
			}
		}
		for z := range names {
			var in []*Target
			for _, t := range g.targets {
				if t.zone == z || t.zone == "" {
					in = append(in, t)
				}
			}
			if len(in) == 0 {
				continue
			}
			zv, err := g.view(in, built)
			if err != nil {
				return err
			}
			if len(zv.Targets) == 0 && len(all.Targets) > 0 {
				// Nothing left to route to in the zone (its last target
				// drains, say): new flows that still arrive, before the
				// routers hear the zone's withdrawal, go to the other
				// zones' targets rather than being reset, as NLB's
				// cross-zone fail-over does.
				zv = all
			}
			snap.Zones[z] = zv
		}
	}
	if old := g.snap.Swap(snap); old != nil && old.All.FailOpen != all.FailOpen {
		healthy := 0
		for _, t := range g.targets {
			if t.state == Healthy {
				healthy++
			}
		}
		if all.FailOpen {
			g.r.events.Add(events.FailOpen, g.Name(), fmt.Sprintf("%d of %d targets healthy: routing to every live one", healthy, len(g.targets)))
		} else {
			g.r.events.Add(events.FailOpenEnd, g.Name(), fmt.Sprintf("%d of %d targets healthy", healthy, len(g.targets)))
		}
	}
	for _, s := range g.r.subscribers() {
		s.SnapshotChanged(g)
	}
	g.countStates()
	return nil
}

// serverIDs maps the server IDs of the targets that take their
// connections' packets (g.mu held); nil for a group without them.
func (g *Group) serverIDs() map[uint64]*Target {
	var out map[uint64]*Target
	for _, t := range g.targets {
		if t.quicID == "" || !(t.state == Initial || t.state == Healthy || t.state == Draining) {
			continue
		}
		id, err := quiclb.ParseServerID(t.quicID)
		if err != nil {
			continue // checked at registration
		}
		if out == nil {
			out = map[uint64]*Target{}
		}
		out[id] = t
	}
	return out
}

// built lists the balance groups of the current snapshot, which a rebuild
// takes again for a view whose targets did not change: a Maglev table of
// 65537 slots is milliseconds of work, and most changes (a target on its
// first checks, another zone's) leave most views as they were.
func (g *Group) built() []*balance.Group {
	snap := g.snap.Load()
	if snap == nil {
		return nil
	}
	out := []*balance.Group{snap.All.Balance}
	for _, v := range snap.Zones {
		out = append(out, v.Balance)
	}
	return out
}

// view builds the routing view over targets: the healthy ones, or, below the
// minimum healthy count or percentage (NLB's unhealthy state routing), every
// live one. A balance group of built with the same spec is taken as it is.
func (g *Group) view(targets []*Target, built []*balance.Group) (*View, error) {
	a := &g.Config().Attributes
	var healthy, live []*Target
	unhealthy := 0
	for _, t := range targets {
		if t.state == Healthy {
			healthy = append(healthy, t)
		}
		if t.state.live() {
			live = append(live, t)
		}
		if t.state.unhealthy() {
			unhealthy++
		}
	}
	failOpen := len(healthy) < max(a.UnhealthyRoutingMinHealthyCount, 1) ||
		(a.UnhealthyRoutingMinHealthyPercentage > 0 && len(healthy)*100 < a.UnhealthyRoutingMinHealthyPercentage*len(live))
	use := healthy
	if failOpen {
		use = live
	}
	spec := balance.GroupSpec{Name: g.Name(), Stickiness: a.Stickiness}
	for _, t := range use {
		spec.Targets = append(spec.Targets, balance.Target{Addr: t.Addr, Zone: t.zone, Weight: t.weight})
	}
	i := slices.IndexFunc(built, func(b *balance.Group) bool {
		return b.Name == spec.Name && b.Stickiness == spec.Stickiness && slices.Equal(b.Targets, spec.Targets)
	})
	if i >= 0 {
		return &View{Balance: built[i], Targets: use, FailOpen: failOpen, Counted: failOpen && unhealthy > 0}, nil
	}
	bal, err := balance.NewGroup(spec)
	if err != nil {
		return nil, err
	}
	return &View{Balance: bal, Targets: use, FailOpen: failOpen, Counted: failOpen && unhealthy > 0}, nil
}

// countStates sets the healthy and unhealthy target gauges, per zone. Every
// zone the group has counted before is set again, so a zone whose last
// healthy target left drops to 0 rather than keeping its old value.
func (g *Group) countStates() {
	m := g.r.m
	if m == nil {
		return
	}
	type counts struct{ healthy, unhealthy int }
	byZone := map[string]*counts{}
	for z := range g.zonesSeen {
		byZone[z] = &counts{}
	}
	for _, t := range g.targets {
		c := byZone[t.zone]
		if c == nil {
			c = &counts{}
			byZone[t.zone] = c
		}
		switch {
		case t.state == Healthy:
			c.healthy++
		case t.state.unhealthy():
			c.unhealthy++
		}
	}
	for z, c := range byZone {
		g.zonesSeen[z] = true
		m.Gauge(metrics.HealthyTargets, g.Name(), z).Set(float64(c.healthy))
		m.Gauge(metrics.UnhealthyTargets, g.Name(), z).Set(float64(c.unhealthy))
	}
}

func (g *Group) find(addr netip.AddrPort) *Target {
	for _, t := range g.targets {
		if t.Addr == addr {
			return t
		}
	}
	return nil
}

// setState changes a target's state (g.mu held) and logs it.
func (g *Group) setState(t *Target, state State, reason, detail string) {
	if t.state == state && t.reason == reason {
		return
	}
	if t.state != state {
		what := t.state.String() + " -> " + state.String()
		if reason != "" {
			what += " (" + reason + ")"
		}
		g.r.events.Add(events.TargetState, g.Name()+"/"+t.Name, what)
	}
	t.state, t.reason, t.detail = state, reason, detail
	t.generation++
	g.r.log.Info("target state", zap.String(logGroup, g.Name()), zap.String(logTarget, t.Name),
		zap.Stringer("state", state), zap.String("reason", reason))
}

// checkSpec is the group's health check as the checker runs it: with a PROXY
// LOCAL header when the targets expect PROXY v2, as NLB's checks do.
func (g *Group) checkSpec() config.HealthCheck {
	c := g.Config()
	spec := c.HealthCheck
	spec.SendProxyLocal = c.Attributes.ProxyProtocolV2
	return spec
}

// Unsettled names a target of the group whose first health checks have not
// finished (state initial), or is "" when there is none.
func (g *Group) Unsettled() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, t := range g.targets {
		if t.state == Initial {
			return t.Name
		}
	}
	return ""
}

// ZoneProblem says why the group cannot serve zone, or "" if it can,
// counting against the dns_failover minimum when one is set. A group a
// reload added has no problem in a zone until it has once served there: it
// is settling (Settling says so).
func (g *Group) ZoneProblem(zone string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	why := g.zoneProblem(zone)
	if why == "" {
		g.served[zone] = true
	}
	if g.settling && !g.served[zone] {
		return ""
	}
	return why
}

// Settling says whether g is a group a reload added that has not yet
// served in zone.
func (g *Group) Settling(zone string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.settling && !g.served[zone]
}

func (g *Group) zoneProblem(zone string) string {
	healthy, total := 0, 0
	for _, t := range g.targets {
		if !g.crossZone.Load() && t.zone != "" && t.zone != zone {
			continue
		}
		if t.state == Draining || t.state == Unused {
			continue
		}
		total++
		if t.state == Healthy {
			healthy++
		}
	}
	a := &g.Config().Attributes
	need := max(a.DNSFailoverMinHealthyCount, 1)
	if healthy < need {
		return fmt.Sprintf("target group %s: %d healthy targets, need %d", g.Name(), healthy, need)
	}
	if p := a.DNSFailoverMinHealthyPercentage; p > 0 && healthy*100 < p*total {
		return fmt.Sprintf("target group %s: %d of %d targets healthy, need %d%%", g.Name(), healthy, total, p)
	}
	return ""
}
