package tcpproxy

import (
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"runtime/debug"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/lb/balance"
	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/lb/tlsterm"
	"github.com/l4lb/l4lb/pkg/flowhash"
	"github.com/l4lb/l4lb/pkg/proxyproto"
	"github.com/l4lb/l4lb/pkg/tlshello"
)

// DefaultProxyHeaderTimeout bounds reading a PROXY header from a trusted
// upstream, and how long an untrusted client's first bytes may stay a
// strict prefix of a PROXY signature ("P", "PROX") before the connection is
// closed.
const DefaultProxyHeaderTimeout = 5 * time.Second

// setup is an accepted connection on its way to becoming a flow. Each step
// either moves it on or names the reason to refuse it; reject then counts,
// resets and releases what the steps took, once.
type setup struct {
	s        *Server
	l        *listener
	c        *net.TCPConn
	src, dst netip.AddrPort // the client (a trusted PROXY header's source) and the listener address
	checkPP  bool           // the copy must refuse a PROXY header in the first bytes
	id       uint64         // the flow's number, for PROXY unique IDs
	budget   int            // descriptors it holds of the TCP budget: the client's, then the target's
	source   bool           // holds a max_connections_per_source slot
	settled  bool           // the tracker no longer counts it as in setup
	setupTLS
	accepted time.Time
	r        *listen.Route
	t        *net.TCPConn    // the target connection, once dialled
	loopKey  listen.ConnEnds // t's ends, when the target is on this host (loopGuard)
	peer     netip.AddrPort  // the connection's far end, whatever a PROXY header says
	tgt      *registry.Target
	g        *registry.Group
	view     *registry.View
	f        *flow // the flow, once started
}

// setupTLS are a connection's TLS ends while it is set up.
type setupTLS struct {
	tc    *tls.Conn     // a TLS listener's terminated client side
	tt    *tls.Conn     // a TLS target group's encrypted target side
	tinfo *tlsterm.Info // the client handshake, for the access log
	sni   string        // the name its ClientHello asked for
}

// setupSteps are what a connection on a goroutine goes through before its
// flow starts, in order; the first that refuses it ends it.
var setupSteps = [...]func(*setup) (listen.Reason, bool){
	(*setup).checkLoop,
	(*setup).takeBudget,
	(*setup).readProxyHeader,
	(*setup).checkACL,
	(*setup).takeSourceSlot,
	(*setup).handshake,
	(*setup).chooseRoute,
	(*setup).connect,
	(*setup).sendProxyHeader,
	(*setup).encryptToTarget,
}

// serveConn takes an accepted connection through admission, target choice and
// connect, then copies client to target itself while a second goroutine
// copies target to client.
func (s *Server) serveConn(l *listener, c *net.TCPConn) {
	p := setup{s: s, l: l, c: c, accepted: time.Now()}
	s.flows.setups.Store(c, struct{}{})
	if s.cut.Load() { // the drain's deadline passed while it was handed over
		c.Close()
	}
	defer p.settle()
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("panic serving connection", zap.Any("panic", v), zap.ByteString("stack", debug.Stack()))
			p.recovered()
		}
	}()
	p.src = c.RemoteAddr().(*net.TCPAddr).AddrPort()
	p.dst = c.LocalAddr().(*net.TCPAddr).AddrPort()
	p.peer = p.src
	for _, step := range setupSteps {
		if why, ok := step(&p); !ok {
			p.reject(why)
			return
		}
	}
	p.start()
}

// recovered cleans up after a panic on the connection's goroutine: before
// the flow started, it gives back what the setup steps took (the target
// connection, the budget's descriptors, the per-source slot); after, this
// goroutine was the flow's client-to-target direction, which ends, with
// resets, so that the flow is released when the other direction ends.
func (p *setup) recovered() {
	if f := p.f; f != nil {
		f.abort()
		if h := &f.halves[0]; !h.finished {
			f.finish(h, endShutdown)
		}
		return
	}
	p.abandon(true)
}

// abandon closes the client (resetting it when asked), closes any target
// connection, and gives back the slots the steps took.
func (p *setup) abandon(reset bool) {
	if reset {
		p.c.SetLinger(0)
	}
	p.c.Close()
	if p.t != nil {
		p.t.Close()
		p.s.loopGuard.Forget(p.loopKey)
	}
	p.release()
}

