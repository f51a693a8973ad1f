package lb

import (
	"context"
	"crypto/tls"
	"errors"
	"github.com/l4lb/l4lb/internal/testpki"
	"hash/crc32"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/pkg/config"
)

func TestWeightedSpread(t *testing.T) {
	var es []*echoTarget
	var ts []config.Target
	for _, w := range []int{1, 1, 2} {
		e := startEcho(t)
		es = append(es, e)
		ts = append(ts, config.Target{Address: e.addr, Weight: w})
	}
	_, addr := startServer(t, testConfig(ts, nil), Options{})
	const n = 3000
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			roundTrip(t, addr, "x")
		}()
	}
	wg.Wait()
	shares := []float64{0.25, 0.25, 0.5}
	for i, e := range es {
		got := len(e.hits)
		want := shares[i] * n
		if math.Abs(float64(got)-want) > 0.1*want {
			t.Errorf("target %d (weight share %.2f) got %d of %d connections, want %.0f ±10%%", i, shares[i], got, n, want)
		}
	}
}

// A gibibyte each way through one flow, checked end to end.
func TestBulkIntegrity(t *testing.T) {
	size := int64(1 << 30)
	if testing.Short() {
		size = 64 << 20
	}
	e := startEcho(t)
	srv, addr := startServer(t, testConfig([]config.Target{{Address: e.addr, Weight: 1}}, nil), Options{})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Minute))
	sent := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	got := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	errc := make(chan error, 1)
	go func() {
		src := io.LimitReader(rand.NewChaCha8([32]byte{1, 2, 3}), size)
		_, err := io.CopyBuffer(io.MultiWriter(c, sent), src, make([]byte, 256<<10))
		c.(*net.TCPConn).CloseWrite()
		errc <- err
	}()
	n, err := io.CopyBuffer(got, c, make([]byte, 256<<10))
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n != size || got.Sum32() != sent.Sum32() {
		t.Fatalf("received %d bytes crc %08x, sent %d crc %08x", n, got.Sum32(), size, sent.Sum32())
	}
	// Bulk bytes move by splice(2), not through user space.
	c.Close()
	waitFor(t, func() bool { return srv.ActiveFlows() == 0 })
	total, spliced := srv.MovedBytes()
	if total != 2*size || float64(spliced) < 0.9*float64(total) {
		t.Fatalf("moved %d bytes, %d by splice; want %d, at least 90%% spliced", total, spliced, 2*size)
	}
}

// A client that shuts its write side right after the request still gets the
// whole reply (half-close passes through).
func TestHalfClose(t *testing.T) {
	const reply = 8 << 20
	target := serveTCP(t, func(c net.Conn) {
		io.Copy(io.Discard, c) // the whole request, to EOF
		io.Copy(c, io.LimitReader(rand.NewChaCha8([32]byte{9}), reply))
	})
	_, addr := startServer(t, testConfig([]config.Target{{Address: target, Weight: 1}}, nil), Options{})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	c.Write([]byte("request"))
	c.(*net.TCPConn).CloseWrite()
	n, err := io.Copy(io.Discard, c)
	if err != nil || n != reply {
		t.Fatalf("after half-close got %d bytes (err %v), want %d", n, err, reply)
	}
}

