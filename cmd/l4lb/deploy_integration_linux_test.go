//go:build integration

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/internal/netnstest"
	"github.com/l4lb/l4lb/internal/testpki"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// The shipped Prometheus rules load (promtool check rules), and each alert
// fires on the series that should fire it and stays quiet on the one that
// should not (promtool test rules, deploy/prometheus/l4lb-rules.test.yml).
func TestPrometheusRules(t *testing.T) {
	promtool := netnstest.Need(t, "promtool", "prometheus")
	for _, args := range [][]string{{"check", "rules", "l4lb-rules.yml"}, {"test", "rules", "l4lb-rules.test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "../../deploy/prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// Every metric the rules read is one l4lb exports.
	b, _ := os.ReadFile("../../deploy/prometheus/l4lb-rules.yml")
	checkMetricNames(t, "deploy/prometheus/l4lb-rules.yml", string(b))
}

// The Grafana dashboard parses, takes its Prometheus from a datasource
// variable, and queries only metrics l4lb exports; a running l4lb with a
// TLS listener shows its certificate's expiry, which a panel and an alert
// read.
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("../../deploy/grafana/l4lb-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Templating struct {
			List []struct{ Name, Type string } `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title   string                  `json:"title"`
			Targets []struct{ Expr string } `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	if !slices.ContainsFunc(dash.Templating.List, func(v struct{ Name, Type string }) bool { return v.Type == "datasource" }) {
		t.Fatal("the dashboard has no datasource variable")
	}
	var exprs []string
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, q := range p.Targets {
			exprs = append(exprs, q.Expr)
		}
	}
	used := checkMetricNames(t, "the dashboard", strings.Join(exprs, "\n"))

	// A running l4lb with a TLS listener exports the certificate's expiry.
	ca := testpki.New(t)
	cert, key := ca.Issue(t, false, "localhost")
	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "dashboard-test")
	target := tcpEchoAt(t, "127.0.0.1:"+freePort(t))
	pAdmin := freePort(t)
	d := startDaemon(t, bin, pAdmin, fmt.Sprintf(`admin: {listen: "127.0.0.1:%s"}
listeners:
  - {name: https, protocol: TLS, port: %s, bind: [127.0.0.1], target_group: web, tls: {certificates: [{cert: %q, key: %q}]}}
target_groups: [{name: web, targets: [{address: %q}]}]
`, pAdmin, freePort(t), cert, key, target))
	var exported string
	waitUntil(t, "l4lb_tls_certificate_not_after_seconds in /metrics", func() bool {
		resp, err := http.Get(d.admin + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		exported = string(b)
		return strings.Contains(exported, `l4lb_tls_certificate_not_after_seconds{certificate="`+cert+`",listener="https"}`)
	})
	present := 0
	for _, name := range used {
		if strings.Contains(exported, name) {
			present++
		}
	}
	t.Logf("the dashboard's %d panels query %d metrics, every one in l4lb's table; %d of them have series in a fresh l4lb with a TLS listener (the others appear with their first flow, reload, BGP session or shift)", len(dash.Panels), len(used), present)
}

// checkMetricNames checks that every l4lb_ metric text names is one l4lb
// exports (pkg/metrics' table, which docs/reference.md lists), and returns
// them.
func checkMetricNames(t *testing.T, where, text string) []string {
	t.Helper()
	known := map[string]bool{}
	for _, d := range metrics.Describe() {
		known[d.Name] = true
	}
	var used []string
	for _, name := range regexp.MustCompile(`\bl4lb_[a-z0-9_]+`).FindAllString(text, -1) {
		if !known[name] {
			t.Errorf("%s queries %s, which l4lb does not export", where, name)
		}
		if !slices.Contains(used, name) {
			used = append(used, name)
		}
	}
	if len(used) == 0 {
		t.Errorf("%s queries no l4lb metric", where)
	}
	return used
}
