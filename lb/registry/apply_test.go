package registry

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/pkg/config"
)

var (
	td = netip.MustParseAddrPort("10.0.3.10:80") // registered through the API
	te = netip.MustParseAddrPort("10.0.3.11:80") // added by a reload
	tf = netip.MustParseAddrPort("10.0.4.10:5432")
)

// withGroups is r's configuration with other target groups.
func withGroups(r *Registry, groups ...config.TargetGroup) *config.Config {
	c := *r.Config()
	c.TargetGroups = groups
	return &c
}

// describeAll maps each target of group to what describe-health says.
func describeAll(t *testing.T, r *Registry, group string) map[string]Health {
	t.Helper()
	tg, err := r.TargetGroup(group)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]Health{}
	for _, th := range tg.Targets {
		out[th.Address.String()] = th
	}
	return out
}

func (w *watcher) startsNow() map[netip.AddrPort]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.starts)
}

// A reload's registry step: targets that stay keep their states; the file's
// new targets are registered and checked, those it drops drain; API targets
// stay; the file's zone and weight win; attributes change; a group is added
// and one removed; only a changed health check restarts checkers, and only
// its group's.
func TestApply(t *testing.T) {
	r, clock, _ := testRegistry(t, nil)
	w := &watcher{watched: map[netip.AddrPort]bool{}}
	r.WatchHealth(w)
	for _, a := range []netip.AddrPort{ta, tb, tc} {
		r.SetHealth("web", a, true, "", "")
	}
	if _, err := r.Register("web", Registration{Address: td.String(), Zone: "a", Weight: 3}); err != nil {
		t.Fatal(err)
	}
	base := w.startsNow() // WatchHealth started every target's checker
	web := *r.Group("web").Config()
	web2 := web
	web2.Targets = []config.Target{{Address: ta, Zone: "b", Weight: 5}, {Address: tb, Zone: "b", Weight: 1}, {Address: te, Zone: "a", Weight: 1}}
	web2.Attributes.Stickiness = true
	db := config.TargetGroup{Name: "db", Protocol: config.TCP, Port: 5432, Targets: []config.Target{{Address: tf, Zone: "a", Weight: 1}}}
	db.Attributes = web.Attributes
	if err := r.Apply(withGroups(r, web2, db)); err != nil {
		t.Fatal(err)
	}
	got := describeAll(t, r, "web")
	for addr, want := range map[netip.AddrPort]State{ta: Healthy, tb: Healthy, tc: Draining, td: Initial, te: Initial} {
		if got[addr.String()].State != want {
			t.Errorf("%s: %q, want %q", addr, got[addr.String()].State, want)
		}
	}
	if a := got[ta.String()]; a.Zone != "b" || a.Weight != 5 {
		t.Errorf("the file's zone and weight did not win: %+v", a)
	}
	if !r.Group("web").Config().Attributes.Stickiness {
		t.Error("the new attributes are not in force")
	}
	if r.Group("db") == nil || describeAll(t, r, "db")[tf.String()].State != Initial {
		t.Fatal("the added group is not there with its target initial")
	}
	starts := w.startsNow()
	if starts[te] != 1 || starts[tf] != 1 || starts[ta] != base[ta] || starts[tb] != base[tb] {
		t.Fatalf("checkers started %v: want the new targets only", starts)
	}

	// Only web's check changes: web's live targets restart their checkers,
	// keep their states; db's does not restart.
	web3 := web2
	web3.HealthCheck.Interval = 7 * time.Second
	if err := r.Apply(withGroups(r, web3, db)); err != nil {
		t.Fatal(err)
	}
	after := w.startsNow()
	for _, a := range []netip.AddrPort{ta, tb, td, te} {
		if after[a] != starts[a]+1 {
			t.Errorf("%s: %d checker starts, want %d", a, after[a], starts[a]+1)
		}
	}
	if after[tf] != starts[tf] || after[tc] != starts[tc] {
		t.Errorf("checkers restarted outside the changed group, or for a draining target: %v", after)
	}
	if got := describeAll(t, r, "web"); got[ta.String()].State != Healthy {
		t.Errorf("a check change reset a state: %+v", got[ta.String()])
	}

	// db leaves the file: gone from the API at once, its target drains.
	if err := r.Apply(withGroups(r, web3)); err != nil {
		t.Fatal(err)
	}
	if r.Group("db") != nil {
		t.Fatal("a removed group is still listed")
	}
	clock.Advance(web.Attributes.DeregistrationDelay)
	if got := describeAll(t, r, "web"); slices.Contains(slices.Collect(maps.Keys(got)), tc.String()) {
		t.Fatal("the target the file dropped is still there after its delay")
	}
	if w.watchedNow(tf) || w.watchedNow(tc) {
		t.Fatal("drained targets are still checked")
	}
}

func (w *watcher) watchedNow(a netip.AddrPort) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.watched[a]
}

// What a binary upgrade hands over comes back in the new process: states,
// API targets, a draining target draining again; a file target the new
// config dropped does not.
func TestSaveRestore(t *testing.T) {
	r, _, _ := testRegistry(t, nil)
	r.SetHealth("web", ta, true, "", "")
	r.SetHealth("web", tb, false, "Target.Timeout", "")
	if _, err := r.Register("web", Registration{Address: td.String(), Zone: "a", Weight: 3}); err != nil {
		t.Fatal(err)
	}
	r.SetHealth("web", td, true, "", "")
	if err := r.Deregister("web", tc.String()); err != nil {
		t.Fatal(err)
	}
	saved := r.Save()

	next, _, _ := testRegistry(t, func(g *config.TargetGroup) { g.Targets = g.Targets[1:] }) // ta dropped
	next.Restore(saved)
	got := describeAll(t, next, "web")
	want := map[string]State{tb.String(): Unhealthy, tc.String(): Draining, td.String(): Healthy}
	if len(got) != len(want) {
		t.Fatalf("restored %v, want %v", got, want)
	}
	for a, s := range want {
		if got[a].State != s {
			t.Errorf("%s: %q, want %q", a, got[a].State, s)
		}
	}
	if got[td.String()].Weight != 3 || got[tb.String()].Reason != "Target.Timeout" {
		t.Errorf("registration or reason lost: %+v %+v", got[td.String()], got[tb.String()])
	}
}

