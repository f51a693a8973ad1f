//go:build integration

package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// metricSum adds up the series of name whose text matches every filter.
func metricSum(t *testing.T, admin, name string, filters ...string) float64 {
	t.Helper()
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	sum := 0.0
next:
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		for _, f := range filters {
			if !strings.Contains(line, f) {
				continue next
			}
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}

// With few descriptors and a flood of silent connections, l4lb refuses what
// its budget cannot hold as local_resources, and blames no target: healthy
// targets stay healthy and the flows already served stay up. (Before the
// budget, dials failed with EMFILE, were counted as target connect errors,
// and passive health turned the targets unhealthy and reset their flows.)
func TestDescriptorFloodBlamesNoTarget(t *testing.T) {
	if _, err := exec.LookPath("prlimit"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("prlimit (util-linux) is missing")
		}
		t.Skip("prlimit (util-linux) is missing")
	}
	a, b := startIDTarget(t), startIDTarget(t)
	port, admin := freePort(t), freePort(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "l4lb.yaml")
	cfg := fmt.Sprintf(`admin: {listen: "127.0.0.1:%s"}
listeners: [{name: web, port: %s, bind: [127.0.0.1], target_group: web}]
target_groups:
  - name: web
    targets: [{address: %q}, {address: %q}]
    health_check: {interval: 200ms, timeout: 150ms, healthy_threshold: 2, unhealthy_threshold: 2}
`, admin, port, a.addr, b.addr)
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("prlimit", "--nofile=400:400", "--", exe, "serve", "--config", cfgPath, "--log-level", "warn")
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	adminURL := "http://127.0.0.1:" + admin
	addr := "127.0.0.1:" + port
	waitUntil(t, "l4lb ready", func() bool {
		resp, err := http.Get(adminURL + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	waitUntil(t, "both targets healthy", func() bool {
		ths := describe(t, adminURL)
		return len(ths) == 2 && ths[0].State == "healthy" && ths[1].State == "healthy"
	})

	// 20 keep-alive clients, served.
	var keep []net.Conn
	for range 20 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(60 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 21)); err != nil {
			t.Fatalf("keep-alive client not served: %v", err)
		}
		keep = append(keep, c)
	}
	// A flood of silent connections, far past what 400 descriptors hold.
	for range 600 {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			continue
		}
		defer c.Close()
	}
	waitUntil(t, "refusals counted as local_resources", func() bool {
		return metricSum(t, adminURL, "l4lb_rejected_flows_total", `reason="local_resources"`) > 0
	})
	time.Sleep(time.Second) // five health-check rounds under the flood
	for i, c := range keep {
		c.Write([]byte("ping"))
		if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
			t.Fatalf("keep-alive client %d lost its flow under the flood: %v", i, err)
		}
	}
	for _, th := range describe(t, adminURL) {
		if th.State != "healthy" {
			t.Fatalf("target %s is %s (%s) under a descriptor flood", th.Address, th.State, th.Reason)
		}
	}
	if v := metricSum(t, adminURL, "l4lb_target_connect_errors_total"); v != 0 {
		t.Fatalf("target_connect_errors_total = %v: l4lb's own limit was blamed on the targets", v)
	}
	t.Logf("refused as local_resources: %v", metricSum(t, adminURL, "l4lb_rejected_flows_total", `reason="local_resources"`))
}
