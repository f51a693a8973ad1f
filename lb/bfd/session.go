package bfd

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Config is one session.
type Config struct {
	Peer netip.Addr
	// Local is the packets' source address; invalid: the endpoint's
	// address, or the kernel's choice if the endpoint listens on all.
	Local netip.Addr
	// Interval is how often packets are sent and expected once the
	// session is Up (desired min TX and required min RX).
	Interval time.Duration
	// Multiplier is how many intervals of silence take the session down.
	Multiplier uint8
	// Auth authenticates every packet both ways; nil: none.
	Auth *Auth
}

func (c Config) check() error {
	switch {
	case !c.Peer.IsValid():
		return errors.New("bfd: no peer address")
	case c.Interval < time.Millisecond || c.Interval > time.Hour:
		return fmt.Errorf("bfd: interval %s is outside 1ms-1h", c.Interval)
	case c.Multiplier == 0:
		return errors.New("bfd: multiplier is zero")
	}
	return c.Auth.check()
}

// Status is a session as seen now.
type Status struct {
	Peer        netip.Addr
	State       State
	RemoteState State
	Diag        Diag      // why the session last changed state
	Since       time.Time // when it entered State
	// TxInterval is the agreed time between packets sent (before jitter);
	// DetectTime is how long the peer may stay silent.
	TxInterval, DetectTime time.Duration
}

// Session is one BFD session with a peer, active: it sends from the start.
type Session struct {
	e      *Endpoint
	cfg    Config
	notify func(Status)
	conn   *net.UDPConn
	rx     chan Packet
	stop   chan struct{}
	done   chan struct{}

	mu sync.Mutex
	f  *fsm
	// Authentication's sequence numbers (RFC 5880 section 6.8.1): the
	// next one sent, and the last one taken, while known.
	xmitSeq  uint32
	rcvSeq   uint32
	seqKnown bool
	lastAuth time.Time // when a packet was last taken

	counts Counts
}

func newSession(e *Endpoint, cfg Config, disc uint32, notify func(Status)) *Session {
	return &Session{e: e, cfg: cfg, notify: notify, rx: make(chan Packet, 16), stop: make(chan struct{}), done: make(chan struct{}),
		f: newFSM(disc, cfg.Interval, cfg.Multiplier, time.Now()), xmitSeq: rand.Uint32()}
}

