package registry

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l4lb/l4lb/pkg/config"
)

// recorder is a data plane that remembers what it was told.
type recorder struct {
	mu      sync.Mutex
	changed int
	ended   []string
}

func (r *recorder) SnapshotChanged(*Group) { r.mu.Lock(); r.changed++; r.mu.Unlock() }
func (r *recorder) EndFlows(t *Target, why string) {
	r.mu.Lock()
	r.ended = append(r.ended, t.Name+": "+why)
	r.mu.Unlock()
}
func (r *recorder) endedFlows() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ended)
}

// watcher records what the registry asks the checks to do.
type watcher struct {
	mu      sync.Mutex
	watched map[netip.AddrPort]bool
	starts  map[netip.AddrPort]int // Watch calls: a checker (re)started
	passive int
}

func (w *watcher) Watch(_ string, t netip.AddrPort, _ config.HealthCheck) {
	w.mu.Lock()
	w.watched[t] = true
	if w.starts == nil {
		w.starts = map[netip.AddrPort]int{}
	}
	w.starts[t]++
	w.mu.Unlock()
}
func (w *watcher) Unwatch(_ string, t netip.AddrPort) {
	w.mu.Lock()
	delete(w.watched, t)
	w.mu.Unlock()
}
func (w *watcher) PassiveFailure(string, netip.AddrPort) { w.mu.Lock(); w.passive++; w.mu.Unlock() }

var (
	ta = netip.MustParseAddrPort("10.0.1.10:80")
	tb = netip.MustParseAddrPort("10.0.2.10:80")
	tc = netip.MustParseAddrPort("10.0.2.11:80")
)

func testRegistry(t *testing.T, mod func(*config.TargetGroup)) (*Registry, *ManualClock, *recorder) {
	t.Helper()
	g := config.TargetGroup{Name: "web", Protocol: config.TCP, Port: 80, Targets: []config.Target{
		{Address: ta, Zone: "a", Weight: 1}, {Address: tb, Zone: "b", Weight: 1}, {Address: tc, Zone: "b", Weight: 2}}}
	g.Attributes.CrossZone = config.CrossZoneInherit
	g.Attributes.UnhealthyRoutingMinHealthyCount = 1
	g.Attributes.DeregistrationDelay = 300 * time.Second
	g.Attributes.UnhealthyConnectionTermination = true
	if mod != nil {
		mod(&g)
	}
	cfg := &config.Config{TargetGroups: []config.TargetGroup{g},
		Zones: []config.Zone{{Name: "a"}, {Name: "b"}}}
	clock := &ManualClock{}
	r, err := New(cfg, Options{Clock: clock, Own: func(a netip.AddrPort) bool { return a == netip.MustParseAddrPort("127.0.0.1:9900") }})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	r.Subscribe(rec)
	t.Cleanup(r.Close)
	return r, clock, rec
}

func names(ts []*Target) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.Name)
	}
	return out
}

// Initial targets fail open; healthy ones route per zone without cross-zone;
// an unhealthy one leaves its zone's view and has its flows ended.
func TestStatesAndViews(t *testing.T) {
	r, _, rec := testRegistry(t, nil)
	g := r.Group("web")
	if v := g.Snapshot().All; !v.FailOpen || len(v.Targets) != 3 || v.Counted {
		t.Fatalf("all initial: %+v", v)
	}
	for _, a := range []netip.AddrPort{ta, tb, tc} {
		r.SetHealth("web", a, true, "", "")
	}
	if v := g.Snapshot().ForZone("b"); v.FailOpen || !slices.Equal(names(v.Targets), []string{tb.String(), tc.String()}) {
		t.Fatalf("zone b: %v fail-open %v", names(v.Targets), v.FailOpen)
	}
	if v := g.Snapshot().ForZone("a"); !slices.Equal(names(v.Targets), []string{ta.String()}) {
		t.Fatalf("zone a: %v", names(v.Targets))
	}
	r.SetHealth("web", tb, false, "Target.Timeout", "")
	if v := g.Snapshot().ForZone("b"); !slices.Equal(names(v.Targets), []string{tc.String()}) {
		t.Fatalf("zone b after tb failed: %v", names(v.Targets))
	}
	if got := rec.endedFlows(); !slices.Equal(got, []string{tb.String() + ": target unhealthy"}) {
		t.Fatalf("ended flows: %v", got)
	}
	tg, _ := r.TargetGroup("web")
	if tg.Targets[1].State != Unhealthy || tg.Targets[1].Reason != "Target.Timeout" {
		t.Fatalf("describe: %+v", tg.Targets[1])
	}
	// Zone a's last target failing makes zone a fail open, not end flows
	// that would come straight back.
	r.SetHealth("web", ta, false, "Target.Timeout", "")
	if v := g.Snapshot().ForZone("a"); !v.FailOpen || !v.Counted {
		t.Fatalf("zone a with its only target unhealthy: %+v", v)
	}
	if got := rec.endedFlows(); len(got) != 1 {
		t.Fatalf("flows ended while failing open: %v", got)
	}
	if p := g.ZoneProblem("a"); p == "" {
		t.Fatal("zone a reports no problem with no healthy target")
	}
	if p := g.ZoneProblem("b"); p != "" {
		t.Fatalf("zone b: %s", p)
	}
}

