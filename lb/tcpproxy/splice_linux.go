package tcpproxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/pkg/proxyproto"
)

const (
	// maxChunk bounds one splice(2) call, as the standard library does.
	maxChunk = 1 << 20
	// bufSize is the user-space buffer of small exchanges. A read that fills
	// it marks the direction as bulk, and it switches to splice(2).
	bufSize = 16 << 10
	// spliceMin: a splice that moves less than this switches the direction
	// back to read/write, which costs fewer cycles for small messages.
	spliceMin = 4 << 10
)

// bufPool holds the 16 KiB buffers of directions that are moving small
// messages; a direction holds one only while bytes are in flight. A plain
// free list rather than sync.Pool: the buffers must survive GC cycles, or a
// steady flow would allocate again after each one.
type bufPool struct {
	mu   sync.Mutex
	free []*[]byte
	max  int
}

func (b *bufPool) get() *[]byte {
	b.mu.Lock()
	if n := len(b.free); n > 0 {
		buf := b.free[n-1]
		b.free = b.free[:n-1]
		b.mu.Unlock()
		return buf
	}
	b.mu.Unlock()
	buf := make([]byte, bufSize)
	return &buf
}

func (b *bufPool) put(buf *[]byte) {
	b.mu.Lock()
	if len(b.free) < b.max {
		b.free = append(b.free, buf)
	}
	b.mu.Unlock()
}

// halfFlow moves bytes in one direction of a flow, through the socket
// descriptors Go's poller already owns (syscall.RawConn), so the poller does
// the waiting. Like HAProxy's splice-auto it copies small messages through a
// user-space buffer (one read, one write) and moves bulk data with splice(2)
// through a pipe, where the payload never enters user space. Buffer and pipe
// are held only while bytes are in flight, so an idle flow holds neither. The
// callbacks are bound once per pooled flow: moving bytes allocates nothing.
type halfFlow struct {
	f        *flow
	src, dst *net.TCPConn
	srcRC    syscall.RawConn
	dstRC    syscall.RawConn
	halfBuffers

	n       int64 // bytes moved
	err     error // set by the callbacks
	eof     bool
	onRead  func(fd uintptr) bool
	onWrite func(fd uintptr) bool
	spliced int64 // bytes of n that moved by splice(2)
	halfPP
	// errAtDst says the error that ended the direction came from writing
	// to its destination, not from reading its source: it tells a
	// target's reset from a client's.
	errAtDst bool
	finished bool // finish ran for this direction (a panic's cleanup checks)

	slot  int32        // parker slot while parked
	state atomic.Int32 // running or parked
	halfStream
}

// halfBuffers are what a direction's bytes pass through: a pipe in splice
// mode, a buffer otherwise.
type halfBuffers struct {
	bulk    bool // splice mode
	p       pipe
	hasPipe bool
	inPipe  int // bytes spliced into the pipe, not yet out
	buf     *[]byte
	bufOff  int // buf[bufOff:bufEnd] is read, not yet written
	bufEnd  int
}

// halfPP refuses a PROXY header at the start of an untrusted client's
// bytes.
type halfPP struct {
	checkPP bool // the first bytes must not be a PROXY header (untrusted client)
	// ppPrefix says the client's first bytes are a strict prefix of a PROXY
	// signature: the direction waits for more, but no longer than the
	// PROXY header timeout, and does not park meanwhile.
	ppPrefix bool
	ppSince  time.Time // when the prefix was first seen
}

// halfStream is how a direction with a TLS end copies (runStream): the
// reader and writer, and the connections whose deadlines bound them.
type halfStream struct {
	rd       io.Reader
	wr       io.Writer
	rdc, wrc net.Conn
}

func (h *halfFlow) bind() {
	h.onRead = h.readReady
	h.onWrite = h.writeReady
}

func (h *halfFlow) reset() {
	h.n, h.spliced, h.inPipe, h.bufOff, h.bufEnd, h.err, h.eof, h.bulk, h.finished = 0, 0, 0, 0, 0, nil, false, false, false
}

