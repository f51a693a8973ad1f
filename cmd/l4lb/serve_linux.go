//go:build linux

package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/l4lb/l4lb/healthcheck"
	"github.com/l4lb/l4lb/lb"
	"github.com/l4lb/l4lb/lb/events"
	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/pkg/admin"
	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// runServe serves l (see serve); onUp, if not nil, is told the admin API's
// address once l4lb is up.
func runServe(ctx context.Context, l loaded, log *zap.Logger, connectTimeout time.Duration, onUp func(admin net.Addr)) error {
	return serve(ctx, l, log, connectTimeout, func(_ *lb.Server, admin net.Addr) {
		if onUp != nil {
			onUp(admin)
		}
	})
}

// cannotBind gives an address that cannot be bound (held by another
// process or l4lb, not on this host, a port that needs privileges) the exit
// code of the config errors: the config and the host disagree, and nothing
// served.
func cannotBind(err error) error {
	if isBindError(err) {
		return usageError{err}
	}
	return err
}

// isBindError says err is an address this host will not let l4lb bind.
func isBindError(err error) bool {
	return errors.Is(err, listen.ErrHeld) || errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EACCES)
}

// serve runs l.cfg until SIGTERM or SIGINT (or ctx ends), then withdraws its
// BGP routes, waits bgp.withdraw_grace, and drains. SIGHUP
// reloads the config, SIGUSR2 upgrades the binary; after an upgrade this
// process drains and exits. ready, if not nil, is called once the listeners
// are up.
func serve(ctx context.Context, l loaded, log *zap.Logger, connectTimeout time.Duration, ready func(*lb.Server, net.Addr)) error {
	if ctx == nil {
		ctx = context.Background()
	}
	sigs := l.sigs
	if sigs == nil {
		sigs = catchSignals()
	}
	defer sigs.stop()
	cfg := l.cfg
	raiseFileLimit(log)
	ho, err := newHandoff(log)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(reg)
	srv, err := lb.New(cfg, lb.Options{Logger: log, Metrics: m, ConnectTimeout: connectTimeout, Inherit: ho.inherited(), TicketKeys: ho.savedTicketKeys(),
		NoEventLoop: os.Getenv("L4LB_TCP_EVENT_LOOP") == "off", Instance: instanceName(l.path, cfg)})
	if err != nil {
		return usageError{err}
	}
	srv.Registry.Restore(ho.savedTargets()) // nothing unless this is an upgrade
	if ho.child != nil {                    // an upgrade: the previous process's events go on
		srv.Events.Restore(ho.savedEvents())
		srv.Events.Add(events.Upgrade, "process", fmt.Sprintf("pid %d serves, taking over from pid %d", os.Getpid(), os.Getppid()))
	}
	srv.ZoneShifts.Restore(ho.savedShifts())
	// Results flow from the checks into the registry; the registry tells
	// the checks which targets to probe.
	checks := healthcheck.NewScheduler(srv.Registry, healthcheck.Options{Logger: log, Metrics: m})
	defer checks.Close()
	srv.Registry.WatchHealth(checks)
	if err := srv.Start(); err != nil {
		return cannotBind(err)
	}
	ctl := newControl(srv, l, log, m)
	node := newBGPNode(srv, log, m)
	if err := node.apply(cfg.BGP); err != nil {
		srv.Close()
		return err
	}
	defer node.stop()
	ctl.bgp = node
	adm, err := startAdmin(cfg, log, reg, srv, ctl, node, ho.inherited())
	if err != nil {
		srv.Close()
		return cannotBind(err)
	}
	defer adm.stop()
	ctl.upgrade = func() (api.Upgrade, error) {
		if l.noUpgrade != "" {
			return api.Upgrade{}, fmt.Errorf("%w: %s", api.ErrConflict, l.noUpgrade)
		}
		// The routers move new flows to the other nodes first; this
		// process's sessions close so the new one can open its own.
		undo := node.handOver()
		u, err := ho.run(srv, adm)
		if err != nil {
			undo()
		}
		return u, err
	}
	srv.Announce()
	for _, w := range config.Warnings(cfg) {
		log.Warn(w.Error())
	}
	ho.ready()
	log.Info("l4lb started", zap.Int("listeners", len(cfg.Listeners)), zap.Int("target_groups", len(cfg.TargetGroups)), zap.String("config_sha256", l.hash))
	if ready != nil {
		ready(srv, adm.Addr())
	}

	leave := false // a signal to stop: withdraw the routes before the drain
wait:
	for {
		select {
		case <-sigs.reload:
			log.Info("SIGHUP received: reloading the config")
			ctl.Reload() // logs what it refused or could not apply
		case <-sigs.upgrade:
			log.Info("SIGUSR2 received: upgrading the binary")
			if _, err := ctl.Upgrade(); err == nil {
				break wait
			}
		case s := <-sigs.stopping:
			log.Info("signal received, draining", zap.String("signal", s.String()), zap.Duration("shutdown_timeout", ctl.Running().ShutdownTimeout))
			leave = true
			break wait
		case <-ctl.handedOver():
			break wait
		case <-ctx.Done():
			leave = true
			break wait
		}
	}
	// A second SIGTERM or SIGINT ends the withdraw grace and the drain at
	// once.
	stopping, cut := context.WithCancel(context.Background())
	defer cut()
	go func() {
		for {
			select {
			case <-sigs.reload:
				log.Warn("draining: signal ignored", zap.String("signal", "hangup"))
			case <-sigs.upgrade:
				log.Warn("draining: signal ignored", zap.String("signal", "user defined signal 2"))
			case s := <-sigs.stopping:
				log.Warn("second signal: ending the drain now", zap.String("signal", s.String()))
				cut()
				return
			case <-stopping.Done():
				return
			}
		}
	}()
	if leave {
		node.leave(stopping)
	}
	sctx, cancel := context.WithTimeout(stopping, ctl.Running().ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown cut flows before they ended", zap.Error(err))
	}
	log.Info("l4lb stopped")
	return nil
}

