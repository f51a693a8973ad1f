package lb

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

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
	route atomic.Pointer[route]
	acl   acl
	socks []*net.TCPListener

	// Counters resolved once, so the data path never looks up labels.
	newFlows   prometheus.Counter
	active     prometheus.Gauge
	bytesIn    prometheus.Counter
	bytesOut   prometheus.Counter
	lbResets   prometheus.Counter
	clientRsts prometheus.Counter
	rejects    *rejectCounters

	// Shared by the listener's addresses.
	limit *sourceLimit // nil: unlimited
	rules []sniRule    // SNI rules, checked in order before route
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

func newListener(s *Server, lc *config.Listener, b config.BindAddr, r *route) *listener {
	l := &listener{srv: s, cfg: lc, bindA: b, zone: b.Zone, acl: newACL(lc)}
	l.route.Store(r)
	m := s.m
	lbl := []string{lc.Name, "TCP", b.Zone}
	l.newFlows = m.Counter(metrics.NewFlows, lbl...)
	l.active = m.Gauge(metrics.ActiveFlows, lbl...)
	l.bytesIn = m.Counter(metrics.ProcessedBytes, append(lbl, "in")...)
	l.bytesOut = m.Counter(metrics.ProcessedBytes, append(lbl, "out")...)
	l.lbResets = m.Counter(metrics.TCPLBResets, lbl...)
	l.clientRsts = m.Counter(metrics.TCPClientResets, lbl...)
	l.rejects = newRejectCounters(m, lbl, reasonACL, reasonNoTarget, reasonProxyProtocol, reasonSourceLimit, reasonTLSHello, reasonLocalResources)
	return l
}

// Addr is the address the listener is bound to.
func (l *listener) Addr() net.Addr {
	if len(l.socks) == 0 {
		return nil
	}
	return l.socks[0].Addr()
}

// listenControl sets SO_REUSEPORT, so several sockets (and a new l4lb during
// an upgrade) share the port, and IP_FREEBIND, so a zone's static IP may be
// bound before it is configured on the host.
func listenControl(network, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); serr != nil {
			return
		}
		if network == "tcp6" || network == "udp6" {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

func (l *listener) bind() error {
	lc := net.ListenConfig{Control: listenControl, KeepAlive: -1}
	return bindEach(l.srv.opts.SocketsPerAddr, "tcp", l.cfg.Name, netip.AddrPortFrom(l.bindA.IP, l.cfg.Port),
		func(network, addr string) (uint16, error) {
			ln, err := lc.Listen(context.Background(), network, addr)
			if err != nil {
				return 0, err
			}
			tl := ln.(*net.TCPListener)
			l.socks = append(l.socks, tl)
			return tl.Addr().(*net.TCPAddr).AddrPort().Port(), nil
		})
}

// bindEach opens n SO_REUSEPORT sockets of proto ("tcp" or "udp") on at.
// Port 0 (tests only) lets the first socket pick and the rest follow it.
func bindEach(n int, proto, name string, at netip.AddrPort, open func(network, addr string) (uint16, error)) error {
	network := proto + "4"
	if at.Addr().Is6() {
		network = proto + "6"
	}
	port := at.Port()
	for range n {
		addr := netip.AddrPortFrom(at.Addr(), port).String()
		p, err := open(network, addr)
		if err != nil {
			return fmt.Errorf("listener %s: binding %s %s: %w", name, proto, addr, err)
		}
		port = p
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
func (s *Server) acceptLoop(l *listener, sock *net.TCPListener) {
	defer s.loops.Done()
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
