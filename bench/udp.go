package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// udpRR sends a Size-byte datagram and waits for the reply, on one
// connected socket per connection; a reply that does not come within a
// second is an error, and the socket is replaced (its flow may be gone).
func udpRR(ctx context.Context, o Options) (*Result, error) {
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
			in := make([]byte, 65536)
			for {
				due, ok := p.wait(r)
				if !ok {
					return
				}
				if c == nil {
					var err error
					if c, err = net.Dial("udp", o.Addr); err != nil {
						once.Do(func() { firstErr = err })
						r.failed(time.Now(), failConnect)
						time.Sleep(10 * time.Millisecond)
						continue
					}
				}
				ex.fill()
				c.SetDeadline(time.Now().Add(time.Second))
				_, err := c.Write(ex.req)
				if err == nil {
					var n int
					n, err = c.Read(in)
					if err == nil && (n != len(ex.resp) || ex.verify && !bytes.Equal(in[:n], ex.req)) {
						err = errMismatch
					}
				}
				if err != nil {
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

// udpPPS sends Size-byte datagrams as fast as each socket can (or at
// Rate in all), and counts the replies an echo target sends back: Sent and
// Received, per second of the window. Datagrams the kernel refused for a
// full buffer are counted as errors.
func udpPPS(ctx context.Context, o Options) (*Result, error) {
	r := newRun(ctx, o)
	var sent, recvd atomic.Int64
	var wg sync.WaitGroup
	var firstErr error
	var once sync.Once
	for range o.Connections {
		c, err := net.Dial("udp", o.Addr)
		if err != nil {
			once.Do(func() { firstErr = err })
			continue
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			in := make([]byte, 65536)
			for {
				c.SetReadDeadline(r.end.Add(500 * time.Millisecond))
				if _, err := c.Read(in); err != nil {
					if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed) {
						return
					}
					continue // ECONNREFUSED from an earlier send: nothing listened
				}
				if r.measuring(time.Now()) {
					recvd.Add(1)
				}
			}
		}()
		go func() {
			defer wg.Done()
			defer time.AfterFunc(600*time.Millisecond, func() { c.Close() })
			p := newPacer(o)
			buf := make([]byte, o.Size)
			for {
				if _, ok := p.wait(r); !ok {
					return
				}
				_, err := c.Write(buf)
				now := time.Now()
				if err != nil {
					r.failed(now, failOther)
					continue
				}
				if r.measuring(now) {
					sent.Add(1)
					r.ops.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	res := r.finish(&Result{}, false)
	res.Sent, res.Received = sent.Load(), recvd.Load()
	if res.Sent == 0 && firstErr != nil {
		return res, fmt.Errorf("bench: %w", firstErr)
	}
	return res, nil
}
