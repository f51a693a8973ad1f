package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb"
	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
)

// idTarget is a real TCP target that first says who it is, then echoes; its
// health endpoint (HTTP, on a port of its own) answers with code.
type idTarget struct {
	ln     net.Listener
	addr   string
	health string // host:port of the health endpoint
	code   atomic.Int32
	hits   atomic.Int64
	hs     *http.Server
}

func startIDTarget(t *testing.T) *idTarget {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	it := &idTarget{ln: ln, addr: ln.Addr().String()}
	it.code.Store(200)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			it.hits.Add(1)
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "%-21s", it.addr)
				io.Copy(c, c)
			}()
		}
	}()
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	it.health = hl.Addr().String()
	it.hs = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(int(it.code.Load())) })}
	go it.hs.Serve(hl)
	t.Cleanup(func() { ln.Close(); it.hs.Close() })
	return it
}

type running struct {
	srv   *lb.Server
	addr  string // the listener
	admin string // http://host:port
}

// startServe runs `serve` in-process on a config file built from yaml.
func startServe(t *testing.T, yaml string) *running {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "l4lb.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	readyc := make(chan *running, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, loaded{cfg: cfg}, zap.NewNop(), 500*time.Millisecond, func(s *lb.Server, admin net.Addr) {
			r := &running{srv: s, addr: s.Addrs(cfg.Listeners[0].Name)[0].String()}
			if admin != nil {
				r.admin = "http://" + admin.String()
			}
			readyc <- r
		})
	}()
	var r *running
	select {
	case r = <-readyc:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return r
}

func groupYAML(port string, targets []*idTarget, healthPort bool, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "admin: {listen: \"127.0.0.1:0\"}\nlisteners:\n  - {name: web, port: %s, bind: [127.0.0.1], target_group: web}\n", port)
	b.WriteString("target_groups:\n  - name: web\n    targets:\n")
	for _, it := range targets {
		fmt.Fprintf(&b, "      - {address: %q}\n", it.addr)
	}
	b.WriteString("    health_check: {interval: 100ms, timeout: 80ms, healthy_threshold: 2, unhealthy_threshold: 2")
	if healthPort {
		_, p, _ := net.SplitHostPort(targets[0].health)
		fmt.Fprintf(&b, ", protocol: HTTP, path: /health, port: %s", p)
	}
	b.WriteString("}\n")
	b.WriteString(extra)
	return b.String()
}

// freePort finds a loopback port for a listener (the config needs one).
// freePort returns a port that is free now, from below the kernel's
// ephemeral range (32768-60999): a port from port 0 could be taken as a
// client's source port by a test running alongside before serve binds it.
func freePort(t *testing.T) string {
	t.Helper()
	for range 1000 {
		p := 20000 + (os.Getpid()*7+int(nextPort.Add(1)))%12000
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err == nil {
			ln.Close()
			return strconv.Itoa(p)
		}
	}
	t.Fatal("no free port below the ephemeral range")
	return ""
}

var nextPort atomic.Int64

