package bench

import (
	"encoding/json"
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
			row("connections/s", "%.0f (%d)", r.Rate, r.Ops)
		case UDPPPS:
			row("sent", "%.0f datagrams/s (%d)", float64(r.Sent)/r.Duration.Seconds(), r.Sent)
			row("replies", "%.0f datagrams/s (%d)", float64(r.Received)/r.Duration.Seconds(), r.Received)
		default:
			row("requests/s", "%.0f (%d)", r.Rate, r.Ops)
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

func us(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.2f ms", v/1000)
	}
	return fmt.Sprintf("%.0f us", v)
}
