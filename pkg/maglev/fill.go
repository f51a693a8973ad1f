package maglev

import (
	"cmp"
	"math"
	"slices"
)

// topK is how many ranked candidates per slot the fill keeps. A slot whose k
// best backends are all full (a fraction of a percent of slots) falls back to a
// full ranking.
const topK = 8

type candidate struct {
	score float64
	slot  int32
	rank  int32 // position of the backend in name order
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
// (-w/ln u, u a fixed hash of slot and backend name) instead keeps each slot
// with the backend that wants it most, so a removal moves about 1.2/N.
func fill(backends []Backend, order []int, g, size int) []uint32 {
	n := len(order)
	ids := make([]uint64, n)
	weight := make([]float64, n)
	quota := make([]int, n)
	total := 0
	for r, o := range order {
		ids[r] = fnv64(backends[o].Name)
		weight[r] = float64(backends[o].Weight / g)
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
	slices.SortFunc(cands, byScore)

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

// score fills row with every backend's weighted rendezvous score for slot s.
func score(row []candidate, ids []uint64, weight []float64, s int) {
	hs := Mix(uint64(s) ^ 0x9e3779b97f4a7c15)
	for r, id := range ids {
		// u in (0, 1]: 53 bits of a hash of (slot, backend).
		u := float64(Mix(id^hs)>>11+1) / (1 << 53)
		row[r] = candidate{score: -weight[r] / math.Log(u), slot: int32(s), rank: int32(r)}
		if u == 1 {
			row[r].score = math.Inf(1)
		}
	}
}

// byScore orders best first; ties break on slot then name order so the result
// never depends on the sort algorithm.
func byScore(a, b candidate) int {
	if c := cmp.Compare(b.score, a.score); c != 0 {
		return c
	}
	if c := cmp.Compare(a.slot, b.slot); c != 0 {
		return c
	}
	return cmp.Compare(a.rank, b.rank)
}

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
