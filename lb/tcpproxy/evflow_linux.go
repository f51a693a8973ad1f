package tcpproxy

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/lb/balance"
	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/flowhash"
	"github.com/l4lb/l4lb/pkg/proxyproto"
)

// evFlow states.
const (
	evConnecting uint8 = iota + 1 // the target's connect is under way
	evOpen                        // bytes move
	evDone                        // finished, in the loop's pool
)

// evFlow is a plain TCP flow on an event loop: a client socket, a target
// socket and the two directions between them, driven by the loop's events.
// Only its loop touches it, except the fields the tracker reads, which are
// set before the flow is tracked and stay until it is no longer.
type evFlow struct {
	lp    *evloop
	slot  int32
	at    int // index in lp.flows
	state uint8
	open  bool // counted as a flow (tracker, metrics), past its setup
	evEnds
	evSetup
	evReady
	last, idle   int64 // last byte moved; idle timeout (ns)
	resetCounted bool
	dirs         [2]evDir // 0: client to target, 1: target to client
}

// evEnds are an event-loop flow's two sockets and whom they join.
type evEnds struct {
	l        *listener
	id       uint64
	cfd, tfd int
	ctag     uint32 // registrations' tags (evloop.register)
	ttag     uint32
	peer     netip.AddrPort // the client socket's far end
	src, dst netip.AddrPort // the client and the listener address
	tgt      *registry.Target
	start    int64 // unix nanoseconds
	loopKey  listen.ConnEnds
}

// evSetup is an event-loop flow's setup: the preference list being tried,
// and what the flow holds.
type evSetup struct {
	g        *registry.Group
	view     *registry.View
	prefs    [1 + balance.Retries]int
	npref    int
	tried    int
	cand     *registry.Target
	deadline int64 // of the connect under way
	budget   int8
	source   bool
}

// evReady is edge-triggered readiness as the events last said (reads and
// writes clear it when the kernel says to wait), and whether a side hung
// up.
type evReady struct {
	cIn, cOut, tIn, tOut bool
	cHup, tHup           bool
}

// errFamilies refuses a transparent connect across address families.
var errFamilies = errors.New("cannot preserve an IPv4 client's address towards an IPv6 target, or the reverse")

// eventLoop says whether l's flows run on the event loops: plain TCP
// flows do. The work that waits for the client's bytes before choosing a
// route (a trusted PROXY header, SNI rules), refuses a PROXY header from
// untrusted clients, or speaks TLS to either side runs on goroutines.
func (l *listener) eventLoop() bool {
	if l.srv.opts.NoEventLoop || l.cfg.Protocol == config.TLS || len(l.rules) > 0 || len(l.cfg.ProxyProtocolAccept) > 0 {
		return false
	}
	for _, g := range l.route.Load().Groups {
		if g.Config().Protocol == config.TLS {
			return false
		}
	}
	return true
}

// accepted takes a new connection through admission and starts its
// target's connect, or hands it to a goroutine when its listener's flows
// need one.
func (lp *evloop) accepted(ls *lsock, cfd int) {
	s := lp.s
	l := ls.l.Load() // a reload may have changed its attributes
	peer := lp.addr.get()
	dst := ls.addr
	if dst.Addr().IsUnspecified() {
		if a, err := lp.addr.sockname(cfd); err == nil {
			dst = a
		}
	}
	if !l.eventLoop() {
		lp.handOff(l, cfd)
		return
	}
	f := lp.newFlow()
	f.l, f.cfd, f.tfd, f.peer, f.src, f.dst = l, cfd, -1, peer, peer, dst
	f.slot = lp.takeSlot()
	lp.slots[f.slot] = evSlot{f: f}
	f.state = evConnecting
	lp.track(f)
	if s.loopGuard.Looped(peer, dst) {
		f.reject(listen.ReasonLoop)
		return
	}
	if !s.budget.Acquire() { // the client's descriptor
		f.reject(listen.ReasonLocalResources)
		return
	}
	f.budget++
	if !l.acl.Permits(peer.Addr()) {
		f.reject(listen.ReasonACL)
		return
	}
	if l.limit != nil {
		if f.source = l.limit.Acquire(peer.Addr()); !f.source {
			f.reject(listen.ReasonSourceLimit)
			return
		}
	}
	f.connect()
}

// handOff runs a connection the event loop does not carry on a goroutine
// of its own (serveConn), as a net.Conn.
func (lp *evloop) handOff(l *listener, cfd int) {
	file := os.NewFile(uintptr(cfd), "")
	c, err := net.FileConn(file)
	file.Close()
	if err != nil {
		lp.s.flows.settled()
		lp.s.log.Warn("cannot hand a connection over", zap.String(logListener, l.cfg.Name), zap.Error(err))
		return
	}
	go lp.s.serveConn(l, c.(*net.TCPConn))
}

func (lp *evloop) newFlow() *evFlow {
	if n := len(lp.pool); n > 0 {
		f := lp.pool[n-1]
		lp.pool = lp.pool[:n-1]
		return f
	}
	return &evFlow{lp: lp}
}

