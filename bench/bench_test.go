package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func target(t *testing.T, kind, network string) string {
	t.Helper()
	tg, err := StartTarget(kind, network, "127.0.0.1:0", 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tg.Close() })
	return tg.Addr.String()
}

// serve runs handle for every connection to a listener of the test's own.
func serve(t *testing.T, handle func(net.Conn)) string {
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
	return ln.Addr().String()
}

// Each scenario, briefly, against the target it needs: it completes work,
// counts no error, and reports what it promises.
func TestScenarios(t *testing.T) {
	echo, sink := target(t, TargetEcho, "tcp"), target(t, TargetSink, "tcp")
	uecho := target(t, TargetEcho, "udp")
	for _, c := range []struct {
		s    Scenario
		addr string
	}{{TCPThroughput, sink}, {TCPConnect, echo}, {TCPRR, echo}, {UDPRR, uecho}, {UDPPPS, uecho}} {
		t.Run(string(c.s), func(t *testing.T) {
			var progress atomic.Int32
			r, err := Run(context.Background(), c.s, Options{Addr: c.addr, Duration: 1200 * time.Millisecond, Warmup: 100 * time.Millisecond,
				Connections: 4, Progress: func(Progress) { progress.Add(1) }})
			if err != nil {
				t.Fatal(err)
			}
			if r.Ops == 0 || r.Rate <= 0 {
				t.Fatalf("no work done: %+v", r)
			}
			if r.Errors != 0 && c.s != UDPPPS { // a flood may overrun a socket buffer
				t.Fatalf("%d errors", r.Errors)
			}
			if progress.Load() == 0 {
				t.Fatal("no progress reported over more than a second")
			}
			switch c.s {
			case TCPThroughput:
				if r.Gbps <= 0 || r.Bytes == 0 {
					t.Fatalf("throughput %+v", r)
				}
			case UDPPPS:
				if r.Sent == 0 || r.Received == 0 || r.Received > r.Sent+int64(r.Connections)*1000 {
					t.Fatalf("sent %d, received %d", r.Sent, r.Received)
				}
			default:
				l := r.Latency
				if l == nil || l.P50 <= 0 || l.P50 > l.P90 || l.P90 > l.P99 || l.P99 > l.P999 || l.P999 > l.Max {
					t.Fatalf("latency %+v", l)
				}
			}
			var tab, js bytes.Buffer
			if err := WriteTable(&tab, r); err != nil || !strings.Contains(tab.String(), string(c.s)) {
				t.Fatalf("table: %v\n%s", err, tab.String())
			}
			var back []Result
			if err := WriteJSON(&js, r); err != nil || json.Unmarshal(js.Bytes(), &back) != nil || back[0].Ops != r.Ops {
				t.Fatalf("json: %v\n%s", err, js.String())
			}
		})
	}
}

// Open loop: the rate asked for is the rate sent, within the count's
// granularity.
func TestOpenLoopRate(t *testing.T) {
	echo := target(t, TargetEcho, "tcp")
	r, err := Run(context.Background(), TCPRR, Options{Addr: echo, Duration: time.Second, Warmup: -1, Connections: 4, Rate: 400})
	if err != nil {
		t.Fatal(err)
	}
	if r.Ops < 320 || r.Ops > 420 {
		t.Fatalf("%d requests in a second at 400/s", r.Ops)
	}
}

// A target that stalls once for 300 ms: the open-loop percentiles show the
// requests that were due during the stall, while the closed loop records
// one slow request and hides the rest (coordinated omission).
func TestOpenLoopCountsStalls(t *testing.T) {
	var stallAt atomic.Int64
	stallAt.Store(time.Now().Add(400 * time.Millisecond).UnixNano())
	addr := serve(t, func(c net.Conn) {
		buf := make([]byte, 64)
		stalled := false
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
			if !stalled && time.Now().UnixNano() > stallAt.Load() {
				stalled = true
				time.Sleep(300 * time.Millisecond)
			}
			c.Write(buf)
		}
	})
	o := Options{Addr: addr, Duration: 1200 * time.Millisecond, Warmup: 200 * time.Millisecond, Connections: 1, Rate: 200}
	open, err := Run(context.Background(), TCPRR, o)
	if err != nil {
		t.Fatal(err)
	}
	stallAt.Store(time.Now().Add(400 * time.Millisecond).UnixNano())
	o.Rate = 0
	closed, err := Run(context.Background(), TCPRR, o)
	if err != nil {
		t.Fatal(err)
	}
	if open.Latency.P90 < 50_000 {
		t.Fatalf("open loop p90 %v us: the stall's queued requests are missing", open.Latency.P90)
	}
	if closed.Latency.P90 > open.Latency.P90/5 {
		t.Fatalf("closed loop p90 %v us, open loop %v us: expected the closed loop to hide the stall", closed.Latency.P90, open.Latency.P90)
	}
	t.Logf("after a 300 ms stall: p90 open loop %.0f us, closed loop %.0f us", open.Latency.P90, closed.Latency.P90)
}

