package bgp

import (
	"errors"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"
	"golang.org/x/net/ipv4"

	"github.com/l4lb/l4lb/lb/bfd"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// bfdRouter is the router's side of a BFD session, kept minimal: it
// answers what it hears (Down with Init, Init or Up with Up, a Poll with
// Final) every 50 ms from 127.0.0.1, until it is told to fall silent, as a
// router that lost the path would.
type bfdRouter struct {
	silent atomic.Bool
	heard  atomic.Int32 // the last state the speaker sent
	polled atomic.Bool  // the speaker polled since the last answer
	finals atomic.Int32 // Finals sent
}

func newBFDRouter(t *testing.T) *bfdRouter {
	t.Helper()
	in, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: bfd.Port})
	if err != nil {
		t.Fatal(err)
	}
	out, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 49999}, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: bfd.Port})
	if err != nil {
		t.Fatal(err)
	}
	ipv4.NewConn(out).SetTTL(255)
	r := &bfdRouter{}
	var yours atomic.Uint32
	done := make(chan struct{})
	t.Cleanup(func() { in.Close(); out.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			n, err := in.Read(buf)
			if err != nil {
				return
			}
			if p, err := bfd.Parse(buf[:n]); err == nil {
				yours.Store(p.MyDiscriminator)
				r.heard.Store(int32(p.State))
				if p.Poll {
					r.polled.Store(true)
				}
			}
		}
	}()
	go func() {
		for range time.Tick(50 * time.Millisecond) {
			if r.silent.Load() {
				continue
			}
			state := bfd.Up
			if bfd.State(r.heard.Load()) == bfd.Down {
				state = bfd.Init
			}
			p := bfd.Packet{State: state, DetectMult: 3, MyDiscriminator: 4242, YourDiscriminator: yours.Load(), DesiredMinTx: 50000, RequiredMinRx: 50000,
				Final: r.polled.Swap(false)}
			if p.Final {
				r.finals.Add(1)
			}
			if _, err := out.Write(p.Append(nil)); errors.Is(err, net.ErrClosed) {
				return
			}
		}
	}()
	return r
}

// With bfd on a peer, the speaker runs a BFD session beside the BGP one:
// the status and l4lb_bfd_session_up show it up; when the router falls
// silent the session goes down within the detection time and the BGP
// session is reset, rather than held until the hold time; when the router
// speaks again both come back.
func TestSpeakerBFD(t *testing.T) {
	if testing.Short() {
		t.Skip("seconds of real sessions and timers; make test runs it")
	}
	r := newRouter(t)
	peer := newBFDRouter(t)
	z := &zones{healthy: map[string]bool{"a": true}}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	cfg := speakerConfig(r.port, zoneA)
	cfg.Peers[0].BFD = config.BFD{Interval: 50 * time.Millisecond, Multiplier: 3}
	s := New(cfg, Options{Logger: zaptest.NewLogger(t), Metrics: m, Healthy: z.get, Every: 20 * time.Millisecond})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	bfdState := func() string {
		st := s.Status()
		if len(st.Peers) != 1 || st.Peers[0].BFD == nil {
			return ""
		}
		return st.Peers[0].BFD.State
	}
	waitFor(t, "the BFD session up", func() bool { return bfdState() == "up" })
	waitFor(t, "the route at the router", func() bool { return len(r.routes(t)) == 1 })
	if up := testutil.ToFloat64(m.Gauge(metrics.BFDSessionUp, "127.0.0.1")); up != 1 {
		t.Errorf("l4lb_bfd_session_up %v, want 1", up)
	}
	if b := s.Status().Peers[0].BFD; b.DetectTimeMS != 150 || b.TxIntervalMS != 50 {
		t.Errorf("BFD status %+v: want tx 50 ms, detect 150 ms", b)
	}

	peer.silent.Store(true)
	start := time.Now()
	waitFor(t, "the BFD session down", func() bool { return bfdState() == "down" })
	took := time.Since(start)
	if b := s.Status().Peers[0].BFD; b.Diagnostic != "control detection time expired" {
		t.Errorf("BFD status %+v: want the detection time expired", b)
	}
	waitFor(t, "the BGP session reset", func() bool { return s.Status().Peers[0].State != "established" })
	t.Logf("the router fell silent: BFD down after %v, and the BGP session reset (hold time 3s)", took.Round(time.Millisecond))

	peer.silent.Store(false)
	waitFor(t, "the BFD session up again", func() bool { return bfdState() == "up" })
	waitFor(t, "the BGP session established again", func() bool { return s.Status().Peers[0].State == "established" })
	waitFor(t, "the route back at the router", func() bool { return len(r.routes(t)) == 1 })

	// A reload that changes bfd alone keeps both sessions: the BFD one
	// takes the new interval by a poll sequence. (BGP uptimes have a
	// resolution of a second: let one pass.)
	time.Sleep(1100 * time.Millisecond)
	before := s.Status().Peers[0]
	slower := *cfg
	slower.Peers = slices.Clone(cfg.Peers)
	slower.Peers[0].BFD.Interval = 100 * time.Millisecond
	finals := peer.finals.Load()
	if err := s.Update(&slower); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the BFD session up with the new interval", func() bool {
		b := s.Status().Peers[0].BFD
		return b != nil && b.State == "up" && b.DetectTimeMS == 300 && b.TxIntervalMS == 100 && peer.finals.Load() > finals
	})
	if st := s.Status().Peers[0]; st.State != "established" || !st.Since.Equal(before.Since) || !st.BFD.Since.Equal(before.BFD.Since) {
		t.Errorf("sessions after a change of bfd alone: %+v (BFD %+v), up since %v (BFD %v) before; want both kept", st, st.BFD, before.Since, before.BFD.Since)
	}

	// Stop takes BFD administratively down: the router hears that it was
	// stopped on purpose.
	s.Stop()
	waitFor(t, "admin-down at the router", func() bool { return bfd.State(peer.heard.Load()) == bfd.AdminDown })
	if up := testutil.ToFloat64(m.Gauge(metrics.BFDSessionUp, "127.0.0.1")); up != 0 {
		t.Errorf("l4lb_bfd_session_up %v after Stop, want 0", up)
	}
}
