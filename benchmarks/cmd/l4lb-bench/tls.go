package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l4lb/l4lb/bench"
	"github.com/l4lb/l4lb/internal/testpki"
)

// The TLS contenders' ports, as offsets from -port-base: +0 ECDSA P-256
// to the echo target, +1 RSA-2048 to the echo target, +2 ECDSA to the sink.
const (
	haproxyTLSPort = 600
	l4lbTLSPort    = 700
)

// tlsBench terminates TLS in HAProxy (bind ... ssl crt) and in l4lb, before
// the same targets, and measures full handshakes per second with ECDSA and
// RSA certificates, with one client and with many, resumed handshakes per
// second, and bulk throughput through one terminated connection. Each
// figure is the median of three rounds of dur; the client is Go's
// crypto/tls in this process, the same for both.
// idleTLS is how many idle terminated connections the memory row holds.
const idleTLS = 2000

func tlsBench(bin, haproxy string, dur time.Duration, workers int, bulk int64) error {
	ts, err := newTLSSetup("l4lb-bench-tls")
	if err != nil {
		return err
	}
	defer ts.close()
	dir, ca, echo, sink := ts.dir, ts.ca, ts.echo.Addr.String(), ts.sink.Addr.String()
	ecCert, ecKey, ecBundle := ts.cert, ts.key, ts.bundle
	rsaCert, rsaKey, err := ca.IssueFiles(true, "bench.test")
	if err != nil {
		return err
	}
	rsaBundle, err := haproxyBundle(rsaCert, rsaKey)
	if err != nil {
		return err
	}
	hcfg := fmt.Sprintf(`global
    maxconn 4000
    nbthread 2
defaults
    mode tcp
    timeout connect 3s
    timeout client 60s
    timeout server 60s
frontend fe_ec
    bind 127.0.0.1:%d ssl crt %s
    default_backend be_echo
frontend fe_rsa
    bind 127.0.0.1:%d ssl crt %s
    default_backend be_echo
frontend fe_sink
    bind 127.0.0.1:%d ssl crt %s
    default_backend be_sink
backend be_echo
    server s1 %s
backend be_sink
    server s1 %s
`, port(haproxyTLSPort), ecBundle, port(haproxyTLSPort)+1, rsaBundle, port(haproxyTLSPort)+2, ecBundle, echo, sink)
	hpath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(hpath, []byte(hcfg), 0o644); err != nil {
		return err
	}
	lcfg := fmt.Sprintf(`admin: {listen: "off"}
listeners:
  - {name: ec, protocol: TLS, port: %d, bind: [127.0.0.1], target_group: echo, tls: {certificates: [{cert: %q, key: %q}]}}
  - {name: rsa, protocol: TLS, port: %d, bind: [127.0.0.1], target_group: echo, tls: {certificates: [{cert: %q, key: %q}]}}
  - {name: sink, protocol: TLS, port: %d, bind: [127.0.0.1], target_group: sink, tls: {certificates: [{cert: %q, key: %q}]}}
target_groups:
  - {name: echo, targets: [{address: %q}]}
  - {name: sink, targets: [{address: %q}]}
`, port(l4lbTLSPort), ecCert, ecKey, port(l4lbTLSPort)+1, rsaCert, rsaKey, port(l4lbTLSPort)+2, ecCert, ecKey, echo, sink)
	lpath := filepath.Join(dir, "l4lb.yaml")
	if err := os.WriteFile(lpath, []byte(lcfg), 0o644); err != nil {
		return err
	}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			p.Process.Kill()
			p.Wait()
		}
	}()
	for _, args := range [][]string{{haproxy, "-f", hpath}, {bin, "serve", "--config", lpath, "--log-level", "warn"}} {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdout, cmd.Stderr = logTo("tls-"+filepath.Base(args[0])), logTo("tls-"+filepath.Base(args[0]))
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("starting %s: %w", args[0], err)
		}
		procs = append(procs, cmd)
	}
	type contender struct {
		name string
		port int
	}
	cs := []contender{{"haproxy", port(haproxyTLSPort)}, {"l4lb", port(l4lbTLSPort)}}
	pids := map[int]int{port(haproxyTLSPort): procs[0].Process.Pid, port(l4lbTLSPort): procs[1].Process.Pid}
	for _, c := range cs {
		for i := range 3 {
			if !waitListening(fmt.Sprintf("127.0.0.1:%d", c.port+i)) {
				return fmt.Errorf("%s does not listen on %d", c.name, c.port+i)
			}
		}
	}
	conf := func() *tls.Config { return &tls.Config{ServerName: "bench.test", RootCAs: ca.Pool} }
	type row struct {
		name string
		run  func(port int) float64
	}
	rows := []row{
		{"full handshakes/s, ECDSA P-256, 1 client", func(p int) float64 { return handshakes(p, 1, dur, nil) }},
		{fmt.Sprintf("full handshakes/s, ECDSA P-256, %d clients", workers), func(p int) float64 { return handshakes(p, workers, dur, nil) }},
		{"full handshakes/s, RSA-2048, 1 client", func(p int) float64 { return handshakes(p+1, 1, dur, nil) }},
		{fmt.Sprintf("full handshakes/s, RSA-2048, %d clients", workers), func(p int) float64 { return handshakes(p+1, workers, dur, nil) }},
		{fmt.Sprintf("resumed handshakes/s, %d clients", workers), func(p int) float64 {
			return handshakes(p, workers, dur, tls.NewLRUClientSessionCache(workers*2))
		}},
		{"bulk through one terminated connection, Gbit/s", func(p int) float64 { return tlsBulk(p+2, bulk, conf()) }},
		{fmt.Sprintf("memory per idle terminated connection, KiB (%d connections, lower is better)", idleTLS), func(p int) float64 {
			dial := func() (net.Conn, error) {
				return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", p), conf())
			}
			return idleTest(dial, []int{pids[p]}, idleTLS, 3*time.Second)
		}},
	}
	const rounds = 3
	fmt.Printf("\nTLS termination (TLS 1.3; medians of %d rounds of %v, the contenders alternating; the client is Go's crypto/tls)\n\n", rounds, dur)
	fmt.Printf("| metric | haproxy | l4lb | l4lb/haproxy |\n|---|---|---|---|\n")
	for _, r := range rows {
		var hs, ls []float64
		for range rounds {
			hs = append(hs, r.run(port(haproxyTLSPort)))
			ls = append(ls, r.run(port(l4lbTLSPort)))
		}
		h, l := median(hs), median(ls)
		ratio := "-"
		if h > 0 {
			ratio = fmt.Sprintf("%.2fx", l/h)
		}
		fmt.Printf("| %s | %.1f | %.1f | %s |\n", r.name, h, l, ratio)
	}
	return nil
}

