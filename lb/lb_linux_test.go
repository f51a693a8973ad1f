package lb

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/l4lb/l4lb/pkg/config"
)

// echoTarget is an in-process TCP target that echoes what it reads, then
// closes its write side when the client does.
type echoTarget struct {
	ln   net.Listener
	addr netip.AddrPort
	hits chan struct{}
}

func startEcho(t testing.TB) *echoTarget {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoTarget{ln: ln, addr: ln.Addr().(*net.TCPAddr).AddrPort(), hits: make(chan struct{}, 100000)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.hits <- struct{}{}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return e
}

// serveTCP runs a target on 127.0.0.1 that hands each connection, closed
// after, to handle on its own goroutine.
func serveTCP(t *testing.T, handle func(c net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// testConfig is a config with one TCP listener on 127.0.0.1 (port picked by
// the kernel) forwarding to targets.
func testConfig(targets []config.Target, mod func(*config.Listener, *config.TargetGroup)) *config.Config {
	l := config.Listener{
		Name: "test", Protocol: config.TCP, Port: 0,
		Bind:        []config.BindAddr{{IP: netip.MustParseAddr("127.0.0.1")}},
		TargetGroup: "tg", IdleTimeout: config.DefaultIdleTimeout,
		Allow: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")},
	}
	g := config.TargetGroup{Name: "tg", Protocol: config.TCP, Targets: targets}
	g.Attributes.CrossZone = config.CrossZoneInherit
	if mod != nil {
		mod(&l, &g)
	}
	return &config.Config{Listeners: []config.Listener{l}, TargetGroups: []config.TargetGroup{g}, ShutdownTimeout: time.Second}
}

func startServer(t *testing.T, cfg *config.Config, opts Options) (*Server, string) {
	t.Helper()
	srv := startedServer(t, cfg, opts)
	return srv, srv.Addrs("test")[0].String()
}

// startedServer builds and starts a server that the test's cleanup closes.
func startedServer(t *testing.T, cfg *config.Config, opts Options) *Server {
	t.Helper()
	srv, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

func roundTrip(t *testing.T, addr, msg string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != msg {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
}

func TestSequentialFlows(t *testing.T) {
	e := startEcho(t)
	_, addr := startServer(t, testConfig([]config.Target{{Address: e.addr, Weight: 1}}, nil), Options{})
	for i := range 50 {
		roundTrip(t, addr, "hello "+string(rune('a'+i%26)))
	}
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }

// A New that fails leaves nothing running: a UDP listener whose route
// cannot be built (its group is missing) fails after the TLS ticket keys,
// which rotate on a goroutine of their own, were made.
func TestFailedNewLeaksNoGoroutine(t *testing.T) {
	cfg := testConfig([]config.Target{{Address: netip.MustParseAddrPort("127.0.0.1:1"), Weight: 1}}, nil)
	cfg.Listeners = append(cfg.Listeners, config.Listener{Name: "dns", Protocol: config.UDP, Port: 0,
		Bind: []config.BindAddr{{IP: netip.MustParseAddr("127.0.0.1")}}, TargetGroup: "missing"})
	before := runtime.NumGoroutine()
	for range 20 {
		if _, err := New(cfg, Options{}); err == nil {
			t.Fatal("New accepted a listener of a missing group")
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after 20 failed News, %d before", runtime.NumGoroutine(), before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
