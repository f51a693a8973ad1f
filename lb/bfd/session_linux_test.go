package bfd

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// side is one end of a session on loopback, with the states it reported.
type side struct {
	e      *Endpoint
	s      *Session
	states chan Status
}

func newSide(t *testing.T, local, peer string, interval time.Duration) *side {
	return newSideOn(t, local, peer, interval, false)
}

// newSideOn is newSide for a multihop session (port 4784), or not.
func newSideOn(t *testing.T, local, peer string, interval time.Duration, multihop bool) *side {
	t.Helper()
	port := uint16(Port)
	if multihop {
		port = MultihopPort
	}
	e, err := Listen(netip.AddrPortFrom(netip.MustParseAddr(local), port), multihop, nil, nil)
	if err != nil {
		t.Fatalf("cannot listen on %s:%d (another BFD daemon?): %v", local, port, err)
	}
	t.Cleanup(func() { e.Close() })
	sd := &side{e: e, states: make(chan Status, 64)}
	sd.start(t, peer, interval)
	return sd
}

func (sd *side) start(t *testing.T, peer string, interval time.Duration) {
	t.Helper()
	sd.startAuth(t, peer, interval, nil)
}

func (sd *side) startAuth(t *testing.T, peer string, interval time.Duration, auth *Auth) {
	t.Helper()
	s, err := sd.e.Add(Config{Peer: netip.MustParseAddr(peer), Interval: interval, Multiplier: 3, Auth: auth}, func(st Status) { sd.states <- st })
	if err != nil {
		t.Fatal(err)
	}
	sd.s = s
}

// await waits for the session to report state, and returns that report.
func (sd *side) await(t *testing.T, state State, within time.Duration) Status {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case st := <-sd.states:
			if st.State == state {
				return st
			}
		case <-deadline:
			t.Fatalf("session with %s: not %s after %s (now %+v)", sd.s.cfg.Peer, state, within, sd.s.Status())
		}
	}
}

