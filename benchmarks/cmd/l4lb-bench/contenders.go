package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/l4lb/l4lb/bench"
)

// startTargets runs the echo and sink targets every TCP test uses.
func startTargets() (echo, sink *bench.Target, err error) {
	if echo, err = bench.StartTarget(bench.TargetEcho, "tcp", "127.0.0.1:0", 0); err != nil {
		return nil, nil, err
	}
	if sink, err = bench.StartTarget(bench.TargetSink, "tcp", "127.0.0.1:0", 0); err != nil {
		echo.Close()
		return nil, nil, err
	}
	return echo, sink, nil
}

// run starts c before the targets and returns where clients reach the
// echo and the sink through it, its processes, and how to stop it; ok is
// false (and the reason printed) when it cannot run here.
func (c contender) run(echo, sink *bench.Target, dir string) (echoAddr, sinkAddr string, pids []int, stop func(), ok bool) {
	addr, pids, stop, err := c.start(echo.Addr.String(), sink.Addr.String(), dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "l4lb-bench: %s left out: %v\n", c.name, err)
		return "", "", nil, nil, false
	}
	if addr == "" {
		return echo.Addr.String(), sink.Addr.String(), pids, stop, true
	}
	if !waitListening(addr) || !waitListening(bump(addr)) {
		stop()
		fmt.Fprintf(os.Stderr, "l4lb-bench: %s left out: nothing answers on %s\n", c.name, addr)
		return "", "", nil, nil, false
	}
	return addr, bump(addr), pids, stop, true
}

// contender is one way of reaching the echo and sink targets. start brings
// it up (proxies listen on two ports: +0 to the echo target, +1 to the
// sink) and returns where clients connect, the processes whose memory is
// the contender's, and how to take it down again. Contenders run one at a
// time, so no other's processes or kernel programs share the machine.
type contender struct {
	name  string
	kind  string // "direct", "proxy" (user space) or "kernel" (no process holds a flow)
	start func(echo, sink, dir string) (addr string, pids []int, stop func(), err error)
}

// tcpContenders are the ways to reach the echo and sink targets that the
// TCP tests compare.
func tcpContenders(bin, haproxy, nginx, adminAddr string) []contender {
	return []contender{
		{"direct", "direct", func(e, s, d string) (string, []int, func(), error) { return "", nil, func() {}, nil }},
		{"haproxy", "proxy", func(e, s, d string) (string, []int, func(), error) { return startHAProxy(haproxy, e, s, d) }},
		{"nginx", "proxy", func(e, s, d string) (string, []int, func(), error) { return startNginx(nginx, e, s, d) }},
		{"nftables", "kernel", startNftables},
		{"l4lb", "proxy", func(e, s, d string) (string, []int, func(), error) {
			return startL4LB(bin, e, s, d, adminAddr, modeSocket)
		}},
		// The socket path with its event loops off: every flow on two
		// goroutines, as before them.
		{"l4lb-goroutines", "proxy", func(e, s, d string) (string, []int, func(), error) {
			return startL4LB(bin, e, s, d, adminAddr, modeSocketGoroutines)
		}},
		{"l4lb-kernel", "kernel", func(e, s, d string) (string, []int, func(), error) {
			return startL4LB(bin, e, s, d, adminAddr, modeKernel)
		}},
		// The socket path while the kernel programs (TCP and UDP) run on
		// lo for other listeners: what they cost unrelated traffic.
		{"l4lb+programs", "proxy", func(e, s, d string) (string, []int, func(), error) {
			return startL4LB(bin, e, s, d, adminAddr, modeSocketBesideKernel)
		}},
	}
}

func bump(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	return net.JoinHostPort(host, strconv.Itoa(p+1))
}

// stopper ends a process started for the bench.
func stopper(cmd *exec.Cmd) func() {
	return func() {
		cmd.Process.Kill()
		cmd.Wait()
	}
}

func startHAProxy(bin, echo, sink, dir string) (string, []int, func(), error) {
	cfg := fmt.Sprintf(`global
    maxconn 4000
    nbthread 2
defaults
    mode tcp
    option splice-auto
    timeout connect 3s
    timeout client 350s
    timeout server 350s
frontend fe_echo
    bind 127.0.0.1:%[3]d
    default_backend be_echo
frontend fe_sink
    bind 127.0.0.1:%[4]d
    default_backend be_sink
backend be_echo
    server s1 %[1]s
backend be_sink
    server s1 %[2]s
`, echo, sink, port(400), port(401))
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return "", nil, nil, err
	}
	cmd := exec.Command(bin, "-f", path)
	cmd.Stdout, cmd.Stderr = logTo("haproxy"), logTo("haproxy")
	if err := cmd.Start(); err != nil {
		return "", nil, nil, fmt.Errorf("starting haproxy (apt-get install haproxy): %w", err)
	}
	return fmt.Sprintf("127.0.0.1:%d", port(400)), []int{cmd.Process.Pid}, stopper(cmd), nil
}