// signals are the signals serve acts on, one channel per action. Each
// holds one pending signal: os/signal drops a signal whose channel is full,
// so a storm of SIGHUPs coalesces into one more reload and never crowds out
// a SIGTERM.
type signals struct {
	reload, upgrade, stopping chan os.Signal
}

// catchSignals starts catching the signals serve acts on. It is called
// before anything is bound or read: until then a SIGHUP (a log rotation, a
// reload right after a restart) would end the process with Go's default
// action. A signal caught during start waits in its channel and is acted on
// once l4lb is up: a SIGHUP reloads the file, a SIGTERM drains and exits.
func catchSignals() *signals {
	s := &signals{reload: make(chan os.Signal, 1), upgrade: make(chan os.Signal, 1), stopping: make(chan os.Signal, 2)}
	signal.Notify(s.reload, syscall.SIGHUP)
	signal.Notify(s.upgrade, syscall.SIGUSR2)
	signal.Notify(s.stopping, syscall.SIGTERM, syscall.SIGINT)
	return s
}

func (s *signals) stop() {
	signal.Stop(s.reload)
	signal.Stop(s.upgrade)
	signal.Stop(s.stopping)
}

// adminServer is the admin API's HTTP server.
type adminServer struct {
	ln       net.Listener
	name     string // its socket's name in a binary upgrade
	hs       *http.Server
	done     chan struct{}
	released atomic.Bool
	end      context.CancelFunc // ends the console's sampling
}

