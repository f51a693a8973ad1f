package listen

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// LoopGuard cuts forwarding loops at run time, whatever the config and the
// API let through (a target at an address the host gained later): it
// remembers both ends of every connection l4lb makes to a target on this
// host, and a connection that reaches a listener with those same ends is
// l4lb meeting itself. It is refused (reason loop), so a looped flow makes
// one hop, not thousands: a connect to a local target under way is waited
// for (see Dialing). A loop through a NAT that rewrites the
// destination is not seen here. Targets elsewhere cost nothing here. The
// TCP and UDP paths share one, so a loop across them is seen too.
type LoopGuard struct {
	Local func(netip.Addr) bool // this host's addresses; nil: loopback ones
	dials sync.Map              // ConnEnds -> struct{}: connections to local targets
	// connecting counts the connects under way to each local target
	// (netip.AddrPort -> *atomic.Int32).
	connecting sync.Map
}

// loopWait bounds how long Looped waits for a connect under way to the
// same address to be remembered: a connect on this host completes in
// microseconds, and the wait only happens when l4lb is connecting to the
// very address a local peer reached (never in a sane configuration), so
// the bound is generous: a goroutine held off the CPU on a loaded host
// is still waited for.
const loopWait = 250 * time.Millisecond

// connEnds is a TCP connection's two ends, as its dialler sees them. Both
// are needed: Linux gives one local port to connections to different
// destinations, so a client's port may equal one of l4lb's own.
type ConnEnds struct{ local, remote netip.AddrPort }

func unmapped(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

func (g *LoopGuard) local(a netip.Addr) bool {
	a = a.Unmap()
	if g.Local == nil {
		return a.IsLoopback()
	}
	return g.Local(a)
}

// Mark remembers a connection from local to target, if target is on this
// host, and returns the key to forget it by (the zero key if none). A
// connection is marked before its first byte can reach a listener: for
// TCP, as soon as the connect returns (the accept may see it first: see
// Looped), for UDP before its first datagram is sent.
func (g *LoopGuard) Mark(local, target netip.AddrPort) ConnEnds {
	if !g.local(target.Addr()) {
		return ConnEnds{}
	}
	key := ConnEnds{unmapped(local), unmapped(target)}
	g.dials.Store(key, struct{}{})
	return key
}

// Dialing says a TCP connect to target begins; Dialed says it ended.
// Between the two, Looped waits for it, so that an accept that wins the
// race with the connect's return is still seen as the loop it is.
func (g *LoopGuard) Dialing(target netip.AddrPort) {
	if g.local(target.Addr()) {
		n, _ := g.connecting.LoadOrStore(unmapped(target), new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
	}
}

// Dialed ends what Dialing began: it remembers the connection from local
// to target if the connect succeeded (an invalid local says it did not),
// and returns Mark's key.
func (g *LoopGuard) Dialed(local, target netip.AddrPort) ConnEnds {
	if !g.local(target.Addr()) {
		return ConnEnds{}
	}
	var key ConnEnds
	if local.IsValid() {
		key = g.Mark(local, target)
	}
	if n, ok := g.connecting.Load(unmapped(target)); ok {
		n.(*atomic.Int32).Add(-1)
	}
	return key
}

// Watches reports whether connections to target are remembered (the
// target is on this host): only those need their local address.
func (g *LoopGuard) Watches(target netip.AddrPort) bool { return g.local(target.Addr()) }

// Forget drops what Mark remembered.
func (g *LoopGuard) Forget(key ConnEnds) {
	if key.local.IsValid() {
		g.dials.Delete(key)
	}
}

// Looped reports whether a connection or flow from peer to the listener
// address dst is one of l4lb's own to a target. While a connect to dst is
// under way (Dialing), it waits for that connect to be remembered, for
// loopWait at most.
func (g *LoopGuard) Looped(peer, dst netip.AddrPort) bool {
	if !g.local(peer.Addr()) {
		return false
	}
	key := ConnEnds{unmapped(peer), unmapped(dst)}
	deadline := time.Now().Add(loopWait)
	for {
		if _, ok := g.dials.Load(key); ok {
			return true
		}
		n, ok := g.connecting.Load(key.remote)
		if !ok || n.(*atomic.Int32).Load() == 0 || time.Now().After(deadline) {
			_, ok := g.dials.Load(key) // the connect may have ended just now
			return ok
		}
		time.Sleep(50 * time.Microsecond)
	}
}
