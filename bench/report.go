package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// WriteJSON writes results as a JSON array.
func WriteJSON(w io.Writer, rs ...*Result) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(rs)
}

// WriteTable writes each result as a two-column table: what was measured,
// and how much.
func WriteTable(w io.Writer, rs ...*Result) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for i, r := range rs {
		if i > 0 {
			fmt.Fprintln(tw)
		}
		row := func(k, format string, v ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, v...)...) }
		row("scenario", "%s -> %s", r.Scenario, r.Addr)
		if r.Scenario == IdleConns {
			row("connections held", "%d", r.Held)
			row("RSS before / after", "%d KiB / %d KiB", r.RSSBeforeKB, r.RSSAfterKB)
			row("memory per connection", "%.2f KiB", r.KBPerConn)
			row("errors", "%d", r.Errors)
			continue
		}
		mode := "closed loop"
		if r.TargetRate > 0 {
			mode = fmt.Sprintf("open loop at %.0f/s", r.TargetRate)
		}
		row("measured", "%v, %d connections, %d-byte payload, %s", r.Duration.Round(time.Millisecond), r.Connections, r.Size, mode)
		switch r.Scenario {
		case TCPThroughput:
			row("throughput", "%.2f Gbit/s (%d bytes)", r.Gbps, r.Bytes)
		case TCPConnect:
			row("connections/s", "%.0f (%d connections in all)", r.Rate, r.Ops)
		case UDPPPS:
			row("sent", "%.0f datagrams/s (%d in all)", float64(r.Sent)/r.Duration.Seconds(), r.Sent)
			row("replies", "%.0f datagrams/s (%d in all)", float64(r.Received)/r.Duration.Seconds(), r.Received)
		default:
			row("requests/s", "%.0f (%d requests in all)", r.Rate, r.Ops)
		}
		if l := r.Latency; l != nil {
			row("latency p50 / p90 / p99 / p99.9", "%s / %s / %s / %s", us(l.P50), us(l.P90), us(l.P99), us(l.P999))
			row("latency mean / max", "%s / %s", us(l.Mean), us(l.Max))
		}
		row("errors", "%d", r.Errors)
		if r.Errors > 0 || r.DuringResult != "" {
			row("failed connects / resets / broken", "%d / %d / %d", r.FailedConnects, r.Resets, r.Broken)
		}
		if r.DuringResult != "" {
			row("failure scenario", "%s; recovered %.2f s after it started", r.DuringResult, r.RecoverySeconds)
		}
	}
	return tw.Flush()
}

// Failed says why a run failed when none of its operations succeeded (no
// request answered, no connection held, no byte or reply carried), or nil.
// noVerify says replies were not compared with requests.
func (r *Result) Failed(noVerify bool) error {
	var worked bool
	switch r.Scenario {
	case IdleConns:
		worked = r.Held > 0
	case UDPPPS:
		worked = r.Received > 0 || r.Sent == 0
	case TCPThroughput:
		worked = r.Bytes > 0
	default:
		worked = r.Ops > 0
	}
	if worked || r.Errors == 0 && r.Sent == 0 {
		return nil
	}
	msg := fmt.Sprintf("every operation against %s failed: %d errors (%d failed connects, %d resets, %d broken)",
		r.Addr, r.Errors, r.FailedConnects, r.Resets, r.Broken)
	switch {
	case r.Scenario == UDPPPS:
		msg = fmt.Sprintf("%d datagrams sent to %s and no reply: is it an echo target (l4lb bench target echo --listen udp://...)?", r.Sent, r.Addr)
	case r.FailedConnects == r.Errors:
		msg += ": nothing accepts connections there"
	case r.Broken > 0 && r.Scenario == IdleConns:
		msg += ": no connection echoed its byte: idle-conns needs an echo target (l4lb bench target echo)"
	case r.Broken > 0 && !noVerify:
		msg += ": the replies did not match the requests: is it an echo target (l4lb bench target echo)? --no-verify accepts any reply"
	}
	return errors.New(msg)
}

func us(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.2f ms", v/1000)
	}
	return fmt.Sprintf("%.0f us", v)
}
