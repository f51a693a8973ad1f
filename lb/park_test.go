package lb

import (
	"testing"
	"time"
)

// Memory goes back to the OS once a burst of parks is over (a scan with no
// new ones), at most every gcEvery, and during a stream of parks that never
// pauses only after gcAfterParks of them.
func TestParkerReclaim(t *testing.T) {
	p := &parker{}
	now := time.Now()
	step := func(parks int64, d time.Duration) bool {
		p.parks.Add(parks)
		now = now.Add(d)
		before := p.lastGC
		p.reclaim(now)
		return p.lastGC != before
	}
	if step(2000, time.Second) {
		t.Fatal("reclaimed while parks were still coming")
	}
	if !step(0, time.Second) {
		t.Fatal("no reclaim once the burst was over")
	}
	if p.parks.Load() != 0 {
		t.Fatalf("%d parks left after a reclaim", p.parks.Load())
	}
	if step(2000, time.Second) || step(0, time.Second) {
		t.Fatal("reclaimed again within gcEvery")
	}
	if !step(0, gcEvery) {
		t.Fatal("no reclaim after gcEvery")
	}
	if step(100, time.Second) || step(0, time.Second) {
		t.Fatal("reclaimed after a burst smaller than gcAfterBurst")
	}
	for i := 0; ; i++ {
		if step(gcAfterParks/8, gcEvery) {
			if i < 7 {
				t.Fatalf("a steady stream reclaimed after %d parks", (i+1)*gcAfterParks/8)
			}
			break
		}
		if i > 8 {
			t.Fatal("a steady stream of parks never reclaimed")
		}
	}
}
