package tcpproxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/pkg/tlshello"
)

// HelloTimeout bounds the wait for a TLS ClientHello on a listener with SNI
// rules.
const HelloTimeout = 10 * time.Second

var helloBufs = sync.Pool{New: func() any { return new([tlshello.MaxLen]byte) }}

// peekHello waits (up to HelloTimeout) for the client's ClientHello and
// returns the name it asks for, leaving every byte queued for the target.
func peekHello(c *net.TCPConn) (string, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return "", err
	}
	buf := helloBufs.Get().(*[tlshello.MaxLen]byte)
	defer helloBufs.Put(buf)
	c.SetReadDeadline(time.Now().Add(HelloTimeout))
	defer c.SetReadDeadline(time.Time{})
	var name string
	perr := tlshello.ErrShort
	err = rc.Read(func(fd uintptr) bool {
		n, _, e := unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		for e == unix.EINTR {
			n, _, e = unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		}
		switch {
		case e == unix.EAGAIN:
			return false
		case e != nil:
			perr = e
			return true
		case n == 0:
			perr = io.EOF
			return true
		}
		// Peeking leaves the bytes queued, so a short hello is peeked again
		// when more arrive.
		name, perr = tlshello.ServerName(buf[:n])
		return !errors.Is(perr, tlshello.ErrShort)
	})
	if err != nil {
		return "", err
	}
	return name, perr
}
