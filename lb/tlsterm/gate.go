package tlsterm

import (
	"net/netip"
	"sync"
	"time"
)

// gate hands out a listener's handshake slots: at most max at once, and at
// most share to one source network (a /24 or a /64), so that one network's
// handshakes cannot take every slot. A hello that finds no slot queues,
// first come first served, until one is freed or its wait ends. A freed
// slot goes straight to the first waiter whose network is under its share,
// so no waiter is woken for nothing.
type gate struct {
	mu      sync.Mutex
	max     int
	share   int
	total   int
	bySrc   map[netip.Prefix]int
	waiters []*waiter
}

type waiter struct {
	src     netip.Prefix
	granted chan struct{} // gets a value when a slot is handed over
}

func newGate(max, share int) *gate {
	return &gate{max: max, share: share, bySrc: map[netip.Prefix]int{}}
}

// resize sets new bounds (a reload); slots held above them are kept until
// released.
func (g *gate) resize(max, share int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.max, g.share = max, share
	g.handOver()
}

// sourceNet is the network whose share an address counts against: its /24,
// or its /64 for IPv6 (where one host holds a whole /64).
func sourceNet(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := 64
	if a.Is4() {
		bits = 24
	}
	p, _ := a.Prefix(bits)
	return p
}

// free reports whether src may take a slot now. g.mu is held.
func (g *gate) free(src netip.Prefix) bool {
	return g.total < g.max && g.bySrc[src] < g.share
}

// acquire takes a slot for src, waiting up to wait for one. It returns
// ok, or the reason there was none: the listener's slots were all taken
// (errBusy) or src's share was (errSourceBusy).
func (g *gate) acquire(src netip.Prefix, wait time.Duration) error {
	g.mu.Lock()
	if g.free(src) && len(g.waiters) == 0 {
		g.take(src)
		g.mu.Unlock()
		return nil
	}
	w := &waiter{src: src, granted: make(chan struct{}, 1)}
	g.waiters = append(g.waiters, w)
	g.handOver() // the slot may be free, with waiters of a full network ahead
	g.mu.Unlock()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-w.granted:
		return nil
	case <-t.C:
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, o := range g.waiters {
		if o == w {
			g.waiters = append(g.waiters[:i], g.waiters[i+1:]...)
			if g.total >= g.max {
				return ErrBusy
			}
			return ErrSourceBusy
		}
	}
	return nil // handed a slot just as the wait ended
}

// release gives back src's slot, to the first waiter that may take it.
func (g *gate) release(src netip.Prefix) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.total--
	if n := g.bySrc[src] - 1; n > 0 {
		g.bySrc[src] = n
	} else {
		delete(g.bySrc, src)
	}
	g.handOver()
}

// handOver gives free slots to waiters, in arrival order, skipping those
// whose network is at its share. g.mu is held.
func (g *gate) handOver() {
	for i := 0; i < len(g.waiters) && g.total < g.max; {
		w := g.waiters[i]
		if !g.free(w.src) {
			i++
			continue
		}
		g.take(w.src)
		g.waiters = append(g.waiters[:i], g.waiters[i+1:]...)
		w.granted <- struct{}{}
	}
}

func (g *gate) take(src netip.Prefix) {
	g.total++
	g.bySrc[src]++
}
