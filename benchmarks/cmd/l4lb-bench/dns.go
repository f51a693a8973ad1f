package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
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
	dnsPort, l4lbPort, nginxPort, kernelPort := port(53), port(153), port(253), port(353)
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			syscall.Kill(-p.Process.Pid, syscall.SIGKILL) // nginx's workers too
			p.Wait()
		}
	}()
	start := func(name string, args ...string) error {
		cmd := exec.Command(name, args...)
		cmd.Stdout, cmd.Stderr = logTo("dns-"+filepath.Base(name)), logTo("dns-"+filepath.Base(name))
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
	// The kernel fast path: same target, client IP preserved (which the
	// kernel's rewrite always does). It starts only for its own run, so its
	// program on lo is not in the way of the others.
	kernelConf := write("l4lb-kernel.yaml", fmt.Sprintf(`admin: {listen: "off"}
load_balancer: {udp_fast_path: true, udp_fast_path_interfaces: [lo]}
listeners:
  - {name: dns, protocol: UDP, port: %d, bind: [127.0.0.1], target_group: dns}
target_groups:
  - name: dns
    protocol: UDP
    targets: [{address: "127.0.0.1:%d"}]
    attributes: {preserve_client_ip.enabled: true}
`, kernelPort, dnsPort))
	queries := write("queries", "a.l4lb.test A\n")
	time.Sleep(time.Second) // let all three come up
	// Rounds alternate the four setups, and each result is the median of
	// its rounds, so a slow spell on this shared machine hits all of them.
	samples := map[string][]float64{}
	for round := range dnsRounds {
		for _, p := range []struct {
			name string
			port int
		}{{"direct", dnsPort}, {"nginx", nginxPort}, {"l4lb", l4lbPort}, {"l4lb-kernel", kernelPort}} {
			var kernel *exec.Cmd
			if p.name == "l4lb-kernel" {
				if err := start(bin, "serve", "--config", kernelConf, "--log-level", "warn"); err != nil {
					return err
				}
				kernel = procs[len(procs)-1]
				procs = procs[:len(procs)-1]
				time.Sleep(time.Second)
			}
			qps, lost, err := dnsperf(queries, p.port, dur)
			if kernel != nil {
				kernel.Process.Signal(syscall.SIGTERM) // detaches its program from lo
				kernel.Wait()
			}
			if err != nil {
				return fmt.Errorf("dnsperf against %s: %w", p.name, err)
			}
			samples[p.name] = append(samples[p.name], qps)
			fmt.Fprintf(os.Stderr, "round %d %-11s %8.0f q/s, %s lost\n", round+1, p.name, qps, lost)
		}
	}
	results := map[string]float64{}
	for name, v := range samples {
		results[name] = median(v)
	}
	d, n := results["direct"], results["nginx"]
	fmt.Printf("\nDNS over UDP (dnsperf against unbound; medians of %d rounds of %v)\n\n", dnsRounds, dur)
	fmt.Printf("| contender | queries/s | vs nginx | vs direct |\n|---|---|---|---|\n")
	for _, name := range []string{"direct", "nginx", "l4lb", "l4lb-kernel"} {
		r := results[name]
		fmt.Printf("| %s | %.0f | %.2fx | %.2fx |\n", name, r, r/n, r/d)
	}
	return nil
}

const dnsRounds = 3

// dnsperf runs dnsperf for dur against 127.0.0.1:port and returns its rate and
// lost-query count.
func dnsperf(queries string, port int, dur time.Duration) (float64, string, error) {
	out, err := exec.Command("dnsperf", "-s", "127.0.0.1", "-p", strconv.Itoa(port), "-d", queries,
		"-l", strconv.Itoa(int(dur.Seconds())), "-c", "8", "-T", "2", "-q", "200").CombinedOutput()
	if err != nil {
		return 0, "", fmt.Errorf("%v\n%s", err, out)
	}
	m := regexp.MustCompile(`Queries per second:\s+([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		return 0, "", fmt.Errorf("dnsperf output has no rate:\n%s", out)
	}
	lost := "no"
	if l := regexp.MustCompile(`Queries lost:\s+(\d+)`).FindSubmatch(out); l != nil {
		lost = string(l[1])
	}
	qps, _ := strconv.ParseFloat(string(m[1]), 64)
	return qps, lost, nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
