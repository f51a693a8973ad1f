// Package registry is l4lb's target registry: the target groups, their
// targets with NLB's states and reason codes, and the immutable per-zone
// routing snapshots the data planes read. Health results flow one way into
// it; the data planes subscribe to it, read snapshots, and are told when the
// flows pinned to a target must end. It holds no flow of its own.
//
//	r, err := registry.New(cfg, registry.Options{Logger: log, Metrics: m})
//	checks := healthcheck.NewScheduler(r, ...) // results flow into r
//	r.WatchHealth(checks)                      // r says what to check
//	r.Subscribe(dataPlane)                     // snapshot changes, flows to end
//	view := r.Group("web").Snapshot().ForZone("a")
//	prefs := view.Balance.Pick(key, buf[:])    // indexes into view.Targets
//
// Deregistration delays and unhealthy draining intervals run on an injected
// Clock, so tests move time instead of sleeping.
package registry

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/events"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// Log keys, declared once.
const (
	logGroup  = "target_group"
	logTarget = "target"
	logFlows  = "flows"
)

// HealthWatcher is what the registry needs from the health checks
// (healthcheck.Scheduler satisfies it).
type HealthWatcher interface {
	Watch(group string, target netip.AddrPort, spec config.HealthCheck)
	Unwatch(group string, target netip.AddrPort)
	PassiveFailure(group string, target netip.AddrPort)
}

// Subscriber is a data plane. Both calls may come with a group's lock held:
// they must not block, nor call back into the registry.
type Subscriber interface {
	// SnapshotChanged says g has a new snapshot (the kernel path writes its
	// tables again).
	SnapshotChanged(g *Group)
	// EndFlows asks for the flows pinned to t to end now: a deregistration
	// delay or unhealthy draining interval is over, or t turned unhealthy
	// with connection termination on.
	EndFlows(t *Target, why string)
}

// Options are the injected parts of a Registry. The zero value works: no
// logs, no metrics, the system clock, no address refused as l4lb's own.
type Options struct {
	Logger  *zap.Logger
	Metrics *metrics.Metrics
	Clock   Clock
	// Own reports whether an address is one l4lb answers on itself (a
	// listener, the admin API): registering it as a target would loop.
	Own func(netip.AddrPort) bool
	// Events, when not nil, hears of state changes, drains and fail-open.
	Events *events.Log
}

// Registry holds every target group of a configuration.
type Registry struct {
	cfg    atomic.Pointer[config.Config]     // replaced whole by Apply
	groups atomic.Pointer[map[string]*Group] // replaced whole by Apply
	log    *zap.Logger
	m      *metrics.Metrics
	own    func(netip.AddrPort) bool
	events *events.Log
	apply  sync.Mutex // one Apply at a time
	hooks
	timerSet
}

// hooks are whom the registry tells: the data planes and the health checks.
type hooks struct {
	mu     sync.Mutex // guards what follows
	health HealthWatcher
	subs   []Subscriber
}

// timerSet holds the pending drain and delay timers.
type timerSet struct {
	clock  Clock
	mu     sync.Mutex // guards what follows
	timers map[Timer]struct{}
	closed bool
}

// New builds the groups of cfg, every target initial.
func New(cfg *config.Config, opts Options) (*Registry, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Clock == nil {
		opts.Clock = RealClock{}
	}
	if opts.Own == nil {
		opts.Own = func(netip.AddrPort) bool { return false }
	}
	r := &Registry{log: opts.Logger, m: opts.Metrics, own: opts.Own, events: opts.Events}
	r.timerSet = timerSet{clock: opts.Clock, timers: map[Timer]struct{}{}}
	r.cfg.Store(cfg)
	groups := map[string]*Group{}
	for i := range cfg.TargetGroups {
		g, err := newGroup(r, &cfg.TargetGroups[i])
		if err != nil {
			return nil, err
		}
		groups[g.Name()] = g
	}
	r.groups.Store(&groups)
	return r, nil
}

// Config is the configuration the registry serves now.
func (r *Registry) Config() *config.Config { return r.cfg.Load() }

// Group returns the named group, or nil.
func (r *Registry) Group(name string) *Group { return (*r.groups.Load())[name] }

// all is every group now.
func (r *Registry) all() map[string]*Group { return *r.groups.Load() }

// Subscribe adds a data plane to tell about snapshots and flows to end.
func (h *hooks) Subscribe(s Subscriber) {
	h.mu.Lock()
	h.subs = append(h.subs, s)
	h.mu.Unlock()
}

