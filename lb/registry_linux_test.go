package lb

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// openFlow connects through addr and returns the connection with the target
// its flow reached.
func openFlow(t *testing.T, srv *Server, addr string) (net.Conn, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	echoOnce(t, c)
	local := c.LocalAddr().String()
	var tgt string
	waitFor(t, func() bool {
		fl, _ := srv.Flows("", 1000)
		for _, f := range fl {
			if f.Client == local {
				tgt = f.Target
				return true
			}
		}
		return false
	})
	return c, tgt
}

func echoOnce(t *testing.T, c net.Conn) {
	t.Helper()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatalf("write: %v", err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("flow is gone: %v", err)
	}
}

func testDeregister(t *testing.T, terminate bool) {
	a, b := startEcho(t), startEcho(t)
	cfg := testConfig([]config.Target{{Address: a.addr, Weight: 1}, {Address: b.addr, Weight: 1}}, func(_ *config.Listener, g *config.TargetGroup) {
		g.Attributes.DeregistrationDelay = 300 * time.Second
		g.Attributes.DeregistrationConnectionTermination = terminate
		g.Attributes.UnhealthyRoutingMinHealthyCount = 1
	})
	clock := &registry.ManualClock{}
	srv, addr := startServer(t, cfg, Options{Clock: clock})
	// A long-lived flow on target a.
	var long net.Conn
	for long == nil {
		c, tgt := openFlow(t, srv, addr)
		if tgt == a.addr.String() {
			long = c
		} else {
			c.Close()
		}
	}
	if err := srv.Deregister("tg", a.addr.String()); err != nil {
		t.Fatal(err)
	}
	tg, _ := srv.TargetGroup("tg")
	if tg.Targets[0].State != api.StateDraining || tg.Targets[0].Reason != api.ReasonDeregistrationInProgress {
		t.Fatalf("deregistered target: %+v", tg.Targets[0])
	}
	// Its own flow runs on during the delay...
	clock.Advance(299 * time.Second)
	echoOnce(t, long)
	// ...while no new flow reaches it.
	for range 50 {
		c, tgt := openFlow(t, srv, addr)
		if tgt != b.addr.String() {
			t.Fatalf("new flow went to %s after deregistration", tgt)
		}
		c.Close()
	}
	if tg, _ := srv.TargetGroup("tg"); len(tg.Targets) != 2 {
		t.Fatalf("the target was forgotten before its delay was over: %+v", tg.Targets)
	}
	clock.Advance(time.Second) // the delay is over
	if terminate {
		long.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := long.Read(make([]byte, 1)); err == nil {
			t.Fatal("flow got data instead of a reset")
		}
	} else {
		echoOnce(t, long)
	}
	// The target is forgotten after the delay either way.
	if tg, _ := srv.TargetGroup("tg"); len(tg.Targets) != 1 {
		t.Fatalf("targets after the delay: %+v", tg.Targets)
	}
}

func TestDeregisterTerminates(t *testing.T)    { testDeregister(t, true) }
func TestDeregisterLetsFlowsLive(t *testing.T) { testDeregister(t, false) }

// The test reports health transitions itself, as the checks would (the checks
// against real endpoints are tested in healthcheck and end to end in cmd).
func TestFailOpenWhenAllUnhealthy(t *testing.T) {
	a, b := startEcho(t), startEcho(t)
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	cfg := testConfig([]config.Target{{Address: a.addr, Weight: 1}, {Address: b.addr, Weight: 1}}, func(_ *config.Listener, g *config.TargetGroup) {
		g.Attributes.UnhealthyRoutingMinHealthyCount = 1
		g.Attributes.UnhealthyConnectionTermination = true
	})
	srv, addr := startServer(t, cfg, Options{Metrics: m})
	srv.Registry.SetHealth("tg", a.addr, true, "", "")
	srv.Registry.SetHealth("tg", b.addr, true, "", "")
	// Healthy: not fail-open, nothing counted.
	c, _ := openFlow(t, srv, addr)
	c.Close()
	if v := counterValue(t, reg, "l4lb_unhealthy_routing_flows_total"); v != 0 {
		t.Fatalf("unhealthy routing counted %v with healthy targets", v)
	}
	// One unhealthy: flows go to the other only.
	srv.Registry.SetHealth("tg", a.addr, false, api.ReasonFailedHealthChecks, "")
	for range 20 {
		c, tgt := openFlow(t, srv, addr)
		if tgt != b.addr.String() {
			t.Fatalf("flow went to unhealthy %s", tgt)
		}
		c.Close()
	}
	// Both unhealthy while their ports serve: traffic keeps flowing to both.
	srv.Registry.SetHealth("tg", b.addr, false, api.ReasonResponseCodeMismatch, "")
	seen := map[string]bool{}
	for range 40 {
		c, tgt := openFlow(t, srv, addr)
		seen[tgt] = true
		c.Close()
	}
	if len(seen) != 2 {
		t.Fatalf("fail-open used %v, want both targets", seen)
	}
	if v := counterValue(t, reg, "l4lb_unhealthy_routing_flows_total"); v < 40 {
		t.Fatalf("unhealthy_routing_flows_total = %v, want at least 40", v)
	}
	tg, _ := srv.TargetGroup("tg")
	if !tg.FailOpen {
		t.Fatal("group does not say it fails open")
	}
}

