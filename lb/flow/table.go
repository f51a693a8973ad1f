// Package flow is l4lb's bounded flow table: 5-tuple keys to flows, with idle
// expiry driven by an injected clock and a hard size bound.
//
//	t := flow.NewTable[*myFlow](flow.Options{Max: 50000, Idle: 120 * time.Second})
//	f, ok := t.Get(key, now)             // touches the entry
//	f, err := t.Insert(key, newFlow, now) // flow.ErrFull when at the bound
//	for _, gone := range t.Expire(now, nil) { gone.Close() }
package flow

import (
	"errors"
	"hash/maphash"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Key is a flow's 5-tuple.
type Key struct {
	Proto    uint8
	Src, Dst netip.AddrPort
}

// ErrFull is returned by Insert when the table holds Max entries.
var ErrFull = errors.New("flow table full")

// DefaultMax is the table bound when Options.Max is 0: about 64 MiB of flow
// state and one socket per flow, within a raised RLIMIT_NOFILE.
const DefaultMax = 65536

// Options configure a Table. Zero Max means DefaultMax; zero Idle means 120 s
// (NLB's UDP flow timeout).
type Options struct {
	Max  int
	Idle time.Duration
}

const shards = 64

// Table maps keys to values. It is safe for concurrent use; Get is a read
// lock and an atomic store, so the per-packet path does not contend.
type Table[V any] struct {
	max    int64
	idle   int64 // nanoseconds
	n      atomic.Int64
	seed   maphash.Seed
	shards [shards]shard[V]
}

type shard[V any] struct {
	mu sync.RWMutex
	m  map[Key]*entry[V]
}

type entry[V any] struct {
	v    V
	last atomic.Int64 // unix nanoseconds of the last packet
}

// NewTable returns an empty table.
func NewTable[V any](o Options) *Table[V] {
	if o.Max <= 0 {
		o.Max = DefaultMax
	}
	if o.Idle <= 0 {
		o.Idle = 120 * time.Second
	}
	t := &Table[V]{max: int64(o.Max), idle: int64(o.Idle), seed: maphash.MakeSeed()}
	for i := range t.shards {
		t.shards[i].m = map[Key]*entry[V]{}
	}
	return t
}

func (t *Table[V]) shard(k Key) *shard[V] {
	var h maphash.Hash
	h.SetSeed(t.seed)
	b := k.Src.Addr().As16()
	h.Write(b[:])
	p := k.Src.Port()
	h.WriteByte(byte(p))
	h.WriteByte(byte(p >> 8))
	return &t.shards[h.Sum64()%shards]
}

// Get returns the value for k and marks it active at now.
func (t *Table[V]) Get(k Key, now time.Time) (V, bool) {
	s := t.shard(k)
	s.mu.RLock()
	e, ok := s.m[k]
	s.mu.RUnlock()
	if !ok {
		var zero V
		return zero, false
	}
	e.last.Store(now.UnixNano())
	return e.v, true
}

// Insert adds k with value v, unless k is already present (then it returns
// the present value) or the table is full (ErrFull).
func (t *Table[V]) Insert(k Key, v V, now time.Time) (V, bool, error) {
	s := t.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[k]; ok {
		return e.v, false, nil
	}
	if t.n.Add(1) > t.max {
		t.n.Add(-1)
		var zero V
		return zero, false, ErrFull
	}
	e := &entry[V]{v: v}
	e.last.Store(now.UnixNano())
	s.m[k] = e
	return v, true, nil
}

// Delete removes k.
func (t *Table[V]) Delete(k Key) {
	s := t.shard(k)
	s.mu.Lock()
	if _, ok := s.m[k]; ok {
		delete(s.m, k)
		t.n.Add(-1)
	}
	s.mu.Unlock()
}

// Expire removes every entry idle since before now-Idle and appends its value
// to out, which it returns: the caller closes what they hold.
func (t *Table[V]) Expire(now time.Time, out []V) []V {
	cutoff := now.UnixNano() - t.idle
	return t.remove(func(e *entry[V]) bool { return e.last.Load() <= cutoff }, out)
}

// RemoveIf removes every entry whose value matches and appends it to out,
// which it returns: the caller closes what they hold. An entry is handed out
// once, by RemoveIf or by Expire, never by both.
func (t *Table[V]) RemoveIf(match func(V) bool, out []V) []V {
	return t.remove(func(e *entry[V]) bool { return match(e.v) }, out)
}

func (t *Table[V]) remove(match func(*entry[V]) bool, out []V) []V {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for k, e := range s.m {
			if match(e) {
				delete(s.m, k)
				t.n.Add(-1)
				out = append(out, e.v)
			}
		}
		s.mu.Unlock()
	}
	return out
}

// Len is the number of entries.
func (t *Table[V]) Len() int { return int(t.n.Load()) }

// Range calls fn for each entry until it returns false.
func (t *Table[V]) Range(fn func(Key, V) bool) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.RLock()
		for k, e := range s.m {
			if !fn(k, e.v) {
				s.mu.RUnlock()
				return
			}
		}
		s.mu.RUnlock()
	}
}
