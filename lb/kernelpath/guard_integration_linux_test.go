//go:build integration

package kernelpath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/l4lb/l4lb/internal/netnstest"
)

// The guard in a network namespace of the test's own (its rules would
// otherwise land in this host's ruleset): while a DSR front's listener
// holds its address, its flows pass; once nothing holds it, as after a
// crash, their packets are dropped rather than answered with a reset or a
// port unreachable, while a front that is not DSR is refused as ever.
func TestGuardInNamespace(t *testing.T) {
	if netnstest.Inside("L4LB_GUARD_NETNS") {
		testGuard(t)
		return
	}
	out := netnstest.Rerun(t, "L4LB_GUARD_NETNS", "198.18.99.1/32", "2001:db8::1/128")
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "guard_integration") || strings.Contains(line, " dport ") {
			t.Log(strings.TrimSpace(line))
		}
	}
}

func testGuard(t *testing.T) {
	v4 := netip.MustParseAddrPort("198.18.99.1:9000")
	v6 := netip.MustParseAddrPort("[2001:db8::1]:9000")
	nat := netip.MustParseAddrPort("198.18.99.1:9001")
	self := os.Getpid()
	tcp, err := installGuard([]Front{{VIP: v4, DSR: true}, {VIP: v6, DSR: true}, {VIP: nat}}, 6, self)
	if err != nil {
		t.Fatal(err)
	}
	udp, err := installGuard([]Front{{VIP: v4, DSR: true}}, 17, self)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{
		fmt.Sprintf("tcp 198.18.99.1:9000 pid %d", self): 2, fmt.Sprintf("tcp [2001:db8::1]:9000 pid %d", self): 2,
		fmt.Sprintf("udp 198.18.99.1:9000 pid %d", self): 2,
	}
	if got := guardRules(t); !sameCounts(got, want) {
		t.Fatalf("guard rules: %v; want %v: 2 for each DSR front", got, want)
	}
	if out, err := exec.Command("nft", "list", "chain", "inet", guardTable, guardChain).CombinedOutput(); err == nil {
		t.Logf("the guard, as nft lists it:\n%s", out)
	}

	// l4lb's listeners hold the addresses: a flow passes the guard.
	for _, vip := range []netip.AddrPort{v4, v6} {
		ln, err := net.Listen("tcp", vip.String())
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			if c, err := ln.Accept(); err == nil {
				c.Write([]byte("hello"))
				c.Close()
			}
		}()
		c, err := net.DialTimeout("tcp", vip.String(), 2*time.Second)
		if err != nil {
			t.Fatalf("%s with its listener: %v", vip, err)
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		b := make([]byte, 5)
		if _, err := c.Read(b); err != nil || string(b) != "hello" {
			t.Fatalf("%s with its listener: read %q, %v", vip, b, err)
		}
		c.Close()
		ln.Close()
	}

	// Nothing holds them (l4lb is gone): the SYN is dropped, not reset,
	// and a UDP datagram gets no port unreachable.
	for _, vip := range []netip.AddrPort{v4, v6} {
		_, err := net.DialTimeout("tcp", vip.String(), 300*time.Millisecond)
		if !isTimeout(err) {
			t.Errorf("%s with no listener: %v; want the SYN dropped (a timeout)", vip, err)
		}
	}
	if err := udpUnanswered(v4); err != nil {
		t.Error(err)
	}
	if _, err := net.DialTimeout("tcp", nat.String(), time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("%s, not DSR: %v; want refused as ever", nat, err)
	}
	drops := guardDrops(t)
	for _, key := range []string{"tcp " + v4.String(), "tcp " + v6.String(), "udp " + v4.String()} {
		if drops[key] == 0 {
			t.Errorf("the guard's drop rule for %s counted nothing: %v", key, drops)
		}
	}
	t.Logf("guard_integration: with no listener, TCP to %s and %s timed out and UDP got no port unreachable; %s (not DSR) was refused", v4, v6, nat)

	// A process that takes the fronts over (an upgrade, a restart after a
	// crash) replaces their rules, and those of processes that are gone.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	other := netip.MustParseAddrPort("198.18.99.1:9100")
	if _, err := installGuard([]Front{{VIP: other, DSR: true}}, 6, dead.Process.Pid); err != nil {
		t.Fatal(err)
	}
	next, err := installGuard([]Front{{VIP: v4, DSR: true}}, 6, 1) // pid 1: alive, and not this process
	if err != nil {
		t.Fatal(err)
	}
	got := guardRules(t)
	delete(want, fmt.Sprintf("tcp 198.18.99.1:9000 pid %d", self))
	want["tcp 198.18.99.1:9000 pid 1"] = 2
	if !sameCounts(got, want) {
		t.Fatalf("after a new process took tcp %s: %v; want %v (the gone process's %s dropped)", v4, got, want, other)
	}

	// Stopping removes a process's own rules of its protocol only.
	if err := tcp.remove(); err != nil {
		t.Fatal(err)
	}
	delete(want, fmt.Sprintf("tcp [2001:db8::1]:9000 pid %d", self))
	if got := guardRules(t); !sameCounts(got, want) {
		t.Fatalf("after the first process's TCP forwarder stopped: %v; want %v", got, want)
	}
	if err := udp.remove(); err != nil {
		t.Fatal(err)
	}
	if err := next.remove(); err != nil {
		t.Fatal(err)
	}
	if got := guardRules(t); len(got) != 0 {
		t.Fatalf("rules left after every guard was removed: %v", got)
	}
	// A process with no DSR front writes nothing, but clears what a gone
	// one left (a listener that is DSR no more).
	if _, err := installGuard([]Front{{VIP: other, DSR: true}}, 6, dead.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if g, err := installGuard([]Front{{VIP: nat}}, 6, self); g != nil || err != nil {
		t.Fatalf("a guard with no DSR front: %+v, %v", g, err)
	}
	if got := guardRules(t); len(got) != 0 {
		t.Fatalf("rules left by a gone process, after a start with no DSR front: %v", got)
	}
	if _, err := net.DialTimeout("tcp", v4.String(), time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("%s with no guard and no listener: %v; want refused", v4, err)
	}
}

// chainRules lists the rules in the guard's chain.
func chainRules(t *testing.T) []*nftables.Rule {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tbl := &nftables.Table{Family: nftables.TableFamilyINet, Name: guardTable}
	rules, err := c.GetRules(tbl, &nftables.Chain{Table: tbl, Name: guardChain})
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

// guardRules counts the guard's rules by their comment's key and process.
func guardRules(t *testing.T) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, r := range chainRules(t) {
		key, pid, ok := parseGuardComment(r.UserData)
		if !ok {
			t.Fatalf("a rule in the guard's chain without a guard comment: %+v", r)
		}
		n[fmt.Sprintf("%s pid %d", key, pid)]++
	}
	return n
}

// guardDrops reads the packet counters of the guard's drop rules, by key.
func guardDrops(t *testing.T) map[string]uint64 {
	t.Helper()
	n := map[string]uint64{}
	for _, r := range chainRules(t) {
		key, _, _ := parseGuardComment(r.UserData)
		for _, e := range r.Exprs {
			if ctr, ok := e.(*expr.Counter); ok {
				n[key] += ctr.Packets
			}
		}
	}
	return n
}

func sameCounts(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// udpUnanswered sends a datagram to vip, where nothing listens, and
// expects neither an answer nor a port unreachable (which a connected
// socket reads as ECONNREFUSED).
func udpUnanswered(vip netip.AddrPort) error {
	c, err := net.Dial("udp", vip.String())
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(300 * time.Millisecond))
	for range 2 {
		c.Write([]byte("ping"))
		if _, err := c.Read(make([]byte, 16)); !isTimeout(err) {
			return fmt.Errorf("UDP to %s with no listener: %v; want no answer and no port unreachable", vip, err)
		}
	}
	return nil
}