// authenticate checks a received packet against the session's
// authentication, its sequence number included, and takes the sequence
// number when it passes. A sequence number is forgotten after twice the
// detection time without a packet taken (RFC 5880 section 6.8.1), so a
// peer that restarted is taken again.
func (s *Session) authenticate(raw []byte, p Packet) error {
	a := s.cfg.Auth
	if err := a.verify(raw, p); err != nil || !a.Enabled() {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.seqKnown && now.Sub(s.lastAuth) > 2*s.f.detectTime() && s.f.detectTime() > 0 {
		s.seqKnown = false
	}
	if s.seqKnown && !inWindow(a.Type, p.Auth.seq, s.rcvSeq, p.DetectMult) {
		return ErrAuthSequence
	}
	s.rcvSeq, s.seqKnown, s.lastAuth = p.Auth.seq, true, now
	return nil
}

// open makes the socket the session sends from: a source port from
// 49152-65535 (RFC 5881 section 4), TTL 255.
func (s *Session) open() error {
	local := s.cfg.Local
	if bound := s.e.Addr().Addr().Unmap(); !local.IsValid() && !bound.IsUnspecified() {
		local = bound // the address the peer sends to
	}
	laddr := &net.UDPAddr{} // no IP: the kernel's choice
	if local.IsValid() {
		laddr.IP = local.AsSlice()
	}
	peer := net.UDPAddrFromAddrPort(netip.AddrPortFrom(s.cfg.Peer, s.e.peerPort()))
	var err error
	for range 32 {
		laddr.Port = 49152 + rand.IntN(16384)
		if s.conn, err = net.DialUDP(udpNet(s.cfg.Peer), laddr, peer); err == nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("bfd: session with %s: %w", s.cfg.Peer, err)
	}
	if s.cfg.Peer.Is4() {
		err = ipv4.NewConn(s.conn).SetTTL(ttl)
	} else {
		err = ipv6.NewConn(s.conn).SetHopLimit(ttl)
	}
	if err != nil {
		s.conn.Close()
		return fmt.Errorf("bfd: session with %s: setting TTL 255: %w", s.cfg.Peer, err)
	}
	return nil
}

// deliver queues a received packet; a session that falls behind drops
// packets, as a lossy link would.
func (s *Session) deliver(p Packet) {
	select {
	case s.rx <- p:
	default:
	}
}

// send sends one control packet, Final set if final.
func (s *Session) send(final bool) {
	s.mu.Lock()
	p := s.f.packet()
	s.mu.Unlock()
	p.Final = final
	if final {
		p.Poll = false // never both (RFC 5880 section 6.5)
	}
	var seq uint32
	if s.cfg.Auth.Enabled() {
		// Every packet takes the next number: meticulous authentication
		// needs it, and keyed SHA1 allows it.
		s.mu.Lock()
		s.xmitSeq++
		seq = s.xmitSeq
		s.mu.Unlock()
	}
	var buf [headerLen + sha1AuthLen]byte
	s.conn.Write(p.appendAuth(buf[:0], s.cfg.Auth, seq)) // a peer not listening yet is no error
}

// jitter shortens an interval by up to a quarter (at least a tenth with a
// multiplier of 1), as RFC 5880 section 6.8.7 says.
func jitter(d time.Duration, mult uint8) time.Duration {
	spread := 0.25
	if mult == 1 {
		spread = 0.15
	}
	return time.Duration(float64(d) * (0.75 + rand.Float64()*spread))
}

// run sends periodically, applies what arrives and watches the detection
// time, until Close.
func (s *Session) run() {
	defer close(s.done)
	t := time.NewTimer(0)
	defer t.Stop()
	var nextTx time.Time
	for {
		var final bool
		s.mu.Lock()
		was := s.f.state
		s.mu.Unlock()
		select {
		case <-s.stop:
			return
		case p := <-s.rx:
			s.mu.Lock()
			final = s.f.recv(p, time.Now())
			s.mu.Unlock()
		case <-t.C:
		}
		now := time.Now()
		s.mu.Lock()
		s.f.expire(now)
		changed := s.f.state != was
		interval, deadline, mult := s.f.txInterval(), s.f.deadline(), s.f.mult
		s.mu.Unlock()
		if changed {
			s.changed()
			nextTx = now // tell the peer at once
		}
		if final {
			s.send(true)
		}
		if interval > 0 && !now.Before(nextTx) {
			s.send(false)
			nextTx = now.Add(jitter(interval, mult))
		}
		wake := nextTx
		if interval == 0 || (!deadline.IsZero() && deadline.Before(wake)) {
			wake = deadline
		}
		if wake.IsZero() {
			wake = now.Add(slowTx)
		}
		t.Reset(max(time.Until(wake), time.Millisecond))
	}
}

func (s *Session) changed() {
	st := s.Status()
	level := s.e.log.Info
	if st.State == Down && st.Diag != DiagNone {
		level = s.e.log.Warn
	}
	level("BFD session "+st.State.String(), zap.Stringer("peer", st.Peer), zap.Stringer("diag", st.Diag))
	if s.notify != nil {
		s.notify(st)
	}
}

// Update changes the interval and multiplier of a running session. The
// session stays up: a poll sequence tells the peer, as RFC 5880 section
// 6.8.3 says, and the new rates apply once it answers.
func (s *Session) Update(interval time.Duration, mult uint8) error {
	c := s.cfg
	c.Interval, c.Multiplier = interval, mult
	if err := c.check(); err != nil {
		return err
	}
	s.mu.Lock()
	s.f.update(interval, mult)
	s.mu.Unlock()
	s.send(false)
	return nil
}

// Status reports the session now.
func (s *Session) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Status{Peer: s.cfg.Peer, State: s.f.state, RemoteState: s.f.remoteSt, Diag: s.f.diag, Since: s.f.since,
		TxInterval: s.f.txInterval(), DetectTime: s.f.detectTime()}
}

// Packets are the packets received for the session, by result (the
// Result names), those never seen left out.
func (s *Session) Packets() map[string]uint64 {
	out := map[string]uint64{}
	for _, r := range Results() {
		if n := s.counts[r].Load(); n > 0 {
			out[r.String()] = n
		}
	}
	return out
}

// Close takes the session administratively down, tells the peer (a few
// times, in case one is lost) and ends it. The peer then knows the session
// was stopped on purpose, not that the path failed.
func (s *Session) Close() {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	s.f.adminDown(time.Now())
	s.mu.Unlock()
	for i := range 3 {
		if i > 0 {
			time.Sleep(10 * time.Millisecond)
		}
		s.send(false)
	}
	s.conn.Close()
	s.e.remove(s)
}
