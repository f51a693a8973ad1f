// Command l4lb-bench measures l4lb against its peers on loopback, in one
// run, with the load generator of `l4lb bench` (package bench): HAProxy,
// nginx stream, the kernel's nftables NAT and a direct connection, for bulk
// throughput on one stream, new connections per second, request/response
// rate and p99 on persistent connections, and memory per idle proxied
// connection; UDP, DNS and TLS tests of their own; the comparison behind
// `make bench-compare` (-compare) and the agreement check against iperf3,
// wrk and redis-benchmark (-agreement). Every load loop is bounded in time
// and count; traffic stays on 127.0.0.1, in a network namespace of its
// own when it runs as root (-netns).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/l4lb/l4lb/bench"
)

type result struct {
	gbps, cps, rps, p99us, idleKB float64
}

func main() {
	bin := flag.String("l4lb", "bin/l4lb", "l4lb binary")
	haproxy := flag.String("haproxy", "haproxy", "haproxy binary")
	nginx := flag.String("nginx", "nginx", "nginx binary (with the stream module)")
	dur := flag.Duration("duration", 3*time.Second, "length of each timed test")
	conns := flag.Int("concurrency", 16, "client workers for the rate tests")
	idle := flag.Int("idle-conns", 3000, "idle connections for the memory test")
	settle := flag.Duration("idle-settle", 5*time.Second, "wait before reading the proxy's memory in the idle test")
	tests := flag.String("tests", "bulk,conn,rr,idle,dns,udp,tls,tls-flood,quic", "tests to run")
	only := flag.String("contenders", "direct,haproxy,nginx,nftables,l4lb,l4lb-goroutines,l4lb-kernel,l4lb+programs", "TCP contenders to run")
	tlsBulkBytes := flag.Int64("tls-bulk-bytes", 1<<30, "bytes sent through one terminated TLS connection")
	adminAddr := flag.String("l4lb-admin", "off", "admin address of the l4lb under test (for profiling)")
	flag.StringVar(&logDir, "logs", "benchmarks/results/logs", "where the contenders' own output goes, a file each")
	compareDir := flag.String("compare", "", "run the comparison (l4lb bench's scenarios against every contender) and write its JSON and plots here")
	rounds := flag.Int("rounds", 3, "comparison: rounds per figure (the median is reported)")
	from := flag.String("compare-from", "", "print the table and redraw the plots of an earlier comparison's compare.json")
	agree := flag.Bool("agreement", false, "check l4lb bench against iperf3, wrk and redis-benchmark on the same paths")
	netns := flag.Bool("netns", true, "run in a network namespace of its own (needs root and ip(8); else the host's loopback)")
	flag.Parse()
	if code, ran := runInOwnNetns(*netns && *from == ""); ran {
		os.Exit(code)
	}
	if *agree {
		if err := agreement(*bin, *nginx, *rounds, *dur, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "l4lb-bench:", err)
			os.Exit(1)
		}
		return
	}
	if *from != "" {
		if err := rerender(*from, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "l4lb-bench:", err)
			os.Exit(1)
		}
		return
	}
	if *compareDir != "" {
		o := compareOptions{out: *compareDir, rounds: *rounds, duration: *dur, connections: *conns, only: *only}
		if strings.Contains(","+*tests+",", ",udp,") {
			o.udp = udpContenders(*bin, *nginx)
		}
		if err := compare(tcpContenders(*bin, *haproxy, *nginx, *adminAddr), o, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "l4lb-bench:", err)
			os.Exit(1)
		}
		return
	}
	run := func(name string) bool { return strings.Contains(","+*tests+",", ","+name+",") }
	if run("udp") {
		if err := udpBench(*bin, *dur, 4); err != nil {
			fmt.Fprintln(os.Stderr, "l4lb-bench:", err)
			os.Exit(1)
		}
	}
	if run("quic") {
		if err := quicBench(*bin, *nginx, *dur, 8); err != nil {
			fmt.Fprintln(os.Stderr, "l4lb-bench:", err)
			os.Exit(1)
		}
	}
	if run("tls") {
		if err := tlsBench(*bin, *haproxy, *dur, *conns, *tlsBulkBytes); err != nil {
			fmt.Fprintln(os.Stderr, "l4lb-bench:", err)
			os.Exit(1)
		}
	}
	if run("tls-flood") {
		if err := tlsFloodBench(*bin, *haproxy, max(*dur, 8*time.Second)); err != nil {
			fmt.Fprintln(os.Stderr, "l4lb-bench:", err)
			os.Exit(1)
		}
	}
	if run("dns") {
		if err := dnsBench(*bin, *dur); err != nil {
			fmt.Fprintln(os.Stderr, "l4lb-bench:", err)
			os.Exit(1)
		}
	}
	if !run("bulk") && !run("conn") && !run("rr") && !run("idle") {
		return
	}

	echoT, sinkT, err := startTargets()
	if err != nil {
		fmt.Fprintln(os.Stderr, "l4lb-bench:", err)
		os.Exit(1)
	}
	defer echoT.Close()
	defer sinkT.Close()
	dir, _ := os.MkdirTemp("", "l4lb-bench")
	defer os.RemoveAll(dir)

	all := tcpContenders(*bin, *haproxy, *nginx, *adminAddr)
	var names []string
	results := map[string]result{}
	measure := func(s bench.Scenario, addr string, conns, size int) *bench.Result {
		res, err := bench.Run(context.Background(), s, bench.Options{Addr: addr, Duration: *dur, Warmup: 300 * time.Millisecond, Connections: conns, Size: size})
		if err != nil {
			fmt.Fprintf(os.Stderr, "l4lb-bench: %s: %v\n", s, err)
			return &bench.Result{}
		}
		return res
	}
	for _, c := range all {
		if !strings.Contains(","+*only+",", ","+c.name+",") {
			continue
		}
		echoAddr, sinkAddr, pids, stop, ok := c.run(echoT, sinkT, dir)
		if !ok {
			continue
		}
		var r result
		// Idle memory first, on a fresh process: garbage the other tests
		// leave behind (or free) would otherwise move its baseline. Only
		// a proxy holds a flow in a process.
		if c.kind == "proxy" && run("idle") {
			r.idleKB = idleTest(func() (net.Conn, error) { return net.Dial("tcp", echoAddr) }, pids, *idle, *settle)
		}
		if run("bulk") {
			r.gbps = measure(bench.TCPThroughput, sinkAddr, 1, 256<<10).Gbps
		}
		if run("conn") {
			r.cps = measure(bench.TCPConnect, echoAddr, *conns, 1).Rate
		}
		if run("rr") {
			rr := measure(bench.TCPRR, echoAddr, *conns, 64)
			r.rps = rr.Rate
			if rr.Latency != nil {
				r.p99us = rr.Latency.P99
			}
		}
		stop()
		results[c.name] = r
		names = append(names, c.name)
		fmt.Fprintf(os.Stderr, "%-12s done\n", c.name)
	}
	report(names, results)
}

