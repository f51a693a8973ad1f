//go:build integration

package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/netnstest"
)

// Direct server return for IPv6, end to end: a client, an l4lb node and a
// target, each in a namespace of its own, in a line:
//
//	client fd00:18::2 -- fd00:18::1 [node, VIP fd00:18:10::1 on lo] fd00:18:1::1 -- fd00:18:1::11 target (VIP on lo)
//
// The node's kernel paths send the client's packets to the target inside
// an outer IPv6 header: TCP in IPv6 in IPv6, UDP in GUE over IPv6 (UDP to
// port 6080, checksum zero). The target (l4lb dsr-target, on a kernel
// without ip6_tunnel or fou6) takes it off, sees the client's own address,
// and answers from the VIP; the answers pass the node as plain routed
// packets.
const (
	dsr6VIP    = "fd00:18:10::1"
	dsr6Client = "fd00:18::2"
	dsr6Target = "fd00:18:1::11"
)

func TestDSRIPv6InNamespaces(t *testing.T) {
	ipBin := netnstest.IP(t)
	id := os.Getpid() % 100000
	client, node, target := fmt.Sprintf("l4d6c%d", id), fmt.Sprintf("l4d6n%d", id), fmt.Sprintf("l4d6t%d", id)
	in := func(ns string, args ...string) {
		t.Helper()
		if out, err := exec.Command(ipBin, append([]string{"netns", "exec", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %v\n%s", ns, args, err, out)
		}
	}
	for _, ns := range []string{client, node, target} {
		if out, err := exec.Command(ipBin, "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("netns add %s: %v\n%s", ns, err, out)
		}
		t.Cleanup(func() { exec.Command(ipBin, "netns", "del", ns).Run() })
		in(ns, "ip", "link", "set", "lo", "up")
	}
	link := func(a, aif, b, bif string) {
		t.Helper()
		if out, err := exec.Command(ipBin, "link", "add", aif, "netns", a, "type", "veth", "peer", "name", bif, "netns", b).CombinedOutput(); err != nil {
			t.Fatalf("veth: %v\n%s", err, out)
		}
	}
	link(client, "c0", node, "n0")
	link(node, "n1", target, "t0")
	// The client's link is narrower, so that its packets still fit with
	// the outer header on the node's other link.
	in(client, "ip", "link", "set", "c0", "mtu", "1400")
	in(node, "ip", "link", "set", "n0", "mtu", "1400")
	in(client, "ip", "-6", "addr", "add", dsr6Client+"/64", "dev", "c0", "nodad")
	in(client, "ip", "link", "set", "c0", "up")
	in(client, "ip", "-6", "route", "add", "default", "via", "fd00:18::1")
	in(node, "ip", "-6", "addr", "add", "fd00:18::1/64", "dev", "n0", "nodad")
	in(node, "ip", "-6", "addr", "add", "fd00:18:1::1/64", "dev", "n1", "nodad")
	in(node, "ip", "-6", "addr", "add", dsr6VIP+"/128", "dev", "lo")
	in(node, "ip", "link", "set", "n0", "up")
	in(node, "ip", "link", "set", "n1", "up")
	in(node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	in(target, "ip", "-6", "addr", "add", dsr6Target+"/64", "dev", "t0", "nodad")
	in(target, "ip", "link", "set", "t0", "up")
	in(target, "ip", "-6", "route", "add", "default", "via", "fd00:18:1::1")

	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "dsr6-test")
	dsr6Decap(t, ipBin, target, bin, "t0", dsr6VIP)

	// The target: on the VIP, TCP and UDP port 7000 answer with the peer's
	// address; port 8080 (its own address) passes health checks.
	nsRole(t, ipBin, target, "TestDSRIPv6Helper", "L4LB_DSR6_ROLE=target").expect(t, "ready")

	dir := t.TempDir()
	hc := `health_check: {protocol: TCP, port: "8080", interval: 1s, healthy_threshold: 2, unhealthy_threshold: 2}`
	cfg := fmt.Sprintf(`admin: {listen: "127.0.0.1:9900"}
load_balancer: {tcp_fast_path: true, tcp_fast_path_interfaces: [n0], udp_fast_path: true, udp_fast_path_interfaces: [n0]}
listeners:
  - {name: tcp6, port: 7000, bind: ["%[1]s"], target_group: tcp6}
  - {name: udp6, protocol: UDP, port: 7000, bind: ["%[1]s"], target_group: udp6}
target_groups:
  - {name: tcp6, forwarding: dsr, targets: [{address: "[%[2]s]:7000"}], %[3]s}
  - {name: udp6, protocol: UDP, forwarding: dsr, encapsulation: gue, gue_port: 6080, targets: [{address: "[%[2]s]:7000"}], %[3]s}
`, dsr6VIP, dsr6Target, hc)
	os.WriteFile(filepath.Join(dir, "l4lb.yaml"), []byte(cfg), 0o644)
	logPath := filepath.Join(dir, "l4lb.log")
	logf, _ := os.Create(logPath)
	srv := exec.Command(ipBin, "netns", "exec", node, bin, "serve", "--config", filepath.Join(dir, "l4lb.yaml"), "--log-level", "info")
	srv.Stdout, srv.Stderr = logf, logf
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	t.Cleanup(func() {
		srv.Process.Kill()
		srv.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("l4lb's log (the end):\n%s", tail(b, 6<<10))
		}
	})
	// Once both listeners are on the kernel path (until the target is
	// healthy, fail-open sends to it anyway), the client asks; it retries
	// each flow for a while.
	for start := time.Now(); ; time.Sleep(50 * time.Millisecond) {
		b, _ := os.ReadFile(logPath)
		if strings.Count(string(b), "listener forwarded in the kernel") == 2 {
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("l4lb did not put both listeners on the kernel path:\n%s", tail(b, 4<<10))
		}
	}
	cl := exec.Command(ipBin, "netns", "exec", client, os.Args[0], "-test.run=^TestDSRIPv6Helper$")
	cl.Env = append(os.Environ(), "L4LB_DSR6_ROLE=client")
	res, err := cl.CombinedOutput()
	if err != nil {
		t.Fatalf("client: %v\n%s", err, res)
	}
	got := string(res)
	if n := strings.Count(got, "udp ["+dsr6Client+"]:"); n != 20 {
		t.Errorf("the target saw the client's own address in %d of 20 UDP flows, answering from the VIP:\n%s", n, got)
	}
	if n := strings.Count(got, "tcp ["+dsr6Client+"]:"); n != 20 {
		t.Errorf("the target saw the client's own address in %d of 20 TCP connections:\n%s", n, got)
	}
	t.Logf("IPv6 by direct server return: the target saw the client's own address on %d of 20 UDP flows and %d of 20 TCP connections",
		strings.Count(got, "udp ["+dsr6Client+"]:"), strings.Count(got, "tcp ["+dsr6Client+"]:"))
	b, _ := os.ReadFile(logPath)
	for _, want := range []string{`"listener":"tcp6","encapsulation_source":"fd00:18:1::1","encapsulation":"ipv6 in ipv6"`, `"listener":"udp6","encapsulation_source":"fd00:18:1::1","encapsulation":"gue over ipv6, port 6080"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("l4lb's log lacks %s: the listener is not on the kernel path by DSR", want)
		}
	}
}

// dsr6Decap takes the node's IPv6-in-IPv6 and GUE-over-IPv6 packets for vip
// off in namespace ns: with deploy/dsr-target.sh where the kernel has
// ip6_tunnel and fou6, and with l4lb dsr-target on interface dev where it
// has not (the script's exit 3).
func dsr6Decap(t *testing.T, ipBin, ns, bin, dev, vip string) {
	t.Helper()
	script := exec.Command(ipBin, "netns", "exec", ns, "sh", "../../deploy/dsr-target.sh", "--gue-port", "6080", vip)
	out, err := script.CombinedOutput()
	if code := script.ProcessState.ExitCode(); code == 3 {
		dec := exec.Command(ipBin, "netns", "exec", ns, bin, "dsr-target", "--interface", dev, "--vip", vip, "--gue-port", "6080")
		dec.Stdout, dec.Stderr = io.Discard, os.Stderr
		if err := dec.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dec.Process.Kill(); dec.Wait() })
	} else if err != nil {
		t.Fatalf("deploy/dsr-target.sh: %v\n%s", err, out)
	}
}

// TestDSRIPv6Helper is a role of TestDSRIPv6InNamespaces run inside a
// namespace; it does nothing on its own.
func TestDSRIPv6Helper(t *testing.T) {
	switch os.Getenv("L4LB_DSR6_ROLE") {
	case "target":
		dsr6Serve(t)
	case "client":
		dsr6Ask(t)
	default:
		t.Skip("a role of TestDSRIPv6InNamespaces")
	}
}

func dsr6Serve(t *testing.T) {
	vip := net.JoinHostPort(dsr6VIP, "7000")
	peer := func(c net.Conn) {
		fmt.Fprintf(c, "tcp %s\n", c.RemoteAddr())
		c.Close()
	}
	serveTCP(t, vip, peer)
	serveTCP(t, net.JoinHostPort(dsr6Target, "8080"), peer)
	serveUDP(t, vip, func(from net.Addr) []byte { return []byte("udp " + from.String() + "\n") })
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
}

// dsr6Ask opens 20 UDP flows and 20 TCP connections to the VIP, each
// retried for up to 15 s while l4lb starts, and prints the answers.
func dsr6Ask(t *testing.T) {
	vip := net.JoinHostPort(dsr6VIP, "7000")
	deadline := time.Now().Add(15 * time.Second)
	buf := make([]byte, 256)
	for range 20 {
		for {
			answer := ""
			if c, err := net.Dial("udp", vip); err == nil {
				c.Write([]byte("who"))
				c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				if n, err := c.Read(buf); err == nil {
					answer = string(buf[:n])
				}
				c.Close()
			}
			if answer != "" || time.Now().After(deadline) {
				fmt.Print(answer)
				break
			}
		}
		for {
			answer := ""
			if c, err := net.DialTimeout("tcp", vip, 500*time.Millisecond); err == nil {
				c.SetDeadline(time.Now().Add(2 * time.Second))
				answer, _ = bufio.NewReader(c).ReadString('\n')
				c.Close()
			}
			if answer != "" || time.Now().After(deadline) {
				fmt.Print(answer)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}
