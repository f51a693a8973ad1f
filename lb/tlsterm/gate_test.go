package tlsterm

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

// The gate's rules without a network: a network holds at most its share,
// the listener at most its cap; a waiter is refused with the reason that
// held it; a freed slot goes to the first waiter whose network may take
// it, skipping one whose network is at its share.
func TestGate(t *testing.T) {
	a := sourceNet(netip.MustParseAddr("192.0.2.7"))
	b := sourceNet(netip.MustParseAddr("198.51.100.7"))
	if a != sourceNet(netip.MustParseAddr("192.0.2.200")) || a == b {
		t.Fatal("sourceNet is not the /24")
	}
	v6 := sourceNet(netip.MustParseAddr("2001:db8:1:2::5"))
	if v6 != netip.MustParsePrefix("2001:db8:1:2::/64") {
		t.Fatalf("sourceNet of an IPv6 address: %v", v6)
	}
	g := newGate(3, 2)
	for range 2 {
		if err := g.acquire(a, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.acquire(a, 10*time.Millisecond); !errors.Is(err, ErrSourceBusy) {
		t.Fatalf("a third from a network with a share of 2: %v", err)
	}
	if err := g.acquire(b, 0); err != nil {
		t.Fatalf("another network: %v", err)
	}
	if err := g.acquire(b, 10*time.Millisecond); !errors.Is(err, ErrBusy) {
		t.Fatalf("past the cap of 3: %v", err)
	}
	// Waiting: a's waiter first, then b's. A slot of b's is freed: a is
	// at its share, so b's waiter takes it.
	got := make(chan netip.Prefix, 2)
	for _, n := range []netip.Prefix{a, b} {
		go func() {
			if g.acquire(n, 5*time.Second) == nil {
				got <- n
			}
		}()
		waiting(t, g, n)
	}
	g.release(b)
	if n := <-got; n != b {
		t.Fatalf("the freed slot went to %v, whose network is at its share", n)
	}
	g.release(a)
	if n := <-got; n != a {
		t.Fatalf("then to %v, want %v", n, a)
	}
	// A smaller cap on reload: nothing new until enough are released.
	g.resize(1, 1)
	if err := g.acquire(b, 10*time.Millisecond); !errors.Is(err, ErrBusy) {
		t.Fatalf("over a reduced cap: %v", err)
	}
}

// waiting returns once the gate's last waiter is one from n.
func waiting(t *testing.T, g *gate, n netip.Prefix) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		g.mu.Lock()
		w := len(g.waiters)
		last := w > 0 && g.waiters[w-1].src == n
		g.mu.Unlock()
		if last {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no waiter from %v queued", n)
		}
		time.Sleep(time.Millisecond)
	}
}
