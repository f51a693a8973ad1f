package bgp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/l4lb/l4lb/lb/events"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// A router for the speaker to talk to: another GoBGP, on loopback, that
// accepts a session from 127.0.0.2 and keeps what it hears. (Linux only:
// there every address of 127.0.0.0/8 is the host's own.)
type router struct {
	b    *server.BgpServer
	port uint16
}

func newRouter(t *testing.T) *router { return newRouterOn(t, "127.0.0.1") }

// newRouterOn is a router on addr (127.0.0.0/8).
func newRouterOn(t *testing.T, addr string) *router {
	t.Helper()
	ln, err := net.Listen("tcp", addr+":0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	b := server.NewBgpServer()
	go b.Serve()
	ctx := context.Background()
	if err := b.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: 64513, RouterId: addr, ListenPort: int32(port), ListenAddresses: []string{addr},
	}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.StopBgp(ctx, &api.StopBgpRequest{}); b.Stop() })
	if err := b.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: "127.0.0.2", PeerAsn: 64512},
		Transport: &api.Transport{PassiveMode: true},
		Timers:    &api.Timers{Config: &api.TimersConfig{HoldTime: 3, KeepaliveInterval: 1}},
	}}); err != nil {
		t.Fatal(err)
	}
	return &router{b: b, port: port}
}

