package lb

import (
	"bytes"
	"crypto/rsa"
	"crypto/tls"
	"errors"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/healthcheck"
	"github.com/l4lb/l4lb/internal/testpki"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
	"github.com/l4lb/l4lb/pkg/tlshello"
)

// issue writes a leaf certificate for names and returns it as a config pair.
func issue(t *testing.T, ca *testpki.CA, rsaKey bool, names ...string) config.Certificate {
	t.Helper()
	c, k := ca.Issue(t, rsaKey, names...)
	return config.Certificate{Cert: c, Key: k}
}

// tlsServer runs a TLS listener before an echo target.
func tlsServer(t *testing.T, lt config.ListenerTLS, opts Options) (*Server, string, *prometheus.Registry) {
	t.Helper()
	e := startEcho(t)
	cfg := testConfig([]config.Target{{Address: e.addr, Weight: 1}}, func(l *config.Listener, _ *config.TargetGroup) {
		l.Protocol = config.TLS
		if lt.SecurityPolicy == "" {
			lt.SecurityPolicy = config.DefaultSecurityPolicy
		}
		if lt.ALPNPolicy == 0 {
			lt.ALPNPolicy = config.ALPNNone
		}
		l.TLS = &lt
	})
	reg := prometheus.NewRegistry()
	opts.Metrics = metrics.New(reg)
	srv, addr := startServer(t, cfg, opts)
	return srv, addr, reg
}

// dialTLS handshakes with addr and checks that bytes come back through the
// terminated flow.
func dialTLS(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		c.Close()
		return nil, err
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
		c.Close()
		t.Fatalf("echo through the terminated flow: %q %v", b, err)
	}
	return c, nil
}

func leafName(c *tls.Conn) string { return c.ConnectionState().PeerCertificates[0].Subject.CommonName }

// SNI picks the certificate: exact name, then wildcard, then the default
// for an unknown name or none; for a name with an ECDSA and an RSA
// certificate, what the client can use decides.
func TestTLSCertificateBySNI(t *testing.T) {
	ca := testpki.New(t)
	both := []config.Certificate{issue(t, ca, false, "both.test"), issue(t, ca, true, "both.test")}
	lt := config.ListenerTLS{Certificates: append([]config.Certificate{
		issue(t, ca, false, "default.test"), issue(t, ca, false, "api.test"), issue(t, ca, false, "*.wild.test"),
	}, both...)}
	_, addr, reg := tlsServer(t, lt, Options{})
	for sni, want := range map[string]string{"api.test": "api.test", "a.wild.test": "*.wild.test", "unknown.test": "default.test", "": "default.test"} {
		c, err := dialTLS(t, addr, &tls.Config{ServerName: sni, RootCAs: ca.Pool, InsecureSkipVerify: sni == "" || sni == "unknown.test"})
		if err != nil {
			t.Fatalf("SNI %q: %v", sni, err)
		}
		if got := leafName(c); got != want {
			t.Errorf("SNI %q got %s, want %s", sni, got, want)
		}
		// ELB's non-PQ policies: a classical exchange, though Go's client
		// offers the hybrid ML-KEM one first.
		if g := c.ConnectionState().CurveID; g != tls.X25519 {
			t.Errorf("key exchange %s, want X25519", g)
		}
		c.Close()
	}
	for suite, wantRSA := range map[uint16]bool{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256: true, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256: false} {
		c, err := dialTLS(t, addr, &tls.Config{ServerName: "both.test", RootCAs: ca.Pool, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{suite}})
		if err != nil {
			t.Fatalf("both.test with %s: %v", tls.CipherSuiteName(suite), err)
		}
		_, isRSA := c.ConnectionState().PeerCertificates[0].PublicKey.(*rsa.PublicKey)
		if isRSA != wantRSA {
			t.Errorf("both.test with %s: RSA certificate %v, want %v", tls.CipherSuiteName(suite), isRSA, wantRSA)
		}
		c.Close()
	}
	if n := sumWhere(reg, "l4lb_tls_handshakes_total"); n != 6 {
		t.Fatalf("tls_handshakes_total = %v, want 6", n)
	}
}

