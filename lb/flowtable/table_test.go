package flowtable

import (
	"errors"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

func key(i int) Key {
	a := netip.AddrFrom4([4]byte{127, byte(i >> 16), byte(i >> 8), byte(i)})
	return Key{Proto: 17, Src: netip.AddrPortFrom(a, uint16(1024+i%60000)), Dst: netip.MustParseAddrPort("127.0.0.1:53")}
}

func TestInsertGetExpire(t *testing.T) {
	tb := NewTable[int](Options{Max: 10, Idle: time.Minute})
	t0 := time.Unix(1000, 0)
	if _, created, err := tb.Insert(key(1), 1, t0); err != nil || !created {
		t.Fatal(err)
	}
	if v, created, _ := tb.Insert(key(1), 2, t0); v != 1 || created {
		t.Fatalf("second insert = %d, created %v; want the first value", v, created)
	}
	tb.Insert(key(2), 2, t0)
	// key 1 is used again at +50s; key 2 is not.
	if v, ok := tb.Get(key(1), t0.Add(50*time.Second)); !ok || v != 1 {
		t.Fatal("Get")
	}
	gone := tb.Expire(t0.Add(70*time.Second), nil)
	if len(gone) != 1 || gone[0] != 2 || tb.Len() != 1 {
		t.Fatalf("expired %v, len %d; want only the idle flow", gone, tb.Len())
	}
	if gone := tb.Expire(t0.Add(111*time.Second), nil); len(gone) != 1 || tb.Len() != 0 {
		t.Fatalf("second expiry %v", gone)
	}
}

// 200 000 distinct sources into a table bounded at 50 000: the excess is
// refused, and memory stays that of 50 000 entries.
func TestBoundHolds(t *testing.T) {
	const max, sources = 50000, 200000
	tb := NewTable[*[64]byte](Options{Max: max, Idle: time.Minute})
	now := time.Unix(1000, 0)
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	refused := 0
	for i := range sources {
		if _, _, err := tb.Insert(key(i), new([64]byte), now); errors.Is(err, ErrFull) {
			refused++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if tb.Len() != max || refused != sources-max {
		t.Fatalf("len %d, refused %d; want %d and %d", tb.Len(), refused, max, sources-max)
	}
	perEntry := float64(after.HeapAlloc-before.HeapAlloc) / max
	if perEntry > 512 {
		t.Fatalf("%.0f bytes per entry: the refused flows were kept", perEntry)
	}
	// Expiry frees room for new flows.
	tb.Expire(now.Add(2*time.Minute), nil)
	if _, _, err := tb.Insert(key(sources+1), new([64]byte), now); err != nil {
		t.Fatalf("insert after expiry: %v", err)
	}
}

func TestGetDoesNotAllocate(t *testing.T) {
	tb := NewTable[int](Options{})
	now := time.Now()
	tb.Insert(key(7), 7, now)
	if a := testing.AllocsPerRun(1000, func() { tb.Get(key(7), now) }); a != 0 {
		t.Fatalf("Get allocates %.0f times", a)
	}
}

// EvictIdle takes the place of an entry idle for EvictAfter, the least
// recently active of its sample, and never one that moved more recently.
func TestEvictIdle(t *testing.T) {
	tb := NewTable[int](Options{Max: 100, Idle: time.Minute, EvictAfter: time.Second})
	t0 := time.Unix(1000, 0)
	for i := range 100 {
		tb.Insert(key(i), i, t0)
	}
	if _, _, err := tb.Insert(key(100), 100, t0); !errors.Is(err, ErrFull) {
		t.Fatalf("insert into a full table: %v", err)
	}
	if _, ok := tb.EvictIdle(t0.Add(500 * time.Millisecond)); ok {
		t.Fatal("evicted a flow idle for less than EvictAfter")
	}
	// All but key 7 move again; key 7 is the only one idle long enough.
	t1 := t0.Add(2 * time.Second)
	for i := range 100 {
		if i != 7 {
			tb.Get(key(i), t1)
		}
	}
	evicted := false
	for range 200 { // sampling finds it within a few rounds
		if v, ok := tb.EvictIdle(t1.Add(100 * time.Millisecond)); ok {
			if v != 7 {
				t.Fatalf("evicted %d, which moved 100 ms ago", v)
			}
			evicted = true
			break
		}
	}
	if !evicted || tb.Len() != 99 || tb.Full() {
		t.Fatalf("evicted %v, len %d", evicted, tb.Len())
	}
	if _, created, err := tb.Insert(key(100), 100, t1); err != nil || !created {
		t.Fatalf("insert after eviction: %v", err)
	}
}
