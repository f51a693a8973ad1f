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
// senders push 64-byte datagrams through an l4lb UDP listener to a sink for
// dur; the report is datagrams delivered per second, and per second of CPU
// that l4lb used (its datagrams per core).
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
	const port = 18353
	f, err := os.CreateTemp("", "l4lb-udp-bench-*.yaml")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	fmt.Fprintf(f, `admin: {listen: "off"}
listeners:
  - {name: udp, protocol: UDP, port: %d, bind: [127.0.0.1], target_group: sink}
target_groups:
  - {name: sink, protocol: UDP, targets: [{address: "%s"}]}
`, port, sink.LocalAddr())
	f.Close()
	cmd := exec.Command(bin, "serve", "--config", f.Name(), "--log-level", "error")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	time.Sleep(500 * time.Millisecond)
	payload := make([]byte, 64)
	cpu0 := cpuSeconds(cmd.Process.Pid)
	start := time.Now()
	got.Store(0)
	var wg sync.WaitGroup
	for range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
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
	cpu := cpuSeconds(cmd.Process.Pid) - cpu0
	rate := float64(got.Load()) / wall
	fmt.Printf("| small UDP datagrams (64 B, %d senders) | delivered/s | l4lb CPU cores used | datagrams/s per core |\n|---|---|---|---|\n", senders)
	fmt.Printf("| l4lb | %.0f | %.2f | %.0f |\n", rate, cpu/wall, rate/(cpu/wall))
	return nil
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