func describe(t *testing.T, admin string) []api.TargetHealth {
	t.Helper()
	code, out, errs := runCLI("targets", "describe-health", "--target-group", "web", "--admin", admin, "-o", "json")
	if code != 0 {
		t.Fatalf("describe-health: exit %d: %s", code, errs)
	}
	var ths []api.TargetHealth
	if err := json.Unmarshal([]byte(out), &ths); err != nil {
		t.Fatalf("describe-health output: %v\n%s", err, out)
	}
	return ths
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A target whose health endpoint answers 500 shows as unhealthy with NLB's
// reason in describe-health, and healthy again once it recovers.
func TestDescribeHealthShowsStateAndReason(t *testing.T) {
	it := startIDTarget(t)
	r := startServe(t, groupYAML(freePort(t), []*idTarget{it}, true, ""))
	waitUntil(t, "healthy", func() bool { return describe(t, r.admin)[0].State == api.StateHealthy })
	it.code.Store(500)
	waitUntil(t, "unhealthy", func() bool { return describe(t, r.admin)[0].State == api.StateUnhealthy })
	th := describe(t, r.admin)[0]
	if th.Reason != api.ReasonResponseCodeMismatch || !strings.Contains(th.Description, "500") {
		t.Fatalf("unhealthy target: %+v", th)
	}
	code, out, _ := runCLI("targets", "describe-health", "--target-group", "web", "--admin", r.admin)
	if code != 0 || !strings.Contains(out, "unhealthy") || !strings.Contains(out, api.ReasonResponseCodeMismatch) {
		t.Fatalf("table output (exit %d):\n%s", code, out)
	}
	it.code.Store(200)
	waitUntil(t, "healthy again", func() bool { return describe(t, r.admin)[0].State == api.StateHealthy })
}

// Under a steady 200+ new connections per second for 10 s, killing one of
// three targets costs no client a failure: connects it refuses are retried,
// passive and active checks take it out of rotation.
func TestKillTargetUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("10 s load test")
	}
	ts := []*idTarget{startIDTarget(t), startIDTarget(t), startIDTarget(t)}
	r := startServe(t, groupYAML(freePort(t), ts, false, ""))
	const rate, dur = 250, 10 * time.Second
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	var inflight sync.RWMutex // the kill waits for connections in flight
	tick := time.NewTicker(time.Second / rate)
	defer tick.Stop()
	start := time.Now()
	killed := false
	for time.Since(start) < dur {
		<-tick.C
		if !killed && time.Since(start) > dur/3 {
			killed = true
			// Kill between connections: a connection the dying target's
			// kernel had already accepted dies with it, through any proxy.
			inflight.Lock()
			ts[1].ln.Close()
			inflight.Unlock()
		}
		wg.Add(1)
		inflight.RLock()
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", r.addr, 5*time.Second)
			if err != nil {
				inflight.RUnlock()
				failed.Add(1)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			id := make([]byte, 21)
			_, err = io.ReadFull(c, id)
			inflight.RUnlock()
			if err != nil {
				failed.Add(1)
				return
			}
			ok.Add(1)
		}()
	}
	wg.Wait()
	if failed.Load() != 0 || ok.Load() < int64(rate*dur.Seconds()*0.8) {
		t.Fatalf("%d ok, %d failed; want zero failures", ok.Load(), failed.Load())
	}
	th := describe(t, r.admin)
	if th[1].State != api.StateUnhealthy {
		t.Fatalf("killed target is %s, want unhealthy", th[1].State)
	}
}

// `l4lb route` names the target that a real connection from that source
// address reaches.
func TestRouteMatchesRealConnections(t *testing.T) {
	ts := []*idTarget{startIDTarget(t), startIDTarget(t), startIDTarget(t)}
	r := startServe(t, groupYAML(freePort(t), ts, false, ""))
	waitUntil(t, "all healthy", func() bool {
		for _, th := range describe(t, r.admin) {
			if th.State != api.StateHealthy {
				return false
			}
		}
		return true
	})
	seen := map[string]bool{}
	for i := range 30 {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i))}}
		c, err := d.Dial("tcp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		id := make([]byte, 21)
		if _, err := io.ReadFull(c, id); err != nil {
			t.Fatal(err)
		}
		src := c.LocalAddr().String()
		c.Close()
		got := strings.TrimSpace(string(id))
		code, out, errs := runCLI("route", "--listener", "web", "--src", src, "--dst", r.addr, "--admin", r.admin, "-o", "json")
		if code != 0 {
			t.Fatalf("route: exit %d: %s", code, errs)
		}
		var rt api.Route
		json.Unmarshal([]byte(out), &rt)
		if rt.Target != got {
			t.Fatalf("route for %s says %s; the connection reached %s", src, rt.Target, got)
		}
		seen[got] = true
	}
	if len(seen) < 2 {
		t.Fatalf("30 sources all reached %v: the test shows nothing", seen)
	}
	// A range of client ports: one route per port, each the one a single
	// query gives.
	code, out, errs := runCLI("route", "--listener", "web", "--src", "127.0.0.2:40000-40009", "--dst", r.addr, "--admin", r.admin, "-o", "json")
	if code != 0 {
		t.Fatalf("route over a range: exit %d: %s", code, errs)
	}
	var rts []api.Route
	json.Unmarshal([]byte(out), &rts)
	if len(rts) != 10 {
		t.Fatalf("route over 10 ports gave %d routes: %s", len(rts), out)
	}
	for i, rt := range rts {
		src := fmt.Sprintf("127.0.0.2:%d", 40000+i)
		_, one, _ := runCLI("route", "--listener", "web", "--src", src, "--dst", r.addr, "--admin", r.admin, "-o", "json")
		var want api.Route
		json.Unmarshal([]byte(one), &want)
		if rt.Source != src || rt.Target == "" || rt.Target != want.Target {
			t.Errorf("range route %d: %s -> %s; a single query for %s says %s", i, rt.Source, rt.Target, src, want.Target)
		}
	}
	if code, out, _ := runCLI("route", "--listener", "web", "--src", "127.0.0.2:40000-40002", "--admin", r.admin); code != 0 || strings.Count(out, "\n") != 4 {
		t.Errorf("route over 3 ports as a table: exit %d:\n%s", code, out)
	}
}

