//go:build integration

package bfd

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The sessions of TestSessionsOnLoopback over IPv6 (hop limit 255, read
// from the IPV6_HOPLIMIT control message), between two addresses on the
// loopback of a network namespace of the test's own: this host's own
// loopback has only ::1.
func TestSessionsOverIPv6(t *testing.T) {
	if os.Getenv("L4LB_BFD_NETNS") != "" {
		testSessions(t, "2001:db8::1", "2001:db8::2")
		return
	}
	fail := func(why string) {
		if os.Getenv("CI") != "" {
			t.Fatal(why)
		}
		t.Skip(why)
	}
	if os.Geteuid() != 0 {
		fail("network namespaces need root")
	}
	ipBin, err := exec.LookPath("ip")
	if err != nil {
		fail("ip (iproute2) is not installed; make deps installs it")
	}
	ns := fmt.Sprintf("l4lb-bfd6-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(ipBin, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", ns)
	t.Cleanup(func() { exec.Command(ipBin, "netns", "delete", ns).Run() })
	run("-n", ns, "link", "set", "lo", "up")
	run("-n", ns, "addr", "add", "2001:db8::1/128", "dev", "lo", "nodad")
	run("-n", ns, "addr", "add", "2001:db8::2/128", "dev", "lo", "nodad")
	cmd := exec.Command(ipBin, "netns", "exec", ns, os.Args[0], "-test.run=^TestSessionsOverIPv6$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "L4LB_BFD_NETNS=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS") {
		t.Fatalf("in the namespace: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "noticed") {
			t.Log(strings.TrimSpace(line))
		}
	}
}
