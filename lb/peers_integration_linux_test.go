//go:build integration

package lb

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/testpki"
	"github.com/l4lb/l4lb/pkg/config"
)

func httpGet(t *testing.T, c net.Conn) string {
	t.Helper()
	fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: l4lb.test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b))
}

func waitTCP(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func startProc(t *testing.T, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

// nginx with `listen ... proxy_protocol` sees and logs the client's own
// address, sent by l4lb in a PROXY v2 header.
func TestProxyV2ToNginx(t *testing.T) {
	bin := needBinary(t, "nginx")
	dir := t.TempDir()
	port := freeTCPUDPPort(t)
	conf := fmt.Sprintf(`daemon off;
master_process off;
user root;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events {}
http {
  client_body_temp_path %[1]s;
  proxy_temp_path %[1]s;
  fastcgi_temp_path %[1]s;
  uwsgi_temp_path %[1]s;
  scgi_temp_path %[1]s;
  log_format pp '$proxy_protocol_addr:$proxy_protocol_port via $remote_addr';
  access_log %[1]s/access.log pp;
  server {
    listen 127.0.0.1:%[2]d proxy_protocol;
    location / { return 200 "$proxy_protocol_addr\n"; }
  }
}
`, dir, port)
	os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644)
	startProc(t, bin, "-c", filepath.Join(dir, "nginx.conf"), "-p", dir)
	target := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	waitTCP(t, target.String())
	_, addr := startServer(t, testConfig([]config.Target{{Address: target, Weight: 1}}, withPPv2), Options{})
	c := dialFrom(t, "127.0.0.7", addr)
	if got := httpGet(t, c); got != "127.0.0.7" {
		t.Fatalf("nginx saw client %q, want 127.0.0.7", got)
	}
	c.Close()
	var log []byte
	waitFor(t, func() bool {
		log, _ = os.ReadFile(filepath.Join(dir, "access.log"))
		return len(log) > 0
	})
	if !strings.HasPrefix(string(log), "127.0.0.7:") {
		t.Fatalf("nginx access log: %q", log)
	}
}

// proxyHAProxy runs HAProxy with accept-proxy on a loopback port, answering
// each HTTP request with the sample expression expr (HAProxy's log-format),
// and returns its address.
func proxyHAProxy(t *testing.T, expr string) netip.AddrPort {
	t.Helper()
	bin := needBinary(t, "haproxy")
	dir := t.TempDir()
	port := freeTCPUDPPort(t)
	conf := fmt.Sprintf(`global
    maxconn 100
defaults
    mode http
    timeout connect 5s
    timeout client 5s
    timeout server 5s
frontend fe
    bind 127.0.0.1:%d accept-proxy
    http-request return status 200 content-type text/plain lf-string "%s\n"
`, port, expr)
	os.WriteFile(filepath.Join(dir, "haproxy.cfg"), []byte(conf), 0o644)
	startProc(t, bin, "-db", "-f", filepath.Join(dir, "haproxy.cfg"))
	target := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	waitTCP(t, target.String())
	return target
}

// HAProxy with accept-proxy sees the client's address too.
func TestProxyV2ToHAProxy(t *testing.T) {
	target := proxyHAProxy(t, "%[src]")
	_, addr := startServer(t, testConfig([]config.Target{{Address: target, Weight: 1}}, withPPv2), Options{})
	c := dialFrom(t, "127.0.0.8", addr)
	if got := httpGet(t, c); got != "127.0.0.8" {
		t.Fatalf("HAProxy saw client %q, want 127.0.0.8", got)
	}
}

// Behind a TLS listener, the PROXY v2 header carries the client's TLS
// session; HAProxy reads its SNI (PP2_TYPE_AUTHORITY) and the client's
// address. (nginx 1.22, Debian 12's, has no variables for TLVs; nginx
// 1.23.2 and later log $proxy_protocol_tlv_ssl_* and
// $proxy_protocol_tlv_authority from the same header.)
func TestProxyV2SSLTLVsToHAProxy(t *testing.T) {
	target := proxyHAProxy(t, "%[fc_pp_authority] %[src]")
	ca := testpki.New(t)
	cfg := testConfig([]config.Target{{Address: target, Weight: 1}}, func(l *config.Listener, g *config.TargetGroup) {
		withPPv2(l, g)
		l.Protocol = config.TLS
		l.TLS = &config.ListenerTLS{Certificates: []config.Certificate{issue(t, ca, false, "api.test")},
			SecurityPolicy: config.DefaultSecurityPolicy, ALPNPolicy: config.ALPNNone}
	})
	_, addr := startServer(t, cfg, Options{})
	raw := dialFrom(t, "127.0.0.9", addr)
	c := tls.Client(raw, &tls.Config{ServerName: "api.test", RootCAs: ca.Pool})
	if got := httpGet(t, c); got != "api.test 127.0.0.9" {
		t.Fatalf("HAProxy saw %q, want the SNI and the client: \"api.test 127.0.0.9\"", got)
	}
}
