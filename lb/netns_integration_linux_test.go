//go:build integration

package lb

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// The transparent-mode test runs three hosts in network namespaces made for
// it, joined by veth pairs, with addresses from 198.18.0.0/15:
//
//	client 198.18.0.2 --- 198.18.0.1 [l4lb] 198.18.1.1 --- 198.18.1.2 target
//
// The l4lb and the target are this test binary again, started inside their
// namespace in a helper role (TestNetnsHelper).
const (
	nsClientIP = "198.18.0.2"
	nsLBFront  = "198.18.0.1"
	nsLBBack   = "198.18.1.1"
	nsTargetIP = "198.18.1.2"
	// IPv6: unique-local addresses, inside the namespaces only.
	nsClientIP6 = "fd00:18::2"
	nsLBFront6  = "fd00:18::1"
	nsLBBack6   = "fd00:18:1::1"
	nsTargetIP6 = "fd00:18:1::2"
)

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// hosts are the three namespaces of a namespace test, joined by veth pairs
// and routed through the l4lb namespace.
type hosts struct {
	ip                 string // the ip binary
	client, lb, target string // namespace names
	lbFront, lbBack    string // l4lb's interfaces towards client and target
}

// in runs a command inside namespace ns.
func (h *hosts) in(t *testing.T, ns string, args ...string) {
	t.Helper()
	run(t, append([]string{h.ip, "netns", "exec", ns}, args...)...)
}

// helper starts this test binary in namespace ns in a TestNetnsHelper role
// and waits for its "ready"; closing the returned writer ends it.
func (h *hosts) helper(t *testing.T, ns, role string, env ...string) (*bufio.Reader, io.Closer) {
	t.Helper()
	cmd := exec.Command(h.ip, "netns", "exec", ns, os.Args[0], "-test.run=^TestNetnsHelper$")
	cmd.Env = append(os.Environ(), append(env, "L4LB_NETNS_ROLE="+role)...)
	cmd.Stderr = os.Stderr
	out, _ := cmd.StdoutPipe()
	stdin, _ := cmd.StdinPipe() // closing it ends the helper
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	r := bufio.NewReader(out)
	line, err := r.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("%s helper: %q %v", role, line, err)
	}
	return r, stdin
}

// runClient runs the client role in its namespace and returns its output.
func (h *hosts) runClient(t *testing.T, role string) string {
	t.Helper()
	cmd := exec.Command(h.ip, "netns", "exec", h.client, os.Args[0], "-test.run=^TestNetnsHelper$")
	cmd.Env = append(os.Environ(), "L4LB_NETNS_ROLE="+role)
	res, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client: %v\n%s", err, res)
	}
	return string(res)
}

// ipBinary is the ip binary for a namespace test. Outside CI the test is
// skipped when this is not root or iproute2 is missing; in CI either fails
// it, so a lost check cannot pass as a skip.
func ipBinary(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("network namespaces need root, and CI runs as root")
		}
		t.Skip("network namespaces need root")
	}
	ipBin, err := exec.LookPath("ip")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("ip (iproute2) is not installed; make deps installs it")
		}
		t.Skip("ip (iproute2) is not installed")
	}
	return ipBin
}

