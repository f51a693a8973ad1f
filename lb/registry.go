package lb

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/balance"
	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// HealthWatcher is what the target registry needs from the health checks
// (healthcheck.Scheduler satisfies it). Nil means no checks: every target
// stays initial and routing fails open to all of them.
type HealthWatcher interface {
	Watch(group string, target netip.AddrPort, spec config.HealthCheck)
	Unwatch(group string, target netip.AddrPort)
	PassiveFailure(group string, target netip.AddrPort)
}

// target is one registered backend with its NLB state and its flows.
type target struct {
	g      *group
	addr   netip.AddrPort
	name   string
	zone   string
	weight int

	// Guarded by g.mu.
	state      string
	reason     string
	detail     string
	generation int // bumped on every state change, so stale timers do nothing

	fmu      sync.Mutex
	flows    map[*flow]struct{} // TCP flows
	udpFlows atomic.Int64       // UDP flows pinned to it

	connectErrs prometheus.Counter
	portErrs    prometheus.Counter
	resets      prometheus.Counter // flows the target's side ended with an error
}

// groupSnap is the immutable routing view of a group: per zone, the Maglev
// table over the targets that may take new flows there.
type groupSnap struct {
	all   *zoneSnap            // cross-zone, or a listener outside every zone
	zones map[string]*zoneSnap // without cross-zone: each zone's own view
}

// zoneSnap is the view from one zone.
type zoneSnap struct {
	bal      *balance.Group
	targets  []*target // parallel to bal.Targets
	failOpen bool      // too few healthy targets: routing to all live ones
	counted  bool      // failOpen with unhealthy targets: count such flows
}

// forZoneOf is the view that routes to t.
func (s *groupSnap) forZoneOf(t *target) *zoneSnap {
	if t.zone == "" {
		return s.all
	}
	return s.forZone(t.zone)
}

func (s *groupSnap) forZone(zone string) *zoneSnap {
	if z, ok := s.zones[zone]; ok {
		return z
	}
	return s.all
}

// group is a target group: its registered targets (guarded by mu) and the
// current snapshot, swapped whole on every change.
type group struct {
	srv       *Server
	cfg       config.TargetGroup
	crossZone bool
	mu        sync.Mutex
	targets   []*target
	snap      atomic.Pointer[groupSnap]

	unhealthyRouting prometheus.Counter
	zonesSeen        map[string]bool // zones whose state gauges were set
}

func newGroup(s *Server, tg *config.TargetGroup, lbCrossZone bool) (*group, error) {
	g := &group{srv: s, cfg: *tg, crossZone: tg.CrossZoneEnabled(lbCrossZone)}
	g.unhealthyRouting = s.m.Counter(metrics.UnhealthyRoutingFlows, tg.Name)
	for _, t := range tg.Targets {
		g.targets = append(g.targets, g.newTarget(t.Address, t.Zone, t.Weight))
	}
	if err := g.rebuild(); err != nil {
		return nil, err
	}
	return g, nil
}

func (g *group) newTarget(addr netip.AddrPort, zone string, weight int) *target {
	t := &target{g: g, addr: addr, name: addr.String(), zone: zone, weight: weight,
		state: api.StateInitial, reason: api.ReasonInitialHealthChecking, flows: map[*flow]struct{}{}}
	g.srv.m.AddTarget(g.cfg.Name, t.name)
	t.connectErrs = g.srv.m.Counter(metrics.TargetConnectErrors, g.cfg.Name, t.name)
	t.resets = g.srv.m.Counter(metrics.TCPTargetResets, g.cfg.Name, t.name)
	t.portErrs = g.srv.m.Counter(metrics.PortAllocationErrors, g.cfg.Name, t.name)
	return t
}

