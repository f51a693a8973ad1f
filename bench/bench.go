// Package bench is l4lb's load generator: the scenarios of `l4lb bench`,
// run against any TCP or UDP address (l4lb, HAProxy, nginx, a target
// itself), and the echo, sink and request/response targets of
// `l4lb bench target` to run them against.
//
//	res, err := bench.Run(ctx, bench.TCPRR, bench.Options{Addr: "127.0.0.1:8080", Duration: 10 * time.Second, Connections: 16})
//	bench.WriteTable(os.Stdout, res)
//
// Every scenario is bounded twice: by its duration (plus warm-up) and by
// MaxOps operations. With Rate set, load is open-loop: each connection
// sends on a fixed schedule, and latency is measured from when a request
// was due, not from when it could be sent, so a stall shows in the
// percentiles instead of hiding in fewer samples (coordinated omission
// corrected, as wrk2 does).
package bench

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Scenario names a load pattern.
type Scenario string

// The scenarios.
const (
	TCPThroughput Scenario = "tcp-throughput" // stream Size-byte writes to a sink
	TCPConnect    Scenario = "tcp-connect"    // connect, Size bytes each way, close
	TCPRR         Scenario = "tcp-rr"         // request/response on persistent connections
	UDPRR         Scenario = "udp-rr"         // datagram request/response
	UDPPPS        Scenario = "udp-pps"        // datagrams as fast as they go, replies counted
	IdleConns     Scenario = "idle-conns"     // hold connections, read a process's memory
)

// Scenarios lists every scenario, in the order the CLI shows them.
var Scenarios = []Scenario{TCPThroughput, TCPConnect, TCPRR, UDPRR, UDPPPS, IdleConns}

// Options shape a run.
type Options struct {
	Addr        string        // host:port to load
	Duration    time.Duration // measured time (default 10 s)
	Warmup      time.Duration // load before measuring, not counted (default 1 s; 0 keeps it, negative skips)
	Connections int           // concurrent connections or sockets (default 16; idle-conns: how many to hold)
	Rate        float64       // requests per second over all connections (rr, connect); 0 is closed-loop
	Size        int           // payload bytes (default 64; tcp-throughput: 128 KiB)
	MaxOps      int64         // operations at most (default 100 million)
	PID         int           // idle-conns: the process whose memory is read
	Settle      time.Duration // idle-conns: wait before reading memory (default 5 s)
	// Progress, if set, hears the running totals about once a second.
	Progress func(Progress)
	// During, if set, runs at half the measured time (a failure scenario);
	// its error ends the run.
	During func(context.Context) error
	// NoVerify skips comparing each reply with its request (for targets
	// that do not echo, such as rr); only lengths are checked then.
	NoVerify bool
}

// Progress is a run's state while it goes.
type Progress struct {
	Elapsed, Total time.Duration
	Ops, Errors    int64
	Rate           float64 // operations per second in the last interval
}

// Result is what a run measured.
type Result struct {
	Scenario    Scenario      `json:"scenario"`
	Addr        string        `json:"addr"`
	Duration    time.Duration `json:"duration_ns"`
	Connections int           `json:"connections"`
	Size        int           `json:"size"`
	TargetRate  float64       `json:"target_rate,omitempty"` // open-loop rate asked for
	Ops         int64         `json:"ops"`                   // requests, connections or datagrams completed
	Rate        float64       `json:"rate"`                  // Ops per second
	Bytes       int64         `json:"bytes,omitempty"`       // payload moved (throughput)
	Gbps        float64       `json:"gbps,omitempty"`
	Sent        int64         `json:"sent,omitempty"`     // udp-pps: datagrams sent
	Received    int64         `json:"received,omitempty"` // udp-pps: replies
	Errors      int64         `json:"errors"`             // all of the below, and other failures
	// FailedConnects are connects that failed; Resets, exchanges that
	// ended in a reset; Broken, replies that did not match their request
	// (checksummed), came short, or timed out.
	FailedConnects int64 `json:"failed_connects"`
	Resets         int64 `json:"resets"`
	Broken         int64 `json:"broken"`
	// RecoverySeconds, with a failure scenario: from its start to the last
	// error after it (0: none after it).
	RecoverySeconds float64  `json:"recovery_seconds,omitempty"`
	Latency         *Latency `json:"latency_us,omitempty"`
	// idle-conns
	Held         int     `json:"held,omitempty"`
	RSSBeforeKB  int64   `json:"rss_before_kb,omitempty"`
	RSSAfterKB   int64   `json:"rss_after_kb,omitempty"`
	KBPerConn    float64 `json:"kb_per_conn,omitempty"`
	DuringResult string  `json:"during,omitempty"`
}

// Latency percentiles, in microseconds.
type Latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

func (o *Options) defaults(s Scenario) error {
	if o.Addr == "" {
		return errors.New("bench: no address")
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Second
	}
	switch {
	case o.Warmup == 0:
		o.Warmup = time.Second
	case o.Warmup < 0:
		o.Warmup = 0
	}
	if o.Connections <= 0 {
		o.Connections = 16
	}
	if o.Size <= 0 {
		o.Size = 64
		if s == TCPThroughput {
			o.Size = 128 << 10
		}
	}
	if o.Size > 64<<10 && (s == UDPRR || s == UDPPPS) {
		return fmt.Errorf("bench: %d-byte datagrams; at most 65507", o.Size)
	}
	if o.MaxOps <= 0 {
		o.MaxOps = 100_000_000
	}
	if o.Settle <= 0 {
		o.Settle = 5 * time.Second
	}
	if o.Rate < 0 {
		return errors.New("bench: a negative rate")
	}
	return nil
}

// Run runs one scenario until its duration has passed, MaxOps operations
// completed, or ctx ends.
func Run(ctx context.Context, s Scenario, o Options) (*Result, error) {
	if err := o.defaults(s); err != nil {
		return nil, err
	}
	var r *Result
	var err error
	switch s {
	case TCPThroughput:
		r, err = tcpThroughput(ctx, o)
	case TCPConnect:
		r, err = tcpConnect(ctx, o)
	case TCPRR:
		r, err = tcpRR(ctx, o)
	case UDPRR:
		r, err = udpRR(ctx, o)
	case UDPPPS:
		r, err = udpPPS(ctx, o)
	case IdleConns:
		r, err = idleConns(ctx, o)
	default:
		return nil, fmt.Errorf("bench: no scenario %q; one of %v", s, Scenarios)
	}
	if r != nil {
		r.Scenario, r.Addr, r.Connections, r.Size, r.TargetRate = s, o.Addr, o.Connections, o.Size, o.Rate
		if r.Duration > 0 {
			r.Rate = float64(r.Ops) / r.Duration.Seconds()
			if r.Bytes > 0 {
				r.Gbps = float64(r.Bytes) * 8 / r.Duration.Seconds() / 1e9
			}
		}
	}
	return r, err
}
