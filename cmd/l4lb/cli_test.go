package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/bench"
)

func runCLI(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestValidateGood(t *testing.T) {
	code, out, errs := runCLI("validate", "--config", "../../pkg/config/testdata/valid/minimal.yaml")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	want, _ := os.ReadFile("../../pkg/config/testdata/valid/minimal.golden")
	if out != string(want) {
		t.Errorf("validate output differs from the golden normalized config:\n%s", out)
	}
}

func TestValidateBadExits2WithPaths(t *testing.T) {
	code, _, errs := runCLI("validate", "--config", "../../pkg/config/testdata/invalid/everything.yaml")
	if code != 2 {
		t.Fatalf("exit %d, want 2", code)
	}
	want, _ := os.ReadFile("../../pkg/config/testdata/invalid/everything.golden")
	if errs != string(want) {
		t.Errorf("stderr differs from golden:\n%s", errs)
	}
}

func TestServeBadFlagsExit2(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--listen", "sctp://:80", "--target", "127.0.0.1:1"},
		{"serve", "--listen", "tcp://:80", "--target", "nowhere"},
		{"serve", "--no-such-flag"},
		{"bogus"},
	} {
		code, _, errs := runCLI(args...)
		if code != 2 || errs == "" {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 with a reason", args, code, errs)
		}
	}
}

func TestRouteBadSourceExit2(t *testing.T) {
	for _, src := range []string{"127.0.0.1", "nowhere:80", "127.0.0.1:90-80", "127.0.0.1:1-70000", "127.0.0.1:x"} {
		code, _, errs := runCLI("route", "--listener", "web", "--src", src, "--admin", "127.0.0.1:1")
		if code != 2 || !strings.Contains(errs, "--src") {
			t.Errorf("--src %s: exit %d, stderr %q; want exit 2 naming --src", src, code, errs)
		}
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runCLI("version")
	if code != 0 || !strings.Contains(out, "l4lb ") || !strings.Contains(out, "go1.") {
		t.Fatalf("version: exit %d, %q", code, out)
	}
}

// Every config in examples/ validates as it is.
func TestExamplesValidate(t *testing.T) {
	files, err := filepath.Glob("../../examples/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples found: %v", err)
	}
	for _, f := range files {
		if code, _, errs := runCLI("validate", "--config", f); code != 0 {
			t.Errorf("%s: exit %d:\n%s", f, code, errs)
		}
	}
}

// Every config block README.md marks as whole (the line before its fence
// starts "<!-- validates") validates as pasted into a file.
func TestReadmeConfigsValidate(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	found := 0
	for i := 0; i+1 < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "<!-- validates") {
			continue
		}
		if lines[i+1] != "```yaml" {
			t.Fatalf("README.md:%d: a validates mark not followed by a ```yaml block", i+1)
		}
		j := i + 2
		for j < len(lines) && lines[j] != "```" {
			j++
		}
		f := filepath.Join(t.TempDir(), "l4lb.yaml")
		if err := os.WriteFile(f, []byte(strings.Join(lines[i+2:j], "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if code, _, errs := runCLI("validate", "--config", f); code != 0 {
			t.Errorf("README.md:%d: validate exits %d:\n%s", i+3, code, errs)
		}
		found++
		i = j
	}
	if found == 0 {
		t.Fatal("README.md marks no config block as whole")
	}
}

// l4lb bench: a run prints JSON with the work it did; bad usage exits 2.
func TestBenchCLI(t *testing.T) {
	tg, err := bench.StartTarget(bench.TargetEcho, "tcp", "127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	plot := filepath.Join(t.TempDir(), "run.svg")
	code, out, errs := runCLI("bench", "tcp-rr", tg.Addr.String(), "--duration", "2200ms", "--warmup", "0s", "--connections", "2", "-o", "json", "--plot", plot)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var rs []bench.Result
	if err := json.Unmarshal([]byte(out), &rs); err != nil || len(rs) != 1 || rs[0].Ops == 0 || rs[0].Latency == nil {
		t.Fatalf("output %q: %v", out, err)
	}
	if !strings.Contains(errs, "tcp-rr:") {
		t.Errorf("no progress lines on a non-terminal stderr: %q", errs)
	}
	if len(rs[0].Timeline) < 2 || len(rs[0].Percentiles) == 0 {
		t.Errorf("no timeline or percentiles to plot: %+v", rs[0])
	}
	if svg, err := os.ReadFile(plot); err != nil || !strings.Contains(string(svg), "<polyline") || !strings.HasPrefix(string(svg), "<svg") {
		t.Errorf("the plot: %v\n%.300s", err, svg)
	}
	for _, args := range [][]string{
		{"bench", "tcp-nothing", "127.0.0.1:1"},
		{"bench", "tcp-rr"},
		{"bench", "tcp-rr", tg.Addr.String(), "-o", "xml"},
		{"bench", "idle-conns", tg.Addr.String()},
		{"bench", "target", "echo"},
		{"bench", "target", "mirror", "--listen", "tcp://127.0.0.1:0"},
		{"bench", "target", "echo", "--listen", "sctp://127.0.0.1:0"},
	} {
		if code, _, _ := runCLI(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}

// notEcho accepts connections and answers each with an HTTP response that
// matches no request, as a web server in front of a bench run would.
func notEcho(t *testing.T, answer bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if answer {
					c.Read(make([]byte, 4096))
					c.Write([]byte("HTTP/1.0 400 Bad Request\r\n\r\n"))
					return
				}
				io.Copy(io.Discard, c) // says nothing, holds the connection
			}()
		}
	}()
	return ln.Addr().String()
}