// settled waits until the poll sequences have settled sd's rates: it
// sends every interval and expects the peer within three.
func settled(t *testing.T, sd *side, interval time.Duration) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for st := sd.s.Status(); st.TxInterval != interval || st.DetectTime != 3*interval; st = sd.s.Status() {
		if time.Now().After(deadline) {
			t.Fatalf("rates once up: %+v; want tx %s, detect %s", st, interval, 3*interval)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill ends a session without a word to the peer, as a crashed host would.
func (sd *side) kill() {
	close(sd.s.stop)
	<-sd.s.done
	sd.s.conn.Close()
	sd.e.remove(sd.s)
}

// Two endpoints on loopback bring a session up, agree on the configured
// rate, and each notices the other's end: at once when it is stopped (it
// says so), within the detection time when it vanishes.
// (127.0.0.4 and .5: lb/bgp's tests, which may run at the same time, take
// port 3784 on .1 and .2.)
func TestSessionsOnLoopback(t *testing.T) { testSessions(t, "127.0.0.4", "127.0.0.5") }

// testSessions runs the sessions of TestSessionsOnLoopback between two
// addresses of this host.
func testSessions(t *testing.T, addrA, addrB string) {
	const interval = 50 * time.Millisecond
	a := newSide(t, addrA, addrB, interval)
	b := newSide(t, addrB, addrA, interval)
	a.await(t, Up, 5*time.Second)
	b.await(t, Up, 5*time.Second)
	settled(t, a, interval)
	// Up for a while (ten detection times): no flap on a loaded
	// machine's loopback, not even one that came back.
	time.Sleep(500 * time.Millisecond)
	for _, sd := range []*side{a, b} {
		select {
		case st := <-sd.states:
			t.Fatalf("session with %s changed state while up: %+v", sd.s.cfg.Peer, st)
		default:
		}
	}

	// b stops: a hears it is down on purpose.
	b.s.Close()
	if st := a.await(t, Down, 2*time.Second); st.Diag != DiagNeighborDown {
		t.Fatalf("a after b stopped: %+v; want diagnostic %q", st, DiagNeighborDown)
	}
	b.start(t, addrA, interval)
	a.await(t, Up, 5*time.Second)
	b.await(t, Up, 5*time.Second)
	settled(t, a, interval)

	// b vanishes: a goes down when the detection time passes.
	start := time.Now()
	b.kill()
	st := a.await(t, Down, 5*time.Second)
	took := time.Since(start)
	if st.Diag != DiagTimeExpired {
		t.Fatalf("a after b vanished: %+v; want diagnostic %q", st, DiagTimeExpired)
	}
	t.Logf("a noticed b's end %v after it (detection time 150ms)", took.Round(time.Millisecond))

	// A packet from further than one hop (TTL below 255), a malformed one
	// and one for no session are dropped and counted; the session does not
	// see them.
	c, err := net.Dial("udp", net.JoinHostPort(addrA, "3784"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before, was := a.e.Discarded.Load(), a.s.Status()
	far := Packet{State: Up, DetectMult: 3, MyDiscriminator: 99, YourDiscriminator: a.s.f.local, DesiredMinTx: 1e6, RequiredMinRx: 1e6}
	for _, b := range [][]byte{far.Append(nil), {0x20, 0, 0}} {
		c.Write(b)
	}
	for wait := time.Now().Add(5 * time.Second); time.Now().Before(wait) && a.e.Discarded.Load() < before+2; {
		time.Sleep(10 * time.Millisecond)
	}
	if n := a.e.Discarded.Load() - before; n != 2 {
		t.Fatalf("%d packets discarded, want 2", n)
	}
	if st := a.s.Status(); st != was {
		t.Fatalf("a after the stray packets: %+v, was %+v", st, was)
	}
	a.s.Close()
}

// Multihop sessions (RFC 5883) on loopback: port 4784, and packets taken
// whatever their TTL, as from a peer many hops away (BIRD sends them with
// the system's default, 64).
func TestMultihopSessionsOnLoopback(t *testing.T) {
	const interval = 50 * time.Millisecond
	a := newSideOn(t, "127.0.0.6", "127.0.0.7", interval, true)
	b := newSideOn(t, "127.0.0.7", "127.0.0.6", interval, true)
	a.await(t, Up, 5*time.Second)
	b.await(t, Up, 5*time.Second)
	settled(t, a, interval)
	if a.e.Addr().Port() != MultihopPort || a.e.peerPort() != MultihopPort {
		t.Fatalf("multihop endpoint on port %d, sending to %d; want %d", a.e.Addr().Port(), a.e.peerPort(), MultihopPort)
	}

	// b's own packet again, from b's address, as if it had crossed many
	// routers (TTL 64: taken), then a malformed one (dropped).
	c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.7:0")),
		net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.6"), MultihopPort)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := ipv4.NewConn(c).SetTTL(64); err != nil {
		t.Fatal(err)
	}
	us := uint32(interval.Microseconds())
	again := Packet{State: Up, DetectMult: 3, MyDiscriminator: b.s.f.local, YourDiscriminator: a.s.f.local, DesiredMinTx: us, RequiredMinRx: us}
	before := a.e.Discarded.Load()
	c.Write(again.Append(nil))
	c.Write([]byte{0x20, 0, 0})
	for wait := time.Now().Add(5 * time.Second); time.Now().Before(wait) && a.e.Discarded.Load() == before; {
		time.Sleep(10 * time.Millisecond)
	}
	if n := a.e.Discarded.Load() - before; n != 1 {
		t.Fatalf("%d packets discarded; want 1, the malformed one", n)
	}
	if st := a.s.Status(); st.State != Up {
		t.Fatalf("a after the packet from afar: %+v", st)
	}
	b.s.Close()
	if st := a.await(t, Down, 2*time.Second); st.Diag != DiagNeighborDown {
		t.Fatalf("a after b stopped: %+v; want diagnostic %q", st, DiagNeighborDown)
	}
	a.s.Close()
}

// Sessions authenticated with meticulous keyed SHA1 come up; a spoofed
// Down with the right discriminators and TTL 255 but no authentication, a
// replay of a real packet and one signed with another key are refused and
// counted, and the session stays up; a peer with the wrong key never
// brings one up.
func TestAuthenticatedSessions(t *testing.T) {
	const interval = 50 * time.Millisecond
	key := &Auth{Type: AuthMeticulousKeyedSHA1, KeyID: 1, Key: []byte("bfd-secret")}
	a := &side{states: make(chan Status, 64)}
	b := &side{states: make(chan Status, 64)}
	for _, sd := range []struct {
		s           *side
		local, peer string
	}{{a, "127.0.0.8", "127.0.0.9"}, {b, "127.0.0.9", "127.0.0.8"}} {
		e, err := Listen(netip.AddrPortFrom(netip.MustParseAddr(sd.local), Port), false, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		sd.s.e = e
		sd.s.startAuth(t, sd.peer, interval, key)
	}
	a.await(t, Up, 5*time.Second)
	b.await(t, Up, 5*time.Second)
	settled(t, a, interval)

	c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.9:0")),
		net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.8"), Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := ipv4.NewConn(c).SetTTL(255); err != nil {
		t.Fatal(err)
	}
	down := Packet{State: Down, Diag: DiagAdminDown, DetectMult: 3, MyDiscriminator: b.s.f.local, YourDiscriminator: a.s.f.local, DesiredMinTx: 1e6, RequiredMinRx: 1e6}
	b.s.mu.Lock()
	old := b.s.xmitSeq - 20 // a number a has seen already
	b.s.mu.Unlock()
	other := &Auth{Type: AuthMeticulousKeyedSHA1, KeyID: 1, Key: []byte("guessed")}
	before := a.s.counts[DroppedAuth].Load()
	for _, pkt := range [][]byte{down.Append(nil), down.appendAuth(nil, key, old), down.appendAuth(nil, other, old+100)} {
		c.Write(pkt)
	}
	for wait := time.Now().Add(5 * time.Second); time.Now().Before(wait) && a.s.counts[DroppedAuth].Load() < before+3; {
		time.Sleep(10 * time.Millisecond)
	}
	if n := a.s.counts[DroppedAuth].Load() - before; n != 3 {
		t.Fatalf("%d spoofed packets refused for authentication; want 3 (%v)", n, a.s.Packets())
	}
	time.Sleep(3 * interval)
	if st := a.s.Status(); st.State != Up {
		t.Fatalf("a after a spoofed Down: %+v", st)
	}
	if p := a.s.Packets(); p["accepted"] == 0 || p["auth"] != 3 {
		t.Fatalf("a's packets: %v", p)
	}
	a.s.Close()
	b.s.Close()
	// The wrong key: nothing comes up.
	a.startAuth(t, "127.0.0.9", interval, key)
	b.startAuth(t, "127.0.0.8", interval, other)
	time.Sleep(20 * interval)
	if st := a.s.Status(); st.State == Up || a.s.Packets()["auth"] == 0 {
		t.Fatalf("with the wrong key: %+v, %v", st, a.s.Packets())
	}
	a.s.Close()
	b.s.Close()
}