// rebuild computes a new snapshot from the targets' states. Called with g.mu
// held (or before the group is shared).
func (g *group) rebuild() error {
	all, err := g.view(g.targets)
	if err != nil {
		return err
	}
	snap := &groupSnap{all: all, zones: map[string]*zoneSnap{}}
	if !g.crossZone {
		// Without cross-zone each zone routes among its own targets (and
		// zone-less ones), failing open within the zone as NLB's nodes do.
		// A zone with no targets at all uses the group-wide view.
		names := map[string]bool{}
		for _, z := range g.srv.cfg.Zones {
			names[z.Name] = true
		}
		for _, t := range g.targets {
			if t.zone != "" {
				names[t.zone] = true
			}
		}
		for z := range names {
			var in []*target
			for _, t := range g.targets {
				if t.zone == z || t.zone == "" {
					in = append(in, t)
				}
			}
			if len(in) == 0 {
				continue
			}
			if snap.zones[z], err = g.view(in); err != nil {
				return err
			}
		}
	}
	g.snap.Store(snap)
	if k := g.srv.kernel.Load(); k != nil {
		k.changed()
	}
	g.countStates()
	return nil
}

// countStates sets the healthy and unhealthy target gauges, per zone. Every
// zone the group has counted before is set again, so a zone whose last
// healthy target left drops to 0 rather than keeping its old value.
func (g *group) countStates() {
	m := g.srv.m
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
		switch t.state {
		case api.StateHealthy:
			c.healthy++
		case api.StateUnhealthy, api.StateUnhealthyDraining:
			c.unhealthy++
		}
	}
	if g.zonesSeen == nil {
		g.zonesSeen = map[string]bool{}
	}
	for z, c := range byZone {
		g.zonesSeen[z] = true
		m.Gauge(metrics.HealthyTargets, g.cfg.Name, z).Set(float64(c.healthy))
		m.Gauge(metrics.UnhealthyTargets, g.cfg.Name, z).Set(float64(c.unhealthy))
	}
}

// view builds the routing view over targets: the healthy ones, or, below the
// minimum healthy count or percentage (NLB's unhealthy state routing), every
// live one.
func (g *group) view(targets []*target) (*zoneSnap, error) {
	a := &g.cfg.Attributes
	var healthy, live []*target
	unhealthy := 0
	for _, t := range targets {
		switch t.state {
		case api.StateHealthy:
			healthy = append(healthy, t)
			live = append(live, t)
		case api.StateInitial:
			live = append(live, t)
		case api.StateUnhealthy, api.StateUnhealthyDraining:
			live = append(live, t)
			unhealthy++
		}
	}
	failOpen := len(healthy) < max(a.UnhealthyRoutingMinHealthyCount, 1) ||
		(a.UnhealthyRoutingMinHealthyPercentage > 0 && len(healthy)*100 < a.UnhealthyRoutingMinHealthyPercentage*len(live))
	use := healthy
	if failOpen {
		use = live
	}
	spec := balance.GroupSpec{Name: g.cfg.Name, Stickiness: a.Stickiness}
	for _, t := range use {
		spec.Targets = append(spec.Targets, balance.Target{Addr: t.addr, Zone: t.zone, Weight: t.weight})
	}
	bal, err := balance.NewGroup(spec)
	if err != nil {
		return nil, err
	}
	return &zoneSnap{bal: bal, targets: use, failOpen: failOpen, counted: failOpen && unhealthy > 0}, nil
}

func (g *group) find(addr netip.AddrPort) *target {
	for _, t := range g.targets {
		if t.addr == addr {
			return t
		}
	}
	return nil
}

// setState changes a target's state (g.mu held) and logs it.
func (g *group) setState(t *target, state, reason, detail string) {
	if t.state == state && t.reason == reason {
		return
	}
	t.state, t.reason, t.detail = state, reason, detail
	t.generation++
	g.srv.log.Info("target state", zap.String("target_group", g.cfg.Name), zap.String(logTarget, t.name),
		zap.String("state", state), zap.String("reason", reason))
}

func (t *target) addFlow(f *flow) {
	t.fmu.Lock()
	t.flows[f] = struct{}{}
	t.fmu.Unlock()
}

func (t *target) removeFlow(f *flow) {
	t.fmu.Lock()
	delete(t.flows, f)
	t.fmu.Unlock()
}

func (t *target) activeFlows() int64 {
	t.fmu.Lock()
	defer t.fmu.Unlock()
	return int64(len(t.flows)) + t.udpFlows.Load()
}

