package tcpproxy

import (
	"crypto/tls"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/lb/tlsterm"
	"github.com/l4lb/l4lb/pkg/api"
)

// flow is one proxied TCP connection: the client side, the target side and
// the two directions between them. Flows are pooled, and each pooled flow keeps
// the callbacks its directions bound once, so serving a flow allocates nothing
// of l4lb's own beyond what the net package does for accept and connect.
type flow struct {
	srv     *Server
	l       *listener
	id      uint64
	client  *net.TCPConn
	target  *net.TCPConn
	loopKey listen.ConnEnds // target's ends, remembered by the loop guard
	flowTLS
	dst       netip.AddrPort   // the listener address the client reached
	tgt       *registry.Target // the registered target it reached
	src       netip.AddrPort   // the client: the peer, or a trusted PROXY header's source
	checkPP   bool             // refuse a PROXY header in the first bytes (untrusted peer)
	start     time.Time
	idle      time.Duration
	parkAfter time.Duration // quiet time after which a direction parks
	aborted   atomic.Bool
	reset     atomic.Bool  // a reset was counted: both directions can meet the same one
	last      atomic.Int64 // unix nanoseconds of the last byte moved
	ended     atomic.Int32 // directions finished; the second one releases the flow
	halves    [2]halfFlow  // 0: client to target, 1: target to client
}

// flowTLS are a flow's TLS ends, when it has any.
type flowTLS struct {
	cs    *tls.Conn     // a TLS listener's client side, over client; nil on plain TCP
	ts    *tls.Conn     // a TLS target group's target side, over target; nil on plain TCP
	tinfo *tlsterm.Info // a TLS listener's handshake, for its access log
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
func (f *flow) abort() bool { return f.abortResetting(true, true) }

// abortResetting is abort with a reset sent only to the sides named: a
// side whose own reset ended the flow has nothing to receive, and a
// setsockopt on it would be spent for nothing.
func (f *flow) abortResetting(client, target bool) bool {
	if !f.aborted.CompareAndSwap(false, true) {
		return false
	}
	f.srv.parker.unpark(&f.halves[0])
	f.srv.parker.unpark(&f.halves[1])
	if client {
		f.client.SetLinger(0)
	}
	if target {
		f.target.SetLinger(0)
	}
	f.client.Close()
	f.target.Close()
	return true
}

// resume continues a parked direction on a fresh goroutine.
func (f *flow) resume(h *halfFlow) {
	if h == &f.halves[0] {
		go f.copyClientToTarget()
	} else {
		go f.copyTargetToClient()
	}
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
	if f.stream() {
		var c, t net.Conn = f.client, f.target
		if f.cs != nil {
			c = f.cs
		}
		if f.ts != nil {
			t = f.ts
		}
		up.rd, up.rdc, up.wr, up.wrc = c, c, t, t
		down.rd, down.rdc, down.wr, down.wrc = t, t, c, c
	}
	up.reset()
	down.reset()
	up.checkPP, up.ppPrefix = f.checkPP, false
	return nil
}

// The two directions run in functions of their own so that a stack dump says
// which way a stuck flow is waiting.
func (f *flow) copyClientToTarget() { f.drive(&f.halves[0]) }
func (f *flow) copyTargetToClient() { f.drive(&f.halves[1]) }

// stream says a side is TLS, so the bytes move through user space.
func (f *flow) stream() bool { return f.cs != nil || f.ts != nil }

func (f *flow) drive(h *halfFlow) {
	var how copyErr
	var isParked bool
	if f.stream() {
		how, isParked = h.runStream()
	} else {
		how, isParked = h.run()
	}
	if !isParked {
		f.finish(h, how)
	}
}

func (f *flow) finish(h *halfFlow, how copyErr) {
	h.finished = true
	l := f.l
	f.srv.spliced.Add(h.spliced)
	f.srv.moved.Add(h.n)
	if h == &f.halves[0] {
		l.bytesIn.Add(float64(h.n))
	} else {
		l.bytesOut.Add(float64(h.n))
	}
	f.tgt.Bytes.Add(float64(h.n))
	switch how {
	case endIdle:
		if f.abort() {
			l.lbResets.Inc()
		}
	case endReset:
		// The client's side failed when the client-to-target direction
		// could not read, or the other one could not write; else the
		// target's side did. A refused PROXY header is counted as such.
		// Both directions can fail on the same reset before the abort
		// below closes them: a flow counts one.
		clientSide := (h == &f.halves[0]) != h.errAtDst
		switch {
		case h.err == errUntrustedHeader, h.err == errHeaderTimeout:
		case !f.reset.CompareAndSwap(false, true):
		case clientSide:
			l.clientRsts.Inc()
		default:
			f.tgt.Resets.Inc()
		}
		if h.err == errUntrustedHeader || h.err == errHeaderTimeout {
			f.abort() // l4lb refuses the client: both sides are reset
		} else {
			// Pass the reset on to the other side.
			f.abortResetting(!clientSide, clientSide)
		}
	}
	if f.ended.Add(1) < 2 {
		return
	}
	f.client.Close()
	f.target.Close()
	f.srv.loopGuard.Forget(f.loopKey)
	if f.tinfo != nil {
		f.logTLS()
	}
	f.tgt.AddFlows(-1)
	f.srv.flows.remove(f)
	l.releaseSource(f.src)
	f.srv.budget.Release() // the client's descriptor
	f.srv.budget.Release() // the target's
	l.active.Dec()
	f.client, f.target, f.cs, f.ts, f.tinfo, f.l, f.tgt = nil, nil, nil, nil, nil, nil, nil
	for i := range f.halves {
		h := &f.halves[i]
		h.src, h.dst, h.srcRC, h.dstRC = nil, nil, nil, nil
		h.rd, h.wr, h.rdc, h.wrc = nil, nil, nil, nil
	}
	f.srv.flowPool.Put(f)
}

// The tracker's view of a goroutine flow (trackedFlow).

func (f *flow) flowID() uint64             { return f.id }
func (f *flow) listenerOf() *listener      { return f.l }
func (f *flow) targetOf() *registry.Target { return f.tgt }

func (f *flow) resetFlow(_ uint64, lb bool) {
	if l := f.l; f.abort() && lb {
		l.lbResets.Inc()
	}
}

func (f *flow) describe(now time.Time) api.Flow {
	return api.Flow{Listener: f.l.cfg.Name, Protocol: "TCP", Path: "socket", Client: f.client.RemoteAddr().String(),
		Target: f.tgt.Name, TargetGroup: f.tgt.Group().Name(), AgeSeconds: now.Sub(f.start).Seconds()}
}
