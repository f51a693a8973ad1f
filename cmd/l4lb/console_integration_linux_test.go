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

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.WindowSize(1500, 1100))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	deadline := time.AfterFunc(3*time.Minute, cancel) // the whole browser part, bounded
	defer deadline.Stop()

	var mu sync.Mutex
	var problems, requests []string
	if err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok {
			mu.Lock()
			requests = append(requests, e.Request.URL)
			mu.Unlock()
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
			mu.Lock()
			problems = append(problems, fmt.Sprintf("%s: %s (%s:%d)", m.Type, m.Text, m.URL, m.Line))
			mu.Unlock()
		}
	}()
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	run := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	poll := func(what, expr string, within time.Duration) {
		t.Helper()
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(within))); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
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

	mu.Lock()
	defer mu.Unlock()
	if len(problems) > 0 {
		t.Errorf("the page wrote to the console:\n%s", strings.Join(problems, "\n"))
	}
	if len(requests) == 0 {
		t.Error("no request was recorded")
	}
	for _, u := range requests {
		if !strings.HasPrefix(u, d.admin+"/") && !strings.HasPrefix(u, "data:") {
			t.Errorf("the page asked for %s, outside the admin address %s", u, d.admin)
		}
	}
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