// terminate resets the target's flows, spread over up to three seconds rather
// than all at once (NLB spreads its closes too), so clients do not all
// reconnect in the same instant.
func (t *target) terminate(why string) {
	go t.g.srv.endUDPFlows(t, why)
	t.fmu.Lock()
	n := len(t.flows)
	t.fmu.Unlock()
	if n == 0 {
		return
	}
	spread := min(3*time.Second, time.Duration(n)*20*time.Millisecond)
	step := spread / time.Duration(n)
	s := t.g.srv
	s.log.Info("terminating flows", zap.String(logTarget, t.name), zap.Int(logFlows, n), zap.String("why", why), zap.Duration("spread", spread))
	go func() {
		for {
			t.fmu.Lock()
			var victim *flow
			for f := range t.flows {
				if !f.aborted.Load() {
					victim = f
					break
				}
			}
			// Abort under fmu: a flow in t.flows has not finished, so it
			// cannot have been reused for another connection.
			if victim != nil && victim.abort() {
				victim.l.lbResets.Inc()
			}
			t.fmu.Unlock()
			if victim == nil || s.closing.Load() {
				return
			}
			time.Sleep(step)
		}
	}()
}

// after runs fn once d has passed, unless the target's state changed first.
func (t *target) after(d time.Duration, fn func()) {
	gen := t.generation
	s := t.g.srv
	time.AfterFunc(d, func() {
		t.g.mu.Lock()
		current := t.generation == gen
		t.g.mu.Unlock()
		if current && !s.closing.Load() {
			fn()
		}
	})
}

// SetHealth records a health transition from the checks (healthcheck.Reporter).
func (s *Server) SetHealth(groupName string, addr netip.AddrPort, healthy bool, reason, detail string) {
	g := s.groups[groupName]
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	t := g.find(addr)
	if t == nil || t.state == api.StateDraining || t.state == api.StateUnused {
		return
	}
	if healthy {
		g.setState(t, api.StateHealthy, "", "")
		g.rebuild()
		return
	}
	g.setState(t, api.StateUnhealthy, reason, detail)
	g.rebuild()
	a := &g.cfg.Attributes
	switch {
	case g.snap.Load().forZoneOf(t).failOpen:
		// Its flows would come straight back to it: leave them be.
	case a.UnhealthyConnectionTermination:
		t.terminate("target unhealthy")
	case a.UnhealthyDrainingInterval > 0:
		g.setState(t, api.StateUnhealthyDraining, reason, detail)
		t.after(a.UnhealthyDrainingInterval, func() {
			t.terminate("unhealthy draining interval over")
			g.mu.Lock()
			g.setState(t, api.StateUnhealthy, reason, detail)
			g.mu.Unlock()
		})
	}
}

// Register adds a target to a group (or takes a draining one back). New flows
// reach it once it passes its health checks, or at once while the group fails
// open.
func (s *Server) Register(groupName string, req api.RegisterRequest) (api.TargetHealth, error) {
	g := s.groups[groupName]
	if g == nil {
		return api.TargetHealth{}, fmt.Errorf("%w: no target group %q", api.ErrNotFound, groupName)
	}
	addr, err := config.ParseTargetAddress(req.Address, g.cfg.Port)
	if err != nil {
		return api.TargetHealth{}, fmt.Errorf("%w: address: %v", api.ErrInvalid, err)
	}
	weight := req.Weight
	if weight == 0 {
		weight = config.DefaultTargetWeight
	}
	if weight < 1 || weight > config.MaxTargetWeight {
		return api.TargetHealth{}, fmt.Errorf("%w: weight: %d is outside 1-%d", api.ErrInvalid, weight, config.MaxTargetWeight)
	}
	if req.Zone != "" && !slices.ContainsFunc(s.cfg.Zones, func(z config.Zone) bool { return z.Name == req.Zone }) {
		return api.TargetHealth{}, fmt.Errorf("%w: zone: no zone named %q", api.ErrInvalid, req.Zone)
	}
	if s.isOwnAddress(addr) {
		return api.TargetHealth{}, fmt.Errorf("%w: address: %s is l4lb's own listener or admin address; forwarding to it would loop", api.ErrInvalid, addr)
	}
	g.mu.Lock()
	t := g.find(addr)
	switch {
	case t == nil:
		t = g.newTarget(addr, req.Zone, weight)
		g.targets = append(g.targets, t)
	case t.state == api.StateDraining:
		t.zone, t.weight = req.Zone, weight
		g.setState(t, api.StateInitial, api.ReasonInitialHealthChecking, "")
	default:
		t.zone, t.weight = req.Zone, weight // registering again updates
	}
	err = g.rebuild()
	th := g.describe(t)
	g.mu.Unlock()
	if err != nil {
		return api.TargetHealth{}, err
	}
	if s.health != nil {
		s.health.Watch(g.cfg.Name, addr, g.checkSpec())
	}
	s.log.Info("target registered", zap.String("target_group", groupName), zap.String(logTarget, addr.String()))
	return th, nil
}

