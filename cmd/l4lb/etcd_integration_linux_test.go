//go:build integration

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/netnstest"
	"github.com/l4lb/l4lb/pkg/api"
)

// etcdMember is one member of a test etcd cluster (Debian's etcd-server).
type etcdMember struct {
	name, client, peer, dir string
	cmd                     *exec.Cmd
}

func (m *etcdMember) start(t *testing.T, bin, cluster, state string) {
	t.Helper()
	m.cmd = exec.Command(bin, "--name", m.name, "--data-dir", m.dir,
		"--listen-client-urls", m.client, "--advertise-client-urls", m.client,
		"--listen-peer-urls", m.peer, "--initial-advertise-peer-urls", m.peer,
		"--initial-cluster", cluster, "--initial-cluster-state", state, "--initial-cluster-token", "l4lb-test",
		"--heartbeat-interval", "50", "--election-timeout", "500", "--logger", "zap", "--log-level", "error")
	m.cmd.Stdout, m.cmd.Stderr = os.Stderr, os.Stderr
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmd := m.cmd
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

func (m *etcdMember) kill() {
	m.cmd.Process.Kill()
	m.cmd.Wait()
}

// clusterView is a node's GET /v1/cluster.
func clusterView(t *testing.T, admin string) api.Cluster {
	t.Helper()
	resp, err := http.Get(admin + "/v1/cluster")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c api.Cluster
	json.NewDecoder(resp.Body).Decode(&c)
	return c
}

// Three l4lb nodes share their registrations through a 3-member etcd
// cluster: one registration through one node reaches every node at the same
// revision; a deregistration through another drains on every node and ends
// on all of them together; with every etcd member down the nodes serve on,
// and when etcd returns they resume, and a registration reaches all again.
func TestEtcdRegistryReachesEveryNode(t *testing.T) {
	etcdBin := netnstest.Need(t, "etcd", "etcd-server")
	var members []*etcdMember
	var initial []string
	for i := range 3 {
		m := &etcdMember{name: fmt.Sprintf("e%d", i), client: "http://127.0.0.1:" + freePort(t), peer: "http://127.0.0.1:" + freePort(t), dir: t.TempDir()}
		members = append(members, m)
		initial = append(initial, m.name+"="+m.peer)
	}
	for _, m := range members {
		m.start(t, etcdBin, strings.Join(initial, ","), "new")
	}
	var endpoints []string
	for _, m := range members {
		endpoints = append(endpoints, fmt.Sprintf("%q", m.client))
	}

	t1, t2 := tcpEchoAt(t, "127.0.0.1:"+freePort(t)), tcpEchoAt(t, "127.0.0.1:"+freePort(t))
	t3 := tcpEchoAt(t, "127.0.0.1:"+freePort(t))
	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "etcd-test")
	prefix := fmt.Sprintf("/l4lb/test-%d", os.Getpid())
	var nodes []*daemon
	var webs []string
	for range 3 {
		pWeb, pAdmin := freePort(t), freePort(t)
		yaml := fmt.Sprintf(`admin: {listen: "127.0.0.1:%s"}
registry: {backend: etcd, endpoints: [%s], prefix: %s}
listeners: [{name: web, protocol: TCP, port: %s, bind: [127.0.0.1], target_group: web}]
target_groups:
  - name: web
    protocol: TCP
    targets: [{address: %q}]
    health_check: {protocol: TCP, interval: 200ms, timeout: 150ms, healthy_threshold: 2}
    attributes: {deregistration_delay.timeout_seconds: 3}
`, pAdmin, strings.Join(endpoints, ", "), prefix, pWeb, t1)
		nodes = append(nodes, startDaemon(t, bin, pAdmin, yaml))
		webs = append(webs, "127.0.0.1:"+pWeb)
	}
	everyNode := func(what string, cond func(d *daemon) bool) time.Duration {
		t.Helper()
		start := time.Now()
		waitUntil(t, what, func() bool {
			for _, d := range nodes {
				if !cond(d) {
					return false
				}
			}
			return true
		})
		return time.Since(start)
	}
	serves := func(when string) {
		t.Helper()
		for i, web := range webs {
			for j := range 10 {
				c, err := net.DialTimeout("tcp", web, 3*time.Second)
				if err != nil {
					t.Fatalf("%s: node %d, connection %d: %v", when, i+1, j, err)
				}
				err = echo(c, "x")
				c.Close()
				if err != nil {
					t.Fatalf("%s: node %d, connection %d: %v", when, i+1, j, err)
				}
			}
		}
	}

	// One registration through node 1 reaches every node.
	if code, _, errs := runCLI("targets", "register", "--admin", nodes[0].admin, "--target-group", "web", "--target", t2); code != 0 {
		t.Fatalf("register: exit %d: %s", code, errs)
	}
	took := everyNode("the registration on every node", func(d *daemon) bool { _, ok := groupStates(t, d.admin, "web")[t2]; return ok })
	// Every node at one revision: at once for the registration's own
	// event, or, when another write (a node record) came meanwhile, within
	// a second, when each node's watch reports its progress.
	var rev int64
	same := everyNode("every node at one applied revision", func(d *daemon) bool {
		c := clusterView(t, d.admin)
		if d == nodes[0] {
			rev = c.AppliedRevision
		}
		return c.AppliedRevision == rev && c.Connected && c.Backend == "etcd"
	})
	if same > 2*time.Second {
		t.Fatalf("the nodes reached one applied revision %v after the registration was on every node; want within a second or so", same)
	}
	everyNode("both targets healthy on every node", func(d *daemon) bool {
		s := groupStates(t, d.admin, "web")
		return s[t1] == api.StateHealthy && s[t2] == api.StateHealthy
	})
	hash := clusterView(t, nodes[0].admin).TableHash
	for i, d := range nodes {
		if h := clusterView(t, d.admin).TableHash; h != hash {
			t.Fatalf("node %d's tables hash to %s, node 1's to %s", i+1, h, hash)
		}
	}
	// What one node refuses is refused before anything is written: no node
	// sees it.
	if code, _, errs := runCLI("targets", "register", "--admin", nodes[0].admin, "--target-group", "web", "--target", "127.0.0.1:9,zone=nowhere"); code == 0 || !strings.Contains(errs, `no zone named "nowhere"`) {
		t.Fatalf("a registration in an unknown zone: exit %d: %s", code, errs)
	}
	if got := clusterView(t, nodes[1].admin).AppliedRevision; got != rev {
		t.Fatalf("a refused registration was written: node 2 applied revision %d, %d before", got, rev)
	}

	// l4lb cluster status finds every node through etcd.
	code, out, errs := runCLI("cluster", "status", "--admin", nodes[0].admin, "-o", "json")
	var st []nodeStatus
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st) != 3 {
		t.Fatalf("cluster status: exit %d: %s%s", code, out, errs)
	}
	for _, n := range st {
		if n.Error != "" || n.AppliedRevision != rev || n.TableHash != hash || n.Healthy != 2 {
			t.Fatalf("cluster status: %+v; want revision %d, hash %s, 2 healthy", n, rev, hash)
		}
	}
	t.Logf("a registration through node 1 was on all 3 nodes %v after the call returned (polled every 20 ms), at revision %d; tables hash to %s on all", took.Round(10*time.Millisecond), rev, hash)
	serves("after the registration")

	// A deregistration through node 2 drains on every node and ends on all
	// of them together.
	if code, _, errs := runCLI("targets", "deregister", "--admin", nodes[1].admin, "--target-group", "web", "--target", t2); code != 0 {
		t.Fatalf("deregister: exit %d: %s", code, errs)
	}
	everyNode("draining on every node", func(d *daemon) bool { return groupStates(t, d.admin, "web")[t2] == api.StateDraining })
	ended := make([]time.Time, len(nodes))
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		left := 0
		for i, d := range nodes {
			if ended[i].IsZero() {
				if _, ok := groupStates(t, d.admin, "web")[t2]; !ok {
					ended[i] = time.Now()
				} else {
					left++
				}
			}
		}
		if left == 0 {
			break
		}
	}
	first, last := ended[0], ended[0]
	for i, e := range ended {
		if e.IsZero() {
			t.Fatalf("node %d still drains the target 10 s after its deregistration", i+1)
		}
		first, last = minTime(first, e), maxTime(last, e)
	}
	if spread := last.Sub(first); spread > time.Second {
		t.Fatalf("the drains ended %v apart", spread)
	}
	t.Logf("a deregistration through node 2 drained on every node; the drains ended within %v of each other (polled every 20 ms)", last.Sub(first).Round(10*time.Millisecond))

	// A target kept by its agent on a 3 s lease: when the agent dies, the
	// lease lapses and every node drains the target; an agent stopped
	// cleanly deregisters at once.
	t4, t5 := tcpEchoAt(t, "127.0.0.1:"+freePort(t)), tcpEchoAt(t, "127.0.0.1:"+freePort(t))
	agent := func(target string) *exec.Cmd {
		a := exec.Command(bin, "targets", "agent", "--admin", nodes[0].admin, "--target-group", "web", "--target", target, "--lease", "3s")
		a.Stdout, a.Stderr = os.Stderr, os.Stderr
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Process.Kill(); a.Wait() })
		everyNode("the agent's target on every node", func(d *daemon) bool { _, ok := groupStates(t, d.admin, "web")[target]; return ok })
		return a
	}
	a4 := agent(t4)
	time.Sleep(4 * time.Second) // past one lease: the agent's renewals keep it
	for i, d := range nodes {
		if s := groupStates(t, d.admin, "web")[t4]; s == "" || s == api.StateDraining {
			t.Fatalf("node %d: the agent's target is %q a lease later; the renewals did not keep it", i+1, s)
		}
	}
	a4.Process.Kill()
	killed := time.Now()
	a4.Wait()
	everyNode("the dead agent's target draining on every node", func(d *daemon) bool { return groupStates(t, d.admin, "web")[t4] == api.StateDraining })
	lapsed := time.Since(killed)
	if lapsed > 4*time.Second {
		t.Fatalf("the dead agent's target drained %v after the kill; the lease is 3 s", lapsed)
	}
	a5 := agent(t5)
	a5.Process.Signal(syscall.SIGTERM)
	stopped := time.Now()
	everyNode("the stopped agent's target draining on every node", func(d *daemon) bool { return groupStates(t, d.admin, "web")[t5] == api.StateDraining })
	t.Logf("an agent on a 3 s lease: SIGKILLed, its target drained on every node %v later; stopped, %v later",
		lapsed.Round(10*time.Millisecond), time.Since(stopped).Round(10*time.Millisecond))

	// etcd away: every member killed. The nodes serve on, and say so.
	for _, m := range members {
		m.kill()
	}
	serves("with etcd down")
	everyNode("the nodes see etcd away", func(d *daemon) bool { return !clusterView(t, d.admin).Connected })
	for i, d := range nodes {
		resp, err := http.Get(d.admin + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]string
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(body["registry"], "etcd unreachable since") {
			t.Fatalf("node %d's /readyz with etcd away: %d %v", i+1, resp.StatusCode, body)
		}
		if m := metricValue(t, d.admin, "l4lb_registry_etcd_up"); m != 0 {
			t.Fatalf("node %d: l4lb_registry_etcd_up %v with etcd away", i+1, m)
		}
	}
	serves("with etcd down, seen")
	for _, m := range members {
		m.start(t, etcdBin, strings.Join(initial, ","), "existing")
	}
	everyNode("the nodes back on etcd", func(d *daemon) bool { return clusterView(t, d.admin).Connected })
	if code, _, errs := runCLI("targets", "register", "--admin", nodes[2].admin, "--target-group", "web", "--target", t3); code != 0 {
		t.Fatalf("register after etcd returned: exit %d: %s", code, errs)
	}
	everyNode("the registration after etcd returned on every node", func(d *daemon) bool { _, ok := groupStates(t, d.admin, "web")[t3]; return ok })
	serves("after etcd returned")
	for _, d := range nodes {
		d.cmd.Process.Signal(syscall.SIGTERM)
	}
}

// metricValue reads an unlabelled metric from a node's /metrics.
func metricValue(t *testing.T, admin, name string) float64 {
	t.Helper()
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	t.Fatalf("no %s in %s/metrics", name, admin)
	return 0
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
