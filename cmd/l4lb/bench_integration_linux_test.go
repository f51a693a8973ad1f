//go:build integration

package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/bench"
	"github.com/l4lb/l4lb/pkg/api"
)

// benchTarget runs `l4lb bench target echo` as a process of its own (so a
// scenario can kill or stop it) and returns its address and process.
func benchTarget(t *testing.T, bin string) (string, *exec.Cmd) {
	t.Helper()
	addr := "127.0.0.1:" + freePort(t)
	cmd := exec.Command(bin, "bench", "target", "echo", "--listen", "tcp://"+addr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return addr, cmd
}

// Each failure scenario of `l4lb bench --during`, briefly, against a real
// l4lb with three echo targets: new connections (tcp-connect, replies
// checksummed) never fail to connect through kill-target, deregister,
// reload and upgrade; health-flap is reported with its time to recover.
func TestBenchFailureScenarios(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "l4lb")
	buildL4LB(t, bin, "bench-test")
	pWeb, pAdmin := freePort(t), freePort(t)
	vip := "127.0.0.1:" + pWeb
	for _, what := range []string{"reload", "deregister", "kill-target", "health-flap", "upgrade"} {
		t.Run(what, func(t *testing.T) {
			var targets []string
			var procs []*exec.Cmd
			for range 3 {
				a, p := benchTarget(t, bin)
				targets, procs = append(targets, fmt.Sprintf("{address: %q}", a)), append(procs, p)
			}
			d := startDaemon(t, bin, pAdmin, fmt.Sprintf(`admin: {listen: "127.0.0.1:%s"}
listeners:
  - {name: web, port: %s, bind: [127.0.0.1], target_group: web}
target_groups:
  - name: web
    targets: [%s]
    attributes: {deregistration_delay.timeout_seconds: "2"}
    health_check: {protocol: TCP, interval: 200ms, timeout: 150ms, healthy_threshold: 2, unhealthy_threshold: 2}
`, pAdmin, pWeb, strings.Join(targets, ", ")))
			waitUntil(t, "targets healthy", func() bool {
				n := 0
				for _, s := range groupStates(t, d.admin, "web") {
					if s == api.StateHealthy {
						n++
					}
				}
				return n == 3
			})
			victim := strings.TrimSuffix(strings.TrimPrefix(targets[0], `{address: "`), `"}`)
			args := []string{"bench", "tcp-connect", vip, "--duration", "4s", "--warmup", "500ms", "--connections", "4", "-o", "json",
				"--during", what, "--admin", d.admin, "--target-group", "web", "--target", victim,
				"--target-pid", fmt.Sprint(procs[0].Process.Pid), "--flap", "1s"}
			out, err := exec.Command(bin, args...).Output()
			if err != nil {
				t.Fatalf("l4lb bench: %v\n%s", err, out)
			}
			var rs []bench.Result
			if err := json.Unmarshal(out, &rs); err != nil || len(rs) != 1 {
				t.Fatalf("output %q: %v", out, err)
			}
			r := rs[0]
			t.Logf("%s: %d connections (%.0f/s), failed connects %d, resets %d, broken %d, recovered %.2f s after it (%s)",
				what, r.Ops, r.Rate, r.FailedConnects, r.Resets, r.Broken, r.RecoverySeconds, r.DuringResult)
			if r.DuringResult != "done" || r.Ops == 0 {
				t.Fatalf("the scenario did not run through: %+v", r)
			}
			if what != "health-flap" && r.FailedConnects != 0 {
				t.Fatalf("%d connects failed during %s", r.FailedConnects, what)
			}
			if what == "reload" || what == "deregister" || what == "upgrade" {
				if r.Errors != 0 {
					t.Fatalf("%d errors during %s, want none", r.Errors, what)
				}
			}
		})
	}
}
