//go:build integration

package lb

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/testpki"
	"github.com/l4lb/l4lb/pkg/config"
)

// openssl runs s_client against addr with args and returns its output.
func openssl(t *testing.T, addr string, args ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("openssl is missing (make deps installs it)")
		}
		t.Skip("openssl is missing")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "openssl", append([]string{"s_client", "-connect", addr}, args...)...)
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// openssl s_client, a client that is not Go's: SNI picks the certificate
// and the chain verifies, ALPN h2 is chosen under HTTP2Preferred, TLS 1.1
// is refused under the default policy with a protocol-version alert (the
// client itself allowed to offer it), and TLS 1.2 is refused under
// TLS13-1-3.
func TestTLSWithOpenSSL(t *testing.T) {
	ca := testpki.New(t)
	caFile := ca.File
	certs := []config.Certificate{issue(t, ca, false, "default.test"), issue(t, ca, true, "api.test")}
	_, addr, _ := tlsServer(t, config.ListenerTLS{Certificates: certs, ALPNPolicy: config.ALPNHTTP2Preferred}, Options{})

	out, err := openssl(t, addr, "-servername", "api.test", "-CAfile", caFile, "-verify_return_error", "-alpn", "http/1.1,h2")
	if err != nil || !strings.Contains(out, "CN = api.test") || !strings.Contains(out, "Verify return code: 0 (ok)") ||
		!strings.Contains(out, "ALPN protocol: h2") {
		t.Fatalf("openssl s_client -servername api.test: %v\n%s", err, out)
	}
	out, err = openssl(t, addr, "-servername", "nobody.test", "-CAfile", caFile)
	if err != nil || !strings.Contains(out, "CN = default.test") {
		t.Fatalf("an unknown name did not get the default certificate: %v\n%s", err, out)
	}
	out, err = openssl(t, addr, "-servername", "api.test", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
	if err == nil || !strings.Contains(out, "alert protocol version") {
		t.Fatalf("TLS 1.1 under ELBSecurityPolicy-TLS13-1-2-2021-06: %v\n%s", err, out)
	}

	_, addr13, _ := tlsServer(t, config.ListenerTLS{Certificates: certs, SecurityPolicy: "ELBSecurityPolicy-TLS13-1-3-2021-06"}, Options{})
	if out, err := openssl(t, addr13, "-servername", "api.test", "-tls1_2"); err == nil || !strings.Contains(out, "alert protocol version") {
		t.Fatalf("TLS 1.2 under ELBSecurityPolicy-TLS13-1-3-2021-06: %v\n%s", err, out)
	}
	if out, err := openssl(t, addr13, "-servername", "api.test", "-tls1_3", "-CAfile", caFile); err != nil || !strings.Contains(out, "TLSv1.3") {
		t.Fatalf("TLS 1.3 under ELBSecurityPolicy-TLS13-1-3-2021-06: %v\n%s", err, out)
	}
}
