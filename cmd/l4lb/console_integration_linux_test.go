//go:build integration

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"image/png"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/l4lb/l4lb/bench"
	"github.com/l4lb/l4lb/internal/netnstest"
	"github.com/l4lb/l4lb/pkg/api"
)

var updateScreenshot = flag.Bool("update-screenshot", false, "write the console test's screenshot to docs/console.png")

// The live console in a real browser (Debian's chromium, headless): behind
// the admin token it asks for the token, then shows the three targets; a
// target that stops turns unhealthy, with its reason, within the check
// interval plus 2 s; a deregistration and a weight change made through the
// console, each confirmed, reach the registry. The page writes nothing to
// the console and makes no request outside the admin address.
func TestConsoleInBrowser(t *testing.T) {
	browser := netnstest.Need(t, "chromium", "chromium")
	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "console-test")
	var addrs []string
	var targets []*bench.Target
	for range 3 {
		tg, err := bench.StartTarget(bench.TargetEcho, "tcp", "127.0.0.1:0", 0)
		if err != nil {
			t.Fatal(err)
		}
		defer tg.Close()
		targets = append(targets, tg)
		addrs = append(addrs, tg.Addr.String())
	}
	const token = "console-test-token"
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const interval = 500 * time.Millisecond
	pWeb, pAdmin := freePort(t), freePort(t)
	d := startDaemon(t, bin, pAdmin, fmt.Sprintf(`admin: {listen: "127.0.0.1:%s", token_file: %q}
zones: {a: [127.0.0.1]}
listeners:
  - {name: web, port: %s, target_group: web}
target_groups:
  - name: web
    targets: [{address: %q, zone: a}, {address: %q, zone: a}, {address: %q, zone: a}]
    health_check: {protocol: TCP, interval: %s, timeout: 400ms, healthy_threshold: 2, unhealthy_threshold: 2}
    attributes: {deregistration_delay.timeout_seconds: "120"}
`, pAdmin, tokenFile, pWeb, addrs[0], addrs[1], addrs[2], interval))
	web := "127.0.0.1:" + pWeb

	// Traffic through the listener for the rates and sparklines, bounded
	// in count and time, in bursts of varying size.
	trafficDone := make(chan struct{})
	stopTraffic := make(chan struct{})
	go func() {
		defer close(trafficDone)
		for i := 0; i < 4000; i++ {
			select {
			case <-stopTraffic:
				return
			default:
			}
			if c, err := net.DialTimeout("tcp", web, time.Second); err == nil {
				echo(c, "console")
				c.Close()
			}
			if i%(20+i/40%30) == 0 {
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
	defer func() { close(stopTraffic); <-trafficDone }()

	pg := openBrowser(t, browser, d.admin)
	run, poll, ctx := pg.run, pg.poll, pg.ctx
	rowSel := func(addr string) string { return fmt.Sprintf(`#groups tr[data-target=%q]`, addr) }
	rowIs := func(addr, state, reason string) string {
		return fmt.Sprintf(`(() => { const r = document.querySelector(%q); return !!r && r.dataset.state === %q && r.cells[4].textContent === %q; })()`,
			rowSel(addr), state, reason)
	}

	// Behind the token, the page asks for it before it reads anything.
	run("load the console", chromedp.Navigate(d.admin+"/"), chromedp.WaitVisible("#token-input"))
	run("give the token", chromedp.SendKeys("#token-input", token), chromedp.Click("#token-ok"))
	poll("three target rows, healthy", fmt.Sprintf(`document.querySelectorAll('#groups tr[data-target][data-state="healthy"]').length === 3 && %s`,
		rowIs(addrs[0], "healthy", "")), 15*time.Second)
	poll("the listener's row", `[...document.querySelectorAll('#listeners tbody tr')].some(r => r.cells[0].textContent === 'web' && r.cells[2].textContent.includes('socket'))`, 5*time.Second)

	// A target stops: unhealthy, with NLB's reason, within the check
	// interval plus 2 s.
	targets[1].Close()
	stopped := time.Now()
	poll("the stopped target unhealthy with its reason", rowIs(addrs[1], "unhealthy", api.ReasonFailedHealthChecks), interval+2*time.Second)
	t.Logf("the console showed %s unhealthy (%s) %v after it stopped (limit %v)", addrs[1], api.ReasonFailedHealthChecks,
		time.Since(stopped).Round(time.Millisecond), interval+2*time.Second)

	// Deregister through the console, confirmed: draining, in the page and
	// in the registry.
	run("deregister", chromedp.Click(rowSel(addrs[2])+` button[data-action="deregister"]`),
		chromedp.WaitVisible("#confirm-ok"), chromedp.Click("#confirm-ok"))
	poll("the deregistered target draining", rowIs(addrs[2], "draining", "Target.DeregistrationInProgress"), 5*time.Second)
	if st := targetState(t, d.admin, token, addrs[2]); st.State != "draining" {
		t.Fatalf("the registry has %s %s after the console deregistered it, want draining", addrs[2], st.State)
	}

	// A weight, changed and confirmed.
	run("change a weight", chromedp.Click(rowSel(addrs[0])+` button[data-action="weight"]`),
		chromedp.WaitVisible("#weight-input"), chromedp.SetValue("#weight-input", "7"),
		chromedp.Click("#confirm-ok"))
	poll("the new weight", fmt.Sprintf(`document.querySelector(%q).cells[2].textContent === "7"`, rowSel(addrs[0])), 5*time.Second)
	if st := targetState(t, d.admin, token, addrs[0]); st.Weight != 7 || st.Zone != "a" {
		t.Fatalf("the registry has %s at weight %d, zone %q after the console set 7, want 7 and zone a", addrs[0], st.Weight, st.Zone)
	}
	poll("the events", `[...document.querySelectorAll('#events tbody tr')].some(r => r.cells[1].textContent === 'drain_start')`, 5*time.Second)

	// The sparklines have a few seconds of traffic; then the picture.
	poll("a sparkline", `[...document.querySelectorAll('#groups svg.spark polyline')].some(p => (p.getAttribute('points') || '').split(' ').length >= 8)`, 15*time.Second)
	// Both themes: the button switches, and the page's colours follow.
	light, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.documentElement.dataset.theme + ' ' + getComputedStyle(document.body).backgroundColor`))
	if err != nil {
		t.Fatal(err)
	}
	run("switch the theme", chromedp.Click("#theme-btn"))
	dark, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.documentElement.dataset.theme + ' ' + getComputedStyle(document.body).backgroundColor`))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Fields(light)[0] == strings.Fields(dark)[0] || light[strings.Index(light, " "):] == dark[strings.Index(dark, " "):] {
		t.Fatalf("the theme button changed nothing: %q, then %q", light, dark)
	}
	if !strings.HasPrefix(dark, "dark") {
		run("switch the theme back to dark", chromedp.Click("#theme-btn"))
	}
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil || img.Bounds().Dx() < 1000 || img.Bounds().Dy() < 600 {
		t.Fatalf("the screenshot is no full page: %v, %v", err, img)
	}
	out := filepath.Join(t.TempDir(), "console.png")
	if *updateScreenshot {
		out = filepath.Join("..", "..", "docs", "console.png")
	}
	if err := os.WriteFile(out, shot, 0o644); err != nil {
		t.Fatal(err)
	}

	// 200 targets: every row there within a few updates, each update of
	// the page well within the poll interval; the filter narrows them.
	for i := range 197 {
		body := fmt.Sprintf(`{"address": "127.0.2.%d:9", "zone": "a", "weight": %d}`, 1+i, 1+i%3)
		req, _ := http.NewRequest(http.MethodPost, d.admin+"/v1/target-groups/web/targets", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("register %s: %s", body, resp.Status)
		}
	}
	poll("200 target rows", `document.querySelectorAll('#groups tr[data-target]').length === 200`, 10*time.Second)
	var worst float64
	for range 5 {
		at, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.documentElement.dataset.renderedAt`))
		if err != nil {
			t.Fatal(err)
		}
		poll("the next update", fmt.Sprintf(`document.documentElement.dataset.renderedAt !== %q`, at), 5*time.Second)
		ms, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.documentElement.dataset.renderMs`))
		if err != nil {
			t.Fatal(err)
		}
		var v float64
		fmt.Sscan(ms, &v)
		worst = max(worst, v)
	}
	t.Logf("200 targets: the slowest of 5 page updates took %.1f ms", worst)
	if worst > 900 {
		t.Errorf("with 200 targets a page update takes %.1f ms: nearly the poll interval or more", worst)
	}
	run("filter", chromedp.SendKeys("#filter", "127.0.2.19"))
	poll("the filtered rows", `document.querySelectorAll('#groups tr[data-target]').length === 9`, 5*time.Second)

	pg.check()
}