// tlsSetup is what the TLS benchmarks share: a folder, a CA, an ECDSA
// certificate for bench.test (its files, and HAProxy's bundle of both),
// and an echo and a sink target.
type tlsSetup struct {
	dir               string
	ca                *testpki.CA
	cert, key, bundle string
	echo, sink        *bench.Target
}

func newTLSSetup(name string) (*tlsSetup, error) {
	dir, err := os.MkdirTemp("", name)
	if err != nil {
		return nil, err
	}
	ts := &tlsSetup{dir: dir}
	if ts.ca, err = testpki.NewCA(dir); err == nil {
		if ts.cert, ts.key, err = ts.ca.IssueFiles(false, "bench.test"); err == nil {
			if ts.bundle, err = haproxyBundle(ts.cert, ts.key); err == nil {
				ts.echo, ts.sink, err = startTargets()
			}
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return ts, nil
}

func (ts *tlsSetup) close() {
	ts.echo.Close()
	ts.sink.Close()
	os.RemoveAll(ts.dir)
}

// haproxyBundle writes cert's chain and key into one file, as HAProxy's
// "crt" wants them, and returns its path.
func haproxyBundle(cert, key string) (string, error) {
	c, err := os.ReadFile(cert)
	if err != nil {
		return "", err
	}
	k, err := os.ReadFile(key)
	if err != nil {
		return "", err
	}
	path := cert + ".bundle"
	return path, os.WriteFile(path, append(c, k...), 0o600)
}

// handshakes runs workers clients for dur, each connecting, handshaking,
// exchanging one byte with the echo target and closing, and returns the
// rate. With a session cache the clients resume (after their first).
func handshakes(port, workers int, dur time.Duration, cache tls.ClientSessionCache) float64 {
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	var n atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(dur)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := &tls.Config{InsecureSkipVerify: true, ClientSessionCache: cache}
			b := make([]byte, 1)
			for time.Now().Before(end) {
				c, err := tls.Dial("tcp", addr, cfg)
				if err != nil {
					continue
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Write(b); err == nil {
					if _, err := io.ReadFull(c, b); err == nil {
						n.Add(1)
					}
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / dur.Seconds()
}

// tlsBulk sends n bytes over one TLS connection to the sink and returns the
// throughput in Gbit/s.
func tlsBulk(port int, n int64, cfg *tls.Config) float64 {
	c, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), cfg)
	if err != nil {
		return 0
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	start := time.Now()
	for sent := int64(0); sent < n; sent += int64(len(buf)) {
		if _, err := c.Write(buf); err != nil {
			return 0
		}
	}
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	io.ReadFull(c, make([]byte, 8)) // the sink's count of what it read
	return float64(n*8) / time.Since(start).Seconds() / 1e9
}
