package lb

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/pkg/admin"
	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

const consoleToken = "console-token"

// consoleAPI serves the admin API of a real server with one echo target,
// with metrics and a token, on loopback.
func consoleAPI(t *testing.T) (*httptest.Server, string, *Server) {
	t.Helper()
	e := startEcho(t)
	reg := prometheus.NewRegistry()
	srv, addr := startServer(t, testConfig([]config.Target{{Address: e.addr, Weight: 1}}, nil), Options{Metrics: metrics.New(reg)})
	h := admin.Handler(admin.Options{Registry: srv, Gatherer: reg, Token: consoleToken, Listeners: srv.Listeners, Events: srv.Feed(), Context: t.Context()})
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts, addr, srv
}

func consoleDo(t *testing.T, method, url, token string, hdr map[string]string, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if method == http.MethodGet && strings.HasPrefix(url, "/ui/") {
		return resp.StatusCode, resp.Header.Get("Content-Security-Policy") + "\n" + string(b)
	}
	return resp.StatusCode, string(b)
}

func snapshot(t *testing.T, base string) api.Console {
	t.Helper()
	code, body := consoleDo(t, http.MethodGet, base+"/v1/console", consoleToken, nil, "")
	if code != http.StatusOK {
		t.Fatalf("GET /v1/console: %d %s", code, body)
	}
	var c api.Console
	if err := json.Unmarshal([]byte(body), &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// The console's page is served without the token (it holds nothing, and
// asks for the token first), under a policy that allows no request outside
// the admin address; its data needs the token, as the API does.
func TestConsolePageAndToken(t *testing.T) {
	ts, _, _ := consoleAPI(t)
	code, body := consoleDo(t, http.MethodGet, ts.URL+"/", "", nil, "")
	if code != http.StatusFound {
		t.Fatalf("GET / without the token: %d %s, want a redirect to /ui/", code, body)
	}
	req, _ := http.NewRequest(http.MethodGet, ts.URL+"/ui/", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	csp := resp.Header.Get("Content-Security-Policy")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), `<script src="console.js"`) ||
		!strings.Contains(csp, "connect-src 'self'") || !strings.Contains(csp, "default-src 'none'") {
		t.Fatalf("GET /ui/: %d, CSP %q, page %.200s", resp.StatusCode, csp, page)
	}
	for _, f := range []string{"console.js", "render.js", "console.css"} {
		if code, body := consoleDo(t, http.MethodGet, ts.URL+"/ui/"+f, "", nil, ""); code != http.StatusOK || len(body) < 1000 {
			t.Fatalf("GET /ui/%s: %d, %d bytes", f, code, len(body))
		}
	}
	if code, body := consoleDo(t, http.MethodGet, ts.URL+"/ui/auth", "", nil, ""); code != http.StatusOK || !strings.Contains(body, `"auth":"token"`) {
		t.Fatalf("GET /ui/auth: %d %s", code, body)
	}
	if code, _ := consoleDo(t, http.MethodGet, ts.URL+"/v1/console", "", nil, ""); code != http.StatusUnauthorized {
		t.Fatalf("GET /v1/console without the token: %d, want 401", code)
	}
	if code, _ := consoleDo(t, http.MethodGet, ts.URL+"/v1/console", "wrong", nil, ""); code != http.StatusUnauthorized {
		t.Fatalf("GET /v1/console with a wrong token: %d, want 401", code)
	}
	if c := snapshot(t, ts.URL); c.Auth != "token" || len(c.TargetGroups) != 1 || len(c.Listeners) != 1 {
		t.Fatalf("the snapshot: %+v", c)
	}
	// Without a token, the console says so: it then makes no changes.
	h := admin.Handler(admin.Options{Registry: nil})
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/ui/auth", nil))
	if w.Code != http.StatusNotFound {
		t.Fatalf("a handler with no registry serves the console: %d", w.Code)
	}
}

// A change a web page in the operator's browser could make for another
// site is refused, and changes nothing: an Origin that is not the admin
// address, or a loopback admin address asked for under a DNS name (DNS
// rebinding). The console's own origin, and requests without one (the
// CLI), pass.
func TestConsoleCrossSiteRefused(t *testing.T) {
	ts, _, srv := consoleAPI(t)
	reg := func(hdr map[string]string) (int, string) {
		return consoleDo(t, http.MethodPost, ts.URL+"/v1/target-groups/tg/targets", consoleToken, hdr, `{"address": "127.0.0.1:9", "weight": 1}`)
	}
	if code, body := reg(map[string]string{"Origin": "http://attacker.example"}); code != http.StatusForbidden || !strings.Contains(body, "cross-origin") {
		t.Fatalf("a change from another origin: %d %s, want 403", code, body)
	}
	if code, body := reg(map[string]string{"Host": "rebound.example:80"}); code != http.StatusForbidden || !strings.Contains(body, "rebound") {
		t.Fatalf("a change under a DNS name: %d %s, want 403", code, body)
	}
	if code, _ := consoleDo(t, http.MethodGet, ts.URL+"/v1/console", consoleToken, map[string]string{"Host": "rebound.example"}, ""); code != http.StatusForbidden {
		t.Fatalf("a read under a DNS name: %d, want 403", code)
	}
	if code, _ := consoleDo(t, http.MethodGet, ts.URL+"/readyz", "", map[string]string{"Host": "probe.example"}, ""); code != http.StatusOK {
		t.Fatalf("a probe under a DNS name: %d, want 200 (probes say nothing, and change nothing)", code)
	}
	if tg, _ := srv.TargetGroup("tg"); len(tg.Targets) != 1 {
		t.Fatalf("a refused change changed the group: %+v", tg.Targets)
	}
	if code, body := reg(map[string]string{"Origin": ts.URL}); code != http.StatusOK {
		t.Fatalf("a change from the console's own origin: %d %s", code, body)
	}
	port := ts.URL[strings.LastIndex(ts.URL, ":"):]
	for _, host := range []string{"localhost", "myhost", "admin.localhost", "[::1]"} {
		if code, body := consoleDo(t, http.MethodGet, ts.URL+"/v1/console", consoleToken, map[string]string{"Host": host + port}, ""); code != http.StatusOK {
			t.Fatalf("a read under %s: %d %s", host, code, body)
		}
	}
	if code, body := reg(nil); code != http.StatusOK {
		t.Fatalf("a change without an Origin (the CLI): %d %s", code, body)
	}
}

// The snapshot's rates are the counters' rates: connections made while a
// console is open show as the target's new flows per second, and the
// sparkline's points, each a second's rate, add up to them.
func TestConsoleRates(t *testing.T) {
	ts, addr, _ := consoleAPI(t)
	c := snapshot(t, ts.URL) // the console opens: sampling starts
	if got := c.Listeners[0].Addresses; len(got) != 1 || got[0].Path != "socket" || got[0].Address != "tcp://"+addr {
		t.Fatalf("the listener's addresses: %+v, want tcp://%s on the socket path", got, addr)
	}
	const n = 60
	for i := range n {
		roundTrip(t, addr, fmt.Sprint("console ", i))
	}
	var tr api.TargetRate
	deadline := time.Now().Add(10 * time.Second)
	for {
		c = snapshot(t, ts.URL)
		tr = c.TargetGroups[0].Targets[0]
		sum := 0.0
		for _, v := range tr.Spark {
			sum += v * c.SparkStep
		}
		if math.Abs(sum-n) <= n*0.1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sparkline adds up to %.1f flows, want about %d: %+v", sum, n, tr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	code, body := consoleDo(t, http.MethodGet, ts.URL+"/metrics", consoleToken, nil, "")
	want := fmt.Sprintf(`l4lb_target_new_flows_total{target="%s",target_group="tg"} %d`, tr.Address, n)
	if code != http.StatusOK || !strings.Contains(body, want) {
		t.Fatalf("/metrics lacks %s", want)
	}
	if !strings.Contains(body, fmt.Sprintf(`l4lb_target_processed_bytes_total{target="%s",target_group="tg"}`, tr.Address)) {
		t.Fatal("/metrics lacks the target's bytes")
	}
}

// With 200 targets the snapshot stays small enough to read once a second.
func TestConsoleManyTargets(t *testing.T) {
	targets := make([]config.Target, 200)
	for i := range targets {
		targets[i] = config.Target{Address: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(1 + i/250), byte(1 + i%250)}), 9), Weight: 1 + i%5}
	}
	reg := prometheus.NewRegistry()
	srv := startedServer(t, testConfig(targets, nil), Options{Metrics: metrics.New(reg)})
	ts := httptest.NewServer(admin.Handler(admin.Options{Registry: srv, Gatherer: reg, Token: consoleToken, Listeners: srv.Listeners, Context: t.Context()}))
	defer ts.Close()
	waitFor(t, func() bool { return len(snapshot(t, ts.URL).TargetGroups[0].Targets[199].Spark) >= 2 }) // sampled twice
	start := time.Now()
	code, body := consoleDo(t, http.MethodGet, ts.URL+"/v1/console", consoleToken, nil, "")
	took := time.Since(start)
	var c api.Console
	if code != http.StatusOK || json.Unmarshal([]byte(body), &c) != nil || len(c.TargetGroups[0].Targets) != 200 || len(c.TargetGroups[0].Targets[199].Spark) < 2 {
		t.Fatalf("GET /v1/console with 200 targets: %d, %d bytes", code, len(body))
	}
	t.Logf("200 targets: the snapshot is %d bytes, answered in %v", len(body), took)
}

// consoleOf is the console's snapshot of srv, whose metrics are on reg.
func consoleOf(t *testing.T, srv *Server, reg *prometheus.Registry) api.Console {
	t.Helper()
	ts := httptest.NewServer(admin.Handler(admin.Options{Registry: srv, Gatherer: reg, Token: consoleToken, Listeners: srv.Listeners, Context: t.Context()}))
	defer ts.Close()
	return snapshot(t, ts.URL)
}
