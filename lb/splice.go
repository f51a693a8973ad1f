package lb

import (
	"errors"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// maxChunk bounds one splice(2) call, as the standard library does.
const maxChunk = 1 << 20

// halfFlow moves bytes in one direction of a flow with splice(2), through the
// socket descriptors Go's poller already owns (syscall.RawConn), so the data
// never enters user space and a waiting direction holds no pipe. Its callbacks
// are bound once per pooled flow, so moving bytes allocates nothing.
type halfFlow struct {
	f        *flow
	src, dst *net.TCPConn
	srcRC    syscall.RawConn
	dstRC    syscall.RawConn
	p        pipe
	hasPipe  bool
	inPipe   int   // bytes read into the pipe and not yet written out
	n        int64 // bytes moved
	err      error // set by the callbacks
	eof      bool
	onRead   func(fd uintptr) bool
	onWrite  func(fd uintptr) bool
}

func (h *halfFlow) bind() {
	h.onRead = h.readReady
	h.onWrite = h.writeReady
}

// readReady splices what the source has into the pipe. It returns false to
// park on the poller when there is nothing to read, first handing an empty
// pipe back so that idle flows hold none.
func (h *halfFlow) readReady(fd uintptr) bool {
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
		}
		return true
	}
}

// writeReady splices the pipe's bytes to the destination until it is empty.
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
		h.n += n
	}
	return true
}

// copyErr says how a direction ended.
type copyErr uint8

const (
	endEOF      copyErr = iota // source closed its write side
	endReset                   // a socket error (reset, broken pipe)
	endIdle                    // idle timeout
	endShutdown                // the flow was closed from outside
)

// run copies until EOF, an error or the idle timeout. Deadlines are armed once
// and re-armed only when they fire on a flow that was active meanwhile, so a
// busy flow does not touch its timers per read.
func (h *halfFlow) run() copyErr {
	f := h.f
	idle := f.idle
	deadline := time.Now().Add(idle)
	h.src.SetReadDeadline(deadline)
	h.dst.SetWriteDeadline(deadline)
	for {
		h.err = nil
		var err error
		if h.inPipe == 0 {
			h.eof = false
			err = h.srcRC.Read(h.onRead)
			if err == nil {
				err = h.err
			}
			if err == nil && h.eof {
				h.releasePipe()
				h.dst.CloseWrite()
				return endEOF
			}
		}
		if err == nil && h.inPipe > 0 {
			err = h.dstRC.Write(h.onWrite)
			if err == nil {
				err = h.err
			}
			if err == nil {
				f.touch()
			}
		}
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if last := f.lastActive(); time.Since(last) < idle {
				// The flow moved bytes (maybe the other way) since the
				// deadline was set: push it out and carry on, keeping any
				// bytes still in the pipe.
				deadline = last.Add(idle)
				h.src.SetReadDeadline(deadline)
				h.dst.SetWriteDeadline(deadline)
				continue
			}
			h.releasePipe()
			return endIdle
		}
		h.releasePipe()
		if errors.Is(err, net.ErrClosed) {
			return endShutdown
		}
		return endReset
	}
}

// releasePipe returns the pipe if it is empty, or closes it if bytes were left
// in it by a failed write.
func (h *halfFlow) releasePipe() {
	if !h.hasPipe {
		return
	}
	if h.inPipe == 0 {
		h.f.srv.pipes.put(h.p)
	} else {
		h.p.close()
	}
	h.hasPipe = false
}
