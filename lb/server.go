// Package lb is l4lb's data plane: listeners, flow routing and zero-copy TCP
// proxying, UDP forwarding, and the kernel fast path's orchestration, over
// the target registry (lb/registry) that it reads routing snapshots from.
//
//	srv, err := lb.New(cfg, lb.Options{Logger: log, Metrics: m})
//	checks := healthcheck.NewScheduler(srv.Registry, ...)
//	srv.Registry.WatchHealth(checks)
//	if err := srv.Start(); err != nil { ... }
//	...
//	srv.Shutdown(ctx) // stop accepting, drain flows until ctx ends, close the rest
package lb

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// Log keys, declared once.
const (
	logListener = "listener"
	logAddr     = "addr"
	logTarget   = "target"
	logClient   = "client"
	logFlows    = "flows"
	logSockets  = "sockets"
)

// DefaultConnectTimeout bounds one connect to a target before the flow moves
// on to the next target of its preference list.
const DefaultConnectTimeout = config.DefaultConnectTimeout

// DefaultPipeSize is the capacity of a bulk direction's splice pipe: 1 MiB
// (the unprivileged maximum, fs.pipe-max-size) moves about 1.5x as much per
// wakeup as the kernel's 64 KiB on one stream. A pipe holds pages only while
// bytes are in it, and only bulk directions hold a pipe at all.
const DefaultPipeSize = 1 << 20

// Options are the injected parts of a Server. The zero value works: a no-op
// logger, no metrics, DefaultConnectTimeout, one socket per core, the system
// clock, and flow budgets from the process's open-file limit.
type Options struct {
	Logger         *zap.Logger
	Metrics        *metrics.Metrics // nil: no metrics
	ConnectTimeout time.Duration    // 0: DefaultConnectTimeout
	SocketsPerAddr int              // 0: GOMAXPROCS, one accept loop per core
	// PipeSize sets the splice pipes' capacity (F_SETPIPE_SZ); 0 means
	// DefaultPipeSize, negative keeps the kernel's 64 KiB.
	PipeSize int
	// Clock runs the registry's drain timers; nil is the system clock.
	Clock registry.Clock
	// OpenFiles is the descriptor count the TCP and UDP flow budgets are
	// derived from; 0 reads RLIMIT_NOFILE.
	OpenFiles int64
}

// Server runs the listeners of one configuration. It embeds its target
// registry, whose methods serve the admin API.
type Server struct {
	*registry.Registry

	cfg       *config.Config
	log       *zap.Logger
	m         *metrics.Metrics
	opts      Options
	reg       *registry.Registry
	dialer    net.Dialer
	tdialer   net.Dialer // transparent: binds the client's address
	tdialAny  net.Dialer // transparent, the port left to connect(2)
	listeners []*listener
	udp       []*udpFront
	pipes     pipePool
	bufs      bufPool
	flows     tracker
	parker    *parker
	flowPool  sync.Pool
	scan      time.Duration              // parker's idle-expiry scan interval
	kernel    atomic.Pointer[kernelPath] // the UDP fast path, when on
	tcpBudget budget                     // TCP flows, two descriptors each
	udpBudget budget                     // UDP socket-path flows, one each

	closing  atomic.Bool
	started  atomic.Bool    // every listener bound and serving
	flowIDs  atomic.Uint64  // flow numbering, for PROXY unique IDs
	moved    atomic.Int64   // bytes moved by finished flows
	spliced  atomic.Int64   // the part of moved that splice(2) carried
	loops    sync.WaitGroup // accept and read loops
	bg       sync.WaitGroup // flow terminations in progress
	reserved atomic.Pointer[[]netip.AddrPort]
}

