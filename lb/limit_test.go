package lb

import (
	"io"
	"net"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// max_connections_per_source: a client IP holding the limit is refused (and
// counted) while another IP is served, and a closed connection frees its
// slot.
func TestMaxConnectionsPerSource(t *testing.T) {
	e := startEcho(t)
	reg := prometheus.NewRegistry()
	srv, addr := startServer(t, testConfig([]config.Target{{Address: e.addr, Weight: 1}}, func(l *config.Listener, _ *config.TargetGroup) {
		l.MaxConnectionsPerSource = 3
	}), Options{Metrics: metrics.New(reg)})
	l := srv.listeners[0]
	ping := func(c net.Conn) error {
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		_, err := io.ReadFull(c, make([]byte, 4))
		return err
	}
	var held []net.Conn
	for range 3 {
		c := dialFrom(t, "127.0.0.5", addr)
		if err := ping(c); err != nil {
			t.Fatalf("a connection under the limit: %v", err)
		}
		held = append(held, c)
	}
	if n := l.limit.open(netip.MustParseAddr("127.0.0.5")); n != 3 {
		t.Fatalf("%d connections counted for 127.0.0.5, want 3", n)
	}
	if err := ping(dialFrom(t, "127.0.0.5", addr)); err == nil {
		t.Fatal("a fourth connection from 127.0.0.5 was served")
	}
	if err := ping(dialFrom(t, "127.0.0.6", addr)); err != nil {
		t.Fatalf("another client was refused: %v", err)
	}
	waitFor(t, func() bool { return counterValue(t, reg, "l4lb_rejected_flows_total") == 1 })
	held[0].Close()
	waitFor(t, func() bool { return l.limit.open(netip.MustParseAddr("127.0.0.5")) == 2 })
	if err := ping(dialFrom(t, "127.0.0.5", addr)); err != nil {
		t.Fatalf("the freed slot was not given back: %v", err)
	}
	for _, c := range held[1:] {
		c.Close()
	}
	// Every slot comes back once the flows end: nothing leaks.
	waitFor(t, func() bool { return l.limit.open(netip.MustParseAddr("127.0.0.5")) == 1 })
}

func TestSourceLimitCounts(t *testing.T) {
	s := newSourceLimit(2)
	a, mapped := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("::ffff:10.0.0.1")
	if !s.acquire(a) || !s.acquire(mapped) || s.acquire(a) {
		t.Fatal("an IPv4 client and its IPv4-mapped form must share one limit of 2")
	}
	s.release(mapped)
	if s.open(a) != 1 || !s.acquire(a) {
		t.Fatal("a released slot was not free")
	}
	s.release(a)
	s.release(a)
	if len(s.n) != 0 {
		t.Fatalf("%d addresses left with no connections", len(s.n))
	}
	if newSourceLimit(0) != nil {
		t.Fatal("0 (unlimited) must cost nothing")
	}
}
