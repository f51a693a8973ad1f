package tcpproxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/kernelpath"
	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/lb/tlsterm"
	"github.com/l4lb/l4lb/pkg/api"
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

// DefaultPipeSize is the capacity of a bulk direction's splice pipe: 1 MiB
// (the unprivileged maximum, fs.pipe-max-size) moves about 1.5x as much per
// wakeup as the kernel's 64 KiB on one stream. A pipe holds pages only while
// bytes are in it, and only bulk directions hold a pipe at all.
const DefaultPipeSize = 1 << 20

// Options are the injected parts of a Server. The zero value works: a no-op
// logger, no metrics, config.DefaultConnectTimeout, one socket per core, no
// flow budget and a flow numbering of its own.
type Options struct {
	Logger         *zap.Logger
	Metrics        *metrics.Metrics // nil: no metrics
	ConnectTimeout time.Duration    // 0: config.DefaultConnectTimeout
	SocketsPerAddr int              // 0: GOMAXPROCS, one accept loop per core
	// PipeSize sets the splice pipes' capacity (F_SETPIPE_SZ); 0 means
	// DefaultPipeSize, negative keeps the kernel's 64 KiB.
	PipeSize int
	// MaxFlows bounds the open flows (each holds two descriptors); 0 is no
	// bound. Past it, connections are refused as local_resources.
	MaxFlows int64
	// IDs numbers flows for PROXY unique IDs; shared with the UDP plane so
	// no two flows share a number. Nil: a numbering of its own.
	IDs *atomic.Uint64
	// Inherit has the listening sockets a previous process handed over;
	// nil binds every socket afresh.
	Inherit listen.Inherit
	// TLS bounds the TLS listeners' handshakes and names the session-ticket
	// keys they share.
	TLS tlsterm.Options
	// ProxyHeaderTimeout bounds a trusted upstream's PROXY header, and an
	// untrusted client's first bytes while they are only a prefix of a
	// PROXY signature; 0: DefaultProxyHeaderTimeout.
	ProxyHeaderTimeout time.Duration
	// Loops remembers l4lb's connections to targets on this host, so that
	// one that comes back to a listener is refused as a loop; shared with
	// the UDP path. Nil: a guard of its own that knows loopback addresses.
	Loops *listen.LoopGuard
	// NoEventLoop runs every flow on goroutines of its own, as l4lb did
	// before its event loops (for comparisons); the event loops still
	// accept.
	NoEventLoop bool
	// KernelPin is the instance's directory on the BPF filesystem: the
	// TCP kernel path pins its links and maps in its "tcp" directory, so
	// they outlive the process. "" pins nothing.
	KernelPin string
}

// Server runs the TCP listeners of one configuration. It has three parts:
// the acceptor (the listener set, the event loops that accept, reloads and
// the kernel path), the flow engine that carries flows (engine), and TLS
// (tlsPart).
type Server struct {
	cfg     *config.Config
	log     *zap.Logger
	m       *metrics.Metrics
	opts    Options
	reg     *registry.Registry
	set     listen.Set[*listener] // the current generation of each bound address
	mu      sync.Mutex            // guards retired
	retired []*retired            // removed by a reload, their flows draining
	evloops []*evloop             // one per core: accept, and carry plain TCP flows
	kernel  kernelpath.Slot       // the kernel fast path, when on
	closing atomic.Bool
	bg      sync.WaitGroup // flow terminations in progress
	engine
	tlsPart
}

// engine carries flows: it dials targets, moves the bytes (splice or
// buffers), parks idle directions, and tracks what is open.
type engine struct {
	dialer    net.Dialer
	tdialer   net.Dialer // transparent: binds the client's address
	tdialAny  net.Dialer // transparent, the port left to connect(2)
	pipes     pipePool
	bufs      bufPool
	flows     tracker
	loopGuard *listen.LoopGuard
	parker    *parker
	flowPool  sync.Pool
	scan      time.Duration // parker's idle-expiry scan interval
	budget    listen.Budget
	ids       *atomic.Uint64
	moved     atomic.Int64 // bytes moved by finished flows
	spliced   atomic.Int64 // the part of moved that splice(2) carried
	cut       atomic.Bool  // the drain's deadline passed: every flow is reset
	// cutCtx ends with the drain's deadline: connects and handshakes with
	// targets under way stop then, so a drain never waits out a connect
	// timeout.
	cutCtx    context.Context
	cutCancel context.CancelFunc
}

// tlsPart is the TLS listeners' terminations and the TLS target groups'
// client configurations.
type tlsPart struct {
	termsMu sync.Mutex // guards terms
	// terms are the TLS listeners' terminations, by listener name, shared
	// by the listener's addresses and generations.
	terms    map[string]*tlsterm.Terminator
	certStop chan struct{} // ends the certificate watch
	// targetTLSConfigs are TLS target groups' client configurations, by
	// *config.TargetGroup (one per group configuration).
	targetTLSConfigs sync.Map
}

