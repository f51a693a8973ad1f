// Command l4lb-bench measures l4lb against HAProxy (mode tcp, option
// splice-auto) and a direct connection, on loopback, in one run: bulk
// throughput on one stream, new connections per second, request/response rate
// and p99 on persistent connections, and memory per idle proxied connection.
// Every load loop is bounded in time and count; traffic stays on 127.0.0.1.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// contender is one way of reaching the echo and sink targets. start brings
// it up (proxies listen on two ports: +0 to the echo target, +1 to the
// sink) and returns where clients connect, the processes whose memory is
// the contender's, and how to take it down again. Contenders run one at a
// time, so no other's processes or kernel programs share the machine.
type contender struct {
	name  string
	kind  string // "direct", "proxy" (user space) or "kernel" (no process holds a flow)
	start func(echo, sink, dir string) (addr string, pids []int, stop func(), err error)
}

type result struct {
	gbps, cps, rps, p99us, idleKB float64
}

func main() {
	bin := flag.String("l4lb", "bin/l4lb", "l4lb binary")
	haproxy := flag.String("haproxy", "haproxy", "haproxy binary")
	nginx := flag.String("nginx", "nginx", "nginx binary (with the stream module)")
	dur := flag.Duration("duration", 3*time.Second, "length of each timed test")
	bulk := flag.Int64("bulk-bytes", 4<<30, "bytes sent on the single bulk stream")
	conns := flag.Int("concurrency", 16, "client workers for the rate tests")
	idle := flag.Int("idle-conns", 3000, "idle connections for the memory test")
	settle := flag.Duration("idle-settle", 5*time.Second, "wait before reading the proxy's memory in the idle test")
	tests := flag.String("tests", "bulk,conn,rr,idle,dns,udp,tls", "tests to run")
	only := flag.String("contenders", "direct,haproxy,nginx,nftables,l4lb,l4lb-kernel,l4lb+programs", "TCP contenders to run")
	tlsBulkBytes := flag.Int64("tls-bulk-bytes", 1<<30, "bytes sent through one terminated TLS connection")
	adminAddr := flag.String("l4lb-admin", "off", "admin address of the l4lb under test (for profiling)")
	flag.StringVar(&logDir, "logs", "benchmarks/results/logs", "where the contenders' own output goes, a file each")
	compareDir := flag.String("compare", "", "run the comparison (l4lb bench's scenarios against every contender) and write its JSON and plots here")
	rounds := flag.Int("rounds", 3, "comparison: rounds per figure (the median is reported)")
	from := flag.String("compare-from", "", "print the table and redraw the plots of an earlier comparison's compare.json")
	agree := flag.Bool("agreement", false, "check l4lb bench against iperf3, wrk and redis-benchmark on the same paths")
	flag.Parse()
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
	if run("tls") {
		if err := tlsBench(*bin, *haproxy, *dur, *conns, *tlsBulkBytes); err != nil {
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

	echo := startBackend(echoConn)
	sink := startBackend(sinkConn)
	dir, _ := os.MkdirTemp("", "l4lb-bench")
	defer os.RemoveAll(dir)

	all := tcpContenders(*bin, *haproxy, *nginx, *adminAddr)
	var names []string
	results := map[string]result{}
	for _, c := range all {
		if !strings.Contains(","+*only+",", ","+c.name+",") {
			continue
		}
		addr, pids, stop, err := c.start(echo, sink, dir)
		if err != nil {
			fmt.Fprintf(os.Stderr, "l4lb-bench: %s left out: %v\n", c.name, err)
			continue
		}
		echoAddr, sinkAddr := echo, sink
		if addr != "" {
			echoAddr, sinkAddr = addr, bump(addr)
			if !waitListening(echoAddr) || !waitListening(sinkAddr) {
				stop()
				fmt.Fprintf(os.Stderr, "l4lb-bench: %s left out: nothing answers on %s\n", c.name, addr)
				continue
			}
		}
		var r result
		// Idle memory first, on a fresh process: garbage the other tests
		// leave behind (or free) would otherwise move its baseline. Only
		// a proxy holds a flow in a process.
		if c.kind == "proxy" && run("idle") {
			r.idleKB = idleTest(func() (net.Conn, error) { return net.Dial("tcp", echoAddr) }, pids, *idle, *settle)
		}
		if run("bulk") {
			r.gbps = bulkTest(sinkAddr, *bulk)
		}
		if run("conn") {
			r.cps = connTest(echoAddr, *conns, *dur)
		}
		if run("rr") {
			r.rps, r.p99us = rrTest(echoAddr, *conns, *dur)
		}
		stop()
		results[c.name] = r
		names = append(names, c.name)
		fmt.Fprintf(os.Stderr, "%-12s done\n", c.name)
	}
	report(names, results)
}

// tcpContenders are the ways to reach the echo and sink targets that the
// TCP tests compare.
func tcpContenders(bin, haproxy, nginx, adminAddr string) []contender {
	return []contender{
		{"direct", "direct", func(e, s, d string) (string, []int, func(), error) { return "", nil, func() {}, nil }},
		{"haproxy", "proxy", func(e, s, d string) (string, []int, func(), error) { return startHAProxy(haproxy, e, s, d) }},
		{"nginx", "proxy", func(e, s, d string) (string, []int, func(), error) { return startNginx(nginx, e, s, d) }},
		{"nftables", "kernel", startNftables},
		{"l4lb", "proxy", func(e, s, d string) (string, []int, func(), error) {
			return startL4LB(bin, e, s, d, adminAddr, modeSocket)
		}},
		{"l4lb-kernel", "kernel", func(e, s, d string) (string, []int, func(), error) {
			return startL4LB(bin, e, s, d, adminAddr, modeKernel)
		}},
		// The socket path while the kernel programs (TCP and UDP) run on
		// lo for other listeners: what they cost unrelated traffic.
		{"l4lb+programs", "proxy", func(e, s, d string) (string, []int, func(), error) {
			return startL4LB(bin, e, s, d, adminAddr, modeSocketBesideKernel)
		}},
	}
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

func bump(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	return net.JoinHostPort(host, strconv.Itoa(p+1))
}

func startBackend(handle func(net.Conn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().String()
}

func echoConn(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		if _, err := c.Write(buf[:n]); err != nil {
			return
		}
	}
}

func sinkConn(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 256<<10)
	for {
		if _, err := c.Read(buf); err != nil {
			c.Write([]byte{1}) // acknowledge the end of the stream
			return
		}
	}
}

// stopper ends a process started for the bench.
func stopper(cmd *exec.Cmd) func() {
	return func() {
		cmd.Process.Kill()
		cmd.Wait()
	}
}

func startHAProxy(bin, echo, sink, dir string) (string, []int, func(), error) {
	cfg := fmt.Sprintf(`global
    maxconn 4000
    nbthread 2
defaults
    mode tcp
    option splice-auto
    timeout connect 3s
    timeout client 350s
    timeout server 350s
frontend fe_echo
    bind 127.0.0.1:18400
    default_backend be_echo
frontend fe_sink
    bind 127.0.0.1:18401
    default_backend be_sink
backend be_echo
    server s1 %s
backend be_sink
    server s1 %s
`, echo, sink)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return "", nil, nil, err
	}
	cmd := exec.Command(bin, "-f", path)
	cmd.Stdout, cmd.Stderr = logTo("haproxy"), logTo("haproxy")
	if err := cmd.Start(); err != nil {
		return "", nil, nil, fmt.Errorf("starting haproxy (apt-get install haproxy): %w", err)
	}
	return "127.0.0.1:18400", []int{cmd.Process.Pid}, stopper(cmd), nil
}

// startNginx runs nginx's stream proxy as its docs suggest for a load
// balancer: two workers, a reuseport listener each.
func startNginx(bin, echo, sink, dir string) (string, []int, func(), error) {
	mod := ""
	if _, err := os.Stat("/usr/lib/nginx/modules/ngx_stream_module.so"); err == nil {
		mod = "load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
	}
	cfg := fmt.Sprintf(`%s
worker_processes 2;
worker_rlimit_nofile 20000;
pid %s/nginx.pid;
error_log %s/nginx-error.log warn;
daemon off;
events { worker_connections 8000; }
stream {
    server { listen 127.0.0.1:18410 reuseport; proxy_pass %s; }
    server { listen 127.0.0.1:18411 reuseport; proxy_pass %s; }
}
`, mod, dir, dir, echo, sink)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return "", nil, nil, err
	}
	cmd := exec.Command(bin, "-c", path, "-e", filepath.Join(dir, "nginx-error.log"))
	cmd.Stdout, cmd.Stderr = logTo("nginx"), logTo("nginx")
	if err := cmd.Start(); err != nil {
		return "", nil, nil, fmt.Errorf("starting nginx (apt-get install nginx-light libnginx-mod-stream): %w", err)
	}
	if !waitListening("127.0.0.1:18410") {
		stopper(cmd)()
		return "", nil, nil, fmt.Errorf("nginx does not listen; see %s/nginx-error.log", dir)
	}
	// The master and its workers: the workers hold the connections.
	pids := []int{cmd.Process.Pid}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid)); err == nil {
		for _, f := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(f); err == nil {
				pids = append(pids, p)
			}
		}
	}
	stop := func() {
		// SIGTERM: the master takes its workers down with it (a killed
		// master would leave them serving).
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}
	return "127.0.0.1:18410", pids, stop, nil
}