// idle-conns holds its connections and reads the named process's memory.
func TestIdleConns(t *testing.T) {
	echo := target(t, TargetEcho, "tcp")
	r, err := Run(context.Background(), IdleConns, Options{Addr: echo, Connections: 50, PID: os.Getpid(), Settle: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r.Held != 50 || r.RSSAfterKB == 0 || r.Errors != 0 {
		t.Fatalf("%+v", r)
	}
	if _, err := Run(context.Background(), IdleConns, Options{Addr: echo}); err == nil {
		t.Fatal("idle-conns ran without a PID")
	}
}

// Bad input is refused with a reason.
func TestBadInput(t *testing.T) {
	for _, s := range []string{"tcp:/1.2.3.4:5", "sctp://1.2.3.4:5", "tcp://1.2.3.4"} {
		if _, _, err := ParseListen(s); err == nil {
			t.Errorf("ParseListen(%q) accepted", s)
		}
	}
	if _, err := StartTarget("mirror", "tcp", "127.0.0.1:0", 0); err == nil {
		t.Error("an unknown target kind started")
	}
	if _, err := Run(context.Background(), "tcp-nothing", Options{Addr: "127.0.0.1:1"}); err == nil {
		t.Error("an unknown scenario ran")
	}
	if _, err := Run(context.Background(), UDPRR, Options{Addr: "127.0.0.1:1", Size: 70000}); err == nil {
		t.Error("a 70000-byte datagram was accepted")
	}
	// Nothing listens: the run says so instead of reporting zeros.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	if _, err := Run(context.Background(), TCPRR, Options{Addr: addr, Duration: 200 * time.Millisecond, Warmup: -1, Connections: 1}); err == nil {
		t.Error("a run against a closed port reported no error")
	}
}

// A failure scenario's effects are told apart: a target that resets every
// connection for 50 ms (the failure) shows as resets, not failed connects,
// with the time to recover; one that answers wrong bytes shows as broken.
func TestFailureAccounting(t *testing.T) {
	var reset, garble atomic.Bool
	addr := serve(t, func(c net.Conn) {
		buf := make([]byte, 64)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if reset.Load() {
				c.(*net.TCPConn).SetLinger(0)
				return
			}
			if garble.Load() {
				buf[0] ^= 0xff
			}
			c.Write(buf)
		}
	})
	o := Options{Addr: addr, Duration: 1200 * time.Millisecond, Warmup: -1, Connections: 4,
		During: func(context.Context) error {
			reset.Store(true)
			time.Sleep(50 * time.Millisecond)
			reset.Store(false)
			return nil
		}}
	r, err := Run(context.Background(), TCPRR, o)
	if err != nil {
		t.Fatal(err)
	}
	if r.Resets == 0 || r.FailedConnects != 0 || r.RecoverySeconds <= 0 || r.RecoverySeconds > 0.6 || r.DuringResult != "done" {
		t.Fatalf("after resetting every connection once: %+v", r)
	}
	garble.Store(true)
	o.During = nil
	o.Duration = 300 * time.Millisecond
	r, err = Run(context.Background(), TCPRR, o)
	if err != nil {
		t.Fatal(err)
	}
	if r.Broken == 0 || r.Ops != 0 {
		t.Fatalf("replies that differ from their requests: %+v", r)
	}
}

// A protocol's own exchange: a fixed request, and a response of a known
// size (here the rr target's 100 bytes).
func TestOwnRequest(t *testing.T) {
	tg, err := StartTarget(TargetRR, "tcp", "127.0.0.1:0", 100)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	for _, s := range []Scenario{TCPRR, TCPConnect} {
		r, err := Run(context.Background(), s, Options{Addr: tg.Addr.String(), Duration: 300 * time.Millisecond, Warmup: -1, Connections: 2,
			Request: []byte("PING\r\n"), ResponseSize: 100})
		if err != nil || r.Ops == 0 || r.Errors != 0 {
			t.Fatalf("%s: %+v, %v", s, r, err)
		}
	}
	if _, err := Run(context.Background(), TCPRR, Options{Addr: tg.Addr.String(), Request: []byte("x")}); err == nil {
		t.Fatal("a request of its own without a response size was accepted")
	}
}
