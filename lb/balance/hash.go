// Package balance picks a target for a flow from an immutable, built set of
// targets and hashes flows the same way on every node:
//
//	g, _ := balance.NewGroup(balance.GroupSpec{Name: "web", Targets: targets})
//	key := balance.FlowHash(balance.ProtoTCP, client, listenerAddr)
//	prefs := g.Pick(key, buf[:]) // first choice, then retry order
//
// Everything here is computed off the data path; Pick only indexes tables.
package balance

import (
	"net/netip"

	"github.com/l4lb/l4lb/pkg/maglev"
)

// IP protocol numbers, as they enter the 5-tuple.
const (
	ProtoTCP = 6
	ProtoUDP = 17
)

// FlowHash hashes a flow's 5-tuple. It is fixed (no per-process seed), so every
// l4lb node maps the same flow to the same slot, and it does not allocate.
func FlowHash(proto uint8, src, dst netip.AddrPort) uint64 {
	h := uint64(offset64) ^ uint64(proto)
	h = hashAddr(h, src.Addr())
	h = hashU16(h, src.Port())
	h = hashAddr(h, dst.Addr())
	h = hashU16(h, dst.Port())
	return finalize(h)
}

// SourceHash hashes a client IP alone, for stickiness source_ip.
func SourceHash(src netip.Addr) uint64 {
	return finalize(hashAddr(offset64, src))
}

const (
	offset64 = 14695981039346656037
	prime64  = 1099511628211
)

func hashAddr(h uint64, a netip.Addr) uint64 {
	b := a.Unmap().As16() // 4-in-6 and plain IPv4 hash alike
	for _, c := range b {
		h = (h ^ uint64(c)) * prime64
	}
	return h
}

func hashU16(h uint64, v uint16) uint64 {
	h = (h ^ uint64(v>>8)) * prime64
	return (h ^ uint64(v&0xff)) * prime64
}

// finalize spreads FNV's poorly mixed low bits, which the table modulus
// reads, with Maglev's own fixed finalizer.
func finalize(x uint64) uint64 { return maglev.Mix(x) }

// Rehash derives a second, independent hash from a flow hash (for choosing
// among weighted target groups without correlating with the table slot).
func Rehash(h uint64) uint64 { return finalize(h ^ 0x9e3779b97f4a7c15) }