func (h *halfFlow) pending() int { return h.inPipe + h.bufEnd - h.bufOff }

// readReady reads what the source has. It returns false to park on the poller
// when there is nothing, first handing back buffer or pipe.
func (h *halfFlow) readReady(fd uintptr) bool {
	if h.bulk {
		return h.spliceIn(fd)
	}
	if h.checkPP {
		switch h.peekHeader(fd) {
		case proxyproto.Header:
			h.f.l.rejects[listen.ReasonProxyProtocol].Inc()
			h.err = errUntrustedHeader
			return true
		case proxyproto.Undecided:
			return false // nothing consumed; the poller wakes on more bytes
		}
	}
	if h.buf == nil {
		h.buf = h.f.srv.bufs.get()
	}
	for {
		n, err := unix.Read(int(fd), *h.buf)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			h.f.srv.bufs.put(h.buf)
			h.buf = nil
			return false
		case err != nil:
			h.err = err
		case n == 0:
			h.eof = true
		default:
			h.bufOff, h.bufEnd = 0, n
			if n == len(*h.buf) {
				h.bulk = true // more is waiting: splice from the next read on
			}
		}
		return true
	}
}

func (h *halfFlow) spliceIn(fd uintptr) bool {
	if !h.hasPipe {
		p, err := h.f.srv.pipes.get()
		if err != nil {
			h.err = err
			return true
		}
		h.p, h.hasPipe = p, true
	}
	for {
		n, err := unix.Splice(int(fd), nil, h.p.w, nil, maxChunk, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			h.f.srv.pipes.put(h.p)
			h.hasPipe = false
			return false
		case err != nil:
			h.err = err
		case n == 0:
			h.eof = true
		default:
			h.inPipe = int(n)
			if n < spliceMin {
				h.bulk = false // the burst is over: small messages again
			}
		}
		return true
	}
}

// writeReady writes what is pending to the destination until none is left.
func (h *halfFlow) writeReady(fd uintptr) bool {
	for h.inPipe > 0 {
		n, err := unix.Splice(h.p.r, nil, int(fd), nil, h.inPipe, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false
		case err != nil:
			h.err = err
			return true
		}
		h.inPipe -= int(n)
		h.n += int64(n)
		h.spliced += int64(n)
	}
	for h.bufOff < h.bufEnd {
		n, err := unix.Write(int(fd), (*h.buf)[h.bufOff:h.bufEnd])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false
		case err != nil:
			h.err = err
			return true
		}
		h.bufOff += n
		h.n += int64(n)
	}
	return true
}

// peekHeader looks at the client's first bytes without consuming them, until
// they show whether a PROXY header starts the stream: a header split over
// several writes ("PR", then "OXY TCP4 ...") is refused like a whole one, and
// no byte reaches the target before that is settled. It returns Undecided
// while the bytes queued are a strict prefix of a signature, and clears
// checkPP once it is settled (or at EOF, which the read that follows sees).
func (h *halfFlow) peekHeader(fd uintptr) proxyproto.Verdict {
	var b [proxyproto.SignatureLen]byte
	for {
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return proxyproto.Undecided
		case err != nil || n == 0:
			h.checkPP = false // the read reports the error or EOF
			return proxyproto.NotHeader
		}
		v := proxyproto.Classify(b[:n])
		if v != proxyproto.Undecided {
			h.checkPP, h.ppPrefix = false, false
		} else if !h.ppPrefix {
			h.ppPrefix, h.ppSince = true, time.Now()
		}
		return v
	}
}

// errHeaderTimeout ends a flow whose client's first bytes stayed a prefix
// of a PROXY signature for the PROXY header timeout.
var errHeaderTimeout = errors.New("first bytes a prefix of a PROXY signature for too long")

// errUntrustedHeader ends a flow whose client, not trusted to, sent a PROXY
// header.
var errUntrustedHeader = errors.New("PROXY header from an untrusted client")