// New prepares a server for cfg without binding anything.
func New(cfg *config.Config, opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.ConnectTimeout == 0 {
		opts.ConnectTimeout = DefaultConnectTimeout
	}
	if opts.SocketsPerAddr == 0 {
		opts.SocketsPerAddr = runtime.GOMAXPROCS(0)
	}
	if opts.PipeSize == 0 {
		opts.PipeSize = DefaultPipeSize
	}
	if opts.OpenFiles == 0 {
		opts.OpenFiles = openFileLimit()
	}
	s := &Server{cfg: cfg, log: opts.Logger, m: opts.Metrics, opts: opts}
	reg, err := registry.New(cfg, registry.Options{Logger: opts.Logger, Metrics: opts.Metrics, Clock: opts.Clock, Own: s.isOwnAddress})
	if err != nil {
		return nil, err
	}
	s.Registry, s.reg = reg, reg
	reg.Subscribe(s)
	// No TCP keepalives (NLB sends none; the idle timeout ends dead flows):
	// that saves four setsockopt calls per socket per flow.
	s.dialer = net.Dialer{Timeout: opts.ConnectTimeout, KeepAlive: -1}
	s.tdialer = net.Dialer{Timeout: opts.ConnectTimeout, KeepAlive: -1, Control: transparentControl}
	s.tdialAny = net.Dialer{Timeout: opts.ConnectTimeout, KeepAlive: -1, Control: transparentAnyPortControl}
	s.pipes = pipePool{max: 1024, size: max(opts.PipeSize, 0)}
	s.bufs = bufPool{max: 4096}
	s.flows.init()
	s.flowPool.New = func() any { return newFlow(s) }
	s.scan = time.Second
	haveTCP, haveUDP := false, false
	for i := range cfg.Listeners {
		lc := &cfg.Listeners[i]
		s.scan = min(s.scan, max(lc.IdleTimeout/4, 10*time.Millisecond))
		if lc.Protocol == config.TLS {
			return nil, fmt.Errorf("listener %s: TLS listeners are not supported by this build yet", lc.Name)
		}
		if err := s.addListener(lc); err != nil {
			return nil, err
		}
		haveTCP = haveTCP || lc.Protocol.HasTCP()
		haveUDP = haveUDP || lc.Protocol.HasUDP()
	}
	tcp, udp := budgets(opts.OpenFiles, haveTCP, haveUDP)
	s.tcpBudget.max, s.udpBudget.max = tcp, udp
	return s, nil
}

// addListener makes the TCP listeners and UDP fronts of lc, one per bind
// address, sharing its route, rules and per-source limit.
func (s *Server) addListener(lc *config.Listener) error {
	r, err := buildRoute(lc, s.reg)
	if err != nil {
		return err
	}
	rules, err := buildRules(lc, s.reg)
	if err != nil {
		return err
	}
	limit := newSourceLimit(lc.MaxConnectionsPerSource)
	for _, b := range lc.Bind {
		if lc.Protocol.HasTCP() {
			l := newListener(s, lc, b, r)
			l.limit, l.rules = limit, rules
			s.listeners = append(s.listeners, l)
		}
		if lc.Protocol.HasUDP() {
			s.udp = append(s.udp, newUDPFront(s, lc, b, r))
		}
	}
	return nil
}

// Start binds every listener and starts its accept loops. On error nothing is
// left bound.
func (s *Server) Start() error {
	p, err := newParker(s.scan)
	if err != nil {
		return fmt.Errorf("creating the idle-flow epoll set: %w", err)
	}
	s.parker = p
	fail := func(err error) error {
		for _, o := range s.listeners {
			o.close()
		}
		for _, u := range s.udp {
			u.close()
		}
		s.parker.close()
		s.parker = nil
		return err
	}
	for _, l := range s.listeners {
		if err := l.bind(); err != nil {
			return fail(err)
		}
	}
	for _, u := range s.udp {
		if err := u.bind(); err != nil {
			return fail(err)
		}
	}
	s.startKernelPath()
	for _, l := range s.listeners {
		for _, sock := range l.socks {
			s.loops.Add(1)
			go s.acceptLoop(l, sock)
		}
		s.log.Info("listener up", zap.String(logListener, l.cfg.Name), zap.String("protocol", "TCP"), zap.Stringer(logAddr, l.Addr()), zap.Int(logSockets, len(l.socks)))
	}
	for _, u := range s.udp {
		u.start()
		s.log.Info("listener up", zap.String(logListener, u.cfg.Name), zap.String("protocol", "UDP"), zap.Stringer(logAddr, u.Addr()), zap.Int(logSockets, len(u.socks)))
	}
	s.log.Info("flow budgets", zap.Int64("open_files", s.opts.OpenFiles), zap.Int64("tcp_flows", s.tcpBudget.max), zap.Int64("udp_flows", s.udpBudget.max))
	s.started.Store(true)
	return nil
}

// Ready reports whether l4lb takes new flows: every listener is bound and no
// drain has begun (GET /readyz answers 503 otherwise, so a load balancer or
// orchestrator in front stops sending work before the listeners close).
func (s *Server) Ready() bool { return s.started.Load() && !s.closing.Load() }