// Security policies: TLS 1.1 is refused under TLS13-1-2 and TLS 1.2 under
// TLS13-1-3, counted as negotiation errors; the versions they allow work.
func TestTLSSecurityPolicies(t *testing.T) {
	ca := testpki.New(t)
	pair := issue(t, ca, false, "api.test")
	for _, tc := range []struct {
		policy      string
		ok, refused uint16
	}{
		{"ELBSecurityPolicy-TLS13-1-2-2021-06", tls.VersionTLS12, tls.VersionTLS11},
		{"ELBSecurityPolicy-TLS13-1-3-2021-06", tls.VersionTLS13, tls.VersionTLS12},
		{"ELBSecurityPolicy-TLS-1-2-2017-01", tls.VersionTLS12, tls.VersionTLS13},
	} {
		_, addr, reg := tlsServer(t, config.ListenerTLS{Certificates: []config.Certificate{pair}, SecurityPolicy: tc.policy}, Options{})
		c, err := dialTLS(t, addr, &tls.Config{ServerName: "api.test", RootCAs: ca.Pool, MinVersion: tc.ok, MaxVersion: tc.ok})
		if err != nil {
			t.Fatalf("%s: %s: %v", tc.policy, tls.VersionName(tc.ok), err)
		}
		c.Close()
		if _, err := dialTLS(t, addr, &tls.Config{ServerName: "api.test", RootCAs: ca.Pool, MinVersion: tc.refused, MaxVersion: tc.refused}); err == nil {
			t.Fatalf("%s admitted %s", tc.policy, tls.VersionName(tc.refused))
		}
		waitFor(t, func() bool { return sumWhere(reg, "l4lb_client_tls_negotiation_errors_total") == 1 })
	}
}

