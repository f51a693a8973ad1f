package bench

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// run is one scenario's clock and counters: a warm-up whose work is not
// counted, then the measured window. Workers loop while !over() and count
// only what completes inside the window.
type run struct {
	o          Options
	ctx        context.Context
	cancel     context.CancelFunc
	start, end time.Time // the measured window
	ops, errs  atomic.Int64
	bytes      atomic.Int64
	kinds      [failKinds]atomic.Int64
	eventAt    atomic.Int64 // unix ns when the failure scenario started
	lastErrAt  atomic.Int64 // unix ns of the last error after it
	mu         sync.Mutex
	hist       *hdrhistogram.Histogram // merged from the workers'
	during     chan string             // the failure scenario's outcome
	timeline   []float64               // ops per second of the window, by the watcher
	watchDone  chan struct{}
}

func newRun(ctx context.Context, o Options) *run {
	r := &run{o: o, during: make(chan string, 1), watchDone: make(chan struct{})}
	now := time.Now()
	r.start = now.Add(o.Warmup)
	r.end = r.start.Add(o.Duration)
	// The context ends a little after the window, so that a worker blocked
	// in a read past the end is woken.
	r.ctx, r.cancel = context.WithDeadline(ctx, r.end.Add(2*time.Second))
	r.hist = newHist()
	go r.watch()
	return r
}

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, 60_000_000, 3) }

// over says the run is done: its window passed, MaxOps completed, or the
// context ended.
func (r *run) over() bool {
	return time.Now().After(r.end) || r.ops.Load() >= r.o.MaxOps || r.ctx.Err() != nil
}

// measuring says t falls in the window.
func (r *run) measuring(t time.Time) bool { return !t.Before(r.start) && !t.After(r.end) }

// done counts one completed operation at t, and its latency if h is set.
func (r *run) done(t time.Time, h *hdrhistogram.Histogram, latency time.Duration) {
	if !r.measuring(t) {
		return
	}
	r.ops.Add(1)
	if h != nil {
		h.RecordValue(max(latency.Microseconds(), 1))
	}
}

// Kinds of failure.
const (
	failOther = iota
	failConnect
	failReset
	failBroken
	failKinds
)

// classify says what kind of failure err is.
func classify(err error) int {
	switch {
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		return failReset
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, errMismatch):
		return failBroken
	}
	return failOther
}

var errMismatch = errors.New("bench: the reply differs from the request")

// failed counts an error of kind at t, inside the window.
func (r *run) failed(t time.Time, kind int) {
	if !r.measuring(t) {
		return
	}
	r.errs.Add(1)
	r.kinds[kind].Add(1)
	if ev := r.eventAt.Load(); ev != 0 && t.UnixNano() > ev {
		for {
			last := r.lastErrAt.Load()
			if t.UnixNano() <= last || r.lastErrAt.CompareAndSwap(last, t.UnixNano()) {
				break
			}
		}
	}
}

// merge adds a worker's histogram.
func (r *run) merge(h *hdrhistogram.Histogram) {
	r.mu.Lock()
	r.hist.Merge(h)
	r.mu.Unlock()
}

// watch reports progress about once a second and starts the failure
// scenario at half the window.
func (r *run) watch() {
	defer close(r.watchDone)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	mid := time.NewTimer(time.Until(r.start.Add(r.o.Duration / 2)))
	defer mid.Stop()
	if r.o.During == nil {
		mid.Stop()
	}
	last, lastT := int64(0), time.Now()
	lastOps := int64(0) // at the previous tick inside the window
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-mid.C:
			r.eventAt.Store(time.Now().UnixNano())
			go func() {
				if err := r.o.During(r.ctx); err != nil {
					r.during <- "failed: " + err.Error()
					r.cancel()
					return
				}
				r.during <- "done"
			}()
		case now := <-tick.C:
			// A tick within half a second of the window's start would
			// record a sliver of a second: the first second then runs to
			// the next tick.
			if now.After(r.start.Add(500 * time.Millisecond)) {
				ops := r.ops.Load()
				r.timeline = append(r.timeline, float64(ops-lastOps))
				lastOps = ops
			}
			if r.o.Progress != nil {
				ops := r.ops.Load()
				elapsed := max(now.Sub(r.start), 0)
				r.o.Progress(Progress{Elapsed: elapsed, Total: r.o.Duration, Ops: ops, Errors: r.errs.Load(),
					Rate: float64(ops-last) / now.Sub(lastT).Seconds()})
				last, lastT = ops, now
			}
			if now.After(r.end) {
				return
			}
		}
	}
}

// finish stops the clock and fills what every scenario reports.
func (r *run) finish(res *Result, latency bool) *Result {
	end := time.Now()
	if end.After(r.end) {
		end = r.end
	}
	r.cancel()
	<-r.watchDone
	res.Duration = max(end.Sub(r.start), time.Millisecond)
	res.Ops, res.Errors, res.Bytes = r.ops.Load(), r.errs.Load(), r.bytes.Load()
	res.FailedConnects, res.Resets, res.Broken = r.kinds[failConnect].Load(), r.kinds[failReset].Load(), r.kinds[failBroken].Load()
	if ev, last := r.eventAt.Load(), r.lastErrAt.Load(); ev != 0 && last > ev {
		res.RecoverySeconds = time.Duration(last - ev).Seconds()
	}
	select {
	case d := <-r.during:
		res.DuringResult = d
	default:
		if r.o.During != nil {
			res.DuringResult = "did not run"
		}
	}
	res.Timeline = r.timeline
	if latency && r.hist.TotalCount() > 0 {
		h := r.hist
		for _, q := range []float64{0, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100} {
			res.Percentiles = append(res.Percentiles, PercentilePoint{q, float64(h.ValueAtQuantile(q))})
		}
		res.Latency = &Latency{
			P50: float64(h.ValueAtQuantile(50)), P90: float64(h.ValueAtQuantile(90)),
			P99: float64(h.ValueAtQuantile(99)), P999: float64(h.ValueAtQuantile(99.9)),
			Max: float64(h.Max()), Mean: h.Mean(),
		}
	}
	return res
}

// pacer gives one worker its open-loop schedule: with a rate, each request
// is due interval after the one before, whether or not that one was late.
// Without a rate, every request is due when it is sent (closed loop).
type pacer struct {
	interval time.Duration
	next     time.Time
	timer    *time.Timer // reused: a request costs no timer of its own
}

func newPacer(o Options) pacer {
	if o.Rate <= 0 {
		return pacer{}
	}
	iv := time.Duration(float64(time.Second) * float64(o.Connections) / o.Rate)
	return pacer{interval: iv, next: time.Now()}
}

// wait sleeps until the next request is due (returning false if the run
// ends first) and returns the time it was due, from which its latency
// counts.
func (p *pacer) wait(r *run) (time.Time, bool) {
	if p.interval == 0 {
		return time.Now(), !r.over()
	}
	due := p.next
	p.next = p.next.Add(p.interval)
	if d := time.Until(due); d > 0 {
		if p.timer == nil {
			p.timer = time.NewTimer(d)
		} else {
			p.timer.Reset(d)
		}
		select {
		case <-p.timer.C:
		case <-r.ctx.Done():
			p.timer.Stop()
			return due, false
		}
	}
	return due, !r.over()
}
