package listen

import (
	"net/netip"
	"testing"
)

// The guard without a network: a connection to a local target is
// remembered by both ends and found from the other side; one to a remote
// target costs nothing and is never found; an accept that comes while the
// connect to its address is under way waits for it.
func TestLoopGuard(t *testing.T) {
	g := &LoopGuard{Local: func(a netip.Addr) bool { return a.IsLoopback() || a == netip.MustParseAddr("192.0.2.1") }}
	lb := netip.MustParseAddrPort("192.0.2.1:8171")    // a listener, on a host address
	mine := netip.MustParseAddrPort("192.0.2.1:40000") // l4lb's end of a connection to it
	if g.Looped(mine, lb) {
		t.Fatal("looped before any connect")
	}
	key := g.Mark(mine, lb)
	if !g.Looped(mine, lb) || !g.Looped(netip.MustParseAddrPort("[::ffff:192.0.2.1]:40000"), lb) {
		t.Fatal("l4lb's own connection, from the listener's side, is not a loop")
	}
	// Same local port, another destination: a client, not l4lb.
	if g.Looped(mine, netip.MustParseAddrPort("192.0.2.1:9000")) {
		t.Fatal("a client sharing l4lb's local port is taken for a loop")
	}
	g.Forget(key)
	if g.Looped(mine, lb) {
		t.Fatal("a forgotten connection is still a loop")
	}
	remote := netip.MustParseAddrPort("198.51.100.9:80")
	if k := g.Mark(netip.MustParseAddrPort("192.0.2.1:40001"), remote); k.local.IsValid() {
		t.Fatal("a connection to a remote target was remembered")
	}

	// The connect under way: Looped waits for Dialed.
	g.Dialing(lb)
	found := make(chan bool)
	go func() { found <- g.Looped(mine, lb) }()
	g.Dialed(mine, lb)
	if !<-found {
		t.Fatal("an accept during the connect was not seen as a loop")
	}
	// A failed connect ends the wait, and nothing is remembered.
	other := netip.MustParseAddrPort("127.0.0.1:41000")
	g.Dialing(lb)
	go func() { found <- g.Looped(other, lb) }()
	if k := g.Dialed(netip.AddrPort{}, lb); k.local.IsValid() {
		t.Fatal("a failed connect was remembered")
	}
	if <-found {
		t.Fatal("a stranger was taken for a loop")
	}
}
