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

func TestTransparentModeInNamespaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("transparent mode needs network namespaces and CAP_NET_ADMIN: run as root")
	}
	ipBin, err := exec.LookPath("ip")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("ip (iproute2) is not installed; make deps installs it")
		}
		t.Skip("ip (iproute2) is not installed")
	}
	id := os.Getpid() % 100000
	nsC, nsL, nsT := fmt.Sprintf("l4c%d", id), fmt.Sprintf("l4l%d", id), fmt.Sprintf("l4t%d", id)
	for _, ns := range []string{nsC, nsL, nsT} {
		run(t, ipBin, "netns", "add", ns)
		t.Cleanup(func() { exec.Command(ipBin, "netns", "del", ns).Run() })
	}
	in := func(ns string, args ...string) {
		t.Helper()
		run(t, append([]string{ipBin, "netns", "exec", ns}, args...)...)
	}
	vc, vlc, vt, vlt := fmt.Sprintf("c%d", id), fmt.Sprintf("lc%d", id), fmt.Sprintf("t%d", id), fmt.Sprintf("lt%d", id)
	run(t, ipBin, "link", "add", vc, "netns", nsC, "type", "veth", "peer", "name", vlc, "netns", nsL)
	run(t, ipBin, "link", "add", vt, "netns", nsT, "type", "veth", "peer", "name", vlt, "netns", nsL)
	in(nsC, "ip", "addr", "add", nsClientIP+"/24", "dev", vc)
	in(nsC, "ip", "link", "set", vc, "up")
	in(nsC, "ip", "link", "set", "lo", "up")
	in(nsC, "ip", "route", "add", "default", "via", nsLBFront)
	in(nsC, "ip", "-6", "addr", "add", nsClientIP6+"/64", "dev", vc, "nodad")
	in(nsC, "ip", "-6", "route", "add", "default", "via", nsLBFront6)
	in(nsT, "ip", "addr", "add", nsTargetIP+"/24", "dev", vt)
	in(nsT, "ip", "link", "set", vt, "up")
	in(nsT, "ip", "link", "set", "lo", "up")
	in(nsT, "ip", "route", "add", "default", "via", nsLBBack) // answers to clients go back through l4lb
	in(nsT, "ip", "-6", "addr", "add", nsTargetIP6+"/64", "dev", vt, "nodad")
	in(nsT, "ip", "-6", "route", "add", "default", "via", nsLBBack6)
	in(nsL, "ip", "addr", "add", nsLBFront+"/24", "dev", vlc)
	in(nsL, "ip", "addr", "add", nsLBBack+"/24", "dev", vlt)
	in(nsL, "ip", "-6", "addr", "add", nsLBFront6+"/64", "dev", vlc, "nodad")
	in(nsL, "ip", "-6", "addr", "add", nsLBBack6+"/64", "dev", vlt, "nodad")
	in(nsL, "ip", "link", "set", vlc, "up")
	in(nsL, "ip", "link", "set", vlt, "up")
	in(nsL, "ip", "link", "set", "lo", "up")
	// deploy/transparent.sh's nft-free variant: what arrives from the
	// targets is for this host's (transparent) sockets.
	in(nsL, "ip", "rule", "add", "iif", vlt, "lookup", "100")
	in(nsL, "ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
	in(nsL, "ip", "-6", "rule", "add", "iif", vlt, "lookup", "100")
	in(nsL, "ip", "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100")

	helper := func(ns, role string, env ...string) (*bufio.Reader, io.Closer) {
		cmd := exec.Command(ipBin, "netns", "exec", ns, os.Args[0], "-test.run=^TestNetnsHelper$")
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
	helper(nsT, "target")
	lbOut, lbStop := helper(nsL, "serve")

	// The client runs in its namespace too: this binary again.
	cmd := exec.Command(ipBin, "netns", "exec", nsC, os.Args[0], "-test.run=^TestNetnsHelper$")
	cmd.Env = append(os.Environ(), "L4LB_NETNS_ROLE=client")
	res, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client: %v\n%s", err, res)
	}
	got := string(res)
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
	srv, err := New(cfg, Options{ConnectTimeout: 2 * time.Second, Metrics: metrics.New(reg)})
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

func gatherSum(reg *prometheus.Registry, name string) float64 {
	mfs, _ := reg.Gather()
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += metricValue(m)
			}
		}
	}
	return sum
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
	line, _ := bufio.NewReader(c).ReadString('\n')
	c.Close()
	fmt.Print(line)
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
