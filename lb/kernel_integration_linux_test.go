//go:build integration

package lb

import (
	"math"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// kernelServer starts a UDP listener at vip on the kernel fast path, on lo
// only. It skips where BPF needs a root this run does not have; in CI (root)
// a fast path that does not come up fails the test.
func kernelServer(t *testing.T, vip netip.AddrPort, cts []config.Target, idle time.Duration, mods ...func(*config.Listener, *config.TargetGroup)) (*Server, *prometheus.Registry) {
	t.Helper()
	cfg := udpConfig(cts, func(l *config.Listener, g *config.TargetGroup) {
		l.Bind = []config.BindAddr{{IP: vip.Addr()}}
		l.Port = vip.Port()
		l.UDPIdleTimeout = idle
		g.Attributes.PreserveClientIP = true
		for _, m := range mods {
			m(l, g)
		}
	})
	cfg.UDPFastPath, cfg.UDPFastPathInterfaces = true, []string{"lo"}
	reg := prometheus.NewRegistry()
	srv := startedServer(t, cfg, Options{Metrics: metrics.New(reg)})
	if !srv.udp.KernelPath() {
		if os.Geteuid() != 0 && os.Getenv("CI") == "" {
			t.Skip("the UDP fast path needs root")
		}
		t.Fatal("the UDP fast path did not come up")
	}
	return srv, reg
}

// userSpaceChoice is the target user space would pick for a new UDP flow,
// as the admin API's route answers it.
func userSpaceChoice(t *testing.T, srv *Server, client, vip netip.AddrPort) netip.AddrPort {
	t.Helper()
	rt, err := srv.Route("test", client.String(), vip.String(), "udp", "")
	if err != nil {
		t.Fatal(err)
	}
	return netip.MustParseAddrPort(rt.Target)
}

// landedAsRouted checks that the one datagram of client's flow reached the
// target l4lb route names for it.
func landedAsRouted(t *testing.T, srv *Server, byAddr map[netip.AddrPort]*udpTarget, client, vip netip.AddrPort) {
	t.Helper()
	want := byAddr[userSpaceChoice(t, srv, client, vip)]
	want.mu.Lock()
	got := want.seen[client]
	want.mu.Unlock()
	if got != 1 {
		t.Fatalf("flow from %s: not seen by %s, the target l4lb route names", client, want.addr)
	}
}

// Through the kernel: 1000 flows over weights 1:1:2 land within ±10%, each on
// the target user space (and l4lb route) picks; targets see the client's own
// address and replies come from the listener's; nothing passes through user
// space; the counters reach the metrics; flows stay pinned when a target is
// added; idle flows are swept.
func TestKernelUDPFlows(t *testing.T) {
	var ts []*udpTarget
	var cts []config.Target
	byAddr := map[netip.AddrPort]*udpTarget{}
	for i, w := range []int{1, 1, 2} {
		u := startUDPTargetAt(t, false, &net.UDPAddr{IP: net.IPv4(127, 44, 0, byte(1+i)), Port: 9053})
		ts = append(ts, u)
		byAddr[u.addr] = u
		cts = append(cts, config.Target{Address: u.addr, Weight: w})
	}
	vip := netip.MustParseAddrPort("127.44.0.100:9055")
	srv, reg := kernelServer(t, vip, cts, 3*time.Second)

	const n = 1000
	conns := make([]net.Conn, n)
	clients := make([]netip.AddrPort, n)
	for i := range n {
		clients[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 45, byte(i >> 8), byte(i)}), 40000)
		c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(clients[i]), net.UDPAddrFromAddrPort(vip))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
		exchange(t, c, []byte("q")) // a connected socket takes replies from vip only
	}
	for _, client := range clients {
		landedAsRouted(t, srv, byAddr, client, vip)
	}
	for i, share := range []float64{0.25, 0.25, 0.5} {
		want := share * n
		if got := float64(ts[i].flows()); math.Abs(got-want) > 0.1*want {
			t.Errorf("target %d got %.0f flows, want %.0f ±10%%", i, got, want)
		}
	}
	if l := srv.udp.UserFlows(); l != 0 {
		t.Fatalf("%d flows went through user space", l)
	}
	waitFor(t, func() bool { return counterValue(t, reg, "l4lb_new_flows_total") == n })
	waitFor(t, func() bool { return counterValue(t, reg, "l4lb_processed_packets_total") == 2*n })

	// Pinned: a new target takes no existing flow. The flows checked are
	// touched first, so none has idled out on a slow run.
	for i := range 200 {
		exchange(t, conns[i], []byte("touch"))
	}
	extra := startUDPTarget(t, false)
	if _, err := srv.Register("tg", api.RegisterRequest{Address: extra.addr.String()}); err != nil {
		t.Fatal(err)
	}
	// The loop rewrites the tables on its own; write them now so the check
	// below runs against the new table for sure.
	if err := srv.udp.SyncKernel(); err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		exchange(t, conns[i], []byte("again"))
	}
	if extra.flows() != 0 {
		t.Fatalf("the new target took %d pinned flows", extra.flows())
	}
	total := 0
	for _, u := range ts {
		u.mu.Lock()
		for _, c := range u.seen {
			total += c
		}
		u.mu.Unlock()
	}
	if total != n+400 {
		t.Fatalf("targets saw %d datagrams, want %d", total, n+400)
	}
	// New flows do reach it (a 20% share), so the table did change.
	for i := range 50 {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 46, 0, byte(1+i)), Port: 40000}, net.UDPAddrFromAddrPort(vip))
		if err != nil {
			t.Fatal(err)
		}
		exchange(t, c, []byte("new"))
		c.Close()
	}
	if extra.flows() == 0 {
		t.Fatal("no new flow reached the registered target")
	}

	// Idle flows are swept (timeout 3 s, sweeps every 750 ms); the same
	// client then makes a new flow.
	waitFor(t, func() bool { return srv.UDPFlows() > 0 })
	waitFor(t, func() bool { return srv.UDPFlows() == 0 })
	exchange(t, conns[0], []byte("later"))
	waitFor(t, func() bool { return counterValue(t, reg, "l4lb_new_flows_total") == n+50+1 })
}