// newHosts makes the three namespaces (removed when the test ends), or skips
// when this is not root.
func newHosts(t *testing.T, tag string) *hosts {
	t.Helper()
	ipBin := ipBinary(t)
	id := os.Getpid() % 100000
	h := &hosts{ip: ipBin, client: fmt.Sprintf("l4c%s%d", tag, id), lb: fmt.Sprintf("l4l%s%d", tag, id), target: fmt.Sprintf("l4t%s%d", tag, id)}
	for _, ns := range []string{h.client, h.lb, h.target} {
		run(t, ipBin, "netns", "add", ns)
		t.Cleanup(func() { exec.Command(ipBin, "netns", "del", ns).Run() })
	}
	vc, vt := fmt.Sprintf("c%s%d", tag, id), fmt.Sprintf("t%s%d", tag, id)
	h.lbFront, h.lbBack = fmt.Sprintf("lc%s%d", tag, id), fmt.Sprintf("lt%s%d", tag, id)
	run(t, ipBin, "link", "add", vc, "netns", h.client, "type", "veth", "peer", "name", h.lbFront, "netns", h.lb)
	run(t, ipBin, "link", "add", vt, "netns", h.target, "type", "veth", "peer", "name", h.lbBack, "netns", h.lb)
	h.in(t, h.client, "ip", "addr", "add", nsClientIP+"/24", "dev", vc)
	h.in(t, h.client, "ip", "link", "set", vc, "up")
	h.in(t, h.client, "ip", "link", "set", "lo", "up")
	h.in(t, h.client, "ip", "route", "add", "default", "via", nsLBFront)
	h.in(t, h.client, "ip", "-6", "addr", "add", nsClientIP6+"/64", "dev", vc, "nodad")
	h.in(t, h.client, "ip", "-6", "route", "add", "default", "via", nsLBFront6)
	h.in(t, h.target, "ip", "addr", "add", nsTargetIP+"/24", "dev", vt)
	h.in(t, h.target, "ip", "link", "set", vt, "up")
	h.in(t, h.target, "ip", "link", "set", "lo", "up")
	h.in(t, h.target, "ip", "route", "add", "default", "via", nsLBBack) // answers to clients go back through l4lb
	h.in(t, h.target, "ip", "-6", "addr", "add", nsTargetIP6+"/64", "dev", vt, "nodad")
	h.in(t, h.target, "ip", "-6", "route", "add", "default", "via", nsLBBack6)
	h.in(t, h.lb, "ip", "addr", "add", nsLBFront+"/24", "dev", h.lbFront)
	h.in(t, h.lb, "ip", "addr", "add", nsLBBack+"/24", "dev", h.lbBack)
	h.in(t, h.lb, "ip", "-6", "addr", "add", nsLBFront6+"/64", "dev", h.lbFront, "nodad")
	h.in(t, h.lb, "ip", "-6", "addr", "add", nsLBBack6+"/64", "dev", h.lbBack, "nodad")
	h.in(t, h.lb, "ip", "link", "set", h.lbFront, "up")
	h.in(t, h.lb, "ip", "link", "set", h.lbBack, "up")
	h.in(t, h.lb, "ip", "link", "set", "lo", "up")
	return h
}

