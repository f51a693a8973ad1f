package lb

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

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
	// The fourth is reset; the reset may come before the dial returns.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.5")}, Timeout: 5 * time.Second}
	if c, err := d.Dial("tcp", addr); err == nil {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if ping(c) == nil {
			t.Fatal("a fourth connection from 127.0.0.5 was served")
		}
		c.Close()
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a fourth connection from 127.0.0.5: %v, want a reset", err)
	}
	if err := ping(dialFrom(t, "127.0.0.6", addr)); err != nil {
		t.Fatalf("another client was refused: %v", err)
	}
	waitFor(t, func() bool { return counterValue(t, reg, "l4lb_rejected_flows_total") == 1 })
	held[0].Close()
	waitFor(t, func() bool { return srv.ActiveFlows() == 3 }) // two held, one from 127.0.0.6
	c := dialFrom(t, "127.0.0.5", addr)
	if err := ping(c); err != nil {
		t.Fatalf("the freed slot was not given back: %v", err)
	}
	c.Close()
	for _, c := range held[1:] {
		c.Close()
	}
	// Every slot comes back once the flows end: nothing leaks, and the
	// client may hold the limit again.
	waitFor(t, func() bool { return srv.ActiveFlows() <= 1 })
	for range 3 {
		if err := ping(dialFrom(t, "127.0.0.5", addr)); err != nil {
			t.Fatalf("after its flows ended, 127.0.0.5 was refused: %v", err)
		}
	}
}