// ALPN policies: HTTP2Preferred picks h2 when offered, HTTP1Only picks
// http/1.1 over h2, HTTP2Optional prefers http/1.1, HTTP2Only refuses a
// client that offers only http/1.1, None negotiates nothing.
func TestTLSALPNPolicies(t *testing.T) {
	ca := testpki.New(t)
	pair := issue(t, ca, false, "api.test")
	for _, tc := range []struct {
		policy config.ALPNPolicy
		offer  []string
		want   string // "!" : refused
	}{
		{config.ALPNHTTP2Preferred, []string{"http/1.1", "h2"}, "h2"},
		{config.ALPNHTTP1Only, []string{"h2", "http/1.1"}, "http/1.1"},
		{config.ALPNHTTP2Optional, []string{"h2", "http/1.1"}, "http/1.1"},
		{config.ALPNHTTP2Only, []string{"http/1.1"}, "!"},
		{config.ALPNHTTP2Only, []string{"h2", "http/1.1"}, "h2"},
		{config.ALPNNone, []string{"h2", "http/1.1"}, ""},
	} {
		_, addr, _ := tlsServer(t, config.ListenerTLS{Certificates: []config.Certificate{pair}, ALPNPolicy: tc.policy}, Options{})
		c, err := dialTLS(t, addr, &tls.Config{ServerName: "api.test", RootCAs: ca.Pool, NextProtos: tc.offer})
		if tc.want == "!" {
			if err == nil {
				t.Errorf("%s admitted a client offering %v", tc.policy, tc.offer)
				c.Close()
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s with %v: %v", tc.policy, tc.offer, err)
		}
		if got := c.ConnectionState().NegotiatedProtocol; got != tc.want {
			t.Errorf("%s with %v: negotiated %q, want %q", tc.policy, tc.offer, got, tc.want)
		}
		c.Close()
	}
}

// A certificate replaced on disk is served to the next handshake while a
// flow started before goes on; a broken replacement is refused and the
// running certificate kept.
func TestTLSCertificateReloadedFromDisk(t *testing.T) {
	ca := testpki.New(t)
	pair := issue(t, ca, false, "api.test")
	core, logs := observer.New(zap.ErrorLevel)
	_, addr, _ := tlsServer(t, config.ListenerTLS{Certificates: []config.Certificate{pair}}, Options{Logger: zap.New(core)})
	conf := &tls.Config{ServerName: "api.test", RootCAs: ca.Pool}
	before, err := dialTLS(t, addr, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	serial := before.ConnectionState().PeerCertificates[0].SerialNumber

	// A broken file first: kept out.
	os.WriteFile(pair.Cert, []byte("not a certificate"), 0o600)
	waitFor(t, func() bool {
		return logs.FilterMessage("TLS certificate not reloaded; the running one is kept").Len() > 0
	})
	if c, err := dialTLS(t, addr, conf); err != nil || c.ConnectionState().PeerCertificates[0].SerialNumber.Cmp(serial) != 0 {
		t.Fatalf("a broken certificate file replaced the running one: %v", err)
	} else {
		c.Close()
	}
	next := issue(t, ca, false, "api.test")
	b, _ := os.ReadFile(next.Cert)
	k, _ := os.ReadFile(next.Key)
	os.WriteFile(pair.Key, k, 0o600)
	os.WriteFile(pair.Cert, b, 0o600)
	waitFor(t, func() bool {
		c, err := dialTLS(t, addr, conf)
		if err != nil {
			return false
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Cmp(serial) != 0
	})
	before.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := before.Write([]byte("more")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(before, got); err != nil || string(got) != "more" {
		t.Fatalf("the flow started before the new certificate: %q %v", got, err)
	}
}

// A client that keeps its session resumes it, and the handshake is counted
// as resumed.
func TestTLSResumption(t *testing.T) {
	ca := testpki.New(t)
	_, addr, reg := tlsServer(t, config.ListenerTLS{Certificates: []config.Certificate{issue(t, ca, false, "api.test")}}, Options{})
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		conf := &tls.Config{ServerName: "api.test", RootCAs: ca.Pool, MaxVersion: v, ClientSessionCache: tls.NewLRUClientSessionCache(8)}
		for i, want := range []bool{false, true} {
			c, err := dialTLS(t, addr, conf)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.ConnectionState().DidResume; got != want {
				t.Fatalf("%s connection %d: resumed %v, want %v", tls.VersionName(v), i, got, want)
			}
			c.Close()
		}
	}
	if n := sumWhere(reg, "l4lb_tls_handshakes_total", `resumed="true"`); n != 2 {
		t.Fatalf("resumed handshakes counted: %v, want 2", n)
	}
}

// Garbage and half-finished hellos: each is counted (not TLS as a failed
// handshake, a hello that stops at the hello timeout), no goroutine is left
// behind, and a good client is served meanwhile.
func TestTLSBadClients(t *testing.T) {
	ca := testpki.New(t)
	_, addr, reg := tlsServer(t, config.ListenerTLS{Certificates: []config.Certificate{issue(t, ca, false, "api.test")},
		Handshake: config.TLSHandshake{HelloTimeout: 500 * time.Millisecond, Timeout: 500 * time.Millisecond}}, Options{})
	baseline := runtime.NumGoroutine()
	var conns []net.Conn
	for i := range 20 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) // not TLS
		} else {
			c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01}) // a hello that stops
		}
		conns = append(conns, c)
	}
	good, err := dialTLS(t, addr, &tls.Config{ServerName: "api.test", RootCAs: ca.Pool})
	if err != nil {
		t.Fatalf("a good client among bad ones: %v", err)
	}
	good.Close()
	start := time.Now()
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("a bad client was not closed: %v", err)
		}
		c.Close()
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("half-finished hellos lasted %v; the hello timeout is 500 ms", d)
	}
	waitFor(t, func() bool { return sumWhere(reg, "l4lb_client_tls_negotiation_errors_total") == 20 })
	waitFor(t, func() bool { return sumWhere(reg, "l4lb_rejected_flows_total", `reason="tls_handshake"`) == 10 })
	waitFor(t, func() bool { return sumWhere(reg, "l4lb_rejected_flows_total", `reason="tls_hello_timeout"`) == 10 })
	waitFor(t, func() bool { return runtime.NumGoroutine() <= baseline })
}

