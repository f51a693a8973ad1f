// Package events keeps what happened to a running l4lb, for operators: a
// bounded ring of recent events (a target's state changed, a drain began or
// ended, a group failed open, a reload, an upgrade, a BGP session or route,
// flow-table pressure, a zonal shift), each with its time, kind, object and
// detail, read whole (GET /v1/events?since=) or followed as it grows. The
// log line of the same happening stays; this is the list a console shows.
//
// A nil *Log is valid and keeps nothing, so a component can take one
// optionally.
package events

import (
	"sync"
	"time"
)

// Kinds of events.
const (
	TargetState   = "target_state"    // object group/target; detail: old -> new (reason)
	DrainStart    = "drain_start"     // a deregistration: the target drains
	DrainEnd      = "drain_end"       // its delay is over: the target is gone
	FailOpen      = "fail_open"       // a group's view fails open (too few healthy)
	FailOpenEnd   = "fail_open_end"   // it routes to healthy targets again
	Reload        = "reload"          // detail: success, or refused with the errors
	Upgrade       = "upgrade"         // detail: the new and old PIDs, or why it failed
	BGPSession    = "bgp_session"     // object: the peer; detail: up, or down and its state
	BGPRoute      = "bgp_route"       // object: the prefix; detail: announced, or withdrawn and why
	BFDSession    = "bfd_session"     // object: the peer; detail: up or down
	FlowPressure  = "flow_pressure"   // object: the listener; a full flow table began evicting
	ZonalShift    = "zonal_shift"     // object: the zone; detail: until when
	ZonalShiftEnd = "zonal_shift_end" // object: the zone; detail: expired or cancelled
)

// DefaultEntries is the ring's size when New is given 0.
const DefaultEntries = 1000

// Event is one thing that happened (api.Event on the wire).
type Event struct {
	Seq    uint64
	Time   time.Time
	Kind   string
	Object string
	Detail string
}

// Log is the ring.
type Log struct {
	mu   sync.Mutex
	ring []Event
	next uint64 // the sequence number of the next event
	subs map[chan Event]struct{}
}

// New keeps the last n events (DefaultEntries when n is 0).
func New(n int) *Log {
	if n <= 0 {
		n = DefaultEntries
	}
	return &Log{ring: make([]Event, 0, n), next: 1, subs: map[chan Event]struct{}{}}
}

// Add records an event now, and hands it to every follower (one too slow
// to take it misses it rather than slowing the caller).
func (l *Log) Add(kind, object, detail string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e := Event{Seq: l.next, Time: time.Now().UTC(), Kind: kind, Object: object, Detail: detail}
	l.next++
	if len(l.ring) < cap(l.ring) {
		l.ring = append(l.ring, e)
	} else {
		copy(l.ring, l.ring[1:])
		l.ring[len(l.ring)-1] = e
	}
	for c := range l.subs {
		select {
		case c <- e:
		default:
		}
	}
}

// Restore takes over the events a previous process kept (a binary
// upgrade), numbering on after them; call it before any Add.
func (l *Log) Restore(evs []Event) {
	if l == nil || len(evs) == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	evs = evs[max(0, len(evs)-cap(l.ring)):]
	l.ring = append(l.ring[:0], evs...)
	l.next = evs[len(evs)-1].Seq + 1
}

// Since lists the events after sequence number seq, and, when at is not
// zero, at or after that time, oldest first.
func (l *Log) Since(seq uint64, at time.Time) []Event {
	out := []Event{}
	if l == nil {
		return out
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.ring {
		if e.Seq > seq && (at.IsZero() || !e.Time.Before(at)) {
			out = append(out, e)
		}
	}
	return out
}

// Follow returns the events after seq that the ring holds, and a channel
// of those added from now on, which stop closes.
func (l *Log) Follow(seq uint64, at time.Time) (past []Event, next <-chan Event, stop func()) {
	c := make(chan Event, 256)
	if l == nil {
		close(c)
		return []Event{}, c, func() {}
	}
	l.mu.Lock()
	l.subs[c] = struct{}{}
	l.mu.Unlock()
	past = l.Since(seq, at)
	// An event added between the subscription and Since is in both: the
	// caller skips what it has by Seq.
	var once sync.Once
	return past, c, func() {
		once.Do(func() {
			l.mu.Lock()
			delete(l.subs, c)
			l.mu.Unlock()
			close(c)
		})
	}
}