// A target that turns unhealthy has its flows reset (the default), unless the
// group is failing open.
func TestUnhealthyTerminatesFlows(t *testing.T) {
	a, b := startEcho(t), startEcho(t)
	cfg := testConfig([]config.Target{{Address: a.addr, Weight: 1}, {Address: b.addr, Weight: 1}}, func(_ *config.Listener, g *config.TargetGroup) {
		g.Attributes.UnhealthyRoutingMinHealthyCount = 1
		g.Attributes.UnhealthyConnectionTermination = true
	})
	srv, addr := startServer(t, cfg, Options{})
	srv.Registry.SetHealth("tg", a.addr, true, "", "")
	srv.Registry.SetHealth("tg", b.addr, true, "", "")
	var onA net.Conn
	for onA == nil {
		c, tgt := openFlow(t, srv, addr)
		if tgt == a.addr.String() {
			onA = c
		}
	}
	srv.Registry.SetHealth("tg", a.addr, false, api.ReasonFailedHealthChecks, "")
	onA.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := onA.Read(make([]byte, 1)); err == nil {
		t.Fatal("flow to an unhealthy target was not reset")
	}
}

func TestRegisterValidation(t *testing.T) {
	e := startEcho(t)
	srv, _ := startServer(t, testConfig([]config.Target{{Address: e.addr, Weight: 1}}, nil), Options{})
	for _, tc := range []struct {
		group string
		req   api.RegisterRequest
		want  error
	}{
		{"nope", api.RegisterRequest{Address: "127.0.0.1:1"}, api.ErrNotFound},
		{"tg", api.RegisterRequest{Address: "not an address"}, api.ErrInvalid},
		{"tg", api.RegisterRequest{Address: "127.0.0.1:1", Weight: 5000}, api.ErrInvalid},
		{"tg", api.RegisterRequest{Address: "127.0.0.1"}, api.ErrInvalid}, // no port, group has none
	} {
		if _, err := srv.Register(tc.group, tc.req); err == nil || !errorsIs(err, tc.want) {
			t.Errorf("Register(%s, %+v) = %v, want %v", tc.group, tc.req, err, tc.want)
		}
	}
	th, err := srv.Register("tg", api.RegisterRequest{Address: "127.0.0.1:1", Weight: 2})
	if err != nil || th.State != api.StateInitial || th.Reason != api.ReasonInitialHealthChecking {
		t.Fatalf("Register = %+v, %v", th, err)
	}
	if err := srv.Deregister("tg", "127.0.0.9:9"); !errorsIs(err, api.ErrNotFound) {
		t.Fatalf("deregistering an unknown target: %v", err)
	}
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return sumOf(mfs, name)
}

// sumOf adds up every series of the named metric.
func sumOf(mfs []*dto.MetricFamily, name string) float64 {
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += metricValue(m)
			}
		}
	}
	return sum
}

