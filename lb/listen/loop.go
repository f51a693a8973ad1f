package listen

import (
	"net/netip"
	"sync"
)

// LoopGuard cuts forwarding loops at run time, whatever the config and the
// API let through (a target at an address the host gained later): it
// remembers both ends of every connection l4lb makes to a target on this
// host, and a connection that reaches a listener with those same ends is
// l4lb meeting itself. It is refused (reason loop), so a looped flow makes
// one hop, not thousands. A loop through a NAT that rewrites the
// destination is not seen here. Targets elsewhere cost nothing here. The
// TCP and UDP paths share one, so a loop across them is seen too.
type LoopGuard struct {
	Local func(netip.Addr) bool // this host's addresses; nil: loopback ones
	dials sync.Map              // ConnEnds -> struct{}: connections to local targets
}

// connEnds is a TCP connection's two ends, as its dialler sees them. Both
// are needed: Linux gives one local port to connections to different
// destinations, so a client's port may equal one of l4lb's own.
type ConnEnds struct{ local, remote netip.AddrPort }

func unmapped(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

func (g *LoopGuard) local(a netip.Addr) bool {
	if g.Local == nil {
		return a.Unmap().IsLoopback()
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

// Forget drops what Mark remembered.
func (g *LoopGuard) Forget(key ConnEnds) {
	if key.local.IsValid() {
		g.dials.Delete(key)
	}
}

// Looped reports whether a connection or flow from peer to the listener
// address dst is one of l4lb's own to a target. A TCP connection's
// connect can return after the accept at the other end, so the TCP path
// asks again before it connects onwards.
func (g *LoopGuard) Looped(peer, dst netip.AddrPort) bool {
	if !g.local(peer.Addr()) {
		return false
	}
	_, ok := g.dials.Load(ConnEnds{unmapped(peer), unmapped(dst)})
	return ok
}