func (h *hooks) subscribers() []Subscriber {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.subs
}

// WatchHealth starts the checks of every registered target on w, and of
// every target registered later. Without it, targets stay initial and
// routing fails open to all of them.
func (r *Registry) WatchHealth(w HealthWatcher) {
	r.hooks.mu.Lock()
	r.health = w
	r.hooks.mu.Unlock()
	for _, g := range r.all() {
		g.mu.Lock()
		for _, t := range g.targets {
			if t.state != Draining {
				w.Watch(g.Name(), t.Addr, g.checkSpec())
			}
		}
		g.mu.Unlock()
	}
}

func (h *hooks) watcher() HealthWatcher {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.health
}

// PassiveFailure reports a failed connect on live traffic, which counts as a
// failed health check. A failure of l4lb's own (out of descriptors or ports)
// must never come here.
func (h *hooks) PassiveFailure(t *Target) {
	if w := h.watcher(); w != nil {
		w.PassiveFailure(t.group.Name(), t.Addr)
	}
}

// Close stops every pending timer; no flow is ended after it returns.
func (ts *timerSet) Close() {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.closed = true
	for t := range ts.timers {
		t.Stop()
	}
	clear(ts.timers)
}

// after runs fn once d has passed, unless t's state changed first or the
// registry closed. Called with t's group lock held; fn runs without it.
func (ts *timerSet) after(t *Target, d time.Duration, fn func()) {
	gen := t.generation
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.closed {
		return
	}
	var timer Timer
	timer = ts.clock.AfterFunc(d, func() {
		ts.mu.Lock()
		_, pending := ts.timers[timer]
		delete(ts.timers, timer)
		ts.mu.Unlock()
		t.group.mu.Lock()
		current := t.generation == gen
		t.group.mu.Unlock()
		if pending && current {
			fn()
		}
	})
	ts.timers[timer] = struct{}{}
}

// endFlows tells every data plane to end t's flows.
func (r *Registry) endFlows(t *Target, why string) {
	r.log.Info("ending flows", zap.String(logGroup, t.group.Name()), zap.String(logTarget, t.Name), zap.String("why", why))
	for _, s := range r.subscribers() {
		s.EndFlows(t, why)
	}
}

// SetHealth records a health transition from the checks (healthcheck.Reporter).
//
// Transitions that arrive together share one rebuild of the group's
// tables. A rack that fails has every target's checker report within
// moments, and each rebuild of a large group is a Maglev fill (about
// 150 ms at 200 targets): one rebuild each, in turn under the group's
// lock, kept dead targets in the table for over 40 s. So the state is set
// under the lock, and the tables are computed outside it (rebuildFor): the
// transitions that arrive meanwhile set their states, and the next rebuild
// takes them all.
func (r *Registry) SetHealth(groupName string, addr netip.AddrPort, healthy bool, reason, detail string) {
	g := r.Group(groupName)
	if g == nil {
		return
	}
	state := Unhealthy
	if healthy {
		state, reason, detail = Healthy, "", ""
	}
	g.mu.Lock()
	t := g.find(addr)
	if t == nil || t.state == Draining || t.state == Unused {
		g.mu.Unlock()
		return
	}
	g.setState(t, state, reason, detail)
	g.changed++
	mine := g.changed
	g.mu.Unlock()

	g.rebuildFor(mine) // an error is logged: the last good snapshot stays
	g.mu.Lock()
	defer g.mu.Unlock()
	if healthy || t.state != Unhealthy {
		return // or changed again meanwhile: that call acts on it
	}
	a := &g.Config().Attributes
	switch {
	case g.snap.Load().forZoneOf(t).FailOpen:
		// Its flows would come straight back to it: leave them be.
	case a.UnhealthyConnectionTermination:
		r.endFlows(t, "target unhealthy")
	case a.UnhealthyDrainingInterval > 0:
		g.setState(t, UnhealthyDraining, reason, detail)
		r.after(t, a.UnhealthyDrainingInterval, func() {
			r.endFlows(t, "unhealthy draining interval over")
			g.mu.Lock()
			g.setState(t, Unhealthy, reason, detail)
			g.mu.Unlock()
		})
	}
}

// logErr logs a failed snapshot rebuild: the old snapshot stays in force.
func (r *Registry) logErr(err error) {
	if err != nil {
		r.log.Error("rebuilding a routing snapshot; the previous one stays", zap.Error(err))
	}
}

