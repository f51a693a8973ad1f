package lb

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/cluster"
	"github.com/l4lb/l4lb/lb/events"
	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/lb/tcpproxy"
	"github.com/l4lb/l4lb/lb/tlsterm"
	"github.com/l4lb/l4lb/lb/udpproxy"
	"github.com/l4lb/l4lb/lb/zoneshift"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/hostaddr"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// DefaultConnectTimeout bounds one connect to a target before the flow moves
// on to the next target of its preference list.
const DefaultConnectTimeout = config.DefaultConnectTimeout

// Options are the injected parts of a Server. The zero value works: a no-op
// logger, no metrics, DefaultConnectTimeout, one socket per core, the system
// clock, and flow budgets from the process's open-file limit.
type Options struct {
	Logger         *zap.Logger
	Metrics        *metrics.Metrics // nil: no metrics
	ConnectTimeout time.Duration    // 0: DefaultConnectTimeout
	SocketsPerAddr int              // 0: GOMAXPROCS, one accept or read loop per core
	// PipeSize sets the splice pipes' capacity; see tcpproxy.Options.
	PipeSize int
	// Clock runs the registry's drain timers; nil is the system clock.
	Clock registry.Clock
	// OpenFiles is the descriptor count the TCP and UDP flow budgets are
	// derived from; 0 reads RLIMIT_NOFILE.
	OpenFiles int64
	// Inherit has the listening sockets a previous process handed over in a
	// binary upgrade; nil binds every socket afresh.
	Inherit listen.Inherit
	// TicketKeys are TLS session-ticket keys a previous process handed
	// over, newest first, so its clients' tickets resume here; nil: fresh.
	TicketKeys [][32]byte
	// ProxyHeaderTimeout bounds PROXY headers (see tcpproxy.Options); 0:
	// 5 s.
	ProxyHeaderTimeout time.Duration
	// HostAddrs is this host's addresses, which a wildcard listener owns
	// and targets may therefore not be; nil reads them, and Start keeps
	// them current.
	HostAddrs *hostaddr.Set
	// NoEventLoop carries every TCP flow on goroutines, as before the
	// event loops (see tcpproxy.Options); for comparisons.
	NoEventLoop bool
	// Instance names this l4lb among others on the host: the kernel paths
	// pin under load_balancer.bpffs/INSTANCE, and a restarted process with
	// the same instance adopts those pins. "" pins nothing.
	Instance string
}

// Server runs one configuration. Its view answers the admin API.
type Server struct {
	Registry   *registry.Registry // the targets, groups and their health
	ZoneShifts *zoneshift.Shifts  // zones taken out of service (zonal shifts)
	Events     *events.Log        // what happened, for GET /v1/events

	view
	log      *zap.Logger
	started  atomic.Bool // every listener bound and serving
	closing  atomic.Bool
	reserved atomic.Pointer[[]netip.AddrPort]
	reload   sync.Mutex // one Reload at a time
	keys     *tlsterm.TicketKeys
	keysOnce sync.Once
	host     *hostaddr.Set
	watching bool          // Start watches host's addresses until stopHost
	stopHost chan struct{} // closed by Shutdown
	stopOnce sync.Once
}

