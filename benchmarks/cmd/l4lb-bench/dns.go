package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"
)

// dnsBench measures DNS queries per second with dnsperf against unbound:
// direct, through l4lb (UDP listener) and through nginx stream (UDP,
// reuseport, proxy_responses 1, 2 workers), in one run.
func dnsBench(bin string, dur time.Duration) error {
	dir, err := os.MkdirTemp("", "l4lb-dns-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	const dnsPort, l4lbPort, nginxPort = 18053, 18153, 18253
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			syscall.Kill(-p.Process.Pid, syscall.SIGKILL) // nginx's workers too
			p.Wait()
		}
	}()
	start := func(name string, args ...string) error {
		cmd := exec.Command(name, args...)
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("starting %s: %w", name, err)
		}
		procs = append(procs, cmd)
		return nil
	}
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o644)
		return p
	}
	unbound := write("unbound.conf", fmt.Sprintf(`server:
  interface: 127.0.0.1@%d
  port: %d
  num-threads: 2
  so-reuseport: yes
  do-ip6: no
  do-daemonize: no
  username: ""
  chroot: ""
  directory: %q
  pidfile: %q
  use-syslog: no
  logfile: ""
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  do-not-query-localhost: yes
  local-zone: "l4lb.test." static
  local-data: "a.l4lb.test. 60 IN A 192.0.2.53"
remote-control:
  control-enable: no
`, dnsPort, dnsPort, dir, filepath.Join(dir, "unbound.pid")))
	if err := start("unbound", "-d", "-c", unbound); err != nil {
		return err
	}
	l4lbConf := write("l4lb.yaml", fmt.Sprintf(`admin: {listen: "off"}
listeners:
  - {name: dns, protocol: UDP, port: %d, bind: [127.0.0.1], target_group: dns}
target_groups:
  - {name: dns, protocol: UDP, targets: [{address: "127.0.0.1:%d"}]}
`, l4lbPort, dnsPort))
	if err := start(bin, "serve", "--config", l4lbConf, "--log-level", "warn"); err != nil {
		return err
	}
	nginxConf := write("nginx.conf", fmt.Sprintf(`load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 2;
daemon off;
pid %s/nginx.pid;
error_log stderr error;
events { worker_connections 4096; }
stream {
  upstream dns { server 127.0.0.1:%d; }
  server {
    listen 127.0.0.1:%d udp reuseport;
    proxy_pass dns;
    proxy_responses 1;
    proxy_timeout 5s;
  }
}
`, dir, dnsPort, nginxPort))
	if err := start("nginx", "-c", nginxConf, "-p", dir); err != nil {
		return err
	}
	queries := write("queries", "a.l4lb.test A\n")
	time.Sleep(time.Second) // let all three come up
	results := map[string]float64{}
	for _, p := range []struct {
		name string
		port int
	}{{"direct", dnsPort}, {"nginx", nginxPort}, {"l4lb", l4lbPort}} {
		out, err := exec.Command("dnsperf", "-s", "127.0.0.1", "-p", strconv.Itoa(p.port), "-d", queries,
			"-l", strconv.Itoa(int(dur.Seconds())), "-c", "8", "-T", "2", "-q", "200").CombinedOutput()
		if err != nil {
			return fmt.Errorf("dnsperf against %s: %v\n%s", p.name, err, out)
		}
		m := regexp.MustCompile(`Queries per second:\s+([0-9.]+)`).FindSubmatch(out)
		lost := regexp.MustCompile(`Queries lost:\s+(\d+)`).FindSubmatch(out)
		if m == nil {
			return fmt.Errorf("dnsperf output has no rate:\n%s", out)
		}
		results[p.name], _ = strconv.ParseFloat(string(m[1]), 64)
		if lost != nil {
			fmt.Fprintf(os.Stderr, "%-7s lost %s queries\n", p.name, lost[1])
		}
	}
	d, n, l := results["direct"], results["nginx"], results["l4lb"]
	fmt.Printf("| DNS over UDP (dnsperf, unbound) | direct | nginx stream | l4lb | l4lb/nginx | l4lb/direct |\n|---|---|---|---|---|---|\n")
	fmt.Printf("| queries/s | %.0f | %.0f | %.0f | %.2fx | %.2fx |\n", d, n, l, l/n, l/d)
	return nil
}
