//go:build integration

package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A second l4lb on a listener address another l4lb holds is refused, with
// the holder's PID and exit 2, instead of joining its SO_REUSEPORT group
// and taking part of its flows; the first one's upgrade (its own handover)
// still works, and it serves every connection throughout.
func TestSecondL4LBOnAHeldAddressIsRefused(t *testing.T) {
	target := tcpEchoAt(t, "127.0.0.1:"+freePort(t))
	pWeb, pAdmin, pAdmin2 := freePort(t), freePort(t), freePort(t)
	yaml := fmt.Sprintf(`admin: {listen: "127.0.0.1:%s"}
listeners: [{name: web, protocol: TCP, port: %s, bind: [127.0.0.1], target_group: web}]
target_groups: [{name: web, protocol: TCP, targets: [{address: %q}]}]
`, pAdmin, pWeb, target)
	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "held-test")
	d := startDaemon(t, bin, pAdmin, yaml)
	first := d.cmd.Process.Pid

	second := exec.Command(bin, "serve", "--listen", "tcp://127.0.0.1:"+pWeb, "--target", target, "--admin", "127.0.0.1:"+pAdmin2)
	done := make(chan struct{})
	var out []byte
	go func() { out, _ = second.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		second.Process.Kill()
		t.Fatal("a second l4lb on a held address kept running")
	}
	if code := second.ProcessState.ExitCode(); code != 2 || !strings.Contains(string(out), "address already in use by process "+strconv.Itoa(first)+" (l4lb); a second l4lb there would take part of its flows") {
		t.Fatalf("the second l4lb: exit %d:\n%s", code, out)
	}
	if strings.Contains(string(out), "listener up") {
		t.Errorf("the refused l4lb logged a listener up:\n%s", out)
	}
	t.Logf("the second l4lb was refused: %s", lastLine(out))

	check := func(when string) {
		t.Helper()
		for i := range 20 {
			c, err := net.DialTimeout("tcp", "127.0.0.1:"+pWeb, 3*time.Second)
			if err != nil {
				t.Fatalf("%s: connection %d: %v", when, i, err)
			}
			err = echo(c, "x")
			c.Close()
			if err != nil {
				t.Fatalf("%s: connection %d: %v", when, i, err)
			}
		}
	}
	check("after the refusal")
	u := d.upgrade()
	waitGone(t, u.OldPID, 30*time.Second)
	check("after the first one's upgrade")
}

// The demo refuses an upgrade: its targets run inside it and make run
// waits for it, so a new process would leave both behind. It keeps
// serving, with the same PID.
func TestDemoRefusesUpgrade(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "demo-test")
	pWeb, pAdmin := freePort(t), freePort(t)
	demo := exec.Command(bin, "demo", "--listen", "127.0.0.1:"+pWeb, "--admin", "127.0.0.1:"+pAdmin)
	demo.Stdout, demo.Stderr = os.Stderr, os.Stderr
	if err := demo.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { demo.Process.Signal(syscall.SIGTERM); demo.Wait() })
	admin := "http://127.0.0.1:" + pAdmin
	waitUntil(t, "the demo ready", func() bool {
		code, _, _ := runCLI("targets", "describe-health", "--admin", admin, "--target-group", "default")
		return code == 0
	})
	code, _, errs := runCLI("upgrade", "--admin", admin)
	if code == 0 || !strings.Contains(errs, "the demo does not upgrade") {
		t.Fatalf("l4lb upgrade of the demo: exit %d: %s", code, errs)
	}
	demo.Process.Signal(syscall.SIGUSR2) // the signal is refused the same way
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+pWeb, 3*time.Second)
	if err != nil {
		t.Fatalf("the demo after a refused upgrade: %v", err)
	}
	fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, _ := c.Read(buf)
	c.Close()
	if !strings.Contains(string(buf[:n]), "hello from demo-target") {
		t.Fatalf("the demo after a refused upgrade answered %q", buf[:n])
	}
	if demo.ProcessState != nil {
		t.Fatal("the demo exited")
	}
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// l4lb reload of a process started from flags alone says there is no file
// to reload, instead of "reloaded" with an empty file name.
func TestReloadWithoutAFileSaysSo(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "flags-test")
	target := tcpEchoAt(t, "127.0.0.1:"+freePort(t))
	pWeb, pAdmin := freePort(t), freePort(t)
	srv := exec.Command(bin, "serve", "--listen", "tcp://127.0.0.1:"+pWeb, "--target", target, "--admin", "127.0.0.1:"+pAdmin)
	srv.Stdout, srv.Stderr = os.Stderr, os.Stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Signal(syscall.SIGTERM); srv.Wait() })
	admin := "127.0.0.1:" + pAdmin
	waitUntil(t, "l4lb up", func() bool {
		code, _, _ := runCLI("targets", "describe-health", "--admin", admin, "--target-group", "default")
		return code == 0
	})
	code, out, errs := runCLI("reload", "--admin", admin)
	if code == 0 || !strings.Contains(errs, "no config file to reload") {
		t.Fatalf("l4lb reload of a flags-only process: exit %d: %s%s", code, out, errs)
	}
}