// A bench run in which every operation failed exits non-zero and says why,
// with the flag that helps.
func TestBenchAllFailedExitsNonZero(t *testing.T) {
	addr := notEcho(t, true)
	code, out, errs := runCLI("bench", "tcp-rr", addr, "--duration", "1s", "--warmup", "0s", "--connections", "2")
	if code == 0 {
		t.Fatalf("exit 0 for a run where every reply was broken:\n%s", out)
	}
	if !strings.Contains(errs, "every operation") || !strings.Contains(errs, "--no-verify") {
		t.Fatalf("the error does not say why or what helps: %s", errs)
	}
	if !strings.Contains(out, "requests in all") {
		t.Errorf("the table does not say what its bracketed count is:\n%s", out)
	}
	code, _, errs = runCLI("bench", "tcp-connect", "127.0.0.1:1", "--duration", "1s", "--warmup", "0s", "--connections", "2")
	if code == 0 || !strings.Contains(errs, "nothing accepts connections") {
		t.Fatalf("connects all refused: exit %d: %s", code, errs)
	}
}

// idle-conns against a target that never echoes ends within --duration
// (then --settle), instead of waiting 5 s for each connection.
func TestBenchIdleConnsBoundedByDuration(t *testing.T) {
	addr := notEcho(t, false)
	start := time.Now()
	code, _, errs := runCLI("bench", "idle-conns", addr, "--connections", "200", "--duration", "1s", "--settle", "0s", "--pid", strconv.Itoa(os.Getpid()))
	took := time.Since(start)
	if took > 4*time.Second { // 200 connections at 5 s each before
		t.Fatalf("idle-conns took %v with --duration 1s", took)
	}
	if code == 0 || !strings.Contains(errs, "echo target") {
		t.Fatalf("no connection held: exit %d: %s", code, errs)
	}
}

// validate refuses what serve refuses, in the same words and paths: a
// certificate file that is not there, and every error of a config with
// several.
func TestValidateAsStrictAsServe(t *testing.T) {
	dir := t.TempDir()
	write := func(name, yaml string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tlsCfg := write("tls.yaml", `admin: {listen: "off"}
listeners:
  - {name: https, protocol: TLS, port: 18443, bind: [127.0.0.1], target_group: web,
     tls: {certificates: [{cert: `+dir+`/missing.pem, key: `+dir+`/missing.key}]}}
target_groups: [{name: web, protocol: TCP, targets: [{address: "127.0.0.1:9001"}]}]
`)
	three := write("three.yaml", `admin: {listen: "off"}
listeners:
  - {name: web, protocol: TCP, port: 18080, bind: [127.0.0.1]}
  - {name: web2, protocl: TCP, port: 18081, target_group: nope}
target_groups: [{name: tg, protocol: TCP, targets: [{address: "127.0.0.1:1"}]}]
`)
	for _, c := range []struct {
		file string
		want []string
	}{
		{tlsCfg, []string{"listeners[0].tls.certificates[0]: open " + dir + "/missing.pem: no such file or directory"}},
		{three, []string{"listeners[0].target_group: required (or forward)", "listeners[1].protocl: unknown key; did you mean protocol?", `listeners[1].target_group: no target group named "nope"`}},
	} {
		vcode, _, verrs := runCLI("validate", "--config", c.file)
		scode, _, serrs := runCLI("serve", "--config", c.file)
		if vcode != 2 || scode != 2 {
			t.Fatalf("%s: validate exit %d, serve exit %d; want 2 and 2\nvalidate: %s\nserve: %s", c.file, vcode, scode, verrs, serrs)
		}
		if verrs != serrs {
			t.Errorf("%s: validate and serve word it differently:\nvalidate: %s\nserve:    %s", c.file, verrs, serrs)
		}
		for _, w := range c.want {
			if !strings.Contains(verrs, w) {
				t.Errorf("%s: validate does not say %q:\n%s", c.file, w, verrs)
			}
		}
	}
}

// An empty target group is valid (targets may be registered later) but
// warned about: its listeners reset every client until then.
func TestValidateWarnsOfAnEmptyTargetGroup(t *testing.T) {
	p := filepath.Join(t.TempDir(), "empty.yaml")
	os.WriteFile(p, []byte("listeners: [{name: web, protocol: TCP, port: 18080, bind: [127.0.0.1], target_group: tg}]\ntarget_groups: [{name: tg, protocol: TCP}]\n"), 0o644)
	code, _, errs := runCLI("validate", "--config", p)
	if code != 0 || !strings.Contains(errs, "warning: target_groups[0].targets: empty: listener web resets every client") {
		t.Fatalf("exit %d: %s", code, errs)
	}
}

// --pid $(pidof l4lb) with two l4lb processes expands to two PIDs; the
// second lands among the arguments, and the error says what probably
// happened.
func TestBenchSeveralPIDsSaysWhy(t *testing.T) {
	code, _, errs := runCLI("bench", "idle-conns", "127.0.0.1:1", "--pid", "123", "456")
	if code != 2 || !strings.Contains(errs, "pidof") {
		t.Fatalf("exit %d: %s", code, errs)
	}
}