// routes is what the router has heard: each prefix and its communities.
func (r *router) routes(t *testing.T) map[string][]uint32 {
	t.Helper()
	out := map[string][]uint32{}
	err := r.b.ListPath(context.Background(), &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: v4}, func(d *api.Destination) {
		for _, p := range d.Paths {
			var comms []uint32
			for _, a := range p.Pattrs {
				var c api.CommunitiesAttribute
				if a.UnmarshalTo(&c) == nil {
					comms = c.Communities
				}
			}
			out[d.Prefix] = comms
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type zones struct {
	mu      sync.Mutex
	healthy map[string]bool
	asked   int // how often the speaker read zone health
}

func (z *zones) set(zone string, ok bool) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.healthy[zone] = ok
}

func (z *zones) get(zone string) (bool, string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.asked++
	return z.healthy[zone], "no healthy target"
}

// rounds is how often the speaker has read zone health.
func (z *zones) rounds() int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.asked
}

func speakerConfig(port uint16, announce ...config.BGPZone) *config.BGP {
	return &config.BGP{
		LocalAS: 64512, RouterID: netip.MustParseAddr("127.0.0.2"),
		Peers: []config.BGPPeer{{Address: netip.MustParseAddr("127.0.0.1"), AS: 64513, Port: port, HoldTime: 3 * time.Second,
			LocalAddress: netip.MustParseAddr("127.0.0.2")}},
		Announce:      announce,
		WithdrawGrace: 50 * time.Millisecond,
	}
}

var (
	zoneA = config.BGPZone{Zone: "a", Prefixes: []netip.Prefix{netip.MustParsePrefix("198.18.10.1/32")}, Communities: []uint32{64512<<16 | 100}}
	zoneB = config.BGPZone{Zone: "b", Prefixes: []netip.Prefix{netip.MustParsePrefix("198.18.11.0/24")}}
)

// A zone's prefixes reach the router, with their communities, while the
// zone is healthy, and leave it while it is not; Leave withdraws them all
// and Rejoin brings back the healthy ones; the status and the metrics say
// so; Stop ends the session, and the router forgets the routes.
func TestSpeakerAnnouncesWhileHealthy(t *testing.T) {
	r := newRouter(t)
	z := &zones{healthy: map[string]bool{"a": true, "b": false}}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	ev := events.New(0)
	s := New(speakerConfig(r.port, zoneA, zoneB), Options{Logger: zaptest.NewLogger(t), Metrics: m, Healthy: z.get, Every: 20 * time.Millisecond, Events: ev})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	heard := func(want ...string) func() bool {
		return func() bool {
			got := r.routes(t)
			return len(got) == len(want) && !slices.ContainsFunc(want, func(p string) bool { _, ok := got[p]; return !ok })
		}
	}
	waitFor(t, "zone a's prefix at the router", heard("198.18.10.1/32"))
	if got := r.routes(t)["198.18.10.1/32"]; !slices.Equal(got, zoneA.Communities) {
		t.Errorf("communities %v, want %v", got, zoneA.Communities)
	}
	st := s.Status()
	if len(st.Peers) != 1 || st.Peers[0].State != "established" || st.Peers[0].HoldTime != 3 {
		t.Errorf("peers %+v: want one, established, hold time 3", st.Peers)
	}
	if len(st.Routes) != 2 || !st.Routes[0].Announced || st.Routes[0].Communities[0] != "64512:100" || st.Routes[1].Announced || st.Routes[1].Why != "zone unhealthy: no healthy target" {
		t.Errorf("routes %+v", st.Routes)
	}
	waitFor(t, "l4lb_bgp_session_up 1", func() bool { return testutil.ToFloat64(m.Gauge(metrics.BGPSessionUp, "127.0.0.1")) == 1 })

	z.set("b", true)
	waitFor(t, "zone b's prefix too", heard("198.18.10.1/32", "198.18.11.0/24"))
	z.set("a", false)
	waitFor(t, "zone a's prefix withdrawn", heard("198.18.11.0/24"))
	if n := testutil.ToFloat64(m.Gauge(metrics.BGPAnnouncedRoutes)); n != 1 {
		t.Errorf("l4lb_bgp_announced_routes %v, want 1", n)
	}
	z.set("a", true)
	waitFor(t, "zone a back", heard("198.18.10.1/32", "198.18.11.0/24"))

	s.Leave(context.Background())
	waitFor(t, "everything withdrawn on Leave", heard())
	if st := s.Status(); !st.Leaving || st.Routes[0].Why != "leaving: withdrawn before the drain" || st.Peers[0].State != "established" {
		t.Errorf("after Leave: %+v; want leaving, the session kept", st)
	}
	s.Rejoin()
	waitFor(t, "back after Rejoin", heard("198.18.10.1/32", "198.18.11.0/24"))

	s.Stop()
	waitFor(t, "the router forgets the routes when the session closes", heard())
	if up := testutil.ToFloat64(m.Gauge(metrics.BGPSessionUp, "127.0.0.1")); up != 0 {
		t.Errorf("l4lb_bgp_session_up %v after Stop, want 0", up)
	}
	// The events say the same: the session came up, and each route was
	// announced and withdrawn, in order.
	var said []string
	for _, e := range ev.Since(0, time.Time{}) {
		said = append(said, e.Kind+" "+e.Object+" "+strings.SplitN(e.Detail, ":", 2)[0])
	}
	if !slices.Contains(said, "bgp_session 127.0.0.1 up") {
		t.Fatalf("events %q lack the session coming up", said)
	}
	for _, want := range []string{"bgp_route 198.18.10.1/32 announced (zone a)", "bgp_route 198.18.11.0/24 announced (zone b)",
		"bgp_route 198.18.10.1/32 withdrawn", "bgp_route 198.18.10.1/32 announced (zone a)"} {
		i := slices.Index(said, want)
		if i < 0 {
			t.Fatalf("events %q lack %q in order", said, want)
		}
		said = said[i+1:]
	}
}

// With zone health read only now and then, a change the registry reports
// has it read at once: a zone whose last target left is withdrawn then.
func TestSpeakerReadsHealthOnChange(t *testing.T) {
	r := newRouter(t)
	z := &zones{healthy: map[string]bool{"a": true}}
	changed := make(chan struct{}, 1)
	s := New(speakerConfig(r.port, zoneA), Options{Logger: zaptest.NewLogger(t), Metrics: metrics.New(prometheus.NewRegistry()), Healthy: z.get, Every: time.Hour, Changed: changed})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	// The first read, at start, came before the session: it announced
	// into the speaker's table, which the session then sends.
	waitFor(t, "zone a's prefix", func() bool { _, ok := r.routes(t)["198.18.10.1/32"]; return ok })
	z.set("a", false)
	changed <- struct{}{}
	waitFor(t, "zone a withdrawn on the change, not at the next hourly read", func() bool { return len(r.routes(t)) == 0 })
}

// Stop ends the speaker's loop even when the loop's ticker fires as it
// stops: the loop must not ask a stopped server (a nil one) for its peers.
// A loop that did panicked inside GoBGP and never ended, and Stop waited
// for it forever.
func TestSpeakerStopsWhileTicking(t *testing.T) {
	z := &zones{healthy: map[string]bool{"a": true}}
	s := New(speakerConfig(1, zoneA), Options{Logger: zap.NewNop(), Metrics: metrics.New(prometheus.NewRegistry()), Healthy: z.get, Every: time.Millisecond})
	for range 40 {
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		for n := z.rounds(); z.rounds() < n+3; {
			time.Sleep(time.Millisecond)
		}
		stopped := make(chan struct{})
		go func() { s.Stop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(20 * time.Second):
			t.Fatal("Stop did not return: the speaker's loop did not end")
		}
	}
}

// A reload that changes only what is announced keeps the session: the
// dropped prefix is withdrawn, the new one announced. (A change of the
// session restarts the speaker; GoBGP keeps some settings in package
// variables that a second server in one process would race on, so this
// test, with its router in the same process, does not do that.)
func TestSpeakerUpdateKeepsSession(t *testing.T) {
	r := newRouter(t)
	z := &zones{healthy: map[string]bool{"a": true, "b": true}}
	s := New(speakerConfig(r.port, zoneA), Options{Logger: zaptest.NewLogger(t), Metrics: metrics.New(prometheus.NewRegistry()), Healthy: z.get, Every: 20 * time.Millisecond})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	waitFor(t, "zone a's prefix", func() bool { _, ok := r.routes(t)["198.18.10.1/32"]; return ok })
	since := s.Status().Peers[0].Since

	if err := s.Update(speakerConfig(r.port, zoneB)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "zone b's prefix instead of a's", func() bool {
		got := r.routes(t)
		_, a := got["198.18.10.1/32"]
		_, b := got["198.18.11.0/24"]
		return !a && b
	})
	if st := s.Status(); st.Peers[0].State != "established" || !st.Peers[0].Since.Equal(since) {
		t.Errorf("the session restarted on a change of prefixes: %+v (up since %v before)", st.Peers[0], since)
	}
}

// A reload that changes one peer restarts that peer's session alone; one
// that drops a peer closes its session, and that router forgets the
// routes; the other session stays up throughout.
func TestSpeakerUpdatePeers(t *testing.T) {
	if testing.Short() {
		t.Skip("seconds of real sessions and timers; make test runs it")
	}
	r1, r2 := newRouterOn(t, "127.0.0.1"), newRouterOn(t, "127.0.0.3")
	z := &zones{healthy: map[string]bool{"a": true}}
	m := metrics.New(prometheus.NewRegistry())
	cfg := speakerConfig(r1.port, zoneA)
	second := cfg.Peers[0]
	second.Address, second.Port = netip.MustParseAddr("127.0.0.3"), r2.port
	cfg.Peers = append(cfg.Peers, second)
	s := New(cfg, Options{Logger: zaptest.NewLogger(t), Metrics: m, Healthy: z.get, Every: 20 * time.Millisecond})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	heardBy := func(r *router) func() bool { return func() bool { _, ok := r.routes(t)["198.18.10.1/32"]; return ok } }
	waitFor(t, "the route at router 1", heardBy(r1))
	waitFor(t, "the route at router 2", heardBy(r2))
	// Uptimes have a resolution of a second: let one pass, so a session
	// that restarts shows a later one.
	time.Sleep(1100 * time.Millisecond)
	before := s.Status().Peers

	changed := *cfg
	changed.Peers = slices.Clone(cfg.Peers)
	changed.Peers[1].HoldTime = 6 * time.Second
	if err := s.Update(&changed); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "peer 2's session back, restarted", func() bool {
		st := s.Status()
		return len(st.Peers) == 2 && st.Peers[1].State == "established" && st.Peers[1].Since.After(before[1].Since)
	})
	waitFor(t, "the route at router 2 again", heardBy(r2))
	if st := s.Status(); !st.Peers[0].Since.Equal(before[0].Since) || st.Peers[0].State != "established" {
		t.Errorf("peer 1's session restarted on a change of peer 2: %+v, up since %v before", st.Peers[0], before[0].Since)
	}

	dropped := *cfg
	dropped.Peers = cfg.Peers[:1]
	if err := s.Update(&dropped); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "router 2 forgets the route", func() bool { return !heardBy(r2)() })
	st := s.Status()
	if len(st.Peers) != 1 || st.Peers[0].Address != "127.0.0.1" || !st.Peers[0].Since.Equal(before[0].Since) || !heardBy(r1)() {
		t.Errorf("after peer 2 was dropped: %+v; want peer 1 alone, its session never restarted, its route kept", st.Peers)
	}
	if up := testutil.ToFloat64(m.Gauge(metrics.BGPSessionUp, "127.0.0.3")); up != 0 {
		t.Errorf("l4lb_bgp_session_up for the dropped peer: %v, want 0", up)
	}
}

