package bench

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"context"
)

const ioTimeout = 5 * time.Second

var dialer = net.Dialer{Timeout: ioTimeout}

// tcpThroughput streams Size-byte writes on each connection to a sink for
// the run, then half-closes and waits for the sink's count of what it
// read, so every byte counted reached the far end.
func tcpThroughput(ctx context.Context, o Options) (*Result, error) {
	r := newRun(ctx, o)
	var wg sync.WaitGroup
	var firstErr error
	var once sync.Once
	for range o.Connections {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialer.DialContext(r.ctx, "tcp", o.Addr)
			if err != nil {
				r.failed(time.Now())
				once.Do(func() { firstErr = err })
				return
			}
			defer c.Close()
			buf := make([]byte, o.Size)
			var sent int64
			for !r.over() {
				c.SetWriteDeadline(time.Now().Add(ioTimeout))
				n, err := c.Write(buf)
				sent += int64(n)
				if now := time.Now(); r.measuring(now) {
					r.bytes.Add(int64(n))
				}
				if err != nil {
					r.failed(time.Now())
					return
				}
				r.done(time.Now(), nil, 0)
			}
			// The sink answers the end of the stream with the count it
			// read: all of it arrived.
			c.(*net.TCPConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(ioTimeout))
			var ack [8]byte
			if _, err := io.ReadFull(c, ack[:]); err != nil || int64(binary.BigEndian.Uint64(ack[:])) != sent {
				r.errs.Add(1)
			}
		}()
	}
	wg.Wait()
	res := r.finish(&Result{}, false)
	if res.Ops == 0 && firstErr != nil {
		return res, fmt.Errorf("bench: %w", firstErr)
	}
	return res, nil
}

// tcpConnect opens a connection, sends Size bytes, reads Size bytes back
// and closes with a reset (no TIME_WAIT left on the client, so a long run
// cannot exhaust its ports), over and over; latency is the whole exchange.
func tcpConnect(ctx context.Context, o Options) (*Result, error) {
	r := newRun(ctx, o)
	var wg sync.WaitGroup
	for range o.Connections {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := newHist()
			defer r.merge(h)
			p := newPacer(o)
			buf := make([]byte, o.Size)
			for {
				due, ok := p.wait(r)
				if !ok {
					return
				}
				if err := connectOnce(r, buf); err != nil {
					r.failed(time.Now())
					continue
				}
				now := time.Now()
				r.done(now, h, now.Sub(due))
			}
		}()
	}
	wg.Wait()
	return r.finish(&Result{}, true), nil
}

func connectOnce(r *run, buf []byte) error {
	c, err := dialer.DialContext(r.ctx, "tcp", r.o.Addr)
	if err != nil {
		return err
	}
	defer func() {
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}()
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := c.Write(buf); err != nil {
		return err
	}
	_, err = io.ReadFull(c, buf)
	return err
}

// tcpRR sends Size bytes and reads Size bytes back, on persistent
// connections.
func tcpRR(ctx context.Context, o Options) (*Result, error) {
	r := newRun(ctx, o)
	var wg sync.WaitGroup
	var firstErr error
	var once sync.Once
	for range o.Connections {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := newHist()
			defer r.merge(h)
			var c net.Conn
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			p := newPacer(o)
			buf := make([]byte, o.Size)
			for {
				due, ok := p.wait(r)
				if !ok {
					return
				}
				if c == nil {
					var err error
					if c, err = dialer.DialContext(r.ctx, "tcp", o.Addr); err != nil {
						once.Do(func() { firstErr = err })
						r.failed(time.Now())
						time.Sleep(10 * time.Millisecond)
						continue
					}
				}
				c.SetDeadline(time.Now().Add(ioTimeout))
				_, err := c.Write(buf)
				if err == nil {
					_, err = io.ReadFull(c, buf)
				}
				if err != nil {
					// A broken connection is counted and replaced.
					r.failed(time.Now())
					c.Close()
					c = nil
					continue
				}
				now := time.Now()
				r.done(now, h, now.Sub(due))
			}
		}()
	}
	wg.Wait()
	res := r.finish(&Result{}, true)
	if res.Ops == 0 && firstErr != nil {
		return res, fmt.Errorf("bench: %w", firstErr)
	}
	return res, nil
}
