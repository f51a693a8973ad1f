package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/l4lb/l4lb/bench"
)

// Ports of the agreement check, as offsets from -port-base: l4lb listens
// on the first four and forwards to the tools' own servers (and a bench
// sink) on the next.
const (
	agreeIperf, agreeSink, agreeHTTP, agreeRedis = 900, 901, 902, 903
	agreeIperfT, agreeHTTPT, agreeRedisT         = 910, 912, 913
)

// agreement checks that l4lb bench measures what the established tools
// measure on the same path (each through the same l4lb, alternating, the
// median of rounds): throughput against iperf3, keep-alive and
// connection rates against wrk (the same HTTP request to the same nginx),
// and one-connection ping-pong against redis-benchmark (the same inline
// PING to the same redis-server).
func agreement(bin, nginx string, rounds int, dur time.Duration, w io.Writer) error {
	dir, err := os.MkdirTemp("", "l4lb-bench-agree")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var stops []func()
	defer func() {
		for _, s := range slices.Backward(stops) {
			s()
		}
	}()
	start := func(name string, args ...string) error {
		cmd := exec.Command(name, args...)
		os.MkdirAll(logDir, 0o755)
		logf, err := os.Create(filepath.Join(logDir, "agreement-"+filepath.Base(name)+".log"))
		if err != nil {
			return err
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("%s (make deps installs it): %w", name, err)
		}
		stops = append(stops, func() {
			cmd.Process.Signal(os.Interrupt)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(3 * time.Second):
				cmd.Process.Kill()
				<-done
			}
			logf.Close()
		})
		return nil
	}
	sink, err := bench.StartTarget(bench.TargetSink, "tcp", "127.0.0.1:0", 0)
	if err != nil {
		return err
	}
	defer sink.Close()
	if err := start("iperf3", "-s", "-B", "127.0.0.1", "-p", strconv.Itoa(port(agreeIperfT))); err != nil {
		return err
	}
	if err := start("redis-server", "--bind", "127.0.0.1", "--port", strconv.Itoa(port(agreeRedisT)), "--save", "", "--appendonly", "no"); err != nil {
		return err
	}
	ncfg := fmt.Sprintf(`worker_processes 2;
pid %[1]s/nginx-http.pid;
error_log %[1]s/nginx-http-error.log warn;
daemon off;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    server { listen 127.0.0.1:%[2]d; location / { return 200 "ok\n"; } }
}
`, dir, port(agreeHTTPT))
	npath := filepath.Join(dir, "nginx-http.conf")
	if err := os.WriteFile(npath, []byte(ncfg), 0o644); err != nil {
		return err
	}
	if err := start(nginx, "-c", npath, "-e", filepath.Join(dir, "nginx-http-error.log")); err != nil {
		return err
	}
	lcfg := fmt.Sprintf(`admin: {listen: "off"}
listeners:
  - {name: iperf, port: %d, bind: [127.0.0.1], target_group: iperf}
  - {name: sink, port: %d, bind: [127.0.0.1], target_group: sink}
  - {name: http, port: %d, bind: [127.0.0.1], target_group: http}
  - {name: redis, port: %d, bind: [127.0.0.1], target_group: redis}
target_groups:
  - {name: iperf, targets: [{address: "127.0.0.1:%d"}]}
  - {name: sink, targets: [{address: %q}]}
  - {name: http, targets: [{address: "127.0.0.1:%d"}]}
  - {name: redis, targets: [{address: "127.0.0.1:%d"}]}
`, port(agreeIperf), port(agreeSink), port(agreeHTTP), port(agreeRedis), port(agreeIperfT), sink.Addr.String(), port(agreeHTTPT), port(agreeRedisT))
	lpath := filepath.Join(dir, "l4lb.yaml")
	if err := os.WriteFile(lpath, []byte(lcfg), 0o644); err != nil {
		return err
	}
	if err := start(bin, "serve", "--config", lpath, "--log-level", "warn"); err != nil {
		return err
	}
	for _, p := range []int{port(agreeIperfT), port(agreeHTTPT), port(agreeRedisT), port(agreeIperf), port(agreeSink), port(agreeHTTP), port(agreeRedis)} {
		if !waitListening(fmt.Sprintf("127.0.0.1:%d", p)) {
			return fmt.Errorf("nothing listens on 127.0.0.1:%d; logs in %s", p, logDir)
		}
	}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", port(agreeHTTP))
	keepReq := []byte("GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
	closeReq := []byte("GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
	keepSize, err := httpResponseSize(httpAddr, keepReq)
	if err != nil {
		return err
	}
	closeSize, err := httpResponseSize(httpAddr, closeReq)
	if err != nil {
		return err
	}
	secs := strconv.Itoa(int(dur.Seconds()))
	ours := func(s bench.Scenario, addr string, conns int, req []byte, resp int) func() (float64, error) {
		return func() (float64, error) {
			r, err := bench.Run(context.Background(), s, bench.Options{Addr: addr, Duration: dur, Warmup: 300 * time.Millisecond,
				Connections: conns, Request: req, ResponseSize: resp})
			if err != nil {
				return 0, err
			}
			if r.Errors > 0 {
				return 0, fmt.Errorf("%s: %d errors", s, r.Errors)
			}
			if s == bench.TCPThroughput {
				return r.Gbps, nil
			}
			return r.Rate, nil
		}
	}
	checks := []struct {
		name, tool string
		theirs     func() (float64, error)
		ours       func() (float64, error)
	}{
		{"throughput, one stream, Gbit/s", "iperf3 -c -t " + secs, func() (float64, error) {
			return iperf(fmt.Sprintf("127.0.0.1:%d", port(agreeIperf)), secs)
		}, ours(bench.TCPThroughput, fmt.Sprintf("127.0.0.1:%d", port(agreeSink)), 1, nil, 0)},
		{"HTTP keep-alive requests/s, 16 connections", "wrk -t2 -c16", func() (float64, error) {
			return wrk(httpAddr, secs, false)
		}, ours(bench.TCPRR, httpAddr, 16, keepReq, keepSize)},
		{"HTTP connections/s (Connection: close), 16 at once", "wrk -t2 -c16 -H 'Connection: close'", func() (float64, error) {
			return wrk(httpAddr, secs, true)
		}, ours(bench.TCPConnect, httpAddr, 16, closeReq, closeSize)},
		{"Redis PING ping-pong, one connection, /s", "redis-benchmark -c 1 -t ping_inline", func() (float64, error) {
			return redisBench(fmt.Sprintf("%d", port(agreeRedis)), dur)
		}, ours(bench.TCPRR, fmt.Sprintf("127.0.0.1:%d", port(agreeRedis)), 1, []byte("PING\r\n"), len("+PONG\r\n"))},
	}
	fmt.Fprintf(w, "\nl4lb bench against the established tools, through the same l4lb (medians of %d rounds of %v, the tools alternating)\n\n", rounds, dur)
	fmt.Fprintln(w, "| measure | tool | the tool | l4lb bench | l4lb bench / tool |\n|---|---|---|---|---|")
	for _, c := range checks {
		var ts, os_ []float64
		for round := range rounds {
			// Who goes first alternates: the second of a pair meets what
			// the first left behind (TIME_WAIT sockets, a warm cache).
			var t, o float64
			var terr, oerr error
			if round%2 == 0 {
				t, terr = c.theirs()
				o, oerr = c.ours()
			} else {
				o, oerr = c.ours()
				t, terr = c.theirs()
			}
			if terr != nil {
				return fmt.Errorf("%s: %s: %w", c.name, c.tool, terr)
			}
			if oerr != nil {
				return fmt.Errorf("%s: l4lb bench: %w", c.name, oerr)
			}
			ts, os_ = append(ts, t), append(os_, o)
		}
		t, o := median(ts), median(os_)
		fmt.Fprintf(w, "| %s | `%s` | %.1f | %.1f | %.2fx |\n", c.name, c.tool, t, o, o/t)
	}
	return nil
}

// httpResponseSize sends req once and returns the size of the response,
// headers and body (Content-Length).
func httpResponseSize(addr string, req []byte) (int, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write(req); err != nil {
		return 0, err
	}
	br := bufio.NewReader(c)
	n, body := 0, 0
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return 0, fmt.Errorf("probing %s: %w", addr, err)
		}
		n += len(line)
		if v, ok := strings.CutPrefix(strings.ToLower(line), "content-length:"); ok {
			body, _ = strconv.Atoi(strings.TrimSpace(v))
		}
		if line == "\r\n" {
			return n + body, nil
		}
	}
}