// Killing one of three targets during a stream of new connections fails none:
// refused connects move to the next target of the preference list. The kill
// lands between connections: one the dead target's kernel had already
// accepted is lost with it, as with any proxy, and is not what this tests.
func TestTargetKilledMidStream(t *testing.T) {
	var es []*echoTarget
	var ts []config.Target
	for range 3 {
		e := startEcho(t)
		es = append(es, e)
		ts = append(ts, config.Target{Address: e.addr, Weight: 1})
	}
	_, addr := startServer(t, testConfig(ts, nil), Options{})
	const n = 900
	var failed atomic.Int32
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range n {
		if i == n/3 {
			for range cap(sem) { // let in-flight connections finish
				sem <- struct{}{}
			}
			es[1].ln.Close()
			for range cap(sem) {
				<-sem
			}
			for len(es[1].hits) > 0 {
				<-es[1].hits
			}
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				failed.Add(1)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte("ping"))
			c.(*net.TCPConn).CloseWrite()
			b, err := io.ReadAll(c)
			if err != nil || string(b) != "ping" {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f != 0 {
		t.Fatalf("%d of %d connections failed after a target died", f, n)
	}
	if len(es[0].hits)+len(es[2].hits) < n*2/3 {
		t.Fatalf("surviving targets served %d connections", len(es[0].hits)+len(es[2].hits))
	}
}

// blackhole returns an address whose accept queue is full, so new SYNs are
// dropped and connects to it time out instead of being refused.
func blackhole(t *testing.T) netip.AddrPort {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	ap := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(sa.(*unix.SockaddrInet4).Port))
	// Fill the queue; the listener never accepts.
	for range 4 {
		c, err := net.DialTimeout("tcp", ap.String(), 200*time.Millisecond)
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	return ap
}

func TestBlackholedTargetIsRetried(t *testing.T) {
	e := startEcho(t)
	bh := blackhole(t)
	refused := func() netip.AddrPort { // a port nobody listens on
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		ap := ln.Addr().(*net.TCPAddr).AddrPort()
		ln.Close()
		return ap
	}()
	ts := []config.Target{{Address: bh, Weight: 1}, {Address: refused, Weight: 1}, {Address: e.addr, Weight: 1}}
	_, addr := startServer(t, testConfig(ts, nil), Options{ConnectTimeout: 150 * time.Millisecond})
	for range 20 {
		roundTrip(t, addr, "still served")
	}
}

func TestIdleTimeout(t *testing.T) {
	e := startEcho(t)
	idle := 300 * time.Millisecond
	srv, addr := startServer(t, testConfig([]config.Target{{Address: e.addr, Weight: 1}}, func(l *config.Listener, _ *config.TargetGroup) {
		l.IdleTimeout = idle
	}), Options{})

	// An active flow outlives the timeout...
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 4)
	var last time.Time
	for range 8 {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("tick")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("active flow was closed: %v", err)
		}
		last = time.Now()
		time.Sleep(idle / 3)
	}
	// ...and is closed once it idles, after the timeout and not long after.
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(buf)
	waited := time.Since(last)
	if err == nil {
		t.Fatal("read on an idle flow returned data")
	}
	// A net deadline fails with os.ErrDeadlineExceeded: that would mean
	// l4lb never closed the flow.
	if errors.Is(err, os.ErrDeadlineExceeded) || waited < idle-50*time.Millisecond || waited > idle+3*time.Second {
		t.Fatalf("idle flow closed after %v (err %v), want about %v", waited, err, idle)
	}
	// A client that connects and sends nothing is closed too.
	c2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c2.Read(buf); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("silent client: read returned %v, want the flow closed", err)
	}
	waitFor(t, func() bool { return srv.ActiveFlows() == 0 })
}

// waitFor polls cond briefly; the flow table updates just after sockets close.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Shutdown stops accepting at once but lets an in-flight transfer finish.
func TestShutdownDrains(t *testing.T) {
	e := startEcho(t)
	srv, addr := startServer(t, testConfig([]config.Target{{Address: e.addr, Weight: 1}}, nil), Options{})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte("first")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- srv.Shutdown(ctx)
	}()
	// A probe that still gets in is a flow of its own, which the drain
	// waits for: close it at once.
	waitFor(t, func() bool {
		p, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		p.Close()
		return false
	})
	// The established flow still carries a transfer to its end.
	const size = 32 << 20
	go func() {
		io.Copy(c, io.LimitReader(rand.NewChaCha8([32]byte{7}), size))
		c.(*net.TCPConn).CloseWrite()
	}()
	n, err := io.Copy(io.Discard, c)
	if err != nil || n != size {
		t.Fatalf("in-flight transfer got %d bytes (err %v), want %d", n, err, size)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown = %v, want a clean drain", err)
	}
}

func TestShutdownDeadlineCutsFlows(t *testing.T) {
	e := startEcho(t)
	srv, addr := startServer(t, testConfig([]config.Target{{Address: e.addr, Weight: 1}}, nil), Options{})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, func() bool { return srv.ActiveFlows() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want the deadline error", err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("flow still open after the shutdown deadline")
	}
}

func TestACLDeny(t *testing.T) {
	e := startEcho(t)
	_, addr := startServer(t, testConfig([]config.Target{{Address: e.addr, Weight: 1}}, func(l *config.Listener, _ *config.TargetGroup) {
		l.Deny = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	}), Options{})
	c, err := net.Dial("tcp", addr)
	if err == nil { // the reset may arrive before or after connect returns
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("denied source was served")
		}
	}
	if len(e.hits) != 0 {
		t.Fatal("denied flow reached the target")
	}
}

// The data path allocates nothing per chunk: a bulk flow's allocations do not
// grow with the bytes moved.
func TestNoAllocationPerChunk(t *testing.T) {
	e := startEcho(t)
	_, addr := startServer(t, testConfig([]config.Target{{Address: e.addr, Weight: 1}}, nil), Options{})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	exchange := func(rounds int) {
		for range rounds {
			c.Write(buf)
			io.ReadFull(c, buf)
		}
	}
	exchange(10)
	small := testing.AllocsPerRun(3, func() { exchange(10) })
	large := testing.AllocsPerRun(3, func() { exchange(200) })
	// The client side (this test) allocates nothing either, so growth would be
	// the proxy's.
	if large > small+20 {
		t.Fatalf("allocations grow with traffic: %.0f for 10 round trips, %.0f for 200", small, large)
	}
}

