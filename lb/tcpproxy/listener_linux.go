package tcpproxy

import (
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/tlsterm"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// listener is one listener on one bind address: SocketsPerAddr SO_REUSEPORT
// sockets, each served by one event loop, so the kernel spreads connections
// over cores.
type listener struct {
	srv   *Server
	cfg   *config.Listener
	bindA config.BindAddr
	zone  string
	route atomic.Pointer[listen.Route]
	acl   listen.ACL
	socks []*lsock
	// slot holds the listener's current generation: a reload that keeps
	// the address builds a new listener on the same sockets and stores it
	// here, and the event loops serve new connections with it. Flows keep
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

// lsock is one SO_REUSEPORT listening socket, served by one event loop.
type lsock struct {
	fd   int
	addr netip.AddrPort            // bound address
	l    *atomic.Pointer[listener] // the listener's slot: its current generation
	lp   *evloop
	// Owned by the loop: its registration, and the back-off after an
	// accept error.
	slot        int32
	paused      bool // after an accept error, until pausedUntil
	queued      bool // in the loop's backlog
	pausedUntil int64
	delay       time.Duration
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
		l.term = s.term(lc.Name)
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

// Zone is the zone of the listener's address.
func (l *listener) Zone() string { return l.zone }

// Addr is the address the listener is bound to.
func (l *listener) Addr() net.Addr {
	if len(l.socks) == 0 {
		return nil
	}
	return net.TCPAddrFromAddrPort(l.socks[0].addr)
}

// bind opens the listener's sockets (or takes them from the previous
// process), outside Go's poller: the event loops accept from them.
func (l *listener) bind() error {
	add := func(fd int) (uint16, error) {
		var r rawAddr
		addr, err := r.sockname(fd)
		if err != nil {
			unix.Close(fd)
			return 0, os.NewSyscallError("getsockname", err)
		}
		l.socks = append(l.socks, &lsock{fd: fd, addr: addr, l: l.slot, slot: -1})
		return addr.Port(), nil
	}
	return listen.BindEach(l.srv.opts.SocketsPerAddr, "tcp", l.cfg.Name, netip.AddrPortFrom(l.bindA.IP, l.cfg.Port), l.srv.opts.Inherit,
		func(_, addr string) (uint16, error) {
			fd, err := listenRaw(netip.MustParseAddrPort(addr))
			if err != nil {
				return 0, err
			}
			return add(fd)
		},
		func(f *os.File) (uint16, error) {
			fd, err := adoptRaw(f)
			if err != nil {
				return 0, err
			}
			return add(fd)
		})
}

// Files adds a duplicate of each of the listener's sockets, by name, for a
// new process to take over.
func (l *listener) Files(add func(name string, f *os.File)) error {
	at := netip.AddrPortFrom(l.bindA.IP, l.cfg.Port)
	for i, sock := range l.socks {
		f, err := sock.file()
		if err != nil {
			return err
		}
		add(listen.SocketName("tcp", l.cfg.Name, at, i), f)
	}
	return nil
}

// file is a duplicate of the socket, for a new process. os.NewFile leaves
// a nonblocking descriptor nonblocking when os/exec asks for it (Fd), so
// the socket the loop accepts from stays nonblocking.
func (ls *lsock) file() (*os.File, error) {
	nfd, err := unix.FcntlInt(uintptr(ls.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	return os.NewFile(uintptr(nfd), "tcp-listener"), nil
}

// close stops accepting on the listener's sockets and closes them.
func (l *listener) close() {
	for _, ls := range l.socks {
		if ls.lp != nil {
			ls.lp.do(evCmd{remove: ls})
			ls.lp = nil
		}
		if ls.fd >= 0 {
			unix.Close(ls.fd)
			ls.fd = -1
		}
	}
}

// serve hands the listener's sockets to the event loops, socket i to loop
// i mod n, so each core accepts from its own.
func (l *listener) serve(loops []*evloop) {
	for i, ls := range l.socks {
		lp := loops[i%len(loops)]
		ls.lp = lp
		lp.do(evCmd{add: ls})
	}
}

// port is the bound port (the configured one, or the kernel's pick).
func (l *listener) port() uint16 {
	if len(l.socks) == 0 {
		return l.cfg.Port
	}
	return l.socks[0].addr.Port()
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

// Routes is the listener's own route and its rules' routes.
func (l *listener) Routes() []*listen.Route {
	rs := []*listen.Route{l.route.Load()}
	for _, r := range l.rules {
		rs = append(rs, r.Route)
	}
	return rs
}
