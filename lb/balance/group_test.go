package balance

import (
	"net/netip"
	"testing"

	"github.com/l4lb/l4lb/pkg/flowhash"
)

func TestGroupPick(t *testing.T) {
	ts := []Target{
		{Addr: netip.MustParseAddrPort("10.0.1.10:80"), Weight: 1},
		{Addr: netip.MustParseAddrPort("10.0.2.10:80"), Weight: 1},
		{Addr: netip.MustParseAddrPort("10.0.2.11:80"), Weight: 1},
	}
	g, err := NewGroup(GroupSpec{Name: "g", Targets: ts})
	if err != nil {
		t.Fatal(err)
	}
	var buf [3]int
	seen := map[int]bool{}
	for h := uint64(0); h < 1000; h++ {
		p := g.Pick(flowhash.Flow(flowhash.ProtoTCP, netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(h)), ts[0].Addr), buf[:])
		if len(p) != 3 || p[0] == p[1] || p[1] == p[2] || p[0] == p[2] {
			t.Fatalf("preference %v is not three distinct targets", p)
		}
		seen[p[0]] = true
	}
	if len(seen) != 3 {
		t.Fatalf("first choices used %d targets, want 3", len(seen))
	}
	empty, _ := NewGroup(GroupSpec{Name: "none"})
	if p := empty.Pick(1, buf[:]); len(p) != 0 {
		t.Fatalf("empty group picked %v", p)
	}
	if a := testing.AllocsPerRun(100, func() { g.Pick(42, buf[:]) }); a != 0 {
		t.Fatalf("Pick allocates %.0f", a)
	}
}
