package maglev

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// goldenTable is the SHA-256 of the table that goldenBackends fill. Every
// l4lb node, of any version and architecture, must build this same table, or
// nodes behind one ECMP group send a flow to different targets (GOARCH=386
// go test, on an amd64 machine, checks a second architecture). A change to
// the fill that moves this value is a deliberate, release-noted decision.
const goldenTable = "9ec0f8a698621a32952b68d260ceeec821b6c12e6d88ebb91d49620366173996"

// goldenBackends is 50 targets over four subnets with weights 1 to 7.
func goldenBackends() []Backend {
	bs := make([]Backend, 50)
	for i := range bs {
		bs[i] = Backend{Name: fmt.Sprintf("10.%d.%d.%d:%d", i%4, i/4, 10+i, 8000+i%3), Weight: 1 + (i*5)%7}
	}
	return bs
}

func TestGoldenTable(t *testing.T) {
	tab, err := New(goldenBackends(), DefaultSize)
	if err != nil {
		t.Fatal(err)
	}
	if got := tableHash(tab); got != goldenTable {
		t.Fatalf("the table of the golden backends changed: sha256 %s, want %s", got, goldenTable)
	}
}

// tableHash is the SHA-256 of a table's slots, little-endian.
func tableHash(tab *Table) string {
	h := sha256.New()
	var b [4]byte
	for _, s := range tab.slots {
		binary.LittleEndian.PutUint32(b[:], s)
		h.Write(b[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Tables of equal weights take the fill's faster sort (sortByL): they must
// be the tables the general sort gave, which these hashes are (taken before
// the faster sort existed).
func TestGoldenEqualWeights(t *testing.T) {
	want := map[int]string{
		1:  "ccdfec163ea23ff794acfd1706b5abaf44298ff47b09721489ba6392c40e16ed",
		3:  "d7a6bc977e4abb64d4f488e51a2a99497284fd656110ff2bbd2ef0ba0d19918e",
		20: "e9f571941f0baa2fd0e45972997a2110dabc008fe4ee3042d2e1dc79b1402aa0",
		50: "faaab534ddf45c99de0d0e90ac19e38c4b094ffcc350e38d868a8dc201e72d3d",
	}
	for n, hash := range want {
		bs := make([]Backend, n)
		for i := range bs {
			bs[i] = Backend{Name: fmt.Sprintf("10.%d.%d.%d:%d", i%4, i/4, 10+i, 8000+i%3), Weight: 3}
		}
		tab, err := New(bs, DefaultSize)
		if err != nil {
			t.Fatal(err)
		}
		if got := tableHash(tab); got != hash {
			t.Errorf("%d backends of equal weight: table sha256 %s, want %s", n, got, hash)
		}
	}
}

// The fast sort of equal-weight candidates gives byScore's order exactly,
// ties of l included, for random candidates in the order fill makes them.
func TestSortByLIsByScore(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	for round := range 200 {
		n := 1 + r.IntN(30)
		k := min(topK, n)
		var cands []candidate
		row := make([]candidate, n)
		for s := range 200 + r.IntN(300) {
			for i := range row {
				l := r.Uint64N(1 << 38)
				if r.IntN(4) == 0 {
					l = r.Uint64N(8) // ties, and l = 0 (an infinite score)
				}
				row[i] = candidate{w: 5, l: l, slot: int32(s), rank: int32(i)}
			}
			cands = append(cands, best(row, k)...)
		}
		want := slices.Clone(cands)
		slices.SortFunc(want, byScore)
		sortByL(cands)
		if !slices.Equal(cands, want) {
			t.Fatalf("round %d (%d backends): the radix order differs from byScore's", round, n)
		}
	}
}

// The integer logarithm agrees with the floating-point one to within a few
// parts in 2^32 of a bit, over the whole input range (math is used here only
// to check, never to fill).
func TestNegLog2(t *testing.T) {
	if got := negLog2(1 << 53); got != 0 {
		t.Fatalf("negLog2(2^53) = %d, want 0", got)
	}
	prev := negLog2(1)
	if want := uint64(53) << fracBits; prev != want {
		t.Fatalf("negLog2(1) = %d, want %d", prev, want)
	}
	var worst float64
	for i := uint64(1); i < 2_000_000; i++ {
		x := i * 4503599627 % (1 << 53)
		if x == 0 {
			continue
		}
		got := float64(negLog2(x)) / (1 << fracBits)
		want := 53 - math.Log2(float64(x))
		worst = max(worst, math.Abs(got-want))
	}
	if worst > 1e-8 {
		t.Fatalf("negLog2 is off by up to %g bits", worst)
	}
	for x := uint64(2); x < 1<<20; x++ { // never increases as x grows
		v := negLog2(x)
		if v > prev {
			t.Fatalf("negLog2(%d) = %d > negLog2(%d) = %d", x, v, x-1, prev)
		}
		prev = v
	}
}