// Check is what Register refuses, for a registration that another store
// (etcd) will carry to every node: the group, the address (with the
// group's port when it has none), the weight (0: the default), the zone,
// and l4lb's own addresses.
func (r *Registry) Check(groupName string, req Registration) (*Group, netip.AddrPort, int, error) {
	g := r.Group(groupName)
	if g == nil {
		return nil, netip.AddrPort{}, 0, fmt.Errorf("%w: no target group %q", ErrNotFound, groupName)
	}
	addr, err := config.ParseTargetAddress(req.Address, g.Config().Port)
	if err != nil {
		return nil, netip.AddrPort{}, 0, fmt.Errorf("%w: address: %v", ErrInvalid, err)
	}
	weight := req.Weight
	if weight == 0 {
		weight = config.DefaultTargetWeight
	}
	switch {
	case weight < 1 || weight > config.MaxTargetWeight:
		return nil, netip.AddrPort{}, 0, fmt.Errorf("%w: weight: %d is outside 1-%d", ErrInvalid, weight, config.MaxTargetWeight)
	case req.Zone != "" && !slices.ContainsFunc(r.Config().Zones, func(z config.Zone) bool { return z.Name == req.Zone }):
		return nil, netip.AddrPort{}, 0, fmt.Errorf("%w: zone: no zone named %q", ErrInvalid, req.Zone)
	case r.own(addr):
		return nil, netip.AddrPort{}, 0, fmt.Errorf("%w: address: %s is l4lb's own listener or admin address; forwarding to it would loop", ErrInvalid, addr)
	}
	if err := g.checkServerID(addr, req.QUICServerID); err != nil {
		return nil, netip.AddrPort{}, 0, err
	}
	return g, addr, weight, nil
}

