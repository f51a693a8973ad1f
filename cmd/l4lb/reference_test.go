package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

var updateReference = flag.Bool("update-reference", false, "rewrite the generated parts of docs/reference.md")

// The generated parts of docs/reference.md are what the code says: every
// command and flag (from cobra), every config key (from the decoder's
// types) with the attributes' defaults and a normalized config's, every
// admin endpoint (from the admin API's routes) and every metric (from the
// metrics table). go test -run TestReferenceIsCurrent -update-reference
// rewrites them.
func TestReferenceIsCurrent(t *testing.T) {
	const path = "../../docs/reference.md"
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]string{
		"commands":  referenceCommands(),
		"config":    referenceConfig(t),
		"endpoints": referenceEndpoints(t),
		"metrics":   referenceMetrics(),
	}
	out := string(doc)
	for name, body := range sections {
		begin, end := "<!-- generated: "+name+" -->\n", "<!-- end: "+name+" -->"
		i, j := strings.Index(out, begin), strings.Index(out, end)
		if i < 0 || j < i {
			t.Fatalf("%s has no %q ... %q markers", path, strings.TrimSpace(begin), end)
		}
		out = out[:i+len(begin)] + body + out[j:]
	}
	if *updateReference {
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if out != string(doc) {
		t.Fatalf("%s is out of date with the code: go test ./cmd/l4lb -run TestReferenceIsCurrent -update-reference", path)
	}
}

func referenceCommands() string {
	var b strings.Builder
	for _, c := range commands(newRoot(os.Stdout, os.Stderr)) {
		fmt.Fprintf(&b, "### `%s`\n\n%s\n\n```\n%s\n", c.CommandPath(), c.Short, c.UseLine())
		if f := c.LocalFlags().FlagUsages(); f != "" {
			b.WriteString(strings.TrimRight(f, "\n") + "\n")
		}
		b.WriteString("```\n\n")
	}
	return b.String()
}

func referenceConfig(t *testing.T) string {
	var b strings.Builder
	b.WriteString("| key | type |\n|---|---|\n")
	for _, k := range config.Keys() {
		fmt.Fprintf(&b, "| `%s` | %s |\n", k.Path, k.Type)
	}
	b.WriteString("\nTarget group attributes (`target_groups[].attributes`), NLB's keys, with their defaults:\n\n| attribute | default |\n|---|---|\n")
	attrs := config.AttributeDefaults()
	keys := make([]string, 0, len(attrs))
	for k := range attrs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "| `%s` | `%s` |\n", k, attrs[k])
	}
	cfg, err := config.Load("../../pkg/config/testdata/valid/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	src, _ := os.ReadFile("../../pkg/config/testdata/valid/minimal.yaml")
	out, err := cfg.YAML()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "\nEvery other default, as `l4lb validate` fills them in for this config:\n\n```yaml\n%s```\n\nbecomes\n\n```yaml\n%s```\n", src, out)
	return b.String()
}

var routeRE = regexp.MustCompile(`mux\.Handle(?:Func)?\("([^"]+)"`)

func referenceEndpoints(t *testing.T) string {
	files, _ := filepath.Glob("../../pkg/admin/*.go")
	var routes []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range routeRE.FindAllSubmatch(src, -1) {
			routes = append(routes, strings.Replace(string(m[1]), "/{$}", "/", 1)) // the exact root
		}
	}
	slices.SortFunc(routes, func(a, b string) int {
		pa, pb := a[strings.Index(a, "/"):], b[strings.Index(b, "/"):]
		if c := strings.Compare(pa, pb); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	var b bytes.Buffer
	for _, r := range slices.Compact(routes) {
		fmt.Fprintf(&b, "- `%s`\n", r)
	}
	return b.String()
}

func referenceMetrics() string {
	var b strings.Builder
	b.WriteString("| metric | type | labels | meaning |\n|---|---|---|---|\n")
	for _, m := range metrics.Describe() {
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", m.Name, m.Type, strings.Join(m.Labels, ", "), strings.ReplaceAll(m.Help, "|", "\\|"))
	}
	return b.String()
}
