package maglev

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

func backends(n int) []Backend {
	bs := make([]Backend, n)
	for i := range bs {
		bs[i] = Backend{Name: fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250+1), Weight: 1}
	}
	return bs
}

func mustNew(t *testing.T, bs []Backend) *Table {
	t.Helper()
	tb, err := New(bs, DefaultSize)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// Maglev's balance promise: with equal weights no backend owns more than one
// slot more than any other.
func TestEqualWeightsDifferByAtMostOne(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	sizes := []int{1, 2, 3, 7, 10, 33, 64, 100, 257}
	if testing.Short() {
		sizes = []int{1, 3, 10, 64} // make test runs them all
	}
	for _, n := range sizes {
		bs := backends(n)
		w := 1 + rng.IntN(5) // equal weights other than 1 must behave the same
		for i := range bs {
			bs[i].Weight = w
		}
		c := mustNew(t, bs).Counts()
		lo, hi := c[0], c[0]
		for _, v := range c {
			lo, hi = min(lo, v), max(hi, v)
		}
		if hi-lo > 1 {
			t.Errorf("n=%d weight=%d: slot counts range %d..%d, want a spread of at most 1", n, w, lo, hi)
		}
	}
}

// Maglev's disruption promise: removing one of N backends moves little more than
// the removed backend's own 1/N share of keys.
func TestRemovalMovesFewKeys(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	sizes := []int{2, 3, 5, 10, 20, 50, 99, 100}
	if testing.Short() {
		sizes = []int{2, 5, 20} // make test runs them all
	}
	for _, n := range sizes {
		bs := backends(n)
		before := mustNew(t, bs)
		gone := rng.IntN(n)
		rest := append(append([]Backend(nil), bs[:gone]...), bs[gone+1:]...)
		after := mustNew(t, rest)
		moved := 0
		for s := 0; s < DefaultSize; s++ {
			if bs[before.Lookup(uint64(s))].Name != rest[after.Lookup(uint64(s))].Name {
				moved++
			}
		}
		frac := float64(moved) / DefaultSize
		if limit := 1.5 / float64(n); frac > limit {
			t.Errorf("n=%d: removing one backend moved %.4f of keys, limit %.4f", n, frac, limit)
		}
	}
}

func TestWeightsAreProportional(t *testing.T) {
	bs := backends(4)
	for i := range bs {
		bs[i].Weight = i + 1
	}
	c := mustNew(t, bs).Counts()
	for i, v := range c {
		want := float64(DefaultSize) * float64(i+1) / 10
		if math.Abs(float64(v)-want)/want > 0.01 {
			t.Errorf("weight %d owns %d slots, want %.0f ±1%%", i+1, v, want)
		}
	}
}

// Every process given the same backends, in any order, must build the same
// table, or nodes behind ECMP would disagree on a flow's target.
func TestOrderIndependent(t *testing.T) {
	bs := backends(17)
	ref := mustNew(t, bs)
	rng := rand.New(rand.NewPCG(5, 6))
	rounds := 5
	if testing.Short() {
		rounds = 2
	}
	for range rounds {
		sh := append([]Backend(nil), bs...)
		rng.Shuffle(len(sh), func(i, j int) { sh[i], sh[j] = sh[j], sh[i] })
		tb := mustNew(t, sh)
		for s := uint64(0); s < DefaultSize; s += 7 {
			if bs[ref.Lookup(s)].Name != sh[tb.Lookup(s)].Name {
				t.Fatalf("slot %d differs after shuffling the backends", s)
			}
		}
	}
}

func TestPreference(t *testing.T) {
	bs := backends(5)
	tb := mustNew(t, bs)
	var buf [3]int
	for h := uint64(0); h < 2000; h++ {
		p := tb.Preference(h, buf[:])
		if len(p) != 3 {
			t.Fatalf("hash %d: %d preferences, want 3", h, len(p))
		}
		if p[0] != tb.Lookup(h) {
			t.Fatalf("hash %d: first preference %d is not the owner %d", h, p[0], tb.Lookup(h))
		}
		if p[0] == p[1] || p[1] == p[2] || p[0] == p[2] {
			t.Fatalf("hash %d: preferences %v repeat a backend", h, p)
		}
	}
	one := mustNew(t, backends(1))
	if p := one.Preference(9, buf[:]); len(p) != 1 || p[0] != 0 {
		t.Fatalf("single backend preference = %v", p)
	}
	if allocs := testing.AllocsPerRun(100, func() { tb.Preference(42, buf[:]) }); allocs != 0 {
		t.Errorf("Preference allocates %.0f times, want 0", allocs)
	}
}

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		bs   []Backend
		size int
	}{
		{"empty", nil, DefaultSize},
		{"not prime", backends(2), 65536},
		{"zero weight", []Backend{{Name: "a", Weight: 0}}, DefaultSize},
		{"duplicate", []Backend{{Name: "a", Weight: 1}, {Name: "a", Weight: 1}}, DefaultSize},
		{"too small", backends(5), 3},
	} {
		if _, err := New(tc.bs, tc.size); err == nil {
			t.Errorf("%s: New succeeded, want an error", tc.name)
		}
	}
	var empty *Table
	if empty.Lookup(1) != -1 {
		t.Error("nil table lookup should be -1")
	}
}

func BenchmarkLookup(b *testing.B) {
	tb, _ := New(backends(10), DefaultSize)
	for i := 0; b.Loop(); i++ {
		_ = tb.Lookup(uint64(i) * 0x9e3779b97f4a7c15)
	}
}
