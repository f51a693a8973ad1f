package lb

import (
	"sync"
	"time"

	"github.com/l4lb/l4lb/lb/events"
	"github.com/l4lb/l4lb/pkg/api"
)

// EventFeed is an event ring on the wire (admin.Events).
type EventFeed struct{ log *events.Log }

// Feed is the server's events, as the admin API serves them.
func (s *Server) Feed() EventFeed { return EventFeed{s.Events} }

// EventsSince lists the events after seq (and at or after at, if set).
func (f EventFeed) EventsSince(seq uint64, at time.Time) []api.Event {
	evs := f.log.Since(seq, at)
	out := make([]api.Event, len(evs))
	for i, e := range evs {
		out[i] = wireEvent(e)
	}
	return out
}

// FollowEvents gives the events after seq and those that come next, until
// stop.
func (f EventFeed) FollowEvents(seq uint64, at time.Time) ([]api.Event, <-chan api.Event, func()) {
	past, next, stop := f.log.Follow(seq, at)
	out := make([]api.Event, len(past))
	for i, e := range past {
		out[i] = wireEvent(e)
	}
	wire, done := make(chan api.Event, 16), make(chan struct{})
	go func() {
		defer close(wire)
		for e := range next {
			select {
			case wire <- wireEvent(e):
			case <-done: // the follower went: it reads no more
				return
			}
		}
	}()
	var once sync.Once
	return out, wire, func() { once.Do(func() { close(done); stop() }) }
}

func wireEvent(e events.Event) api.Event {
	return api.Event{Seq: e.Seq, Time: e.Time, Kind: e.Kind, Object: e.Object, Detail: e.Detail}
}
