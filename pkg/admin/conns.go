package admin

import (
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Limits bound the admin API's connections and requests, so that no
// amount of API traffic (slow bodies, silent connections, unauthenticated
// floods) can starve the liveness and readiness probes or use up the
// descriptors l4lb's flows need.
type Limits struct {
	// Conns is the connections that may make any request (default 128).
	Conns int
	// ProbeConns is the connections accepted past Conns that may only ask
	// GET /healthz or /readyz, each for ProbeDeadline at most (default
	// 512). Past both, a connection is closed at once.
	ProbeConns int
	// ProbeDeadline bounds a probe-only connection's whole life (default
	// 2s): probes send their request at once.
	ProbeDeadline time.Duration
	// ReadHeader, Read and Idle are http.Server's ReadHeaderTimeout,
	// ReadTimeout (headers and body) and IdleTimeout (defaults 5s, 10s,
	// 30s).
	ReadHeader, Read, Idle time.Duration
}

func (l *Limits) defaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.Conns, 128)
	def(&l.ProbeConns, 512)
	defd(&l.ProbeDeadline, 2*time.Second)
	defd(&l.ReadHeader, 5*time.Second)
	defd(&l.Read, 10*time.Second)
	defd(&l.Idle, 30*time.Second)
}

// Server returns an http.Server for h with l's timeouts, and the listener
// to serve it on: ln, with l's connection bounds.
//
//	hs, ln := admin.Server(admin.Handler(o), ln, admin.Limits{})
//	hs.Serve(ln)
func Server(h http.Handler, ln net.Listener, l Limits) (*http.Server, net.Listener) {
	l.defaults()
	hs := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: l.ReadHeader,
		ReadTimeout:       l.Read,
		IdleTimeout:       l.Idle,
		MaxHeaderBytes:    64 << 10,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if lc, ok := c.(*limitedConn); ok && lc.probeOnly {
				return context.WithValue(ctx, probeOnlyKey{}, true)
			}
			return ctx
		},
	}
	return hs, &limitListener{Listener: ln, l: l}
}

type probeOnlyKey struct{}

// probeOnly reports whether r came on a probe-only connection.
func probeOnly(r *http.Request) bool {
	v, _ := r.Context().Value(probeOnlyKey{}).(bool)
	return v
}

// limitListener accepts without ever blocking: a connection past Conns is
// probe-only, one past ProbeConns too is closed. Blocking in Accept, as
// netutil.LimitListener does, would leave a probe queued in the backlog
// behind connections that say nothing.
type limitListener struct {
	net.Listener
	l            Limits
	conns, extra atomic.Int64
}

func (ll *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if ll.conns.Add(1) <= int64(ll.l.Conns) {
			return &limitedConn{Conn: c, count: &ll.conns}, nil
		}
		ll.conns.Add(-1)
		if ll.extra.Add(1) <= int64(ll.l.ProbeConns) {
			lc := &limitedConn{Conn: c, count: &ll.extra, probeOnly: true, hard: time.Now().Add(ll.l.ProbeDeadline)}
			lc.Conn.SetDeadline(lc.hard)
			return lc, nil
		}
		ll.extra.Add(-1)
		c.Close()
	}
}

// limitedConn gives its slot back when closed; a probe-only one keeps its
// hard deadline whatever deadline the HTTP server sets.
type limitedConn struct {
	net.Conn
	count     *atomic.Int64
	once      sync.Once
	probeOnly bool
	hard      time.Time
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.count.Add(-1) })
	return err
}

func (c *limitedConn) clamp(t time.Time) time.Time {
	if c.probeOnly && (t.IsZero() || t.After(c.hard)) {
		return c.hard
	}
	return t
}

func (c *limitedConn) SetDeadline(t time.Time) error { return c.Conn.SetDeadline(c.clamp(t)) }
func (c *limitedConn) SetReadDeadline(t time.Time) error {
	return c.Conn.SetReadDeadline(c.clamp(t))
}
func (c *limitedConn) SetWriteDeadline(t time.Time) error {
	return c.Conn.SetWriteDeadline(c.clamp(t))
}
