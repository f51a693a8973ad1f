package fastpath

import (
	"net/netip"
	"testing"
	"time"
)

// Ending the flows of several targets is one call: each target's flows go,
// both entries, and a flow to a target not named stays pinned.
func TestEndFlowsToSeveralTargets(t *testing.T) {
	p := newPath(t, Options{MaxFlows: 64, Services: 1})
	vip := netip.MustParseAddrPort("127.0.0.53:53")
	id, _ := p.AddService(vip, time.Minute, false)
	targets := []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:5300"),
		netip.MustParseAddrPort("127.0.0.2:5300"),
		netip.MustParseAddrPort("127.0.0.3:5300"),
	}
	clients := map[netip.AddrPort]netip.AddrPort{}
	for i, a := range targets {
		// One table a target, so each client's flow pins to a known one.
		if err := p.SetTable(id, fill(a)); err != nil {
			t.Fatal(err)
		}
		for j := range 2 {
			c := netip.AddrPortFrom(netip.MustParseAddr("127.9.9.9"), uint16(40000+10*i+j))
			run(t, p, packet(c, vip, []byte("query")))
			clients[c] = a
		}
	}
	last := netip.MustParseAddrPort("127.0.0.4:5300")
	if err := p.SetTable(id, fill(last)); err != nil {
		t.Fatal(err)
	}
	gone := netip.MustParseAddrPort("[fd00::1]:5300") // a family with no flows
	if n, err := p.EndFlowsTo(targets[0], targets[2], gone); n != 4 || err != nil {
		t.Fatalf("ended %d flows (%v), want 4", n, err)
	}
	for c, a := range clients {
		want := a
		if a != targets[1] {
			want = last // its flow ended: a new one, on today's table
		}
		_, out := run(t, p, packet(c, vip, []byte("again")))
		if _, got := addrs(out); got != want {
			t.Fatalf("client %s (first on %s): went to %s, want %s", c, a, got, want)
		}
	}
}
