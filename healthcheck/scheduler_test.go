package healthcheck

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/proxyproto"
)

// transition is one report, with the number of checks the target had served
// when it was made.
type transition struct {
	healthy bool
	reason  string
	checks  int64
}

type recorder struct {
	checks *atomic.Int64
	ch     chan transition
}

func (r *recorder) SetHealth(_ string, _ netip.AddrPort, healthy bool, reason, _ string) {
	r.ch <- transition{healthy, reason, r.checks.Load()}
}

// flakyHTTP is a real HTTP target whose health endpoint answers code.
func flakyHTTP(t *testing.T) (netip.AddrPort, *atomic.Int64, *atomic.Int32) {
	var checks atomic.Int64
	var code atomic.Int32
	code.Store(200)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		checks.Add(1)
		w.WriteHeader(int(code.Load()))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).AddrPort(), &checks, &code
}

func httpSpec(rise, fall int) config.HealthCheck {
	m, _ := config.ParseMatcher("200-399")
	return config.HealthCheck{Protocol: config.HealthHTTP, Path: "/health", Interval: 50 * time.Millisecond,
		Timeout: 40 * time.Millisecond, HealthyThreshold: rise, UnhealthyThreshold: fall, Matcher: m}
}

func next(t *testing.T, ch chan transition) transition {
	t.Helper()
	select {
	case tr := <-ch:
		return tr
	case <-time.After(10 * time.Second):
		t.Fatal("no health transition within 10s")
	}
	return transition{}
}

// A target whose health endpoint starts answering 500 turns unhealthy after
// exactly unhealthy_threshold checks, and healthy after exactly
// healthy_threshold good ones. The endpoint's answer is a function of the
// check's number, so "exactly" needs no timing.
func TestHTTPThresholdsAreExact(t *testing.T) {
	const rise, fall = 3, 2
	var checks atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := checks.Add(1)
		if n > rise && n <= rise+fall+1 { // checks 4, 5 and 6 fail
			w.WriteHeader(500)
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()
	rec := &recorder{checks: &checks, ch: make(chan transition, 10)}
	s := NewScheduler(rec, Options{})
	defer s.Close()
	s.Watch("web", ln.Addr().(*net.TCPAddr).AddrPort(), httpSpec(rise, fall))
	want := []transition{
		{healthy: true, checks: rise}, // 3 passes
		{healthy: false, reason: api.ReasonResponseCodeMismatch, checks: rise + fall}, // 2 failures
		{healthy: true, checks: rise + fall + 1 + rise},                               // a third failure, then 3 passes
	}
	for i, w := range want {
		if got := next(t, rec.ch); got != w {
			t.Fatalf("transition %d = %+v, want %+v", i, got, w)
		}
	}
}

func TestTCPCheckAndTimeoutReason(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	var checks atomic.Int64
	rec := &recorder{checks: &checks, ch: make(chan transition, 10)}
	s := NewScheduler(rec, Options{})
	defer s.Close()
	spec := config.HealthCheck{Protocol: config.HealthTCP, Interval: 30 * time.Millisecond, Timeout: 20 * time.Millisecond, HealthyThreshold: 2, UnhealthyThreshold: 2}
	s.Watch("g", addr, spec)
	if tr := next(t, rec.ch); !tr.healthy {
		t.Fatalf("listening target: %+v", tr)
	}
	ln.Close()
	if tr := next(t, rec.ch); tr.healthy || tr.reason != api.ReasonFailedHealthChecks {
		t.Fatalf("closed target: %+v, want %s", tr, api.ReasonFailedHealthChecks)
	}
	// A slow HTTP endpoint is a timeout.
	slow, _, _ := flakyHTTP(t)
	hs := httpSpec(1, 1)
	hs.Timeout = time.Nanosecond
	s.Watch("g2", slow, hs)
	if tr := next(t, rec.ch); tr.healthy || tr.reason != api.ReasonTimeout {
		t.Fatalf("timed-out check: %+v, want %s", tr, api.ReasonTimeout)
	}
}

// Passive failures count like failed checks, and Unwatch stops reports.
func TestPassiveFailure(t *testing.T) {
	addr, checks, _ := flakyHTTP(t)
	rec := &recorder{checks: checks, ch: make(chan transition, 10)}
	s := NewScheduler(rec, Options{})
	defer s.Close()
	spec := httpSpec(1, 3)
	spec.Interval = time.Hour // only the first (jittered) check could run; passive drives it
	s.Watch("g", addr, spec)
	for range 3 {
		s.PassiveFailure("g", addr)
	}
	if tr := next(t, rec.ch); tr.healthy || tr.reason != api.ReasonFailedHealthChecks {
		t.Fatalf("after 3 passive failures: %+v", tr)
	}
	s.Unwatch("g", addr)
	s.PassiveFailure("g", addr) // unknown now: ignored
	select {
	case tr := <-rec.ch:
		t.Fatalf("report after Unwatch: %+v", tr)
	case <-time.After(100 * time.Millisecond):
	}
}

// With PROXY v2 on, checks open with a LOCAL header, as NLB's do, and the
// HTTP request follows it on the same connection.
func TestChecksSendProxyLocal(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _, err := proxyproto.ReadHeader(c, c, time.Now().Add(time.Second))
				if err != nil {
					got <- "no header: " + err.Error()
					return
				}
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					got <- "no request after the header"
					return
				}
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
				got <- "LOCAL then GET " + req.URL.Path
			}()
		}
	}()
	var checks atomic.Int64
	rec := &recorder{checks: &checks, ch: make(chan transition, 4)}
	s := NewScheduler(rec, Options{})
	defer s.Close()
	spec := httpSpec(1, 1)
	spec.SendProxyLocal = true
	s.Watch("g", ln.Addr().(*net.TCPAddr).AddrPort(), spec)
	select {
	case msg := <-got:
		if msg != "LOCAL then GET /health" {
			t.Fatal(msg)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no check arrived")
	}
	if tr := next(t, rec.ch); !tr.healthy {
		t.Fatalf("check behind a LOCAL header failed: %+v", tr)
	}
}
