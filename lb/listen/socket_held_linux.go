package listen

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrHeld says another process listens on (TCP) or is bound to (UDP) an
// address a listener wants. Joining its SO_REUSEPORT group would take part
// of that process's flows without a word, so l4lb refuses.
var ErrHeld = errors.New("address held by another process")

// checkFree refuses at when a socket of another process holds it. A probe
// socket without SO_REUSEPORT binds it and is closed again: the bind fails
// where a listening TCP socket (or any UDP socket) is there. TCP sockets in
// TIME_WAIT do not count (SO_REUSEADDR). A socket of this process (a reload
// that renames a listener) does not count either.
func checkFree(proto string, at netip.AddrPort) error {
	family, typ := unix.AF_INET, unix.SOCK_STREAM
	if at.Addr().Is6() {
		family = unix.AF_INET6
	}
	if proto == "udp" {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil // the real bind will say what is wrong
	}
	defer unix.Close(fd)
	if typ == unix.SOCK_STREAM {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	}
	var sa unix.Sockaddr
	if family == unix.AF_INET6 {
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1)
		sa = &unix.SockaddrInet6{Port: int(at.Port()), Addr: at.Addr().As16()}
	} else {
		unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_FREEBIND, 1)
		sa = &unix.SockaddrInet4{Port: int(at.Port()), Addr: at.Addr().As4()}
	}
	if err := unix.Bind(fd, sa); !errors.Is(err, unix.EADDRINUSE) {
		return nil
	}
	pid, comm := holder(proto, at)
	switch {
	case pid == os.Getpid():
		return nil
	case pid > 0 && comm == "l4lb":
		return fmt.Errorf("%w: %s %s: address already in use by process %d (l4lb); a second l4lb there would take part of its flows", ErrHeld, proto, at, pid)
	case pid > 0:
		return fmt.Errorf("%w: %s %s: address already in use by process %d (%s)", ErrHeld, proto, at, pid, comm)
	}
	return fmt.Errorf("%w: %s %s: address already in use", ErrHeld, proto, at)
}

// holder finds the process whose socket holds at (a listening one for TCP),
// from /proc/net and the processes' descriptors; 0 when none is found.
func holder(proto string, at netip.AddrPort) (int, string) {
	inodes := map[string]bool{}
	for _, file := range []string{proto, proto + "6"} {
		f, err := os.Open("/proc/net/" + file)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // the header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || (proto == "tcp" && fields[3] != "0A") { // 0A: LISTEN
				continue
			}
			if local, ok := procAddr(fields[1]); ok && local.Port() == at.Port() &&
				(local.Addr() == at.Addr() || local.Addr().IsUnspecified() || at.Addr().IsUnspecified()) {
				inodes["socket:["+fields[9]+"]"] = true
			}
		}
		f.Close()
	}
	if len(inodes) == 0 {
		return 0, ""
	}
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		if link, err := os.Readlink(fd); err == nil && inodes[link] {
			pid, _ := strconv.Atoi(strings.Split(fd, "/")[2])
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			return pid, strings.TrimSpace(string(comm))
		}
	}
	return 0, ""
}

// procAddr reads an address of /proc/net/{tcp,udp}{,6}: the address's
// 32-bit words in host order, in hex, then ":" and the port in hex.
func procAddr(s string) (netip.AddrPort, bool) {
	a, p, ok := strings.Cut(s, ":")
	raw, err := hex.DecodeString(a)
	port, perr := strconv.ParseUint(p, 16, 16)
	if !ok || err != nil || perr != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, false
	}
	for i := 0; i < len(raw); i += 4 { // each word from host (little-endian) order
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), true
}
