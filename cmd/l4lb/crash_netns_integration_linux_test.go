//go:build integration

package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/netnstest"
	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
)

// The kernel paths outlive a crash of l4lb over direct server return, in
// namespaces:
//
//	client fd00:19::2 -- fd00:19::1 [node, VIP fd00:19:10::1] fd00:19:1::1 -- fd00:19:1::11 t1
//	                                                          fd00:19:2::1 -- fd00:19:2::11 t2
//
// l4lb runs in the node's network namespace but in the host's mount
// namespace (nsenter --net), so its pins live in the host's bpffs as they
// would on a node that runs l4lb under systemd: ip netns exec would give it
// a mount namespace of its own, whose bpffs dies with it.
const (
	crashVIP = "fd00:19:10::1"
	crashT1  = "fd00:19:1::11"
	crashT2  = "fd00:19:2::11"
)

// TestKernelPathOutlivesCrashInNamespaces kills l4lb with SIGKILL while TCP
// streams and UDP flows run on the kernel paths, over DSR (port 7000: IPv6
// in IPv6, GUE over IPv6) and over NAT (port 7100: the node rewrites the
// addresses both ways). The streams' checksummed transfers complete, UDP
// flows keep their target, new connections and flows are served while l4lb
// is down, and a restarted l4lb adopts the pinned links (no second set) and
// sends new connections to a target registered after the restart.
func TestKernelPathOutlivesCrashInNamespaces(t *testing.T) {
	needRoot(t, "the kernel paths")
	ipBin := netnstest.IP(t)
	nsenter := netnstest.Need(t, "nsenter", "util-linux")
	client, node := netnstest.New(t, "crc"), netnstest.New(t, "crn", crashVIP+"/128")
	t1, t2 := netnstest.New(t, "crt1"), netnstest.New(t, "crt2")
	in := func(ns string, args ...string) {
		t.Helper()
		if out, err := exec.Command(ipBin, append([]string{"netns", "exec", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %v\n%s", ns, args, err, out)
		}
	}
	// link joins namespace a (interface aif, address aaddr) to b; b's end
	// is t0 when b is a target.
	link := func(a, aif, aaddr, b, bif, baddr string) {
		t.Helper()
		netnstest.Run(t, "link", "add", aif, "netns", a, "type", "veth", "peer", "name", bif, "netns", b)
		in(a, "ip", "-6", "addr", "add", aaddr+"/64", "dev", aif, "nodad")
		in(b, "ip", "-6", "addr", "add", baddr+"/64", "dev", bif, "nodad")
		in(a, "ip", "link", "set", aif, "up")
		in(b, "ip", "link", "set", bif, "up")
	}
	link(node, "n0", "fd00:19::1", client, "c0", "fd00:19::2")
	link(node, "n1", "fd00:19:1::1", t1, "t0", crashT1)
	link(node, "n2", "fd00:19:2::1", t2, "t0", crashT2)
	// The client's link is narrower, so its packets fit with the outer
	// header on the targets' links.
	in(client, "ip", "link", "set", "c0", "mtu", "1400")
	in(node, "ip", "link", "set", "n0", "mtu", "1400")
	in(client, "ip", "-6", "route", "add", "default", "via", "fd00:19::1")
	in(t1, "ip", "-6", "route", "add", "default", "via", "fd00:19:1::1")
	in(t2, "ip", "-6", "route", "add", "default", "via", "fd00:19:2::1")
	in(node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")

	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "crash-dsr-test")
	for _, tg := range []struct{ ns, name, addr string }{{t1, "t1", crashT1}, {t2, "t2", crashT2}} {
		dsr6Decap(t, ipBin, tg.ns, bin, "t0", crashVIP)
		r := crashRole(t, ipBin, tg.ns, "target", "L4LB_CRASH_NAME="+tg.name, "L4LB_CRASH_ADDR="+tg.addr)
		r.expect(t, "ready")
	}

	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "crash-dsr.yaml")
	hc := `health_check: {protocol: TCP, port: "8080", interval: 500ms, timeout: 400ms, healthy_threshold: 2, unhealthy_threshold: 2}`
	os.WriteFile(cfgPath, fmt.Appendf(nil, `admin: {listen: "127.0.0.1:9900"}
load_balancer: {tcp_fast_path: true, tcp_fast_path_interfaces: [n0], udp_fast_path: true, udp_fast_path_interfaces: [n0]}
listeners:
  - {name: tcp6, port: 7000, bind: ["%[1]s"], target_group: tcp6}
  - {name: udp6, protocol: UDP, port: 7000, bind: ["%[1]s"], target_group: udp6, udp_idle_timeout: 60s}
  - {name: nat6, port: 7100, bind: ["%[1]s"], target_group: nat6}
  - {name: natudp6, protocol: UDP, port: 7100, bind: ["%[1]s"], target_group: natudp6, udp_idle_timeout: 60s}
target_groups:
  - {name: tcp6, forwarding: dsr, targets: [{address: "[%[2]s]:7000"}], %[3]s}
  - {name: udp6, protocol: UDP, forwarding: dsr, encapsulation: gue, gue_port: 6080, targets: [{address: "[%[2]s]:7000"}], %[3]s}
  - {name: nat6, targets: [{address: "[%[2]s]:7100"}], attributes: {preserve_client_ip.enabled: "true"}, %[3]s}
  - {name: natudp6, protocol: UDP, targets: [{address: "[%[2]s]:7100"}], attributes: {preserve_client_ip.enabled: "true"}, %[3]s}
`, crashVIP, crashT1, hc), 0o644)
	pins := filepath.Join(config.DefaultBPFFS, instanceName(cfgPath, &config.Config{}))
	var srv *exec.Cmd
	var exited chan struct{}
	start := func(run int) string {
		t.Helper()
		logPath := filepath.Join(dir, fmt.Sprintf("l4lb-%d.log", run))
		logf, _ := os.Create(logPath)
		srv = exec.Command(nsenter, "--net=/run/netns/"+node, bin, "serve", "--config", cfgPath, "--log-level", "info")
		srv.Stdout, srv.Stderr = logf, logf
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		logf.Close()
		cmd, done := srv, make(chan struct{})
		exited = done
		go func() { cmd.Wait(); close(done) }()
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-done
			if t.Failed() {
				b, _ := os.ReadFile(logPath)
				t.Logf("l4lb's log, run %d (the end):\n%s", run, tail(b, 6<<10))
			}
		})
		return logPath
	}
	waitLog := func(path string, want ...string) {
		t.Helper()
		waitUntil(t, "l4lb's log to say "+strings.Join(want, "; "), func() bool {
			b, _ := os.ReadFile(path)
			for _, w := range want {
				if !strings.Contains(string(b), w) {
					return false
				}
			}
			return true
		})
	}
	t.Cleanup(func() { exec.Command(bin, "kernel", "detach", "--force", filepath.Base(pins)).Run() })
	log1 := start(1)
	waitLog(log1, "TCP fast path pinned", "UDP fast path pinned", `"listener":"tcp6","encapsulation_source"`, `"listener":"udp6","encapsulation_source"`,
		`forwarded in the kernel","listener":"nat6"`, `forwarded in the kernel","listener":"natudp6"`)
	links := map[string]map[string]uint32{"tcp": pinnedLinkIDs(t, filepath.Join(pins, "tcp")), "udp": pinnedLinkIDs(t, filepath.Join(pins, "udp"))}

	cl := crashRole(t, ipBin, client, "client")
	cl.expect(t, "ready")

	pid := srv.Process.Pid
	syscall.Kill(pid, syscall.SIGKILL)
	<-exited
	killed := time.Now()
	if out, err := exec.Command(bin, "kernel", "status").CombinedOutput(); err != nil || !strings.Contains(string(out), fmt.Sprintf("%d (gone: orphan", pid)) {
		t.Fatalf("l4lb kernel status while l4lb is down: %v\n%s", err, out)
	}
	cl.send("down")
	cl.expect(t, "down new_tcp=40/40 new_udp=40/40 udp_same=20/20")

	log2 := start(2)
	// "l4lb started" comes once the admin API, which the registration below
	// uses, is up too.
	waitLog(log2, "TCP fast path: adopted the flows a previous process pinned", "UDP fast path: adopted the flows a previous process pinned", "l4lb started")
	for proto, before := range links {
		if after := pinnedLinkIDs(t, filepath.Join(pins, proto)); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Fatalf("%s: links %v after the restart, %v before: a second set was attached", proto, after, before)
		}
	}
	for group, port := range map[string]string{"tcp6": "7000", "nat6": "7100"} {
		reg := exec.Command(ipBin, "netns", "exec", node, bin, "targets", "register", "--admin", "127.0.0.1:9900", "--target-group", group, "--target", "["+crashT2+"]:"+port)
		if out, err := reg.CombinedOutput(); err != nil {
			t.Fatalf("l4lb targets register: %v\n%s", err, out)
		}
	}
	cl.send("up")
	up := cl.expect(t, "up ")
	// The node lists the flows it carries in the kernel, each with its path,
	// the streams that outlived the crash among them.
	out, err := exec.Command(ipBin, "netns", "exec", node, bin, "flows", "--admin", "127.0.0.1:9900", "--limit", "1000", "-o", "json").CombinedOutput()
	var flows []api.Flow
	if err != nil || json.Unmarshal(out, &flows) != nil {
		t.Fatalf("l4lb flows: %v\n%s", err, out)
	}
	paths := map[string]int{}
	for _, f := range flows {
		paths[f.Listener+" "+f.Path]++
	}
	for _, want := range []string{"tcp6 dsr", "nat6 kernel", "udp6 dsr", "natudp6 kernel"} {
		if paths[want] == 0 {
			t.Fatalf("l4lb flows lists no flow of listener %s: %v", want, paths)
		}
	}
	cl.send("finish")
	done := cl.expect(t, "streams=16 broken=0")
	t.Logf("SIGKILL with kernel flows over DSR and NAT: down %v; %s; %s; l4lb flows after the restart, by listener and path: %v", time.Since(killed).Round(10*time.Millisecond), up, done, paths)

	srv.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(40 * time.Second):
		t.Fatal("l4lb did not stop on SIGTERM")
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Fatalf("pins left after a clean stop: %v", err)
	}
}

