package tcpproxy

import (
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/registry"
)

// The event loop works on descriptors, not net.Conn: the system calls here
// take and return socket addresses in a buffer the loop owns, so accepting
// and connecting allocate nothing (x/sys/unix would allocate a Sockaddr for
// each).

// rawAddr is a socket address buffer big enough for IPv4 and IPv6.
type rawAddr struct {
	sa  unix.RawSockaddrInet6
	len uint32
}

// set fills the buffer with ap and returns its pointer and length.
func (r *rawAddr) set(ap netip.AddrPort) (unsafe.Pointer, uint32) {
	port := ap.Port()
	if a := ap.Addr(); a.Is4() {
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&r.sa))
		sa.Family = unix.AF_INET
		sa.Port = port>>8 | port<<8
		sa.Addr = a.As4()
		sa.Zero = [8]uint8{}
		return unsafe.Pointer(sa), unix.SizeofSockaddrInet4
	}
	r.sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Port: port>>8 | port<<8, Addr: ap.Addr().As16()}
	return unsafe.Pointer(&r.sa), unix.SizeofSockaddrInet6
}

// get reads the address the kernel wrote into the buffer.
func (r *rawAddr) get() netip.AddrPort {
	switch r.sa.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&r.sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), sa.Port>>8|sa.Port<<8)
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(r.sa.Addr), r.sa.Port>>8|r.sa.Port<<8)
	}
	return netip.AddrPort{}
}

func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// accept takes a connection from a listening socket, nonblocking, with its
// peer's address in r.
func (r *rawAddr) accept(lfd int) (int, error) {
	r.len = unix.SizeofSockaddrInet6
	fd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(lfd), uintptr(unsafe.Pointer(&r.sa)), uintptr(unsafe.Pointer(&r.len)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	return int(fd), errnoErr(e)
}

// sockname reads fd's local address into r.
func (r *rawAddr) sockname(fd int) (netip.AddrPort, error) {
	r.len = unix.SizeofSockaddrInet6
	_, _, e := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&r.sa)), uintptr(unsafe.Pointer(&r.len)))
	if e != 0 {
		return netip.AddrPort{}, e
	}
	return r.get(), nil
}

func (r *rawAddr) bind(fd int, ap netip.AddrPort) error {
	p, n := r.set(ap)
	_, _, e := unix.RawSyscall(unix.SYS_BIND, uintptr(fd), uintptr(p), uintptr(n))
	return errnoErr(e)
}

func (r *rawAddr) connect(fd int, ap netip.AddrPort) error {
	p, n := r.set(ap)
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(p), uintptr(n))
	return errnoErr(e)
}

// dialRaw starts a nonblocking connect to target, from the client's own
// address when preserve is set (transparent mode, as dialTarget does). It
// returns the socket with the connect under way (or done).
func (r *rawAddr) dialRaw(t *registry.Target, client netip.AddrPort, preserve bool) (int, error) {
	fd, err := r.dialFrom(t.Addr, client, preserve, false)
	if preserve && (err == unix.EADDRINUSE || err == unix.EADDRNOTAVAIL) {
		// The client's port is taken towards someone: any port of its IP.
		t.PortErrors.Inc()
		fd, err = r.dialFrom(t.Addr, netip.AddrPortFrom(client.Addr(), 0), preserve, true)
	}
	return fd, err
}

func (r *rawAddr) dialFrom(target, client netip.AddrPort, preserve, anyPort bool) (int, error) {
	v6 := target.Addr().Is6()
	family := unix.AF_INET
	if v6 {
		family = unix.AF_INET6
	}
	if preserve && client.Addr().Is4() != target.Addr().Is4() {
		return -1, errFamilies
	}
	fd, err := sysSocket(family)
	if err != nil {
		return -1, err
	}
	// Small messages are passed on as they come, as the client sent them.
	err = sysSetInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if err == nil && preserve {
		err = listen.SetTransparent(fd, v6)
		if err == nil && anyPort {
			err = unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		}
		if err == nil {
			err = r.bind(fd, client)
		}
	}
	if err == nil {
		err = r.connect(fd, target)
		if err == unix.EINPROGRESS {
			err = nil
		}
	}
	if err != nil {
		sysClose(fd)
		return -1, err
	}
	return fd, nil
}

// listenRaw opens a listening socket on addr with the options of
// listen.Control, outside Go's poller: the event loop waits on it.
func listenRaw(addr netip.AddrPort) (int, error) {
	family := unix.AF_INET
	if addr.Addr().Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	fail := func(op string, err error) (int, error) {
		unix.Close(fd)
		return -1, os.NewSyscallError(op, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail("setsockopt", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return fail("setsockopt", err)
	}
	if family == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_FREEBIND, 1); err != nil {
			return fail("setsockopt", err)
		}
		// An IPv6 address serves IPv6 alone, as net.Listen("tcp6") does.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fail("setsockopt", err)
		}
	} else if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_FREEBIND, 1); err != nil {
		return fail("setsockopt", err)
	}
	// Accepted sockets inherit TCP_NODELAY from their listener: one call
	// here instead of one per connection.
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return fail("setsockopt", err)
	}
	var r rawAddr
	if err := r.bind(fd, addr); err != nil {
		return fail("bind", err)
	}
	if err := unix.Listen(fd, listenBacklog()); err != nil {
		return fail("listen", err)
	}
	return fd, nil
}

// listenBacklog is the kernel's somaxconn, as the net package uses.
func listenBacklog() int {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		return unix.SOMAXCONN
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int(c-'0')
	}
	if n <= 0 {
		return unix.SOMAXCONN
	}
	return n
}

// adoptRaw takes a listening socket a previous process handed over: a
// descriptor of its own, nonblocking, with TCP_NODELAY for what it accepts.
func adoptRaw(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("fcntl", derr)
	}
	if err := unix.SetNonblock(nfd, true); err != nil {
		unix.Close(nfd)
		return -1, os.NewSyscallError("fcntl", err)
	}
	_ = unix.SetsockoptInt(nfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	return nfd, nil
}

// setLinger0 makes close(2) send a reset.
func setLinger0(fd int) {
	l := unix.Linger{Onoff: 1}
	unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_LINGER, uintptr(unsafe.Pointer(&l)), unsafe.Sizeof(l), 0)
}

// The event loop's system calls never block (every socket is nonblocking,
// and epoll_wait is asked not to wait), so they are made raw: without the
// scheduler's enter/exit bookkeeping, which for calls of a few
// microseconds costs more than it saves, and keeps the runtime's monitor
// thread waking every 20 µs to look for blocked threads.

func sysRead(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	return int(n), errnoErr(e)
}

func sysWrite(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	return int(n), errnoErr(e)
}

func sysSplice(in, out, n int) (int, error) {
	m, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
	return int(m), errnoErr(e)
}

func sysClose(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

func sysShutdownWrite(fd int) {
	unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_WR, 0)
}

func sysEpollCtl(epfd, op, fd int, ev *unix.EpollEvent) error {
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	return errnoErr(e)
}

func sysSocket(family int) (int, error) {
	fd, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(family), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	return int(fd), errnoErr(e)
}

func sysSetInt(fd, level, opt, v int) error {
	val := int32(v)
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&val)), 4, 0)
	return errnoErr(e)
}
