// Package flowhash is the one definition of how l4lb hashes a flow. Every
// place that needs a flow's key uses it: the user-space data planes, the
// Maglev fill (for backend names) and, through the constants below, the
// kernel programs, whose copy a test checks against this one. The hash has no
// seed, so every l4lb node, of any version and architecture, maps the same
// flow to the same Maglev slot.
//
//	key := flowhash.Flow(flowhash.ProtoTCP, client, listenerAddr)
//	slot := key % maglev.DefaultSize
//
// The hash is FNV-1a over the protocol and the 16-byte form of each address
// (IPv4-mapped for IPv4) with its port in network order, finished by the
// splitmix64 finalizer, which spreads FNV's weak low bits that a table
// modulus reads. Nothing here allocates.
package flowhash

import "net/netip"

// IP protocol numbers, as they enter the 5-tuple.
const (
	ProtoTCP = 6
	ProtoUDP = 17
)

// FNV-1a's 64-bit parameters.
const (
	Offset64 = 14695981039346656037
	Prime64  = 1099511628211
)

// The splitmix64 finalizer's multipliers and shifts (Mix).
const (
	MixMul1   = 0xbf58476d1ce4e5b9
	MixMul2   = 0x94d049bb133111eb
	MixShift1 = 30
	MixShift2 = 27
	MixShift3 = 31
)

// GoldenGamma is the constant Rehash and the Maglev fill salt with
// (2^64 divided by the golden ratio).
const GoldenGamma = 0x9e3779b97f4a7c15

// Flow hashes a flow's 5-tuple.
func Flow(proto uint8, src, dst netip.AddrPort) uint64 {
	h := uint64(Offset64) ^ uint64(proto)
	h = addr(h, src.Addr())
	h = port(h, src.Port())
	h = addr(h, dst.Addr())
	h = port(h, dst.Port())
	return Mix(h)
}

// Source hashes a client IP alone, for stickiness source_ip.
func Source(src netip.Addr) uint64 {
	return Mix(addr(Offset64, src))
}

// Rehash derives a second, independent hash from a flow hash (for choosing
// among weighted target groups without correlating with the table slot).
func Rehash(h uint64) uint64 { return Mix(h ^ GoldenGamma) }

// FNV continues an FNV-1a hash h over bs.
func FNV(h uint64, bs []byte) uint64 {
	for _, c := range bs {
		h = (h ^ uint64(c)) * Prime64
	}
	return h
}

// String is the FNV-1a hash of s.
func String(s string) uint64 {
	h := uint64(Offset64)
	for i := 0; i < len(s); i++ {
		h = (h ^ uint64(s[i])) * Prime64
	}
	return h
}

// Mix is the splitmix64 finalizer.
func Mix(x uint64) uint64 {
	x ^= x >> MixShift1
	x *= MixMul1
	x ^= x >> MixShift2
	x *= MixMul2
	x ^= x >> MixShift3
	return x
}

func addr(h uint64, a netip.Addr) uint64 {
	b := a.Unmap().As16() // 4-in-6 and plain IPv4 hash alike
	return FNV(h, b[:])
}

func port(h uint64, v uint16) uint64 {
	h = (h ^ uint64(v>>8)) * Prime64
	return (h ^ uint64(v&0xff)) * Prime64
}