// startNftables is the kernel's own NAT balancer, the rule kube-proxy's
// nftables mode writes for a service: DNAT chosen by a hash of the client's
// address and port. Loopback clients' packets meet it on the output hook.
func startNftables(echo, sink, dir string) (string, []int, func(), error) {
	rule := func(port int, target string) string {
		host, tport, _ := net.SplitHostPort(target)
		return fmt.Sprintf("ip daddr 127.0.0.1 tcp dport %d dnat ip to jhash ip saddr . tcp sport mod 1 map { 0 : %s } : %s", port, host, tport)
	}
	ruleset := fmt.Sprintf(`table ip l4lb_bench {
  chain out {
    type nat hook output priority -100; policy accept;
    %s
    %s
  }
}
`, rule(18420, echo), rule(18421, sink))
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", nil, nil, fmt.Errorf("nft (apt-get install nftables; needs root): %v: %s", err, out)
	}
	stop := func() { exec.Command("nft", "delete", "table", "ip", "l4lb_bench").Run() }
	return "127.0.0.1:18420", nil, stop, nil
}

// l4lb's modes in the bench.
const (
	modeSocket             = iota // the socket path
	modeKernel                    // the TCP kernel fast path
	modeSocketBesideKernel        // the socket path, with kernel programs on lo for other listeners
)