func TestAdminAPIErrors(t *testing.T) {
	it := startIDTarget(t)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600)
	yaml := strings.Replace(groupYAML(freePort(t), []*idTarget{it}, false, ""), `admin: {listen: "127.0.0.1:0"}`,
		fmt.Sprintf(`admin: {listen: "127.0.0.1:0", token_file: %q}`, tokenFile), 1)
	r := startServe(t, yaml)
	call := func(method, path, token, body string) (int, string) {
		req, _ := http.NewRequest(method, r.admin+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		method, path, token, body string
		code                      int
		says                      string
	}{
		{"GET", "/v1/target-groups", "", "", 401, "token"},
		{"GET", "/v1/target-groups", "wrong", "", 401, "token"},
		{"GET", "/v1/target-groups", "s3cret", "", 200, `"name":"web"`},
		{"POST", "/v1/target-groups/web/targets", "s3cret", "{not json", 400, "malformed JSON"},
		{"POST", "/v1/target-groups/web/targets", "s3cret", `{"address": "127.0.0.1:1", "colour": "red"}`, 400, "unknown field"},
		{"POST", "/v1/target-groups/web/targets", "s3cret", `{"address": "nowhere"}`, 400, "address"},
		{"POST", "/v1/target-groups/nope/targets", "s3cret", `{"address": "127.0.0.1:1"}`, 404, "nope"},
		{"GET", "/v1/target-groups/nope/targets", "s3cret", "", 404, "nope"},
		{"DELETE", "/v1/target-groups/web/targets/127.0.0.9:9", "s3cret", "", 404, "not registered"},
		{"GET", "/v1/route?listener=web", "s3cret", "", 400, "src"},
		{"GET", "/v1/route?listener=nope&src=127.0.0.1:1", "s3cret", "", 404, "nope"},
		{"GET", "/v1/flows?limit=abc", "s3cret", "", 400, "limit"},
		{"POST", "/v1/target-groups/web/targets", "s3cret", `{"address": "127.0.0.1:1", "weight": 3}`, 200, "initial"},
	} {
		code, body := call(tc.method, tc.path, tc.token, tc.body)
		if code != tc.code || !strings.Contains(body, tc.says) {
			t.Errorf("%s %s: %d %s; want %d mentioning %q", tc.method, tc.path, code, body, tc.code, tc.says)
		}
		if code >= 400 {
			var e api.Error
			if json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
				t.Errorf("%s %s: error body %q is not {\"error\": ...}", tc.method, tc.path, body)
			}
		}
	}
	// The CLI passes the token and reports 401 without it.
	if code, _, _ := runCLI("targets", "describe-health", "--target-group", "web", "--admin", r.admin); code == 0 {
		t.Error("describe-health without a token succeeded")
	}
	if code, out, errs := runCLI("targets", "describe-health", "--target-group", "web", "--admin", r.admin, "--token-file", tokenFile); code != 0 || !strings.Contains(out, "127.0.0.1:1") {
		t.Errorf("describe-health with the token: exit %d %s %s", code, out, errs)
	}
}

// Every target failing its health check while its traffic port serves:
// routing fails open, traffic keeps flowing, and the flows are counted.
func TestFailOpenEndToEnd(t *testing.T) {
	ts := []*idTarget{startIDTarget(t), startIDTarget(t)}
	ts[0].code.Store(503) // the shared health endpoint fails for everyone
	r := startServe(t, groupYAML(freePort(t), ts, true, ""))
	waitUntil(t, "all unhealthy", func() bool {
		for _, th := range describe(t, r.admin) {
			if th.State != api.StateUnhealthy {
				return false
			}
		}
		return true
	})
	for range 20 {
		c, err := net.DialTimeout("tcp", r.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 21)); err != nil {
			t.Fatalf("fail-open flow: %v", err)
		}
		c.Close()
	}
	resp, err := http.Get(r.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var n float64
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, `l4lb_unhealthy_routing_flows_total{target_group="web"}`) {
			fmt.Sscanf(line[strings.LastIndex(line, " ")+1:], "%g", &n)
		}
	}
	if n < 20 {
		t.Fatalf("l4lb_unhealthy_routing_flows_total = %v, want at least 20", n)
	}
}