func iperf(addr, secs string) (float64, error) {
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command("iperf3", "-c", host, "-p", port, "-t", secs, "-J").Output()
	if err != nil {
		return 0, fmt.Errorf("%v: %s", err, out)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, err
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, nil
}

var wrkRate = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)

func wrk(addr, secs string, closeEach bool) (float64, error) {
	args := []string{"-t2", "-c16", "-d" + secs + "s"}
	if closeEach {
		args = append(args, "-H", "Connection: close")
	}
	out, err := exec.Command("wrk", append(args, "http://"+addr+"/")...).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("%v: %s", err, out)
	}
	m := wrkRate.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no rate in wrk's output: %s", out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

var redisRate = regexp.MustCompile(`PING_INLINE: ([0-9.]+) requests per second`)

// redisBench runs redis-benchmark's inline PING on one connection, for
// about dur (its request count is sized from a first short run).
func redisBench(port string, dur time.Duration) (float64, error) {
	run := func(n int) (float64, error) {
		out, err := exec.Command("redis-benchmark", "-h", "127.0.0.1", "-p", port, "-c", "1", "-n", strconv.Itoa(n), "-t", "ping_inline", "-q").CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("%v: %s", err, out)
		}
		m := redisRate.FindSubmatch(out)
		if m == nil {
			return 0, fmt.Errorf("no rate in redis-benchmark's output: %s", out)
		}
		return strconv.ParseFloat(string(m[1]), 64)
	}
	probe, err := run(2000)
	if err != nil {
		return 0, err
	}
	return run(max(int(probe*dur.Seconds()), 2000))
}