// New prepares a server for cfg without binding anything.
func New(cfg *config.Config, opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.OpenFiles == 0 {
		opts.OpenFiles = listen.OpenFileLimit()
	}
	s := &Server{log: opts.Logger, host: opts.HostAddrs, stopHost: make(chan struct{})}
	if s.host == nil {
		s.host, s.watching = hostaddr.New(), true
	}
	s.Events = events.New(0)
	reg, err := registry.New(cfg, registry.Options{Logger: opts.Logger, Metrics: opts.Metrics, Clock: opts.Clock, Own: s.isOwnAddress, Events: s.Events})
	if err != nil {
		return nil, err
	}
	s.Registry, s.reg = reg, reg
	s.ZoneShifts = zoneshift.New(opts.Logger, opts.Metrics, s.Events)
	s.shifts = s.ZoneShifts
	haveTCP, haveUDP := false, false
	for _, lc := range cfg.Listeners {
		haveTCP = haveTCP || lc.Protocol.HasTCP()
		haveUDP = haveUDP || lc.Protocol.HasUDP()
	}
	tcpFlows, udpFlows := listen.Budgets(opts.OpenFiles, haveTCP, haveUDP)
	s.keys = tlsterm.NewTicketKeys(tlsterm.DefaultRotation, opts.TicketKeys)
	ids := new(atomic.Uint64) // one numbering, so no two flows share a PROXY unique ID
	loops := &listen.LoopGuard{Local: s.host.Local}
	kernelPin := s.kernelPinDir(cfg, opts.Instance)
	if s.tcp, err = tcpproxy.New(cfg, reg, tcpproxy.Options{Logger: opts.Logger, Metrics: opts.Metrics, ConnectTimeout: opts.ConnectTimeout,
		SocketsPerAddr: opts.SocketsPerAddr, PipeSize: opts.PipeSize, MaxFlows: tcpFlows, IDs: ids, Inherit: opts.Inherit, ProxyHeaderTimeout: opts.ProxyHeaderTimeout, Loops: loops,
		NoEventLoop: opts.NoEventLoop, KernelPin: kernelPin, TLS: tlsterm.Options{Keys: s.keys}}); err != nil {
		s.keys.Close()
		return nil, err
	}
	if s.udp, err = udpproxy.New(cfg, reg, udpproxy.Options{Logger: opts.Logger, Metrics: opts.Metrics, Events: s.Events,
		SocketsPerAddr: opts.SocketsPerAddr, MaxFlows: udpFlows, IDs: ids, Inherit: opts.Inherit, Loops: loops, KernelPin: kernelPin}); err != nil {
		s.keys.Close() // its rotation goroutine
		s.tcp.Discard()
		return nil, err
	}
	reg.Subscribe(s.tcp)
	reg.Subscribe(s.udp)
	if cfg.Registry.Backend == config.RegistryEtcd {
		// The cluster's registrations, applied before the first flow, so
		// this node's tables are the other nodes' from the start.
		if s.store, err = cluster.Open(context.Background(), cfg.Registry, cfg.Admin.Listen, reg, s.ZoneShifts, opts.Metrics, s.log); err != nil {
			s.keys.Close()
			s.tcp.Discard()
			return nil, err
		}
	}
	s.log.Info("flow budgets", zap.Int64("open_files", opts.OpenFiles), zap.Int64("tcp_flows", tcpFlows), zap.Int64("udp_flows", udpFlows))
	return s, nil
}

// Start binds every listener and starts serving. On error nothing is left
// bound.
func (s *Server) Start() error {
	if err := s.tcp.Start(); err != nil {
		return err
	}
	if err := s.udp.Start(); err != nil {
		s.tcp.Shutdown(canceled())
		return err
	}
	s.started.Store(true)
	if s.watching {
		go s.host.Watch(s.stopHost, s.hostChanged)
	}
	return nil
}

// Announce logs every listener as up. Call it once every address the
// process needs (the admin API's too) is bound, so that no "listener up"
// precedes a failure to start.
func (s *Server) Announce() {
	s.tcp.Announce()
	s.udp.Announce()
}

// hostChanged says which targets an address the host gained made into
// l4lb's own listeners: their flows would loop, and are refused as such
// (rejected_flows_total{reason="loop"}) until the target is deregistered.
func (s *Server) hostChanged() {
	cfg := s.Registry.Config()
	for _, tg := range cfg.TargetGroups {
		g := s.Registry.Group(tg.Name)
		if g == nil {
			continue
		}
		for _, t := range g.Targets() {
			if l, ok := config.ListenerAt(cfg, tg.Protocol, t.Addr, s.host.Local); ok {
				s.log.Error("a target is now l4lb's own listener (the host gained its address); its flows would loop and are refused",
					zap.String("target_group", tg.Name), zap.String("target", t.Name), zap.String("listener", l))
			}
		}
	}
}