// A reload cannot change a kept group's forwarding or encapsulation: the
// kernel paths take them at start. The refused reload changes nothing.
func TestApplyRefusesForwardingChange(t *testing.T) {
	r, _, _ := testRegistry(t, nil)
	web := *r.Group("web").Config()
	web.Forwarding, web.Encapsulation = config.ForwardDSR, config.EncapIPIP
	r2, _, _ := testRegistry(t, nil)
	if err := r2.Apply(withGroups(r2, web)); err == nil || !strings.Contains(err.Error(), "restarts or upgrades") {
		t.Fatalf("nat to dsr on reload: %v, want refused", err)
	}
	if r2.Group("web").Config().Forwarding == config.ForwardDSR {
		t.Fatal("the refused reload changed the group")
	}
	// A group added by the reload takes any mode.
	added := web
	added.Name = "dsr"
	added.Encapsulation, added.GUEPort = config.EncapGUE, 6080
	if err := r.Apply(withGroups(r, *r.Group("web").Config(), added)); err != nil {
		t.Fatal(err)
	}
	changed := added
	changed.GUEPort = 7000
	if err := r.Apply(withGroups(r, *r.Group("web").Config(), changed)); err == nil || !strings.Contains(err.Error(), "from dsr by gue to port 6080 to dsr by gue to port 7000") {
		t.Fatalf("a GUE port change on reload: %v, want refused", err)
	}
}

// Unsettled names a target still on its first checks, until none is.
func TestUnsettled(t *testing.T) {
	r, _, _ := testRegistry(t, nil)
	g := r.Group("web")
	if g.Unsettled() == "" {
		t.Fatal("a new group's targets are initial: want one named")
	}
	for _, a := range []netip.AddrPort{ta, tb} {
		r.SetHealth("web", a, true, "", "")
	}
	r.SetHealth("web", tc, false, "Target.FailedHealthChecks", "refused")
	if got := g.Unsettled(); got != "" {
		t.Fatalf("every target checked (healthy or not): Unsettled says %q", got)
	}
}

// A group a reload adds does not make a zone unhealthy while its targets
// are on their first checks, nor if they fail them: a zone's prefix is
// withdrawn only when a group that was serving stops. Once it has served
// in a zone, it counts there as any group does. A group there at start
// counts at once.
func TestReloadedGroupSettles(t *testing.T) {
	r, _, _ := testRegistry(t, nil)
	if p := r.Group("web").ZoneProblem("a"); p == "" {
		t.Fatal("a group there at start, all initial: zone a reports no problem")
	}
	api := config.TargetGroup{Name: "api", Protocol: config.TCP, Port: 80, Targets: []config.Target{{Address: td, Zone: "a", Weight: 1}}}
	api.Attributes.CrossZone = config.CrossZoneInherit
	if err := r.Apply(withGroups(r, *r.Group("web").Config(), api)); err != nil {
		t.Fatal(err)
	}
	g := r.Group("api")
	if p := g.ZoneProblem("a"); p != "" || !g.Settling("a") {
		t.Fatalf("a group just added, its target initial: zone a problem %q, settling %v", p, g.Settling("a"))
	}
	r.SetHealth("api", td, false, "Target.FailedHealthChecks", "refused")
	if p := g.ZoneProblem("a"); p != "" {
		t.Fatalf("a group just added that never served: zone a problem %q", p)
	}
	// A binary upgrade hands the group's settling to the new process,
	// whose registry builds every group at start.
	next, err := New(r.Config(), Options{Clock: &ManualClock{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(next.Close)
	next.Restore(r.Save())
	if ng := next.Group("api"); !ng.Settling("a") || ng.ZoneProblem("a") != "" {
		t.Fatalf("after an upgrade: settling %v, zone a problem %q; want the group still settling", ng.Settling("a"), ng.ZoneProblem("a"))
	}
	r.SetHealth("api", td, true, "", "")
	if p := g.ZoneProblem("a"); p != "" || g.Settling("a") {
		t.Fatalf("serving: zone a problem %q, settling %v", p, g.Settling("a"))
	}
	r.SetHealth("api", td, false, "Target.FailedHealthChecks", "refused")
	if p := g.ZoneProblem("a"); p == "" {
		t.Fatal("the group served in zone a and stopped: zone a reports no problem")
	}
}

// When a zone's last target drains, the zone's view is the group's other
// zones' targets: new flows that arrive before the routers hear the zone's
// withdrawal are served, not reset (cross-zone fail-over).
func TestZoneFailsOverAcrossZones(t *testing.T) {
	r, _, _ := testRegistry(t, nil)
	for _, a := range []netip.AddrPort{ta, tb, tc} {
		r.SetHealth("web", a, true, "", "")
	}
	if err := r.Deregister("web", ta.String()); err != nil {
		t.Fatal(err)
	}
	g := r.Group("web")
	if v := g.Snapshot().ForZone("a"); !slices.Equal(names(v.Targets), []string{tb.String(), tc.String()}) {
		t.Fatalf("zone a with its only target draining routes to %v, want zone b's", names(v.Targets))
	}
	if p := g.ZoneProblem("a"); p == "" {
		t.Fatal("zone a has no target of its own left: want a problem (the prefix is withdrawn)")
	}
}