// connect takes the target's descriptor and starts with the flow's
// Maglev preference list.
func (f *evFlow) connect() {
	s := f.lp.s
	if !s.budget.Acquire() {
		f.reject(listen.ReasonLocalResources)
		return
	}
	f.budget++
	g, view, key := f.l.route.Load().Lookup(flowhash.ProtoTCP, f.l.zone, f.src, f.dst)
	f.g, f.view = g, view
	f.npref = len(view.Balance.Pick(key, f.prefs[:]))
	f.tried = 0
	f.dialNext()
}

// dialNext starts a connect to the next target of the preference list. A
// refused or timed-out connect counts against its target (and its passive
// health) and moves on; a failure of l4lb's own blames none.
func (f *evFlow) dialNext() {
	lp, s := f.lp, f.lp.s
	preserve := f.g.Config().Attributes.PreserveClientIP
	for f.tried < f.npref {
		cand := f.view.Targets[f.prefs[f.tried]]
		f.tried++
		s.loopGuard.Dialing(cand.Addr)
		fd, err := lp.addr.dialRaw(cand, f.src, preserve)
		var local netip.AddrPort
		if err == nil && s.loopGuard.Watches(cand.Addr) {
			local, _ = lp.addr.sockname(fd)
		}
		f.loopKey = s.loopGuard.Dialed(local, cand.Addr)
		if err == nil {
			tag, rerr := lp.register(fd, f.slot)
			if rerr != nil {
				sysClose(fd)
				s.loopGuard.Forget(f.loopKey)
				f.reject(listen.ReasonLocalResources)
				return
			}
			f.tfd, f.ttag, f.cand = fd, tag, cand
			f.deadline = lp.now + int64(s.opts.ConnectTimeout)
			return
		}
		s.log.Debug("connect to target failed", zap.String(logListener, f.l.cfg.Name), zap.String(logTarget, cand.Name), zap.Error(err))
		if listen.LocalFailure(err) || err == unix.EAGAIN {
			if listen.OutOfPorts(err) {
				cand.PortErrors.Inc()
				continue // ports are per target: another may have some
			}
			f.reject(listen.ReasonLocalResources)
			return
		}
		cand.ConnectErrors.Inc()
		s.reg.PassiveFailure(cand)
	}
	f.reject(listen.ReasonNoTarget)
}

// connectFailed closes the connect under way, counts it against its
// target and tries the next.
func (f *evFlow) connectFailed(err error) {
	s := f.lp.s
	sysClose(f.tfd)
	f.tfd, f.ttag = -1, 0
	s.loopGuard.Forget(f.loopKey)
	f.loopKey = listen.ConnEnds{}
	s.log.Debug("connect to target failed", zap.String(logListener, f.l.cfg.Name), zap.String(logTarget, f.cand.Name), zap.Error(err))
	f.cand.ConnectErrors.Inc()
	s.reg.PassiveFailure(f.cand)
	f.dialNext()
}

// errConnectTimeout fails a connect that took longer than the connect
// timeout.
var errConnectTimeout = errors.New("connect timed out")

// event is an epoll event for one of the flow's sockets.
func (f *evFlow) event(tag uint32, ev uint32) {
	in := ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
	out := ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0
	hup := ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
	switch {
	case tag == f.ttag && f.state == evConnecting:
		if ev&unix.EPOLLERR != 0 {
			errno, err := unix.GetsockoptInt(f.tfd, unix.SOL_SOCKET, unix.SO_ERROR)
			if err == nil && errno != 0 {
				err = unix.Errno(errno)
			}
			if err == nil {
				err = unix.ECONNREFUSED
			}
			f.connectFailed(err)
			return
		}
		if ev&unix.EPOLLOUT == 0 {
			return
		}
		f.tIn, f.tOut, f.tHup = in, true, hup
		f.established()
		return
	case f.state != evOpen:
		return
	case tag == f.ctag:
		f.cIn, f.cOut, f.cHup = f.cIn || in, f.cOut || out, f.cHup || hup
	case tag == f.ttag:
		f.tIn, f.tOut, f.tHup = f.tIn || in, f.tOut || out, f.tHup || hup
	default:
		return // a socket closed since, whose slot was reused
	}
	f.pump()
}

// established makes the flow count as one, queues its PROXY header and
// starts waiting for the client's bytes.
func (f *evFlow) established() {
	lp, s, l := f.lp, f.lp.s, f.l
	f.tgt, f.id = f.cand, s.ids.Add(1)
	f.cand = nil
	tag, err := lp.register(f.cfd, f.slot)
	if err != nil {
		f.reject(listen.ReasonLocalResources)
		return
	}
	f.ctag = tag
	if f.g.Config().Attributes.ProxyProtocolV2 {
		hdr, err := proxyproto.V2(false, f.src, f.dst, proxyproto.TLVs{FlowID: f.id, EndpointID: s.cfg.EndpointID})
		if err != nil {
			f.reject(listen.ReasonNoTarget)
			return
		}
		d := &f.dirs[0]
		d.buf = s.bufs.get()
		d.off, d.end = 0, copy(*d.buf, hdr)
	}
	if f.view.Counted {
		f.g.UnhealthyRouting.Inc()
	}
	f.g, f.view = nil, nil
	f.start, f.last, f.idle = lp.now, lp.now, int64(l.cfg.IdleTimeout)
	f.state, f.open = evOpen, true
	s.flows.add(f)
	s.flows.settled()
	f.tgt.AddFlows(1)
	f.tgt.NewFlows.Inc()
	l.newFlows.Inc()
	l.active.Inc()
	if s.cut.Load() {
		f.abort(true, true) // the drain's deadline passed while this flow was connecting
		return
	}
	f.pump()
}