// settle tells the tracker this connection's setup is over: it was refused,
// or the tracker counts it as a flow now.
func (p *setup) settle() {
	if !p.settled {
		p.settled = true
		p.s.flows.setups.Delete(p.c)
		p.s.flows.settled()
	}
}

// reject refuses the connection: it counts the reason, resets the client
// (SO_LINGER 0 sends RST, as NLB does), closes any target connection, and
// gives back the slots the steps took.
func (p *setup) reject(why listen.Reason) {
	p.l.rejects[why].Inc()
	if why == listen.ReasonNoTarget || why == listen.ReasonLocalResources {
		p.l.lbResets.Inc()
	}
	// A failed handshake has sent its alert; a reset could overtake it.
	p.abandon(why != listen.ReasonTLSHandshake)
}

// checkLoop refuses a connection that l4lb itself made to a target: the
// target is this listener, and forwarding it again would loop.
func (p *setup) checkLoop() (listen.Reason, bool) {
	return listen.ReasonLoop, !p.s.loopGuard.Looped(p.peer, p.dst)
}

func (p *setup) release() {
	if p.source {
		p.l.releaseSource(p.src)
	}
	for ; p.budget > 0; p.budget-- {
		p.s.budget.Release()
	}
}

// takeBudget holds the client's descriptor in the TCP budget.
func (p *setup) takeBudget() (listen.Reason, bool) {
	if !p.s.budget.Acquire() {
		return listen.ReasonLocalResources, false
	}
	p.budget++
	return 0, true
}

// readProxyHeader handles proxy_protocol_accept: a trusted upstream must
// send a header (go-proxyproto's REQUIRE), whose source is then the flow's
// client; anyone else's header is refused (REJECT).
func (p *setup) readProxyHeader() (listen.Reason, bool) {
	l := p.l
	if len(l.cfg.ProxyProtocolAccept) == 0 {
		return 0, true
	}
	if l.trusted(p.src.Addr()) {
		hsrc, _, err := proxyproto.ReadHeader(p.c, p.c, time.Now().Add(p.s.opts.ProxyHeaderTimeout))
		if err != nil {
			p.s.log.Debug("bad PROXY header", zap.String(logListener, l.cfg.Name), zap.Stringer(logClient, p.src), zap.Error(err))
			return listen.ReasonProxyProtocol, false
		}
		if hsrc.IsValid() { // a LOCAL header keeps the peer's address
			p.src = hsrc
		}
		return 0, true
	}
	// Most clients send a header with the connection, so it is usually
	// here already and no target is dialled; later bytes are checked by
	// the copy.
	if peekHeader(p.c) {
		return listen.ReasonProxyProtocol, false
	}
	p.checkPP = true
	return 0, true
}

func (p *setup) checkACL() (listen.Reason, bool) {
	return listen.ReasonACL, p.l.acl.Permits(p.src.Addr())
}

func (p *setup) takeSourceSlot() (listen.Reason, bool) {
	if p.l.limit == nil {
		return 0, true
	}
	p.source = p.l.limit.Acquire(p.src.Addr())
	return listen.ReasonSourceLimit, p.source
}

// chooseRoute picks the listener's route, or on a listener with SNI rules
// the route of the name the ClientHello asks for. Without a hello there is
// nothing to route by, so the connection is refused.
func (p *setup) chooseRoute() (listen.Reason, bool) {
	p.r = p.l.route.Load()
	if len(p.l.rules) == 0 {
		return 0, true
	}
	if p.tc != nil { // terminated: the handshake told the name
		p.r = p.l.routeFor(p.sni)
		return 0, true
	}
	host, err := peekHello(p.c)
	if err != nil {
		p.s.log.Debug("no TLS ClientHello", zap.String(logListener, p.l.cfg.Name), zap.Stringer(logClient, p.src), zap.Error(err))
		if errors.Is(err, tlshello.ErrBadServerName) {
			return listen.ReasonTLSBadSNI, false
		}
		return listen.ReasonTLSHello, false
	}
	p.r = p.l.routeFor(host)
	return 0, true
}