// crashPeer is a role of the test run in a namespace, driven by lines on
// its standard input and answering with lines on its standard output.
type crashPeer struct {
	in  io.WriteCloser
	out *bufio.Reader
}

func crashRole(t *testing.T, ipBin, ns, role string, env ...string) *crashPeer {
	t.Helper()
	return nsRole(t, ipBin, ns, "TestKernelPathOutlivesCrashInNamespacesHelper", append([]string{"L4LB_CRASH_ROLE=" + role}, env...)...)
}

// nsRole runs this test binary's test named helper in namespace ns, with
// env, until t ends; it talks over the helper's standard input and output.
func nsRole(t *testing.T, ipBin, ns, helper string, env ...string) *crashPeer {
	t.Helper()
	cmd := exec.Command(ipBin, "netns", "exec", ns, os.Args[0], "-test.run=^"+helper+"$")
	cmd.Env = append(os.Environ(), env...)
	out, _ := cmd.StdoutPipe()
	in, _ := cmd.StdinPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); cmd.Process.Kill(); cmd.Wait() })
	return &crashPeer{in: in, out: bufio.NewReader(out)}
}

func (p *crashPeer) send(line string) { fmt.Fprintln(p.in, line) }

// expect reads the role's next line, which must start with prefix.
func (p *crashPeer) expect(t *testing.T, prefix string) string {
	t.Helper()
	line, err := p.out.ReadString('\n')
	line = strings.TrimSpace(line)
	if err != nil || !strings.HasPrefix(line, prefix) {
		t.Fatalf("wanted %q, got %q (%v)", prefix, line, err)
	}
	return line
}

