package maglev

import (
	"cmp"
	"math/bits"
	"slices"
	"sync"

	"github.com/l4lb/l4lb/pkg/flowhash"
)

// topK is how many ranked candidates per slot the fill keeps. A slot whose k
// best backends are all full (a fraction of a percent of slots) falls back to a
// full ranking.
const topK = 8

// candidate is one (slot, backend) pair with its weighted rendezvous score
// w/l, kept as the exact fraction: l is -log2(u) in 32.32 fixed point, and 0
// stands for u = 1, an infinite score.
type candidate struct {
	w    uint64
	l    uint64
	slot int32
	rank int32 // position of the backend in name order
}

// fill assigns every slot to a backend. Each backend gets an exact quota of
// slots proportional to its weight (so equal weights differ by at most one
// slot, like the classic Maglev fill), and the slots are handed out in one
// global order of (slot, backend) preference scores, best first, skipping
// backends whose quota is used up.
//
// Classic Maglev fills round by round along per-backend permutations; when a
// backend leaves, every later round shifts and the cascade moves about 1.6/N of
// keys for N=100 at 65537 slots. Ranking pairs by a weighted rendezvous score
// (-w/log2 u, u a fixed hash of slot and backend name) instead keeps each slot
// with the backend that wants it most, so a removal moves about 1.2/N.
//
// The fill uses integer arithmetic only: the logarithm comes from a table
// built with integer operations, and scores compare as exact fractions. A
// floating-point log may round differently on another architecture or
// compiler (math.Log is assembly on amd64 and Go on arm64, where
// multiply-adds may be fused), and one flipped comparison would give two
// nodes of a fleet different tables.
func fill(backends []Backend, order []int, g, size int) []uint32 {
	n := len(order)
	ids := make([]uint64, n)
	weight := make([]uint64, n)
	quota := make([]int, n)
	total := 0
	for r, o := range order {
		ids[r] = flowhash.String(backends[o].Name)
		weight[r] = uint64(backends[o].Weight / g)
		total += backends[o].Weight / g
	}
	// Largest-remainder quotas; ties go to the earlier name, so every process
	// computes the same quotas.
	left := size
	frac := make([]int, n)
	for r, o := range order {
		w := backends[o].Weight / g
		quota[r] = size * w / total
		frac[r] = size * w % total
		left -= quota[r]
	}
	byFrac := make([]int, n)
	for r := range byFrac {
		byFrac[r] = r
	}
	slices.SortStableFunc(byFrac, func(a, b int) int { return cmp.Compare(frac[b], frac[a]) })
	for i := 0; left > 0; i++ {
		quota[byFrac[i%n]]++
		left--
	}

	k := min(topK, n)
	cands := make([]candidate, 0, size*k)
	row := make([]candidate, n)
	for s := range size {
		score(row, ids, weight, s)
		cands = append(cands, best(row, k)...)
	}
	if uniform(weight) {
		sortByL(cands)
	} else {
		slices.SortFunc(cands, byScore)
	}

	const empty = ^uint32(0)
	slots := make([]uint32, size)
	for i := range slots {
		slots[i] = empty
	}
	for _, c := range cands {
		if slots[c.slot] == empty && quota[c.rank] > 0 {
			slots[c.slot] = uint32(order[c.rank])
			quota[c.rank]--
		}
	}
	for s := range slots {
		if slots[s] != empty {
			continue
		}
		score(row, ids, weight, s)
		slices.SortFunc(row, byScore)
		for _, c := range row {
			if quota[c.rank] > 0 {
				slots[s] = uint32(order[c.rank])
				quota[c.rank]--
				break
			}
		}
	}
	return slots
}

// uniform says whether every backend has the same weight (after dividing by
// the weights' gcd, the common case of all 1).
func uniform(weight []uint64) bool {
	for _, w := range weight {
		if w != weight[0] {
			return false
		}
	}
	return true
}

