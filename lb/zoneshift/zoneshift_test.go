package zoneshift

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/l4lb/l4lb/pkg/metrics"
)

// A shift is in force until it expires, says so in its gauge and to its
// listeners, can be cancelled, and is handed to a new process unless it
// expired; expiries outside NLB's bounds are refused.
func TestShifts(t *testing.T) {
	m := metrics.New(prometheus.NewRegistry())
	s := New(nil, m, nil)
	t.Cleanup(s.Close)
	// The clock runs a minute behind, less a second: a one-minute shift
	// (the shortest) expires a second from now.
	s.now = func() time.Time { return time.Now().Add(-time.Minute + time.Second) }
	var changes atomic.Int32
	s.OnChange(func() { changes.Add(1) })
	for _, d := range []time.Duration{30 * time.Second, 73 * time.Hour} {
		if _, err := s.Start("a", d); !errors.Is(err, ErrInvalid) {
			t.Fatalf("expires in %v: %v, want refused", d, err)
		}
	}
	sh, err := s.Start("a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := s.Active("a"); !ok || got != sh || testutil.ToFloat64(m.Gauge(metrics.ZonalShiftActive, "a")) != 1 || changes.Load() != 1 {
		t.Fatalf("after the start: %+v %v, gauge %v, %d changes", got, ok, testutil.ToFloat64(m.Gauge(metrics.ZonalShiftActive, "a")), changes.Load())
	}
	saved := s.List()
	deadline := time.Now().Add(5 * time.Second)
	for _, ok := s.Active("a"); ok; _, ok = s.Active("a") {
		if time.Now().After(deadline) {
			t.Fatal("the shift did not expire")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if testutil.ToFloat64(m.Gauge(metrics.ZonalShiftActive, "a")) != 0 || changes.Load() != 2 {
		t.Fatalf("after the expiry: gauge %v, %d changes", testutil.ToFloat64(m.Gauge(metrics.ZonalShiftActive, "a")), changes.Load())
	}
	if err := s.Cancel("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("cancelling an expired shift: %v", err)
	}
	next := New(nil, nil, nil)
	t.Cleanup(next.Close)
	next.Restore(saved)
	if len(next.List()) != 0 {
		t.Fatalf("an expired shift was taken over: %+v", next.List())
	}
	s.now = time.Now
	if _, err := s.Start("b", time.Hour); err != nil {
		t.Fatal(err)
	}
	next.Restore(s.List())
	if _, ok := next.Active("b"); !ok {
		t.Fatal("a shift in force was not taken over")
	}
	if err := next.Cancel("b"); err != nil {
		t.Fatal(err)
	}
	if _, ok := next.Active("b"); ok {
		t.Fatal("a cancelled shift is still in force")
	}
}
