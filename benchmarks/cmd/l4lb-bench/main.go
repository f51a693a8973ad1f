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
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

type peer struct {
	name string
	addr string // where clients connect
	pid  int    // proxy process, 0 for direct
}

type result struct {
	gbps, cps, rps, p99us, idleKB float64
}

func main() {
	bin := flag.String("l4lb", "bin/l4lb", "l4lb binary")
	haproxy := flag.String("haproxy", "haproxy", "haproxy binary")
	dur := flag.Duration("duration", 3*time.Second, "length of each timed test")
	bulk := flag.Int64("bulk-bytes", 4<<30, "bytes sent on the single bulk stream")
	conns := flag.Int("concurrency", 16, "client workers for the rate tests")
	idle := flag.Int("idle-conns", 3000, "idle connections for the memory test")
	settle := flag.Duration("idle-settle", 5*time.Second, "wait before reading the proxy's memory in the idle test")
	tests := flag.String("tests", "bulk,conn,rr,idle,dns,udp,tls", "tests to run")
	tlsBulkBytes := flag.Int64("tls-bulk-bytes", 1<<30, "bytes sent through one terminated TLS connection")
	adminAddr := flag.String("l4lb-admin", "off", "admin address of the l4lb under test (for profiling)")
	flag.Parse()
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

	peers := []*peer{{name: "direct"}}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			p.Process.Kill()
			p.Wait()
		}
	}()
	for _, mk := range []func(string, string, string) (*exec.Cmd, error){
		func(e, s, d string) (*exec.Cmd, error) { return startHAProxy(*haproxy, e, s, d) },
		func(e, s, d string) (*exec.Cmd, error) { return startL4LB(*bin, e, s, *adminAddr) },
	} {
		cmd, err := mk(echo, sink, dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "l4lb-bench:", err)
			os.Exit(1)
		}
		procs = append(procs, cmd)
	}
	// Proxies listen on two ports: +0 to the echo target, +1 to the sink.
	peers = append(peers, &peer{name: "haproxy", addr: "127.0.0.1:18400", pid: procs[0].Process.Pid})
	peers = append(peers, &peer{name: "l4lb", addr: "127.0.0.1:18500", pid: procs[1].Process.Pid})
	for _, p := range peers[1:] {
		if !waitListening(p.addr) {
			fmt.Fprintln(os.Stderr, "l4lb-bench: nothing listens on", p.addr, "for", p.name)
			return
		}
	}

	results := map[string]result{}
	for _, p := range peers {
		echoAddr, sinkAddr := echo, sink
		if p.pid != 0 {
			echoAddr, sinkAddr = p.addr, bump(p.addr)
		}
		var r result
		// Idle memory first, on a fresh process: garbage the other tests
		// leave behind (or free) would otherwise move its baseline.
		if p.pid != 0 && run("idle") {
			r.idleKB = idleTest(func() (net.Conn, error) { return net.Dial("tcp", echoAddr) }, p.pid, *idle, *settle)
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
		results[p.name] = r
		fmt.Fprintf(os.Stderr, "%-8s done\n", p.name)
	}
	report(results)
}

func report(r map[string]result) {
	d, h, l := r["direct"], r["haproxy"], r["l4lb"]
	fmt.Printf("| metric | direct | haproxy | l4lb | l4lb/haproxy | l4lb/direct |\n|---|---|---|---|---|---|\n")
	row := func(name string, dv, hv, lv float64, higherBetter bool) {
		ratio := func(a, b float64) string {
			if a == 0 || b == 0 {
				return "-"
			}
			if higherBetter {
				return fmt.Sprintf("%.2fx", a/b)
			}
			return fmt.Sprintf("%.2fx (lower is better)", a/b)
		}
		fmt.Printf("| %s | %.1f | %.1f | %.1f | %s | %s |\n", name, dv, hv, lv, ratio(lv, hv), ratio(lv, dv))
	}
	row("bulk one stream, Gbit/s", d.gbps, h.gbps, l.gbps, true)
	row("new connections/s", d.cps, h.cps, l.cps, true)
	row("request/response/s (persistent)", d.rps, h.rps, l.rps, true)
	row("request/response p99, us", d.p99us, h.p99us, l.p99us, false)
	row("memory per idle proxied connection, KB", 0, h.idleKB, l.idleKB, false)
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

func startHAProxy(bin, echo, sink, dir string) (*exec.Cmd, error) {
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
		return nil, err
	}
	cmd := exec.Command(bin, "-f", path)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting haproxy (apt-get install haproxy): %w", err)
	}
	return cmd, nil
}

func startL4LB(bin, echo, sink, adminAddr string) (*exec.Cmd, error) {
	cfg := fmt.Sprintf(`admin: {listen: "%s"}
listeners:
  - {name: echo, port: 18500, bind: [127.0.0.1], target_group: echo}
  - {name: sink, port: 18501, bind: [127.0.0.1], target_group: sink}
target_groups:
  - {name: echo, targets: [{address: "%s"}]}
  - {name: sink, targets: [{address: "%s"}]}
`, adminAddr, echo, sink)
	f, err := os.CreateTemp("", "l4lb-bench-*.yaml")
	if err != nil {
		return nil, err
	}
	f.WriteString(cfg)
	f.Close()
	cmd := exec.Command(bin, "serve", "--config", f.Name(), "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting l4lb (make build): %w", err)
	}
	return cmd, nil
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
// the target, and reports the proxy's resident memory growth per connection.
func idleTest(dial func() (net.Conn, error), pid, n int, settle time.Duration) float64 {
	before := rssKB(pid)
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
	after := rssKB(pid)
	if len(conns) == 0 {
		return 0
	}
	return float64(after-before) / float64(len(conns))
}

func rssKB(pid int) int {
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
