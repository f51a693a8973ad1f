package tcpproxy

import (
	"net"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

// Memory goes back to the OS once a burst of parks is over (a scan with no
// new ones), at most every gcEvery, and during a stream of parks that never
// pauses only after gcAfterParks of them.
func TestParkerReclaim(t *testing.T) {
	p := &parker{}
	now := time.Now()
	step := func(parks int64, d time.Duration) bool {
		p.parks.Add(parks)
		now = now.Add(d)
		before := p.lastGC
		p.reclaim(now)
		return p.lastGC != before
	}
	if step(2000, time.Second) {
		t.Fatal("reclaimed while parks were still coming")
	}
	if !step(0, time.Second) {
		t.Fatal("no reclaim once the burst was over")
	}
	if p.parks.Load() != 0 {
		t.Fatalf("%d parks left after a reclaim", p.parks.Load())
	}
	if step(2000, time.Second) || step(0, time.Second) {
		t.Fatal("reclaimed again within gcEvery")
	}
	if !step(0, gcEvery) {
		t.Fatal("no reclaim after gcEvery")
	}
	if step(100, time.Second) || step(0, time.Second) {
		t.Fatal("reclaimed after a burst smaller than gcAfterBurst")
	}
	for i := 0; ; i++ {
		if step(gcAfterParks/8, gcEvery) {
			if i < 7 {
				t.Fatalf("a steady stream reclaimed after %d parks", (i+1)*gcAfterParks/8)
			}
			break
		}
		if i > 8 {
			t.Fatal("a steady stream of parks never reclaimed")
		}
	}
}

// A direction whose socket was closed (an abort raced its park) is never
// registered, even when another socket has taken its descriptor number:
// the parker would watch that socket instead, and the flow would stay
// parked until its idle timeout.
func TestParkRefusesClosedSocket(t *testing.T) {
	p, err := newParker(time.Second, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	f := &flow{}
	h := &f.halves[0]
	h.f = f
	h.src = c.(*net.TCPConn)
	h.srcRC, _ = h.src.SyscallConn()
	var num int
	h.srcRC.Control(func(fd uintptr) { num = int(fd) })
	c.Close()
	// Take the freed number with a socket that has a byte to read, as a
	// reused descriptor of another flow might.
	var held []int
	defer func() {
		for _, fd := range held {
			unix.Close(fd)
		}
	}()
	reused := false
	for range 64 {
		fd, err := unix.Eventfd(1, unix.EFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, fd)
		if fd == num {
			reused = true
			break
		}
	}
	if !reused {
		t.Logf("descriptor %d was not reused; checking the closed socket alone", num)
	}
	if p.park(h) {
		t.Fatal("a direction with a closed socket was parked")
	}
	if n := p.count(); n != 0 {
		t.Fatalf("%d directions parked, want 0", n)
	}

	// An aborted flow with its sockets still open does not park either.
	c2, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	f2 := &flow{}
	h2 := &f2.halves[0]
	h2.f = f2
	h2.src = c2.(*net.TCPConn)
	h2.srcRC, _ = h2.src.SyscallConn()
	f2.aborted.Store(true)
	if p.park(h2) || p.count() != 0 {
		t.Fatal("an aborted flow's direction was parked")
	}
}

// A parker whose wait fails says so, wakes what it holds and refuses new
// parks, where it used to stop silently and leave parked directions
// waiting for events that would never come.
func TestParkerReportsWaitFailure(t *testing.T) {
	core, logs := observer.New(zap.ErrorLevel)
	p, err := newParker(10*time.Millisecond, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p.wake)
	unix.Close(p.epfd) // the next wait fails
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the parker's loop did not stop")
	}
	if logs.Len() == 0 {
		t.Fatal("the failed wait was not reported")
	}
	if !p.closed.Load() {
		t.Fatal("parking still accepted after the loop stopped")
	}
}
