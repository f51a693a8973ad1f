package registry

import (
	"sync"
	"time"
)

// Clock runs the registry's timers (deregistration delays, unhealthy
// draining intervals). RealClock is the default; tests inject a ManualClock
// and move time themselves instead of sleeping.
type Clock interface {
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending call that Stop cancels.
type Timer interface {
	Stop() bool
}

// RealClock runs timers on the system clock.
type RealClock struct{}

func (RealClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// ManualClock fires timers only when Advance moves its time past them.
type ManualClock struct {
	mu     sync.Mutex
	now    time.Duration
	timers []*manualTimer
}

type manualTimer struct {
	c    *ManualClock
	at   time.Duration
	f    func()
	done bool
}

func (c *ManualClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &manualTimer{c: c, at: c.now + d, f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *manualTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.done
	t.done = true
	return was
}

// Advance moves time on by d and runs, in time order on the caller's
// goroutine, every timer that comes due.
func (c *ManualClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now += d
	now := c.now
	c.mu.Unlock()
	for {
		c.mu.Lock()
		var next *manualTimer
		for _, t := range c.timers {
			if !t.done && t.at <= now && (next == nil || t.at < next.at) {
				next = t
			}
		}
		if next == nil {
			c.mu.Unlock()
			return
		}
		next.done = true
		c.mu.Unlock()
		next.f()
	}
}