// targetState is a target's row of describe-target-health, through the API.
func targetState(t *testing.T, admin, token, addr string) api.TargetHealth {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, admin+"/v1/target-groups/web", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tg api.TargetGroup
	if err := json.NewDecoder(resp.Body).Decode(&tg); err != nil {
		t.Fatal(err)
	}
	for _, th := range tg.Targets {
		if th.Address == addr {
			return th
		}
	}
	t.Fatalf("%s is not in group web: %+v", addr, tg.Targets)
	return api.TargetHealth{}
}

// page is a headless chromium with one tab, which records what the page
// writes to the console and every request it makes.
type page struct {
	t        *testing.T
	ctx      context.Context
	admin    string
	mu       sync.Mutex
	problems []string
	requests []string
}

// openBrowser starts chromium (closed with the test, and bounded to 3
// minutes).
func openBrowser(t *testing.T, browser, admin string) *page {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.WindowSize(1500, 1100),
		// The browser itself asks nothing of the internet either.
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-domain-reliability", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	deadline := time.AfterFunc(3*time.Minute, cancel)
	t.Cleanup(func() { deadline.Stop() })
	p := &page{t: t, ctx: ctx, admin: admin}
	if err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok {
			p.mu.Lock()
			p.requests = append(p.requests, e.Request.URL)
			p.mu.Unlock()
		}
	}); err != nil {
		t.Fatalf("chromium did not start (%s): %v", browser, err)
	}
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			switch m.Type {
			case "debug", "info", "log":
				continue // what the browser says to developers: no fault of the page
			}
			p.mu.Lock()
			p.problems = append(p.problems, fmt.Sprintf("%s: %s (%s:%d)", m.Type, m.Text, m.URL, m.Line))
			p.mu.Unlock()
		}
	}()
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *page) run(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	if err := chromedp.Do(p.ctx, steps...); err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
}

