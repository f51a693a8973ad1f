package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// udpBench measures small-datagram forwarding with l4lb's own generator:
// senders push 64-byte datagrams to a sink for dur, directly, through an l4lb
// UDP listener on sockets, and through one on the kernel fast path. The report
// is datagrams delivered per second and, for the socket path, per second of
// CPU that l4lb used (its datagrams per core).
func udpBench(bin string, dur time.Duration, senders int) error {
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	defer sink.Close()
	sink.SetReadBuffer(8 << 20)
	var got atomic.Int64
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := sink.ReadFromUDPAddrPort(buf); err != nil {
				return
			}
			got.Add(1)
		}
	}()
	sinkPort := sink.LocalAddr().(*net.UDPAddr).Port
	fmt.Printf("\nUDP flood (one round of %v each; the contenders run one at a time)\n\n", dur)
	fmt.Printf("| small UDP datagrams (64 B, %d senders) | delivered/s | vs direct | l4lb CPU cores used | datagrams/s per l4lb core |\n|---|---|---|---|---|\n", senders)
	var direct float64
	for _, run := range []struct {
		name, extra string
		port        int
	}{
		{"direct", "", sinkPort},
		{"l4lb, sockets", "", port(453)},
		{"l4lb, kernel fast path", "\nload_balancer: {udp_fast_path: true, udp_fast_path_interfaces: [lo]}", port(454)},
	} {
		var proc *exec.Cmd
		if run.name != "direct" {
			attrs := ""
			if run.extra != "" {
				attrs = ", attributes: {preserve_client_ip.enabled: true}"
			}
			if proc, err = startUDPProxy(bin, fmt.Sprintf(`admin: {listen: "off"}%s
listeners:
  - {name: udp, protocol: UDP, port: %d, bind: [127.0.0.1], target_group: sink}
target_groups:
  - {name: sink, protocol: UDP, targets: [{address: "127.0.0.1:%d"}]%s}
`, run.extra, run.port, sinkPort, attrs)); err != nil {
				return err
			}
		}
		rate, cores := blast(fmt.Sprintf("127.0.0.1:%d", run.port), dur, senders, &got, proc)
		if proc != nil {
			proc.Process.Kill()
			proc.Wait()
		}
		if run.name == "direct" {
			direct = rate
		}
		perCore := "-"
		if proc != nil && cores > 0.05 {
			perCore = fmt.Sprintf("%.0f", rate/cores)
		}
		fmt.Printf("| %s | %.0f | %.2fx | %.2f | %s |\n", run.name, rate, rate/direct, cores, perCore)
	}
	return nil
}

// startUDPProxy starts l4lb with the given config and gives it time to bind.
func startUDPProxy(bin, conf string) (*exec.Cmd, error) {
	f, err := os.CreateTemp("", "l4lb-udp-bench-*.yaml")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	f.WriteString(conf)
	f.Close()
	cmd := exec.Command(bin, "serve", "--config", f.Name(), "--log-level", "error")
	cmd.Stdout, cmd.Stderr = logTo("udp-l4lb"), logTo("udp-l4lb")
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	time.Sleep(time.Second) // reads its config, binds, loads the fast path
	return cmd, nil
}

// blast sends 64-byte datagrams to addr from senders sockets for dur and
// returns the rate the sink counted, and the CPU cores proc used meanwhile.
func blast(addr string, dur time.Duration, senders int, got *atomic.Int64, proc *exec.Cmd) (rate, cores float64) {
	payload := make([]byte, 64)
	var cpu0 float64
	if proc != nil {
		cpu0 = cpuSeconds(proc.Process.Pid)
	}
	start := time.Now()
	got.Store(0)
	var wg sync.WaitGroup
	for range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("udp", addr)
			if err != nil {
				return
			}
			defer c.Close()
			for i := 0; time.Since(start) < dur; i++ {
				c.Write(payload)
				if i%64 == 63 {
					time.Sleep(50 * time.Microsecond) // bounded: lets the proxy keep up rather than measure drops
				}
			}
		}()
	}
	wg.Wait()
	time.Sleep(200 * time.Millisecond)
	wall := time.Since(start).Seconds()
	if proc != nil {
		cores = (cpuSeconds(proc.Process.Pid) - cpu0) / wall
	}
	return float64(got.Load()) / wall, cores
}

// cpuSeconds is a process's user+system CPU time from /proc/PID/stat.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // USER_HZ
}