// Idle flows hold no goroutine: on the event loop none ever waits for
// them, and on the goroutine path (TLS, or with the event loop off) both
// directions park. They wake on the next byte with nothing lost, and still
// idle out.
func TestIdleFlowsPark(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out idle periods for seconds; make test runs it")
	}
	for _, tc := range []struct {
		name   string
		opts   Options
		parked bool
	}{{"event loop", Options{}, false}, {"goroutines", Options{NoEventLoop: true}, true}} {
		t.Run(tc.name, func(t *testing.T) { testIdleFlows(t, tc.opts, tc.parked) })
	}
}

func testIdleFlows(t *testing.T, opts Options, parks bool) {
	e := startEcho(t)
	srv, addr := startServer(t, testConfig([]config.Target{{Address: e.addr, Weight: 1}}, func(l *config.Listener, _ *config.TargetGroup) {
		l.IdleTimeout = 3 * time.Second // directions park after 750ms of quiet
	}), opts)
	const n = 20
	before := runtime.NumGoroutine()
	var conns []net.Conn
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		c.Write([]byte("hi"))
		io.ReadFull(c, make([]byte, 2))
		conns = append(conns, c)
	}
	if parks {
		waitFor(t, func() bool { return srv.ParkedDirections() == 2*n })
	} else if g := runtime.NumGoroutine() - before - n; g > n/4 {
		// The echo target has a goroutine per connection; l4lb none.
		t.Fatalf("%d more goroutines than the echo's for %d idle flows on the event loop", g, n)
	}
	// Traffic on an idle flow resumes it, in both directions.
	for i, c := range conns {
		msg := []byte{byte('a' + i%26), 'x'}
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 2)
		if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
			t.Fatalf("flow %d after a quiet time: %q, %v", i, got, err)
		}
	}
	// Left alone, idle flows are closed at the idle timeout.
	waitFor(t, func() bool { return srv.ActiveFlows() == 0 })
	if srv.ParkedDirections() != 0 {
		t.Fatalf("%d directions still parked after every flow ended", srv.ParkedDirections())
	}
	for _, c := range conns {
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("idle flow still open")
		}
	}
}

// Handing the listening sockets to a new process (os/exec asks each file
// for its descriptor, and os.File may set it to blocking then) leaves them
// nonblocking here: the event loop would otherwise stall in accept4 once
// the queue is empty, and with it every flow of that loop.
func TestHandedOverSocketsStayNonblocking(t *testing.T) {
	e := startEcho(t)
	srv, addr := startServer(t, testConfig([]config.Target{{Address: e.addr, Weight: 1}}, nil), Options{})
	var files []*os.File
	if err := srv.Files(func(_ string, f *os.File) { files = append(files, f) }); err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no socket handed over")
	}
	for _, f := range files {
		f.Fd() // what os/exec does with ExtraFiles
		defer f.Close()
	}
	// An idle loop must still carry a flow opened after the handover.
	deadline := time.Now().Add(5 * time.Second)
	for range 20 {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(deadline)
		if _, err := c.Write([]byte("hi")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
			t.Fatalf("after the handover: %v", err)
		}
		c.Close()
	}
}

// The drain's deadline ends connections still in setup too: a connect to
// a target that never answers (connect timeout 20 s here) does not keep
// Shutdown past its context, on the event loop and on goroutines (TLS).
func TestShutdownCutsConnectsUnderWay(t *testing.T) {
	hole := blackhole(t)
	ca := testpki.New(t)
	for _, tc := range []struct {
		name string
		tls  bool
	}{{"event loop", false}, {"goroutines (TLS)", true}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig([]config.Target{{Address: hole, Weight: 1}}, func(l *config.Listener, _ *config.TargetGroup) {
				if tc.tls {
					l.Protocol = config.TLS
					l.TLS = &config.ListenerTLS{Certificates: []config.Certificate{issue(t, ca, false, "api.test")},
						SecurityPolicy: config.DefaultSecurityPolicy, ALPNPolicy: config.ALPNNone}
				}
			})
			srv, err := New(cfg, Options{ConnectTimeout: 20 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if err := srv.Start(); err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			addr := srv.Addrs("test")[0].String()
			for range 4 {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if tc.tls {
					tc := tls.Client(c, &tls.Config{ServerName: "api.test", RootCAs: ca.Pool})
					tc.SetDeadline(time.Now().Add(5 * time.Second))
					if err := tc.Handshake(); err != nil {
						t.Fatal(err)
					}
					tc.Write([]byte("hi")) // TLS 1.3: the server's handshake ends with the client's first record
				}
			}
			waitFor(t, func() bool { return srv.ActiveFlows() >= 4 })
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			start := time.Now()
			srv.Shutdown(ctx)
			if took := time.Since(start); took > 3*time.Second {
				t.Fatalf("Shutdown took %v with a 300 ms context: it waited for connects under way", took)
			}
		})
	}
}
