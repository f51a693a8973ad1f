//go:build integration

package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/l4lb/l4lb/internal/netnstest"
	"github.com/l4lb/l4lb/lb/bfd"
	"github.com/l4lb/l4lb/pkg/api"
)

// The scale-out test: a router namespace runs BIRD 2 with ECMP over BGP to
// three l4lb nodes, which stand before four shared targets; a client
// namespace sits behind the router. Every address is from 198.18.0.0/15.
//
//	client 198.18.0.2 -- 198.18.0.1 [router, BIRD] 198.18.1.254 --+-- node1 198.18.1.1 (VIP 198.18.10.1 on lo)
//	                                                   (a bridge)  +-- node2 198.18.1.2
//	                                                               +-- node3 198.18.1.3
//	                                                               +-- targets 198.18.1.11-14
//
// The client-side work runs in the client namespace as this test binary
// again, in a TestECMPHelper role; so do the targets.
const (
	ecmpVIP      = "198.18.10.1"
	ecmpClient   = "198.18.0.2"
	ecmpRouterC  = "198.18.0.1"
	ecmpRouterN  = "198.18.1.254"
	ecmpRouterAS = 64513
	ecmpNodeAS   = 64512
	ecmpToken    = "ecmp-test-token"
)

var ecmpTargets = []string{"198.18.1.11", "198.18.1.12", "198.18.1.13", "198.18.1.14"}

func ecmpNode(i int) string { return fmt.Sprintf("198.18.1.%d", i) }

type ecmpLab struct {
	t      *testing.T
	ip     string
	dir    string
	router string
	client string
	tgts   []string    // one namespace per target
	nodes  []string    // namespace names
	procs  []*exec.Cmd // l4lb per node
}

