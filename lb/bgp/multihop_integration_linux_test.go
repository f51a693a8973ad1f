//go:build integration

package bgp

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/l4lb/l4lb/internal/netnstest"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// The multihop test's topology: the node and BIRD two hops apart, with a
// plain router (forwarding, no BGP) between them.
//
//	node 198.18.30.2 (n0) -- (m0) 198.18.30.1 mid 198.18.31.1 (m1) -- (r0) 198.18.31.2 BIRD
const (
	mhNode   = "198.18.30.2"
	mhMid0   = "198.18.30.1"
	mhMid1   = "198.18.31.1"
	mhRouter = "198.18.31.2"
	mhPrefix = "198.18.40.1/32"
)

// A peer two hops away (multihop: 2): the BGP session crosses the router
// in between (TTL 2, not 1), and BFD runs in its multihop mode (RFC 5883,
// port 4784), taking BIRD's packets, which arrive with TTL 254, where a
// single-hop session takes only 255. When the path between them fails
// silently, BIRD drops the node's route within BFD's detection time
// (300 ms), not the hold time (9 s); when it is back, so is the route.
func TestMultihopAgainstBIRD(t *testing.T) {
	if netnstest.Inside("L4LB_MULTIHOP_NODE") {
		multihopNode(t)
		return
	}
	ipBin := netnstest.IP(t)
	netnstest.Need(t, "bird", "bird2")
	node, mid, rtr := netnstest.New(t, "mh-node"), netnstest.New(t, "mh-mid"), netnstest.New(t, "mh-rtr")
	run := func(args ...string) { t.Helper(); netnstest.Run(t, args...) }
	run("link", "add", "n0", "netns", node, "type", "veth", "peer", "m0", "netns", mid)
	run("link", "add", "m1", "netns", mid, "type", "veth", "peer", "r0", "netns", rtr)
	for _, a := range [][3]string{{node, "n0", mhNode}, {mid, "m0", mhMid0}, {mid, "m1", mhMid1}, {rtr, "r0", mhRouter}} {
		run("-n", a[0], "addr", "add", a[2]+"/24", "dev", a[1])
		run("-n", a[0], "link", "set", a[1], "up")
	}
	run("-n", node, "route", "add", "default", "via", mhMid0)
	run("-n", rtr, "route", "add", "default", "via", mhMid1)
	if out, err := exec.Command(ipBin, "netns", "exec", mid, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("forwarding on the router in between: %v\n%s", err, out)
	}

	conf := fmt.Sprintf(`router id %[1]s;
protocol device { scan time 1; }
protocol bfd {
	multihop { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };
}
protocol static {
	ipv4;
	route 198.18.30.0/24 via %[2]s;
}
protocol bgp node {
	local %[1]s as 64513;
	neighbor %[3]s as 64512;
	multihop 2;
	hold time 9;
	keepalive time 3;
	connect retry time 1;
	error wait time 1, 2;
	bfd on;
	ipv4 { import all; export none; };
}
`, mhRouter, mhMid1, mhNode)
	ctl := netnstest.BIRD(t, rtr, t.TempDir(), conf)
	out := netnstest.RerunIn(t, node, "L4LB_MULTIHOP_NODE", "MH_BIRD_CTL="+ctl, "MH_MID="+mid)
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "multihop_integration") || strings.Contains(line, mhNode+" ") {
			t.Log(strings.TrimSpace(line))
		}
	}
}

// birdc asks the BIRD of the multihop test, whose control socket is on the
// file system, so any namespace reaches it.
func birdc(t *testing.T, args ...string) string {
	t.Helper()
	out, _ := exec.Command("birdc", append([]string{"-s", os.Getenv("MH_BIRD_CTL")}, args...)...).CombinedOutput()
	return string(out)
}

// multihopNode is the node's side, run in its namespace.
func multihopNode(t *testing.T) {
	cfg := &config.BGP{
		LocalAS: 64512, RouterID: netip.MustParseAddr(mhNode),
		Peers: []config.BGPPeer{{Address: netip.MustParseAddr(mhRouter), AS: 64513, Port: 179, HoldTime: 9 * time.Second,
			LocalAddress: netip.MustParseAddr(mhNode), Multihop: 2, BFD: config.BFD{Interval: 100 * time.Millisecond, Multiplier: 3}}},
		Announce:      []config.BGPZone{{Zone: "a", Prefixes: []netip.Prefix{netip.MustParsePrefix(mhPrefix)}}},
		WithdrawGrace: 50 * time.Millisecond,
	}
	z := &zones{healthy: map[string]bool{"a": true}}
	s := New(cfg, Options{Logger: zaptest.NewLogger(t), Metrics: metrics.New(prometheus.NewRegistry()), Healthy: z.get, Every: 20 * time.Millisecond})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the node's status: %+v\nBIRD:\n%s\n%s", s.Status(), birdc(t, "show", "protocols", "all", "node"), birdc(t, "show", "bfd", "sessions"))
		}
	})
	up := func() bool {
		p := s.Status().Peers[0]
		return p.State == "established" && p.BFD != nil && p.BFD.State == "up" &&
			strings.Contains(birdc(t, "show", "route", "for", mhPrefix), mhPrefix)
	}
	waitFor(t, "the BGP and BFD sessions up across the router in between, and the route at BIRD", up)
	if b := s.Status().Peers[0].BFD; !b.Multihop || b.DetectTimeMS != 300 {
		t.Fatalf("BFD status %+v: want multihop, detect 300 ms", b)
	}
	sessions := birdc(t, "show", "bfd", "sessions")
	if !strings.Contains(sessions, mhNode) || !strings.Contains(sessions, "Up") {
		t.Fatalf("BIRD's BFD sessions:\n%s", sessions)
	}
	t.Logf("multihop_integration: BGP and BFD up two hops away; BIRD's BFD sessions:\n%s", sessions)

	// The path fails silently: the router in between loses its link to
	// BIRD, and neither end hears a word.
	cut := time.Now()
	netnstest.Run(t, "-n", os.Getenv("MH_MID"), "link", "set", "m1", "down")
	waitFor(t, "the route gone at BIRD", func() bool { return !strings.Contains(birdc(t, "show", "route", "for", mhPrefix), mhPrefix) })
	gone := time.Since(cut)
	waitFor(t, "the BFD session down at the node", func() bool {
		b := s.Status().Peers[0].BFD
		return b != nil && b.State == "down"
	})
	t.Logf("multihop_integration: the path failed silently: BIRD dropped the route after %v, the node's BFD session went down after %v (detection time 300ms, hold time 9s)",
		gone.Round(time.Millisecond), time.Since(cut).Round(time.Millisecond))
	if gone > 3*time.Second {
		t.Errorf("BIRD dropped the route %v after the path failed; want BFD's 300 ms detection time, well below the 9 s hold time", gone)
	}

	netnstest.Run(t, "-n", os.Getenv("MH_MID"), "link", "set", "m1", "up")
	back := time.Now()
	waitFor(t, "the sessions and the route back", up)
	t.Logf("multihop_integration: the path back: the route at BIRD again after %v", time.Since(back).Round(time.Millisecond))
}