// A listener that does not qualify (here: its group does not preserve the
// client IP, which the kernel's address rewrite always does) stays in user
// space and serves as before.
func TestKernelPathSkipsListenersThatDoNotQualify(t *testing.T) {
	target := startUDPTarget(t, false)
	cfg := udpConfig([]config.Target{{Address: target.addr, Weight: 1}}, nil)
	cfg.UDPFastPath, cfg.UDPFastPathInterfaces = true, []string{"lo"}
	srv, addr := startUDPServer(t, cfg, Options{})
	if srv.udp.KernelPath() {
		t.Fatal("the fast path took a listener whose group does not preserve the client IP")
	}
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	exchange(t, c, []byte("q"))
	if srv.udp.UserFlows() != 1 {
		t.Fatal("the flow is not in the user-space table")
	}
}

// Deregistering a target with connection termination ends its UDP flows when
// the delay is over, on the socket path and in the kernel alike: the client's
// next datagram starts a new flow on the remaining target instead of going to
// the deregistered one until the idle timeout.
func TestUDPDeregistrationEndsFlows(t *testing.T) {
	for _, kernel := range []bool{false, true} {
		t.Run(map[bool]string{false: "sockets", true: "kernel"}[kernel], func(t *testing.T) {
			a := startUDPTargetAt(t, false, &net.UDPAddr{IP: net.IPv4(127, 47, 0, 1)})
			b := startUDPTargetAt(t, false, &net.UDPAddr{IP: net.IPv4(127, 47, 0, 2)})
			cts := []config.Target{{Address: a.addr, Weight: 1}, {Address: b.addr, Weight: 1}}
			mod := func(_ *config.Listener, g *config.TargetGroup) {
				g.Attributes.DeregistrationDelay = 300 * time.Millisecond
				g.Attributes.DeregistrationConnectionTermination = true
			}
			var srv *Server
			var addr string
			if kernel {
				vip := netip.MustParseAddrPort("127.47.0.100:9057")
				srv, _ = kernelServer(t, vip, cts, time.Minute, mod)
				addr = vip.String()
			} else {
				srv, addr = startUDPServer(t, udpConfig(cts, mod), Options{})
			}
			// One flow per client port until one lands on a.
			var c net.Conn
			for i := 0; c == nil; i++ {
				cc, err := net.Dial("udp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer cc.Close()
				exchange(t, cc, []byte("q"))
				if a.flows() > 0 {
					c = cc
				}
			}
			before := b.flows()
			if err := srv.Deregister("tg", a.addr.String()); err != nil {
				t.Fatal(err)
			}
			exchange(t, c, []byte("during the delay")) // still pinned to a
			if a.flows() != 1 || b.flows() != before {
				t.Fatalf("during the delay the flow moved: a %d, b %d flows", a.flows(), b.flows())
			}
			// A reply in flight when the flow ends is lost with it, so
			// the client here retries, as a DNS client would.
			waitFor(t, func() bool {
				c.SetDeadline(time.Now().Add(200 * time.Millisecond))
				c.Write([]byte("after"))
				c.Read(make([]byte, 64))
				return b.flows() == before+1
			})
		})
	}
}

// The same through IPv6 on ::1: each of 300 flows lands on the target that
// l4lb route names, targets see the client's own address and port, answers
// come from the listener address, and nothing goes through l4lb's sockets.
func TestKernelUDPFlowsIPv6(t *testing.T) {
	var cts []config.Target
	byAddr := map[netip.AddrPort]*udpTarget{}
	for range 3 {
		u := startUDPTargetAt(t, false, &net.UDPAddr{IP: net.IPv6loopback})
		byAddr[u.addr] = u
		cts = append(cts, config.Target{Address: u.addr, Weight: 1})
	}
	probe, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	vip := probe.LocalAddr().(*net.UDPAddr).AddrPort()
	probe.Close()
	srv, _ := kernelServer(t, vip, cts, time.Minute)
	for range 300 {
		c, err := net.DialUDP("udp6", nil, net.UDPAddrFromAddrPort(vip))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		exchange(t, c, []byte("q"))
		landedAsRouted(t, srv, byAddr, c.LocalAddr().(*net.UDPAddr).AddrPort(), vip)
	}
	if l := srv.udp.UserFlows(); l != 0 {
		t.Fatalf("%d flows went through user space", l)
	}
}

// A listener's allow and deny lists hold on the fast path: an allowed client
// is served, a denied one and one outside the list get nothing, and both
// refusals are counted as acl.
func TestKernelPathACL(t *testing.T) {
	target := startUDPTarget(t, false)
	vip := netip.MustParseAddrPort("127.48.0.100:9058")
	// kernelServer fails the test if a listener with lists stays out of the kernel.
	srv, reg := kernelServer(t, vip, []config.Target{{Address: target.addr, Weight: 1}}, time.Minute, func(l *config.Listener, _ *config.TargetGroup) {
		l.Allow = []netip.Prefix{netip.MustParsePrefix("127.48.0.0/24")}
		l.Deny = []netip.Prefix{netip.MustParsePrefix("127.48.0.5/32")}
	})
	answered := func(from string, wait time.Duration) bool {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(from)}, net.UDPAddrFromAddrPort(vip))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("q"))
		c.SetReadDeadline(time.Now().Add(wait))
		_, err = c.Read(make([]byte, 16))
		return err == nil
	}
	if !answered("127.48.0.1", 5*time.Second) {
		t.Fatal("an allowed client got no answer")
	}
	for _, from := range []string{"127.48.0.5", "127.49.0.1"} {
		if answered(from, 300*time.Millisecond) {
			t.Fatalf("%s was answered", from)
		}
	}
	if target.flows() != 1 || srv.udp.UserFlows() != 0 {
		t.Fatalf("the target saw %d flows, user space %d; want 1 and 0", target.flows(), srv.udp.UserFlows())
	}
	waitFor(t, func() bool { return counterValue(t, reg, "l4lb_rejected_flows_total") == 2 })
}
