package lb

import (
	"net"
	"net/netip"
	"runtime/debug"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/lb/balance"
	"github.com/l4lb/l4lb/pkg/flowhash"
	"github.com/l4lb/l4lb/pkg/proxyproto"
)

// flow is one proxied TCP connection: the client side, the target side and
// the two directions between them. Flows are pooled, and each pooled flow keeps
// the callbacks its directions bound once, so serving a flow allocates nothing
// of l4lb's own beyond what the net package does for accept and connect.
type flow struct {
	srv       *Server
	l         *listener
	id        uint64
	client    *net.TCPConn
	target    *net.TCPConn
	tgt       *target        // the registered target it reached
	src       netip.AddrPort // the client: the peer, or a trusted PROXY header's source
	checkPP   bool           // refuse a PROXY header in the first bytes (untrusted peer)
	start     time.Time
	idle      time.Duration
	parkAfter time.Duration // quiet time after which a direction parks
	aborted   atomic.Bool
	last      atomic.Int64 // unix nanoseconds of the last byte moved
	ended     atomic.Int32 // directions finished; the second one releases the flow
	halves    [2]halfFlow  // 0: client to target, 1: target to client
}

func newFlow(s *Server) any {
	f := &flow{srv: s}
	for i := range f.halves {
		f.halves[i].f = f
		f.halves[i].bind()
	}
	return f
}

func (f *flow) touch() { f.last.Store(time.Now().UnixNano()) }

func (f *flow) lastActive() time.Time { return time.Unix(0, f.last.Load()) }

// abort resets both sides (SO_LINGER 0 sends RST), ending both directions.
// Parked directions are resumed first, while their descriptors are open. It
// reports whether this call was the one that aborted the flow.
func (f *flow) abort() bool {
	if !f.aborted.CompareAndSwap(false, true) {
		return false
	}
	f.srv.parker.unpark(&f.halves[0])
	f.srv.parker.unpark(&f.halves[1])
	f.client.SetLinger(0)
	f.target.SetLinger(0)
	f.client.Close()
	f.target.Close()
	return true
}

// ProxyHeaderTimeout bounds reading a PROXY header from a trusted upstream.
const ProxyHeaderTimeout = 5 * time.Second

// resume continues a parked direction on a fresh goroutine.
func (f *flow) resume(h *halfFlow) {
	if h == &f.halves[0] {
		go f.copyClientToTarget()
	} else {
		go f.copyTargetToClient()
	}
}

// serveConn takes an accepted connection through admission, target choice and
// connect, then copies client to target itself while a second goroutine copies
// target to client.
func (s *Server) serveConn(l *listener, c *net.TCPConn) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic serving connection", zap.Any("panic", p), zap.ByteString("stack", debug.Stack()))
			c.Close()
		}
	}()
	src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	dst := c.LocalAddr().(*net.TCPAddr).AddrPort()
	checkPP := false
	if len(l.cfg.ProxyProtocolAccept) > 0 {
		if l.trusted(src.Addr()) {
			// A trusted upstream must send a header (go-proxyproto's
			// REQUIRE); the flow's client is then the header's source.
			hsrc, _, err := proxyproto.ReadHeader(c, c, time.Now().Add(ProxyHeaderTimeout))
			if err != nil {
				l.rejectPP.Inc()
				s.log.Debug("bad PROXY header", zap.String(logListener, l.cfg.Name), zap.Stringer(logClient, src), zap.Error(err))
				c.SetLinger(0)
				c.Close()
				return
			}
			if hsrc.IsValid() { // a LOCAL header keeps the peer's address
				src = hsrc
			}
		} else if peekHeader(c) {
			// Anyone else's header is refused (REJECT). Most clients send it
			// with the connection, so it is usually here already and no
			// target is dialled; later bytes are checked by the copy.
			l.rejectPP.Inc()
			c.SetLinger(0)
			c.Close()
			return
		} else {
			checkPP = true
		}
	}
	if !l.acl.permits(src.Addr()) {
		l.rejectACL.Inc()
		c.SetLinger(0)
		c.Close()
		return
	}
	if l.limit != nil && !l.limit.acquire(src.Addr()) {
		l.rejectLimit.Inc()
		c.SetLinger(0)
		c.Close()
		return
	}
	r := l.route.Load()
	if len(l.rules) > 0 {
		host, err := peekHello(c)
		if err != nil {
			// Rules route by the hello's name: without a hello there is
			// nothing to route by, so the connection is refused.
			l.releaseSource(src)
			l.rejectHello.Inc()
			s.log.Debug("no TLS ClientHello", zap.String(logListener, l.cfg.Name), zap.Stringer(logClient, src), zap.Error(err))
			c.SetLinger(0)
			c.Close()
			return
		}
		r = l.routeFor(host)
	}
	g, snap, key := r.lookup(flowhash.ProtoTCP, l.zone, src, dst)
	var buf [1 + balance.Retries]int
	prefs := snap.bal.Pick(key, buf[:])
	var t *net.TCPConn
	var tgt *target
	for _, i := range prefs {
		cand := snap.targets[i]
		var err error
		t, err = s.dialTarget(cand, src, g.cfg.Attributes.PreserveClientIP)
		if err == nil {
			tgt = cand
			break
		}
		cand.connectErrs.Inc()
		if s.health != nil {
			s.health.PassiveFailure(g.cfg.Name, cand.addr)
		}
		s.log.Debug("connect to target failed", zap.String(logListener, l.cfg.Name), zap.String(logTarget, cand.name), zap.Error(err))
	}
	if t == nil {
		// No target took the flow: reset the client, as NLB does.
		l.releaseSource(src)
		l.rejectNoTgt.Inc()
		l.lbResets.Inc()
		c.SetLinger(0)
		c.Close()
		return
	}

	if snap.counted {
		g.unhealthyRouting.Inc()
	}
	f := s.flowPool.Get().(*flow)
	f.l, f.client, f.target, f.idle = l, c, t, l.cfg.IdleTimeout
	f.tgt, f.start = tgt, time.Now()
	f.id = s.flowIDs.Add(1)
	f.src, f.checkPP = src, checkPP
	if g.cfg.Attributes.ProxyProtocolV2 {
		// The header goes first, written whole before the copy starts; the
		// sockets stay plain TCP, so the copy still splices.
		hdr, err := proxyproto.V2(false, src, dst, proxyproto.TLVs{FlowID: f.id, EndpointID: s.cfg.EndpointID})
		if err == nil {
			t.SetWriteDeadline(time.Now().Add(s.opts.ConnectTimeout))
			_, err = t.Write(hdr)
		}
		if err != nil {
			l.lbResets.Inc()
			l.releaseSource(src)
			c.SetLinger(0)
			c.Close()
			t.Close()
			s.flowPool.Put(f)
			return
		}
	}
	f.parkAfter = min(time.Second, f.idle/4)
	f.aborted.Store(false)
	f.ended.Store(0)
	f.touch()
	if err := f.setup(); err != nil {
		l.releaseSource(src)
		c.Close()
		t.Close()
		s.flowPool.Put(f)
		return
	}
	s.flows.add(f)
	tgt.addFlow(f)
	l.newFlows.Inc()
	l.active.Inc()
	if s.closing.Load() {
		f.abort() // shutdown began while this flow was connecting
	}
	// This goroutine carries on as the client-to-target direction; its stack
	// grew while dialing, but an idle direction parks and lets it go.
	go f.copyTargetToClient()
	f.copyClientToTarget()
}

