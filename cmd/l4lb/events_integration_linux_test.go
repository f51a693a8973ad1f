//go:build integration

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/l4lb/l4lb/bench"
	"github.com/l4lb/l4lb/pkg/api"
)

// Each kind of event a node without BGP can have is driven in turn, and
// `l4lb events --follow` prints them in that order: targets turning
// healthy, a group failing open and back, a drain's start and end, a
// refused and a good reload, a zonal shift and its cancel, flow-table
// pressure, and an upgrade, after which the new process serves the old
// one's events and numbers on. (BGP's events: lb/bgp's tests.)
func TestEventsFollowEveryKind(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "events-test")
	t1, err := bench.StartTarget(bench.TargetEcho, "tcp", "127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer t1.Close()
	t2, err := bench.StartTarget(bench.TargetEcho, "tcp", "127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer t2.Close()
	udp, err := bench.StartTarget(bench.TargetEcho, "udp", "127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	a1, a2 := t1.Addr.String(), t2.Addr.String()
	pWeb, pDNS, pAdmin := freePort(t), freePort(t), freePort(t)
	good := fmt.Sprintf(`admin: {listen: "127.0.0.1:%s"}
zones: {a: [127.0.0.1]}
load_balancer: {max_flows: 8}
listeners:
  - {name: web, port: %s, target_group: web}
  - {name: dns, protocol: UDP, port: %s, target_group: dns, udp_idle_timeout: 60s}
target_groups:
  - name: web
    targets: [{address: %q}, {address: %q}]
    health_check: {protocol: TCP, interval: 200ms, timeout: 150ms, healthy_threshold: 2, unhealthy_threshold: 2}
    attributes: {deregistration_delay.timeout_seconds: "1"}
  - {name: dns, protocol: UDP, targets: [{address: %q}], health_check: {protocol: TCP, port: "%s", interval: 200ms, healthy_threshold: 2}}
`, pAdmin, pWeb, pDNS, a1, a2, udp.Addr.String(), strings.Split(a1, ":")[1])
	d := startDaemon(t, bin, pAdmin, good)

	// The follower, from the first event on.
	follow := exec.Command(bin, "events", "--follow", "-o", "json", "--admin", d.admin)
	out, _ := follow.StdoutPipe()
	follow.Stderr = os.Stderr
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { follow.Process.Kill(); follow.Wait() }()
	var mu sync.Mutex
	var seen []api.Event
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var e api.Event
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				mu.Lock()
				seen = append(seen, e)
				mu.Unlock()
			}
		}
	}()
	// mark waits until the follower printed an event of kind about object
	// whose detail holds detail, after the one marked last, and returns its
	// sequence number.
	var after0 uint64
	mark := func(kind, object, detail string) uint64 {
		t.Helper()
		var seq uint64
		defer func() { after0 = seq }()
		waitUntil(t, fmt.Sprintf("l4lb events --follow to print %s %s %q", kind, object, detail), func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, e := range seen {
				if e.Seq > after0 && e.Kind == kind && strings.Contains(e.Object, object) && strings.Contains(e.Detail, detail) {
					seq = e.Seq
					return true
				}
			}
			return false
		})
		return seq
	}
	var order []uint64
	order = append(order, mark("target_state", "web/", "initial -> healthy"))
	order = append(order, mark("target_state", "web/", "initial -> healthy"))

	// Both web targets die: unhealthy, and the group fails open; one comes
	// back: it routes to healthy targets again.
	t1.Close()
	t2.Close()
	order = append(order, mark("fail_open", "web", "0 of 2 targets healthy"))
	t1b, err := bench.StartTarget(bench.TargetEcho, "tcp", a1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer t1b.Close()
	order = append(order, mark("fail_open_end", "web", "1 of 2 targets healthy"))

	// A drain: deregistered, then gone after its 1 s delay.
	if code, _, errs := runCLI("targets", "deregister", "--admin", d.admin, "--target-group", "web", "--target", a2); code != 0 {
		t.Fatalf("deregister: exit %d: %s", code, errs)
	}
	order = append(order, mark("drain_start", "web/"+a2, "deregistration delay 1s"))
	order = append(order, mark("drain_end", "web/"+a2, "deregistered"))

	// A refused reload, then a good one.
	d.write("listeners: [{name: web, port: 0}]\n")
	if code, _, _ := runCLI("reload", "--admin", d.admin); code == 0 {
		t.Fatal("a bad config was not refused")
	}
	order = append(order, mark("reload", "config", "refused"))
	d.write(good)
	if code, _, errs := runCLI("reload", "--admin", d.admin); code != 0 {
		t.Fatalf("reload: exit %d: %s", code, errs)
	}
	order = append(order, mark("reload", "config", "success"))

	// A zonal shift and its cancel.
	if code, _, errs := runCLI("zones", "shift", "--away-from", "a", "--expires-in", "1h", "--admin", d.admin); code != 0 {
		t.Fatalf("zones shift: exit %d: %s", code, errs)
	}
	order = append(order, mark("zonal_shift", "a", "until"))
	if code, _, errs := runCLI("zones", "cancel", "a", "--admin", d.admin); code != 0 {
		t.Fatalf("zones cancel: exit %d: %s", code, errs)
	}
	order = append(order, mark("zonal_shift_end", "a", "cancelled"))

	// Flow-table pressure: 8 flows fill the UDP table; once they are idle,
	// 8 more evict them.
	sendFrom := func(n int) {
		for range n {
			c, err := net.Dial("udp", "127.0.0.1:"+pDNS)
			if err != nil {
				t.Fatal(err)
			}
			c.Write([]byte("x"))
			c.SetReadDeadline(time.Now().Add(time.Second))
			c.Read(make([]byte, 16))
			c.Close()
		}
	}
	sendFrom(8)
	time.Sleep(600 * time.Millisecond) // past the idle a flow needs to be evicted
	sendFrom(8)
	order = append(order, mark("flow_pressure", "dns", "evicting"))

	// An upgrade: the old process says it hands over; the new one takes its
	// events over and says it serves.
	old := d.running().PID
	u := d.upgrade()
	order = append(order, mark("upgrade", "process", fmt.Sprintf("pid %d hands over", old)))
	waitUntil(t, "the new process on the admin API", func() bool { return d.running().PID == u.NewPID })
	code, listing, errs := runCLI("events", "--admin", d.admin, "-o", "json")
	var after []api.Event
	if code != 0 || json.Unmarshal([]byte(listing), &after) != nil {
		t.Fatalf("l4lb events after the upgrade: exit %d: %s%s", code, listing, errs)
	}
	last := after[len(after)-1]
	if after[0].Seq != 1 || last.Kind != "upgrade" || !strings.Contains(last.Detail, fmt.Sprintf("pid %d serves, taking over from pid %d", u.NewPID, old)) || last.Seq <= order[len(order)-1] {
		t.Fatalf("the new process's events: the first is %+v, the last %+v; want the old process's from 1 on, then its own", after[0], last)
	}
	order = append(order, last.Seq)
	for i := 1; i < len(order); i++ {
		if order[i] <= order[i-1] {
			t.Fatalf("events out of order: sequence numbers %v", order)
		}
	}
	mu.Lock()
	n := len(seen)
	mu.Unlock()
	t.Logf("l4lb events --follow printed %d events; every kind driven came in order (sequence numbers %v); after the upgrade the new process listed the old one's events and its own (%d in all)", n, order, len(after))
	syscall.Kill(u.NewPID, syscall.SIGTERM)
}
