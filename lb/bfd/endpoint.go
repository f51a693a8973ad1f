package bfd

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Port is where single-hop control packets go (RFC 5881 section 4), and
// MultihopPort where multihop ones go (RFC 5883 section 5).
const (
	Port         = 3784
	MultihopPort = 4784
)

// ttl is what packets are sent with. Single hop, it is the only TTL (hop
// limit) accepted: a packet from further away than one hop cannot have it
// (RFC 5881 section 5, GTSM). Multihop, GTSM cannot apply, and peers send
// with any TTL (BIRD with the system's default), so any is accepted.
const ttl = 255

// Endpoint receives the control packets of every session on one local
// address and hands each to its session.
type Endpoint struct {
	log      *zap.Logger
	conn     *net.UDPConn
	read     func(b []byte) (n, ttl int, src netip.Addr, err error)
	multihop bool // RFC 5883: sessions send to port 4784, and accept packets of any TTL

	mu     sync.Mutex
	byDisc map[uint32]*Session
	byPeer map[netip.Addr]*Session
	done   chan struct{}

	// Discarded counts received packets that were not taken: malformed,
	// for no session, of the wrong TTL, or failing authentication.
	Discarded atomic.Uint64
	// count, if not nil, hears of every packet received: the session's
	// peer (or the source when no session took it) and the result.
	count func(peer netip.Addr, r Result)
}

// Result is what became of a received packet, as metrics and status
// count it.
type Result uint8

const (
	Accepted         Result = iota // passed every check, and reached its session
	DroppedMalformed               // Parse refused it (RFC 5880 section 6.8.6)
	DroppedNoSession               // no session has its discriminator or source
	DroppedTTL                     // single hop, a TTL below 255 (RFC 5881 section 5)
	DroppedAuth                    // authentication missing, unexpected or wrong
	numResults
)

var resultNames = [numResults]string{"accepted", "malformed", "no_session", "ttl", "auth"}

func (r Result) String() string { return resultNames[r] }

// Results lists every Result, for metrics to resolve their series once.
func Results() []Result {
	return []Result{Accepted, DroppedMalformed, DroppedNoSession, DroppedTTL, DroppedAuth}
}

// Counts are a session's received packets by result.
type Counts [numResults]atomic.Uint64

func (e *Endpoint) counted(peer netip.Addr, r Result, c *Counts) {
	if r != Accepted {
		e.Discarded.Add(1)
	}
	if c != nil {
		c[r].Add(1)
	}
	if e.count != nil {
		e.count(peer, r)
	}
}

// Listen opens an endpoint on laddr (port 3784 for routers to reach it,
// or 4784 multihop; an unspecified address takes every address of its
// family). Its sessions are single hop (RFC 5881), or multihop (RFC 5883):
// they send to port 4784, and take packets whatever their TTL.
//
// count, if not nil, hears of every packet received, from the endpoint's
// goroutine.
func Listen(laddr netip.AddrPort, multihop bool, log *zap.Logger, count func(peer netip.Addr, r Result)) (*Endpoint, error) {
	if log == nil {
		log = zap.NewNop()
	}
	conn, err := net.ListenUDP(udpNet(laddr.Addr()), net.UDPAddrFromAddrPort(laddr))
	if err != nil {
		return nil, fmt.Errorf("bfd: %w", err)
	}
	e := &Endpoint{log: log, conn: conn, multihop: multihop, count: count,
		byDisc: map[uint32]*Session{}, byPeer: map[netip.Addr]*Session{}, done: make(chan struct{})}
	if laddr.Addr().Is4() {
		pc := ipv4.NewPacketConn(conn)
		err = pc.SetControlMessage(ipv4.FlagTTL, true)
		e.read = func(b []byte) (int, int, netip.Addr, error) {
			n, cm, src, err := pc.ReadFrom(b)
			return n, cmTTL(cm), addrOf(src), err
		}
	} else {
		pc := ipv6.NewPacketConn(conn)
		err = pc.SetControlMessage(ipv6.FlagHopLimit, true)
		e.read = func(b []byte) (int, int, netip.Addr, error) {
			n, cm, src, err := pc.ReadFrom(b)
			hops := -1
			if cm != nil {
				hops = cm.HopLimit
			}
			return n, hops, addrOf(src), err
		}
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("bfd: asking for the received TTL: %w", err)
	}
	go e.serve()
	return e, nil
}

func cmTTL(cm *ipv4.ControlMessage) int {
	if cm == nil {
		return -1
	}
	return cm.TTL
}

func addrOf(a net.Addr) netip.Addr {
	if u, ok := a.(*net.UDPAddr); ok {
		ap := u.AddrPort()
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

func udpNet(a netip.Addr) string {
	if a.Is4() {
		return "udp4"
	}
	return "udp6"
}

// Addr is the local address packets are received on.
func (e *Endpoint) Addr() netip.AddrPort { return e.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// serve reads until Close.
func (e *Endpoint) serve() {
	defer close(e.done)
	buf := make([]byte, 512)
	for {
		n, hops, src, err := e.read(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			e.counted(src, DroppedMalformed, nil)
			continue
		}
		p, err := Parse(buf[:n])
		if err != nil {
			e.counted(src, DroppedMalformed, nil)
			continue
		}
		s := e.session(p, src)
		switch {
		case s == nil:
			e.counted(src, DroppedNoSession, nil)
		case hops < e.minTTL():
			e.counted(src, DroppedTTL, &s.counts)
		case s.authenticate(buf[:n], p) != nil:
			e.counted(src, DroppedAuth, &s.counts)
		default:
			e.counted(src, Accepted, &s.counts)
			s.deliver(p)
		}
	}
}

// minTTL is the least TTL taken: 255 single hop, any multihop.
func (e *Endpoint) minTTL() int {
	if e.multihop {
		return 0
	}
	return ttl
}

// peerPort is where sessions send.
func (e *Endpoint) peerPort() uint16 {
	if e.multihop {
		return MultihopPort
	}
	return Port
}

// session finds a packet's session: by the discriminator it carries, or,
// before the peer knows one, by its source (RFC 5880 section 6.3).
func (e *Endpoint) session(p Packet, src netip.Addr) *Session {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.byPeer[src]
	if p.YourDiscriminator != 0 {
		s = e.byDisc[p.YourDiscriminator]
	}
	if s == nil || s.cfg.Peer != src {
		return nil
	}
	return s
}

// Close ends the endpoint; close its sessions first.
func (e *Endpoint) Close() error {
	err := e.conn.Close()
	<-e.done
	return err
}

// Add starts a session with cfg.Peer. notify, if not nil, hears every
// change of state, from the session's own goroutine.
func (e *Endpoint) Add(cfg Config, notify func(Status)) (*Session, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	cfg.Peer = cfg.Peer.Unmap()
	e.mu.Lock()
	if e.byPeer[cfg.Peer] != nil {
		e.mu.Unlock()
		return nil, fmt.Errorf("bfd: a session with %s runs already", cfg.Peer)
	}
	var disc uint32
	for disc == 0 || e.byDisc[disc] != nil {
		disc = rand.Uint32()
	}
	s := newSession(e, cfg, disc, notify)
	e.byDisc[disc], e.byPeer[cfg.Peer] = s, s
	e.mu.Unlock()
	if err := s.open(); err != nil {
		e.remove(s)
		return nil, err
	}
	go s.run()
	return s, nil
}

func (e *Endpoint) remove(s *Session) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.byDisc, s.f.local)
	delete(e.byPeer, s.cfg.Peer)
}
