//go:build integration

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/netnstest"
	"github.com/l4lb/l4lb/pkg/api"
)

// The ECMP lab of TestECMPOverBGP (BIRD before three l4lb nodes, four
// targets, a client), with the nodes' registrations in a 3-member etcd
// cluster (in the router's namespace) and two zones: a, whose VIP is
// ecmpVIP, and b, whose VIP is ecmpVIPB. Every node binds both.
const ecmpVIPB = "198.18.10.2"

// etcdLab is the ECMP lab with the nodes on etcd.
type etcdLab struct{ *ecmpLab }

// etcdPorts are the client ports of the three members; each peer port is
// one above.
var etcdPorts = []int{2379, 2479, 2579}

// startEtcdNode runs l4lb on node i (1-based) with the etcd registry. The
// file lists the zone b targets t2 and t3; zone a's are registered.
func (l *etcdLab) startEtcdNode(bin string, i int, extra string) {
	dir := filepath.Join(l.dir, fmt.Sprintf("node%d", i))
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "token"), []byte(ecmpToken), 0o600)
	var endpoints []string
	for _, p := range etcdPorts {
		endpoints = append(endpoints, fmt.Sprintf("http://%s:%d", ecmpRouterN, p))
	}
	cfg := fmt.Sprintf(`admin: {listen: "%[1]s:9900", token_file: "%[2]s/token"}
registry: {backend: etcd, endpoints: [%[3]s], prefix: /l4lb/ecmp}
zones: {a: [%[4]s], b: [%[5]s]}
listeners:
  - {name: web, port: 80, bind: [%[4]s, %[5]s], target_group: web}
target_groups:
  - name: web
    targets: [{address: "%[6]s:8080", zone: b}, {address: "%[7]s:8080", zone: b}]
    health_check: {protocol: TCP, port: "8080", interval: 1s, healthy_threshold: 2, unhealthy_threshold: 2}
    attributes: {deregistration_delay.timeout_seconds: "2"}
bgp:
  local_as: %[8]d
  router_id: %[1]s
  peers: [{address: %[9]s, as: %[10]d, hold_time: 3s, bfd: {interval: 200ms, multiplier: 3, authentication: {type: meticulous_keyed_sha1, key_id: 7, password: "`+ecmpBFDKey+`"}}}]
  announce: {a: [%[4]s/32], b: [%[5]s/32]}
  withdraw_grace: 2s
%[11]s`, ecmpNode(i), dir, strings.Join(endpoints, ", "), ecmpVIP, ecmpVIPB, ecmpTargets[1], ecmpTargets[2], ecmpNodeAS, ecmpRouterN, ecmpRouterAS, extra)
	l.serveNode(bin, i, cfg)
}

// hopsOf is the router's ECMP next hops for vip.
func (l *etcdLab) hopsOf(vip string) int {
	out, _ := exec.Command(l.ip, "-n", l.router, "route", "show", vip+"/32").CombinedOutput()
	return strings.Count(string(out), "via ")
}