// Deregister stops new flows to a target at once. Its flows run on until the
// deregistration delay ends; then they are reset if connection termination
// is on, and the target is forgotten.
func (s *Server) Deregister(groupName, address string) error {
	g := s.groups[groupName]
	if g == nil {
		return fmt.Errorf("%w: no target group %q", api.ErrNotFound, groupName)
	}
	addr, err := config.ParseTargetAddress(address, g.cfg.Port)
	if err != nil {
		return fmt.Errorf("%w: address: %v", api.ErrInvalid, err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	t := g.find(addr)
	if t == nil {
		return fmt.Errorf("%w: %s is not registered in %q", api.ErrNotFound, addr, groupName)
	}
	if t.state == api.StateDraining {
		return nil
	}
	if s.health != nil {
		s.health.Unwatch(groupName, addr)
	}
	g.setState(t, api.StateDraining, api.ReasonDeregistrationInProgress, "Target deregistration is in progress")
	if err := g.rebuild(); err != nil {
		return err
	}
	a := &g.cfg.Attributes
	s.log.Info("drain start", zap.String("target_group", groupName), zap.String(logTarget, t.name), zap.Duration("deregistration_delay", a.DeregistrationDelay))
	t.after(a.DeregistrationDelay, func() {
		if a.DeregistrationConnectionTermination {
			t.terminate("deregistration delay over")
		}
		g.mu.Lock()
		n := len(g.targets)
		g.targets = slices.DeleteFunc(g.targets, func(x *target) bool { return x == t })
		if len(g.targets) < n {
			s.m.RemoveTarget(groupName, t.name)
		}
		g.mu.Unlock()
		s.log.Info("drain end", zap.String("target_group", groupName), zap.String(logTarget, t.name))
	})
	return nil
}

func (g *group) describe(t *target) api.TargetHealth {
	return api.TargetHealth{Address: t.name, Zone: t.zone, Weight: t.weight, State: t.state,
		Reason: t.reason, Description: t.detail, ActiveFlows: t.activeFlows()}
}

// checkSpec is the group's health check as the checker runs it: with a PROXY
// LOCAL header when the targets expect PROXY v2, as NLB's checks do.
func (g *group) checkSpec() config.HealthCheck {
	spec := g.cfg.HealthCheck
	spec.SendProxyLocal = g.cfg.Attributes.ProxyProtocolV2
	return spec
}

// Reserve marks an address of l4lb's own (the admin API's) that targets may
// not take. Listener addresses are refused without it.
func (s *Server) Reserve(addr netip.AddrPort) {
	s.reservedMu.Lock()
	s.reserved = append(s.reserved, netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port()))
	s.reservedMu.Unlock()
}

// isOwnAddress reports whether addr is one l4lb answers on itself: a
// listener's bound address, or a reserved one. A wildcard bind owns its port
// on every local address, so loopback ones and the unspecified address match
// it too.
func (s *Server) isOwnAddress(addr netip.AddrPort) bool {
	own := func(at netip.AddrPort) bool {
		if at.Port() != addr.Port() {
			return false
		}
		ip := at.Addr().Unmap()
		return ip == addr.Addr() || (ip.IsUnspecified() && addr.Addr().IsLoopback())
	}
	s.reservedMu.Lock()
	reserved := slices.ContainsFunc(s.reserved, own)
	s.reservedMu.Unlock()
	if reserved {
		return true
	}
	for _, l := range s.listeners {
		if a, ok := l.Addr().(*net.TCPAddr); ok && own(a.AddrPort()) {
			return true
		}
	}
	for _, u := range s.udp {
		if a, ok := u.Addr().(*net.UDPAddr); ok && own(a.AddrPort()) {
			return true
		}
	}
	return false
}
