package tcpproxy

import (
	"errors"
	"net"
	"net/netip"
	"syscall"

	"github.com/l4lb/l4lb/lb/registry"
)

// dialTarget connects to target, from the client's own address when the
// group preserves client IPs. The client's port is tried first; if this host
// already uses it towards anyone, another port of the client's IP is taken
// and the collision counted (port_allocation_errors_total).
func (s *engine) dialTarget(t *registry.Target, client netip.AddrPort, preserve bool) (*net.TCPConn, error) {
	if !preserve {
		// No local address: DialTCP with a zero one would bind(0.0.0.0:0)
		// first, which costs a system call and takes the source port at bind
		// time, unique across all destinations, so the host's port range
		// would cap l4lb's connections to all targets together. Left to
		// connect(2), a port is only unique per target.
		c, err := s.dialer.DialContext(s.cutCtx, "tcp", t.Name)
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	}
	if client.Addr().Is4() != t.Addr.Addr().Is4() {
		return nil, errors.New("cannot preserve an IPv4 client's address towards an IPv6 target, or the reverse")
	}
	c, err := s.tdialer.DialTCP(s.cutCtx, "tcp", client, t.Addr)
	if errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.PortErrors.Inc()
		c, err = s.tdialAny.DialTCP(s.cutCtx, "tcp", netip.AddrPortFrom(client.Addr(), 0), t.Addr)
	}
	return c, err
}
