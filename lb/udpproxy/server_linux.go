package udpproxy

import (
	"context"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/events"
	"github.com/l4lb/l4lb/lb/flowtable"
	"github.com/l4lb/l4lb/lb/kernelpath"
	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// Log keys, declared once.
const (
	logListener = "listener"
	logAddr     = "addr"
	logTarget   = "target"
	logFlows    = "flows"
	logSockets  = "sockets"
)

// Options are the injected parts of a Server. The zero value works: a no-op
// logger, no metrics, one socket per core, no flow budget and a flow
// numbering of its own.
type Options struct {
	Logger         *zap.Logger
	Metrics        *metrics.Metrics
	Events         *events.Log // hears when a full flow table starts evicting
	SocketsPerAddr int         // 0: GOMAXPROCS, one read loop per core
	// MaxFlows bounds the socket-path flows of all listeners together (each
	// holds a descriptor); 0 is no bound. Each listener's table has its own
	// bound too (load_balancer.max_flows).
	MaxFlows int64
	// IDs numbers flows for PROXY unique IDs; shared with the TCP plane.
	IDs *atomic.Uint64
	// Inherit has the sockets a previous process handed over; nil binds
	// every socket afresh.
	Inherit listen.Inherit
	// Loops remembers l4lb's flows to targets on this host, so that one
	// that comes back to a listener is refused as a loop; shared with the
	// TCP path. Nil: a guard of its own that knows loopback addresses.
	Loops *listen.LoopGuard
	// KernelPin is where the UDP kernel path pins its links and maps, so
	// they outlive the process; "" pins nothing.
	KernelPin string
}

// Server runs the UDP listeners of one configuration.
type Server struct {
	cfg    *config.Config
	log    *zap.Logger
	m      *metrics.Metrics
	opts   Options
	reg    *registry.Registry
	set    listen.Set[*udpFront] // the current listeners, one per bind address
	kernel kernelpath.Slot       // the fast path, when on
	budget listen.Budget
	ids    *atomic.Uint64

	closing atomic.Bool
	bgMu    sync.Mutex     // orders EndFlows' bg.Add before Close's bg.Wait
	bg      sync.WaitGroup // flow terminations in progress
}

// New prepares the UDP listeners of cfg without binding anything.
func New(cfg *config.Config, reg *registry.Registry, opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.SocketsPerAddr == 0 {
		opts.SocketsPerAddr = runtime.GOMAXPROCS(0)
	}
	if opts.IDs == nil {
		opts.IDs = new(atomic.Uint64)
	}
	s := &Server{cfg: cfg, log: opts.Logger, m: opts.Metrics, opts: opts, reg: reg, ids: opts.IDs}
	s.budget.Max = opts.MaxFlows
	if s.opts.Loops == nil {
		s.opts.Loops = &listen.LoopGuard{}
	}
	var fronts []*udpFront
	for i := range cfg.Listeners {
		lc := &cfg.Listeners[i]
		if !lc.Protocol.HasUDP() {
			continue
		}
		r, err := listen.NewRoute(lc, reg)
		if err != nil {
			return nil, err
		}
		for _, b := range lc.Bind {
			fronts = append(fronts, newFront(s, lc, b, r))
		}
	}
	s.set.Store(fronts)
	return s, nil
}

// Start binds every listener, hands the qualifying ones to the kernel fast
// path (when on), and starts reading. On error nothing is left bound.
func (s *Server) Start() error {
	for _, u := range s.set.Current() {
		if err := u.bind(); err != nil {
			for _, o := range s.set.Current() {
				o.close()
			}
			return err
		}
	}
	s.startKernelPath()
	for _, u := range s.set.Current() {
		u.start()
	}
	return nil
}

// Announce logs each listener as up; the caller does once every address
// of the process is bound.
func (s *Server) Announce() {
	for _, u := range s.set.Current() {
		s.log.Info("listener up", zap.String(logListener, u.cfg.Name), zap.String("protocol", "UDP"), zap.Stringer(logAddr, u.Addr()), zap.Int(logSockets, len(u.socks)))
	}
}

// ReplyGrace is how long a draining UDP listener keeps its flows after the
// last reply left: replies to requests already forwarded still reach their
// clients, while new datagrams go to whoever reads the sockets now.
const ReplyGrace = time.Second

// Shutdown stops reading, lets replies in flight reach their clients until
// the flows have been quiet for ReplyGrace (or ctx ends), then closes.
func (s *Server) Shutdown(ctx context.Context) {
	fronts := s.set.Current()
	for _, u := range fronts {
		u.stopReading()
	}
	for _, u := range fronts {
		u.readers.Wait()
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		quiet := true
		now := time.Now()
		for _, u := range fronts {
			if u.table.Len() > 0 && !u.quietFor(ReplyGrace, now) {
				quiet = false
			}
		}
		if quiet {
			break
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
			continue
		}
		break
	}
	s.Close()
}

// ReleaseKernel detaches this process's kernel programs after a binary
// upgrade (kernelpath.Slot.Release).
func (s *Server) ReleaseKernel() {
	s.kernel.Release(s.log, "UDP")
}

// Close stops the kernel path and the listeners; their flows end.
func (s *Server) Close() {
	s.bgMu.Lock()
	s.closing.Store(true)
	s.bgMu.Unlock()
	s.kernel.Close()
	for _, u := range s.set.Current() {
		u.close()
	}
	s.bg.Wait()
}

// SnapshotChanged has the kernel path write its tables again
// (registry.Subscriber).
func (s *Server) SnapshotChanged(*registry.Group) {
	s.kernel.Changed()
}

// EndFlows ends the flows pinned to t, in user space and in the kernel
// (registry.Subscriber).
func (s *Server) EndFlows(t *registry.Target, why string) {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.closing.Load() {
		return // Close has ended every flow, or is ending them
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		s.endFlows(t, why)
	}()
}

// Files adds a duplicate of every listener socket, and of the kernel fast
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
// when dst is not given), for a route explanation.
func (s *Server) Endpoint(name string, dst netip.Addr) (listen.Endpoint, bool) {
	u, ok := s.set.Find(name, dst)
	if !ok {
		return listen.Endpoint{}, false
	}
	port := u.cfg.Port
	if a, ok := u.Addr().(*net.UDPAddr); ok {
		port = a.AddrPort().Port()
	}
	return listen.Endpoint{Zone: u.zone, IP: u.bindA.IP, Port: port, Route: u.route.Load()}, true
}

// Flows is the number of flows: the socket path's tables, and the kernel's
// as of its last sweep.
func (s *Server) Flows() int {
	n := s.UserFlows()
	n += s.kernel.Flows()
	return n
}

// FlowList lists up to limit flows (of one listener when named): the
// socket path's, then the kernel path's.
func (s *Server) FlowList(listener string, limit int) ([]api.Flow, error) {
	var out []api.Flow
	now := time.Now()
	for _, u := range s.set.Current() {
		if listener != "" && u.cfg.Name != listener {
			continue
		}
		u.table.Range(func(k flowtable.Key, f *udpFlow) bool {
			if len(out) >= limit {
				return false
			}
			out = append(out, api.Flow{Listener: u.cfg.Name, Protocol: "UDP", Client: k.Src.String(), Target: f.tgt.Name,
				TargetGroup: f.tgt.Group().Name(), Path: "socket", AgeSeconds: now.Sub(f.start).Seconds()})
			return true
		})
	}
	if len(out) >= limit {
		return out, nil
	}
	k, err := kernelpath.Describe(&s.kernel, "UDP", listener, limit-len(out))
	return append(out, k...), err
}

// UserFlows is the number of flows in the socket path's tables.
func (s *Server) UserFlows() int {
	n := 0
	for _, u := range s.set.Current() {
		n += u.table.Len()
	}
	return n
}

// KernelPath reports whether the kernel fast path runs.
func (s *Server) KernelPath() bool { return s.kernel.Running() }

// Kernel is the slot of the kernel fast path: whether it runs, and its
// forwarder.
func (s *Server) Kernel() *kernelpath.Slot { return &s.kernel }

// SyncKernel writes the kernel path's tables now, as a snapshot change
// would soon (for tests that must not wait for it).
func (s *Server) SyncKernel() error {
	return s.kernel.Sync()
}
