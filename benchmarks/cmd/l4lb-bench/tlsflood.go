package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"
)

// The TLS flood contenders' ports, as offsets from -port-base.
const (
	haproxyFloodPort = 650
	l4lbFloodPort    = 750
)

// floodScenario is a number of silent connections, spread over sources
// networks (127.1.N.1, one /24 each).
type floodScenario struct {
	name    string
	conns   int
	sources int
}

var floodScenarios = []floodScenario{
	{"1,100 silent connections, one source", 1100, 1},
	{"10,000 silent connections, 100 sources", 10000, 100},
}

// floodResult is what real clients saw during a flood.
type floodResult struct {
	tried, ok int
	p50, p99  time.Duration
	open      int // silent connections open when the clients started
}

// tlsFloodBench opens silent connections (TCP, no ClientHello) to a TLS
// listener of HAProxy and of l4lb, reopening each one the listener closes,
// and meanwhile measures real clients from another source: the share of
// their handshakes (with one byte echoed through) that complete, and the
// p50 and p99 time from connect to the echoed byte. HAProxy runs with
// maxconn raised for the flood and its client timeout at l4lb's hello
// timeout (5 s), so both close silent connections at the same time.
func tlsFloodBench(bin, haproxy string, dur time.Duration) error {
	// Each silent connection holds a descriptor here and one in the
	// contender, which inherits this process's limit. HAProxy's maxconn
	// is what that limit allows it (two descriptors a connection, as it
	// reserves them), as an operator would set it.
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	lim.Cur = lim.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	maxconn := max(int(lim.Cur)/2-500, 1000)
	ts, err := newTLSSetup("l4lb-bench-tlsflood")
	if err != nil {
		return err
	}
	defer ts.close()
	dir, cert, key, bundle, echoT := ts.dir, ts.cert, ts.key, ts.bundle, ts.echo
	hcfg := fmt.Sprintf(`global
    maxconn %d
    nbthread 2
defaults
    mode tcp
    timeout connect 3s
    timeout client 5s
    timeout server 60s
frontend fe
    bind 127.0.0.1:%d ssl crt %s
    default_backend be
backend be
    server s1 %s
`, maxconn, port(haproxyFloodPort), bundle, echoT.Addr)
	lcfg := fmt.Sprintf(`admin: {listen: "off"}
listeners:
  - {name: tls, protocol: TLS, port: %d, bind: [127.0.0.1], target_group: echo, tls: {certificates: [{cert: %q, key: %q}]}}
target_groups:
  - {name: echo, targets: [{address: %q}]}
`, port(l4lbFloodPort), cert, key, echoT.Addr)
	hpath, lpath := filepath.Join(dir, "haproxy.cfg"), filepath.Join(dir, "l4lb.yaml")
	if err := os.WriteFile(hpath, []byte(hcfg), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(lpath, []byte(lcfg), 0o644); err != nil {
		return err
	}
	contenders := []struct {
		name string
		args []string
		port int
	}{
		{"haproxy", []string{haproxy, "-f", hpath}, port(haproxyFloodPort)},
		{"l4lb", []string{bin, "serve", "--config", lpath, "--log-level", "warn"}, port(l4lbFloodPort)},
	}
	fmt.Printf("\nTLS listeners under a flood of silent connections (each reopened when the listener closes it); real clients from 127.0.0.1, 4 at a time, for %v; open-file limit %d, HAProxy maxconn %d\n\n", dur, lim.Cur, maxconn)
	fmt.Printf("| flood | contender | silent open | handshakes completed | p50 | p99 |\n|---|---|---|---|---|---|\n")
	for _, sc := range floodScenarios {
		for _, ct := range contenders {
			// A fresh process for each flood: what one leaves behind
			// (a queue, descriptors in TIME_WAIT) does not weigh on the
			// next.
			cmd := exec.Command(ct.args[0], ct.args[1:]...)
			cmd.Stdout, cmd.Stderr = logTo("tlsflood-"+ct.name), logTo("tlsflood-"+ct.name)
			if err := cmd.Start(); err != nil {
				return fmt.Errorf("starting %s: %w", ct.name, err)
			}
			addr := fmt.Sprintf("127.0.0.1:%d", ct.port)
			if !waitListening(addr) {
				cmd.Process.Kill()
				cmd.Wait()
				return fmt.Errorf("%s does not listen on %s", ct.name, addr)
			}
			r := floodRun(addr, sc, dur)
			cmd.Process.Kill()
			cmd.Wait()
			pct := 0.0
			if r.tried > 0 {
				pct = 100 * float64(r.ok) / float64(r.tried)
			}
			fmt.Printf("| %s | %s | %d | %d of %d (%.1f %%) | %.1f ms | %.1f ms |\n", sc.name, ct.name, r.open, r.ok, r.tried, pct,
				float64(r.p50.Microseconds())/1000, float64(r.p99.Microseconds())/1000)
		}
	}
	return nil
}

// floodRun holds sc's silent connections to addr while real clients
// handshake for dur, and returns what the clients saw.
func floodRun(addr string, sc floodScenario, dur time.Duration) floodResult {
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := 0
	perSource := sc.conns / sc.sources
	ready := make(chan struct{}, sc.conns)
	for s := range sc.sources {
		src := &net.TCPAddr{IP: net.IPv4(127, 1, byte(s), 1)}
		for range perSource {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d := net.Dialer{LocalAddr: src, Timeout: 3 * time.Second}
				first := true
				for ctx.Err() == nil {
					c, err := d.DialContext(ctx, "tcp", addr)
					if err != nil {
						time.Sleep(100 * time.Millisecond)
						continue
					}
					mu.Lock()
					open++
					mu.Unlock()
					if first {
						ready <- struct{}{}
						first = false
					}
					// Silent until the listener closes it, or the run ends.
					go func() { <-ctx.Done(); c.Close() }()
					io.Copy(io.Discard, c)
					c.Close()
					mu.Lock()
					open--
					mu.Unlock()
				}
			}()
		}
	}
	// Every silent connection opened once (or 20 s), then the clients.
	deadline := time.After(20 * time.Second)
wait:
	for range sc.conns {
		select {
		case <-ready:
		case <-deadline:
			break wait
		}
	}
	mu.Lock()
	r := floodResult{open: open}
	mu.Unlock()
	var lat []time.Duration
	var lmu sync.Mutex
	end := time.Now().Add(dur)
	var cw sync.WaitGroup
	for range 4 {
		cw.Add(1)
		go func() {
			defer cw.Done()
			cfg := &tls.Config{InsecureSkipVerify: true}
			b := []byte{1}
			for time.Now().Before(end) {
				start := time.Now()
				ok := func() bool {
					c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}, "tcp", addr, cfg)
					if err != nil {
						return false
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(5 * time.Second))
					if _, err := c.Write(b); err != nil {
						return false
					}
					_, err = io.ReadFull(c, b)
					return err == nil
				}()
				took := time.Since(start)
				lmu.Lock()
				r.tried++
				if ok {
					r.ok++
					lat = append(lat, took)
				} else {
					time.Sleep(10 * time.Millisecond) // a refused client retries, as a person would
				}
				lmu.Unlock()
			}
		}()
	}
	cw.Wait()
	stop()
	wg.Wait()
	if len(lat) > 0 {
		slices.Sort(lat)
		r.p50 = lat[len(lat)/2]
		r.p99 = lat[min(len(lat)-1, len(lat)*99/100)]
	}
	return r
}