// connect dials the flow's Maglev preference list in order: a refused or
// timed-out connect counts against that target (and its passive health) and
// moves on to the next. A failure of l4lb's own (out of descriptors, say)
// blames no target.
func (p *setup) connect() (listen.Reason, bool) {
	s := p.s
	// The target's descriptor.
	if !s.budget.Acquire() {
		return listen.ReasonLocalResources, false
	}
	p.budget++
	g, view, key := p.r.Lookup(flowhash.ProtoTCP, p.l.zone, p.src, p.dst)
	p.g, p.view = g, view
	var buf [1 + balance.Retries]int
	for _, i := range view.Balance.Pick(key, buf[:]) {
		cand := view.Targets[i]
		s.loopGuard.Dialing(cand.Addr)
		t, err := s.dialTarget(cand, p.src, g.Config().Attributes.PreserveClientIP)
		var local netip.AddrPort
		if err == nil {
			local = t.LocalAddr().(*net.TCPAddr).AddrPort()
		}
		p.loopKey = s.loopGuard.Dialed(local, cand.Addr)
		if err == nil {
			p.t, p.tgt = t, cand
			p.id = s.ids.Add(1)
			return 0, true
		}
		s.log.Debug("connect to target failed", zap.String(logListener, p.l.cfg.Name), zap.String(logTarget, cand.Name), zap.Error(err))
		if listen.LocalFailure(err) {
			if listen.OutOfPorts(err) {
				cand.PortErrors.Inc()
				continue // ports are per target: another may have some
			}
			return listen.ReasonLocalResources, false
		}
		cand.ConnectErrors.Inc()
		s.reg.PassiveFailure(cand)
	}
	return listen.ReasonNoTarget, false
}

// sendProxyHeader writes the PROXY v2 header, whole, before the copy starts;
// the sockets stay plain TCP, so the copy still splices.
func (p *setup) sendProxyHeader() (listen.Reason, bool) {
	if !p.g.Config().Attributes.ProxyProtocolV2 {
		return 0, true
	}
	tlvs := proxyproto.TLVs{FlowID: p.id, EndpointID: p.s.cfg.EndpointID}
	if p.tc != nil {
		tlvs.SSL = sslInfo(p.tc.ConnectionState())
	}
	hdr, err := proxyproto.V2(false, p.src, p.dst, tlvs)
	if err == nil {
		p.t.SetWriteDeadline(time.Now().Add(p.s.opts.ConnectTimeout))
		_, err = p.t.Write(hdr)
	}
	return listen.ReasonNoTarget, err == nil
}

// start turns the connection into a flow and runs its two directions.
func (p *setup) start() {
	s, l := p.s, p.l
	if p.view.Counted {
		p.g.UnhealthyRouting.Inc()
	}
	f := s.flowPool.Get().(*flow)
	f.l, f.client, f.target, f.idle = l, p.c, p.t, l.cfg.IdleTimeout
	f.cs, f.ts, f.tinfo, f.dst = p.tc, p.tt, p.tinfo, p.dst
	f.tgt, f.start = p.tgt, time.Now()
	f.id = p.id
	f.src, f.checkPP = p.src, p.checkPP
	f.parkAfter = min(time.Second, f.idle/4)
	f.aborted.Store(false)
	f.reset.Store(false)
	f.ended.Store(0)
	f.touch()
	f.loopKey = p.loopKey
	if err := f.setup(); err != nil {
		p.c.Close()
		p.t.Close()
		s.loopGuard.Forget(p.loopKey)
		p.release()
		s.flowPool.Put(f)
		return
	}
	s.flows.add(f)
	p.f = f // from here a panic's cleanup ends the flow
	p.settle()
	p.tgt.AddFlows(1)
	p.tgt.NewFlows.Inc()
	l.newFlows.Inc()
	l.active.Inc()
	if s.cut.Load() {
		f.abort() // the drain's deadline passed while this flow was connecting
	}
	// This goroutine carries on as the client-to-target direction; its stack
	// grew while dialing, but an idle direction parks and lets it go.
	go f.copyTargetToClient()
	f.copyClientToTarget()
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
