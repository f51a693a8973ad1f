package listen

import (
	"net/netip"
	"testing"
)

func TestSourceLimitCounts(t *testing.T) {
	s := NewSourceLimit(2)
	a, mapped := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("::ffff:10.0.0.1")
	if !s.Acquire(a) || !s.Acquire(mapped) || s.Acquire(a) {
		t.Fatal("an IPv4 client and its IPv4-mapped form must share one limit of 2")
	}
	s.Release(mapped)
	if s.Open(a) != 1 || !s.Acquire(a) {
		t.Fatal("a released slot was not free")
	}
	s.Release(a)
	s.Release(a)
	if len(s.n) != 0 {
		t.Fatalf("%d addresses left with no connections", len(s.n))
	}
	if NewSourceLimit(0) != nil {
		t.Fatal("0 (unlimited) must cost nothing")
	}
}