// TestKernelPathOutlivesCrashInNamespacesHelper is a role of
// TestKernelPathOutlivesCrashInNamespaces run inside a namespace; it does
// nothing on its own.
func TestKernelPathOutlivesCrashInNamespacesHelper(t *testing.T) {
	switch os.Getenv("L4LB_CRASH_ROLE") {
	case "target":
		crashServe(t)
	case "client":
		crashClient(t)
	default:
		t.Skip("a role of TestKernelPathOutlivesCrashInNamespaces")
	}
}

// crashServe is a target: TCP port 7000 on the VIP (DSR) and 7100 on its
// own address (NAT) say its name on a line and then echo, UDP on the same
// answers with its name; TCP port 8080 on its own address passes health
// checks.
func crashServe(t *testing.T) {
	name, own := os.Getenv("L4LB_CRASH_NAME"), os.Getenv("L4LB_CRASH_ADDR")
	for _, at := range []string{net.JoinHostPort(crashVIP, "7000"), net.JoinHostPort(own, "7100")} {
		serveTCP(t, at, func(c net.Conn) {
			defer c.Close()
			fmt.Fprintf(c, "tcp %s\n", name)
			io.Copy(c, c)
		})
		serveUDP(t, at, func(net.Addr) []byte { return []byte("udp " + name) })
	}
	serveTCP(t, net.JoinHostPort(own, "8080"), func(c net.Conn) { c.Close() })
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
}

