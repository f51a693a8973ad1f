package tcpproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/tlsterm"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// listener is one listener on one bind address: SocketsPerAddr SO_REUSEPORT
// sockets, each with its own accept loop, so the kernel spreads connections
// over cores.
type listener struct {
	srv   *Server
	cfg   *config.Listener
	bindA config.BindAddr
	zone  string
	route atomic.Pointer[listen.Route]
	acl   listen.ACL
	socks []*net.TCPListener
	// slot holds the listener's current generation: a reload that keeps
	// the address builds a new listener on the same sockets and stores it
	// here, and the accept loops serve new connections with it. Flows keep
	// the generation they were accepted by.
	slot *atomic.Pointer[listener]

	// Counters resolved once, so the data path never looks up labels.
	newFlows   prometheus.Counter
	active     prometheus.Gauge
	bytesIn    prometheus.Counter
	bytesOut   prometheus.Counter
	lbResets   prometheus.Counter
	clientRsts prometheus.Counter
	rejects    *listen.RejectCounters

	// Shared by the listener's addresses.
	limit *listen.SourceLimit // nil: unlimited
	rules []listen.Rule       // SNI rules, checked in order before route

	// TLS listeners: the termination and its counters.
	term       *tlsterm.Terminator
	tlsErrors  prometheus.Counter
	handshakes map[handshakeKey]prometheus.Counter
}

// trusted reports whether ip may send a PROXY header (proxy_protocol_accept).
func (l *listener) trusted(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range l.cfg.ProxyProtocolAccept {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func newListener(s *Server, lc *config.Listener, b config.BindAddr, r *listen.Route) *listener {
	l := &listener{srv: s, cfg: lc, bindA: b, zone: b.Zone, acl: listen.NewACL(lc), slot: new(atomic.Pointer[listener])}
	l.slot.Store(l)
	if r != nil {
		l.route.Store(r)
	}
	m := s.m
	lbl := []string{lc.Name, l.protocol(), b.Zone}
	l.newFlows = m.Counter(metrics.NewFlows, lbl...)
	l.active = m.Gauge(metrics.ActiveFlows, lbl...)
	l.bytesIn = m.Counter(metrics.ProcessedBytes, append(lbl, "in")...)
	l.bytesOut = m.Counter(metrics.ProcessedBytes, append(lbl, "out")...)
	l.lbResets = m.Counter(metrics.TCPLBResets, lbl...)
	l.clientRsts = m.Counter(metrics.TCPClientResets, lbl...)
	l.rejects = listen.NewRejectCounters(m, lbl, listen.ReasonACL, listen.ReasonNoTarget, listen.ReasonProxyProtocol, listen.ReasonSourceLimit, listen.ReasonTLSHello, listen.ReasonLocalResources, listen.ReasonTLSBadSNI, listen.ReasonLoop)
	if lc.Protocol == config.TLS {
		s.mu.Lock()
		l.term = s.terms[lc.Name]
		s.mu.Unlock()
		l.tlsErrors = m.Counter(metrics.ClientTLSErrors, lbl...)
		for _, r := range []listen.Reason{listen.ReasonTLSHandshake, listen.ReasonTLSHelloTimeout, listen.ReasonTLSBusy, listen.ReasonTLSSourceBusy} {
			l.rejects[r] = m.Counter(metrics.RejectedFlows, append(lbl, r.String())...)
		}
		l.handshakes = handshakeCounters(m, lc.Name)
	}
	return l
}

// protocol is the listener's protocol label: TLS or TCP.
func (l *listener) protocol() string {
	if l.cfg.Protocol == config.TLS {
		return "TLS"
	}
	return "TCP"
}

// Addr is the address the listener is bound to.
func (l *listener) Addr() net.Addr {
	if len(l.socks) == 0 {
		return nil
	}
	return l.socks[0].Addr()
}

func (l *listener) bind() error {
	lc := net.ListenConfig{Control: listen.Control, KeepAlive: -1}
	add := func(ln net.Listener) (uint16, error) {
		tl, ok := ln.(*net.TCPListener)
		if !ok {
			ln.Close()
			return 0, fmt.Errorf("not a TCP listening socket: %s", ln.Addr())
		}
		l.socks = append(l.socks, tl)
		return tl.Addr().(*net.TCPAddr).AddrPort().Port(), nil
	}
	return listen.BindEach(l.srv.opts.SocketsPerAddr, "tcp", l.cfg.Name, netip.AddrPortFrom(l.bindA.IP, l.cfg.Port), l.srv.opts.Inherit,
		func(network, addr string) (uint16, error) {
			ln, err := lc.Listen(context.Background(), network, addr)
			if err != nil {
				return 0, err
			}
			return add(ln)
		},
		func(f *os.File) (uint16, error) {
			ln, err := net.FileListener(f)
			if err != nil {
				return 0, err
			}
			return add(ln)
		})
}

// files adds a duplicate of each of the listener's sockets, by name, for a
// new process to take over.
func (l *listener) files(add func(name string, f *os.File)) error {
	at := netip.AddrPortFrom(l.bindA.IP, l.cfg.Port)
	for i, sock := range l.socks {
		f, err := sock.File()
		if err != nil {
			return err
		}
		add(listen.SocketName("tcp", l.cfg.Name, at, i), f)
	}
	return nil
}

func (l *listener) close() {
	for _, s := range l.socks {
		s.Close()
	}
}

// acceptLoop follows net/http's Server.Serve: shutdown is checked before the
// error, temporary errors (out of descriptors) back off instead of spinning.
func (s *Server) acceptLoop(slot *atomic.Pointer[listener], sock *net.TCPListener) {
	defer s.loops.Done()
	l := slot.Load()
	var delay time.Duration
	for {
		c, err := sock.AcceptTCP()
		if err != nil {
			if s.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else {
				delay = min(2*delay, time.Second)
			}
			s.log.Warn("accept failed; retrying", zap.String(logListener, l.cfg.Name), zap.Error(err), zap.Duration("retry_in", delay))
			time.Sleep(delay)
			continue
		}
		delay = 0
		l = slot.Load() // a reload may have changed its attributes
		s.flows.accepted()
		go s.serveConn(l, c)
	}
}

// port is the bound port (the configured one, or the kernel's pick).
func (l *listener) port() uint16 {
	if len(l.socks) == 0 {
		return l.cfg.Port
	}
	return l.socks[0].Addr().(*net.TCPAddr).AddrPort().Port()
}

// releaseSource gives back the slot a flow from src took, if the listener
// limits sources.
func (l *listener) releaseSource(src netip.AddrPort) {
	if l.limit != nil {
		l.limit.Release(src.Addr())
	}
}

// routeFor is the route of a host name: the first rule that matches it, or
// the listener's own.
func (l *listener) routeFor(host string) *listen.Route {
	return listen.RouteFor(l.rules, l.route.Load(), host)
}

// allRoutes is the listener's own route and its rules' routes.
func (l *listener) allRoutes() []*listen.Route {
	rs := []*listen.Route{l.route.Load()}
	for _, r := range l.rules {
		rs = append(rs, r.Route)
	}
	return rs
}
