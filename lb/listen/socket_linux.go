package listen

import (
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Control sets SO_REUSEPORT, so several sockets (and a new l4lb during an
// upgrade) share the port, and IP_FREEBIND, so a zone's static IP may be
// bound before it is configured on the host.
func Control(network, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); serr != nil {
			return
		}
		if network == "tcp6" || network == "udp6" {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// Inherit hands out the sockets a previous l4lb process passed on in a
// binary upgrade, by SocketName (upgrade.Child satisfies it). Take returns
// nil for a socket it does not have.
type Inherit interface {
	Take(name string) *os.File
}

// SocketName names the i-th socket of a listener's address (as configured:
// port 0 stays 0) across processes: the old process hands each socket over
// under its name, and the new one takes it back under the same.
func SocketName(proto, listener string, at netip.AddrPort, i int) string {
	return fmt.Sprintf("%s/%s/%s/%d", proto, listener, at, i)
}

// BindEach opens n SO_REUSEPORT sockets of proto ("tcp" or "udp") on at,
// taking each from inh when it has it (adopt wraps the inherited file), and
// binding it with open otherwise. Port 0 (tests only) lets the first socket
// pick and the rest follow it.
func BindEach(n int, proto, name string, at netip.AddrPort, inh Inherit, open func(network, addr string) (uint16, error), adopt func(*os.File) (uint16, error)) error {
	network := proto + "4"
	if at.Addr().Is6() {
		network = proto + "6"
	}
	port := at.Port()
	own := false // the address's group is this process's, or its predecessor's
	for i := range n {
		if inh != nil {
			if f := inh.Take(SocketName(proto, name, at, i)); f != nil {
				p, err := adopt(f)
				f.Close() // adopt made its own descriptor
				if err != nil {
					return fmt.Errorf("listener %s: taking over %s %s: %w", name, proto, at, err)
				}
				port, own = p, true
				continue
			}
		}
		if !own && port != 0 {
			if err := checkFree(proto, netip.AddrPortFrom(at.Addr(), port)); err != nil {
				return fmt.Errorf("listener %s: %w", name, err)
			}
		}
		own = true
		addr := netip.AddrPortFrom(at.Addr(), port).String()
		p, err := open(network, addr)
		if err != nil {
			return fmt.Errorf("listener %s: binding %s %s: %w", name, proto, addr, err)
		}
		port = p
	}
	return nil
}

// TransparentControl sets IP_TRANSPARENT (IPV6_TRANSPARENT), which lets a
// socket bind the client's address although it is not local: targets then
// see the client's own IP (preserve_client_ip.enabled). It needs
// CAP_NET_ADMIN and policy routing that delivers the targets' replies to this
// host (deploy/transparent.sh).
func TransparentControl(network, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) { serr = SetTransparent(int(fd), network == "tcp6" || network == "udp6") })
	if err != nil {
		return err
	}
	return serr
}

// TransparentAnyPortControl is TransparentControl for a bind to the client's
// IP with port 0. IP_BIND_ADDRESS_NO_PORT defers the port to connect(2),
// where it only has to be unique towards this target, not towards everyone.
func TransparentAnyPortControl(network, addr string, c syscall.RawConn) error {
	if err := TransparentControl(network, addr, c); err != nil {
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

// SetTransparent sets IP_TRANSPARENT or IPV6_TRANSPARENT on fd.
func SetTransparent(fd int, v6 bool) error {
	if v6 {
		return unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
	}
	return unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1)
}

// EpollPoll reads the events an epoll set has, without waiting. It is a
// raw system call, without the scheduler's enter and exit bookkeeping: it
// never blocks, and the loops that wait for their sets through Go's poller
// (the TCP event loops, the UDP reply loops) call it on every wakeup.
func EpollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(unsafe.SliceData(events))), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