// crashClient opens 16 checksummed streams and 20 UDP flows, half over
// DSR (port 7000) and half over NAT (port 7100), then follows the test's
// commands: "down" (l4lb was killed), "up" (it was restarted and t2
// registered in both TCP groups), "finish" (end the streams and check them).
func crashClient(t *testing.T) {
	vips := []string{net.JoinHostPort(crashVIP, "7000"), net.JoinHostPort(crashVIP, "7100")}
	fail := func(format string, args ...any) {
		fmt.Printf("error "+format+"\n", args...)
		os.Exit(1)
	}
	cmds := bufio.NewScanner(os.Stdin)
	await := func(cmd string) {
		if !cmds.Scan() || cmds.Text() != cmd {
			fail("wanted the command %q, got %q", cmd, cmds.Text())
		}
	}
	// hello connects and reads the target's name.
	hello := func(vip string) (net.Conn, *bufio.Reader, string, error) {
		c, err := net.DialTimeout("tcp", vip, 2*time.Second)
		if err != nil {
			return nil, nil, "", err
		}
		c.SetDeadline(time.Now().Add(3 * time.Second))
		r := bufio.NewReader(c)
		line, err := r.ReadString('\n')
		if err != nil {
			c.Close()
			return nil, nil, "", err
		}
		c.SetDeadline(time.Time{})
		return c, r, strings.TrimPrefix(strings.TrimSpace(line), "tcp "), nil
	}
	ask := func(c net.Conn) (string, error) {
		buf := make([]byte, 64)
		for range 3 {
			c.Write([]byte("who"))
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if n, err := c.Read(buf); err == nil {
				return string(buf[:n]), nil
			}
		}
		return "", fmt.Errorf("no answer from %s", c.RemoteAddr())
	}

	var stop atomic.Bool
	var wg sync.WaitGroup
	var broken atomic.Int64
	var sums [][2]hash.Hash // each stream's bytes sent and echoed
	for i := range 16 {
		c, r, _, err := hello(vips[i%2])
		if err != nil {
			fail("stream %d: %v", i, err)
		}
		sent, got := sha256.New(), sha256.New()
		sums = append(sums, [2]hash.Hash{sent, got})
		wg.Go(func() {
			buf := make([]byte, 16<<10)
			for n := 0; n < 600 && !stop.Load(); n++ { // 60 s at most
				rand.Read(buf)
				sent.Write(buf)
				if _, err := c.Write(buf); err != nil {
					broken.Add(1)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			c.(*net.TCPConn).CloseWrite()
		})
		wg.Go(func() {
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(90 * time.Second))
			io.Copy(got, r)
		})
	}
	var udp []net.Conn
	var names []string
	for i := range 20 {
		c, err := net.Dial("udp", vips[i%2])
		if err != nil {
			fail("udp %d: %v", i, err)
		}
		name, err := ask(c)
		if err != nil {
			fail("udp %d: %v", i, err)
		}
		udp, names = append(udp, c), append(names, name)
	}
	same := func() int {
		n := 0
		for i, c := range udp {
			if name, err := ask(c); err == nil && name == names[i] {
				n++
			}
		}
		return n
	}
	fmt.Println("ready")

	await("down")
	newTCP, newUDP := 0, 0
	for i := range 40 {
		if c, _, _, err := hello(vips[i%2]); err == nil {
			newTCP++
			c.Close()
		}
		if c, err := net.Dial("udp", vips[i%2]); err == nil {
			if _, err := ask(c); err == nil {
				newUDP++
			}
			c.Close()
		}
	}
	fmt.Printf("down new_tcp=%d/40 new_udp=%d/40 udp_same=%d/20\n", newTCP, newUDP, same())

	await("up")
	// t2 turns healthy within a few checks; new connections then reach it,
	// over DSR and over NAT.
	var reached []string
	for _, vip := range vips {
		opened, t2 := 0, false
		for deadline := time.Now().Add(30 * time.Second); !t2 && time.Now().Before(deadline); {
			c, _, name, err := hello(vip)
			if err != nil {
				fail("a new connection to %s after the restart: %v", vip, err)
			}
			c.Close()
			opened++
			t2 = name == "t2"
			if !t2 {
				time.Sleep(20 * time.Millisecond)
			}
		}
		if !t2 {
			fail("none of %d new connections to %s reached t2, registered after the restart", opened, vip)
		}
		reached = append(reached, fmt.Sprintf("%s after %d", vip, opened))
	}
	if n := same(); n != 20 {
		fail("%d of 20 UDP flows kept their target across the restart", n)
	}
	fmt.Printf("up t2 reached: %s; udp_same=20/20\n", strings.Join(reached, ", "))

	await("finish")
	stop.Store(true)
	wg.Wait()
	for _, s := range sums {
		if !bytes.Equal(s[0].Sum(nil), s[1].Sum(nil)) {
			broken.Add(1)
		}
	}
	fmt.Printf("streams=16 broken=%d\n", broken.Load())
}