// sumWhere adds up the series of name whose labels, written k="v", contain
// every filter.
func sumWhere(reg *prometheus.Registry, name string, filters ...string) float64 {
	mfs, _ := reg.Gather()
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			var lbls []string
			for _, lp := range m.GetLabel() {
				lbls = append(lbls, lp.GetName()+`="`+lp.GetValue()+`"`)
			}
			all := strings.Join(lbls, ",")
			for _, f := range filters {
				if !strings.Contains(all, f) {
					continue next
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// tlsEcho is a TLS target that echoes and remembers the SNI and ALPN
// protocol of each handshake.
type tlsEcho struct {
	addr netip.AddrPort
	seen chan tls.ConnectionState
}

func startTLSEcho(t *testing.T, ca *testpki.CA, name string) *tlsEcho {
	t.Helper()
	certFile, keyFile := ca.Issue(t, false, name)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	e := &tlsEcho{addr: ln.Addr().(*net.TCPAddr).AddrPort(), seen: make(chan tls.ConnectionState, 100)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				if tc.Handshake() != nil {
					return
				}
				e.seen <- tc.ConnectionState()
				io.Copy(tc, tc)
			}()
		}
	}()
	return e
}

// A TLS target group re-encrypts: the target receives TLS with the group's
// server name as SNI and the client's ALPN protocol, and is verified
// against the group's CA; a target whose certificate the CA did not sign
// is refused and counted. TLS health checks pass on a handshake.
func TestTLSTargetGroup(t *testing.T) {
	ca, other := testpki.New(t), testpki.New(t)
	back := startTLSEcho(t, ca, "backend.test")
	group := func(caFile string) func(*config.Listener, *config.TargetGroup) {
		return func(l *config.Listener, g *config.TargetGroup) {
			l.Protocol = config.TLS
			l.TLS = &config.ListenerTLS{Certificates: []config.Certificate{issue(t, ca, false, "api.test")},
				SecurityPolicy: config.DefaultSecurityPolicy, ALPNPolicy: config.ALPNHTTP2Preferred}
			g.Protocol = config.TLS
			g.TLS = config.TargetTLS{CAFile: caFile, ServerName: "backend.test"}
			g.HealthCheck = config.HealthCheck{Protocol: config.HealthTLS, Interval: 100 * time.Millisecond, Timeout: time.Second, HealthyThreshold: 2, UnhealthyThreshold: 2}
		}
	}
	reg := prometheus.NewRegistry()
	cfg := testConfig([]config.Target{{Address: back.addr, Weight: 1}}, group(ca.File))
	srv, addr := startServer(t, cfg, Options{Metrics: metrics.New(reg)})
	c, err := dialTLS(t, addr, &tls.Config{ServerName: "api.test", RootCAs: ca.Pool, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case cs := <-back.seen:
		if cs.ServerName != "backend.test" || cs.NegotiatedProtocol != "h2" {
			t.Fatalf("the target saw SNI %q, ALPN %q", cs.ServerName, cs.NegotiatedProtocol)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the target saw no TLS")
	}
	checks := healthcheck.NewScheduler(srv.Registry, healthcheck.Options{})
	defer checks.Close()
	srv.Registry.WatchHealth(checks)
	waitFor(t, func() bool {
		tg, _ := srv.TargetGroup("tg")
		return tg.Targets[0].State == "healthy"
	})

	// The same target, verified against another CA: refused, counted.
	cfg2 := testConfig([]config.Target{{Address: back.addr, Weight: 1}}, group(other.File))
	reg2 := prometheus.NewRegistry()
	_, addr2 := startServer(t, cfg2, Options{Metrics: metrics.New(reg2)})
	if c, err := tls.Dial("tcp", addr2, &tls.Config{ServerName: "api.test", RootCAs: ca.Pool}); err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("ping"))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("a target that fails verification was reached")
		}
		c.Close()
	}
	waitFor(t, func() bool { return sumWhere(reg2, "l4lb_target_tls_negotiation_errors_total") >= 1 })
}

