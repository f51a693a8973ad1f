package events

import (
	"fmt"
	"testing"
	"time"
)

// The ring keeps the last n events in order, numbered from 1; Since filters
// by number and time; a follower gets what comes after, and a nil Log
// keeps nothing.
func TestLog(t *testing.T) {
	l := New(3)
	for i := range 5 {
		l.Add(TargetState, fmt.Sprintf("web/10.0.0.%d:80", i), "initial -> healthy")
	}
	got := l.Since(0, time.Time{})
	if len(got) != 3 || got[0].Seq != 3 || got[2].Seq != 5 || got[2].Object != "web/10.0.0.4:80" {
		t.Fatalf("the ring: %+v", got)
	}
	if got := l.Since(4, time.Time{}); len(got) != 1 || got[0].Seq != 5 {
		t.Fatalf("since 4: %+v", got)
	}
	if got := l.Since(0, time.Now().Add(time.Hour)); len(got) != 0 {
		t.Fatalf("since an hour from now: %+v", got)
	}
	past, next, stop := l.Follow(4, time.Time{})
	if len(past) != 1 {
		t.Fatalf("follow from 4: past %+v", past)
	}
	l.Add(Reload, "config", "success")
	if e := <-next; e.Seq != 6 || e.Kind != Reload {
		t.Fatalf("followed: %+v", e)
	}
	stop()
	stop()
	l.Add(Reload, "config", "success") // no follower: nothing blocks
	if _, ok := <-next; ok {
		t.Fatal("the channel is open after stop")
	}
	var none *Log
	none.Add(Reload, "config", "success")
	if got := none.Since(0, time.Time{}); len(got) != 0 {
		t.Fatal("a nil log kept an event")
	}
}
