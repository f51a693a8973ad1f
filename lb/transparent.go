package lb

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/lb/registry"
)

// transparentControl sets IP_TRANSPARENT (IPV6_TRANSPARENT), which lets a
// socket bind the client's address although it is not local: targets then
// see the client's own IP (preserve_client_ip.enabled). It needs
// CAP_NET_ADMIN and policy routing that delivers the targets' replies to this
// host (deploy/transparent.sh).
func transparentControl(network, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) { serr = setTransparent(int(fd), network == "tcp6" || network == "udp6") })
	if err != nil {
		return err
	}
	return serr
}

// transparentAnyPortControl is transparentControl for a bind to the client's
// IP with port 0. IP_BIND_ADDRESS_NO_PORT defers the port to connect(2),
// where it only has to be unique towards this target, not towards everyone.
func transparentAnyPortControl(network, addr string, c syscall.RawConn) error {
	if err := transparentControl(network, addr, c); err != nil {
		return err
	}
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	}); err != nil {
		return err
	}
	return serr
}

func setTransparent(fd int, v6 bool) error {
	if v6 {
		return unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
	}
	return unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1)
}

// dialTarget connects to target, from the client's own address when the
// group preserves client IPs. The client's port is tried first; if this host
// already uses it towards anyone, another port of the client's IP is taken
// and the collision counted (port_allocation_errors_total).
func (s *Server) dialTarget(t *registry.Target, client netip.AddrPort, preserve bool) (*net.TCPConn, error) {
	if !preserve {
		// No local address: DialTCP with a zero one would bind(0.0.0.0:0)
		// first, which costs a system call and takes the source port at bind
		// time, unique across all destinations, so the host's port range
		// would cap l4lb's connections to all targets together. Left to
		// connect(2), a port is only unique per target.
		c, err := s.dialer.DialContext(context.Background(), "tcp", t.Name)
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	}
	if client.Addr().Is4() != t.Addr.Addr().Is4() {
		return nil, errors.New("cannot preserve an IPv4 client's address towards an IPv6 target, or the reverse")
	}
	c, err := s.tdialer.DialTCP(context.Background(), "tcp", client, t.Addr)
	if errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.PortErrors.Inc()
		c, err = s.tdialAny.DialTCP(context.Background(), "tcp", netip.AddrPortFrom(client.Addr(), 0), t.Addr)
	}
	return c, err
}

// bindTransparent binds a UDP socket to the client's address (its port, or
// another if taken) for preserve_client_ip.
func bindTransparent(fd int, client netip.AddrPort, t *registry.Target) error {
	v6 := client.Addr().Is6()
	if err := setTransparent(fd, v6); err != nil {
		return err
	}
	bind := func(port uint16) error {
		if v6 {
			return unix.Bind(fd, &unix.SockaddrInet6{Port: int(port), Addr: client.Addr().As16()})
		}
		return unix.Bind(fd, &unix.SockaddrInet4{Port: int(port), Addr: client.Addr().As4()})
	}
	err := bind(client.Port())
	if errors.Is(err, unix.EADDRINUSE) {
		t.PortErrors.Inc()
		err = bind(0)
	}
	return err
}
