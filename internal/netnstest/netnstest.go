// Package netnstest runs a test again inside a network namespace of its
// own, for tests that need addresses this host's loopback lacks or that
// change state (nftables rules) that must not reach the host's.
package netnstest

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Inside says whether this process is the run Rerun started for env.
func Inside(env string) bool { return os.Getenv(env) != "" }

// Rerun runs the calling test again in a new namespace, with lo up and
// prefixes (such as "198.18.99.1/32" or "2001:db8::1/128") on it, and env
// set, and returns the inner run's output; a failed inner run fails t. It
// skips, or fails when CI is set, where namespaces cannot be made: without
// root or iproute2. The namespace is deleted when t ends.
func Rerun(t *testing.T, env string, prefixes ...string) string {
	t.Helper()
	fail := t.Skip
	if os.Getenv("CI") != "" {
		fail = t.Fatal
	}
	if os.Geteuid() != 0 {
		fail("network namespaces need root")
	}
	ipBin, err := exec.LookPath("ip")
	if err != nil {
		fail("ip (iproute2) is not installed; make deps installs it")
	}
	ns := fmt.Sprintf("l4lb-%s-%d", strings.ToLower(strings.TrimPrefix(t.Name(), "Test")), os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(ipBin, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", ns)
	t.Cleanup(func() { exec.Command(ipBin, "netns", "delete", ns).Run() })
	run("-n", ns, "link", "set", "lo", "up")
	for _, p := range prefixes {
		args := []string{"-n", ns, "addr", "add", p, "dev", "lo"}
		if netip.MustParsePrefix(p).Addr().Is6() {
			args = append(args, "nodad")
		}
		run(args...)
	}
	cmd := exec.Command(ipBin, "netns", "exec", ns, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), env+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS") {
		t.Fatalf("in namespace %s: %v\n%s", ns, err, out)
	}
	return string(out)
}
