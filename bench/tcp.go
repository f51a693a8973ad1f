package bench

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"context"
)

const ioTimeout = 5 * time.Second

// dialer sets no TCP keepalive: a load generator's connections are short or
// busy, and the four setsockopt calls per connection would load the client.
var dialer = net.Dialer{Timeout: ioTimeout, KeepAlive: -1}

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
				r.failed(time.Now(), failConnect)
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
					r.failed(time.Now(), classify(err))
					return
				}
				r.done(time.Now(), nil, 0)
			}
			// The sink answers the end of the stream with the count it
			// read: all of it arrived.
			c.(*net.TCPConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(ioTimeout))
			var ack [8]byte
			if _, err := io.ReadFull(c, ack[:]); err != nil {
				r.failed(r.end, classify(err))
			} else if int64(binary.BigEndian.Uint64(ack[:])) != sent {
				r.failed(r.end, failBroken)
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
			ex := newExchange(o)
			for {
				due, ok := p.wait(r)
				if !ok {
					return
				}
				if kind, err := connectOnce(r, ex); err != nil {
					r.failed(time.Now(), kind)
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

func connectOnce(r *run, ex *exchange) (kind int, err error) {
	c, err := dialer.DialContext(r.ctx, "tcp", r.o.Addr)
	if err != nil {
		return failConnect, err
	}
	defer func() {
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}()
	if err := ex.do(c); err != nil {
		return classify(err), err
	}
	return 0, nil
}

// exchange is one request and its reply: the request carries a sequence
// number and a pattern, so a reply from the wrong flow, or mangled, is told
// apart from the right one.
type exchange struct {
	req, resp []byte
	seq       uint64
	verify    bool
	datagram  bool // UDP: the reply is one datagram, awaited a second
}

func newExchange(o Options) *exchange {
	if len(o.Request) > 0 {
		return &exchange{req: o.Request, resp: make([]byte, o.ResponseSize)}
	}
	return &exchange{req: make([]byte, o.Size), resp: make([]byte, o.Size), verify: !o.NoVerify}
}

// fill writes the next request.
func (e *exchange) fill() {
	e.seq++
	if e.verify {
		for i := range e.req {
			e.req[i] = byte(e.seq>>(8*(i%8))) ^ byte(i)
		}
	}
}

func (e *exchange) do(c net.Conn) error {
	e.fill()
	if e.datagram {
		c.SetDeadline(time.Now().Add(time.Second))
	} else {
		c.SetDeadline(time.Now().Add(ioTimeout))
	}
	if _, err := c.Write(e.req); err != nil {
		return err
	}
	if e.datagram {
		// A reply of another size is wrong, so the buffer has room for
		// one byte more than the expected size to tell.
		if cap(e.resp) == len(e.resp) {
			e.resp = append(e.resp, 0)[:len(e.resp)]
		}
		n, err := c.Read(e.resp[:len(e.resp)+1])
		if err != nil {
			return err
		}
		if n != len(e.resp) {
			return errMismatch
		}
	} else if _, err := io.ReadFull(c, e.resp); err != nil {
		return err
	}
	if e.verify && !bytes.Equal(e.req, e.resp) {
		return errMismatch
	}
	return nil
}

// tcpRR sends Size bytes and reads Size bytes back, on persistent
// connections.
func tcpRR(ctx context.Context, o Options) (*Result, error) { return persistentRR(ctx, o, "tcp") }

// persistentRR runs request/response on one persistent connection (or
// connected UDP socket) per worker. A failed exchange is counted, and its
// connection replaced: over TCP it is broken, over UDP its flow may be
// gone.
func persistentRR(ctx context.Context, o Options, network string) (*Result, error) {
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
			ex := newExchange(o)
			ex.datagram = network == "udp"
			for {
				due, ok := p.wait(r)
				if !ok {
					return
				}
				if c == nil {
					var err error
					if c, err = dialer.DialContext(r.ctx, network, o.Addr); err != nil {
						once.Do(func() { firstErr = err })
						r.failed(time.Now(), failConnect)
						time.Sleep(10 * time.Millisecond)
						continue
					}
				}
				if err := ex.do(c); err != nil {
					r.failed(time.Now(), classify(err))
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