// A zone is announced the first time only once Settling says its tables
// are settled; after that, Settling no longer withdraws it.
func TestSpeakerWaitsForSettling(t *testing.T) {
	r := newRouter(t)
	z := &zones{healthy: map[string]bool{"a": true}}
	var mu sync.Mutex
	settling := "target 198.18.1.11:80 of target group web"
	s := New(speakerConfig(r.port, zoneA), Options{Logger: zaptest.NewLogger(t), Metrics: metrics.New(prometheus.NewRegistry()), Healthy: z.get,
		Settling: func(string) string { mu.Lock(); defer mu.Unlock(); return settling }, Every: 20 * time.Millisecond})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	waitFor(t, "the session up", func() bool { st := s.Status(); return len(st.Peers) == 1 && st.Peers[0].State == "established" })
	waitFor(t, "the route held back, saying why", func() bool {
		return s.Status().Routes[0].Why == "health checks settling: target 198.18.1.11:80 of target group web has not finished its first checks"
	})
	if got := r.routes(t); len(got) != 0 {
		t.Fatalf("announced while settling: %v", got)
	}
	mu.Lock()
	settling = ""
	mu.Unlock()
	waitFor(t, "the route once settled", func() bool { _, ok := r.routes(t)["198.18.10.1/32"]; return ok })
	mu.Lock()
	settling = "a target added later"
	mu.Unlock()
	from := z.rounds()
	waitFor(t, "three more rounds of the speaker's loop", func() bool { return z.rounds() >= from+3 })
	if st := s.Status(); !st.Routes[0].Announced {
		t.Fatalf("a settled zone was withdrawn for a new target: %+v", st.Routes[0])
	}
}

