package registry

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/events"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
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
	// changed counts health transitions set, and rebuilt the count the
	// current snapshot includes: transitions that arrive together share
	// one rebuild (see Registry.SetHealth).
	changed, rebuilt uint64
	builds           uint64     // snapshots installed
	building         sync.Mutex // rebuilds outside mu, one at a time

	// UnhealthyRouting counts flows routed while the group fails open with
	// unhealthy targets in the view.
	UnhealthyRouting prometheus.Counter
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

// rebuild computes a new snapshot from the targets' states and installs it.
// Called with g.mu held (or before the group is shared).
func (g *Group) rebuild() error {
	snap, err := g.plan().snapshot()
	if err != nil {
		return err
	}
	g.install(snap, g.changed)
	return nil
}

// rebuildFor makes sure the snapshot includes health change number mine
// (see Registry.SetHealth), computing the tables without g.mu: changes
// that come together set their states while one rebuild computes, and the
// next rebuild takes them all. Called without g.mu.
func (g *Group) rebuildFor(mine uint64) error {
	g.building.Lock()
	defer g.building.Unlock()
	g.mu.Lock()
	if g.rebuilt >= mine {
		g.mu.Unlock()
		return nil
	}
	p, changed, builds := g.plan(), g.changed, g.builds
	g.mu.Unlock()
	snap, err := p.snapshot()
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.builds != builds:
		// Rebuilt meanwhile (a registration, a reload), from states that
		// include mine: this snapshot is older than the one in force.
	case err != nil:
		g.r.logErr(err)
		return err
	default:
		g.install(snap, changed)
	}
	return nil
}

// lockSettled takes g.mu once every health change set so far is in the
// routing snapshot, so that a state read under it is one in force.
func (g *Group) lockSettled() {
	for {
		g.mu.Lock()
		if g.rebuilt >= g.changed {
			return
		}
		n := g.changed
		g.mu.Unlock()
		if err := g.rebuildFor(n); err != nil {
			g.mu.Lock() // logged; the snapshot in force is the last good one
			return
		}
	}
}

// install makes snap the group's routing view, computed from the states of
// health change number changed, tells the subscribers and sets the
// target gauges (g.mu held).
func (g *Group) install(snap *Snapshot, changed uint64) {
	g.rebuilt = changed
	g.builds++
	if old := g.snap.Swap(snap); old != nil && old.All.FailOpen != snap.All.FailOpen {
		healthy := 0
		for _, c := range snap.counts {
			healthy += c.healthy
		}
		if snap.All.FailOpen {
			g.r.events.Add(events.FailOpen, g.Name(), fmt.Sprintf("%d of %d targets healthy: routing to every live one", healthy, snap.targets))
		} else {
			g.r.events.Add(events.FailOpenEnd, g.Name(), fmt.Sprintf("%d of %d targets healthy", healthy, snap.targets))
		}
	}
	for _, s := range g.r.subscribers() {
		s.SnapshotChanged(g)
	}
	// Every zone the group has counted before is set again, so a zone
	// whose last healthy target left drops to 0 rather than keeping its
	// old value.
	if m := g.r.m; m != nil {
		for z := range snap.counts {
			g.zonesSeen[z] = true
		}
		for z := range g.zonesSeen {
			c := snap.counts[z]
			m.Gauge(metrics.HealthyTargets, g.Name(), z).Set(float64(c.healthy))
			m.Gauge(metrics.UnhealthyTargets, g.Name(), z).Set(float64(c.unhealthy))
		}
	}
}

// plan is what a rebuild computes a snapshot from, read under g.mu.
func (g *Group) plan() plan {
	p := plan{name: g.Name(), attrs: g.Config().Attributes, crossZone: g.crossZone.Load(), members: make([]member, len(g.targets))}
	for _, z := range g.r.Config().Zones {
		p.zones = append(p.zones, z.Name)
	}
	for i, t := range g.targets {
		p.members[i] = member{t: t, state: t.state, zone: t.zone, weight: t.weight, quicID: t.quicID}
	}
	if snap := g.snap.Load(); snap != nil {
		p.built = append(p.built, snap.All.Balance)
		for _, v := range snap.Zones {
			p.built = append(p.built, v.Balance)
		}
	}
	return p
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
	g.lockSettled()
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
	g.lockSettled()
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