// startL4LB runs l4lb on its socket path, or on its TCP kernel fast path
// (which needs a target group that keeps the client's address).
func startL4LB(bin, echo, sink, dir, adminAddr string, mode int) (string, []int, func(), error) {
	port, extra, attrs := 18500, "", ""
	switch mode {
	case modeKernel:
		port = 18510
		extra = "load_balancer: {tcp_fast_path: true, tcp_fast_path_interfaces: [lo]}\n"
		attrs = `, attributes: {preserve_client_ip.enabled: "true"}`
	case modeSocketBesideKernel:
		port = 18520
		extra = "load_balancer: {tcp_fast_path: true, tcp_fast_path_interfaces: [lo], udp_fast_path: true, udp_fast_path_interfaces: [lo]}\n"
	}
	cfg := fmt.Sprintf(`admin: {listen: "%s"}
%slisteners:
  - {name: echo, port: %d, bind: [127.0.0.1], target_group: echo}
  - {name: sink, port: %d, bind: [127.0.0.1], target_group: sink}
target_groups:
  - {name: echo, targets: [{address: "%s"}]%s}
  - {name: sink, targets: [{address: "%s"}]%s}
`, adminAddr, extra, port, port+1, echo, attrs, sink, attrs)
	if mode == modeSocketBesideKernel {
		// Their targets are ports nothing listens on: the point is the
		// programs' cost on the traffic that is not theirs.
		cfg += `  - {name: other, targets: [{address: "127.0.0.1:18538"}], attributes: {preserve_client_ip.enabled: "true"}}
  - {name: other-udp, protocol: UDP, targets: [{address: "127.0.0.1:18539"}], attributes: {preserve_client_ip.enabled: "true"}}
`
		cfg = strings.Replace(cfg, "target_groups:", fmt.Sprintf(`  - {name: other, port: %d, bind: [127.0.0.2], target_group: other}
  - {name: other-udp, protocol: UDP, port: %d, bind: [127.0.0.2], target_group: other-udp}
target_groups:`, port+2, port+3), 1)
	}
	path := filepath.Join(dir, fmt.Sprintf("l4lb-%d.yaml", port))
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return "", nil, nil, err
	}
	os.MkdirAll(logDir, 0o755)
	logPath := filepath.Join(logDir, fmt.Sprintf("l4lb-%d.log", port))
	logf, err := os.Create(logPath)
	if err != nil {
		return "", nil, nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "serve", "--config", path, "--log-level", "info")
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		return "", nil, nil, fmt.Errorf("starting l4lb (make build): %w", err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if mode != modeSocket {
		waitListening(addr)
		time.Sleep(300 * time.Millisecond)
		if b, _ := os.ReadFile(logPath); !strings.Contains(string(b), "TCP listener forwarded in the kernel") {
			stopper(cmd)()
			return "", nil, nil, fmt.Errorf("the TCP fast path did not come up (needs root):\n%s", b)
		}
	}
	return addr, []int{cmd.Process.Pid}, stopper(cmd), nil
}

