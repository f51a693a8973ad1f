package tcpproxy

import (
	"errors"

	"golang.org/x/sys/unix"
)

// The bytes of an event-loop flow: each direction moves what the kernel
// says it can, small messages through the loop's buffer and bulk through
// a pipe by splice(2), and waits for the next event when it must.

// evDir is one direction's bytes in flight: in a buffer (small messages
// that the destination could not take at once) or a pipe (bulk, spliced).
type evDir struct {
	buf      *[]byte
	off, end int
	p        pipe
	hasPipe  bool
	inPipe   int
	bulk     bool
	eof      bool // the source closed its write side
	shut     bool // passed on to the destination
	n        int64
	spliced  int64
}

func (d *evDir) pending() int { return d.inPipe + d.end - d.off }

// pump moves bytes both ways until neither direction can go on without
// waiting for the kernel, and finishes the flow when both are done.
func (f *evFlow) pump() {
	for f.state == evOpen {
		up := f.step(0)
		if f.state != evOpen {
			return
		}
		down := f.step(1)
		if !up && !down {
			break
		}
	}
	if f.state == evOpen && f.dirs[0].shut && f.dirs[1].shut {
		f.finish()
	}
}

// step moves what direction i can move now, and reports whether it moved
// anything (or passed on an end).
func (f *evFlow) step(i int) bool {
	d := &f.dirs[i]
	src, dst, in, out, hup := f.cfd, f.tfd, &f.cIn, &f.tOut, f.cHup
	if i == 1 {
		src, dst, in, out, hup = f.tfd, f.cfd, &f.tIn, &f.cOut, f.tHup
	}
	moved := false
	for {
		if d.pending() > 0 {
			if !*out {
				return moved
			}
			done, err := f.flush(d, dst)
			if err != nil {
				f.fail(i, true)
				return true
			}
			moved = true
			if !done {
				*out = false
				return moved
			}
			f.last = f.lp.now
		}
		if d.eof {
			if !d.shut {
				sysShutdownWrite(dst)
				d.shut = true
				moved = true
			}
			return moved
		}
		if !*in {
			return moved
		}
		if err := f.fill(d, src, dst, in, out, hup); err != nil {
			f.fail(i, errors.Is(err, errAtDst))
			return true
		}
		moved = true
	}
}

// errAtDst marks a write error of fill: the destination failed, not the
// source.
var errAtDst = errors.New("write failed")

// fill reads what the source has: small messages into the loop's buffer,
// written out at once (what the destination cannot take waits in a
// pooled buffer), bulk into a pipe by splice(2).
func (f *evFlow) fill(d *evDir, src, dst int, in, out *bool, hup bool) error {
	lp, s := f.lp, f.lp.s
	if d.bulk {
		if !d.hasPipe {
			p, err := s.pipes.get()
			if err != nil {
				return err
			}
			d.p, d.hasPipe = p, true
		}
		for {
			n, err := sysSplice(src, d.p.w, maxChunk)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				*in = false
				s.pipes.put(d.p)
				d.hasPipe = false
				return nil
			case err != nil:
				return err
			case n == 0:
				d.eof = true
				s.pipes.put(d.p)
				d.hasPipe = false
			default:
				d.inPipe = int(n)
				if n < spliceMin {
					d.bulk = false // the burst is over: small messages again
				}
			}
			return nil
		}
	}
	for {
		n, err := sysRead(src, lp.buf)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			*in = false
			return nil
		case err != nil:
			return err
		case n == 0:
			d.eof = true
			return nil
		}
		if n == len(lp.buf) {
			d.bulk = true // more is waiting: splice from the next read on
		} else if !hup {
			// A short read took all there was; more bytes bring a new
			// edge. After a hang-up the next read must see the end.
			*in = false
		}
		w := 0
		if *out {
			w, err = writeSome(dst, lp.buf[:n])
			if err != nil {
				return errors.Join(errAtDst, err)
			}
			d.n += int64(w)
			f.last = lp.now
			if w < n {
				*out = false
			}
		}
		if w < n {
			d.buf = s.bufs.get()
			d.off, d.end = 0, copy(*d.buf, lp.buf[w:n])
		}
		return nil
	}
}

// writeSome writes what the socket takes now.
func writeSome(fd int, b []byte) (int, error) {
	w := 0
	for w < len(b) {
		n, err := sysWrite(fd, b[w:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return w, nil
		case err != nil:
			return w, err
		}
		w += n
	}
	return w, nil
}

// flush writes d's pending bytes to dst; done says none is left.
func (f *evFlow) flush(d *evDir, dst int) (done bool, err error) {
	s := f.lp.s
	for d.inPipe > 0 {
		n, err := sysSplice(d.p.r, dst, d.inPipe)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false, nil
		case err != nil:
			return false, err
		}
		d.inPipe -= int(n)
		d.n += int64(n)
		d.spliced += int64(n)
	}
	if d.hasPipe && !d.bulk {
		s.pipes.put(d.p) // empty: small messages need none
		d.hasPipe = false
	}
	if d.end > d.off {
		w, err := writeSome(dst, (*d.buf)[d.off:d.end])
		d.off += w
		d.n += int64(w)
		if err != nil {
			return false, err
		}
		if d.off < d.end {
			return false, nil
		}
	}
	if d.buf != nil {
		s.bufs.put(d.buf)
		d.buf, d.off, d.end = nil, 0, 0
	}
	return true, nil
}