// A deregistered target leaves routing at once, keeps its flows for the
// delay, then has them ended (termination on) and is forgotten. Time moves
// only when the test says.
func TestDeregistrationDelay(t *testing.T) {
	r, clock, rec := testRegistry(t, func(g *config.TargetGroup) { g.Attributes.DeregistrationConnectionTermination = true })
	w := &watcher{watched: map[netip.AddrPort]bool{}}
	r.WatchHealth(w)
	if len(w.watched) != 3 {
		t.Fatalf("watching %d targets, want 3", len(w.watched))
	}
	if err := r.Deregister("web", tb.String()); err != nil {
		t.Fatal(err)
	}
	if w.watched[tb] {
		t.Fatal("a draining target is still checked")
	}
	if slices.Contains(names(r.Group("web").Snapshot().All.Targets), tb.String()) {
		t.Fatal("a draining target is still routed to")
	}
	clock.Advance(299 * time.Second)
	if len(rec.endedFlows()) != 0 || len(r.Group("web").Targets()) != 3 {
		t.Fatal("acted before the delay was over")
	}
	clock.Advance(time.Second)
	if got := rec.endedFlows(); !slices.Equal(got, []string{tb.String() + ": deregistration delay over"}) {
		t.Fatalf("ended flows: %v", got)
	}
	if len(r.Group("web").Targets()) != 2 {
		t.Fatal("the target was not forgotten")
	}
	// Registering it again during a drain takes it back; its old timer
	// then does nothing.
	if err := r.Deregister("web", tc.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Register("web", Registration{Address: tc.String(), Zone: "b", Weight: 2}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Hour)
	if len(r.Group("web").Targets()) != 2 || len(rec.endedFlows()) != 1 {
		t.Fatal("a stale deregistration timer acted")
	}
}

// After Close no timer fires.
func TestCloseStopsTimers(t *testing.T) {
	r, clock, rec := testRegistry(t, func(g *config.TargetGroup) { g.Attributes.DeregistrationConnectionTermination = true })
	if err := r.Deregister("web", ta.String()); err != nil {
		t.Fatal(err)
	}
	r.Close()
	clock.Advance(time.Hour)
	if len(rec.endedFlows()) != 0 {
		t.Fatal("a timer fired after Close")
	}
}

// With an unhealthy draining interval and no termination, flows end only
// once the interval is over.
func TestUnhealthyDrainingInterval(t *testing.T) {
	r, clock, rec := testRegistry(t, func(g *config.TargetGroup) {
		g.Attributes.UnhealthyConnectionTermination = false
		g.Attributes.UnhealthyDrainingInterval = time.Minute
	})
	for _, a := range []netip.AddrPort{ta, tb, tc} {
		r.SetHealth("web", a, true, "", "")
	}
	r.SetHealth("web", tc, false, "Target.FailedHealthChecks", "")
	tg, _ := r.TargetGroup("web")
	if tg.Targets[2].State != UnhealthyDraining {
		t.Fatalf("state %s, want unhealthy.draining", tg.Targets[2].State)
	}
	clock.Advance(59 * time.Second)
	if len(rec.endedFlows()) != 0 {
		t.Fatal("flows ended inside the draining interval")
	}
	clock.Advance(time.Second)
	if len(rec.endedFlows()) != 1 {
		t.Fatal("flows not ended after the draining interval")
	}
	if tg, _ = r.TargetGroup("web"); tg.Targets[2].State != Unhealthy {
		t.Fatalf("state %s after the interval, want unhealthy", tg.Targets[2].State)
	}
}

func TestRegisterValidation(t *testing.T) {
	r, _, _ := testRegistry(t, nil)
	for _, c := range []struct {
		group string
		req   Registration
		want  error
	}{
		{"nope", Registration{Address: "10.0.0.1:80"}, ErrNotFound},
		{"web", Registration{Address: "bogus"}, ErrInvalid},
		{"web", Registration{Address: "10.0.0.1:80", Weight: 1001}, ErrInvalid},
		{"web", Registration{Address: "10.0.0.1:80", Zone: "z"}, ErrInvalid},
		{"web", Registration{Address: "0.0.0.0:80"}, ErrInvalid},
		{"web", Registration{Address: "127.0.0.1:9900"}, ErrInvalid},
	} {
		if _, err := r.Register(c.group, c.req); !errorsIs(err, c.want) {
			t.Errorf("Register(%s, %+v) = %v, want %v", c.group, c.req, err, c.want)
		}
	}
	th, err := r.Register("web", Registration{Address: "10.0.3.10"})
	if err != nil || th.Address.String() != "10.0.3.10:80" || th.State != Initial || th.Weight != 1 {
		t.Fatalf("Register = %+v, %v", th, err)
	}
}

func TestStateNames(t *testing.T) {
	for s, want := range map[State]string{Initial: "initial", Healthy: "healthy", Unhealthy: "unhealthy",
		UnhealthyDraining: "unhealthy.draining", Draining: "draining", Unused: "unused", State(99): "unknown"} {
		if s.String() != want {
			t.Errorf("%d.String() = %q, want %q", s, s.String(), want)
		}
	}
}

func errorsIs(err, target error) bool { return err != nil && errors.Is(err, target) }

// NLB's rules for QUIC server IDs: required in a QUIC group and refused in
// others, unique in the group, and fixed while the target is registered
// (draining included); the snapshot maps each ID to its target while the
// target takes its connections' packets.
func TestQUICServerIDs(t *testing.T) {
	r, _, _ := testRegistry(t, nil)
	if _, err := r.Register("web", Registration{Address: "10.0.9.1:80", QUICServerID: "0x0000000000000001"}); err == nil || !strings.Contains(err.Error(), "only QUIC and TCP_QUIC target groups") {
		t.Fatalf("a server ID in a TCP group: %v", err)
	}
	quic := config.TargetGroup{Name: "h3", Protocol: config.QUIC, Port: 443, Targets: []config.Target{{Address: netip.MustParseAddrPort("10.0.9.10:443"), Weight: 1, QUICServerID: "0x0000000000000010"}}}
	quic.Attributes.DeregistrationDelay = time.Minute
	if err := r.Apply(withGroups(r, *r.Group("web").Config(), quic)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		reg  Registration
		want string
	}{
		{Registration{Address: "10.0.9.11:443"}, "required for a QUIC target group"},
		{Registration{Address: "10.0.9.11:443", QUICServerID: "0x10"}, "16 lowercase hex digits"},
		{Registration{Address: "10.0.9.11:443", QUICServerID: "0x0000000000000010"}, "is target 10.0.9.10:443's"},
		{Registration{Address: "10.0.9.10:443", QUICServerID: "0x0000000000000011"}, "cannot change while it is registered"},
	} {
		if _, err := r.Register("h3", c.reg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.reg, err, c.want)
		}
	}
	if _, err := r.Register("h3", Registration{Address: "10.0.9.11:443", QUICServerID: "0x0000000000000011"}); err != nil {
		t.Fatal(err)
	}
	ids := r.Group("h3").Snapshot().ServerIDs
	if ids[0x10] == nil || ids[0x10].Name != "10.0.9.10:443" || ids[0x11] == nil || len(ids) != 2 {
		t.Fatalf("the snapshot's server IDs: %v", ids)
	}
	if err := r.Deregister("h3", "10.0.9.11:443"); err != nil {
		t.Fatal(err)
	}
	if r.Group("h3").Snapshot().ServerIDs[0x11] == nil {
		t.Fatal("a draining target's server ID no longer routes: its connections' packets must reach it until the delay ends")
	}
	if _, err := r.Register("h3", Registration{Address: "10.0.9.11:443", QUICServerID: "0x0000000000000012"}); err == nil {
		t.Fatal("a draining target's server ID changed")
	}
}

