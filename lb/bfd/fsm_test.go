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