// SnapshotChanged has the kernel path write its tables again
// (registry.Subscriber).
func (s *Server) SnapshotChanged(*registry.Group) {
	if k := s.kernel.Load(); k != nil {
		k.changed()
	}
}

// EndFlows ends the TCP and UDP flows pinned to t (registry.Subscriber).
func (s *Server) EndFlows(t *registry.Target, why string) {
	if s.closing.Load() {
		return
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		s.endUDPFlows(t, why)
		s.endTCPFlows(t, why)
	}()
}

// Reserve marks an address of l4lb's own (the admin API's) that targets may
// not take. Listener addresses are refused without it.
func (s *Server) Reserve(addr netip.AddrPort) {
	for {
		old := s.reserved.Load()
		var next []netip.AddrPort
		if old != nil {
			next = slices.Clone(*old)
		}
		next = append(next, netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port()))
		if s.reserved.CompareAndSwap(old, &next) {
			return
		}
	}
}

// isOwnAddress reports whether addr is one l4lb answers on itself: a
// listener's bound address, or a reserved one. A wildcard bind owns its port
// on every local address, so loopback ones match it too.
func (s *Server) isOwnAddress(addr netip.AddrPort) bool {
	own := func(at netip.AddrPort) bool {
		if at.Port() != addr.Port() {
			return false
		}
		ip := at.Addr().Unmap()
		return ip == addr.Addr() || (ip.IsUnspecified() && addr.Addr().IsLoopback())
	}
	if r := s.reserved.Load(); r != nil && slices.ContainsFunc(*r, own) {
		return true
	}
	for _, l := range s.listeners {
		if a, ok := l.Addr().(*net.TCPAddr); ok && own(a.AddrPort()) {
			return true
		}
	}
	for _, u := range s.udp {
		if a, ok := u.Addr().(*net.UDPAddr); ok && own(a.AddrPort()) {
			return true
		}
	}
	return false
}

// Addrs returns the bound addresses of the named listener, one per bind IP.
func (s *Server) Addrs(name string) []net.Addr {
	var out []net.Addr
	for _, l := range s.listeners {
		if l.cfg.Name == name && len(l.socks) > 0 {
			out = append(out, l.Addr())
		}
	}
	return out
}

// MovedBytes reports the bytes carried by finished flows, and how many of
// them moved by splice(2) without entering user space.
func (s *Server) MovedBytes() (total, spliced int64) { return s.moved.Load(), s.spliced.Load() }

// ParkedDirections is the number of flow directions waiting without a
// goroutine (idle for a while).
func (s *Server) ParkedDirections() int { return s.parker.count() }

// UDPAddrs returns the bound UDP addresses of the named listener.
func (s *Server) UDPAddrs(name string) []net.Addr {
	var out []net.Addr
	for _, u := range s.udp {
		if u.cfg.Name == name && len(u.socks) > 0 {
			out = append(out, u.Addr())
		}
	}
	return out
}

// UDPFlows is the number of entries in the UDP flow tables.
func (s *Server) UDPFlows() int {
	n := 0
	for _, u := range s.udp {
		n += u.table.Len()
	}
	if k := s.kernel.Load(); k != nil {
		n += k.flows() // as of the kernel's last sweep
	}
	return n
}

// ActiveFlows is the number of flows open now.
func (s *Server) ActiveFlows() int { return s.flows.count() }

// Shutdown stops accepting, waits for open flows to end until ctx is done,
// then closes the rest. It returns ctx's error if flows had to be cut.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closing.Store(true)
	s.reg.Close()
	if k := s.kernel.Swap(nil); k != nil {
		k.close()
	}
	for _, l := range s.listeners {
		l.close()
	}
	for _, u := range s.udp {
		u.close()
	}
	s.loops.Wait()
	n := s.flows.count()
	s.log.Info("drain start", zap.Int(logFlows, n))
	var err error
	idle := s.flows.idle()
	select {
	case <-idle: // nothing open: never report a cut, even for a done ctx (Close)
	default:
		select {
		case <-idle:
		case <-ctx.Done():
			err = ctx.Err()
			cut := s.flows.closeAll()
			s.log.Warn("drain deadline reached, closing flows", zap.Int(logFlows, cut))
			<-idle
		}
	}
	s.bg.Wait()
	if s.parker != nil {
		s.parker.close()
	}
	s.pipes.drain()
	s.log.Info("drain end")
	return err
}

// Close stops everything at once.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
