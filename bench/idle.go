package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// idleConns opens Connections connections, moves one byte each way on
// each (so each reached an echo target), waits Settle for the process PID
// to reach a steady state, and reports its resident memory growth per
// connection. Opening stops when Duration has passed, however many are
// open then. Read it after the process has carried other traffic: a fresh
// process grows for reasons that have nothing to do with idle connections.
func idleConns(ctx context.Context, o Options) (*Result, error) {
	if o.PID <= 0 {
		return nil, fmt.Errorf("bench: idle-conns needs the PID of the process to measure")
	}
	before, err := RSSKB(o.PID)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	res := &Result{IdleMemory: IdleMemory{RSSBeforeKB: before}}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	b := []byte{'x'}
	opening, stop := context.WithTimeout(ctx, o.Duration)
	defer stop()
	end, _ := opening.Deadline()
	for range o.Connections {
		if !time.Now().Before(end) || ctx.Err() != nil || int64(len(conns)) >= o.MaxOps {
			break
		}
		c, err := dialer.DialContext(opening, "tcp", o.Addr)
		if err != nil {
			if time.Now().Before(end) {
				res.Errors++
				res.FailedConnects++
			}
			continue
		}
		deadline := time.Now().Add(ioTimeout)
		if end.Before(deadline) {
			deadline = end
		}
		c.SetDeadline(deadline)
		if _, err = c.Write(b); err == nil {
			_, err = io.ReadFull(c, b)
		}
		if err != nil {
			res.Errors++
			res.Broken++ // no echo: the target does not echo, or is slow
			c.Close()
			continue
		}
		c.SetDeadline(time.Time{})
		conns = append(conns, c)
		if o.Progress != nil && len(conns)%1000 == 0 {
			o.Progress(Progress{Elapsed: time.Since(start), Ops: int64(len(conns)), Errors: res.Errors})
		}
	}
	settle := o.Settle
	if len(conns) == 0 {
		settle = 0 // nothing to measure
	}
	select {
	case <-time.After(settle):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	after, err := RSSKB(o.PID)
	if err != nil {
		return nil, err
	}
	res.Held, res.RSSAfterKB, res.Ops = len(conns), after, int64(len(conns))
	res.Duration = time.Since(start)
	if len(conns) > 0 {
		res.KBPerConn = float64(after-before) / float64(len(conns))
	}
	return res, nil
}

// RSSKB reads a process's resident memory, in KiB, from /proc.
func RSSKB(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("bench: reading the memory of process %d: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("bench: process %d reports no VmRSS", pid)
}
