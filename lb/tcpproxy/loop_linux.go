package tcpproxy

import (
	"net"
	"net/netip"
	"sync"
)

// loopGuard cuts forwarding loops at run time, whatever the config and the
// API let through (a target at an address the host gained later, a NAT in
// front of a listener): it remembers the local address of every connection
// l4lb makes to a target on this host, and a connection that reaches a
// listener from one of them is l4lb meeting itself. It is refused (reason
// loop), so a looped flow makes one hop, not thousands. Targets elsewhere
// cost nothing here.
type loopGuard struct {
	local func(netip.Addr) bool // this host's addresses
	dials sync.Map              // netip.AddrPort -> struct{}: local ends of connections to local targets
}

// mark remembers c, a connection to target, if target is on this host, and
// returns the key to forget it by (the zero AddrPort if none).
func (g *loopGuard) mark(c *net.TCPConn, target netip.AddrPort) netip.AddrPort {
	if g.local == nil || !g.local(target.Addr()) {
		return netip.AddrPort{}
	}
	key := c.LocalAddr().(*net.TCPAddr).AddrPort()
	key = netip.AddrPortFrom(key.Addr().Unmap(), key.Port())
	g.dials.Store(key, struct{}{})
	return key
}

// forget drops what mark remembered.
func (g *loopGuard) forget(key netip.AddrPort) {
	if key.IsValid() {
		g.dials.Delete(key)
	}
}

// looped reports whether peer, the far end of an accepted connection, is
// one of l4lb's own connections to a target.
func (g *loopGuard) looped(peer netip.AddrPort) bool {
	if g.local == nil || !g.local(peer.Addr()) {
		return false
	}
	_, ok := g.dials.Load(netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()))
	return ok
}