// 100 health transitions at once, as a failed rack's checkers report them,
// share rebuilds: the tables are computed outside the group's lock, so the
// transitions that arrive meanwhile all go into the next one. Each call
// returns with a snapshot that includes its change, and every flow to end
// is ended once.
func TestHealthTransitionsTogetherShareRebuilds(t *testing.T) {
	var many []config.Target
	for i := range 101 {
		many = append(many, config.Target{Address: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 9, 0, byte(1 + i)}), 80), Weight: 1})
	}
	r, _, rec := testRegistry(t, func(g *config.TargetGroup) { g.Targets = many })
	g := r.Group("web")
	set := func(ts []config.Target, healthy bool) {
		var wg sync.WaitGroup
		for _, tg := range ts {
			wg.Go(func() {
				r.SetHealth("web", tg.Address, healthy, "Target.Timeout", "")
				if i := slices.IndexFunc(g.Snapshot().All.Targets, func(t *Target) bool { return t.Addr == tg.Address }); (i >= 0) != healthy {
					t.Errorf("SetHealth(%s, %v) returned before a snapshot that includes it", tg.Address, healthy)
				}
			})
		}
		wg.Wait()
	}
	set(many, true)
	rec.mu.Lock()
	rec.changed = 0
	rec.mu.Unlock()
	set(many[1:], false)
	if v := g.Snapshot().All; v.FailOpen || len(v.Targets) != 1 || v.Targets[0].Addr != many[0].Address {
		t.Fatalf("after 100 targets turned unhealthy: %d targets in the view, fail-open %v", len(v.Targets), v.FailOpen)
	}
	if got := rec.endedFlows(); len(got) != 100 {
		t.Fatalf("%d targets' flows ended, want 100", len(got))
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	// One rebuild each took 100; a few suffice when they share.
	if rec.changed > 20 {
		t.Fatalf("%d rebuilds for 100 transitions at once", rec.changed)
	}
	t.Logf("%d rebuilds for 100 transitions at once", rec.changed)
}
