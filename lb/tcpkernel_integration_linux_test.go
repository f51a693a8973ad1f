//go:build integration

package lb

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/healthcheck"
	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// seeingTarget is a TCP echo target that records the peer address of each
// connection it accepts.
type seeingTarget struct {
	ln   net.Listener
	addr netip.AddrPort
	mu   sync.Mutex
	seen map[netip.AddrPort]int
}

func startSeeingTarget(t *testing.T, addr string) *seeingTarget {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &seeingTarget{ln: ln, addr: ln.Addr().(*net.TCPAddr).AddrPort(), seen: map[netip.AddrPort]int{}}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.seen[c.RemoteAddr().(*net.TCPAddr).AddrPort()]++
			s.mu.Unlock()
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return s
}

func (s *seeingTarget) saw(client netip.AddrPort) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[client] > 0
}

// tcpKernelServer starts a TCP listener at vip on the kernel fast path, on
// lo only. It skips where BPF needs a root this run does not have; in CI
// (root) a fast path that does not come up fails the test.
func tcpKernelServer(t *testing.T, vip netip.AddrPort, cts []config.Target, mod func(*config.Listener, *config.TargetGroup)) (*Server, *prometheus.Registry) {
	t.Helper()
	cfg := testConfig(cts, func(l *config.Listener, g *config.TargetGroup) {
		l.Bind = []config.BindAddr{{IP: vip.Addr()}}
		l.Port = vip.Port()
		g.Attributes.PreserveClientIP = true
		if mod != nil {
			mod(l, g)
		}
	})
	cfg.TCPFastPath, cfg.TCPFastPathInterfaces = true, []string{"lo"}
	reg := prometheus.NewRegistry()
	srv := startedServer(t, cfg, Options{Metrics: metrics.New(reg)})
	if !srv.tcp.Kernel().Running() {
		if os.Geteuid() != 0 && os.Getenv("CI") == "" {
			t.Skip("the TCP fast path needs root")
		}
		t.Fatal("the TCP fast path did not come up")
	}
	return srv, reg
}

// pingEcho sends "ping" on an echo connection and reads it back.
func pingEcho(c net.Conn) error {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	_, err := io.ReadFull(c, make([]byte, 4))
	return err
}

// echoFrom connects from a given local address (any port) and checks an
// echo.
func echoFrom(local netip.Addr, vip netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: local.AsSlice()}, Timeout: 3 * time.Second}
	c, err := d.Dial("tcp", vip.String())
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		c.Close()
		return nil, err
	}
	b := make([]byte, 5)
	if _, err := io.ReadFull(c, b); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Through the kernel: connections land on the target l4lb route names for
// them, the targets see the clients' own addresses, no flow passes through
// user space, the counters reach the metrics, and closed flows leave the
// kernel's tables.
func TestKernelTCPFlows(t *testing.T) {
	byAddr := map[netip.AddrPort]*seeingTarget{}
	var cts []config.Target
	for i := range 3 {
		s := startSeeingTarget(t, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 46, 0, byte(1 + i)}), 9080).String())
		byAddr[s.addr] = s
		cts = append(cts, config.Target{Address: s.addr, Weight: 1})
	}
	vip := netip.MustParseAddrPort("127.46.0.100:9081")
	srv, reg := tcpKernelServer(t, vip, cts, nil)

	const n = 200
	var conns []net.Conn
	for i := range n {
		c, err := echoFrom(netip.AddrFrom4([4]byte{127, 47, byte(i >> 8), byte(i)}), vip)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		client := c.LocalAddr().(*net.TCPAddr).AddrPort()
		conns = append(conns, c)
		rt, err := srv.Route("test", client.String(), vip.String(), "tcp", "")
		if err != nil {
			t.Fatal(err)
		}
		if want := byAddr[netip.MustParseAddrPort(rt.Target)]; !want.saw(client) {
			t.Fatalf("connection from %s did not reach %s, the target l4lb route names, as itself", client, rt.Target)
		}
	}
	if f := srv.tcp.ActiveFlows(); f != 0 {
		t.Fatalf("%d flows went through user space", f)
	}
	waitFor(t, func() bool { return counterValue(t, reg, "l4lb_new_flows_total") == n })
	waitFor(t, func() bool { return srv.tcp.Kernel().Flows() == n })
	waitFor(t, func() bool { return counterValue(t, reg, "l4lb_active_flows") == n })
	if b := counterValue(t, reg, "l4lb_processed_bytes_total"); b != 2*5*n {
		t.Fatalf("processed bytes %v, want %d", b, 2*5*n)
	}
	// The console shows the listener on the kernel path, with the
	// kernel's counts.
	c := consoleOf(t, srv, reg)
	if a := c.Listeners[0].Addresses; len(a) != 1 || a[0].Path != "kernel" || a[0].Address != "tcp://"+vip.String() {
		t.Fatalf("the console's listener addresses: %+v, want tcp://%s on the kernel path", a, vip)
	}
	if !slices.ContainsFunc(c.Kernel, func(k api.KernelCounter) bool { return k.Name == "packets in" && k.Value >= 3*n }) {
		t.Fatalf("the console's kernel counters: %+v, want at least %d packets in", c.Kernel, 3*n)
	}
	for _, c := range conns {
		c.Close() // FIN both ways: the echo closes too
	}
	// Closed flows linger a few seconds for stray segments, then go.
	deadline := time.Now().Add(15 * time.Second)
	for srv.tcp.Kernel().Flows() != 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if f := srv.tcp.Kernel().Flows(); f != 0 {
		t.Fatalf("%d kernel flows left after every connection closed", f)
	}
	if a := counterValue(t, reg, "l4lb_active_flows"); a != 0 {
		t.Fatalf("active flows gauge %v after every connection closed", a)
	}
}