// startAdmin serves the admin API on cfg.Admin.Listen (the socket a
// previous process handed over, if inh has it); nil when it is off.
func startAdmin(cfg *config.Config, log *zap.Logger, reg *prometheus.Registry, srv *lb.Server, ctl *control, node *bgpNode, inh listen.Inherit) (*adminServer, error) {
	if cfg.Admin.Listen == "" {
		return nil, nil
	}
	token := ""
	if cfg.Admin.TokenFile != "" {
		b, err := os.ReadFile(cfg.Admin.TokenFile)
		if err != nil {
			return nil, usageError{fmt.Errorf("admin.token_file: %w", err)}
		}
		token = strings.TrimSpace(string(b))
		if token == "" {
			return nil, usageError{fmt.Errorf("admin.token_file: %s is empty", cfg.Admin.TokenFile)}
		}
	}
	sampling, end := context.WithCancel(context.Background())
	a := &adminServer{name: "admin/" + cfg.Admin.Listen, done: make(chan struct{}), end: end}
	// After an upgrade the socket is the new process's, which serves; a
	// request still answered here on an old keep-alive connection says so
	// too, so a checker sees no 503 at the handover.
	ready := func() bool { return srv.Ready() || a.released.Load() }
	var err error
	var f *os.File
	if inh != nil {
		f = inh.Take(a.name)
	}
	if f != nil {
		a.ln, err = net.FileListener(f)
		f.Close()
	} else {
		a.ln, err = net.Listen("tcp", cfg.Admin.Listen)
	}
	if err != nil {
		end()
		return nil, fmt.Errorf("admin API: %w", err)
	}
	srv.Reserve(a.ln.Addr().(*net.TCPAddr).AddrPort())
	h := admin.Handler(admin.Options{Registry: srv, Control: ctl, Gatherer: reg, Token: token, Ready: ready, BGP: node.status, Cluster: srv.Cluster, ReadyDetail: srv.ReadyDetail, Events: srv.Feed(), Listeners: srv.Listeners, Context: sampling})
	// Bounded connections and request times, and a reserve of probe-only
	// connections: slow bodies, silent connections or 401s cannot use up
	// l4lb's descriptors, which its flows need, nor starve /healthz and
	// /readyz.
	hs, ln := admin.Server(h, a.ln, admin.Limits{})
	hs.ErrorLog = zap.NewStdLog(log.Named("admin"))
	a.hs = hs
	go func() {
		defer close(a.done)
		err := a.hs.Serve(ln)
		if err != nil && !errors.Is(err, http.ErrServerClosed) && !a.released.Load() {
			log.Error("admin API stopped", zap.Error(err))
		}
	}()
	log.Info("admin API up", zap.Stringer("addr", a.ln.Addr()))
	return a, nil
}

// Addr is where the API listens (nil when it is off).
func (a *adminServer) Addr() net.Addr {
	if a == nil {
		return nil
	}
	return a.ln.Addr()
}

// files adds the API's socket for a new process to take over.
func (a *adminServer) files(add func(string, *os.File)) error {
	if a == nil {
		return nil
	}
	f, err := a.ln.(*net.TCPListener).File()
	if err != nil {
		return err
	}
	add(a.name, f)
	return nil
}

// release stops accepting on the API's socket, which a new process serves
// now; requests on connections already open are answered, and those
// connections then close, so clients reconnect to the new process.
func (a *adminServer) release() {
	if a == nil {
		return
	}
	a.released.Store(true)
	// The socket first: a client whose idle connection is closed next
	// reconnects to the new process, not to this one.
	a.ln.Close()
	a.hs.SetKeepAlivesEnabled(false)
}

// stop closes the API. Requests under way are answered first (for a few
// seconds at most): after an upgrade, clients still on this process's
// connections get their answers rather than a cut connection.
func (a *adminServer) stop() {
	if a == nil {
		return
	}
	defer a.end()
	ctx, cancel := context.WithTimeout(context.Background(), adminStopGrace)
	defer cancel()
	a.hs.Shutdown(ctx)
	a.hs.Close()
	<-a.done
}

// adminStopGrace is how long a stopping admin API answers the requests
// under way.
const adminStopGrace = 5 * time.Second

// raiseFileLimit lifts RLIMIT_NOFILE to its hard limit: every flow holds two
// sockets. (Go does this too since 1.19; saying so is the point.)
func raiseFileLimit(log *zap.Logger) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return
	}
	if r.Cur < r.Max {
		r.Cur = r.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
			log.Warn("could not raise the open-file limit", zap.Error(err))
		}
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r)
	}
	if r.Cur < 65536 {
		log.Warn("open-file limit is low: each flow needs two descriptors; raise LimitNOFILE", zap.Uint64("nofile", r.Cur), zap.Int("max_flows_about", int(r.Cur/2)))
	}
}

// instanceName names this l4lb among others on the host, the same on every
// start with the same config file: the kernel paths pin under
// load_balancer.bpffs/NAME, and a process restarted after a crash adopts
// those pins. It is the config file's name and a hash of its absolute
// path (of the admin address without a file).
func instanceName(path string, cfg *config.Config) string {
	key, base := "admin "+cfg.Admin.Listen, "l4lb"
	if path != "" {
		if abs, err := filepath.Abs(path); err == nil {
			key = abs
		}
		base = strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	}
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, base)
	sum := sha256.Sum256([]byte(key))
	return fmt.Sprintf("%s-%x", clean, sum[:4])
}
