package bfd

import (
	"testing"
	"time"
)

// exchange has a send its packet to b, and b answer if it must.
func exchange(a, b *fsm, now time.Time) {
	if b.recv(a.packet(), now) {
		p := b.packet()
		p.Final, p.Poll = true, false
		a.recv(p, now)
	}
}

// Two sessions come up with the three-way handshake, move to the
// configured rate by a poll sequence, and go down when one side stays
// silent past the detection time or says it is down.
func TestFSMLifecycle(t *testing.T) {
	t0 := time.Unix(1000, 0)
	a := newFSM(11, 100*time.Millisecond, 3, t0)
	b := newFSM(22, 100*time.Millisecond, 3, t0)
	if a.txInterval() != slowTx || a.packet().YourDiscriminator != 0 {
		t.Fatalf("a new session sends at %s with your discriminator %d; want 1s and 0", a.txInterval(), a.packet().YourDiscriminator)
	}
	exchange(a, b, t0) // a: Down -> b
	if b.state != Init || b.remote != 11 {
		t.Fatalf("b after a's Down: %s, remote %d; want init, 11", b.state, b.remote)
	}
	exchange(b, a, t0) // b: Init -> a
	if a.state != Up || !a.polling || a.desiredTx != 100*time.Millisecond {
		t.Fatalf("a after b's Init: %s polling %v tx %s; want up, polling, 100ms", a.state, a.polling, a.desiredTx)
	}
	exchange(a, b, t0) // a: Up, Poll -> b answers Final
	if b.state != Up || a.polling {
		t.Fatalf("b after a's Up: %s; a still polling: %v", b.state, a.polling)
	}
	exchange(b, a, t0) // b: Up, Poll -> a answers Final
	if b.polling {
		t.Fatal("b's poll sequence was not answered")
	}
	if a.txInterval() != 100*time.Millisecond || b.txInterval() != 100*time.Millisecond || a.detectTime() != 300*time.Millisecond {
		t.Fatalf("rates once up: a tx %s detect %s, b tx %s; want 100ms, 300ms, 100ms", a.txInterval(), a.detectTime(), b.txInterval())
	}

	// Silence: down after three intervals, no earlier.
	if a.expire(t0.Add(300 * time.Millisecond)) {
		t.Fatal("down at exactly the detection time")
	}
	if !a.expire(t0.Add(301*time.Millisecond)) || a.state != Down || a.diag != DiagTimeExpired || a.remote != 0 || a.txInterval() != slowTx {
		t.Fatalf("a after 301ms of silence: %s (%s), remote %d, tx %s", a.state, a.diag, a.remote, a.txInterval())
	}
	// a's Down takes b down too, and they come back.
	exchange(a, b, t0)
	if b.state != Down || b.diag != DiagNeighborDown {
		t.Fatalf("b after a's Down: %s (%s)", b.state, b.diag)
	}
	exchange(b, a, t0)
	exchange(a, b, t0)
	exchange(b, a, t0)
	if a.state != Up || b.state != Up {
		t.Fatalf("after the handshake again: a %s, b %s", a.state, b.state)
	}

	// b stops on purpose: a goes down with "neighbor signaled session
	// down", and b's AdminDown is not undone by what a sends.
	b.adminDown(t0)
	exchange(b, a, t0)
	exchange(a, b, t0)
	if a.state != Down || a.diag != DiagNeighborDown || b.state != AdminDown {
		t.Fatalf("after b went admin-down: a %s (%s), b %s", a.state, a.diag, b.state)
	}
}

// A peer that asks for no packets (required min RX 0) gets none.
func TestFSMPeerWantsNothing(t *testing.T) {
	a := newFSM(1, time.Second, 3, time.Now())
	a.recv(Packet{State: Down, DetectMult: 3, MyDiscriminator: 2, DesiredMinTx: 1e6}, time.Now())
	if a.txInterval() != 0 {
		t.Fatalf("tx interval %s towards a peer with required min RX 0", a.txInterval())
	}
}

// New settings on a session that is up reach the peer by a poll sequence;
// until its Final, the session sends at the faster of old and new and
// waits for the longer.
func TestFSMUpdateWhileUp(t *testing.T) {
	t0 := time.Unix(1000, 0)
	a := newFSM(11, 100*time.Millisecond, 3, t0)
	b := newFSM(22, 100*time.Millisecond, 3, t0)
	for range 3 {
		exchange(a, b, t0)
		exchange(b, a, t0)
	}
	if a.state != Up || b.state != Up || a.polling || b.polling {
		t.Fatalf("not settled: a %s polling %v, b %s polling %v", a.state, a.polling, b.state, b.polling)
	}

	a.update(300*time.Millisecond, 5)
	p := a.packet()
	if !p.Poll || p.DesiredMinTx != 300000 || p.RequiredMinRx != 300000 || p.DetectMult != 5 {
		t.Fatalf("a's packet after the update: %+v; want a poll with 300 ms and multiplier 5", p)
	}
	if a.txInterval() != 100*time.Millisecond || a.rxUsed != 300*time.Millisecond || a.state != Up {
		t.Fatalf("a before the Final: tx %s, rx %s, %s; want the faster tx (100ms), the longer rx (300ms), still up", a.txInterval(), a.rxUsed, a.state)
	}
	exchange(a, b, t0) // b answers Final
	if a.polling || a.txInterval() != 300*time.Millisecond || a.detectTime() != 300*time.Millisecond*3 {
		t.Fatalf("a after the Final: polling %v, tx %s, detect %s", a.polling, a.txInterval(), a.detectTime())
	}
	if b.detectTime() != 5*300*time.Millisecond || b.txInterval() != 300*time.Millisecond {
		t.Fatalf("b after a's update: detect %s, tx %s; want 1.5s and 300ms", b.detectTime(), b.txInterval())
	}

	// Faster again: sending speeds up at once, waiting shortens only
	// once the peer knows.
	a.update(50*time.Millisecond, 3)
	if a.txUsed != 50*time.Millisecond || a.rxUsed != 300*time.Millisecond {
		t.Fatalf("a before the Final: tx used %s, rx used %s; want 50ms and 300ms", a.txUsed, a.rxUsed)
	}
	exchange(a, b, t0)
	if a.rxUsed != 50*time.Millisecond || a.state != Up || b.state != Up {
		t.Fatalf("after the Final: rx used %s, a %s, b %s", a.rxUsed, a.state, b.state)
	}
}