func TestTransparentModeInNamespaces(t *testing.T) {
	h := newHosts(t, "")
	// deploy/transparent.sh's nft-free variant: what arrives from the
	// targets is for this host's (transparent) sockets.
	h.in(t, h.lb, "ip", "rule", "add", "iif", h.lbBack, "lookup", "100")
	h.in(t, h.lb, "ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
	h.in(t, h.lb, "ip", "-6", "rule", "add", "iif", h.lbBack, "lookup", "100")
	h.in(t, h.lb, "ip", "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100")
	h.helper(t, h.target, "target")
	lbOut, lbStop := h.helper(t, h.lb, "serve")

	// The client runs in its namespace too: this binary again.
	got := h.runClient(t, "client")
	for _, want := range []string{"tcp " + nsClientIP + ":", "udp " + nsClientIP + ":",
		"tcp [" + nsClientIP6 + "]:", "udp [" + nsClientIP6 + "]:",
		// Two flows from the same client address and port, through two
		// listeners, to one target: the first keeps the port, the second
		// gets another port of the client's IP.
		"collision tcp " + nsClientIP + ":5000", "collision tcp " + nsClientIP + ":"} {
		if !strings.Contains(got, want) {
			t.Errorf("target did not see %q in:\n%s", want, got)
		}
	}
	if strings.Count(got, "collision tcp "+nsClientIP+":5000") != 1 {
		t.Errorf("want exactly one of the colliding flows on port 5000:\n%s", got)
	}
	lbStop.Close()
	line, _ := lbOut.ReadString('\n')
	if strings.TrimSpace(line) != "port_allocation_errors 1" {
		t.Errorf("l4lb reported %q, want one port allocation error counted", line)
	}
}

// The kernel fast path forwarding to a target on another host: the client's
// datagrams are rewritten on l4lb's client-side ingress and routed on, the
// target's replies come back routed through l4lb and are rewritten on its
// client-side egress. The target sees the client's own address, the client
// gets answers from the listener address (its socket is connected to it),
// and no datagram goes through l4lb's sockets.
func TestKernelPathInNamespaces(t *testing.T) {
	h := newHosts(t, "k")
	h.in(t, h.lb, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward; echo 1 > /proc/sys/net/ipv6/conf/all/forwarding")
	h.helper(t, h.target, "target")
	lbOut, lbStop := h.helper(t, h.lb, "serve-kernel", "L4LB_FASTPATH_IFACES="+h.lbFront+","+h.lbBack)
	got := h.runClient(t, "client-kernel")
	for _, client := range []string{nsClientIP + ":", "[" + nsClientIP6 + "]:"} {
		if n := strings.Count(got, "udp "+client); n != 20 {
			t.Errorf("target saw the client's own address %s in %d of 20 answers:\n%s", client, n, got)
		}
	}
	lbStop.Close()
	line, _ := lbOut.ReadString('\n')
	if strings.TrimSpace(line) != "kernel_flows 40 user_space_flows 0" {
		t.Errorf("l4lb reported %q, want 40 flows in the kernel and none through its sockets", line)
	}
}

// TestNetnsHelper is a role of the namespace test, not a test by itself.
func TestNetnsHelper(t *testing.T) {
	role := os.Getenv("L4LB_NETNS_ROLE")
	if role == "" {
		t.Skip("helper of TestTransparentModeInNamespaces")
	}
	switch role {
	case "target":
		netnsTarget()
	case "serve":
		netnsServe()
	case "client":
		netnsClient()
	case "serve-kernel":
		netnsServeKernel()
	case "ports":
		netnsPorts(t)
	case "client-kernel":
		for range 20 { // 20 flows per family, each from its own port
			askUDP(net.JoinHostPort(nsLBFront, "8082"))
			askUDP(net.JoinHostPort(nsLBFront6, "8082"))
		}
	}
	os.Exit(0)
}

// netnsTarget answers each TCP connection and UDP datagram with the peer
// address it sees.
func netnsTarget() {
	for _, ip := range []string{nsTargetIP, nsTargetIP6} {
		serveTarget(net.JoinHostPort(ip, "9000"))
	}
	fmt.Println("ready")
	waitForParent()
}

func serveTarget(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	uc, err := net.ListenPacket("udp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "tcp %s\n", c.RemoteAddr())
			go func() { io.Copy(io.Discard, c); c.Close() }() // held until the client closes
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := uc.ReadFrom(buf)
			if err != nil {
				return
			}
			uc.WriteTo([]byte("udp "+from.String()+"\n"), from)
		}
	}()
}

func netnsServe() {
	cfg := &config.Config{MaxFlows: 100, ShutdownTimeout: time.Second}
	for i, fam := range [][2]string{{nsLBFront, nsTargetIP}, {nsLBFront6, nsTargetIP6}} {
		target := netip.AddrPortFrom(netip.MustParseAddr(fam[1]), 9000)
		c := testConfig([]config.Target{{Address: target, Weight: 1}}, func(l *config.Listener, g *config.TargetGroup) {
			l.Protocol, g.Protocol = config.TCPUDP, config.TCPUDP
			l.Bind = []config.BindAddr{{IP: netip.MustParseAddr(fam[0])}}
			l.Port = 8080
			l.UDPIdleTimeout = config.DefaultUDPIdleTimeout
			l.Name, l.TargetGroup, g.Name = fmt.Sprintf("l%d", i), fmt.Sprintf("g%d", i), fmt.Sprintf("g%d", i)
			g.Attributes.PreserveClientIP = true
		})
		cfg.Listeners = append(cfg.Listeners, c.Listeners...)
		cfg.TargetGroups = append(cfg.TargetGroups, c.TargetGroups...)
	}
	second := cfg.Listeners[0] // a second TCP port to the same IPv4 group
	second.Name, second.Protocol, second.Port = "l0b", config.TCP, 8081
	cfg.Listeners = append(cfg.Listeners, second)
	reg := prometheus.NewRegistry()
	// Warnings and errors go to stderr, which the test shows: a flow that
	// fails says why there.
	log := zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), zapcore.Lock(os.Stderr), zap.WarnLevel))
	srv, err := New(cfg, Options{ConnectTimeout: 2 * time.Second, Metrics: metrics.New(reg), Logger: log})
	if err == nil {
		err = srv.Start()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ready")
	waitForParent()
	fmt.Printf("port_allocation_errors %v\n", gatherSum(reg, "l4lb_port_allocation_errors_total"))
	srv.Close()
}