// Ready reports whether l4lb takes new flows: every listener is bound and no
// drain has begun (GET /readyz answers 503 otherwise, so a load balancer or
// orchestrator in front stops sending work before the listeners close).
func (s *Server) Ready() bool { return s.started.Load() && !s.closing.Load() }

// ReleaseKernel detaches the kernel paths' programs once a binary upgrade
// has handed their flow maps to the new process, which serves them with
// its own; this process drains its sockets' flows only.
func (s *Server) ReleaseKernel() {
	s.tcp.ReleaseKernel()
	s.udp.ReleaseKernel()
}

// Shutdown stops accepting, waits for open flows to end until ctx is done,
// then closes the rest. It returns ctx's error if flows had to be cut.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closing.Store(true)
	s.ZoneShifts.Close()
	if s.store != nil {
		s.store.Close() // no registration changes during the drain
	}
	s.Registry.Close()
	udpDone := make(chan struct{})
	go func() {
		defer close(udpDone)
		s.udp.Shutdown(ctx)
	}()
	err := s.tcp.Shutdown(ctx)
	<-udpDone
	s.keysOnce.Do(s.keys.Close)
	s.stopOnce.Do(func() { close(s.stopHost) })
	return err
}

// TicketKeys are the TLS session-ticket keys in use, newest first, for a
// binary upgrade to hand over.
func (s *Server) TicketKeys() [][32]byte { return s.keys.Keys() }

// Close stops everything at once.
func (s *Server) Close() error {
	if err := s.Shutdown(canceled()); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
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
// on every local address: loopback ones and the host's.
func (s *Server) isOwnAddress(addr netip.AddrPort) bool {
	own := func(at netip.AddrPort) bool {
		if at.Port() != addr.Port() {
			return false
		}
		ip := at.Addr().Unmap()
		return ip == addr.Addr() || (ip.IsUnspecified() && s.host.Local(addr.Addr()))
	}
	if r := s.reserved.Load(); r != nil && slices.ContainsFunc(*r, own) {
		return true
	}
	if s.tcp == nil || s.udp == nil { // still being built
		return false
	}
	return slices.ContainsFunc(s.tcp.Listeners().Bound(), own) || slices.ContainsFunc(s.udp.Listeners().Bound(), own)
}

// Files adds a duplicate of every listening socket, by name, for a new
// process to take over in a binary upgrade.
func (s *Server) Files(add func(name string, f *os.File)) error {
	if err := s.tcp.Files(add); err != nil {
		return err
	}
	return s.udp.Files(add)
}

// Addrs returns the bound TCP addresses of the named listener, one per bind IP.
func (s *Server) Addrs(name string) []net.Addr { return s.tcp.Listeners().Addrs(name) }

// UDPAddrs returns the bound UDP addresses of the named listener.
func (s *Server) UDPAddrs(name string) []net.Addr { return s.udp.Listeners().Addrs(name) }

// MovedBytes reports the bytes carried by finished TCP flows, and how many of
// them moved by splice(2) without entering user space.
func (s *Server) MovedBytes() (total, spliced int64) { return s.tcp.MovedBytes() }

// ParkedDirections is the number of TCP flow directions waiting without a
// goroutine (idle for a while).
func (s *Server) ParkedDirections() int { return s.tcp.ParkedDirections() }

// ActiveFlows is the number of TCP flows open now.
func (s *Server) ActiveFlows() int { return s.tcp.ActiveFlows() }

// UDPFlows is the number of UDP flows, in the socket path's tables and (as
// of its last sweep) in the kernel's.
func (s *Server) UDPFlows() int { return s.udp.Flows() }