// startNginx runs nginx's stream proxy as its docs suggest for a load
// balancer: two workers, a reuseport listener each.
func startNginx(bin, echo, sink, dir string) (string, []int, func(), error) {
	mod := ""
	if _, err := os.Stat("/usr/lib/nginx/modules/ngx_stream_module.so"); err == nil {
		mod = "load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
	}
	cfg := fmt.Sprintf(`%s
worker_processes 2;
worker_rlimit_nofile 20000;
pid %s/nginx.pid;
error_log %s/nginx-error.log warn;
daemon off;
events { worker_connections 8000; }
stream {
    server { listen 127.0.0.1:%d reuseport; proxy_pass %s; }
    server { listen 127.0.0.1:%d reuseport; proxy_pass %s; }
}
`, mod, dir, dir, port(410), echo, port(411), sink)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return "", nil, nil, err
	}
	cmd := exec.Command(bin, "-c", path, "-e", filepath.Join(dir, "nginx-error.log"))
	cmd.Stdout, cmd.Stderr = logTo("nginx"), logTo("nginx")
	if err := cmd.Start(); err != nil {
		return "", nil, nil, fmt.Errorf("starting nginx (apt-get install nginx-light libnginx-mod-stream): %w", err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port(410))
	if !waitListening(addr) {
		stopper(cmd)()
		return "", nil, nil, fmt.Errorf("nginx does not listen; see %s/nginx-error.log", dir)
	}
	// The master and its workers: the workers hold the connections.
	pids := withChildren(cmd.Process.Pid)
	stop := func() {
		// SIGTERM: the master takes its workers down with it (a killed
		// master would leave them serving).
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}
	return addr, pids, stop, nil
}

// withChildren is pid and its children (nginx's workers).
func withChildren(pid int) []int {
	pids := []int{pid}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)); err == nil {
		for _, f := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(f); err == nil {
				pids = append(pids, p)
			}
		}
	}
	return pids
}

// startNftables is the kernel's own NAT balancer, the rule kube-proxy's
// nftables mode writes for a service: DNAT chosen by a hash of the client's
// address and port. Loopback clients' packets meet it on the output hook.
func startNftables(echo, sink, dir string) (string, []int, func(), error) {
	rule := func(port int, target string) string {
		host, tport, _ := net.SplitHostPort(target)
		return fmt.Sprintf("ip daddr 127.0.0.1 tcp dport %d dnat ip to jhash ip saddr . tcp sport mod 1 map { 0 : %s } : %s", port, host, tport)
	}
	ruleset := fmt.Sprintf(`table ip l4lb_bench {
  chain out {
    type nat hook output priority -100; policy accept;
    %s
    %s
  }
}
`, rule(port(420), echo), rule(port(421), sink))
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", nil, nil, fmt.Errorf("nft (apt-get install nftables; needs root): %v: %s", err, out)
	}
	stop := func() { exec.Command("nft", "delete", "table", "ip", "l4lb_bench").Run() }
	return fmt.Sprintf("127.0.0.1:%d", port(420)), nil, stop, nil
}

// l4lb's modes in the bench.
const (
	modeSocket             = iota // the socket path
	modeKernel                    // the TCP kernel fast path
	modeSocketBesideKernel        // the socket path, with kernel programs on lo for other listeners
	modeSocketGoroutines          // the socket path without its event loops
)

// startL4LB runs l4lb on its socket path, or on its TCP kernel fast path
// (which needs a target group that keeps the client's address).
func startL4LB(bin, echo, sink, dir, adminAddr string, mode int) (string, []int, func(), error) {
	lport, extra, attrs := port(500), "", ""
	switch mode {
	case modeKernel:
		lport = port(510)
		extra = "load_balancer: {tcp_fast_path: true, tcp_fast_path_interfaces: [lo]}\n"
		attrs = `, attributes: {preserve_client_ip.enabled: "true"}`
	case modeSocketGoroutines:
		lport = port(530)
	case modeSocketBesideKernel:
		lport = port(520)
		extra = "load_balancer: {tcp_fast_path: true, tcp_fast_path_interfaces: [lo], udp_fast_path: true, udp_fast_path_interfaces: [lo]}\n"
	}
	cfg := fmt.Sprintf(`admin: {listen: "%s"}
%slisteners:
  - {name: echo, port: %d, bind: [127.0.0.1], target_group: echo}
  - {name: sink, port: %d, bind: [127.0.0.1], target_group: sink}
target_groups:
  - {name: echo, targets: [{address: "%s"}]%s}
  - {name: sink, targets: [{address: "%s"}]%s}
`, adminAddr, extra, lport, lport+1, echo, attrs, sink, attrs)
	if mode == modeSocketBesideKernel {
		// Their targets are ports nothing listens on: the point is the
		// programs' cost on the traffic that is not theirs.
		cfg += fmt.Sprintf(`  - {name: other, targets: [{address: "127.0.0.1:%d"}], attributes: {preserve_client_ip.enabled: "true"}}
  - {name: other-udp, protocol: UDP, targets: [{address: "127.0.0.1:%d"}], attributes: {preserve_client_ip.enabled: "true"}}
`, port(538), port(539))
		cfg = strings.Replace(cfg, "target_groups:", fmt.Sprintf(`  - {name: other, port: %d, bind: [127.0.0.2], target_group: other}
  - {name: other-udp, protocol: UDP, port: %d, bind: [127.0.0.2], target_group: other-udp}
target_groups:`, lport+2, lport+3), 1)
	}
	need, env := "", []string(nil)
	if mode != modeSocket && mode != modeSocketGoroutines {
		need = "TCP listener forwarded in the kernel"
	}
	if mode == modeSocketGoroutines {
		env = []string{"L4LB_TCP_EVENT_LOOP=off"}
	}
	pid, stop, err := serveL4LB(bin, dir, fmt.Sprintf("l4lb-%d", lport), cfg, need, env...)
	if err != nil {
		return "", nil, nil, err
	}
	return fmt.Sprintf("127.0.0.1:%d", lport), []int{pid}, stop, nil
}

func waitListening(addr string) bool {
	for range 100 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}