// netnsServeKernel serves UDP on 198.18.0.1:8082 and [fd00:18::1]:8082
// through the kernel fast path, on the interfaces the test names.
func netnsServeKernel() {
	cfg := &config.Config{MaxFlows: 100, ShutdownTimeout: time.Second}
	for i, fam := range [][2]string{{nsLBFront, nsTargetIP}, {nsLBFront6, nsTargetIP6}} {
		target := netip.AddrPortFrom(netip.MustParseAddr(fam[1]), 9000)
		c := udpConfig([]config.Target{{Address: target, Weight: 1}}, func(l *config.Listener, g *config.TargetGroup) {
			l.Bind = []config.BindAddr{{IP: netip.MustParseAddr(fam[0])}}
			l.Port = 8082
			l.Name, l.TargetGroup, g.Name = fmt.Sprintf("l%d", i), fmt.Sprintf("g%d", i), fmt.Sprintf("g%d", i)
			g.Attributes.PreserveClientIP = true
		})
		cfg.Listeners = append(cfg.Listeners, c.Listeners...)
		cfg.TargetGroups = append(cfg.TargetGroups, c.TargetGroups...)
	}
	cfg.UDPFastPath = true
	cfg.UDPFastPathInterfaces = strings.Split(os.Getenv("L4LB_FASTPATH_IFACES"), ",")
	reg := prometheus.NewRegistry()
	log, _ := zap.NewDevelopment(zap.IncreaseLevel(zap.WarnLevel)) // to stderr: stdout talks to the test
	srv, err := New(cfg, Options{Metrics: metrics.New(reg), Logger: log})
	if err == nil {
		err = srv.Start()
	}
	if err == nil && !srv.udp.KernelPath() {
		err = fmt.Errorf("the UDP fast path did not come up")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ready")
	waitForParent()
	user := srv.udp.UserFlows()
	srv.Close() // the kernel's last counts reach the metrics
	fmt.Printf("kernel_flows %v user_space_flows %d\n", gatherSum(reg, "l4lb_new_flows_total"), user)
}

func gatherSum(reg *prometheus.Registry, name string) float64 {
	mfs, _ := reg.Gather()
	return sumOf(mfs, name)
}

func netnsClient() {
	for _, ip := range []string{nsLBFront, nsLBFront6} {
		askTarget(net.JoinHostPort(ip, "8080"))
	}
	// Same client address and port to two listeners: SO_REUSEADDR lets the
	// client bind it twice (the 4-tuples differ by the listener port).
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(nsClientIP), Port: 5000}, Timeout: 5 * time.Second,
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) })
			return serr
		}}
	for _, port := range []string{"8080", "8081"} {
		c, err := d.Dial("tcp", net.JoinHostPort(nsLBFront, port))
		if err != nil {
			fmt.Println("collision dial error:", err)
			os.Exit(1)
		}
		defer c.Close() // both flows stay open, so their target-side tuples collide
		c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			fmt.Println("collision read error:", err)
			os.Exit(1)
		}
		fmt.Print("collision " + line)
	}
}

func askTarget(addr string) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		fmt.Println("tcp error:", err)
		os.Exit(1)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if err != nil {
		fmt.Printf("tcp read error from %s: %v\n", addr, err)
	}
	fmt.Print(line)
	askUDP(addr)
}

// askUDP sends one datagram on a socket connected to addr and prints the
// answer: it only arrives if it comes from addr.
func askUDP(addr string) {
	u, err := net.Dial("udp", addr)
	if err != nil {
		fmt.Println("udp error:", err)
		os.Exit(1)
	}
	u.SetDeadline(time.Now().Add(5 * time.Second))
	u.Write([]byte("who am I?"))
	buf := make([]byte, 1500)
	n, err := u.Read(buf)
	if err != nil {
		fmt.Println("udp error:", err)
		os.Exit(1)
	}
	fmt.Print(string(buf[:n]))
}

