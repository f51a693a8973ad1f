package bench

import (
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
func udpRR(ctx context.Context, o Options) (*Result, error) { return persistentRR(ctx, o, "udp") }

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
