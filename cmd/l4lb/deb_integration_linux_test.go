//go:build integration

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/internal/netnstest"
)

// make deb's package installs on this Debian: l4lb version, man l4lb and
// l4lb validate of the packaged config work; lintian finds no error;
// dpkg -r removes it and keeps the admin's config, and a reinstall keeps
// an edited one. (It installs into the system: root, which CI is.)
func TestDebianPackage(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("installing a package needs root, which CI has")
		}
		t.Skip("installing a package needs root")
	}
	lintian := netnstest.Need(t, "lintian", "lintian")
	netnstest.Need(t, "man", "man-db")
	if out, err := exec.Command("dpkg", "-s", "l4lb").CombinedOutput(); err == nil && strings.Contains(string(out), "Status: install ok installed") {
		t.Skip("an l4lb package is installed on this machine: the test leaves it alone")
	}
	bin := filepath.Join(t.TempDir(), "l4lb")
	build := exec.Command("go", "build", "-ldflags", "-s -w -X main.version=v0.1.0-test", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building: %v\n%s", err, out)
	}
	deb := exec.Command("../../scripts/deb.sh")
	deb.Env = append(os.Environ(), "BIN="+bin, "VERSION=v0.1.0-test")
	out, err := deb.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/deb.sh: %v\n%s", err, out)
	}
	pkg := filepath.Join("../..", strings.TrimSpace(string(out)))
	t.Cleanup(func() { os.Remove(pkg) })
	if lint, _ := exec.Command(lintian, pkg).CombinedOutput(); strings.Contains(string(lint), "\nE: ") || strings.HasPrefix(string(lint), "E: ") {
		t.Fatalf("lintian finds errors:\n%s", lint)
	} else {
		t.Logf("lintian:\n%s", lint)
	}
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	t.Cleanup(func() { exec.Command("dpkg", "--purge", "l4lb").Run() })
	run("dpkg", "-i", pkg)
	if v := run("/usr/bin/l4lb", "version"); !strings.Contains(v, "v0.1.0-test") {
		t.Fatalf("l4lb version: %s", v)
	}
	if page := run("man", "-w", "l4lb"); !strings.Contains(page, "/usr/share/man/man1/l4lb.1.gz") {
		t.Fatalf("man -w l4lb: %s", page)
	}
	run("man", "-P", "cat", "l4lb-serve")
	run("/usr/bin/l4lb", "validate", "--config", "/etc/l4lb/l4lb.yaml")
	for _, f := range []string{"/lib/systemd/system/l4lb.service", "/usr/share/bash-completion/completions/l4lb", "/usr/lib/sysctl.d/99-l4lb.conf"} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("the package lacks %s: %v", f, err)
		}
	}
	if unit, _ := os.ReadFile("/lib/systemd/system/l4lb.service"); !strings.Contains(string(unit), "ExecStart=/usr/bin/l4lb serve") || !strings.Contains(string(unit), "Type=notify") {
		t.Fatalf("the packaged unit:\n%s", unit)
	}
	// The admin edits the config; removing keeps it, and a reinstall too.
	edited := "# edited by the admin\n" + run("cat", "/etc/l4lb/l4lb.yaml")
	os.WriteFile("/etc/l4lb/l4lb.yaml", []byte(edited), 0o644)
	run("dpkg", "-r", "l4lb")
	if _, err := os.Stat("/usr/bin/l4lb"); !os.IsNotExist(err) {
		t.Fatal("dpkg -r left /usr/bin/l4lb")
	}
	run("dpkg", "-i", pkg)
	if got, _ := os.ReadFile("/etc/l4lb/l4lb.yaml"); string(got) != edited {
		t.Fatalf("a reinstall changed the edited config:\n%s", got)
	}
	run("dpkg", "--purge", "l4lb")
	if _, err := os.Stat("/etc/l4lb/l4lb.yaml"); !os.IsNotExist(err) {
		t.Fatal("dpkg --purge left /etc/l4lb/l4lb.yaml")
	}
}