func waitListening(addr string) bool {
	for range 100 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// bulkTest sends n bytes on one connection and waits for the sink's
// acknowledgement of the end of the stream.
func bulkTest(addr string, n int64) float64 {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		panic(err)
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	start := time.Now()
	for sent := int64(0); sent < n; {
		w, err := c.Write(buf[:min(int64(len(buf)), n-sent)])
		if err != nil {
			panic(err)
		}
		sent += int64(w)
	}
	c.(*net.TCPConn).CloseWrite()
	io.ReadFull(c, buf[:1])
	return float64(n) * 8 / time.Since(start).Seconds() / 1e9
}

// connTest opens, uses (one byte each way) and closes connections for d.
func connTest(addr string, workers int, d time.Duration) float64 {
	var count atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := []byte{'x'}
			for time.Now().Before(deadline) {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					continue
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Write(b); err == nil {
					if _, err := io.ReadFull(c, b); err == nil {
						count.Add(1)
					}
				}
				c.(*net.TCPConn).SetLinger(0) // no TIME_WAIT pile-up on the client
				c.Close()
			}
		}()
	}
	wg.Wait()
	return float64(count.Load()) / d.Seconds()
}

// rrTest runs 64-byte request/response on persistent connections for d.
func rrTest(addr string, workers int, d time.Duration) (float64, float64) {
	var mu sync.Mutex
	h := hdrhistogram.New(1, 10_000_000, 3)
	var count atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return
			}
			defer c.Close()
			local := hdrhistogram.New(1, 10_000_000, 3)
			buf := make([]byte, 64)
			for time.Now().Before(deadline) {
				t0 := time.Now()
				if _, err := c.Write(buf); err != nil {
					return
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					return
				}
				local.RecordValue(time.Since(t0).Microseconds())
				count.Add(1)
			}
			mu.Lock()
			h.Merge(local)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return float64(count.Load()) / d.Seconds(), float64(h.ValueAtQuantile(99))
}

// idleTest opens n proxied connections with dial, makes sure each reached
// the target, and reports the resident memory growth of the proxy's
// processes per connection.
func idleTest(dial func() (net.Conn, error), pids []int, n int, settle time.Duration) float64 {
	before := rssKB(pids...)
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
	after := rssKB(pids...)
	if len(conns) == 0 {
		return 0
	}
	return float64(after-before) / float64(len(conns))
}

// rssKB sums the resident memory of processes.
func rssKB(pids ...int) int {
	sum := 0
	for _, pid := range pids {
		sum += rssOf(pid)
	}
	return sum
}

func rssOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			v, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			return v
		}
	}
	return 0
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
