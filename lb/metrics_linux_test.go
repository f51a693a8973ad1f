package lb

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// series finds the value of the series of name whose labels include want.
func series(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue next
				}
			}
			return metricValue(m), true
		}
	}
	return 0, false
}

// resetAfter is a target that reads n bytes, then resets the connection.
func resetAfter(t *testing.T, n int) netip.AddrPort {
	return serveTCP(t, func(c net.Conn) {
		io.ReadFull(c, make([]byte, n))
		c.(*net.TCPConn).SetLinger(0)
	})
}

// A target that resets its flow is counted in tcp_target_resets_total, under
// its own labels, and never as a client reset: neither when l4lb reads the
// reset from the target, nor when a write to the target fails on it.
func TestTargetResetsCounted(t *testing.T) {
	tgt := resetAfter(t, 1)
	reg := prometheus.NewRegistry()
	srv, addr := startServer(t, testConfig([]config.Target{{Address: tgt, Weight: 1}}, nil), Options{Metrics: metrics.New(reg)})
	labels := map[string]string{"target_group": "tg", "target": tgt.String()}
	if v, ok := series(t, reg, "l4lb_tcp_target_resets_total", labels); !ok || v != 0 {
		t.Fatalf("target reset series at registration: %v %v, want present at 0", v, ok)
	}
	const flows = 5
	for i := range flows {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if i%2 == 0 {
			c.Write([]byte("x")) // the target reads it, then resets
			io.ReadAll(c)
		} else {
			// Keep writing: the reset meets a write towards the target.
			buf := make([]byte, 64<<10)
			for range 100 {
				if _, err := c.Write(buf); err != nil {
					break
				}
			}
		}
		c.Close()
	}
	waitFor(t, func() bool { return srv.ActiveFlows() == 0 })
	waitFor(t, func() bool {
		v, _ := series(t, reg, "l4lb_tcp_target_resets_total", labels)
		return v == flows
	})
	if v := counterValue(t, reg, "l4lb_tcp_client_resets_total"); v != 0 {
		t.Fatalf("tcp_client_resets_total = %v after resets by the target, want 0", v)
	}
}

// A client that resets its flow counts as a client reset, not a target one.
func TestClientResetsCounted(t *testing.T) {
	e := startEcho(t)
	reg := prometheus.NewRegistry()
	srv, addr := startServer(t, testConfig([]config.Target{{Address: e.addr, Weight: 1}}, nil), Options{Metrics: metrics.New(reg)})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	echoOnce(t, c)
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	waitFor(t, func() bool { return srv.ActiveFlows() == 0 })
	if v := counterValue(t, reg, "l4lb_tcp_client_resets_total"); v != 1 {
		t.Fatalf("tcp_client_resets_total = %v, want 1", v)
	}
	if v := counterValue(t, reg, "l4lb_tcp_target_resets_total"); v != 0 {
		t.Fatalf("tcp_target_resets_total = %v, want 0", v)
	}
}

// healthy_targets and unhealthy_targets count per zone, and a target's
// series are created at registration and deleted when it is gone.
func TestTargetGaugesAndSeries(t *testing.T) {
	a, b, c := startEcho(t), startEcho(t), startEcho(t)
	cfg := testConfig([]config.Target{{Address: a.addr, Zone: "a", Weight: 1}, {Address: b.addr, Zone: "b", Weight: 1}, {Address: c.addr, Zone: "b", Weight: 1}}, func(_ *config.Listener, g *config.TargetGroup) {
		g.Attributes.DeregistrationDelay = 10 * time.Millisecond
	})
	cfg.Zones = []config.Zone{{Name: "a", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}, {Name: "b", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.2")}}}
	reg := prometheus.NewRegistry()
	srv, _ := startServer(t, cfg, Options{Metrics: metrics.New(reg)})
	srv.Registry.SetHealth("tg", a.addr, true, "", "")
	srv.Registry.SetHealth("tg", b.addr, true, "", "")
	srv.Registry.SetHealth("tg", c.addr, false, api.ReasonFailedHealthChecks, "")
	gauge := func(name, zone string) float64 {
		v, ok := series(t, reg, name, map[string]string{"target_group": "tg", "zone": zone})
		if !ok {
			t.Fatalf("no %s series for zone %q", name, zone)
		}
		return v
	}
	if gauge("l4lb_healthy_targets", "a") != 1 || gauge("l4lb_healthy_targets", "b") != 1 || gauge("l4lb_unhealthy_targets", "b") != 1 || gauge("l4lb_unhealthy_targets", "a") != 0 {
		t.Fatal("per-zone target gauges are wrong")
	}
	if _, ok := series(t, reg, "l4lb_healthy_targets", map[string]string{"zone": ""}); ok {
		t.Fatal("a healthy_targets series with an empty zone, though every target has one")
	}
	for _, name := range []string{"l4lb_target_connect_errors_total", "l4lb_port_allocation_errors_total", "l4lb_tcp_target_resets_total"} {
		if _, ok := series(t, reg, name, map[string]string{"target": c.addr.String()}); !ok {
			t.Fatalf("%s has no series for a registered target", name)
		}
	}
	if err := srv.Deregister("tg", b.addr.String()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		_, ok := series(t, reg, "l4lb_target_connect_errors_total", map[string]string{"target": b.addr.String()})
		return !ok
	})
	if gauge("l4lb_healthy_targets", "b") != 0 {
		t.Fatal("zone b still counts the deregistered target as healthy")
	}
}
