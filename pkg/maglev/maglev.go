// Package maglev builds Maglev-style consistent-hashing lookup tables (Eisenbud et al.,
// "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI 2016, §3.4):
// a fixed, prime-sized table of slots, each owned by one backend, with weights,
// an even spread and little disruption when a backend comes or goes. The slots
// are filled by weighted rendezvous ranking under exact quotas (see fill.go),
// which moves fewer keys on a removal than the paper's round-robin fill.
//
// A table is built once, off the data path, from a list of backends and then only
// read:
//
//	t, err := maglev.New([]maglev.Backend{{Name: "10.0.1.10:80", Weight: 1}, {Name: "10.0.1.11:80", Weight: 2}}, maglev.DefaultSize)
//	i := t.Lookup(flowHash) // index into the backend slice given to New
//
// Backends are sorted by name before the table is filled, so every process that
// is given the same set of backends, in any order, builds the same table and maps
// the same key to the same backend.
package maglev

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// DefaultSize is the table size used by l4lb: a prime well above 100 × the
// largest target group, as the paper recommends for near-even spread.
const DefaultSize = 65537

// MaxBackends bounds the number of backends in one table.
const MaxBackends = 1 << 16

// Backend is one entry of the table. Name identifies it (l4lb uses the target's
// address) and seeds its permutation; Weight is its relative share, at least 1.
type Backend struct {
	Name   string
	Weight int
}

// Table is an immutable Maglev lookup table. The zero value is an empty table
// whose Lookup returns -1.
type Table struct {
	slots []uint32 // slot -> index into the caller's backend slice
	n     int      // number of backends
}

// ErrNoBackends is returned by New when given an empty backend list.
var ErrNoBackends = errors.New("maglev: no backends")

// New fills a table of the given size, which must be prime, from backends.
// Indices returned by Lookup refer to the backends slice as passed in, whatever
// its order; names must be unique and weights at least 1.
func New(backends []Backend, size int) (*Table, error) {
	if len(backends) == 0 {
		return nil, ErrNoBackends
	}
	if len(backends) > MaxBackends {
		return nil, fmt.Errorf("maglev: %d backends, at most %d", len(backends), MaxBackends)
	}
	if !isPrime(size) {
		return nil, fmt.Errorf("maglev: table size %d is not prime", size)
	}
	if size < len(backends) {
		return nil, fmt.Errorf("maglev: table size %d is smaller than %d backends", size, len(backends))
	}
	// Sort by name so the table does not depend on the order of registration.
	order := make([]int, len(backends))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(backends[a].Name, backends[b].Name) })
	g := 0
	for i, o := range order {
		b := backends[o]
		if b.Weight < 1 {
			return nil, fmt.Errorf("maglev: backend %q has weight %d, want at least 1", b.Name, b.Weight)
		}
		if i > 0 && backends[order[i-1]].Name == b.Name {
			return nil, fmt.Errorf("maglev: duplicate backend %q", b.Name)
		}
		g = gcd(g, b.Weight)
	}

	slots := fill(backends, order, g, size)
	return &Table{slots: slots, n: len(backends)}, nil
}

// Size is the number of slots.
func (t *Table) Size() int { return len(t.slots) }

// Lookup returns the index of the backend that owns hash, or -1 for an empty table.
func (t *Table) Lookup(hash uint64) int {
	if t == nil || len(t.slots) == 0 {
		return -1
	}
	return int(t.slots[hash%uint64(len(t.slots))])
}

// Preference fills dst with up to len(dst) distinct backends for hash: the owner
// first, then the owners of the following slots in table order. It is the retry
// order for a flow whose first choice refuses it; every node computes the same
// order. It returns the filled prefix of dst.
func (t *Table) Preference(hash uint64, dst []int) []int {
	if t == nil || len(t.slots) == 0 || len(dst) == 0 {
		return dst[:0]
	}
	want := min(len(dst), t.n)
	out := dst[:0]
	m := uint64(len(t.slots))
	start := hash % m
	for step := uint64(0); step < m && len(out) < want; step++ {
		b := int(t.slots[(start+step)%m])
		if !slices.Contains(out, b) {
			out = append(out, b)
		}
	}
	return out
}

// Counts returns how many slots each backend owns, by backend index.
func (t *Table) Counts() []int {
	c := make([]int, t.n)
	for _, s := range t.slots {
		c[s]++
	}
	return c
}

func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