// A target that refuses connections (its port closed) is found by the
// kernel path's reset counts alone, long before its health check would: it
// leaves the table within a couple of seconds, and new connections succeed
// again. A segment of no flow gets a reset from the stack.
func TestKernelTCPDeadTarget(t *testing.T) {
	a := startSeeingTarget(t, "127.46.1.1:9080")
	b := startSeeingTarget(t, "127.46.1.2:9080")
	vip := netip.MustParseAddrPort("127.46.1.100:9081")
	srv, reg := tcpKernelServer(t, vip, []config.Target{{Address: a.addr, Weight: 1}, {Address: b.addr, Weight: 1}}, func(_ *config.Listener, g *config.TargetGroup) {
		// Active checks alone would take at least 8 s to find a dead
		// target (5 failures 2 s apart).
		g.HealthCheck = config.HealthCheck{Protocol: config.HealthTCP, Interval: 2 * time.Second, Timeout: time.Second, HealthyThreshold: 2, UnhealthyThreshold: 5}
	})
	checks := healthcheck.NewScheduler(srv.Registry, healthcheck.Options{})
	defer checks.Close()
	srv.Registry.WatchHealth(checks)
	// Both healthy first: with none healthy, l4lb fails open to all.
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		tg, _ := srv.TargetGroup("tg")
		if tg.Targets[0].State == "healthy" && tg.Targets[1].State == "healthy" {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.ln.Close()
	killed := time.Now()
	refused, i := 0, 0
	for ; time.Since(killed) < 10*time.Second; i++ {
		c, err := echoFrom(netip.AddrFrom4([4]byte{127, 48, byte(i >> 8), byte(i)}), vip)
		if err != nil {
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("connection %d: %v, want a refusal or success", i, err)
			}
			refused++
			time.Sleep(20 * time.Millisecond)
			continue
		}
		c.Close()
		tg, _ := srv.TargetGroup("tg")
		if tg.Targets[1].State == "unhealthy" && refused > 0 {
			break
		}
	}
	gone := time.Since(killed)
	tg, _ := srv.TargetGroup("tg")
	if tg.Targets[1].State != "unhealthy" {
		t.Fatalf("the refusing target is %s after %v", tg.Targets[1].State, gone)
	}
	if gone > 4*time.Second {
		t.Fatalf("the refusing target took %v to leave, as long as its health checks would", gone)
	}
	// The kernel's table follows the state change within moments: then
	// 20 connections in a row succeed.
	for j, ok := 0, 0; ok < 20; j++ {
		c, err := echoFrom(netip.AddrFrom4([4]byte{127, 50, byte(j >> 8), byte(j)}), vip)
		if err == nil {
			c.Close()
			ok++
			continue
		}
		ok = 0
		if time.Since(killed) > 5*time.Second {
			t.Fatalf("connections still refused %v after the target was killed", time.Since(killed))
		}
		refused++
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("the dead target was marked unhealthy after %v, out of the kernel's table after %v; %d connections refused", gone, time.Since(killed), refused)
	for j := range 50 {
		c, err := echoFrom(netip.AddrFrom4([4]byte{127, 49, 0, byte(j)}), vip)
		if err != nil {
			t.Fatalf("after the target left, connection %d: %v", j, err)
		}
		c.Close()
	}
	waitFor(t, func() bool { return counterValue(t, reg, "l4lb_tcp_target_resets_total") >= float64(refused) })
}

// Deregistering a target with connection termination ends its kernel flows
// when the delay is over: during the delay its connections keep working;
// after it, their next segment meets the stack's reset, while connections
// to the other target go on.
func TestKernelTCPDeregistrationEndsFlows(t *testing.T) {
	a := startSeeingTarget(t, "127.46.2.1:9080")
	b := startSeeingTarget(t, "127.46.2.2:9080")
	vip := netip.MustParseAddrPort("127.46.2.100:9081")
	srv, _ := tcpKernelServer(t, vip, []config.Target{{Address: a.addr, Weight: 1}, {Address: b.addr, Weight: 1}}, func(_ *config.Listener, g *config.TargetGroup) {
		g.Attributes.DeregistrationDelay = 300 * time.Millisecond
		g.Attributes.DeregistrationConnectionTermination = true
	})
	var onA, onB net.Conn
	for i := 0; onA == nil || onB == nil; i++ {
		if i > 200 {
			t.Fatal("200 connections and not one on each target")
		}
		c, err := echoFrom(netip.AddrFrom4([4]byte{127, 51, 0, byte(i + 1)}), vip)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		switch client := c.LocalAddr().(*net.TCPAddr).AddrPort(); {
		case onA == nil && a.saw(client):
			onA = c
		case onB == nil && b.saw(client):
			onB = c
		}
	}
	if err := srv.Deregister("tg", a.addr.String()); err != nil {
		t.Fatal(err)
	}
	if err := pingEcho(onA); err != nil {
		t.Fatalf("during the deregistration delay: %v", err)
	}
	waitFor(t, func() bool { return pingEcho(onA) != nil })
	if err := pingEcho(onB); err != nil {
		t.Fatalf("a connection to the remaining target broke: %v", err)
	}
}

// 200 targets of one group turn unhealthy at once while each carries a
// kernel flow. Ending their flows (termination on unhealthy, the default)
// is asked while the registry holds the group's lock, which the kernel
// path's forwarder takes too when it writes tables; nothing may wedge.
// Every call returns, every flow of an unhealthy target ends, the flow of
// the one healthy target goes on, and the forwarder still writes tables: a
// target healthy again receives new flows.
func TestKernelTCPManyTargetsUnhealthyAtOnce(t *testing.T) {
	const n = 201 // target 0 stays healthy, so the group never fails open
	targets := make([]*seeingTarget, n)
	var cts []config.Target
	for i := range n {
		targets[i] = startSeeingTarget(t, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 56, byte(i / 200), byte(1 + i%200)}), 9080).String())
		cts = append(cts, config.Target{Address: targets[i].addr, Weight: 1})
	}
	vip := netip.MustParseAddrPort("127.46.3.100:9081")
	srv, _ := tcpKernelServer(t, vip, cts, func(_ *config.Listener, g *config.TargetGroup) {
		g.Attributes.UnhealthyConnectionTermination = true
	})
	// The test is their health check: healthy first, out of the initial
	// state (in which the group fails open).
	var wg sync.WaitGroup
	for _, s := range targets {
		wg.Go(func() { srv.Registry.SetHealth("tg", s.addr, true, "", "") })
	}
	wg.Wait()
	if gh, _ := srv.Registry.TargetGroup("tg"); gh.FailOpen {
		t.Fatal("the group fails open with every target healthy")
	}
	landedOn := func(c net.Conn) int {
		client := c.LocalAddr().(*net.TCPAddr).AddrPort()
		return slices.IndexFunc(targets, func(s *seeingTarget) bool { return s.saw(client) })
	}
	// One open kernel flow on each target (the coupon collector's 1 200
	// connections on average; extras are closed at once).
	flows, left := make([]net.Conn, n), n
	for i := 0; left > 0; i++ {
		if i == 6000 {
			t.Fatalf("6000 connections and %d targets still without a flow", left)
		}
		c, err := echoFrom(netip.AddrFrom4([4]byte{127, 54, byte(i / 200), byte(1 + i%200)}), vip)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if j := landedOn(c); j >= 0 && flows[j] == nil {
			flows[j], left = c, left-1
			defer c.Close()
			continue
		}
		c.Close()
	}
	if f := srv.tcp.ActiveFlows(); f != 0 {
		t.Fatalf("%d flows went through user space", f)
	}

	start := time.Now()
	for _, s := range targets[1:] {
		wg.Go(func() {
			srv.Registry.SetHealth("tg", s.addr, false, api.ReasonFailedHealthChecks, "turned unhealthy by the test")
		})
	}
	returned := make(chan struct{})
	go func() { wg.Wait(); close(returned) }()
	select {
	case <-returned:
		t.Logf("200 targets turned unhealthy in %v", time.Since(start).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("200 health transitions did not return within 10 s: the registry and the kernel path wedged")
	}

	for i, c := range flows[1:] {
		deadline := time.Now().Add(10 * time.Second)
		for pingEcho(c) == nil {
			if time.Now().After(deadline) {
				t.Fatalf("the flow of unhealthy target %s still carries data 10 s later", targets[i+1].addr)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Logf("their 200 flows ended within %v of the first transition", time.Since(start).Round(time.Millisecond))
	if err := pingEcho(flows[0]); err != nil {
		t.Fatalf("the healthy target's flow broke: %v", err)
	}
	// The kernel's table is written once the forwarder hears of the new
	// snapshot: new connections reach the target soon after.
	back := targets[7]
	srv.Registry.SetHealth("tg", back.addr, true, "", "")
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("%d new connections in 10 s and none reached %s, healthy again", i, back.addr)
		}
		c, err := echoFrom(netip.AddrFrom4([4]byte{127, 55, byte(i / 200), byte(1 + i%200)}), vip)
		if err != nil {
			t.Fatalf("a new connection after the wave: %v", err)
		}
		j := landedOn(c)
		c.Close()
		if j == 7 {
			break
		}
		if j != 0 {
			t.Fatalf("a new connection reached target %d, which is unhealthy", j)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
