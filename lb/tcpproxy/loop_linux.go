package tcpproxy

import (
	"net"
	"net/netip"
	"sync"
)

// loopGuard cuts forwarding loops at run time, whatever the config and the
// API let through (a target at an address the host gained later): it
// remembers both ends of every connection l4lb makes to a target on this
// host, and a connection that reaches a listener with those same ends is
// l4lb meeting itself. It is refused (reason loop), so a looped flow makes
// one hop, not thousands. A loop through a NAT that rewrites the
// destination is not seen here. Targets elsewhere cost nothing here.
type loopGuard struct {
	local func(netip.Addr) bool // this host's addresses
	dials sync.Map              // connEnds -> struct{}: connections to local targets
}

// connEnds is a TCP connection's two ends, as its dialler sees them. Both
// are needed: Linux gives one local port to connections to different
// destinations, so a client's port may equal one of l4lb's own.
type connEnds struct{ local, remote netip.AddrPort }

func unmapped(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

// mark remembers c, a connection to target, if target is on this host, and
// returns the key to forget it by (the zero key if none).
func (g *loopGuard) mark(c *net.TCPConn, target netip.AddrPort) connEnds {
	if g.local == nil || !g.local(target.Addr()) {
		return connEnds{}
	}
	key := connEnds{unmapped(c.LocalAddr().(*net.TCPAddr).AddrPort()), unmapped(target)}
	g.dials.Store(key, struct{}{})
	return key
}

// forget drops what mark remembered.
func (g *loopGuard) forget(key connEnds) {
	if key.local.IsValid() {
		g.dials.Delete(key)
	}
}

// looped reports whether an accepted connection, from peer to the listener
// address dst, is one of l4lb's own connections to a target.
func (g *loopGuard) looped(peer, dst netip.AddrPort) bool {
	if g.local == nil || !g.local(peer.Addr()) {
		return false
	}
	_, ok := g.dials.Load(connEnds{unmapped(peer), unmapped(dst)})
	return ok
}
