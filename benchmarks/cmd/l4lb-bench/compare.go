package main

import (
	"context"
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/l4lb/l4lb/bench"
)

// compareOptions shape a comparison run.
type compareOptions struct {
	out         string // directory for the JSON and the plots
	rounds      int
	duration    time.Duration
	connections int
	only        string
}

// scenarioRun is one scenario of the comparison, against the echo or the
// sink target.
type scenarioRun struct {
	s    bench.Scenario
	sink bool
	conn int // connections (0: the run's)
}

var compareScenarios = []scenarioRun{
	{bench.TCPThroughput, true, 1},
	{bench.TCPConnect, false, 0},
	{bench.TCPRR, false, 0},
}

// comparison is what compare writes as JSON.
type comparison struct {
	Machine    machine                                     `json:"machine"`
	Rounds     int                                         `json:"rounds"`
	Note       string                                      `json:"note"`
	Contenders []string                                    `json:"contenders"`
	Results    map[string]map[bench.Scenario]*bench.Result `json:"results"` // contender → scenario → median round
}

type machine struct {
	CPUs   int    `json:"cpus"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
	Date   string `json:"date"`
}

// compare runs the same scenarios (l4lb's own load generator, package
// bench) against every contender, one contender at a time, and writes the
// table, compare.json and the plots.
func compare(all []contender, o compareOptions, w io.Writer) error {
	echo, err := bench.StartTarget(bench.TargetEcho, "tcp", "127.0.0.1:0", 0)
	if err != nil {
		return err
	}
	defer echo.Close()
	sink, err := bench.StartTarget(bench.TargetSink, "tcp", "127.0.0.1:0", 0)
	if err != nil {
		return err
	}
	defer sink.Close()
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "l4lb-bench-compare")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	kernel, _ := exec.Command("uname", "-r").Output()
	res := comparison{
		Machine: machine{CPUs: runtime.NumCPU(), Kernel: strings.TrimSpace(string(kernel)), Go: runtime.Version(), Date: time.Now().UTC().Format(time.RFC3339)},
		Rounds:  o.rounds,
		Note:    fmt.Sprintf("each figure is the median of %d rounds of %v; contenders run one at a time on loopback", o.rounds, o.duration),
		Results: map[string]map[bench.Scenario]*bench.Result{},
	}
	for _, c := range all {
		if !strings.Contains(","+o.only+",", ","+c.name+",") {
			continue
		}
		addr, _, stop, err := c.start(echo.Addr.String(), sink.Addr.String(), dir)
		if err != nil {
			fmt.Fprintf(os.Stderr, "l4lb-bench: %s left out: %v\n", c.name, err)
			continue
		}
		echoAddr, sinkAddr := echo.Addr.String(), sink.Addr.String()
		if addr != "" {
			echoAddr, sinkAddr = addr, bump(addr)
			if !waitListening(echoAddr) || !waitListening(sinkAddr) {
				stop()
				fmt.Fprintf(os.Stderr, "l4lb-bench: %s left out: nothing answers on %s\n", c.name, addr)
				continue
			}
		}
		res.Results[c.name] = map[bench.Scenario]*bench.Result{}
		for _, sc := range compareScenarios {
			target := echoAddr
			if sc.sink {
				target = sinkAddr
			}
			conns := sc.conn
			if conns == 0 {
				conns = o.connections
			}
			var rounds []*bench.Result
			for range o.rounds {
				r, err := bench.Run(context.Background(), sc.s, bench.Options{Addr: target, Duration: o.duration,
					Warmup: 300 * time.Millisecond, Connections: conns})
				if err != nil {
					fmt.Fprintf(os.Stderr, "l4lb-bench: %s, %s: %v\n", c.name, sc.s, err)
					continue
				}
				rounds = append(rounds, r)
			}
			if len(rounds) > 0 {
				res.Results[c.name][sc.s] = medianResult(rounds)
			}
		}
		stop()
		res.Contenders = append(res.Contenders, c.name)
		fmt.Fprintf(os.Stderr, "%-14s done\n", c.name)
	}
	res.table(w)
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, "compare.json"), b, 0o644); err != nil {
		return err
	}
	return res.plots(o.out)
}

// rerender prints the table and writes the plots of a comparison that
// compare wrote before (its compare.json), into the same directory.
func rerender(path string, w io.Writer) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var c comparison
	if err := json.Unmarshal(b, &c); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	c.table(w)
	return c.plots(filepath.Dir(path))
}

// medianResult is the round whose rate is the median.
func medianResult(rs []*bench.Result) *bench.Result {
	slices.SortFunc(rs, func(a, b *bench.Result) int {
		switch {
		case a.Rate < b.Rate:
			return -1
		case a.Rate > b.Rate:
			return 1
		}
		return 0
	})
	return rs[len(rs)/2]
}

// metric is one figure of the table and the plots.
type metric struct {
	name         string
	s            bench.Scenario
	get          func(*bench.Result) float64
	higherBetter bool
}

var compareMetrics = []metric{
	{"throughput, one stream, Gbit/s", bench.TCPThroughput, func(r *bench.Result) float64 { return r.Gbps }, true},
	{"new connections/s", bench.TCPConnect, func(r *bench.Result) float64 { return r.Rate }, true},
	{"connect+exchange p99, us", bench.TCPConnect, func(r *bench.Result) float64 { return lat(r).P99 }, false},
	{"requests/s, persistent connections", bench.TCPRR, func(r *bench.Result) float64 { return r.Rate }, true},
	{"request p50, us", bench.TCPRR, func(r *bench.Result) float64 { return lat(r).P50 }, false},
	{"request p99, us", bench.TCPRR, func(r *bench.Result) float64 { return lat(r).P99 }, false},
	{"request p99.9, us", bench.TCPRR, func(r *bench.Result) float64 { return lat(r).P999 }, false},
}

func lat(r *bench.Result) bench.Latency {
	if r.Latency == nil {
		return bench.Latency{}
	}
	return *r.Latency
}

// value is a contender's figure for m, 0 when it has none.
func (c *comparison) value(name string, m metric) float64 {
	if r := c.Results[name][m.s]; r != nil {
		return m.get(r)
	}
	return 0
}

// table prints every figure, and the ratios of l4lb's paths to their best
// peer and to direct: the socket path's peers are the proxies (HAProxy,
// nginx), the kernel path's every other contender but direct.
func (c *comparison) table(w io.Writer) {
	fmt.Fprintf(w, "\n%s\n\n| metric |", c.Note)
	for _, n := range c.Contenders {
		fmt.Fprintf(w, " %s |", n)
	}
	fmt.Fprintf(w, " l4lb / best proxy | l4lb / direct | l4lb-kernel / best peer | l4lb-kernel / direct |\n|---|")
	for range c.Contenders {
		fmt.Fprint(w, "---|")
	}
	fmt.Fprintln(w, "---|---|---|---|")
	for _, m := range compareMetrics {
		fmt.Fprintf(w, "| %s |", m.name)
		for _, n := range c.Contenders {
			fmt.Fprintf(w, " %.1f |", c.value(n, m))
		}
		best := func(peers ...string) float64 {
			b := 0.0
			for _, p := range peers {
				v := c.value(p, m)
				if v != 0 && (b == 0 || (m.higherBetter && v > b) || (!m.higherBetter && v < b)) {
					b = v
				}
			}
			return b
		}
		proxy, peer := best("haproxy", "nginx"), best("haproxy", "nginx", "nftables")
		ratio := func(a, b float64) string {
			if a == 0 || b == 0 {
				return "-"
			}
			return fmt.Sprintf("%.2fx", a/b)
		}
		direct := c.value("direct", m)
		fmt.Fprintf(w, " %s | %s | %s | %s |\n", ratio(c.value("l4lb", m), proxy), ratio(c.value("l4lb", m), direct),
			ratio(c.value("l4lb-kernel", m), peer), ratio(c.value("l4lb-kernel", m), direct))
	}
	fmt.Fprintln(w, "\nRatios of latencies: lower is better.")
}

// plots writes a bar chart per rate and one of the request latency
// percentiles, as SVG and PNG.
func (c *comparison) plots(dir string) error {
	bars := func(file, title, ylabel string, m metric) error {
		p := plot.New()
		p.Title.Text = title
		p.Y.Label.Text = ylabel
		var vals plotter.Values
		for _, n := range c.Contenders {
			vals = append(vals, c.value(n, m))
		}
		b, err := plotter.NewBarChart(vals, vg.Points(28))
		if err != nil {
			return err
		}
		p.Add(b)
		p.NominalX(c.Contenders...)
		return save(p, dir, file)
	}
	for _, b := range []struct {
		file, title, ylabel string
		m                   metric
	}{
		{"throughput", "TCP throughput, one stream", "Gbit/s", compareMetrics[0]},
		{"connections", "New TCP connections per second", "connections/s", compareMetrics[1]},
		{"requests", "Requests per second on persistent connections", "requests/s", compareMetrics[3]},
	} {
		if err := bars(b.file, b.title, b.ylabel, b.m); err != nil {
			return err
		}
	}
	// Latency percentiles, grouped by contender.
	p := plot.New()
	p.Title.Text = "Request latency on persistent connections"
	p.Y.Label.Text = "microseconds"
	const w = 12
	for i, m := range compareMetrics[4:] {
		var vals plotter.Values
		for _, n := range c.Contenders {
			vals = append(vals, c.value(n, m))
		}
		b, err := plotter.NewBarChart(vals, vg.Points(w))
		if err != nil {
			return err
		}
		b.Offset = vg.Points(float64(i-1) * w)
		b.Color = []color.Color{color.RGBA{0x1f, 0x77, 0xb4, 0xff}, color.RGBA{0xff, 0x7f, 0x0e, 0xff}, color.RGBA{0x2c, 0xa0, 0x2c, 0xff}}[i]
		p.Add(b)
		p.Legend.Add(strings.TrimSuffix(strings.TrimPrefix(m.name, "request "), ", us"), b)
	}
	p.Legend.Top = true
	p.Y.Max *= 1.3 // room for the legend
	p.NominalX(c.Contenders...)
	return save(p, dir, "latency")
}

// save writes a plot as SVG (for the README) and PNG.
func save(p *plot.Plot, dir, name string) error {
	for _, ext := range []string{".svg", ".png"} {
		if err := p.Save(8*vg.Inch, 4*vg.Inch, filepath.Join(dir, name+ext)); err != nil {
			return err
		}
	}
	return nil
}