// The access log: one line per connection with NLB's fields, checked
// against a known connection; a client that rejects the certificate is
// logged with the alert it sent.
func TestTLSAccessLog(t *testing.T) {
	ca := testpki.New(t)
	pair := issue(t, ca, false, "api.test")
	logFile := filepath.Join(t.TempDir(), "tls-access.log")
	_, addr, _ := tlsServer(t, config.ListenerTLS{Certificates: []config.Certificate{pair}, ALPNPolicy: config.ALPNHTTP2Preferred, AccessLog: logFile}, Options{})
	c, err := dialTLS(t, addr, &tls.Config{ServerName: "api.test", RootCAs: ca.Pool, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	client := c.LocalAddr().String()
	cs := c.ConnectionState()
	c.Close()
	var lines []string
	waitFor(t, func() bool {
		b, _ := os.ReadFile(logFile)
		lines = strings.Split(strings.TrimSpace(string(b)), "\n")
		return len(lines) == 1 && lines[0] != ""
	})
	f := strings.Fields(lines[0])
	if len(f) != 22 {
		t.Fatalf("%d fields, want NLB's 22: %q", len(f), lines[0])
	}
	serial := cs.PeerCertificates[0].SerialNumber.Text(16)
	want := map[int]string{0: "tls", 1: "2.0", 3: "l4lb", 4: "test", 5: client, 6: addr, 9: "4", 10: "4", 11: "-",
		12: pair.Cert, 13: serial, 14: tls.CipherSuiteName(cs.CipherSuite), 15: "tlsv13", 16: cs.CurveID.String(),
		17: "api.test", 18: "h2", 19: "-", 20: "h2,http/1.1"}
	for i, w := range want {
		if f[i] != w {
			t.Errorf("field %d = %q, want %q", i, f[i], w)
		}
	}
	for _, i := range []int{2, 21} {
		if _, err := time.Parse(time.RFC3339, f[i]); err != nil {
			t.Errorf("field %d is not a time: %q", i, f[i])
		}
	}

	// A client that does not trust the certificate says so with an alert.
	if _, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "api.test"}); err == nil {
		t.Fatal("a client without the CA accepted the certificate")
	}
	waitFor(t, func() bool {
		b, _ := os.ReadFile(logFile)
		lines = strings.Split(strings.TrimSpace(string(b)), "\n")
		return len(lines) == 2
	})
	if f := strings.Fields(lines[1]); len(f) != 22 || f[11] != "bad_certificate" {
		t.Fatalf("the refused handshake's line: %q", lines[1])
	}
}

// stallAfterHello sends a whole ClientHello from src and then nothing: the
// listener answers it, and its handshake holds a slot until it times out.
func stallAfterHello(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	hello, err := tlshello.Record(&tls.Config{ServerName: "api.test", InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	c := dialFrom(t, src, addr)
	c.Write(hello)
	return c
}

// The cap on concurrent handshakes: slots are taken by hellos, not by
// connections. With both slots held by stalled handshakes, a third client
// queues for the queue timeout and is refused, counted as tls_busy; one
// whose slot frees while it queues is served; once the stalled ones time
// out, clients are served again. Silent connections take no slot at all.
func TestTLSHandshakeCap(t *testing.T) {
	ca := testpki.New(t)
	_, addr, reg := tlsServer(t, config.ListenerTLS{Certificates: []config.Certificate{issue(t, ca, false, "api.test")},
		Handshake: config.TLSHandshake{Timeout: 2 * time.Second, QueueTimeout: 300 * time.Millisecond, Max: 2, PerSource: 2}}, Options{})
	conf := &tls.Config{ServerName: "api.test", RootCAs: ca.Pool}
	for range 50 { // silent: no slot
		defer dialFrom(t, "127.0.0.1", addr).Close()
	}
	if _, err := dialTLS(t, addr, conf); err != nil {
		t.Fatalf("50 silent connections held the cap of two: %v", err)
	}
	var stalled []net.Conn
	for range 2 {
		c := stallAfterHello(t, "127.0.0.1", addr)
		defer c.Close()
		stalled = append(stalled, c)
	}
	// Both reach their handshakes: the server's first flight comes back.
	for _, c := range stalled {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != nil {
			t.Fatalf("a stalled hello was not answered: %v", err)
		}
	}
	start := time.Now()
	if c, err := tls.Dial("tcp", addr, conf); err == nil {
		c.Close()
		t.Fatal("a third handshake was admitted with the cap of two held")
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("refused after %v, without queueing", d)
	}
	waitFor(t, func() bool { return sumWhere(reg, "l4lb_rejected_flows_total", `reason="tls_busy"`) == 1 })
	// Queued while the stalled handshakes end: served.
	for _, c := range stalled {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, c) // closed at the 2 s handshake timeout
	}
	if _, err := dialTLS(t, addr, conf); err != nil {
		t.Fatalf("after the stalled handshakes timed out: %v", err)
	}
}

// One network's handshakes take at most its share of the slots: with a /24
// at its share, its next hello is refused as tls_source_busy while another
// /24 (and an IPv6 /64) is served at once.
func TestTLSHandshakeSourceShare(t *testing.T) {
	ca := testpki.New(t)
	_, addr, reg := tlsServer(t, config.ListenerTLS{Certificates: []config.Certificate{issue(t, ca, false, "api.test")},
		Handshake: config.TLSHandshake{Timeout: 3 * time.Second, QueueTimeout: 200 * time.Millisecond, Max: 8, PerSource: 2}}, Options{})
	for _, src := range []string{"127.0.0.7", "127.0.0.8"} { // one /24
		c := stallAfterHello(t, src, addr)
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}
	dial := func(src string) error {
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: "api.test", RootCAs: ca.Pool})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial("127.0.0.9"); err == nil {
		t.Fatal("a /24 past its share of two was served")
	}
	waitFor(t, func() bool { return sumWhere(reg, "l4lb_rejected_flows_total", `reason="tls_source_busy"`) == 1 })
	if err := dial("127.0.1.9"); err != nil {
		t.Fatalf("another /24 was refused: %v", err)
	}
}

