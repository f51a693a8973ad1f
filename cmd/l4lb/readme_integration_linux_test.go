//go:build integration

package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// runnableBlock is a shell block a document marks as runnable: the line
// before its fence is an HTML comment starting "<!-- runnable", or
// "<!-- serves" for a block that starts an l4lb which serves until stopped.
type runnableBlock struct {
	where  string // file:line
	code   string
	serves bool
}

// runnableBlocks extracts the runnable blocks of the repository's
// documents (README.md, docs/, deploy/).
func runnableBlocks(t *testing.T, root string) []runnableBlock {
	t.Helper()
	files := []string{filepath.Join(root, "README.md")}
	for _, dir := range []string{"docs", "deploy"} {
		more, _ := filepath.Glob(filepath.Join(root, dir, "*.md"))
		files = append(files, more...)
	}
	var out []runnableBlock
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		for i := 0; i+1 < len(lines); i++ {
			serves := strings.HasPrefix(lines[i], "<!-- serves")
			if !serves && !strings.HasPrefix(lines[i], "<!-- runnable") {
				continue
			}
			if lines[i+1] != "```sh" {
				t.Fatalf("%s:%d: a runnable mark not followed by a ```sh block", f, i+1)
			}
			var code []string
			j := i + 2
			for ; j < len(lines) && lines[j] != "```"; j++ {
				code = append(code, lines[j])
			}
			rel, _ := filepath.Rel(root, f)
			out = append(out, runnableBlock{where: fmt.Sprintf("%s:%d", rel, i+3), code: strings.Join(code, "\n"), serves: serves})
			i = j
		}
	}
	return out
}

// Every block README.md and the docs mark as runnable runs, as pasted, from
// the repository's root, against a freshly started demo (make run's).
func TestDocumentedBlocksRun(t *testing.T) {
	root, _ := filepath.Abs("../..")
	buildL4LB(t, filepath.Join(root, "bin", "l4lb"), "docs-test")
	blocks := runnableBlocks(t, root)
	if len(blocks) < 2 {
		t.Fatalf("found %d runnable blocks; README.md marks at least two", len(blocks))
	}

	demo := exec.Command(filepath.Join(root, "bin", "l4lb"), "demo")
	demo.Dir = root
	demoLog := filepath.Join(t.TempDir(), "demo.log")
	logf, _ := os.Create(demoLog)
	demo.Stdout, demo.Stderr = logf, logf
	if err := demo.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	t.Cleanup(func() {
		demo.Process.Signal(syscall.SIGTERM)
		demo.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(demoLog)
			t.Logf("the demo's output (the end):\n%s", tail(b, 4<<10))
		}
	})
	waitUntil(t, "the demo up (it needs 127.0.0.1:8080 and :9900 free)", func() bool {
		code, _, _ := runCLI("targets", "describe-health", "--target-group", "default")
		return code == 0
	})

	for _, b := range blocks {
		if b.serves {
			serveBlock(t, root, b)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", b.code)
		cmd.Dir = root
		start := time.Now()
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("%s: %v\n--- the block:\n%s\n--- its output (the end):\n%s", b.where, err, b.code, tail(out, 4<<10))
		}
		first, _ := bufio.NewReader(strings.NewReader(b.code)).ReadString('\n')
		t.Logf("%s ran in %v: %s", b.where, time.Since(start).Round(100*time.Millisecond), strings.TrimSpace(first))
	}
}

// serveBlock runs a block that starts an l4lb, as pasted beside the demo:
// it must log "l4lb started" (every listener and the admin API bound), and
// stop cleanly on SIGTERM, as Ctrl-C would stop it.
func serveBlock(t *testing.T, root string, b runnableBlock) {
	t.Helper()
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", b.code)
	cmd.Dir = root
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := &lockedWriter{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	text := out.String
	start := time.Now()
	for !strings.Contains(text(), "l4lb started") {
		select {
		case err := <-exited:
			t.Fatalf("%s: exited (%v) before l4lb started\n--- the block:\n%s\n--- its output (the end):\n%s", b.where, err, b.code, tail([]byte(text()), 4<<10))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Since(start) > time.Minute {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			t.Fatalf("%s: l4lb not started within a minute\n--- its output (the end):\n%s", b.where, tail([]byte(text()), 4<<10))
		}
	}
	up := time.Since(start)
	syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("%s: after SIGTERM: %v\n--- its output (the end):\n%s", b.where, err, tail([]byte(text()), 4<<10))
		}
	case <-time.After(40 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		t.Fatalf("%s: still running 40 s after SIGTERM", b.where)
	}
	first, _ := bufio.NewReader(strings.NewReader(b.code)).ReadString('\n')
	t.Logf("%s served after %v and stopped on SIGTERM: %s", b.where, up.Round(100*time.Millisecond), strings.TrimSpace(first))
}

// lockedWriter is a strings.Builder that a process's output and the test
// use at once.
type lockedWriter struct {
	mu sync.Mutex
	w  strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}
