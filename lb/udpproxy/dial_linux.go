package udpproxy

import (
	"errors"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/registry"
)

// bindTransparent binds a UDP socket to the client's address (its port, or
// another if taken) for preserve_client_ip.
func bindTransparent(fd int, client netip.AddrPort, t *registry.Target) error {
	v6 := client.Addr().Is6()
	if err := listen.SetTransparent(fd, v6); err != nil {
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