func (f *flow) setup() error {
	crc, err := f.client.SyscallConn()
	if err != nil {
		return err
	}
	trc, err := f.target.SyscallConn()
	if err != nil {
		return err
	}
	up, down := &f.halves[0], &f.halves[1]
	up.src, up.dst, up.srcRC, up.dstRC = f.client, f.target, crc, trc
	down.src, down.dst, down.srcRC, down.dstRC = f.target, f.client, trc, crc
	up.reset()
	down.reset()
	up.checkPP = f.checkPP
	return nil
}

// The two directions run in functions of their own so that a stack dump says
// which way a stuck flow is waiting.
func (f *flow) copyClientToTarget() { f.drive(&f.halves[0]) }
func (f *flow) copyTargetToClient() { f.drive(&f.halves[1]) }

func (f *flow) drive(h *halfFlow) {
	if how, isParked := h.run(); !isParked {
		f.finish(h, how)
	}
}

func (f *flow) finish(h *halfFlow, how copyErr) {
	l := f.l
	f.srv.spliced.Add(h.spliced)
	f.srv.moved.Add(h.n)
	if h == &f.halves[0] {
		l.bytesIn.Add(float64(h.n))
	} else {
		l.bytesOut.Add(float64(h.n))
	}
	switch how {
	case endIdle:
		if f.abort() {
			l.lbResets.Inc()
		}
	case endReset:
		// The client's side failed when the client-to-target direction
		// could not read, or the other one could not write; else the
		// target's side did. A refused PROXY header is counted as such.
		switch clientSide := (h == &f.halves[0]) != h.errAtDst; {
		case h.err == errUntrustedHeader:
		case clientSide:
			l.clientRsts.Inc()
		default:
			f.tgt.resets.Inc()
		}
		// Pass the reset on to the other side.
		f.abort()
	}
	if f.ended.Add(1) < 2 {
		return
	}
	f.client.Close()
	f.target.Close()
	f.tgt.removeFlow(f)
	f.srv.flows.remove(f)
	l.releaseSource(f.src)
	l.active.Dec()
	f.client, f.target, f.l, f.tgt = nil, nil, nil, nil
	for i := range f.halves {
		f.halves[i].src, f.halves[i].dst, f.halves[i].srcRC, f.halves[i].dstRC = nil, nil, nil, nil
	}
	f.srv.flowPool.Put(f)
}

// peekHeader reports whether the bytes already queued on c, without waiting or
// consuming them, are a PROXY header.
func peekHeader(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var b [12]byte
	n := 0
	rc.Read(func(fd uintptr) bool {
		n, _, _ = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return true // one attempt: never wait for a client that speaks second
	})
	return n > 0 && proxyproto.IsHeader(b[:n])
}