func metricValue(m *dto.Metric) float64 {
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// Zone health follows the healthy targets each zone's listener can use; with
// cross-zone off, a zone whose own targets are all down reports 503-worthy.
func TestZoneHealth(t *testing.T) {
	a, b := startEcho(t), startEcho(t)
	cfg := testConfig([]config.Target{{Address: a.addr, Zone: "a", Weight: 1}, {Address: b.addr, Zone: "b", Weight: 1}}, func(l *config.Listener, g *config.TargetGroup) {
		l.Bind = []config.BindAddr{{IP: netip.MustParseAddr("127.0.0.1"), Zone: "a"}, {IP: netip.MustParseAddr("127.0.0.2"), Zone: "b"}}
		g.Attributes.UnhealthyRoutingMinHealthyCount = 1
	})
	cfg.Zones = []config.Zone{{Name: "a", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}, {Name: "b", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.2")}}}
	srv, _ := startServer(t, cfg, Options{})
	srv.Registry.SetHealth("tg", a.addr, true, "", "")
	srv.Registry.SetHealth("tg", b.addr, false, api.ReasonFailedHealthChecks, "")
	za, err := srv.ZoneHealth("a")
	if err != nil || !za.Healthy {
		t.Fatalf("zone a: %+v %v", za, err)
	}
	zb, err := srv.ZoneHealth("b")
	if err != nil || zb.Healthy || !strings.Contains(zb.Listeners["test"], "0 healthy") {
		t.Fatalf("zone b: %+v %v", zb, err)
	}
	if _, err := srv.ZoneHealth("c"); !errorsIs(err, api.ErrNotFound) {
		t.Fatalf("unknown zone: %v", err)
	}
	// Zone b's listener still routes only to zone b's target (fail-open
	// within the zone's table), never across zones.
	for range 10 {
		rt, err := srv.Route("test", "192.0.2.1:1000", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), netip.MustParseAddrPort(srv.Addrs("test")[1].String()).Port()).String(), "tcp", "")
		if err != nil || rt.Target != b.addr.String() {
			t.Fatalf("route in zone b: %+v %v", rt, err)
		}
	}
}

// A UDP listener counts in its zone's health like a TCP one: its group's
// targets decide whether the zone can serve.
func TestZoneHealthUDP(t *testing.T) {
	a := startUDPTarget(t, false)
	cfg := udpConfig([]config.Target{{Address: a.addr, Zone: "b", Weight: 1}}, func(l *config.Listener, g *config.TargetGroup) {
		l.Bind = []config.BindAddr{{IP: netip.MustParseAddr("127.0.0.2"), Zone: "b"}}
	})
	cfg.Zones = []config.Zone{{Name: "b", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.2")}}}
	srv := startedServer(t, cfg, Options{})
	zb, err := srv.ZoneHealth("b")
	if err != nil || zb.Healthy || !strings.Contains(zb.Listeners["test"], "0 healthy") {
		t.Fatalf("zone b with an initial target: %+v %v", zb, err)
	}
	srv.Registry.SetHealth("tg", a.addr, true, "", "")
	if zb, err = srv.ZoneHealth("b"); err != nil || !zb.Healthy || zb.Listeners["test"] != "ok" {
		t.Fatalf("zone b with a healthy target: %+v %v", zb, err)
	}
}

// Registration refuses what no flow can be forwarded to, with a reason:
// an unknown zone, the unspecified, multicast and broadcast addresses, and
// l4lb's own listener and admin addresses (a loop).
func TestRegisterRefuses(t *testing.T) {
	e := startEcho(t)
	srv, addr := startServer(t, testConfig([]config.Target{{Address: e.addr, Weight: 1}}, nil), Options{})
	admin := netip.MustParseAddrPort("127.0.0.1:9999")
	srv.Reserve(admin)
	lport := netip.MustParseAddrPort(addr).Port()
	for _, c := range []struct{ addr, zone, want string }{
		{e.addr.String(), "nowhere", "zone"},
		{"0.0.0.0:80", "", "unspecified"},
		{"[::]:80", "", "unspecified"},
		{"224.0.0.1:80", "", "multicast"},
		{"[ff02::1]:80", "", "multicast"},
		{"255.255.255.255:80", "", "broadcast"},
		{addr, "", "own"},
		{netip.AddrPortFrom(netip.MustParseAddr("::ffff:127.0.0.1"), lport).String(), "", "own"},
		{admin.String(), "", "own"},
	} {
		_, err := srv.Register("tg", api.RegisterRequest{Address: c.addr, Zone: c.zone})
		if !errorsIs(err, api.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("register %s zone %q: %v, want ErrInvalid about %s", c.addr, c.zone, err, c.want)
		}
	}
	if _, err := srv.Register("tg", api.RegisterRequest{Address: "127.0.0.1:1"}); err != nil {
		t.Fatalf("a plain loopback target: %v", err)
	}
}

// The registry speaks its own types; the admin API's words for states,
// reasons and errors must be the ones it converts them to.
func TestRegistryVocabularyIsTheAPIs(t *testing.T) {
	for st, want := range map[registry.State]string{registry.Initial: api.StateInitial, registry.Healthy: api.StateHealthy,
		registry.Unhealthy: api.StateUnhealthy, registry.UnhealthyDraining: api.StateUnhealthyDraining,
		registry.Draining: api.StateDraining, registry.Unused: api.StateUnused} {
		if st.String() != want {
			t.Errorf("state %d is %q, the API says %q", st, st, want)
		}
		if back, ok := registry.ParseState(want); !ok || back != st {
			t.Errorf("ParseState(%q) = %v, %v", want, back, ok)
		}
	}
	if registry.ReasonInitialHealthChecking != api.ReasonInitialHealthChecking || registry.ReasonDeregistrationInProgress != api.ReasonDeregistrationInProgress {
		t.Error("the registry's reason codes differ from the API's")
	}
	for reg, wire := range map[error]error{registry.ErrNotFound: api.ErrNotFound, registry.ErrInvalid: api.ErrInvalid} {
		err := wireErr(fmt.Errorf("%w: detail", reg))
		if !errors.Is(err, wire) || !errors.Is(err, reg) || err.Error() != reg.Error()+": detail" {
			t.Errorf("wireErr(%v) = %v: not %v", reg, err, wire)
		}
	}
}