// sortByL sorts candidates of equal weight into byScore's order, faster: with
// equal weights a higher score is a smaller l (l = 0, an infinite score,
// first), so byScore is the order of (l, slot, rank). The candidates come
// in slot order, and each slot's in byScore's order (best), so a stable
// sort by l alone gives that order: a least-significant-digit radix sort,
// 16 bits a pass, over the bits l uses (38: l is at most 53 in 32.32).
func sortByL(cands []candidate) {
	tmp := make([]candidate, len(cands))
	src, dst := cands, tmp
	var count [1 << 16]int
	for shift := uint(0); shift < 64; shift += 16 {
		clear(count[:])
		for _, c := range src {
			count[c.l>>shift&0xffff]++
		}
		if count[src[0].l>>shift&0xffff] == len(src) {
			continue // one digit for all: this pass would move nothing
		}
		sum := 0
		for i, n := range count {
			count[i] = sum
			sum += n
		}
		for _, c := range src {
			d := c.l >> shift & 0xffff
			dst[count[d]] = c
			count[d]++
		}
		src, dst = dst, src
	}
	if &src[0] != &cands[0] {
		copy(cands, src)
	}
}

// score fills row with every backend's weighted rendezvous score for slot s.
func score(row []candidate, ids []uint64, weight []uint64, s int) {
	hs := flowhash.Mix(uint64(s) ^ flowhash.GoldenGamma)
	for r, id := range ids {
		// u in (0, 1]: 53 bits of a hash of (slot, backend), plus one.
		u := flowhash.Mix(id^hs)>>11 + 1
		row[r] = candidate{w: weight[r], l: negLog2(u), slot: int32(s), rank: int32(r)}
	}
}

// byScore orders best first; ties break on slot then name order so the result
// never depends on the sort algorithm.
func byScore(a, b candidate) int {
	if c := compareScore(a, b); c != 0 {
		return c
	}
	if c := cmp.Compare(a.slot, b.slot); c != 0 {
		return c
	}
	return cmp.Compare(a.rank, b.rank)
}

// compareScore is negative when a's score w/l is the higher, comparing
// a.w*b.l with b.w*a.l in 128 bits, so no rounding enters.
func compareScore(a, b candidate) int {
	switch {
	case a.l == 0 && b.l == 0:
		return 0
	case a.l == 0:
		return -1
	case b.l == 0:
		return 1
	}
	ahi, alo := bits.Mul64(a.w, b.l)
	bhi, blo := bits.Mul64(b.w, a.l)
	if c := cmp.Compare(bhi, ahi); c != 0 {
		return c
	}
	return cmp.Compare(blo, alo)
}

// fracBits is the fixed-point precision of the logarithms.
const fracBits = 32

// negLog2 is -log2(x / 2^53) in 32.32 fixed point, for x in [1, 2^53]: 0 for
// x = 2^53, and larger the smaller x is. The fraction of log2 comes from a
// 2^16-entry table, interpolated linearly over the next 16 bits.
func negLog2(x uint64) uint64 {
	t := log2Table()
	e := uint64(bits.Len64(x) - 1)
	m := x << (63 - e) // the leading one at bit 63
	idx := (m >> 47) & 0xffff
	rem := (m >> 31) & 0xffff
	f := t[idx] + (t[idx+1]-t[idx])*rem>>16
	return 53<<fracBits - (e<<fracBits + f)
}

// log2Table holds log2(1 + i/2^16) in 32.32 fixed point for i in [0, 2^16],
// computed by the bitwise logarithm (square, and halve past 2) in integers.
var log2Table = sync.OnceValue(func() *[1<<16 + 1]uint64 {
	t := new([1<<16 + 1]uint64)
	for i := range t {
		y := uint64(1<<16+i) << 46 // the value in 2.62 fixed point, in [1, 2]
		if i == 1<<16 {
			t[i] = 1 << fracBits
			continue
		}
		var f uint64
		for k := fracBits - 1; k >= 0; k-- {
			hi, lo := bits.Mul64(y, y)
			y = hi<<2 | lo>>62 // y*y in 2.62
			if y >= 1<<63 {
				y >>= 1
				f |= 1 << k
			}
		}
		t[i] = f
	}
	return t
})

// best moves the k best candidates of row to its front, in order, and returns
// them; an insertion pass is cheaper than sorting all n for small k.
func best(row []candidate, k int) []candidate {
	for i := 1; i < len(row); i++ {
		c := row[i]
		if i >= k && byScore(c, row[k-1]) >= 0 {
			continue
		}
		j := min(i, k-1)
		if i >= k {
			row[i] = row[k-1]
		}
		for ; j > 0 && byScore(c, row[j-1]) < 0; j-- {
			row[j] = row[j-1]
		}
		row[j] = c
	}
	return row[:k]
}