// report prints every figure, each contender's ratio to direct, and l4lb's
// ratios to the best user-space peer (socket path) and to the kernel's own
// NAT (kernel path).
func report(names []string, r map[string]result) {
	defer fmt.Printf("\nThe contenders' own output: %s\n", logDir)
	type metric struct {
		name         string
		get          func(result) float64
		higherBetter bool
	}
	metrics := []metric{
		{"bulk one stream, Gbit/s", func(x result) float64 { return x.gbps }, true},
		{"new connections/s", func(x result) float64 { return x.cps }, true},
		{"request/response/s (persistent)", func(x result) float64 { return x.rps }, true},
		{"request/response p99, us", func(x result) float64 { return x.p99us }, false},
		{"memory per idle connection, KB", func(x result) float64 { return x.idleKB }, false},
	}
	ratio := func(a, b float64, higherBetter bool) string {
		if a == 0 || b == 0 {
			return "-"
		}
		if higherBetter {
			return fmt.Sprintf("%.2fx", a/b)
		}
		return fmt.Sprintf("%.2fx (lower is better)", a/b)
	}
	fmt.Printf("\nTCP (one round of each test per contender; the contenders run one at a time)\n\n| metric |")
	for _, n := range names {
		fmt.Printf(" %s |", n)
	}
	fmt.Printf(" l4lb / best proxy | l4lb-kernel / nftables | l4lb-kernel / direct |\n|---|")
	for range names {
		fmt.Printf("---|")
	}
	fmt.Printf("---|---|---|\n")
	for _, m := range metrics {
		fmt.Printf("| %s |", m.name)
		for _, n := range names {
			if v := m.get(r[n]); v != 0 {
				fmt.Printf(" %.1f |", v)
			} else {
				fmt.Printf(" - |")
			}
		}
		best := 0.0
		for _, p := range []string{"haproxy", "nginx"} {
			v := m.get(r[p])
			if v != 0 && (best == 0 || (m.higherBetter && v > best) || (!m.higherBetter && v < best)) {
				best = v
			}
		}
		fmt.Printf(" %s | %s | %s |\n", ratio(m.get(r["l4lb"]), best, m.higherBetter),
			ratio(m.get(r["l4lb-kernel"]), m.get(r["nftables"]), m.higherBetter),
			ratio(m.get(r["l4lb-kernel"]), m.get(r["direct"]), m.higherBetter))
	}
}

// idleTest opens n proxied connections with dial, makes sure each reached
// the target, and reports the resident memory growth of the proxy's
// processes per connection.
func idleTest(dial func() (net.Conn, error), pids []int, n int, settle time.Duration) float64 {
	before := rssKB(pids)
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	b := []byte{'x'}
	for range n {
		c, err := dial()
		if err != nil {
			break
		}
		c.Write(b)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, b); err != nil {
			c.Close()
			break
		}
		conns = append(conns, c)
	}
	// Let the proxy settle (l4lb parks idle directions after a second of
	// quiet, and frees their goroutines) before reading its RSS.
	time.Sleep(settle)
	after := rssKB(pids)
	if len(conns) == 0 {
		return 0
	}
	return float64(after-before) / float64(len(conns))
}

// rssKB sums the resident memory of processes, in KiB.
func rssKB(pids []int) int {
	sum := 0
	for _, pid := range pids {
		kb, _ := bench.RSSKB(pid)
		sum += int(kb)
	}
	return sum
}

// logDir keeps the output of every process the bench starts, a file per
// program, so that none of it mixes into the tables.
var logDir string

var logs = map[string]*os.File{}

// logTo is the log file of a program, opened once per run.
func logTo(name string) io.Writer {
	if f := logs[name]; f != nil {
		return f
	}
	if err := os.MkdirAll(logDir, 0o755); err == nil {
		if f, err := os.Create(filepath.Join(logDir, name+".log")); err == nil {
			logs[name] = f
			return f
		}
	}
	return io.Discard
}
