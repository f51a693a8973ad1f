//go:build integration

package main

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startRaw starts bin serve on yaml without waiting for it; the process's
// end is sent on the returned channel.
func startRaw(t *testing.T, bin, yaml string) (*exec.Cmd, <-chan error, string) {
	t.Helper()
	dir := t.TempDir()
	cfg, logPath := filepath.Join(dir, "l4lb.yaml"), filepath.Join(dir, "l4lb.log")
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "serve", "--config", cfg, "--shutdown-timeout", "2s")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	return cmd, exited, logPath
}

// A SIGHUP that arrives while l4lb starts (a log rotation, automation that
// reloads right after a restart) is queued and reloads once l4lb is up; it
// never ends the process. A SIGTERM during start exits cleanly.
func TestSignalsDuringStart(t *testing.T) {
	tgt := startIDTarget(t)
	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "signals")
	for round := range 3 {
		pWeb, pAdmin := freePort(t), freePort(t)
		yaml := lifecycleYAML(pAdmin, map[string]string{"web": pWeb}, []*idTarget{tgt}, "")
		cmd, exited, logPath := startRaw(t, bin, yaml)
		admin := "http://127.0.0.1:" + pAdmin
		c := http.Client{Timeout: time.Second}
		ready, after := false, 0
		deadline := time.Now().Add(20 * time.Second)
		// From the moment the listener accepts, as the probe did (before
		// that, the Go runtime itself may not be up to catch anything):
		// while the rest binds, as soon as the API answers, and after.
		waitAccepting(t, "127.0.0.1:"+pWeb)
		for after < 20 && time.Now().Before(deadline) {
			if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
				t.Fatalf("round %d: SIGHUP: %v", round, err)
			}
			select {
			case err := <-exited:
				b, _ := os.ReadFile(logPath)
				t.Fatalf("round %d: a SIGHUP during start ended l4lb (%v; ready=%v)\n%s", round, err, ready, b)
			case <-time.After(2 * time.Millisecond):
			}
			if !ready {
				if resp, err := c.Get(admin + "/readyz"); err == nil {
					resp.Body.Close()
					ready = resp.StatusCode == http.StatusOK
				}
			} else {
				after++
			}
		}
		if !ready {
			t.Fatalf("round %d: l4lb not ready within 20 s", round)
		}
		// The queued reloads ran, and l4lb serves.
		waitUntil(t, "a reload logged", func() bool {
			b, _ := os.ReadFile(logPath)
			return strings.Contains(string(b), "SIGHUP received")
		})
		if name, err := dialName("127.0.0.1:" + pWeb); err != nil || name != tgt.addr {
			t.Fatalf("round %d: through l4lb after the SIGHUPs: %q, %v", round, name, err)
		}
		cmd.Process.Signal(syscall.SIGTERM)
		if err := <-exited; err != nil {
			t.Fatalf("round %d: SIGTERM after the SIGHUPs: %v", round, err)
		}
	}
	// SIGTERM as soon as the listener accepts: l4lb starts, then drains
	// and exits 0.
	for round := range 3 {
		pWeb, pAdmin := freePort(t), freePort(t)
		cmd, exited, logPath := startRaw(t, bin, lifecycleYAML(pAdmin, map[string]string{"web": pWeb}, []*idTarget{tgt}, ""))
		waitAccepting(t, "127.0.0.1:"+pWeb)
		time.Sleep(time.Duration(round) * 5 * time.Millisecond)
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			var ee *exec.ExitError
			if errors.As(err, &ee) || err != nil {
				b, _ := os.ReadFile(logPath)
				t.Fatalf("SIGTERM %d ms after the listener accepted: %v\n%s", round*5, err, b)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("SIGTERM %d ms after the listener accepted: l4lb still running after 20 s", round*5)
		}
	}
}

// waitAccepting returns once addr accepts a connection (20 s at most).
func waitAccepting(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, 50*time.Millisecond); err == nil {
			c.Close()
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("%s accepted nothing within 20 s", addr)
}

// A reload whose new listener's port another process holds is a conflict
// of the host's, not a fault of l4lb's: 409 with the reason, and the
// running config serves on.
func TestReloadPortInUseIsConflict(t *testing.T) {
	tgt := startIDTarget(t)
	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "conflict")
	pWeb, pAdmin := freePort(t), freePort(t)
	d := startDaemon(t, bin, pAdmin, lifecycleYAML(pAdmin, map[string]string{"web": pWeb}, []*idTarget{tgt}, ""))
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	_, pHeld, _ := net.SplitHostPort(held.Addr().String())
	d.write(lifecycleYAML(pAdmin, map[string]string{"web": pWeb, "taken": pHeld}, []*idTarget{tgt}, ""))
	resp, err := http.Post(d.admin+"/v1/reload", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict || !strings.Contains(string(body), "address already in use") {
		t.Fatalf("reload onto a port in use: %d %s", resp.StatusCode, body)
	}
	if name, err := dialName("127.0.0.1:" + pWeb); err != nil || name != tgt.addr {
		t.Fatalf("after the refused reload: %q, %v", name, err)
	}
}