// copyErr says how a direction ended.
type copyErr uint8

const (
	endEOF      copyErr = iota // source closed its write side
	endReset                   // a socket error (reset, broken pipe)
	endIdle                    // idle timeout
	endShutdown                // the flow was closed from outside
)

// run copies until EOF, an error or the idle timeout, or until it parks the
// direction (parked true: the goroutine must exit without touching h).
//
// One deadline per side serves both timers: it fires parkAfter after it was
// armed (or at the idle timeout, if sooner). A direction that moved nothing
// since the last firing parks; one that did is re-armed. So a busy flow
// touches its timers once per parkAfter, never per read.
func (h *halfFlow) run() (how copyErr, isParked bool) {
	f := h.f
	now := time.Now()
	if now.Sub(f.lastActive()) >= f.idle {
		h.release()
		return endIdle, false
	}
	h.arm(now)
	mark := h.n
	for {
		h.err = nil
		var err error
		if h.pending() == 0 {
			h.eof = false
			err = h.srcRC.Read(h.onRead)
			if err == nil {
				err = h.err
			}
			if err == nil && h.eof {
				h.release()
				h.dst.CloseWrite()
				return endEOF, false
			}
		}
		h.errAtDst = false
		if err == nil && h.pending() > 0 {
			err = h.dstRC.Write(h.onWrite)
			if err == nil {
				err = h.err
			}
			h.errAtDst = err != nil
			if err == nil {
				f.touch()
				h.releaseBuf()
			}
		}
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			now := time.Now()
			if now.Sub(f.lastActive()) >= f.idle {
				h.release()
				return endIdle, false
			}
			if h.ppPrefix {
				// A client that sent "P" (or "\r\n\r\n") and then
				// nothing: neither a header nor not one, for too long.
				if now.Sub(h.ppSince) >= f.srv.opts.ProxyHeaderTimeout {
					f.l.rejects[listen.ReasonProxyProtocol].Inc()
					h.release()
					h.err = errHeaderTimeout
					return endReset, false
				}
				h.arm(now)
				continue
			}
			// Park a direction that moved nothing since the last firing, or
			// whose whole flow has been quiet for parkAfter.
			if h.pending() == 0 && (h.n == mark || now.Sub(f.lastActive()) >= f.parkAfter) {
				h.release()
				if f.srv.parker.park(h) {
					return 0, true
				}
			}
			mark = h.n
			h.arm(now)
			continue
		}
		h.release()
		if errors.Is(err, net.ErrClosed) {
			return endShutdown, false
		}
		return endReset, false
	}
}

// arm sets both sides' deadlines parkAfter from now, or to the flow's idle
// expiry if that comes first.
func (h *halfFlow) arm(now time.Time) {
	d := now.Add(h.f.parkAfter)
	if exp := h.f.lastActive().Add(h.f.idle); exp.Before(d) {
		d = exp
	}
	h.src.SetReadDeadline(d)
	h.dst.SetWriteDeadline(d)
}

// releaseBuf hands the buffer back once it is drained, so that a direction
// waiting for its next message holds none.
func (h *halfFlow) releaseBuf() {
	if h.buf != nil && h.bufOff == h.bufEnd {
		h.f.srv.bufs.put(h.buf)
		h.buf = nil
		h.bufOff, h.bufEnd = 0, 0
	}
}

// release gives back pipe and buffer; a pipe that still holds bytes (a write
// failed) is closed instead, and a buffer is simply dropped.
func (h *halfFlow) release() {
	if h.hasPipe {
		if h.inPipe == 0 {
			h.f.srv.pipes.put(h.p)
		} else {
			h.p.close()
		}
		h.hasPipe = false
	}
	if h.buf != nil && h.bufOff == h.bufEnd {
		h.f.srv.bufs.put(h.buf)
	}
	h.buf = nil
	h.inPipe, h.bufOff, h.bufEnd = 0, 0, 0
}
