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
	"syscall"
	"testing"
	"time"
)

// runnableBlock is a shell block a document marks as runnable: the line
// before its fence is an HTML comment starting "<!-- runnable".
type runnableBlock struct {
	where string // file:line
	code  string
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
			if !strings.HasPrefix(lines[i], "<!-- runnable") {
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
			out = append(out, runnableBlock{where: fmt.Sprintf("%s:%d", rel, i+3), code: strings.Join(code, "\n")})
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
