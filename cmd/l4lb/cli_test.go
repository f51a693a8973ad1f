package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