// fail ends the flow on a socket error: the side that failed is counted
// (a client's reset, or its target's), and the reset is passed on to the
// other side.
func (f *evFlow) fail(i int, atDst bool) {
	clientSide := (i == 0) != atDst
	if !f.resetCounted {
		f.resetCounted = true
		if clientSide {
			f.l.clientRsts.Inc()
		} else {
			f.tgt.Resets.Inc()
		}
	}
	f.abort(!clientSide, clientSide)
}

// abort resets the sides named (SO_LINGER 0) and finishes the flow. It
// reports whether the flow was open.
func (f *evFlow) abort(client, target bool) bool {
	if f.state != evOpen {
		return false
	}
	if client {
		setLinger0(f.cfd)
	}
	if target {
		setLinger0(f.tfd)
	}
	f.finish()
	return true
}

// expire is the sweep's check: a connect past the connect timeout fails,
// and a flow idle past its idle timeout is reset.
func (f *evFlow) expire(now int64) {
	switch f.state {
	case evConnecting:
		if f.tfd >= 0 && now >= f.deadline {
			f.connectFailed(errConnectTimeout)
		}
	case evOpen:
		if l := f.l; now-f.last >= f.idle && f.abort(true, true) {
			l.lbResets.Inc()
		}
	}
}

// finish closes both sockets, accounts for the flow and returns it to the
// loop's pool.
func (f *evFlow) finish() {
	s, l := f.lp.s, f.l
	f.state = evDone
	for i := range f.dirs {
		d := &f.dirs[i]
		if d.hasPipe {
			if d.inPipe == 0 {
				s.pipes.put(d.p)
			} else {
				d.p.close()
			}
		}
		if d.buf != nil {
			s.bufs.put(d.buf)
		}
		s.moved.Add(d.n)
		s.spliced.Add(d.spliced)
	}
	l.bytesIn.Add(float64(f.dirs[0].n))
	l.bytesOut.Add(float64(f.dirs[1].n))
	if f.tgt != nil {
		f.tgt.Bytes.Add(float64(f.dirs[0].n + f.dirs[1].n))
	}
	sysClose(f.cfd)
	sysClose(f.tfd)
	s.loopGuard.Forget(f.loopKey)
	if f.open {
		s.flows.remove(f)
		f.tgt.AddFlows(-1)
		l.active.Dec()
	}
	f.release()
}

// reject refuses a connection in setup: it counts the reason, resets the
// client (as NLB does), closes a target connection under way, and gives
// back what the setup took.
func (f *evFlow) reject(why listen.Reason) {
	l := f.l
	l.rejects[why].Inc()
	if why == listen.ReasonNoTarget || why == listen.ReasonLocalResources {
		l.lbResets.Inc()
	}
	setLinger0(f.cfd)
	sysClose(f.cfd)
	if f.tfd >= 0 {
		sysClose(f.tfd)
		f.lp.s.loopGuard.Forget(f.loopKey)
	}
	f.state = evDone
	f.lp.s.flows.settled()
	f.release()
}

// release gives back the slots the flow held and pools it.
func (f *evFlow) release() {
	lp, s := f.lp, f.lp.s
	if f.source {
		f.l.releaseSource(f.src)
	}
	for ; f.budget > 0; f.budget-- {
		s.budget.Release()
	}
	lp.untrack(f)
	lp.freeSlot(f.slot)
	*f = evFlow{lp: lp, state: evDone, evEnds: evEnds{cfd: -1, tfd: -1}}
	lp.pool = append(lp.pool, f)
}

// The tracker's view of an event-loop flow (trackedFlow).

func (f *evFlow) flowID() uint64               { return f.id }
func (f *evFlow) listenerOf() *listener        { return f.l }
func (f *evFlow) targetOf() *registry.Target   { return f.tgt }
func (f *evFlow) resetFlow(id uint64, lb bool) { f.lp.post(evCmd{reset: f, id: id, countLB: lb}) }
func (f *evFlow) describe(now time.Time) api.Flow {
	return api.Flow{Listener: f.l.cfg.Name, Protocol: "TCP", Path: "socket", Client: f.peer.String(), Target: f.tgt.Name,
		TargetGroup: f.tgt.Group().Name(), AgeSeconds: now.Sub(time.Unix(0, f.start)).Seconds()}
}
