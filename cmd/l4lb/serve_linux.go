//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"golang.org/x/net/netutil"

	"github.com/l4lb/l4lb/healthcheck"
	"github.com/l4lb/l4lb/lb"
	"github.com/l4lb/l4lb/pkg/admin"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// runServe serves cfg (see serve); onUp, if not nil, is told the admin API's
// address once l4lb is up.
func runServe(ctx context.Context, cfg *config.Config, log *zap.Logger, connectTimeout time.Duration, onUp func(admin net.Addr)) error {
	return serve(ctx, cfg, log, connectTimeout, func(_ *lb.Server, admin net.Addr) {
		if onUp != nil {
			onUp(admin)
		}
	})
}

// serve runs cfg until SIGTERM or SIGINT (or ctx ends), then drains. ready, if
// not nil, is called once the listeners are up.
func serve(ctx context.Context, cfg *config.Config, log *zap.Logger, connectTimeout time.Duration, ready func(*lb.Server, net.Addr)) error {
	if ctx == nil {
		ctx = context.Background()
	}
	raiseFileLimit(log)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(reg)
	srv, err := lb.New(cfg, lb.Options{Logger: log, Metrics: m, ConnectTimeout: connectTimeout})
	if err != nil {
		return usageError{err}
	}
	// Results flow from the checks into the registry; the registry tells
	// the checks which targets to probe.
	checks := healthcheck.NewScheduler(srv.Registry, healthcheck.Options{Logger: log, Metrics: m})
	defer checks.Close()
	srv.Registry.WatchHealth(checks)
	if err := srv.Start(); err != nil {
		return err
	}
	adminAddr, stopAdmin, err := startAdmin(cfg, log, reg, srv)
	if err != nil {
		srv.Close()
		return err
	}
	defer stopAdmin()
	log.Info("l4lb started", zap.Int("listeners", len(cfg.Listeners)), zap.Int("target_groups", len(cfg.TargetGroups)))
	// Signals are caught before anyone is told l4lb is up.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	if ready != nil {
		ready(srv, adminAddr)
	}

wait:
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGHUP {
				// Go's default for SIGHUP is to exit; a reload signal from
				// systemd or an operator must never stop the balancer.
				log.Warn("SIGHUP received: live reload is not built yet; the running config is kept")
				continue
			}
			log.Info("signal received, draining", zap.String("signal", s.String()), zap.Duration("shutdown_timeout", cfg.ShutdownTimeout))
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	go func() {
		// A second SIGTERM or SIGINT during the drain ends it at once.
		for {
			select {
			case s := <-sigs:
				if s == syscall.SIGHUP {
					continue
				}
				log.Warn("second signal: ending the drain now", zap.String("signal", s.String()))
				cancel()
				return
			case <-sctx.Done():
				return
			}
		}
	}()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown cut flows before they ended", zap.Error(err))
	}
	log.Info("l4lb stopped")
	return nil
}

func startAdmin(cfg *config.Config, log *zap.Logger, reg *prometheus.Registry, srv *lb.Server) (net.Addr, func(), error) {
	if cfg.Admin.Listen == "" {
		return nil, func() {}, nil
	}
	token := ""
	if cfg.Admin.TokenFile != "" {
		b, err := os.ReadFile(cfg.Admin.TokenFile)
		if err != nil {
			return nil, nil, usageError{fmt.Errorf("admin.token_file: %w", err)}
		}
		token = strings.TrimSpace(string(b))
		if token == "" {
			return nil, nil, usageError{fmt.Errorf("admin.token_file: %s is empty", cfg.Admin.TokenFile)}
		}
	}
	ln, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		return nil, nil, fmt.Errorf("admin API: %w", err)
	}
	srv.Reserve(ln.Addr().(*net.TCPAddr).AddrPort())
	hs := &http.Server{
		Handler:           admin.Handler(admin.Options{Registry: srv, Gatherer: reg, Token: token, Ready: srv.Ready}),
		ReadHeaderTimeout: 5 * time.Second,
		// Idle keep-alive connections are closed, and at most
		// adminMaxConns are open at once: a client that opens connections
		// and leaves them (after a 401, say) cannot use up l4lb's
		// descriptors, which its flows need.
		IdleTimeout:    adminIdleTimeout,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       zap.NewStdLog(log.Named("admin")),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(netutil.LimitListener(ln, adminMaxConns)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin API stopped", zap.Error(err))
		}
	}()
	log.Info("admin API up", zap.Stringer("addr", ln.Addr()))
	return ln.Addr(), func() { hs.Close(); <-done }, nil
}

// The admin API's bounds: it serves operators and scrapers, a handful of
// connections at a time.
const (
	adminIdleTimeout = 30 * time.Second
	adminMaxConns    = 128
)

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