// term is the named TLS listener's termination, or nil.
func (t *tlsPart) term(name string) *tlsterm.Terminator {
	t.termsMu.Lock()
	defer t.termsMu.Unlock()
	return t.terms[name]
}

// termsNow are the terminations now; the caller must not change the map.
func (t *tlsPart) termsNow() map[string]*tlsterm.Terminator {
	t.termsMu.Lock()
	defer t.termsMu.Unlock()
	return t.terms
}

// swapTerms puts terms in force and returns those they replace.
func (t *tlsPart) swapTerms(terms map[string]*tlsterm.Terminator) map[string]*tlsterm.Terminator {
	t.termsMu.Lock()
	defer t.termsMu.Unlock()
	old := t.terms
	t.terms = terms
	return old
}

// New prepares the TCP listeners of cfg without binding anything.
func New(cfg *config.Config, reg *registry.Registry, opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.ConnectTimeout == 0 {
		opts.ConnectTimeout = config.DefaultConnectTimeout
	}
	if opts.ProxyHeaderTimeout <= 0 {
		opts.ProxyHeaderTimeout = DefaultProxyHeaderTimeout
	}
	if opts.SocketsPerAddr == 0 {
		opts.SocketsPerAddr = runtime.GOMAXPROCS(0)
	}
	if opts.PipeSize == 0 {
		opts.PipeSize = DefaultPipeSize
	}
	if opts.IDs == nil {
		opts.IDs = new(atomic.Uint64)
	}
	s := &Server{cfg: cfg, log: opts.Logger, m: opts.Metrics, opts: opts, reg: reg}
	s.ids, s.terms = opts.IDs, map[string]*tlsterm.Terminator{}
	// The budget counts descriptors: a connection takes one when accepted
	// and a second when its target is dialled, so one that says nothing
	// (a TLS client before its hello) costs one, not a flow's two.
	s.budget.Max = 2 * opts.MaxFlows
	s.loopGuard = opts.Loops
	if s.loopGuard == nil {
		s.loopGuard = &listen.LoopGuard{}
	}
	// No TCP keepalives (NLB sends none; the idle timeout ends dead flows):
	// that saves four setsockopt calls per socket per flow.
	s.dialer = net.Dialer{Timeout: opts.ConnectTimeout, KeepAlive: -1}
	s.tdialer = net.Dialer{Timeout: opts.ConnectTimeout, KeepAlive: -1, Control: listen.TransparentControl}
	s.tdialAny = net.Dialer{Timeout: opts.ConnectTimeout, KeepAlive: -1, Control: listen.TransparentAnyPortControl}
	s.pipes = pipePool{max: 1024, size: max(opts.PipeSize, 0)}
	s.bufs = bufPool{max: 4096}
	s.flows.init()
	s.flowPool.New = func() any { return newFlow(s) }
	s.cutCtx, s.cutCancel = context.WithCancel(context.Background())
	s.scan = time.Second
	var listeners []*listener
	for i := range cfg.Listeners {
		lc := &cfg.Listeners[i]
		if !lc.Protocol.HasTCP() {
			continue
		}
		s.scan = min(s.scan, max(lc.IdleTimeout/4, 10*time.Millisecond))
		r, err := listen.NewRoute(lc, reg)
		if err != nil {
			s.closeTerms()
			return nil, err
		}
		rules, err := listen.NewRules(lc, reg)
		if err != nil {
			s.closeTerms()
			return nil, err
		}
		limit := listen.NewSourceLimit(lc.MaxConnectionsPerSource)
		if lc.Protocol == config.TLS {
			term, err := tlsterm.New(lc.TLS, fmt.Sprintf("listeners[%d]", i), opts.TLS)
			if err != nil {
				s.closeTerms()
				return nil, err
			}
			s.terms[lc.Name] = term
		}
		for _, b := range lc.Bind {
			l := newListener(s, lc, b, r)
			l.limit, l.rules = limit, rules
			listeners = append(listeners, l)
		}
	}
	s.set.Store(listeners)
	return s, nil
}

// Start binds every listener and starts its accept loops. On error nothing is
// left bound.
func (s *Server) Start() error {
	p, err := newParker(s.scan, s.log)
	if err != nil {
		return err
	}
	s.parker = p
	fail := func(err error) error {
		for _, o := range s.set.Current() {
			o.close()
		}
		s.stopLoops()
		s.parker.close()
		s.parker = nil
		return err
	}
	for range max(runtime.GOMAXPROCS(0), 1) {
		lp, err := newEvloop(s, min(s.scan, max(s.opts.ConnectTimeout/4, 10*time.Millisecond)))
		if err != nil {
			return fail(err)
		}
		s.evloops = append(s.evloops, lp)
		go lp.run()
	}
	for _, l := range s.set.Current() {
		if err := l.bind(); err != nil {
			return fail(err)
		}
	}
	s.startKernelPath()
	for _, l := range s.set.Current() {
		l.serve(s.evloops)
	}
	s.certStop = make(chan struct{})
	s.bg.Add(1)
	go s.watchCerts(s.certStop)
	return nil
}