// waitHopsOf waits until vip has n next hops.
func (l *etcdLab) waitHopsOf(vip string, n int, within time.Duration) time.Duration {
	l.t.Helper()
	start := time.Now()
	for l.hopsOf(vip) != n {
		if time.Since(start) > within {
			l.t.Fatalf("the router's route to %s has %d next hops, want %d within %v\n%s", vip, l.hopsOf(vip), n, within, l.birdc("show", "protocols"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// fewestHops watches both VIPs' next hops every 20 ms until the returned
// function is called, which gives the fewest each had.
func (l *etcdLab) fewestHops() func() (a, b int) {
	stop, res := make(chan struct{}), make(chan [2]int, 1)
	go func() {
		least := [2]int{99, 99}
		for {
			least[0], least[1] = min(least[0], l.hopsOf(ecmpVIP)), min(least[1], l.hopsOf(ecmpVIPB))
			select {
			case <-stop:
				res <- least
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return func() (int, int) {
		close(stop)
		r := <-res
		return r[0], r[1]
	}
}

// cli runs l4lb in the client's namespace against node i (1-based), with
// the token; it returns the output and the exit error.
func (l *etcdLab) cli(bin string, i int, args ...string) (string, error) {
	args = append(args, "--admin", fmt.Sprintf("http://%s:9900", ecmpNode(i)), "--token-file", filepath.Join(l.dir, fmt.Sprintf("node%d", i), "token"))
	out, err := exec.Command(l.ip, append([]string{"netns", "exec", l.client, bin}, args...)...).CombinedOutput()
	return string(out), err
}

// clusterStatus is l4lb cluster status through node 1, every node's view.
func (l *etcdLab) clusterStatus(bin string) []nodeStatus {
	l.t.Helper()
	out, err := l.cli(bin, 1, "cluster", "status", "-o", "json")
	var st []nodeStatus
	if err != nil || json.Unmarshal([]byte(out), &st) != nil {
		l.t.Fatalf("l4lb cluster status: %v\n%s", err, out)
	}
	return st
}

// sameRevision waits until every node applied one revision, and at least
// min; it returns it and how long it took.
func (l *etcdLab) sameRevision(bin string, min int64) (int64, time.Duration) {
	l.t.Helper()
	start := time.Now()
	for {
		st := l.clusterStatus(bin)
		same := len(st) == len(l.nodes)
		for _, n := range st {
			same = same && n.Error == "" && n.AppliedRevision == st[0].AppliedRevision && n.AppliedRevision >= min
		}
		if same {
			return st[0].AppliedRevision, time.Since(start)
		}
		if time.Since(start) > 10*time.Second {
			l.t.Fatalf("the nodes' applied revisions differ 10 s on: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// noTargetRejects is the flows every node refused for want of a target
// (l4lb_rejected_flows_total, reason no_target).
func (l *etcdLab) noTargetRejects() float64 {
	l.t.Helper()
	sum := 0.0
	for i := range l.nodes {
		out, err := exec.Command(l.ip, "netns", "exec", l.client, "curl", "-s", "--max-time", "2", "-H", "Authorization: Bearer "+ecmpToken,
			fmt.Sprintf("http://%s:9900/metrics", ecmpNode(i+1))).Output()
		if err != nil {
			l.t.Fatalf("node %d's metrics: %v", i+1, err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "l4lb_rejected_flows_total{") && strings.Contains(line, `reason="no_target"`) {
				f := strings.Fields(line)
				v, _ := strconv.ParseFloat(f[len(f)-1], 64)
				sum += v
			}
		}
	}
	return sum
}

// etcdLoad is a load helper's result: connections to a VIP answered, and
// those that failed, by whether l4lb (a reset, a refusal, a connection
// closed unanswered) or the route (a time-out, unreachable) failed them.
type etcdLoad struct {
	OK, ByL4LB, ByRoute int
	Answered            map[string]int // by the target that answered
	Errors              []string       `json:",omitempty"`
}

// loadOn starts a load helper on dst (VIP:port) in the client's namespace;
// it runs until stop is called, which returns its result.
func (l *etcdLab) loadOn(dst string) (stop func() etcdLoad) {
	l.t.Helper()
	cmd := exec.Command(l.ip, "netns", "exec", l.client, os.Args[0], "-test.run=^TestECMPEtcdHelper$")
	cmd.Env = append(os.Environ(), "L4LB_ECMP_ETCD_LOAD="+dst)
	cmd.Stderr = os.Stderr
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	r := bufio.NewScanner(out)
	for r.Scan() && r.Text() != "STARTED" {
	}
	return func() etcdLoad {
		in.Close()
		var res etcdLoad
		for r.Scan() {
			if v, ok := strings.CutPrefix(r.Text(), "RESULT "); ok {
				json.Unmarshal([]byte(v), &res)
			}
		}
		cmd.Wait()
		return res
	}
}

// TestECMPEtcdHelper is the load of TestECMPWithEtcdRegistry, run in the
// client's namespace: four connections at a time to L4LB_ECMP_ETCD_LOAD,
// each reading the target's line, until stdin closes (at most 5 minutes).
// It says STARTED once 20 were answered.
func TestECMPEtcdHelper(t *testing.T) {
	dst := os.Getenv("L4LB_ECMP_ETCD_LOAD")
	if dst == "" {
		t.Skip("a role of TestECMPWithEtcdRegistry")
	}
	done := make(chan struct{})
	go func() { bufio.NewReader(os.Stdin).ReadString('\n'); close(done) }()
	var mu sync.Mutex
	res := etcdLoad{Answered: map[string]int{}}
	var once sync.Once
	var wg sync.WaitGroup
	end := time.Now().Add(5 * time.Minute)
	for range 4 {
		wg.Go(func() {
			for n := 0; n < 200000 && time.Now().Before(end); n++ {
				select {
				case <-done:
					return
				default:
				}
				got, err := ecmpAskAt(dst, time.Second)
				mu.Lock()
				switch {
				case err == nil:
					res.OK++
					res.Answered[got]++
				case isRouteFailure(err):
					res.ByRoute++
				default:
					res.ByL4LB++
					if len(res.Errors) < 5 {
						res.Errors = append(res.Errors, time.Now().Format("15:04:05.000")+" "+err.Error())
					}
				}
				ok := res.OK
				mu.Unlock()
				if ok >= 20 {
					once.Do(func() { fmt.Println("STARTED") })
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	b, _ := json.Marshal(res)
	fmt.Printf("\nRESULT %s\n", b)
}

// ecmpAskAt connects to dst and returns the target's line.
func ecmpAskAt(dst string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout("tcp", dst, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("no answer: %w", err)
	}
	return strings.TrimSpace(line), nil
}

// isRouteFailure says whether a connection failed for want of a route (the
// router dropped the VIP): its SYN timed out or came back unreachable.
func isRouteFailure(err error) bool {
	if ne, ok := err.(net.Error); ok && ne.Timeout() && !strings.Contains(err.Error(), "no answer") {
		return true
	}
	return strings.Contains(err.Error(), "unreachable") || strings.Contains(err.Error(), "no route to host")
}

// etcdMember is member i of the lab's etcd cluster, in the router's
// namespace.
func (l *etcdLab) etcdMember(etcdBin string, i int, state string) *exec.Cmd {
	name := fmt.Sprintf("e%d", i)
	client := fmt.Sprintf("http://%s:%d", ecmpRouterN, etcdPorts[i])
	peer := fmt.Sprintf("http://%s:%d", ecmpRouterN, etcdPorts[i]+1)
	var initial []string
	for j, p := range etcdPorts {
		initial = append(initial, fmt.Sprintf("e%d=http://%s:%d", j, ecmpRouterN, p+1))
	}
	cmd := exec.Command(l.ip, "netns", "exec", l.router, etcdBin, "--name", name, "--data-dir", filepath.Join(l.dir, "etcd-"+name),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", state, "--initial-cluster-token", "l4lb-ecmp",
		"--heartbeat-interval", "50", "--election-timeout", "500", "--logger", "zap", "--log-level", "error")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// etcdLeader is the index of the member that leads, asked of each member
// (the v3 JSON gateway's maintenance status).
func (l *etcdLab) etcdLeader() int {
	l.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		for i, p := range etcdPorts {
			out, err := exec.Command(l.ip, "netns", "exec", l.router, "curl", "-s", "--max-time", "1", "-X", "POST", "-d", "{}",
				fmt.Sprintf("http://%s:%d/v3/maintenance/status", ecmpRouterN, p)).Output()
			var st struct {
				Header struct {
					MemberID string `json:"member_id"`
				} `json:"header"`
				Leader string `json:"leader"`
			}
			if err == nil && json.Unmarshal(out, &st) == nil && st.Leader != "" && st.Leader == st.Header.MemberID {
				return i
			}
		}
	}
	l.t.Fatal("no etcd member says it leads")
	return -1
}

// Three l4lb nodes behind BIRD share their registrations through etcd:
// one registration reaches all of them at one revision and they agree on
// 10 000 flows; a reload adding a listener and a group on all three at
// once, a deregistration of a zone's last target, etcd's leader and then
// every member dying, and a rolling upgrade --wait of every node, each
// under a steady stream of new connections: none fails for l4lb, and the
// VIP keeps its next hops. After a BFD failure a node rejoins within 5 s
// with deploy/README.md's BIRD timers.
func TestECMPWithEtcdRegistry(t *testing.T) {
	etcdBin := netnstest.Need(t, "etcd", "etcd-server")
	netnstest.Need(t, "curl", "curl")
	l := &etcdLab{newECMPLab(t)}
	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "ecmp-etcd-test")
	for i, ns := range l.tgts {
		l.in(ns, "ip", "addr", "add", ecmpVIP+"/32", "dev", "lo") // the targets' UDP role listens on it
		l.startTarget(ns, ecmpTargets[i])
	}
	members := make([]*exec.Cmd, len(etcdPorts))
	for i := range etcdPorts {
		members[i] = l.etcdMember(etcdBin, i, "new")
	}
	l.etcdLeader()
	for i := range l.nodes {
		l.in(l.nodes[i], "ip", "addr", "add", ecmpVIPB+"/32", "dev", "lo")
		l.startEtcdNode(bin, i+1, "")
	}
	took := l.waitHopsOf(ecmpVIPB, 3, 30*time.Second)
	if n := l.hopsOf(ecmpVIP); n != 0 {
		t.Fatalf("zone a has no target yet, but its VIP has %d next hops", n)
	}
	t.Logf("zone b's VIP had 3 next hops after %v; zone a's, with no target registered, none", took.Round(time.Millisecond))

	// One registration, through node 1, reaches every node at one revision.
	rev0, _ := l.sameRevision(bin, 0)
	t1 := ecmpTargets[0] + ":8080"
	if out, err := l.cli(bin, 1, "targets", "register", "--target-group", "web", "--target", t1+",zone=a"); err != nil {
		t.Fatalf("register: %v\n%s", err, out)
	}
	rev, took := l.sameRevision(bin, rev0+1)
	if took > time.Second {
		t.Errorf("the nodes applied revision %d %v after the registration returned; want within 1 s", rev, took)
	}
	announced := l.waitHopsOf(ecmpVIP, 3, 15*time.Second)
	t.Logf("one registration through node 1: all 3 nodes at revision %d %v after it returned (one l4lb cluster status a poll); zone a's VIP had 3 next hops %v later", rev, took.Round(10*time.Millisecond), announced.Round(time.Millisecond))
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		healthy := 0
		for _, n := range l.clusterStatus(bin) {
			if n.Healthy == 3 {
				healthy++
			}
		}
		if healthy == len(l.nodes) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every node has its 3 targets healthy: %+v", l.clusterStatus(bin))
		}
	}
	start := time.Now()
	agreed := l.routes(bin, "web", "tcp", 20000, 10000)
	l.agree("TCP, web", agreed)
	for i, rs := range agreed {
		if rs[0].AppliedRevision != rev {
			t.Fatalf("l4lb route on node %d answers from revision %d; the nodes applied %d", i+1, rs[0].AppliedRevision, rev)
		}
	}
	hashes := map[string]bool{}
	for _, n := range l.clusterStatus(bin) {
		hashes[n.TableHash] = true
	}
	if len(hashes) != 1 {
		t.Fatalf("the nodes' table hashes differ: %v", hashes)
	}
	t.Logf("10000 flows: the same target on all 3 nodes (l4lb route, %v); one table hash", time.Since(start).Round(time.Millisecond))

	// A reload on all three nodes at once that adds a listener and a group
	// with default health checks (30 s apart, 5 to pass): the new group is
	// settling, and the zones stay announced throughout.
	stop := l.loadOn(ecmpVIP + ":80")
	hops := l.fewestHops()
	var wg sync.WaitGroup
	waited := make([]string, len(l.nodes))
	for i := range l.nodes {
		path := filepath.Join(l.dir, fmt.Sprintf("node%d", i+1), "l4lb.yaml")
		b, _ := os.ReadFile(path)
		cfg := strings.Replace(string(b), "target_groups:\n", fmt.Sprintf("  - {name: api, port: 81, bind: [%s, %s], target_group: api}\ntarget_groups:\n  - {name: api, targets: [{address: \"%s:8080\", zone: a}]}\n", ecmpVIP, ecmpVIPB, ecmpTargets[3]), 1)
		os.WriteFile(path, []byte(cfg), 0o644)
		wg.Go(func() {
			out, err := l.cli(bin, i+1, "reload", "--wait", "--wait-timeout", "20s")
			if err != nil {
				t.Errorf("node %d: reload --wait: %v\n%s", i+1, err, out)
			}
			waited[i] = strings.TrimSpace(out)
		})
	}
	wg.Wait()
	time.Sleep(2 * time.Second) // 4 zone health reads after the reload
	fewA, fewB := hops()
	reloaded := stop()
	if fewA != 3 || fewB != 3 || reloaded.OK == 0 || reloaded.ByL4LB != 0 || reloaded.ByRoute != 0 {
		t.Errorf("a reload adding a group on every node at once: the VIPs went down to %d and %d next hops (want 3), load %+v (want none failed)", fewA, fewB, reloaded)
	}
	t.Logf("a reload adding a listener and a group with default health checks on all 3 nodes at once: next hops never below %d (zone a) and %d (zone b); %d connections, %d failed; reload --wait said %q", fewA, fewB, reloaded.OK, reloaded.ByL4LB+reloaded.ByRoute, waited)

	// Zone a's last target deregistered, through node 2: every node
	// withdraws zone a's VIP at once, and the connections that still reach
	// it meanwhile go to zone b's targets; none is reset.
	noTarget := l.noTargetRejects()
	stop = l.loadOn(ecmpVIP + ":80")
	if out, err := l.cli(bin, 2, "targets", "deregister", "--target-group", "web", "--target", t1); err != nil {
		t.Fatalf("deregister: %v\n%s", err, out)
	}
	deregistered := time.Now()
	l.waitHopsOf(ecmpVIP, 0, 5*time.Second)
	withdrawn := time.Since(deregistered)
	time.Sleep(300 * time.Millisecond)
	last := stop()
	// The three nodes' withdrawals reach the router one by one, and each
	// rehashes the flows in flight over the others: a handshake that
	// straddles one (its SYN to one node, its ACK to another) is reset by
	// the node with no socket for it. That is all that may fail here.
	if last.OK == 0 || !rehashedOnly(ecmpLoad{Failed: last.ByL4LB, Errors: last.Errors}) {
		t.Errorf("deregistering zone a's last target (at %s): %+v; want no connection failed by l4lb", deregistered.Format("15:04:05.000"), last)
		for i := range l.nodes {
			out, _ := exec.Command(l.ip, "netns", "exec", l.client, "curl", "-s", "-H", "Authorization: Bearer "+ecmpToken, fmt.Sprintf("http://%s:9900/metrics", ecmpNode(i+1))).Output()
			for _, line := range strings.Split(string(out), "\n") {
				if strings.Contains(line, "rejected") || strings.Contains(line, "reset") {
					t.Logf("node %d: %s", i+1, line)
				}
			}
		}
	}
	if n := l.noTargetRejects(); n != noTarget {
		t.Errorf("deregistering zone a's last target: the nodes refused %v flows for want of a target; want none (cross-zone fail-over)", n-noTarget)
	}
	crossZone := last.Answered[ecmpTargets[1]] + last.Answered[ecmpTargets[2]]
	t.Logf("zone a's last target deregistered: its VIP left the router's FIB %v later; %d connections answered (%d of them by zone b's targets, cross-zone), %d reset by the router's rehash %v, %d for want of a route once withdrawn",
		withdrawn.Round(time.Millisecond), last.OK, crossZone, last.ByL4LB, last.Errors, last.ByRoute)
	if out, err := l.cli(bin, 2, "targets", "register", "--target-group", "web", "--target", t1+",zone=a"); err != nil {
		t.Fatalf("register again: %v\n%s", err, out)
	}
	l.waitHopsOf(ecmpVIP, 3, 15*time.Second)

	// etcd's leader dies, then every member, under load: the nodes serve on
	// with what they applied; when etcd returns they catch up.
	stop = l.loadOn(ecmpVIP + ":80")
	leader := l.etcdLeader()
	members[leader].Process.Kill()
	members[leader].Wait()
	newLeader := l.etcdLeader()
	for i, m := range members {
		if i != leader {
			m.Process.Kill()
			m.Wait()
		}
	}
	for i := range l.nodes {
		out, err := exec.Command(l.ip, "netns", "exec", l.client, "curl", "-s", "--max-time", "2", "-H", "Authorization: Bearer "+ecmpToken,
			fmt.Sprintf("http://%s:9900/readyz", ecmpNode(i+1))).Output()
		for deadline := time.Now().Add(15 * time.Second); err == nil && !strings.Contains(string(out), "etcd unreachable since") && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
			out, err = exec.Command(l.ip, "netns", "exec", l.client, "curl", "-s", "--max-time", "2", "-H", "Authorization: Bearer "+ecmpToken,
				fmt.Sprintf("http://%s:9900/readyz", ecmpNode(i+1))).Output()
		}
		if err != nil || !strings.Contains(string(out), "etcd unreachable since") || !strings.Contains(string(out), `"status":"ready"`) {
			t.Fatalf("node %d's /readyz with etcd away: %v %s", i+1, err, out)
		}
	}
	time.Sleep(time.Second)
	away := stop()
	if away.OK == 0 || away.ByL4LB != 0 || away.ByRoute != 0 || l.hopsOf(ecmpVIP) != 3 {
		t.Errorf("etcd's leader and then every member killed: load %+v, %d next hops; want none failed, 3 next hops", away, l.hopsOf(ecmpVIP))
	}
	t.Logf("etcd's leader (member %d) killed, member %d led next, then every member killed: %d connections, %d failed; the nodes say etcd unreachable and serve on", leader, newLeader, away.OK, away.ByL4LB+away.ByRoute)
	for i := range etcdPorts {
		members[i] = l.etcdMember(etcdBin, i, "existing")
	}
	l.etcdLeader()
	t4 := ecmpTargets[3] + ":8080"
	if out, err := l.cli(bin, 3, "targets", "register", "--target-group", "web", "--target", t4+",zone=b"); err != nil {
		t.Fatalf("register after etcd returned: %v\n%s", err, out)
	}
	rev2, took := l.sameRevision(bin, rev+1)
	t.Logf("etcd back: a registration through node 3 reached all 3 nodes at revision %d, %v after it returned", rev2, took.Round(10*time.Millisecond))

	// Health stays each node's own. Node 1 alone loses its path to t2 (a
	// zone b target): it takes t2 out of its own tables, and its tables
	// then differ from the others' for some flows, but it sends no flow to
	// a target it cannot reach, and no connection fails.
	t2 := ecmpTargets[1]
	l.in(l.nodes[0], "nft", "add", "table", "inet", "cut")
	l.in(l.nodes[0], "nft", "add", "chain", "inet", "cut", "out", "{ type filter hook output priority 0; }")
	l.in(l.nodes[0], "nft", "add", "rule", "inet", "cut", "out", "ip", "daddr", t2, "drop")
	t2State := func(node int) string {
		out, err := l.cli(bin, node, "targets", "describe-health", "--target-group", "web", "-o", "json")
		var ths []api.TargetHealth
		if err != nil || json.Unmarshal([]byte(out), &ths) != nil {
			t.Fatalf("describe-health on node %d: %v\n%s", node, err, out)
		}
		for _, th := range ths {
			if th.Address == t2+":8080" {
				return th.State
			}
		}
		return ""
	}
	for deadline := time.Now().Add(15 * time.Second); t2State(1) != api.StateUnhealthy; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("node 1 cut from %s: its state there is %q 15 s on", t2, t2State(1))
		}
	}
	if s2, s3 := t2State(2), t2State(3); s2 != api.StateHealthy || s3 != api.StateHealthy {
		t.Fatalf("node 1 alone is cut from %s, but nodes 2 and 3 say %s and %s", t2, s2, s3)
	}
	routesB := func(node int) []api.Route {
		out, err := l.cli(bin, node, "route", "--listener", "web", "--dst", ecmpVIPB+":80", "--src", ecmpClient+":20000-29999", "-o", "json")
		var rs []api.Route
		if err != nil || json.Unmarshal([]byte(out), &rs) != nil || len(rs) != 10000 {
			t.Fatalf("l4lb route on node %d: %v\n%.300s", node, err, out)
		}
		return rs
	}
	r1, r2, r3 := routesB(1), routesB(2), routesB(3)
	differ, toT2 := 0, 0
	for i := range r1 {
		if r2[i].Target != r3[i].Target {
			t.Fatalf("nodes 2 and 3, which agree on health, name different targets for %s", r2[i].Source)
		}
		if r1[i].Target != r2[i].Target {
			differ++
		}
		if r2[i].Target == t2+":8080" {
			toT2++
		}
		if r1[i].Target == t2+":8080" {
			t.Fatalf("node 1, cut from %s, still routes %s to it", t2, r1[i].Source)
		}
	}
	stop = l.loadOn(ecmpVIPB + ":80")
	time.Sleep(3 * time.Second)
	cut := stop()
	l.in(l.nodes[0], "nft", "delete", "table", "inet", "cut")
	if cut.OK == 0 || cut.ByL4LB+cut.ByRoute != 0 {
		t.Errorf("node 1 cut from %s: load on zone b's VIP %+v; want none failed", t2, cut)
	}
	t.Logf("node 1 alone cut from %s: its zone b table differs from nodes 2 and 3 for %d of 10000 flows (%d of them on %s there); %d connections to zone b's VIP, %d failed",
		t2, differ, toT2, t2, cut.OK, cut.ByL4LB+cut.ByRoute)
	for deadline := time.Now().Add(15 * time.Second); t2State(1) != api.StateHealthy; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("node 1's path to %s is back, but its state there is %q 15 s on", t2, t2State(1))
		}
	}

	// A zonal shift away from zone b, through node 2: with the etcd
	// backend it is every node's, so every node answers 503 for zone b and
	// withdraws its prefix within a second, and zone a is untouched. A
	// cancel through node 3 brings zone b back on all of them.
	stop = l.loadOn(ecmpVIP + ":80")
	shifted := time.Now()
	if out, err := l.cli(bin, 2, "zones", "shift", "--away-from", "b", "--expires-in", "1h"); err != nil {
		t.Fatalf("zones shift: %v\n%s", err, out)
	}
	l.waitHopsOf(ecmpVIPB, 0, 5*time.Second)
	withdrawnIn := time.Since(shifted)
	out, err := l.cli(bin, 1, "zones", "list", "-o", "json")
	var zones []api.Zone
	if err != nil || json.Unmarshal([]byte(out), &zones) != nil || len(zones) != 2 || zones[1].ZonalShift == nil || zones[1].Healthy || !zones[0].Healthy {
		t.Fatalf("zones list on node 1 during a shift started through node 2: %v\n%s", err, out)
	}
	if withdrawnIn > time.Second || l.hopsOf(ecmpVIP) != 3 {
		t.Errorf("zonal shift of zone b: its next hops went to 0 after %v (want within 1 s), zone a has %d", withdrawnIn, l.hopsOf(ecmpVIP))
	}
	if out, err := l.cli(bin, 3, "zones", "cancel", "b"); err != nil {
		t.Fatalf("zones cancel: %v\n%s", err, out)
	}
	back := l.waitHopsOf(ecmpVIPB, 3, 10*time.Second)
	other := stop()
	if other.OK == 0 || other.ByL4LB+other.ByRoute != 0 || l.hopsOf(ecmpVIP) != 3 {
		t.Errorf("connections to zone a's VIP during zone b's shift: %+v", other)
	}
	t.Logf("zonal shift of zone b through node 2: every node withdrew it, the router's table had none %v after the call; back with 3 next hops %v after a cancel through node 3; zone a meanwhile: %d connections, %d failed",
		withdrawnIn.Round(time.Millisecond), back.Round(time.Millisecond), other.OK, other.ByL4LB+other.ByRoute)

	// A rolling upgrade, one node at a time with --wait: the VIP keeps at
	// least two next hops, and no connection fails but a handshake that
	// straddles the router's rehash (deploy/README.md says why).
	stop = l.loadOn(ecmpVIP + ":80")
	hops = l.fewestHops()
	var rolled []string
	for i := range l.nodes {
		began := time.Now()
		out, err := l.cli(bin, i+1, "upgrade", "--wait")
		if err != nil {
			t.Fatalf("node %d: upgrade --wait: %v\n%s", i+1, err, out)
		}
		if n := l.hopsOf(ecmpVIP); n != 3 {
			t.Errorf("node %d: upgrade --wait returned with %d next hops; want 3 (the node announcing again)", i+1, n)
		}
		rolled = append(rolled, fmt.Sprintf("node %d in %v", i+1, time.Since(began).Round(100*time.Millisecond)))
	}
	fewA, _ = hops()
	rolling := stop()
	// Each node's upgrade moves the router's hash twice (withdrawn, then
	// announced again): two resets at most for each.
	rehash := ecmpLoad{Failed: rolling.ByL4LB + rolling.ByRoute, Errors: rolling.Errors}
	resetsOnly := rehash.Failed <= 2*len(l.nodes)
	for _, e := range rehash.Errors {
		resetsOnly = resetsOnly && strings.Contains(e, "connection reset by peer")
	}
	if fewA < 2 || rolling.OK == 0 || rolling.ByRoute != 0 || !resetsOnly {
		t.Errorf("a rolling upgrade --wait: next hops down to %d (want 2 at least), load %+v", fewA, rolling)
	}
	t.Logf("a rolling upgrade --wait of all 3 nodes (%s): next hops never below %d; %d connections, %d failed %v", strings.Join(rolled, ", "), fewA, rolling.OK, rehash.Failed, rolling.Errors)

	// A BFD failure: node 2 hears nothing from the router for a second.
	// BIRD's BFD ends the session; once BFD answers again, the node is back
	// in the ECMP set within 5 s (BIRD's error wait time, deploy/README.md).
	l.in(l.nodes[1], "nft", "add", "table", "inet", "bfdcut")
	l.in(l.nodes[1], "nft", "add", "chain", "inet", "bfdcut", "in", "{ type filter hook input priority 0; }")
	l.in(l.nodes[1], "nft", "add", "rule", "inet", "bfdcut", "in", "udp", "dport", "3784", "drop")
	l.waitHopsOf(ecmpVIP, 2, 5*time.Second)
	time.Sleep(time.Second)
	l.in(l.nodes[1], "nft", "delete", "table", "inet", "bfdcut")
	took = l.waitHopsOf(ecmpVIP, 3, 5*time.Second)
	t.Logf("node 2's BFD cut for 1 s: the router dropped it, and took it back %v after BFD could answer again", took.Round(time.Millisecond))
	for _, p := range l.procs {
		p.Process.Signal(syscall.SIGTERM)
	}
}