// poll waits until the JavaScript expression is true.
func (p *page) poll(what, expr string, within time.Duration) {
	p.t.Helper()
	if _, err := chromedp.Run(p.ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(within))); err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
}

// check fails the test if the page wrote a warning or an error to the
// console, or asked for anything outside the admin address.
func (p *page) check() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.problems) > 0 {
		p.t.Errorf("the page wrote to the console:\n%s", strings.Join(p.problems, "\n"))
	}
	if len(p.requests) == 0 {
		p.t.Error("no request was recorded")
	}
	for _, u := range p.requests {
		if !strings.HasPrefix(u, p.admin+"/") && !strings.HasPrefix(u, "data:") {
			p.t.Errorf("the page asked for %s, outside the admin address %s", u, p.admin)
		}
	}
}

// Without a token on the API, the console reads everything and changes
// nothing: no change buttons, and it says why.
func TestConsoleReadOnlyInBrowser(t *testing.T) {
	browser := netnstest.Need(t, "chromium", "chromium")
	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "console-test")
	tg, err := bench.StartTarget(bench.TargetEcho, "tcp", "127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	pWeb, pAdmin := freePort(t), freePort(t)
	d := startDaemon(t, bin, pAdmin, fmt.Sprintf(`admin: {listen: "127.0.0.1:%s"}
listeners: [{name: web, port: %s, target_group: web}]
target_groups:
  - {name: web, targets: [{address: %q}], health_check: {protocol: TCP, interval: 500ms, healthy_threshold: 2}}
`, pAdmin, pWeb, tg.Addr.String()))
	pg := openBrowser(t, browser, d.admin)
	pg.run("load the console", chromedp.Navigate(d.admin+"/"))
	pg.poll("the target's row, healthy", `document.querySelectorAll('#groups tr[data-target][data-state="healthy"]').length === 1`, 10*time.Second)
	pg.poll("read-only", `(() => { const b = document.getElementById('auth-btn'); return b.disabled && b.textContent === 'read-only'; })()`, 5*time.Second)
	n, err := chromedp.Run(pg.ctx, chromedp.Evaluate[int](`document.querySelectorAll('button[data-action]').length`))
	if err != nil || n != 0 {
		t.Fatalf("a console without a token shows %d change buttons (%v), want none", n, err)
	}
	if open, _ := chromedp.Run(pg.ctx, chromedp.Evaluate[bool](`document.getElementById('token-dialog').open`)); open {
		t.Fatal("a console without a token asks for one")
	}
	pg.check()
}