// Shutdown stops accepting, waits for open flows to end until ctx is done,
// then resets the rest. It returns ctx's error if flows had to be cut.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closing.Store(true)
	if s.certStop != nil {
		close(s.certStop)
		s.certStop = nil
	}
	s.mu.Lock()
	for _, l := range s.set.Current() {
		l.close()
	}
	for _, r := range s.retired {
		r.timer.Stop()
	}
	s.retired = nil
	s.mu.Unlock()
	s.log.Info("drain start", zap.Int(logFlows, s.flows.count()))
	var err error
	idle := s.flows.idle()
	select {
	case <-idle: // nothing open: never report a cut, even for a done ctx
	default:
		select {
		case <-idle:
		case <-ctx.Done():
			err = ctx.Err()
			s.cut.Store(true)
			s.cutCancel()
			for _, lp := range s.evloops {
				lp.post(evCmd{cut: true})
			}
			cut := s.flows.closeAll()
			s.log.Warn("drain deadline reached, closing flows", zap.Int(logFlows, cut))
			<-idle
		}
	}
	s.bg.Wait()
	s.cutCancel()
	s.stopLoops()
	if s.parker != nil {
		s.parker.close()
	}
	s.pipes.drain()
	s.closeTerms()
	// The kernel's flows end with its programs, unless a new process took
	// their maps over (an upgrade) and runs its own.
	s.kernel.Close()
	s.log.Info("drain end")
	return err
}

// Announce logs each listener as up; the caller does once every address
// of the process is bound.
func (s *Server) Announce() {
	for _, l := range s.set.Current() {
		s.log.Info("listener up", zap.String(logListener, l.cfg.Name), zap.String("protocol", l.protocol()), zap.Stringer(logAddr, l.Addr()), zap.Int(logSockets, len(l.socks)))
	}
}

// Discard gives back what New opened (the TLS listeners' access logs), for
// a server that will not be started.
func (s *Server) Discard() { s.closeTerms() }

// closeTerms closes the TLS listeners' access logs.
func (t *tlsPart) closeTerms() {
	for _, term := range t.termsNow() {
		term.Close()
	}
}

// stopLoops ends the event loops; their flows have ended.
func (s *Server) stopLoops() {
	for _, lp := range s.evloops {
		lp.stop()
	}
	s.evloops = nil
}

// ReleaseKernel detaches this process's kernel programs after a binary
// upgrade (kernelpath.Slot.Release).
func (s *Server) ReleaseKernel() {
	s.kernel.Release(s.log, "TCP")
}

// SnapshotChanged has the kernel path write its tables again; new
// connections in user space read the snapshot as they come
// (registry.Subscriber).
func (s *Server) SnapshotChanged(*registry.Group) {
	s.kernel.Changed()
}

// EndFlows resets the flows pinned to t, spread over a few seconds
// (registry.Subscriber).
func (s *Server) EndFlows(t *registry.Target, why string) {
	if s.closing.Load() {
		return
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		s.endFlows(t, why)
	}()
	s.kernel.EndFlows(t, why)
}

// Files adds a duplicate of every listening socket, and of the kernel fast
// path's flow maps, by name, for a new process to take over (a binary
// upgrade).
func (s *Server) Files(add func(name string, f *os.File)) error {
	if err := s.set.Files(add); err != nil {
		return err
	}
	return s.kernel.FlowFiles(add)
}

// Listeners answers about the listeners' addresses.
func (s *Server) Listeners() listen.Listeners { return &s.set }

// Endpoint describes the named listener's address that is dst (the first,
// when dst is not given) for a route explanation: the route of the SNI name
// asked about, on a listener with rules.
func (s *Server) Endpoint(name string, dst netip.Addr, sni string) (listen.Endpoint, bool) {
	l, ok := s.set.Find(name, dst)
	if !ok {
		return listen.Endpoint{}, false
	}
	return listen.Endpoint{Zone: l.zone, IP: l.bindA.IP, Port: l.port(), Route: l.routeFor(sni), HasRules: len(l.rules) > 0}, true
}

// Flows lists up to limit open flows (of one listener when named).
func (s *engine) Flows(listener string, limit int) []api.Flow {
	out := []api.Flow{}
	now := time.Now()
	s.flows.each(func(f trackedFlow) bool {
		if listener != "" && f.listenerOf().cfg.Name != listener {
			return true
		}
		out = append(out, f.describe(now))
		return len(out) < limit
	})
	return out
}

// MovedBytes reports the bytes carried by finished flows, and how many of
// them moved by splice(2) without entering user space.
func (s *engine) MovedBytes() (total, spliced int64) { return s.moved.Load(), s.spliced.Load() }

// ParkedDirections is the number of flow directions waiting without a
// goroutine (idle for a while).
func (s *engine) ParkedDirections() int { return s.parker.count() }

// ActiveFlows is the number of flows open now.
func (s *engine) ActiveFlows() int { return s.flows.count() }