// waitForParent blocks until the test closes our stdin or signals us.
func waitForParent() {
	done := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(done) }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-done:
	case <-sig:
	}
}

// Connections to targets take their source port at connect(2), so a port
// is only unique per target: with 50 ephemeral ports, 70 flows spread over
// two targets all connect. (A port taken at bind time is unique across all
// destinations, and would cap them at 50.) UDP flows on the socket path hold
// a port each: past 50, they are refused and counted.
func TestTargetPortsPerDestination(t *testing.T) {
	ipBin := ipBinary(t)
	ns := fmt.Sprintf("l4p%d", os.Getpid()%100000)
	run(t, ipBin, "netns", "add", ns)
	t.Cleanup(func() { exec.Command(ipBin, "netns", "del", ns).Run() })
	run(t, ipBin, "netns", "exec", ns, "ip", "link", "set", "lo", "up")
	cmd := exec.Command(ipBin, "netns", "exec", ns, os.Args[0], "-test.run=^TestNetnsHelper$")
	cmd.Env = append(os.Environ(), "L4LB_NETNS_ROLE=ports")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "served 70 of 70") {
		t.Fatalf("%v\n%s", err, out)
	}
	// UDP flows on the socket path each hold a port of their own: beyond the
	// range they are refused and counted as port allocation errors.
	var answered, portErrs int
	_, udp, _ := strings.Cut(string(out), "udp answered")
	if _, err := fmt.Sscanf(udp, "%d port_errors %d", &answered, &portErrs); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if answered+portErrs != 70 || portErrs < 20 {
		t.Fatalf("UDP: %d answered, %d port allocation errors; want 70 in all, at least 20 errors with 50 ports", answered, portErrs)
	}
}

// netnsPorts runs inside its own namespace, where narrowing the ephemeral
// port range touches nothing else.
func netnsPorts(t *testing.T) {
	a, b := startEcho(t), startEcho(t)
	srv := startedServer(t, testConfig([]config.Target{{Address: a.addr, Weight: 1}, {Address: b.addr, Weight: 1}}, nil), Options{ConnectTimeout: 2 * time.Second})
	addr := srv.Addrs("test")[0].String()
	reg := prometheus.NewRegistry()
	u := startUDPTarget(t, false)
	_, uaddr := startUDPServer(t, udpConfig([]config.Target{{Address: u.addr, Weight: 1}}, nil), Options{Metrics: metrics.New(reg)})
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("40000 40049"), 0o644); err != nil {
		fmt.Println("port range:", err)
		return
	}
	served := 0
	for i := range 70 {
		// Clients bind ports outside the range, so only l4lb draws on it.
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 20000 + i}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			fmt.Println("dial:", err)
			continue
		}
		defer c.Close() // every flow stays open to the end
		c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 4)
		if _, err := c.Write([]byte("ping")); err == nil {
			if _, err := io.ReadFull(c, buf); err == nil {
				served++
			}
		}
	}
	fmt.Printf("served %d of 70\n", served)
	var conns []*net.UDPConn
	for i := range 70 {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 21000 + i}, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(uaddr)))
		if err != nil {
			fmt.Println("udp dial:", err)
			continue
		}
		defer c.Close()
		c.Write([]byte("q"))
		conns = append(conns, c)
	}
	// One wait for all: replies are queued by the time the first deadline
	// passes, and each later socket still gets a short read of its own.
	answered, deadline := 0, time.Now().Add(2*time.Second)
	for _, c := range conns {
		if d := time.Now().Add(50 * time.Millisecond); d.After(deadline) {
			c.SetReadDeadline(d)
		} else {
			c.SetReadDeadline(deadline)
		}
		if _, err := c.Read(make([]byte, 8)); err == nil {
			answered++
		}
	}
	fmt.Printf("udp answered %d port_errors %d\n", answered, int(gatherSum(reg, "l4lb_port_allocation_errors_total")))
}