// checkServerID applies NLB's rules to a registration's QUIC server ID:
// required in QUIC and TCP_QUIC groups and refused in others, unique in
// the group, and fixed while its target is registered (a draining target
// still is, and still receives its connections' packets).
func (g *Group) checkServerID(addr netip.AddrPort, id string) error {
	if err := config.CheckQUICServerID(g.Config().Protocol, id); err != nil {
		return fmt.Errorf("%w: quic_server_id: %v", ErrInvalid, err)
	}
	if id == "" {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, t := range g.targets {
		switch {
		case t.Addr == addr && t.quicID != id:
			return fmt.Errorf("%w: quic_server_id: target %s is registered with server ID %s, which cannot change while it is registered: deregister it, and register it again once its drain ends", ErrInvalid, addr, t.quicID)
		case t.Addr != addr && t.quicID == id:
			return fmt.Errorf("%w: quic_server_id: %s is target %s's: a server ID is unique within its target group", ErrInvalid, id, t.Addr)
		}
	}
	return nil
}

// Register adds a target to a group (or takes a draining one back). New flows
// reach it once it passes its health checks, or at once while the group fails
// open.
func (r *Registry) Register(groupName string, req Registration) (Health, error) {
	g, addr, weight, err := r.Check(groupName, req)
	if err != nil {
		return Health{}, err
	}
	g.mu.Lock()
	t := g.find(addr)
	switch {
	case t == nil:
		t = g.newTarget(addr, req.Zone, weight, req.QUICServerID)
		g.targets = append(g.targets, t)
	case t.state == Draining:
		t.zone, t.weight = req.Zone, weight
		g.setState(t, Initial, ReasonInitialHealthChecking, "")
	default:
		t.zone, t.weight = req.Zone, weight // registering again updates
	}
	err = g.rebuild()
	th := t.describe()
	g.mu.Unlock()
	if err != nil {
		return Health{}, err
	}
	if w := r.watcher(); w != nil {
		w.Watch(g.Name(), addr, g.checkSpec())
	}
	r.log.Info("target registered", zap.String(logGroup, groupName), zap.String(logTarget, addr.String()))
	return th, nil
}

// Deregister stops new flows to a target at once. Its flows run on until the
// deregistration delay ends; then they are ended if connection termination
// is on, and the target is forgotten.
func (r *Registry) Deregister(groupName, address string) error {
	g := r.Group(groupName)
	if g == nil {
		return fmt.Errorf("%w: no target group %q", ErrNotFound, groupName)
	}
	addr, err := config.ParseTargetAddress(address, g.Config().Port)
	if err != nil {
		return fmt.Errorf("%w: address: %v", ErrInvalid, err)
	}
	return r.deregister(g, addr, time.Time{})
}

// DeregisterAt is Deregister of a request made at a given time (recorded
// in a shared store): the deregistration delay counts from then, so every
// node that applies it drains until the same moment.
func (r *Registry) DeregisterAt(groupName string, addr netip.AddrPort, at time.Time) error {
	g := r.Group(groupName)
	if g == nil {
		return fmt.Errorf("%w: no target group %q", ErrNotFound, groupName)
	}
	return r.deregister(g, addr, at)
}

// deregister drains addr for the group's deregistration delay, counted from
// at (zero: now).
func (r *Registry) deregister(g *Group, addr netip.AddrPort, at time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	t := g.find(addr)
	if t == nil {
		return fmt.Errorf("%w: %s is not registered in %q", ErrNotFound, addr, g.Name())
	}
	if t.state == Draining {
		return nil
	}
	if w := r.watcher(); w != nil {
		w.Unwatch(g.Name(), addr)
	}
	g.setState(t, Draining, ReasonDeregistrationInProgress, "Target deregistration is in progress")
	if err := g.rebuild(); err != nil {
		return err
	}
	a := &g.Config().Attributes
	delay := a.DeregistrationDelay
	if !at.IsZero() {
		delay = max(0, delay-time.Since(at)) // wall clocks: the time comes from another node
	}
	r.log.Info("drain start", zap.String(logGroup, g.Name()), zap.String(logTarget, t.Name), zap.Duration("deregistration_delay", delay))
	r.events.Add(events.DrainStart, g.Name()+"/"+t.Name, "deregistration delay "+delay.Round(time.Millisecond).String())
	r.after(t, delay, func() {
		if a.DeregistrationConnectionTermination {
			r.endFlows(t, "deregistration delay over")
		}
		g.mu.Lock()
		n := len(g.targets)
		g.targets = slices.DeleteFunc(g.targets, func(x *Target) bool { return x == t })
		if len(g.targets) < n {
			r.m.RemoveTarget(g.Name(), t.Name)
			// Gone from the snapshot too: its QUIC server ID routes no
			// more packets to it.
			r.logErr(g.rebuild())
		}
		g.mu.Unlock()
		r.log.Info("drain end", zap.String(logGroup, g.Name()), zap.String(logTarget, t.Name))
		r.events.Add(events.DrainEnd, g.Name()+"/"+t.Name, "deregistered")
	})
	return nil
}

// Errors the registry's calls wrap: the admin API answers 404 and 400.
var (
	ErrNotFound = errors.New("not found")
	ErrInvalid  = errors.New("invalid")
)

// Registration is a target as the admin API registers it.
type Registration struct {
	Address      string // IP:PORT, or IP for the group's port
	Zone         string
	Weight       int    // 0: the default
	QUICServerID string // QUIC and TCP_QUIC groups: required, 0x and 16 lowercase hex digits
}

// GroupHealth is a target group with its targets' health.
type GroupHealth struct {
	Name      string
	Protocol  config.Protocol
	Port      uint16
	FailOpen  bool // routing to all targets: too few are healthy
	Targets   []Health
	Listeners []string // the listeners that route to it
}

// TargetGroups describes every group, sorted by name.
func (r *Registry) TargetGroups() []GroupHealth {
	groups := r.all()
	names := make([]string, 0, len(groups))
	for n := range groups {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]GroupHealth, 0, len(names))
	for _, n := range names {
		tg, _ := r.TargetGroup(n)
		out = append(out, tg)
	}
	return out
}

// TargetGroup describes one group and its targets' health: states that
// are in force, in the routing snapshot.
func (r *Registry) TargetGroup(name string) (GroupHealth, error) {
	g := r.Group(name)
	if g == nil {
		return GroupHealth{}, fmt.Errorf("%w: no target group %q", ErrNotFound, name)
	}
	out := GroupHealth{Name: name, Protocol: g.Config().Protocol, Port: g.Config().Port, Targets: []Health{}}
	g.lockSettled()
	snap := g.snap.Load()
	out.FailOpen = snap.All.FailOpen
	for _, z := range snap.Zones {
		out.FailOpen = out.FailOpen || z.FailOpen
	}
	for _, t := range g.targets {
		out.Targets = append(out.Targets, t.describe())
	}
	g.mu.Unlock()
	out.Listeners = r.Config().ListenersOf(name)
	return out, nil
}