func (l *ecmpLab) in(ns string, args ...string) string {
	l.t.Helper()
	out, err := exec.Command(l.ip, append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("in %s: %s: %v\n%s", ns, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (l *ecmpLab) run(args ...string) {
	l.t.Helper()
	out, err := exec.Command(l.ip, args...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func newECMPLab(t *testing.T) *ecmpLab {
	ipBin := netnstest.IP(t)
	id := os.Getpid() % 100000
	l := &ecmpLab{t: t, ip: ipBin, dir: t.TempDir(),
		router: fmt.Sprintf("l4er%d", id), client: fmt.Sprintf("l4ec%d", id)}
	for i := 1; i <= 3; i++ {
		l.nodes = append(l.nodes, fmt.Sprintf("l4en%d-%d", i, id))
	}
	for i := range ecmpTargets {
		l.tgts = append(l.tgts, fmt.Sprintf("l4et%d-%d", i+1, id))
	}
	for _, ns := range append(append([]string{l.router, l.client}, l.tgts...), l.nodes...) {
		l.run("netns", "add", ns)
		t.Cleanup(func() {
			l.killAll(ns) // a process an upgrade started is no child of the test
			exec.Command(ipBin, "netns", "del", ns).Run()
		})
		l.in(ns, "ip", "link", "set", "lo", "up")
	}
	// The router: a bridge towards the nodes and targets, a link to the
	// client, forwarding with an L4 multipath hash.
	l.in(l.router, "ip", "link", "add", "br0", "type", "bridge")
	l.in(l.router, "ip", "addr", "add", ecmpRouterN+"/24", "dev", "br0")
	l.in(l.router, "ip", "link", "set", "br0", "up")
	l.in(l.router, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1")
	l.run("link", "add", "rc0", "netns", l.router, "type", "veth", "peer", "name", "c0", "netns", l.client)
	l.in(l.router, "ip", "addr", "add", ecmpRouterC+"/24", "dev", "rc0")
	l.in(l.router, "ip", "link", "set", "rc0", "up")
	// The client's link is narrower than the others, so that its segments
	// still fit once the nodes add an outer header for direct server
	// return (deploy/README.md says so too).
	l.in(l.client, "ip", "link", "set", "c0", "mtu", "1400")
	l.in(l.router, "ip", "link", "set", "rc0", "mtu", "1400")
	l.in(l.client, "ip", "addr", "add", ecmpClient+"/24", "dev", "c0")
	l.in(l.client, "ip", "link", "set", "c0", "up")
	l.in(l.client, "ip", "route", "add", "default", "via", ecmpRouterC)
	attach := func(ns, inner, outer string, addrs ...string) {
		l.run("link", "add", outer, "netns", l.router, "type", "veth", "peer", "name", inner, "netns", ns)
		l.in(l.router, "ip", "link", "set", outer, "master", "br0", "up")
		for _, a := range addrs {
			l.in(ns, "ip", "addr", "add", a+"/24", "dev", inner)
		}
		l.in(ns, "ip", "link", "set", inner, "up")
		l.in(ns, "ip", "route", "add", "default", "via", ecmpRouterN)
	}
	for i, ns := range l.nodes {
		attach(ns, "n0", fmt.Sprintf("rn%d", i+1), ecmpNode(i+1))
		l.in(ns, "ip", "addr", "add", ecmpVIP+"/32", "dev", "lo")
		// Direct server return forwards to the targets packets whose outer
		// source is the node's own address (deploy/README.md).
		l.in(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.accept_local=1")
	}
	for i, ns := range l.tgts {
		attach(ns, "t0", fmt.Sprintf("rt%d", i+1), ecmpTargets[i])
	}

	// BIRD on the router: a session to each node, ECMP into the kernel,
	// and BFD beside each session, which ends it (and drops the node's
	// route) within 600 ms of the node's silence. BFD is authenticated
	// (meticulous keyed SHA1), so a spoofed Down cannot end a session.
	conf := fmt.Sprintf(`router id %s;
protocol device { scan time 1; }
protocol bfd {
	interface "*" {
		min rx interval 200 ms; min tx interval 200 ms; multiplier 3;
		authentication meticulous keyed sha1;
		password "`+ecmpBFDKey+`" { id 7; };
	};
}
protocol kernel {
	merge paths yes;
	ipv4 { import none; export all; };
}
template bgp lb {
	local %s as %d;
	hold time 3;
	keepalive time 1;
	connect retry time 1;
	error wait time 1, 2;
	bfd on;
	ipv4 { import all; export none; };
}
`, ecmpRouterN, ecmpRouterN, ecmpRouterAS)
	for i := range l.nodes {
		conf += fmt.Sprintf("protocol bgp node%d from lb { neighbor %s as %d; }\n", i+1, ecmpNode(i+1), ecmpNodeAS)
	}
	netnstest.BIRD(t, l.router, l.dir, conf)
	return l
}

// ecmpBFDKey is the BFD sessions' SHA1 key.
const ecmpBFDKey = "ecmp-bfd-key"

// TestSpoofBFDHelper is not a test: run in the router's namespace by the
// ECMP test, it sends three unauthenticated BFD Downs, TTL 255, to the
// node named by L4LB_SPOOF_BFD, as an attacker on the link would.
func TestSpoofBFDHelper(t *testing.T) {
	dst := os.Getenv("L4LB_SPOOF_BFD")
	if dst == "" {
		t.Skip("run by TestECMPOverBGP inside the router's namespace")
	}
	c, err := net.Dial("udp4", net.JoinHostPort(dst, "3784"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := ipv4.NewConn(c).SetTTL(255); err != nil {
		t.Fatal(err)
	}
	down := bfd.Packet{State: bfd.Down, Diag: bfd.DiagNeighborDown, DetectMult: 3, MyDiscriminator: 0x5eed, DesiredMinTx: 1e6, RequiredMinRx: 1e6}
	for range 3 {
		if _, err := c.Write(down.Append(nil)); err != nil {
			t.Fatal(err)
		}
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// startNode runs l4lb in node i's namespace (1-based). The first of each
// node's processes is l.procs[i-1].
func (l *ecmpLab) startNode(bin string, i int) *exec.Cmd {
	dir := filepath.Join(l.dir, fmt.Sprintf("node%d", i))
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "token"), []byte(ecmpToken), 0o600)
	var targets []string
	for _, a := range ecmpTargets {
		targets = append(targets, fmt.Sprintf(`{address: "%s:8080"}`, a))
	}
	hc := `health_check: {protocol: TCP, port: "8080", interval: 1s, healthy_threshold: 2, unhealthy_threshold: 2}`
	var dsrTargets, udpDSRTargets []string
	for _, a := range ecmpTargets {
		dsrTargets = append(dsrTargets, fmt.Sprintf(`{address: "%s:9000"}`, a))
		udpDSRTargets = append(udpDSRTargets, fmt.Sprintf(`{address: "%s:5300"}`, a))
	}
	cfg := fmt.Sprintf(`admin: {listen: "%[1]s:9900", token_file: "%[2]s/token"}
load_balancer: {tcp_fast_path: true, tcp_fast_path_interfaces: [n0], udp_fast_path: true, udp_fast_path_interfaces: [n0]}
zones: {a: [%[3]s]}
listeners:
  - {name: web, port: 80, bind: [%[3]s], target_group: web}
  - {name: dns, protocol: UDP, port: 53, bind: [%[3]s], target_group: udp}
  - {name: bulk, port: 9000, bind: [%[3]s], target_group: dsr}
  - {name: quic, protocol: UDP, port: 5300, bind: [%[3]s], target_group: udpdsr}
target_groups:
  - {name: web, targets: [%[4]s], %[5]s, attributes: {deregistration_delay.timeout_seconds: "1"}}
  - {name: udp, protocol: UDP, targets: [%[4]s], %[5]s}
  - {name: dsr, forwarding: dsr, targets: [%[9]s], health_check: {interval: 1s, healthy_threshold: 2, unhealthy_threshold: 2}}
  - {name: udpdsr, protocol: UDP, forwarding: dsr, encapsulation: gue, gue_port: 6080, targets: [%[10]s], %[5]s}
bgp:
  local_as: %[6]d
  router_id: %[1]s
  peers: [{address: %[7]s, as: %[8]d, hold_time: 3s, bfd: {interval: 200ms, multiplier: 3, authentication: {type: meticulous_keyed_sha1, key_id: 7, password: "`+ecmpBFDKey+`"}}}]
  announce: {a: [%[3]s/32]}
  withdraw_grace: 2s
`, ecmpNode(i), dir, ecmpVIP, strings.Join(targets, ", "), hc, ecmpNodeAS, ecmpRouterN, ecmpRouterAS, strings.Join(dsrTargets, ", "), strings.Join(udpDSRTargets, ", "))
	return l.serveNode(bin, i, cfg)
}

// serveNode writes cfg as node i's config and runs l4lb serve on it in the
// node's namespace, its output appended to the node's log (shown if the
// test fails).
func (l *ecmpLab) serveNode(bin string, i int, cfg string) *exec.Cmd {
	dir := filepath.Join(l.dir, fmt.Sprintf("node%d", i))
	path := filepath.Join(dir, "l4lb.yaml")
	os.WriteFile(path, []byte(cfg), 0o644)
	logf, err := os.OpenFile(filepath.Join(dir, "l4lb.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		l.t.Fatal(err)
	}
	cmd := exec.Command(l.ip, "netns", "exec", l.nodes[i-1], bin, "serve", "--config", path, "--log-level", "info")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	logf.Close()
	l.procs = append(l.procs, cmd)
	l.t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if l.t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			l.t.Logf("node %d's log (the end):\n%s", i, tail(b, 8<<10))
		}
	})
	return cmd
}

// startTarget runs the targets helper in ns for address ip.
func (l *ecmpLab) startTarget(ns, ip string) {
	l.t.Helper()
	cmd := exec.Command(l.ip, "netns", "exec", ns, os.Args[0], "-test.run=^TestECMPHelper$")
	cmd.Env = append(os.Environ(), "L4LB_ECMP_ROLE=targets", "ECMP_TARGET="+ip, "ECMP_LOG="+l.targetLog(ip))
	out, _ := cmd.StdoutPipe()
	in, _ := cmd.StdinPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { in.Close(); cmd.Process.Kill(); cmd.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
		l.t.Fatalf("target %s: %q %v", ip, line, err)
	}
}

func (l *ecmpLab) targetLog(ip string) string { return filepath.Join(l.dir, "target-"+ip+".log") }

// targetsSaw reads the targets' logs: for each of the client's ports whose
// datagrams (proto "udp") or connection ("tcp") reached a target by direct
// server return, the targets that saw it (one, unless the flow moved).
func (l *ecmpLab) targetsSaw(proto string) map[int][]string {
	saw := map[int][]string{}
	for _, a := range ecmpTargets {
		b, err := os.ReadFile(l.targetLog(a))
		if err != nil {
			l.t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			addr, ok := strings.CutPrefix(line, proto+" ")
			from, err := netip.ParseAddrPort(addr)
			if !ok {
				continue
			}
			if err != nil || from.Addr().String() != ecmpClient {
				continue
			}
			if p := int(from.Port()); !slices.Contains(saw[p], a) {
				saw[p] = append(saw[p], a)
			}
		}
	}
	return saw
}

// routes asks every node, with l4lb route in the client's namespace, which
// target each flow from the client's ports first..first+n-1 gets.
func (l *ecmpLab) routes(bin, listener, proto string, first, n int) [][]api.Route {
	l.t.Helper()
	res := make([][]api.Route, len(l.nodes))
	var wg sync.WaitGroup
	for i := range l.nodes {
		wg.Go(func() {
			out, err := exec.Command(l.ip, "netns", "exec", l.client, bin, "route", "--listener", listener, "--protocol", proto,
				"--src", fmt.Sprintf("%s:%d-%d", ecmpClient, first, first+n-1), "--admin", fmt.Sprintf("http://%s:9900", ecmpNode(i+1)),
				"--token-file", filepath.Join(l.dir, fmt.Sprintf("node%d", i+1), "token"), "-o", "json").Output()
			if err == nil {
				err = json.Unmarshal(out, &res[i])
			}
			if err != nil || len(res[i]) != n {
				l.t.Errorf("l4lb route --listener %s on node %d: %v, %d routes", listener, i+1, err, len(res[i]))
			}
		})
	}
	wg.Wait()
	if l.t.Failed() {
		l.t.FailNow()
	}
	return res
}

// agree checks that every node named the same target for every flow, and
// returns the targets by client port.
func (l *ecmpLab) agree(what string, routes [][]api.Route) map[int]string {
	l.t.Helper()
	byPort := map[int]string{}
	disagree := 0
	for f, rt := range routes[0] {
		src, _ := netip.ParseAddrPort(rt.Source)
		for _, other := range routes[1:] {
			if other[f].Target == "" || other[f].Target != rt.Target {
				disagree++
				break
			}
		}
		tgt, _ := netip.ParseAddrPort(rt.Target)
		byPort[int(src.Port())] = tgt.Addr().String()
	}
	if disagree != 0 {
		l.t.Fatalf("%s: the nodes name different targets for %d of %d flows", what, disagree, len(routes[0]))
	}
	return byPort
}

// bgpStatus runs l4lb bgp status against node i (1-based) from the
// client's namespace, as JSON and as a table.
func (l *ecmpLab) bgpStatus(bin string, i int) (api.BGPStatus, string) {
	l.t.Helper()
	args := []string{"netns", "exec", l.client, bin, "bgp", "status", "--admin", fmt.Sprintf("http://%s:9900", ecmpNode(i)),
		"--token-file", filepath.Join(l.dir, fmt.Sprintf("node%d", i), "token")}
	var st api.BGPStatus
	out, err := exec.Command(l.ip, append(args, "-o", "json")...).Output()
	if err == nil {
		err = json.Unmarshal(out, &st)
	}
	table, terr := exec.Command(l.ip, args...).Output()
	if err != nil || terr != nil {
		l.t.Fatalf("l4lb bgp status on node %d: %v %v\n%s", i, err, terr, table)
	}
	return st, string(table)
}

// birdRoute is what BIRD says of the VIP's routes, with their attributes.
func (l *ecmpLab) birdRoute() string { return l.birdc("show", "route", "for", ecmpVIP, "all") }

// birdc is BIRD's answer to a command.
func (l *ecmpLab) birdc(args ...string) string {
	out, _ := exec.Command(l.ip, append([]string{"netns", "exec", l.router, "birdc", "-s", filepath.Join(l.dir, "bird.ctl")}, args...)...).CombinedOutput()
	return string(out)
}

// killAll kills every process in namespace ns.
func (l *ecmpLab) killAll(ns string) {
	out, _ := exec.Command(l.ip, "netns", "pids", ns).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// nextHops is the router's ECMP next hops for the VIP.
func (l *ecmpLab) nextHops() []string {
	out, _ := exec.Command(l.ip, "-n", l.router, "route", "show", ecmpVIP+"/32").CombinedOutput()
	var hops []string
	for _, f := range strings.Split(string(out), "\n") {
		fs := strings.Fields(f)
		for i := 0; i+1 < len(fs); i++ {
			if fs[i] == "via" {
				hops = append(hops, fs[i+1])
			}
		}
	}
	return hops
}

// waitHops waits until the VIP has n next hops, and says how long it took.
func (l *ecmpLab) waitHops(n int, within time.Duration) time.Duration {
	l.t.Helper()
	start := time.Now()
	for {
		hops := l.nextHops()
		if len(hops) == n {
			return time.Since(start)
		}
		if time.Since(start) > within {
			l.t.Fatalf("the router's route to %s has next hops %v, want %d of them within %v", ecmpVIP, hops, n, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// helper runs this binary in ns in an ECMP helper role and returns its
// result (JSON).
func (l *ecmpLab) helper(ns, role string, env ...string) string {
	l.t.Helper()
	cmd := exec.Command(l.ip, "netns", "exec", ns, os.Args[0], "-test.run=^TestECMPHelper$")
	cmd.Env = append(os.Environ(), append(env, "L4LB_ECMP_ROLE="+role)...)
	out, err := cmd.Output()
	if err != nil {
		l.t.Fatalf("%s helper: %v\n%s", role, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if res, ok := strings.CutPrefix(line, "RESULT "); ok {
			return res
		}
	}
	l.t.Fatalf("%s helper printed no result:\n%s", role, out)
	return ""
}

// helperStream starts a helper that prints "STARTED json" once under way,
// returns that json, and delivers its result on the channel.
func (l *ecmpLab) helperStream(ns, role string, env ...string) (<-chan string, string) {
	l.t.Helper()
	cmd := exec.Command(l.ip, "netns", "exec", ns, os.Args[0], "-test.run=^TestECMPHelper$")
	cmd.Env = append(os.Environ(), append(env, "L4LB_ECMP_ROLE="+role)...)
	cmd.Stderr = os.Stderr
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	r := bufio.NewScanner(out)
	started := ""
	for started == "" && r.Scan() {
		started, _ = strings.CutPrefix(r.Text(), "STARTED ")
	}
	if started == "" {
		l.t.Fatalf("%s helper ended before it started", role)
	}
	res := make(chan string, 1)
	go func() {
		last := ""
		for r.Scan() {
			if v, ok := strings.CutPrefix(r.Text(), "RESULT "); ok {
				last = v
			}
		}
		res <- last
	}()
	return res, started
}

func (l *ecmpLab) adminURLs() string {
	var urls []string
	for i := range l.nodes {
		urls = append(urls, fmt.Sprintf("http://%s:9900", ecmpNode(i+1)))
	}
	return strings.Join(urls, ",")
}

type ecmpLoad struct {
	OK, Failed int
	GapMS      int64    // from the first failure to the last
	Errors     []string `json:",omitempty"` // the first few
}

func TestECMPOverBGP(t *testing.T) {
	l := newECMPLab(t)
	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "ecmp-test")

	// The targets: each answers with its own address, over TCP and UDP,
	// and, for direct server return, sinks what comes to the VIP and
	// answers with its checksum. The TCP listener bulk's group
	// encapsulates in IPIP, the UDP listener quic's in GUE to port 6080.
	// deploy/dsr-target.sh sets each target up; this kernel may lack the
	// ipip and fou modules, and then l4lb dsr-target takes the outer
	// headers off.
	for i, ns := range l.tgts {
		script := exec.Command(l.ip, "netns", "exec", ns, "sh", "../../deploy/dsr-target.sh", "--gue-port", "6080", ecmpVIP)
		out, err := script.CombinedOutput()
		if code := script.ProcessState.ExitCode(); code == 3 {
			dec := exec.Command(l.ip, "netns", "exec", ns, bin, "dsr-target", "--interface", "t0", "--vip", ecmpVIP, "--gue-port", "6080")
			dec.Stdout, dec.Stderr = io.Discard, os.Stderr
			if err := dec.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { dec.Process.Kill(); dec.Wait() })
		} else if err != nil {
			t.Fatalf("deploy/dsr-target.sh in %s: %v\n%s", ns, err, out)
		}
		l.startTarget(ns, ecmpTargets[i])
	}

	for i := range l.nodes {
		l.startNode(bin, i+1)
	}
	took := l.waitHops(3, 30*time.Second)
	t.Logf("the VIP reached the router's FIB with 3 next hops %v after %v", l.nextHops(), took.Round(time.Millisecond))
	for i := range l.nodes {
		b, _ := os.ReadFile(filepath.Join(l.dir, fmt.Sprintf("node%d", i+1), "l4lb.log"))
		for _, want := range []string{`"listener":"bulk","encapsulation_source":"198.18.1.%d","encapsulation":"ipip"`, `"listener":"quic","encapsulation_source":"198.18.1.%d","encapsulation":"gue, port 6080"`} {
			if want = fmt.Sprintf(want, i+1); !strings.Contains(string(b), want) {
				t.Errorf("node %d's log lacks %s", i+1, want)
			}
		}
	}

	// Every node names the same target for 10 000 flows, TCP on the socket
	// path and UDP on the kernel path; the UDP flows reach the targets
	// named, by the targets' replies and by their own logs.
	l.helper(l.client, "healthy", "ECMP_ADMIN="+l.adminURLs())
	start := time.Now()
	l.agree("TCP, web", l.routes(bin, "web", "tcp", 20000, 10000))
	l.agree("TCP kernel path, bulk", l.routes(bin, "bulk", "tcp", 20000, 10000))
	named := l.agree("UDP kernel path, quic", l.routes(bin, "quic", "udp", 40000, 10000))
	t.Logf("l4lb route on 3 nodes: the same targets for 10000 flows each on the TCP socket path, the TCP kernel path and the UDP kernel path (%v)", time.Since(start).Round(time.Millisecond))
	replied := ecmpTargetsOf(t, l.helper(l.client, "udp", "ECMP_FLOWS=10000", "ECMP_SRC=40000", "ECMP_PORT=5300"))
	saw := l.targetsSaw("udp")
	wrong := 0
	for p := 40000; p < 50000; p++ {
		if replied[p] != named[p] || len(saw[p]) != 1 || saw[p][0] != named[p] {
			if wrong++; wrong <= 5 {
				t.Errorf("UDP flow from port %d: the nodes name %s, %q answered, the targets' logs show %v", p, named[p], replied[p], saw[p])
			}
		}
	}
	if wrong > 0 {
		t.Fatalf("%d of 10000 UDP flows on the kernel path did not reach the target the nodes name", wrong)
	}
	// 1000 connections land on the target the nodes name.
	var conns struct{ OK, Failed, Mismatch int }
	json.Unmarshal([]byte(l.helper(l.client, "connect", "ECMP_ADMIN="+l.adminURLs(), "ECMP_FLOWS=1000", "ECMP_SRC=30000")), &conns)
	if conns.OK != 1000 || conns.Mismatch != 0 {
		t.Fatalf("1000 connections: %+v", conns)
	}
	udpBefore := ecmpTargetsOf(t, l.helper(l.client, "udp", "ECMP_FLOWS=1000", "ECMP_SRC=50000", "ECMP_PORT=53"))
	kernelBefore := ecmpTargetsOf(t, l.helper(l.client, "udp", "ECMP_FLOWS=1000", "ECMP_SRC=51000", "ECMP_PORT=5300"))

	// A node whose zone has no healthy target withdraws; it comes back
	// when its targets do.
	deregister := func(node int, method string) {
		for _, a := range ecmpTargets {
			args := []string{bin, "targets", method, "--admin", fmt.Sprintf("http://%s:9900", ecmpNode(node)),
				"--token-file", filepath.Join(l.dir, fmt.Sprintf("node%d", node), "token"), "--target-group", "web", "--target", a + ":8080"}
			l.in(l.nodes[node-1], args...)
		}
	}
	st, table := l.bgpStatus(bin, 3)
	if len(st.Peers) != 1 || st.Peers[0].Address != ecmpRouterN || st.Peers[0].State != "established" || st.Peers[0].HoldTime != 3 ||
		st.Peers[0].BFD == nil || st.Peers[0].BFD.State != "up" || st.Peers[0].BFD.DetectTimeMS != 600 || len(st.Routes) != 1 || st.Routes[0].Prefix != ecmpVIP+"/32" || !st.Routes[0].Announced || !strings.Contains(table, "established") || !strings.Contains(table, "up, detect 600ms") {
		t.Fatalf("l4lb bgp status on node 3: %+v\n%s", st, table)
	}
	if sessions := l.birdc("show", "bfd", "sessions"); strings.Count(sessions, " Up ") != 3 {
		t.Errorf("BIRD's BFD sessions: want 3 up\n%s", sessions)
	} else {
		t.Logf("BIRD's BFD sessions with the nodes:\n%s", sessions)
	}
	// A spoofed Down from the router's own address, TTL 255, as RFC 5880
	// allows without authentication: refused for it, counted, and the
	// sessions and the route stay.
	if b := st.Peers[0].BFD; b.Authentication != "meticulous_keyed_sha1" || b.Packets["accepted"] == 0 {
		t.Errorf("node 3's BFD session: %+v; want authenticated packets taken", b)
	}
	l.in(l.router, "env", "L4LB_SPOOF_BFD="+ecmpNode(3), os.Args[0], "-test.run=^TestSpoofBFDHelper$")
	st2, table := l.bgpStatus(bin, 3)
	for deadline := time.Now().Add(5 * time.Second); st2.Peers[0].BFD.Packets["auth"] < 3 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		st2, table = l.bgpStatus(bin, 3)
	}
	// Counted, and three intervals on (600 ms, the detection time), the
	// sessions and the route are as they were.
	time.Sleep(600 * time.Millisecond)
	if st2, table = l.bgpStatus(bin, 3); st2.Peers[0].BFD.State != "up" || st2.Peers[0].BFD.Packets["auth"] < 3 || len(l.nextHops()) != 3 ||
		!st2.Peers[0].Since.Equal(st.Peers[0].Since) {
		t.Errorf("node 3 after 3 spoofed BFD Downs: %+v, next hops %v\n%s", st2.Peers[0].BFD, l.nextHops(), table)
	} else {
		t.Logf("3 spoofed BFD Downs from the router's address, TTL 255, refused for lack of authentication:\n%s", table)
	}
	deregister(3, "deregister")
	took = l.waitHops(2, 10*time.Second)
	t.Logf("node 3 without healthy targets: withdrawn from the FIB after %v", took.Round(time.Millisecond))
	if st, table := l.bgpStatus(bin, 3); st.Routes[0].Announced || !strings.HasPrefix(st.Routes[0].Why, "zone unhealthy") {
		t.Errorf("l4lb bgp status on node 3 without healthy targets: %+v\n%s", st.Routes, table)
	} else {
		t.Logf("l4lb bgp status on node 3 without healthy targets:\n%s", table)
	}
	deregister(3, "register")
	took = l.waitHops(3, 15*time.Second)
	t.Logf("node 3's targets registered again: back in the FIB after %v", took.Round(time.Millisecond))

	// A reload of node 3's bgp section: a community on zone a's route, and
	// a longer hold time, which restarts its session to the router. The
	// route comes back with the community.
	cfgPath := filepath.Join(l.dir, "node3", "l4lb.yaml")
	b, _ := os.ReadFile(cfgPath)
	cfg := strings.Replace(strings.Replace(string(b), "hold_time: 3s", "hold_time: 4s", 1),
		"  withdraw_grace: 2s", "  communities: {a: [\"64512:300\"]}\n  withdraw_grace: 2s", 1)
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	l.in(l.nodes[2], bin, "reload", "--admin", fmt.Sprintf("http://%s:9900", ecmpNode(3)), "--token-file", filepath.Join(l.dir, "node3", "token"))
	start = time.Now()
	for !strings.Contains(l.birdRoute(), "(64512,300)") || len(l.nextHops()) != 3 {
		if time.Since(start) > 20*time.Second {
			t.Fatalf("after node 3's reload, the router has next hops %v and:\n%s", l.nextHops(), l.birdRoute())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if b, _ := os.ReadFile(filepath.Join(l.dir, "node3", "l4lb.log")); !strings.Contains(string(b), "BGP peer removed or changed: its session closes") {
		t.Error("node 3's session did not restart on a new hold time")
	}
	t.Logf("node 3 reloaded with a new hold time and a community: its session restarted, and the route was back with (64512,300) after %v", time.Since(start).Round(time.Millisecond))

	// A reload of node 2's BFD interval alone (200 to 300 ms): the BFD
	// session takes it by a poll sequence, and neither it nor the BGP
	// session goes down, so the router never drops node 2.
	cfgPath = filepath.Join(l.dir, "node2", "l4lb.yaml")
	b, _ = os.ReadFile(cfgPath)
	os.WriteFile(cfgPath, []byte(strings.Replace(string(b), "bfd: {interval: 200ms", "bfd: {interval: 300ms", 1)), 0o644)
	was, _ := l.bgpStatus(bin, 2)
	l.in(l.nodes[1], bin, "reload", "--admin", fmt.Sprintf("http://%s:9900", ecmpNode(2)), "--token-file", filepath.Join(l.dir, "node2", "token"))
	start = time.Now()
	for {
		st, table := l.bgpStatus(bin, 2)
		// BIRD sends every 200 ms, node 2 now asks for 300: three times 300.
		if b := st.Peers[0].BFD; b != nil && b.DetectTimeMS == 900 {
			if b.State != "up" || !b.Since.Equal(was.Peers[0].BFD.Since) || !st.Peers[0].Since.Equal(was.Peers[0].Since) || len(l.nextHops()) != 3 {
				t.Errorf("node 2 after a reload of its BFD interval: %+v, BFD %+v, next hops %v; want both sessions kept, up since before\n%s", st.Peers[0], b, l.nextHops(), table)
			}
			t.Logf("node 2 reloaded with a BFD interval of 300 ms: its BFD session took it in %v, without going down:\n%s", time.Since(start).Round(time.Millisecond), table)
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("node 2's BFD session did not take the new interval:\n%s", table)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Node 3 upgrades its binary under load: it withdraws its route and
	// waits before it hands over, the new process announces once its zone
	// is healthy, and no connection fails.
	load, _ := l.helperStream(l.client, "load", "ECMP_SECONDS=10") // once answers come
	fewest, watching := make(chan int, 1), make(chan struct{})
	go func() {
		least := 3
		for {
			select {
			case <-watching:
				fewest <- least
				return
			case <-time.After(20 * time.Millisecond):
			}
			least = min(least, len(l.nextHops()))
		}
	}()
	start = time.Now()
	l.in(l.nodes[2], bin, "upgrade", "--admin", fmt.Sprintf("http://%s:9900", ecmpNode(3)), "--token-file", filepath.Join(l.dir, "node3", "token"))
	handedOver := time.Since(start)
	took = l.waitHops(3, 20*time.Second)
	close(watching)
	var upgraded ecmpLoad
	json.Unmarshal([]byte(<-load), &upgraded)
	// The route moves twice here (withdrawn, then announced again), so a
	// handshake can straddle a rehash, as when a node leaves (below).
	if least := <-fewest; least != 2 || upgraded.OK == 0 || !rehashedOnly(upgraded) {
		t.Errorf("node 3's upgrade: the FIB went down to %d next hops (want 2: withdrawn first), load %+v (want none failed, but for handshakes reset by the router's rehash)", least, upgraded)
	}
	t.Logf("node 3 upgraded under load: withdrawn, handed over after %v, announced again by the new process %v later; %d connections, %d failed",
		handedOver.Round(time.Millisecond), took.Round(time.Millisecond), upgraded.OK, upgraded.Failed)
	// The new process took the DSR guard over: its 4 rules in place of
	// the old process's, which let go of the kernel path.
	if guard := l.in(l.nodes[2], "nft", "list", "chain", "inet", "l4lb", "dsr_guard"); strings.Count(guard, "l4lb dsr guard") != 4 ||
		strings.Contains(guard, fmt.Sprintf("pid %d\"", l.procs[2].Process.Pid)) {
		t.Errorf("node 3's DSR guard after its upgrade: want 4 rules, none of the old process's (pid %d):\n%s", l.procs[2].Process.Pid, guard)
	}

	// Node 1 dies under load: new connections fail only until the router
	// drops it, UDP flows keep their targets, and long TCP transfers by
	// direct server return, some of them through node 1, go on through the
	// other nodes to the same targets and complete.
	transfers, started := l.helperStream(l.client, "transfers", "ECMP_ADMIN="+l.adminURLs(), "ECMP_FLOWS=20", "ECMP_SECONDS=6")
	var carried []float64
	json.Unmarshal([]byte(started), &carried)
	if len(carried) != 3 || carried[0] == 0 {
		t.Fatalf("DSR flows per node before the kill: %v; want some through node 1", carried)
	}
	// Node 3's new process counts the flows through node 3: its old one
	// let go of the kernel path at the upgrade, though it still drains.
	// (All 20 elsewhere by chance: 1 run in 3000.) Each flow is counted
	// once, by the node the router sent it to.
	if carried[2] == 0 || carried[0]+carried[1]+carried[2] != 20 {
		t.Errorf("DSR flows per node: %v; want 20 in all, some of them on node 3's new process", carried)
	}
	t.Logf("DSR transfers under way; flows per node: %v", carried)
	load, _ = l.helperStream(l.client, "load", "ECMP_SECONDS=6")
	l.procs[0].Process.Signal(syscall.SIGKILL)
	var killed ecmpLoad
	json.Unmarshal([]byte(<-load), &killed)
	l.waitHops(2, 5*time.Second)
	t.Logf("node 1 killed under load: %d connections succeeded, %d failed over %d ms", killed.OK, killed.Failed, killed.GapMS)
	if killed.OK == 0 || killed.GapMS > 5000 {
		t.Errorf("after node 1 was killed: %+v; want failures only while the router still sends to it", killed)
	}
	var moved ecmpTransferred
	json.Unmarshal([]byte(<-transfers), &moved)
	if moved.OK != 20 || moved.Failed != 0 || moved.Mismatch != 0 {
		t.Errorf("20 DSR transfers across node 1's death: %+v; want all complete with matching checksums", moved)
	}
	t.Logf("DSR transfers across node 1's death: %+v", moved)
	// What node 1 left behind: its DSR guard, which drops the packets the
	// router still sent it after its death rather than resetting their
	// flows.
	guard := l.in(l.nodes[0], "nft", "list", "chain", "inet", "l4lb", "dsr_guard")
	oldPID := l.procs[0].Process.Pid
	for _, rule := range []string{"ip daddr " + ecmpVIP + " tcp dport 9000 counter", "ip daddr " + ecmpVIP + " udp dport 5300 counter"} {
		if !strings.Contains(guard, rule) || !strings.Contains(guard, fmt.Sprintf("pid %d", oldPID)) {
			t.Errorf("node 1's DSR guard after its death lacks %q of pid %d:\n%s", rule, oldPID, guard)
		}
	}
	// A SYN to the DSR port on node 1 itself now meets the guard (a
	// timeout), one to the proxied port meets the stack (refused).
	connect := func(port int) string {
		err := exec.Command(l.ip, "netns", "exec", l.nodes[0], "timeout", "1", "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%d", ecmpVIP, port)).Run()
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 124 {
			return "timed out"
		}
		return fmt.Sprint(err)
	}
	if dsr, proxied := connect(9000), connect(80); dsr != "timed out" || proxied == "timed out" || proxied == "<nil>" {
		t.Errorf("connecting to the VIP on node 1 after its death: DSR port %s, proxied port %s; want the first dropped (timed out), the second refused", dsr, proxied)
	}
	guard = l.in(l.nodes[0], "nft", "list", "chain", "inet", "l4lb", "dsr_guard")
	t.Logf("node 1's DSR guard outlived it: TCP 9000 and UDP 5300 to the VIP dropped, not reset, while no socket holds them; it dropped %d TCP packets (a SYN sent on node 1 to the DSR port timed out; to port 80, refused)",
		ecmpGuardDrops(guard, "tcp dport 9000"))
	udpAfter := ecmpTargetsOf(t, l.helper(l.client, "udp", "ECMP_FLOWS=1000", "ECMP_SRC=50000", "ECMP_PORT=53"))
	kernelAfter := ecmpTargetsOf(t, l.helper(l.client, "udp", "ECMP_FLOWS=1000", "ECMP_SRC=51000", "ECMP_PORT=5300"))
	saw = l.targetsSaw("udp")
	movedUDP, movedKernel := 0, 0
	for p := range 1000 {
		if udpBefore[50000+p] != udpAfter[50000+p] {
			movedUDP++
		}
		if kernelBefore[51000+p] != kernelAfter[51000+p] || len(saw[51000+p]) != 1 {
			movedKernel++
		}
	}
	if movedUDP != 0 || movedKernel != 0 {
		t.Errorf("UDP flows that changed target when node 1 died: %d of 1000 on the socket path, %d of 1000 on the kernel path", movedUDP, movedKernel)
	}
	t.Logf("UDP flows across node 1's death: 1000 on the socket path and 1000 on the kernel path; %d and %d changed target", movedUDP, movedKernel)

	// Node 1 comes back. Then node 3's machine vanishes without a word: its
	// link goes down before the process dies, so no FIN or RST tells the
	// router. BFD ends the session when three of its 200 ms intervals pass
	// in silence, well before BGP's hold time (3 s) would. New connections
	// that the router hashes to node 3 fail until then, and no longer.
	restarted := l.startNode(bin, 1)
	took = l.waitHops(3, 30*time.Second)
	t.Logf("node 1 restarted: back in the FIB after %v", took.Round(time.Millisecond))
	guard = l.in(l.nodes[0], "nft", "list", "chain", "inet", "l4lb", "dsr_guard")
	if strings.Contains(guard, fmt.Sprintf("pid %d", oldPID)) || strings.Count(guard, fmt.Sprintf("pid %d\"", restarted.Process.Pid)) != 4 {
		t.Errorf("node 1's DSR guard after its restart: want the new process's 4 rules in place of the dead one's:\n%s", guard)
	}
	// Each DSR transfer, moved or not, was served by one target, the one
	// every node names for it.
	tcpSaw := l.targetsSaw("tcp")
	if len(tcpSaw) != 20 {
		t.Errorf("the targets' logs show %d DSR connections from the client, want 20", len(tcpSaw))
	}
	for port, tgts := range tcpSaw {
		named := l.agree("TCP kernel path, bulk", l.routes(bin, "bulk", "tcp", port, 1))
		if len(tgts) != 1 || tgts[0] != named[port] {
			t.Errorf("DSR connection from port %d: the targets' logs show %v, the nodes name %s", port, tgts, named[port])
		}
	}
	t.Logf("the targets' logs: each of the %d DSR connections reached one target, the one l4lb route names on every node", len(tcpSaw))
	load, _ = l.helperStream(l.client, "load", "ECMP_SECONDS=8")
	l.in(l.nodes[2], "ip", "link", "set", "n0", "down")
	l.killAll(l.nodes[2]) // the process its upgrade started
	vanished := time.Now()
	took = l.waitHops(2, 10*time.Second)
	var silent ecmpLoad
	json.Unmarshal([]byte(<-load), &silent)
	t.Logf("node 3 vanished silently: BFD dropped it from the FIB after %v; %d connections succeeded, %d failed over %d ms",
		took.Round(time.Millisecond), silent.OK, silent.Failed, silent.GapMS)
	if bound := 2 * time.Second; took > bound || silent.OK == 0 || time.Duration(silent.GapMS)*time.Millisecond > bound {
		t.Errorf("node 3 vanished at %v: dropped after %v, load %+v; want the gap bounded by BFD's 600 ms detection time, well below the 3 s hold time\n%s",
			vanished.Format(time.TimeOnly), took, silent, l.birdc("show", "bfd", "sessions"))
	}

	// Node 2 leaves gracefully: its route goes before any flow is cut,
	// and no connection fails: short proxied connections (the socket
	// path) and short DSR ones (the kernel path) both run throughout.
	load, _ = l.helperStream(l.client, "load", "ECMP_SECONDS=6")
	dsrLoad, _ := l.helperStream(l.client, "load", "ECMP_SECONDS=6", "ECMP_PORT=9000")
	l.procs[1].Process.Signal(syscall.SIGTERM)
	took = l.waitHops(1, 5*time.Second)
	if hops := l.nextHops(); len(hops) != 1 || hops[0] != ecmpNode(1) {
		t.Errorf("after node 2 left, the VIP's next hops are %v; want node 1 alone", hops)
	}
	if st, table := l.bgpStatus(bin, 2); !st.Leaving || st.Routes[0].Announced || st.Peers[0].State != "established" {
		t.Errorf("l4lb bgp status on node 2 leaving: %+v; want leaving, withdrawn, the session still up\n%s", st, table)
	}
	// Still running (not yet a zombie): the cleanup reaps it.
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", l.procs[1].Process.Pid))
	if f := strings.Fields(string(stat)); err != nil || len(f) < 3 || f[2] == "Z" {
		t.Error("node 2 exited before the router dropped its route")
	}
	t.Logf("node 2 on SIGTERM: withdrawn from the FIB after %v, while it still served", took.Round(time.Millisecond))
	var left, leftDSR ecmpLoad
	json.Unmarshal([]byte(<-load), &left)
	json.Unmarshal([]byte(<-dsrLoad), &leftDSR)
	// The kernel path picks a DSR connection up mid-flow wherever the
	// router sends it: none fails. A proxied connection lives in one
	// node's sockets: one whose handshake straddles the instant the
	// router moves node 2's flows (its SYN to node 2, its next segment to
	// node 1) is reset by node 1, which has no socket for it; that is the
	// router's rehash, not node 2 cutting a flow, and any other failure,
	// or more than a couple, is.
	if left.OK == 0 || !rehashedOnly(left) || leftDSR.OK == 0 || leftDSR.Failed != 0 {
		t.Errorf("connections while node 2 left gracefully: proxied %+v, DSR %+v; want none failed (but for proxied ones reset when the router moved them mid-handshake)", left, leftDSR)
	}
	t.Logf("node 2 left: %d DSR connections, %d failed; %d proxied connections, %d failed %v", leftDSR.OK, leftDSR.Failed, left.OK, left.Failed, left.Errors)
}

// rehashedOnly reports whether the proxied connections that failed under
// ld are at most a couple, each reset: handshakes that straddled the
// instant the router moved their flow to another node, which has no
// socket for them. Any other failure is l4lb's.
func rehashedOnly(ld ecmpLoad) bool {
	ok := ld.Failed <= 2
	for _, e := range ld.Errors {
		ok = ok && strings.Contains(e, "connection reset by peer")
	}
	return ok
}

// ecmpGuardDrops reads the packet counter of the guard's drop rule that
// matches, from nft's listing.
func ecmpGuardDrops(listing, match string) int {
	for _, line := range strings.Split(listing, "\n") {
		if strings.Contains(line, match) && strings.Contains(line, " drop ") {
			var n int
			if _, err := fmt.Sscanf(line[strings.Index(line, "counter packets"):], "counter packets %d", &n); err == nil {
				return n
			}
		}
	}
	return -1
}

// ecmpTargetsOf reads a "udp" helper's result: the target that answered
// each client port; every port must have had an answer.
func ecmpTargetsOf(t *testing.T, res string) map[int]string {
	t.Helper()
	var byPort map[int]string
	if err := json.Unmarshal([]byte(res), &byPort); err != nil {
		t.Fatalf("bad UDP results: %v: %.200s", err, res)
	}
	for p, tgt := range byPort {
		if tgt == "" {
			t.Fatalf("UDP flow from port %d: no answer", p)
		}
	}
	return byPort
}

// TestECMPHelper is a role of TestECMPOverBGP run inside a namespace; it
// does nothing on its own.
func TestECMPHelper(t *testing.T) {
	role := os.Getenv("L4LB_ECMP_ROLE")
	if role == "" {
		t.Skip("a role of TestECMPOverBGP")
	}
	n, _ := strconv.Atoi(os.Getenv("ECMP_FLOWS"))
	src, _ := strconv.Atoi(os.Getenv("ECMP_SRC"))
	var res any
	switch role {
	case "targets":
		ecmpServeTargets(t)
		return
	case "healthy":
		for _, admin := range strings.Split(os.Getenv("ECMP_ADMIN"), ",") {
			ecmpAllHealthy(t, &http.Client{Timeout: 5 * time.Second}, admin)
		}
	case "connect":
		res = ecmpConnect(t, n, src)
	case "udp":
		port, _ := strconv.Atoi(os.Getenv("ECMP_PORT"))
		res = ecmpUDP(n, src, port)
	case "transfers":
		secs, _ := strconv.Atoi(os.Getenv("ECMP_SECONDS"))
		res = ecmpTransfers(t, n, time.Duration(secs)*time.Second)
	case "load":
		secs, _ := strconv.Atoi(os.Getenv("ECMP_SECONDS"))
		ask := func() error { _, err := ecmpAsk(0, time.Second); return err }
		if os.Getenv("ECMP_PORT") == "9000" { // short DSR connections
			ask = func() error { return ecmpAskDSR(time.Second) }
		}
		// Under way once answers come: the test's fault follows.
		res = ecmpLoadFor(time.Duration(secs)*time.Second, ask, func() { fmt.Println("STARTED {}") })
	}
	b, _ := json.Marshal(res)
	fmt.Printf("\nRESULT %s\n", b)
}

// ecmpServeTargets is one target (ECMP_TARGET): it answers with its own
// address, over TCP (then closes) and UDP on port 8080, over UDP on the
// VIP's port 5300 (logging the client's address to ECMP_LOG), and on port 9000
// (direct server return: the VIP, and its own address for health checks)
// reads to the end and answers with its address and the data's SHA-256,
// until stdin closes.
func ecmpServeTargets(t *testing.T) {
	a := os.Getenv("ECMP_TARGET")
	serveTCP(t, a+":8080", func(c net.Conn) {
		c.Write([]byte(a + "\n"))
		c.Close()
	})
	logf, err := os.OpenFile(os.Getenv("ECMP_LOG"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	serveTCP(t, ":9000", func(c net.Conn) {
		defer c.Close()
		fmt.Fprintln(logf, "tcp", c.RemoteAddr())
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			return
		}
		fmt.Fprintf(c, "%s %x\n", a, h.Sum(nil))
	})
	serveUDP(t, a+":8080", func(net.Addr) []byte { return []byte(a) })
	// Direct server return: the datagram comes to the VIP, and the answer
	// goes from it straight to the client, whose address the log keeps.
	serveUDP(t, ecmpVIP+":5300", func(from net.Addr) []byte {
		fmt.Fprintln(logf, "udp", from)
		return []byte(a)
	})
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
}

// serveTCP accepts connections on addr and hands each to handle, in a
// goroutine of its own, until the process ends.
func serveTCP(t *testing.T, addr string, handle func(net.Conn)) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
}

// serveUDP answers each datagram to addr with what answer gives for its
// sender, until the process ends.
func serveUDP(t *testing.T, addr string, answer func(from net.Addr) []byte) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(answer(from), from)
		}
	}()
}

// ecmpRoute asks a node's admin API which target a TCP flow from the
// client's port gets.
func ecmpRoute(c *http.Client, admin string, port int) (string, error) {
	q := url.Values{"listener": {"web"}, "src": {fmt.Sprintf("%s:%d", ecmpClient, port)}, "dst": {ecmpVIP + ":80"}, "protocol": {"tcp"}}
	req, _ := http.NewRequest(http.MethodGet, admin+"/v1/route?"+q.Encode(), nil)
	req.Header.Set("Authorization", "Bearer "+ecmpToken)
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var r api.Route
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return "", err
	}
	return r.Target, nil
}

// ecmpAllHealthy waits until a node sees every target of both groups
// healthy: until then nodes may differ, as their health checks converge.
func ecmpAllHealthy(t *testing.T, c *http.Client, admin string) {
	deadline := time.Now().Add(20 * time.Second)
	for _, g := range []string{"web", "udp", "dsr", "udpdsr"} {
		for {
			req, _ := http.NewRequest(http.MethodGet, admin+"/v1/target-groups/"+g+"/targets", nil)
			req.Header.Set("Authorization", "Bearer "+ecmpToken)
			var ths []api.TargetHealth
			healthy := 0
			if resp, err := c.Do(req); err == nil {
				json.NewDecoder(resp.Body).Decode(&ths)
				resp.Body.Close()
				for _, th := range ths {
					if th.State == api.StateHealthy {
						healthy++
					}
				}
			}
			if healthy == len(ecmpTargets) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d of %d targets of %s healthy after 20 s: %+v", admin, healthy, len(ecmpTargets), g, ths)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// ecmpAsk connects from the client's port to the VIP and returns the
// target's answer.
func ecmpAsk(port int, timeout time.Duration) (string, error) {
	d := net.Dialer{Timeout: timeout}
	if port != 0 {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(ecmpClient), Port: port}
	}
	c, err := d.Dial("tcp", ecmpVIP+":80")
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// ecmpAskDSR makes one short connection to the DSR listener: 4 KB, and the
// target's checksum of them back.
func ecmpAskDSR(timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", ecmpVIP+":9000", timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	data := make([]byte, 4096)
	if _, err := c.Write(data); err != nil {
		return err
	}
	c.(*net.TCPConn).CloseWrite()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if f := strings.Fields(line); len(f) != 2 || f[1] != fmt.Sprintf("%x", sha256.Sum256(data)) {
		return fmt.Errorf("checksum mismatch: %q", line)
	}
	return nil
}

func ecmpConnect(t *testing.T, flows, src int) any {
	admin := strings.Split(os.Getenv("ECMP_ADMIN"), ",")[0]
	c := &http.Client{Timeout: 5 * time.Second}
	res := struct{ OK, Failed, Mismatch int }{}
	for f := range flows {
		got, err := ecmpAsk(src+f, 2*time.Second)
		if err != nil {
			res.Failed++
			continue
		}
		res.OK++
		want, err := ecmpRoute(c, admin, src+f)
		if err != nil {
			t.Fatal(err)
		}
		if want != got+":8080" {
			res.Mismatch++
		}
	}
	return res
}

// ecmpUDP sends a datagram to the VIP's port from each of flows client
// ports, eight at a time, and returns, per port, the target that answered
// ("" for none in three tries).
func ecmpUDP(flows, src, port int) any {
	out := make(map[int]string, flows)
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan int)
	for range 8 {
		wg.Go(func() {
			buf := make([]byte, 64)
			for f := range next {
				answer := ""
				c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(ecmpClient), Port: src + f}, &net.UDPAddr{IP: net.ParseIP(ecmpVIP), Port: port})
				for try := 0; err == nil && try < 3; try++ {
					c.Write([]byte("who"))
					c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
					if n, err := c.Read(buf); err == nil {
						answer = string(buf[:n])
						break
					}
				}
				if c != nil {
					c.Close()
				}
				mu.Lock()
				out[src+f] = answer
				mu.Unlock()
			}
		})
	}
	for f := range flows {
		next <- f
	}
	close(next)
	wg.Wait()
	return out
}

// ecmpLoadFor opens connections to the VIP, four at a time, for d, and
// counts those that fail (in 1 s) and the span of the failures, from
// the start of the first failed attempt to the end of the last.
func ecmpLoadFor(d time.Duration, ask func() error, underway func()) ecmpLoad {
	var once sync.Once
	var mu sync.Mutex
	var res ecmpLoad
	var first, last time.Time
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 100000 && time.Now().Before(end); n++ {
				began := time.Now()
				err := ask()
				now := time.Now()
				mu.Lock()
				if err != nil {
					res.Failed++
					if len(res.Errors) < 5 {
						res.Errors = append(res.Errors, err.Error())
					}
					if first.IsZero() || began.Before(first) {
						first = began
					}
					last = now
				} else {
					res.OK++
				}
				ok := res.OK
				mu.Unlock()
				if ok >= 20 && underway != nil {
					once.Do(underway)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	if !first.IsZero() {
		res.GapMS = last.Sub(first).Milliseconds()
	}
	return res
}

// ecmpTransferred is what ecmpTransfers reports: how many completed with
// the target's checksum matching, and why the others failed.
type ecmpTransferred struct {
	OK, Failed, Mismatch int
	Errors               []string `json:",omitempty"`
}

// ecmpTransfers streams to the VIP's port 9000 on n connections for d,
// about 0.8 MB/s each, and checks that each target's checksum of what it
// read matches what was sent. Once under way it prints, on a STARTED line,
// how many of the listener's flows each node has taken so far.

func ecmpTransfers(t *testing.T, n int, d time.Duration) any {
	var res ecmpTransferred
	var mu sync.Mutex
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			match, err := ecmpTransfer(i, end)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				res.Failed++
				res.Errors = append(res.Errors, err.Error())
			case !match:
				res.Mismatch++
			default:
				res.OK++
			}
		}()
	}
	// The nodes read the kernel's counters twice a second: wait until
	// they account for every flow (or 5 s pass, and the sum tells).
	var carried []float64
	for wait := time.Now().Add(5 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		carried = carried[:0]
		sum := 0.0
		for _, admin := range strings.Split(os.Getenv("ECMP_ADMIN"), ",") {
			carried = append(carried, ecmpMetric(admin, `l4lb_new_flows_total{listener="bulk"`))
			sum += carried[len(carried)-1]
		}
		if sum >= float64(n) || time.Now().After(wait) {
			break
		}
	}
	b, _ := json.Marshal(carried)
	fmt.Printf("\nSTARTED %s\n", b)
	wg.Wait()
	return res
}

// ecmpTransfer sends pseudo-random data until end, then reads the target's
// checksum of it and says whether it matches.
func ecmpTransfer(seed int, end time.Time) (match bool, err error) {
	c, err := net.DialTimeout("tcp", ecmpVIP+":9000", 2*time.Second)
	if err != nil {
		return false, err
	}
	defer c.Close()
	h := sha256.New()
	buf := make([]byte, 16<<10)
	r := rand.New(rand.NewPCG(uint64(seed), 1))
	sent := 0
	for n := 0; n < 100000 && time.Now().Before(end); n++ {
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(buf); err != nil {
			return false, fmt.Errorf("from port %d, after %d bytes: %w", c.LocalAddr().(*net.TCPAddr).Port, sent, err)
		}
		sent += len(buf)
		h.Write(buf)
		time.Sleep(20 * time.Millisecond)
	}
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return false, fmt.Errorf("from port %d, reading the checksum of %d bytes: %w", c.LocalAddr().(*net.TCPAddr).Port, sent, err)
	}
	f := strings.Fields(line)
	return len(f) == 2 && f[1] == fmt.Sprintf("%x", h.Sum(nil)), nil
}

// ecmpMetric sums the samples of a node's metric whose line starts with
// prefix.
func ecmpMetric(admin, prefix string) float64 {
	req, _ := http.NewRequest(http.MethodGet, admin+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+ecmpToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			f := strings.Fields(sc.Text())
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}
