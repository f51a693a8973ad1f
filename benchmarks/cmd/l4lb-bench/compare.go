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
	udp         []udpContender // nil: no UDP comparison
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
	{bench.TCPRR, false, 64}, // keep-alive requests over 64 connections
}

// comparison is what compare writes as JSON.
type comparison struct {
	Protocol   string                                      `json:"protocol"` // tcp or udp
	Machine    machine                                     `json:"machine"`
	Rounds     int                                         `json:"rounds"`
	Note       string                                      `json:"note"`
	Contenders []string                                    `json:"contenders"`
	Results    map[string]map[bench.Scenario]*bench.Result `json:"results"` // contender → scenario → median round
	UDP        *comparison                                 `json:"udp,omitempty"`
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
	echo, sink, err := startTargets()
	if err != nil {
		return err
	}
	defer echo.Close()
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
		Protocol: "tcp",
		Machine:  machine{CPUs: runtime.NumCPU(), Kernel: strings.TrimSpace(string(kernel)), Go: runtime.Version(), Date: time.Now().UTC().Format(time.RFC3339)},
		Rounds:   o.rounds,
		Note:     fmt.Sprintf("each figure is the median of %d rounds of %v; contenders run one at a time on loopback, rounds interleaved", o.rounds, o.duration),
		Results:  map[string]map[bench.Scenario]*bench.Result{},
	}
	var chosen []contender
	for _, c := range all {
		if strings.Contains(","+o.only+",", ","+c.name+",") {
			chosen = append(chosen, c)
		}
	}
	rounds := newRounds()
	for round := range o.rounds {
		for _, c := range chosen {
			echoAddr, sinkAddr, pids, stop, ok := c.run(echo, sink, dir)
			if !ok {
				continue
			}
			for _, sc := range compareScenarios {
				target := echoAddr
				if sc.sink {
					target = sinkAddr
				}
				conns := sc.conn
				if conns == 0 {
					conns = o.connections
				}
				rounds.add(c.name, sc.s, o.once(c.name, sc.s, target, conns, pids))
			}
			stop()
			fmt.Fprintf(os.Stderr, "%-16s round %d of %d done\n", c.name, round+1, o.rounds)
		}
	}
	for _, c := range chosen {
		rounds.median(&res, c.name)
	}
	if o.udp != nil {
		u, err := compareUDP(o, dir)
		if err != nil {
			return err
		}
		u.Machine = res.Machine
		res.UDP = u
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

// median runs scenario s against addr for o.rounds rounds and returns the
// median round, or nil if none ran; failed rounds are reported. Each round
// carries the CPU time that pids (the balancer's processes) and the whole
// machine used over it, warm-up included, as its ops are.
// once runs one round of scenario s against addr, with the CPU that the
// contender's processes and the machine spent meanwhile; nil if it failed.
func (o compareOptions) once(who string, s bench.Scenario, addr string, conns int, pids []int) *bench.Result {
	p0, m0 := procCPU(pids), machineCPU()
	r, err := bench.Run(context.Background(), s, bench.Options{Addr: addr, Duration: o.duration,
		Warmup: 300 * time.Millisecond, Connections: conns})
	p1, m1 := procCPU(pids), machineCPU()
	if err != nil {
		fmt.Fprintf(os.Stderr, "l4lb-bench: %s, %s: %v\n", who, s, err)
		return nil
	}
	// The warm-up's ops are not counted, so neither is its CPU: the
	// window's share of it is.
	share := r.Duration.Seconds() / (r.Duration.Seconds() + 0.3)
	r.ProcCPU, r.MachineCPU = (p1-p0)*share, (m1-m0)*share
	return r
}

// roundResults collects each contender's rounds per scenario. Rounds are
// interleaved (round 1 of every contender, then round 2, ...), so a slow
// minute of this shared machine falls on every contender's figures alike
// rather than on one contender's all.
type roundResults map[string]map[bench.Scenario][]*bench.Result

func newRounds() roundResults { return roundResults{} }

func (rr roundResults) add(who string, s bench.Scenario, r *bench.Result) {
	if r == nil {
		return
	}
	if rr[who] == nil {
		rr[who] = map[bench.Scenario][]*bench.Result{}
	}
	rr[who][s] = append(rr[who][s], r)
}

// median puts who's median round of each scenario into res.
func (rr roundResults) median(res *comparison, who string) {
	if len(rr[who]) == 0 {
		return
	}
	res.Results[who] = map[bench.Scenario]*bench.Result{}
	for s, rs := range rr[who] {
		res.Results[who][s] = medianResult(rs)
	}
	res.Contenders = append(res.Contenders, who)
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
	{"balancer CPU per 1000 new connections, ms", bench.TCPConnect, func(r *bench.Result) float64 { return perThousand(r.ProcCPU, r.Ops) }, false},
	{"balancer CPU per 1000 requests, ms", bench.TCPRR, func(r *bench.Result) float64 { return perThousand(r.ProcCPU, r.Ops) }, false},
	{"balancer CPU per GB, one stream, s", bench.TCPThroughput, func(r *bench.Result) float64 { return perGB(r.ProcCPU, r.Bytes) }, false},
	{"machine CPU per 1000 new connections, ms", bench.TCPConnect, func(r *bench.Result) float64 { return perThousand(r.MachineCPU, r.Ops) }, false},
	{"machine CPU per 1000 requests, ms", bench.TCPRR, func(r *bench.Result) float64 { return perThousand(r.MachineCPU, r.Ops) }, false},
	{"machine CPU per GB, one stream, s", bench.TCPThroughput, func(r *bench.Result) float64 { return perGB(r.MachineCPU, r.Bytes) }, false},
}

func lat(r *bench.Result) bench.Latency {
	if r.Latency == nil {
		return bench.Latency{}
	}
	return *r.Latency
}

var udpMetrics = []metric{
	{"requests/s, 16 sockets", bench.UDPRR, func(r *bench.Result) float64 { return r.Rate }, true},
	{"request p50, us", bench.UDPRR, func(r *bench.Result) float64 { return lat(r).P50 }, false},
	{"request p99, us", bench.UDPRR, func(r *bench.Result) float64 { return lat(r).P99 }, false},
	{"datagrams replied/s, 4 senders flooding", bench.UDPPPS, func(r *bench.Result) float64 {
		return float64(r.Received) / r.Duration.Seconds()
	}, true},
	{"balancer CPU per 1000 requests, ms", bench.UDPRR, func(r *bench.Result) float64 { return perThousand(r.ProcCPU, r.Ops) }, false},
	{"machine CPU per 1000 requests, ms", bench.UDPRR, func(r *bench.Result) float64 { return perThousand(r.MachineCPU, r.Ops) }, false},
}

// metrics are the figures of c's protocol, and its contenders' peers: the
// proxies (the socket path's peers) and every peer (the kernel path's).
func (c *comparison) metrics() (ms []metric, proxies, peers []string) {
	if c.Protocol == "udp" {
		return udpMetrics, []string{"nginx"}, []string{"nginx"}
	}
	return compareMetrics, []string{"haproxy", "nginx"}, []string{"haproxy", "nginx", "nftables"}
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
	if c.Protocol == "udp" {
		fmt.Fprintf(w, "\n\n| metric |")
	} else {
		fmt.Fprintf(w, "\n%s\n\n| metric |", c.Note)
	}
	for _, n := range c.Contenders {
		fmt.Fprintf(w, " %s |", n)
	}
	fmt.Fprintf(w, " l4lb / best proxy | l4lb / direct | l4lb-kernel / best peer | l4lb-kernel / direct |\n|---|")
	for range c.Contenders {
		fmt.Fprint(w, "---|")
	}
	fmt.Fprintln(w, "---|---|---|---|")
	ms, proxies, peers := c.metrics()
	for _, m := range ms {
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
		proxy, peer := best(proxies...), best(peers...)
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
	fmt.Fprintln(w, "\nRatios of latencies and of CPU costs: lower is better. The balancer's CPU is its processes' user and system time; the machine's includes the load generator, the targets and softirq, so a balancer's whole cost is its figure less direct's.")
	if c.Protocol == "tcp" {
		defer fmt.Fprintf(w, "\nThe contenders' own output: %s\n", logDir)
	}
	if c.UDP != nil {
		fmt.Fprintf(w, "\nUDP (%s)", c.UDP.Note)
		c.UDP.table(w)
	}
}

// plots writes a bar chart per rate and one of the request latency
// percentiles, as SVG and PNG.
func (c *comparison) plots(dir string) error {
	if c.UDP != nil {
		if err := c.UDP.plots(dir); err != nil {
			return err
		}
	}
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
	if c.Protocol == "udp" {
		if err := bars("udp-requests", "UDP requests per second, 16 sockets", "requests/s", udpMetrics[0]); err != nil {
			return err
		}
		return bars("udp-pps", "UDP datagrams replied per second, 4 senders flooding", "datagrams/s", udpMetrics[3])
	}
	for _, b := range []struct {
		file, title, ylabel string
		m                   metric
	}{
		{"throughput", "TCP throughput, one stream", "Gbit/s", compareMetrics[0]},
		{"connections", "New TCP connections per second", "connections/s", compareMetrics[1]},
		{"requests", "Requests per second on persistent connections", "requests/s", compareMetrics[3]},
		{"cpu-connections", "Balancer CPU per 1000 new connections (lower is better)", "ms", compareMetrics[7]},
		{"cpu-requests", "Balancer CPU per 1000 requests (lower is better)", "ms", compareMetrics[8]},
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
	for i, m := range compareMetrics[4:7] { // p50, p99, p99.9
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

// udpContender is a way to reach the UDP echo target.
type udpContender struct {
	name  string
	start func(echo, dir string) (addr string, pids []int, stop func(), err error)
}

// udpContenders are direct, nginx's stream proxy and l4lb's two UDP paths.
func udpContenders(bin, nginx string) []udpContender {
	l4lb := func(port int, kernel bool) func(echo, dir string) (string, []int, func(), error) {
		return func(echo, dir string) (string, []int, func(), error) {
			extra, attrs := "", ""
			if kernel {
				extra = "load_balancer: {udp_fast_path: true, udp_fast_path_interfaces: [lo]}\n"
				attrs = `, attributes: {preserve_client_ip.enabled: "true"}`
			}
			cfg := fmt.Sprintf("admin: {listen: \"off\"}\n%slisteners:\n  - {name: echo, protocol: UDP, port: %d, bind: [127.0.0.1], target_group: echo}\n"+
				"target_groups:\n  - {name: echo, protocol: UDP, targets: [{address: %q}]%s}\n", extra, port, echo, attrs)
			need := ""
			if kernel {
				need = "UDP listener forwarded in the kernel"
			}
			pid, stop, err := serveL4LB(bin, dir, fmt.Sprintf("l4lb-udp-%d", port), cfg, need)
			if err != nil {
				return "", nil, nil, err
			}
			return fmt.Sprintf("127.0.0.1:%d", port), []int{pid}, stop, nil
		}
	}
	return []udpContender{
		{"direct", func(string, string) (string, []int, func(), error) { return "", nil, func() {}, nil }},
		{"nginx", func(echo, dir string) (string, []int, func(), error) { return startNginxUDP(nginx, echo, dir) }},
		{"l4lb", l4lb(port(440), false)},
		{"l4lb-kernel", l4lb(port(441), true)},
	}
}

// startNginxUDP runs nginx's stream proxy for UDP: two workers, reuseport.
func startNginxUDP(bin, echo, dir string) (string, []int, func(), error) {
	mod := ""
	if _, err := os.Stat("/usr/lib/nginx/modules/ngx_stream_module.so"); err == nil {
		mod = "load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
	}
	cfg := fmt.Sprintf(`%s
worker_processes 2;
pid %[2]s/nginx-udp.pid;
error_log %[2]s/nginx-udp-error.log warn;
daemon off;
events { worker_connections 8000; }
stream { server { listen 127.0.0.1:%[4]d udp reuseport; proxy_pass %[3]s; proxy_timeout 10s; } }
`, mod, dir, echo, port(430))
	path := filepath.Join(dir, "nginx-udp.conf")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return "", nil, nil, err
	}
	cmd := exec.Command(bin, "-c", path, "-e", filepath.Join(dir, "nginx-udp-error.log"))
	if err := cmd.Start(); err != nil {
		return "", nil, nil, err
	}
	time.Sleep(500 * time.Millisecond)
	return fmt.Sprintf("127.0.0.1:%d", port(430)), withChildren(cmd.Process.Pid), func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	}, nil
}

// compareUDP runs the UDP scenarios against the UDP contenders.
func compareUDP(o compareOptions, dir string) (*comparison, error) {
	echo, err := bench.StartTarget(bench.TargetEcho, "udp", "127.0.0.1:0", 0)
	if err != nil {
		return nil, err
	}
	defer echo.Close()
	res := &comparison{Protocol: "udp", Rounds: o.rounds, Results: map[string]map[bench.Scenario]*bench.Result{},
		Note: fmt.Sprintf("each figure is the median of %d rounds of %v; contenders run one at a time on loopback, rounds interleaved", o.rounds, o.duration)}
	rounds := newRounds()
	for round := range o.rounds {
		for _, c := range o.udp {
			addr, pids, stop, err := c.start(echo.Addr.String(), dir)
			if err != nil {
				fmt.Fprintf(os.Stderr, "l4lb-bench: UDP %s left out: %v\n", c.name, err)
				continue
			}
			if addr == "" {
				addr = echo.Addr.String()
			}
			for _, sc := range []scenarioRun{{bench.UDPRR, false, 16}, {bench.UDPPPS, false, 4}} {
				rounds.add(c.name, sc.s, o.once("UDP "+c.name, sc.s, addr, sc.conn, pids))
			}
			stop()
			fmt.Fprintf(os.Stderr, "UDP %-12s round %d of %d done\n", c.name, round+1, o.rounds)
		}
	}
	for _, c := range o.udp {
		rounds.median(res, c.name)
	}
	return res, nil
}