// Connections from an address that is no peer are refused by GoBGP; l4lb
// counts each and logs them, one line a second at most, so a scan neither
// goes unseen nor fills the log.
func TestSpeakerCountsUnknownConnections(t *testing.T) {
	cfg := speakerConfig(1) // the peer is never reached; only the listener matters
	core, logs := observer.New(zap.InfoLevel)
	m := metrics.New(prometheus.NewRegistry())
	// The speaker listens on every address: a port free on all of them
	// when picked can still be taken (another test's outgoing connection)
	// before the speaker binds it, so a bind that finds it taken tries
	// another.
	var port int
	var s *Speaker
	for attempt := 1; ; attempt++ {
		ln, err := net.Listen("tcp4", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		port = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		cfg.ListenPort = port
		s = New(cfg, Options{Logger: zap.New(core), Metrics: m, Healthy: (&zones{healthy: map[string]bool{}}).get})
		err = s.Start()
		if err == nil {
			t.Cleanup(s.Stop)
			break
		}
		if attempt == 5 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.66")}, Timeout: 2 * time.Second}
	for range 5 {
		c, err := d.Dial("tcp", net.JoinHostPort("127.0.0.2", strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		c.Read(make([]byte, 1)) // closed by the speaker
		c.Close()
	}
	waitFor(t, "5 refused connections counted", func() bool {
		return testutil.ToFloat64(m.Counter(metrics.BGPRejectedConnections)) == 5
	})
	if n := s.Status().RejectedConnections; n != 5 {
		t.Errorf("bgp status counts %d refused connections, want 5", n)
	}
	lines := logs.FilterMessageSnippet("no configured peer").All()
	if len(lines) < 1 || len(lines) > 2 {
		t.Fatalf("%d log lines for 5 refused connections within a second or so; want 1 (2 if a second passed)", len(lines))
	}
	if got := lines[0].ContextMap()["remote"]; !strings.Contains(fmt.Sprint(got), "127.0.0.66") {
		t.Fatalf("the line names %v, not the source", got)
	}
}
