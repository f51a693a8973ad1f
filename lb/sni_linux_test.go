package lb

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
	"github.com/l4lb/l4lb/pkg/tlshello"
)

// helloTarget reads a whole ClientHello and answers with its name and
// whether the hello arrived byte for byte as the client sent it.
func helloTarget(t *testing.T, name string, sent map[string][]byte) netip.AddrPort {
	return serveTCP(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		var got []byte
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			got = append(got, buf[:n]...)
			if _, perr := tlshello.ServerName(got); perr != tlshello.ErrShort || err != nil {
				break
			}
		}
		intact := false
		for _, h := range sent {
			intact = intact || bytes.Equal(got, h)
		}
		fmt.Fprintf(c, "%s %v", name, intact)
	})
}

// SNI rules route each TLS flow by its ClientHello's name: exact names, then
// wildcards, in order; a hello with no name or an unmatched one takes the
// listener's group. The hello reaches the target untouched, also when it
// comes in two pieces. Bytes that are not a hello are refused and counted.
func TestSNIRules(t *testing.T) {
	hellos := map[string][]byte{}
	for _, sni := range []string{"api.example.com", "x.example.com", "other.org", ""} {
		b, err := tlshello.Record(&tls.Config{ServerName: sni, InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		hellos[sni] = b
	}
	api, wild, def := helloTarget(t, "api", hellos), helloTarget(t, "wild", hellos), helloTarget(t, "default", hellos)
	cfg := testConfig([]config.Target{{Address: def, Weight: 1}}, func(l *config.Listener, _ *config.TargetGroup) {
		l.Rules = []config.Rule{
			{SNI: []string{"api.example.com"}, TargetGroup: "api"},
			{SNI: []string{"*.example.com", "example.com"}, TargetGroup: "wild"},
		}
	})
	for _, g := range []struct {
		name string
		at   netip.AddrPort
	}{{"api", api}, {"wild", wild}} {
		cfg.TargetGroups = append(cfg.TargetGroups, config.TargetGroup{Name: g.name, Protocol: config.TCP,
			Targets: []config.Target{{Address: g.at, Weight: 1}}, Attributes: cfg.TargetGroups[0].Attributes})
	}
	reg := prometheus.NewRegistry()
	srv, addr := startServer(t, cfg, Options{Metrics: metrics.New(reg)})
	ask := func(hello []byte, split bool) (string, error) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if split {
			c.Write(hello[:len(hello)/2])
			time.Sleep(50 * time.Millisecond)
			hello = hello[len(hello)/2:]
		}
		c.Write(hello)
		b, err := io.ReadAll(c)
		return string(b), err
	}
	for sni, want := range map[string]string{"api.example.com": "api", "x.example.com": "wild", "other.org": "default", "": "default"} {
		for _, split := range []bool{false, true} {
			if got, err := ask(hellos[sni], split); got != want+" true" {
				t.Errorf("SNI %q (split %v): %q %v; want %q", sni, split, got, err, want+" true")
			}
		}
	}
	// l4lb route says the same for a host name.
	for sni, want := range map[string]string{"API.example.com.": "api", "x.example.com": "wild", "other.org": "tg", "": "tg"} {
		rt, err := srv.Route("test", "127.0.0.9:1000", "", "tcp", sni)
		if err != nil || rt.TargetGroup != want {
			t.Errorf("route for SNI %q: group %q (%v), want %q", sni, rt.TargetGroup, err, want)
		}
	}
	if _, err := srv.Route("test", "127.0.0.9:1000", "", "udp", "api.example.com"); err == nil {
		t.Error("an SNI for a UDP route was accepted")
	}
	if got, _ := ask([]byte("GET / HTTP/1.0\r\n\r\n"), false); got != "" {
		t.Errorf("a plain HTTP request was answered: %q", got)
	}
	waitFor(t, func() bool { return counterValue(t, reg, "l4lb_rejected_flows_total") == 1 })
}
