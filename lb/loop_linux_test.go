package lb

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// freeLoopbackPort is a port nothing listens on at 127.0.0.1 just now.
func freeLoopbackPort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// A target that is the listener itself, past the config's and the API's
// checks (a config built in code here; a host address gained later, or a
// NAT, in life): the connection l4lb makes to it comes back from l4lb's
// own address and is refused as a loop, so one client connection makes
// one hop, not thousands (an accept that wins the race with the connect's
// return waits for it to be remembered).
func TestForwardingLoopCutAtOneHop(t *testing.T) {
	port := freeLoopbackPort(t)
	self := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	reg := prometheus.NewRegistry()
	cfg := testConfig([]config.Target{{Address: self, Weight: 1}}, func(l *config.Listener, _ *config.TargetGroup) {
		l.Port = port
	})
	srv, addr := startServer(t, cfg, Options{Metrics: metrics.New(reg), ConnectTimeout: time.Second})
	for i := range 3 {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			// The loop's reset can reach the client while it connects.
			t.Logf("connection %d: %v", i, err)
			continue
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatalf("connection %d: a looped flow answered", i)
		}
		c.Close()
	}
	waitFor(t, func() bool { return sumWhere(reg, "l4lb_rejected_flows_total", `reason="loop"`) >= 1 })
	time.Sleep(300 * time.Millisecond) // anything still looping shows now
	loops, flows := sumWhere(reg, "l4lb_rejected_flows_total", `reason="loop"`), sumWhere(reg, "l4lb_new_flows_total")
	t.Logf("3 client connections: %v flows, %v loops refused", flows, loops)
	// One hop each; two if a connecting goroutine was held off the CPU
	// for the guard's whole wait (a loaded host under -race).
	if loops < 1 || flows > 6 {
		t.Fatalf("client connections became %v flows and %v loops refused; want one hop each", flows, loops)
	}
	waitFor(t, func() bool { return srv.ActiveFlows() == 0 })
}

// A UDP target that is the listener itself: the flow l4lb opens to it is
// remembered before its first datagram, which comes back from l4lb's own
// address and is refused as a loop, on the first hop.
func TestUDPForwardingLoopCut(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	pc.Close()
	self := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	reg := prometheus.NewRegistry()
	cfg := testConfig([]config.Target{{Address: self, Weight: 1}}, func(l *config.Listener, g *config.TargetGroup) {
		l.Protocol, g.Protocol = config.UDP, config.UDP
		l.Port = port
		l.UDPIdleTimeout = config.DefaultUDPIdleTimeout
	})
	cfg.MaxFlows = config.DefaultMaxFlows
	startedServer(t, cfg, Options{Metrics: metrics.New(reg)})
	c, err := net.Dial("udp", self.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 3 {
		c.Write([]byte("ping"))
	}
	waitFor(t, func() bool { return sumWhere(reg, "l4lb_rejected_flows_total", `reason="loop"`) >= 1 })
	time.Sleep(300 * time.Millisecond)
	if n := sumWhere(reg, "l4lb_new_flows_total"); n != 1 {
		t.Fatalf("one client flow became %v flows", n)
	}
}
