// Package netnstest runs a test again inside a network namespace, for tests
// that need addresses this host's loopback lacks, a topology of their own,
// or that change state (nftables rules) that must not reach the host's.
package netnstest

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Inside says whether this process is the run Rerun started for env.
func Inside(env string) bool { return os.Getenv(env) != "" }

// IP is the path of ip(8). Where namespaces cannot be made (no root, no
// iproute2) it skips t, or fails it when CI is set.
func IP(t *testing.T) string {
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
	return ipBin
}

// New makes the namespace l4lb-NAME-PID, with lo up and prefixes (such as
// "198.18.99.1/32" or "2001:db8::1/128") on it, deleted when t ends.
func New(t *testing.T, name string, prefixes ...string) string {
	t.Helper()
	ns := fmt.Sprintf("l4lb-%s-%d", name, os.Getpid())
	Run(t, "netns", "add", ns)
	t.Cleanup(func() { exec.Command(IP(t), "netns", "delete", ns).Run() })
	Run(t, "-n", ns, "link", "set", "lo", "up")
	for _, p := range prefixes {
		args := []string{"-n", ns, "addr", "add", p, "dev", "lo"}
		if netip.MustParsePrefix(p).Addr().Is6() {
			args = append(args, "nodad")
		}
		Run(t, args...)
	}
	return ns
}

// Run runs ip with args, and fails t if it fails.
func Run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(IP(t), args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Rerun runs the calling test again in a namespace of its own (New, named
// after the test) with prefixes on its lo; see RerunIn.
func Rerun(t *testing.T, env string, prefixes ...string) string {
	t.Helper()
	return RerunIn(t, New(t, strings.ToLower(strings.TrimPrefix(t.Name(), "Test")), prefixes...), env)
}

// RerunIn runs the calling test again inside namespace ns, with env set
// (and extra, as NAME=VALUE), and returns the inner run's output; a failed
// inner run fails t.
func RerunIn(t *testing.T, ns, env string, extra ...string) string {
	t.Helper()
	cmd := exec.Command(IP(t), "netns", "exec", ns, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(append(os.Environ(), env+"=1"), extra...)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS") {
		t.Fatalf("in namespace %s: %v\n%s", ns, err, out)
	}
	return string(out)
}

// Need is the path of prog, which Debian's pkg installs (make deps does);
// without it, it skips t, or fails it when CI is set.
func Need(t *testing.T, prog, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(prog)
	if err != nil {
		msg := fmt.Sprintf("%s (Debian %s) is not installed; make deps installs it", prog, pkg)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return path
}

// BIRD runs BIRD 2 in namespace ns with conf, logging to dir/bird.log,
// until t ends (and shows the log's end if t failed). It returns the path
// of BIRD's control socket, which birdc -s reaches from any namespace.
func BIRD(t *testing.T, ns, dir, conf string) string {
	t.Helper()
	birdBin := Need(t, "bird", "bird2")
	logf := filepath.Join(dir, "bird.log")
	confPath := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(confPath, []byte(fmt.Sprintf("log %q all;\n%s", logf, conf)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctl := filepath.Join(dir, "bird.ctl")
	bird := exec.Command(IP(t), "netns", "exec", ns, birdBin, "-f", "-c", confPath, "-s", ctl, "-P", filepath.Join(dir, "bird.pid"))
	if err := bird.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		bird.Process.Kill()
		bird.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logf)
			if len(b) > 8<<10 {
				b = b[len(b)-8<<10:]
			}
			t.Logf("BIRD's log (the end):\n%s", b)
		}
	})
	return ctl
}