// A server_name that is not a DNS host name ends the handshake before the
// name is used, and is counted; NLB's access-log fields that carry what the
// client sent are escaped, so no client can split or forge a line.
func TestTLSServerNameAndLogEscaping(t *testing.T) {
	ca := testpki.New(t)
	logFile := filepath.Join(t.TempDir(), "access.log")
	_, addr, reg := tlsServer(t, config.ListenerTLS{Certificates: []config.Certificate{issue(t, ca, false, "api.test")},
		AccessLog: logFile}, Options{})
	for _, name := range []string{"x\nfake line", strings.Repeat("a", 60000), "a b", "a\"b"} {
		if _, err := dialTLS(t, addr, &tls.Config{ServerName: name, InsecureSkipVerify: true}); err == nil {
			t.Fatalf("server_name %.30q was accepted", name)
		}
	}
	waitFor(t, func() bool { return sumWhere(reg, "l4lb_rejected_flows_total", `reason="tls_bad_sni"`) == 4 })
	// ALPN names are bytes to TLS: a client may send any.
	c, err := dialTLS(t, addr, &tls.Config{ServerName: "api.test", RootCAs: ca.Pool, NextProtos: []string{"h2", "x\n1 fake", "q\"\\"}})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	var lines []string
	waitFor(t, func() bool {
		b, _ := os.ReadFile(logFile)
		lines = strings.Split(strings.TrimSpace(string(b)), "\n")
		return len(lines) == 5
	})
	for _, l := range lines {
		if f := strings.Fields(l); len(f) != 22 || len(l) > 2048 {
			t.Fatalf("a line of %d fields, %d bytes: %.300q", len(f), len(l), l)
		}
	}
	if f := strings.Fields(lines[4]); f[20] != `h2,x\x0a1\x20fake,q\x22\x5c` {
		t.Fatalf("the client's ALPN list is logged as %q", f[20])
	}
}

