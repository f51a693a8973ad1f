package flowhash

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
	// The same tuple built another way (parsed from text, or from bytes)
	// hashes the same: the hash reads the values, not the representation.
	again := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 2, 3}), 40000)
	if Flow(ProtoTCP, src, dst) != Flow(ProtoTCP, again, netip.MustParseAddrPort(dst.String())) {
		t.Fatal("the same tuple, built another way, hashes differently")
	}
	// A fixed value pins the function across releases: nodes running
	// different versions must still agree.
	if got := Flow(ProtoTCP, src, dst); got != 0x1eca925136c3cd82 {
		t.Fatalf("Flow changed: %#x (nodes of different versions would disagree; change it only with a release note)", got)
	}
	if got := Source(src.Addr()); got != 0x2bcb839e09105cea {
		t.Fatalf("Source changed: %#x", got)
	}
	mapped := netip.AddrPortFrom(netip.AddrFrom16(src.Addr().As16()), src.Port())
	if Flow(ProtoTCP, src, dst) != Flow(ProtoTCP, mapped, dst) {
		t.Fatal("4-in-6 address hashes differently")
	}
	if Source(src.Addr()) == Flow(ProtoTCP, src, dst) {
		t.Fatal("source hash equals flow hash")
	}
}

// Every field of the tuple matters: changing one changes the hash.
func TestFlowHashSensitive(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	for range 10000 {
		s, d := randAddrPort(r), randAddrPort(r)
		h := Flow(ProtoTCP, s, d)
		if Flow(ProtoUDP, s, d) == h ||
			Flow(ProtoTCP, netip.AddrPortFrom(s.Addr(), s.Port()+1), d) == h ||
			Flow(ProtoTCP, s, netip.AddrPortFrom(d.Addr(), d.Port()+1)) == h ||
			Flow(ProtoTCP, d, s) == h {
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
		h := Flow(ProtoTCP, netip.AddrPortFrom(src, uint16(1024+p)), dst)
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
