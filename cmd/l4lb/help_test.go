package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

var updateHelp = flag.Bool("update-help", false, "rewrite testdata/help from the commands' help")

// commands lists every command of the tree but cobra's own (help,
// completion).
func commands(c *cobra.Command) []*cobra.Command {
	out := []*cobra.Command{c}
	for _, sub := range c.Commands() {
		if sub.Name() == "help" || sub.Name() == "completion" {
			continue
		}
		out = append(out, commands(sub)...)
	}
	return out
}

// Every command's --help is as reviewed: a change to a flag, a default or a
// text shows here (go test -run TestHelpGolden -update-help rewrites them).
func TestHelpGolden(t *testing.T) {
	for _, c := range commands(newRoot(os.Stdout, os.Stderr)) {
		path := c.CommandPath()
		args := append(strings.Fields(path)[1:], "--help")
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 0 {
			t.Fatalf("%s --help: exit %d: %s", path, code, errb.String())
		}
		file := filepath.Join("testdata", "help", strings.ReplaceAll(path, " ", "_")+".golden")
		if *updateHelp {
			os.MkdirAll(filepath.Dir(file), 0o755)
			if err := os.WriteFile(file, out.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("%v (go test -run TestHelpGolden -update-help writes it)", err)
		}
		if out.String() != string(want) {
			t.Errorf("%s --help differs from %s:\n%s", path, file, out.String())
		}
	}
}

var flagRE = regexp.MustCompile(`(?:^|\s)--([a-z0-9-]+)`)

// Every command has an Examples section, and every flag an example uses is
// one the command has.
func TestEveryCommandHasExamples(t *testing.T) {
	for _, c := range commands(newRoot(os.Stdout, os.Stderr)) {
		if c.Example == "" {
			t.Errorf("%s has no Examples section (cmd/l4lb/examples.go)", c.CommandPath())
			continue
		}
		for _, line := range strings.Split(c.Example, "\n") {
			code, _, _ := strings.Cut(line, "#")
			for _, m := range flagRE.FindAllStringSubmatch(code, -1) {
				if c.Flags().Lookup(m[1]) == nil && c.InheritedFlags().Lookup(m[1]) == nil && !exampleOfSub(c, line) {
					t.Errorf("%s: its example %q uses --%s, which it has not", c.CommandPath(), strings.TrimSpace(line), m[1])
				}
			}
		}
	}
}

// exampleOfSub says whether line runs a subcommand of c (the parent's
// examples show its children), whose flags are the child's.
func exampleOfSub(c *cobra.Command, line string) bool {
	for _, sub := range c.Commands() {
		if strings.Contains(line, c.CommandPath()+" "+sub.Name()+" ") || strings.HasSuffix(strings.TrimSpace(line), c.CommandPath()+" "+sub.Name()) {
			return true
		}
	}
	return false
}