// Idle terminated flows park both directions as plain TCP flows do, and
// hold no buffer: the next record wakes them with nothing lost, messages
// larger than a record included, and parked flows still idle out.
func TestTLSIdleFlowsPark(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out idle periods for seconds; make test runs it")
	}
	ca := testpki.New(t)
	e := startEcho(t)
	cfg := testConfig([]config.Target{{Address: e.addr, Weight: 1}}, func(l *config.Listener, _ *config.TargetGroup) {
		l.Protocol = config.TLS
		l.TLS = &config.ListenerTLS{Certificates: []config.Certificate{issue(t, ca, false, "api.test")},
			SecurityPolicy: config.DefaultSecurityPolicy, ALPNPolicy: config.ALPNNone}
		l.IdleTimeout = 3 * time.Second // directions park after 750ms of quiet
	})
	srv, addr := startServer(t, cfg, Options{})
	conf := &tls.Config{ServerName: "api.test", RootCAs: ca.Pool}
	const n = 10
	var conns []*tls.Conn
	for range n {
		c, err := dialTLS(t, addr, conf)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	waitFor(t, func() bool { return srv.ParkedDirections() == 2*n })
	msg := make([]byte, 40<<10) // three records
	for i, c := range conns {
		for j := range msg {
			msg[j] = byte(i + j)
		}
		go c.Write(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("flow %d after parking: %v", i, err)
		}
	}
	waitFor(t, func() bool { return srv.ActiveFlows() == 0 })
	if p := srv.ParkedDirections(); p != 0 {
		t.Fatalf("%d directions still parked after every flow ended", p)
	}
	for _, c := range conns {
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("idle flow still open")
		}
	}
}

// The probe that locked clients out: 1,100 connections to a TLS listener
// that send nothing, more than its 1,024 handshake slots. They hold no
// slot, so clients from another source all complete their handshakes, at
// once.
func TestTLSSilentFloodLocksNobodyOut(t *testing.T) {
	ca := testpki.New(t)
	_, addr, reg := tlsServer(t, config.ListenerTLS{Certificates: []config.Certificate{issue(t, ca, false, "api.test")}}, Options{})
	for range 1100 {
		c := dialFrom(t, "127.0.0.30", addr)
		defer c.Close()
	}
	conf := &tls.Config{ServerName: "api.test", RootCAs: ca.Pool}
	for i := range 20 {
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.1.1")}}
		start := time.Now()
		c, err := tls.DialWithDialer(d, "tcp", addr, conf)
		if err != nil {
			t.Fatalf("client %d under 1,100 silent connections: %v", i, err)
		}
		c.Close()
		if took := time.Since(start); took > 3*time.Second { // milliseconds here; generous for -race on a loaded host
			t.Fatalf("client %d took %v", i, took)
		}
	}
	if n := sumWhere(reg, "l4lb_rejected_flows_total"); n != 0 {
		t.Fatalf("%v connections refused", n)
	}
}

// TestFailedNewClosesAccessLogs builds servers that fail, in the TCP plane
// and in the UDP plane, after a TLS listener's access log was opened: no
// descriptor of the log may be left open.
func TestFailedNewClosesAccessLogs(t *testing.T) {
	ca := testpki.New(t)
	pair := issue(t, ca, false, "api.test")
	logFile := filepath.Join(t.TempDir(), "tls-access.log")
	for _, proto := range []config.Protocol{config.TCP, config.UDP} {
		cfg := testConfig([]config.Target{{Address: netip.MustParseAddrPort("127.0.0.1:1"), Weight: 1}}, func(l *config.Listener, _ *config.TargetGroup) {
			l.Protocol = config.TLS
			l.TLS = &config.ListenerTLS{Certificates: []config.Certificate{pair}, SecurityPolicy: config.DefaultSecurityPolicy, ALPNPolicy: config.ALPNNone, AccessLog: logFile}
		})
		cfg.Listeners = append(cfg.Listeners, config.Listener{Name: "bad", Protocol: proto, Port: 0,
			Bind: []config.BindAddr{{IP: netip.MustParseAddr("127.0.0.1")}}, TargetGroup: "missing"})
		for range 5 {
			if _, err := New(cfg, Options{}); err == nil {
				t.Fatalf("New accepted a %s listener of a missing group", proto)
			}
		}
		if n := openFilesAt(t, logFile); n != 0 {
			t.Fatalf("%d descriptors of the access log open after failed News (the %s plane failed)", n, proto)
		}
	}
}

// openFilesAt counts this process's descriptors open on path.
func openFilesAt(t *testing.T, path string) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if to, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && to == path {
			n++
		}
	}
	return n
}
