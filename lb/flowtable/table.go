// Package flowtable is l4lb's bounded UDP flow table: 5-tuple keys to flows,
// with idle expiry driven by the caller's clock, a hard size bound, and
// eviction of idle flows when the bound is reached.
//
//	t := flowtable.NewTable[*myFlow](flowtable.Options{Max: 50000, Idle: 120 * time.Second})
//	f, ok := t.Get(key, now)                        // touches the entry
//	if old, ok := t.EvictIdle(now); ok { old.Close() } // when full
//	f, created, err := t.Insert(key, newFlow, now)  // ErrFull when at the bound
//	for _, gone := range t.Expire(now, nil) { gone.Close() }
package flowtable

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
// (NLB's UDP flow timeout); zero EvictAfter means min(Idle/4, 500 ms).
type Options struct {
	Max  int
	Idle time.Duration
	// EvictAfter is how long a flow must have been idle before EvictIdle
	// may take its place: flows that moved a datagram more recently than
	// that are never evicted.
	EvictAfter time.Duration
}

const shards = 64

// Table maps keys to values. It is safe for concurrent use; Get is a read
// lock and an atomic store, so the per-packet path does not contend.
type Table[V any] struct {
	max    int64
	idle   atomic.Int64  // nanoseconds
	evict  int64         // nanoseconds: EvictAfter
	probe  atomic.Uint64 // rotates the shards EvictIdle samples
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
	if o.EvictAfter <= 0 {
		o.EvictAfter = min(o.Idle/4, 500*time.Millisecond)
	}
	t := &Table[V]{max: int64(o.Max), evict: int64(o.EvictAfter), seed: maphash.MakeSeed()}
	t.idle.Store(int64(o.Idle))
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

// Full reports whether the table holds Max entries.
func (t *Table[V]) Full() bool { return t.n.Load() >= t.max }

// Evict sampling: a few shards, a few entries each (Go's map iteration
// starts at a random place), as Redis samples for its LRU.
const (
	evictShards  = 4
	evictPerShrd = 8
)

// EvictIdle makes room in a full table: it removes the least recently active
// of a sample of entries, if that one has been idle for EvictAfter, and
// returns its value for the caller to close. Spoofed sources that each send
// a datagram and fall silent are evicted this way, so they cannot lock real
// clients out until their idle timeout; flows that are moving keep their
// place, and a table full of them refuses new flows instead.
func (t *Table[V]) EvictIdle(now time.Time) (V, bool) {
	var zero V
	cutoff := now.UnixNano() - t.evict
	var (
		victim *entry[V]
		vkey   Key
		vshard *shard[V]
	)
	start := t.probe.Add(evictShards)
	for i := range uint64(evictShards) {
		s := &t.shards[(start+i*(shards/evictShards+1))%shards]
		s.mu.RLock()
		n := 0
		for k, e := range s.m {
			if last := e.last.Load(); last <= cutoff && (victim == nil || last < victim.last.Load()) {
				victim, vkey, vshard = e, k, s
			}
			if n++; n == evictPerShrd {
				break
			}
		}
		s.mu.RUnlock()
	}
	if victim == nil {
		return zero, false
	}
	vshard.mu.Lock()
	defer vshard.mu.Unlock()
	if e, ok := vshard.m[vkey]; !ok || e != victim || e.last.Load() > cutoff {
		return zero, false // taken, or active again, meanwhile
	}
	delete(vshard.m, vkey)
	t.n.Add(-1)
	return victim.v, true
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

// SetIdle changes the idle timeout for the next Expire (a reload changed
// the listener's udp_idle_timeout).
func (t *Table[V]) SetIdle(d time.Duration) { t.idle.Store(int64(d)) }

// Expire removes every entry idle since before now-Idle and appends its value
// to out, which it returns: the caller closes what they hold.
func (t *Table[V]) Expire(now time.Time, out []V) []V {
	cutoff := now.UnixNano() - t.idle.Load()
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
