//go:build integration

package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
)

// countingEchoAt runs a TCP echo target at addr that counts the
// connections it accepts.
func countingEchoAt(t *testing.T, addr string) *atomic.Int64 {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return &n
}

// pinnedLinkIDs reads the IDs of the links pinned in dir.
func pinnedLinkIDs(t *testing.T, dir string) map[string]uint32 {
	t.Helper()
	ids := map[string]uint32{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "link_") {
			continue
		}
		l, err := link.LoadPinnedLink(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		ids[e.Name()] = uint32(info.ID)
	}
	return ids
}

// The kernel paths outlive a crash of l4lb: SIGKILL while TCP and UDP flows
// run on them, and established flows go on (a checksummed transfer in
// flight across the kill completes), new connections and flows are served
// with the last tables, and a restarted l4lb adopts the pinned links and
// maps (the same links, moved to its programs: no second set), keeps every
// flow's target, and a target registered after the restart receives new
// flows. A clean stop then removes the pins.
func TestKernelPathOutlivesCrash(t *testing.T) {
	needRoot(t, "the kernel paths")
	// 127.57/16 to 127.61/16 are this test's own.
	a, b := tcpEchoAt(t, "127.57.0.2:9080"), tcpEchoAt(t, "127.57.0.3:9080")
	cAddr := "127.57.0.4:9080"
	cHits := countingEchoAt(t, cAddr)
	ua, ub := kernelTarget(t, "127.57.0.5"), kernelTarget(t, "127.57.0.6")
	pWeb, pDNS, pAdmin := freePort(t), freePort(t), freePort(t)
	vip, dnsVIP := "127.57.0.1:"+pWeb, "127.57.0.1:"+pDNS
	yaml := fmt.Sprintf(`admin: {listen: "127.0.0.1:%s"}
load_balancer: {tcp_fast_path: true, tcp_fast_path_interfaces: [lo], udp_fast_path: true, udp_fast_path_interfaces: [lo]}
listeners:
  - {name: web, protocol: TCP, port: %s, bind: [127.57.0.1], target_group: web}
  - {name: dns, protocol: UDP, port: %s, bind: [127.57.0.1], target_group: dns, udp_idle_timeout: 60s}
target_groups:
  - name: web
    protocol: TCP
    targets: [{address: %q}, {address: %q}]
    attributes: {preserve_client_ip.enabled: "true"}
    health_check: {protocol: TCP, interval: 200ms, timeout: 150ms, healthy_threshold: 2}
  - name: dns
    protocol: UDP
    targets: [{address: %q}, {address: %q}]
    attributes: {preserve_client_ip.enabled: "true"}
    health_check: {protocol: TCP, port: 9053, interval: 200ms, timeout: 150ms, healthy_threshold: 2}
`, pAdmin, pWeb, pDNS, a, b, ua, ub)
	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "crash-test")
	d := startDaemon(t, bin, pAdmin, yaml)
	pins := filepath.Join(config.DefaultBPFFS, instanceName(d.config, &config.Config{}))
	waitUntil(t, "targets healthy", func() bool {
		w, u := groupStates(t, d.admin, "web"), groupStates(t, d.admin, "dns")
		return w[a] == api.StateHealthy && w[b] == api.StateHealthy && u[ua] == api.StateHealthy && u[ub] == api.StateHealthy
	})
	for _, want := range []string{"TCP listener forwarded in the kernel", "UDP listener forwarded in the kernel", "TCP fast path pinned", "UDP fast path pinned"} {
		if log, _ := os.ReadFile(d.log); !strings.Contains(string(log), want) {
			t.Fatalf("log lacks %q:\n%s", want, log)
		}
	}
	linksBefore := map[string]map[string]uint32{"tcp": pinnedLinkIDs(t, filepath.Join(pins, "tcp")), "udp": pinnedLinkIDs(t, filepath.Join(pins, "udp"))}
	for proto, ids := range linksBefore {
		if len(ids) != 2 {
			t.Fatalf("%s: pinned links %v, want link_in_lo and link_out_lo", proto, ids)
		}
	}

	dial := func(net4 byte, i int) (net.Conn, error) {
		dl := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, net4, 0, byte(i+1))}, Timeout: 3 * time.Second}
		return dl.Dial("tcp", vip)
	}
	var conns []net.Conn
	for i := range 50 {
		c, err := dial(58, i)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := echo(c, "before"); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	flows := openUDPFlows(t, 100, func(i int) *net.UDPAddr {
		return &net.UDPAddr{IP: net.IPv4(127, 59, 0, byte(i+1)), Port: 40000}
	}, dnsVIP)
	udpBefore := flows.targets(t)

	// A checksummed transfer runs across the kill.
	xfer, err := dial(60, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer xfer.Close()
	xfer.SetDeadline(time.Now().Add(30 * time.Second))
	const chunk, chunks = 32 << 10, 64
	sent := sha256.New()
	werr := make(chan error, 1)
	go func() {
		buf := make([]byte, chunk)
		for range chunks {
			rand.Read(buf)
			sent.Write(buf)
			if _, err := xfer.Write(buf); err != nil {
				werr <- err
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		werr <- nil
	}()
	got := sha256.New()
	rerr := make(chan error, 1)
	go func() {
		_, err := io.CopyN(got, xfer, chunk*chunks)
		rerr <- err
	}()

	time.Sleep(300 * time.Millisecond)
	pid := d.cmd.Process.Pid
	syscall.Kill(pid, syscall.SIGKILL)
	<-d.exited
	killed := time.Now()
	t.Logf("l4lb (PID %d) killed with SIGKILL", pid)

	code, out, _ := runCLI("kernel", "status")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("%d (gone: orphan", pid)) {
		t.Fatalf("l4lb kernel status while l4lb is down: exit %d:\n%s", code, out)
	}
	t.Logf("l4lb kernel status while down:\n%s", out)

	// The outage: established flows, new connections and new flows.
	for i, c := range conns {
		if err := echo(c, fmt.Sprintf("during %d", i)); err != nil {
			t.Fatalf("connection %d broke when l4lb died: %v", i, err)
		}
	}
	if after := flows.targets(t); strings.Join(after, " ") != strings.Join(udpBefore, " ") {
		t.Fatalf("UDP flows changed targets while l4lb was down:\nbefore %v\nafter  %v", udpBefore, after)
	}
	for i := range 30 {
		c, err := dial(61, i)
		if err != nil {
			t.Fatalf("new connection %d while l4lb was down: %v", i, err)
		}
		err = echo(c, "new while down")
		c.Close()
		if err != nil {
			t.Fatalf("new connection %d while l4lb was down: %v", i, err)
		}
	}
	fresh := openUDPFlows(t, 30, func(i int) *net.UDPAddr {
		return &net.UDPAddr{IP: net.IPv4(127, 59, 1, byte(i+1)), Port: 40000}
	}, dnsVIP)
	if n := len(fresh.targets(t)); n != 30 {
		t.Fatalf("%d of 30 new UDP flows answered while l4lb was down", n)
	}
	if err := <-werr; err != nil {
		t.Fatalf("the transfer across the kill: sending: %v", err)
	}
	if err := <-rerr; err != nil {
		t.Fatalf("the transfer across the kill: receiving: %v", err)
	}
	if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		t.Fatal("the transfer across the kill: checksum mismatch")
	}
	t.Logf("down %v: 50 connections, 100 UDP flows and a 2 MiB transfer kept working; 30 new connections and 30 new UDP flows were served",
		time.Since(killed).Round(10*time.Millisecond))

	// The restart adopts the pins.
	d.start()
	for _, want := range []string{"TCP fast path: adopted the flows a previous process pinned", "UDP fast path: adopted the flows a previous process pinned"} {
		if log, _ := os.ReadFile(d.log); !strings.Contains(string(log), want) {
			t.Fatalf("the restarted l4lb: log lacks %q", want)
		}
	}
	for proto, before := range linksBefore {
		after := pinnedLinkIDs(t, filepath.Join(pins, proto))
		if fmt.Sprint(after) != fmt.Sprint(before) {
			t.Fatalf("%s: links %v after the restart, %v before: a second set was attached instead of the pinned one moved", proto, after, before)
		}
	}
	code, out, _ = runCLI("kernel", "status")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("%d (running)", d.cmd.Process.Pid)) {
		t.Fatalf("l4lb kernel status: exit %d:\n%s", code, out)
	}
	if code, _, errs := runCLI("kernel", "detach", filepath.Base(pins)); code == 0 || !strings.Contains(errs, "runs") {
		t.Fatalf("l4lb kernel detach of a running instance: exit %d: %s", code, errs)
	}
	for i, c := range conns {
		if err := echo(c, fmt.Sprintf("after %d", i)); err != nil {
			t.Fatalf("connection %d broke across the restart: %v", i, err)
		}
	}
	waitUntil(t, "targets healthy again", func() bool {
		w := groupStates(t, d.admin, "web")
		return w[a] == api.StateHealthy && w[b] == api.StateHealthy
	})
	if code, _, errs := runCLI("targets", "register", "--admin", d.admin, "--target-group", "web", "--target", cAddr); code != 0 {
		t.Fatalf("l4lb targets register: exit %d: %s", code, errs)
	}
	waitUntil(t, "the registered target healthy", func() bool { return groupStates(t, d.admin, "web")[cAddr] == api.StateHealthy })
	// The kernel's table follows within a sync: new connections reach the
	// registered target once it has. Every one of them must echo.
	round, opened := 0, 0
	waitUntil(t, "a new connection on the target registered after the restart", func() bool {
		round++
		for i := range 20 {
			c, err := dial(byte(61+round), i)
			if err != nil {
				t.Fatalf("new connection after the restart: %v", err)
			}
			err = echo(c, "new")
			c.Close()
			if err != nil {
				t.Fatalf("new connection after the restart: %v", err)
			}
			opened++
		}
		return cHits.Load() > 0
	})
	if after := flows.targets(t); strings.Join(after, " ") != strings.Join(udpBefore, " ") {
		t.Fatalf("UDP flows changed targets across the restart:\nbefore %v\nafter  %v", udpBefore, after)
	}
	t.Logf("after the restart: the pinned links moved to the new programs; %d of %d new connections reached the target registered since", cHits.Load(), opened)

	// A clean stop removes the pins; the programs detach.
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(40 * time.Second):
		t.Fatal("l4lb did not stop on SIGTERM")
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Fatalf("pins left after a clean stop: %v", err)
	}
}
