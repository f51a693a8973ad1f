package tlsterm

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// errNotTLS says the first bytes are not a TLS handshake record.
var errNotTLS = errors.New("tls: the first bytes are not a TLS handshake record")

// waitHello waits, until deadline, for the first TLS record of c (its
// ClientHello, or the first part of a hello that spans records) to have
// arrived whole, consuming nothing. A connection that says nothing costs a
// parked goroutine and a timer here, and no handshake slot.
func waitHello(c net.Conn, deadline time.Time) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil // not a socket (a test's pipe): the handshake reads it
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	c.SetReadDeadline(deadline)
	defer c.SetReadDeadline(time.Time{})
	var werr error
	err = rc.Read(func(fd uintptr) bool {
		var hdr [5]byte
		n, _, e := unix.Recvfrom(int(fd), hdr[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		for e == unix.EINTR {
			n, _, e = unix.Recvfrom(int(fd), hdr[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		}
		switch {
		case e == unix.EAGAIN:
			return false
		case e != nil:
			werr = e
			return true
		case n == 0:
			werr = io.EOF
			return true
		case hdr[0] != 22: // a handshake record
			werr = errNotTLS
			return true
		case n < len(hdr):
			return false // the poller wakes on more bytes
		}
		size := len(hdr) + int(binary.BigEndian.Uint16(hdr[3:]))
		queued, e := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		if e != nil {
			return true // let the handshake read it
		}
		return queued >= size
	})
	if err != nil {
		return err
	}
	return werr
}
