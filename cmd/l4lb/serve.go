package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/net/netutil"

	"github.com/l4lb/l4lb/healthcheck"
	"github.com/l4lb/l4lb/lb"
	"github.com/l4lb/l4lb/pkg/admin"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

var errMissingConfig = errors.New("--config is required")

// asUsage marks config errors (and file errors) as the caller's.
func asUsage(err error) error {
	var cerrs config.Errors
	if errors.As(err, &cerrs) {
		return err
	}
	return usageError{err}
}

type serveOpts struct {
	configPath     string
	logLevel       string
	logFormat      string
	connectTimeout time.Duration
	flags          config.Flags
}

func newServe() *cobra.Command {
	var o serveOpts
	var f struct {
		healthCheck, healthInterval, healthTimeout, stickiness, idle, udpIdle, dereg string
		alpn, policy, admin, tokenFile, shutdown                                     string
		healthy, unhealthy                                                           int
		ppv2, preserve, crossZone, udpFastPath                                       bool
	}
	cmd := &cobra.Command{
		Use:   "serve [--config FILE] [flags]",
		Short: "Run the load balancer",
		Args:  cobra.NoArgs,
	}
	fl := cmd.Flags()
	fl.StringVar(&o.configPath, "config", "", "config file (YAML); flags override it")
	fl.StringArrayVar(&o.flags.Listen, "listen", nil, "listener URL, repeatable: tcp://IP:PORT, udp://, tcp_udp:// (tls:// is not built yet); :PORT binds every zone IP")
	fl.StringArrayVar(&o.flags.Targets, "target", nil, "target ADDR[,zone=Z][,weight=W] of group \"default\", repeatable")
	fl.StringArrayVar(&o.flags.Zones, "zone", nil, "availability zone NAME=IP[;IP], repeatable")
	fl.StringVar(&f.healthCheck, "health-check", "tcp", "tcp | tcp://:PORT | http://[:PORT]/PATH | https://[:PORT]/PATH")
	fl.StringVar(&f.healthInterval, "health-interval", "30s", "time between health checks")
	fl.StringVar(&f.healthTimeout, "health-timeout", "10s", "health check timeout (HTTP default 6s)")
	fl.IntVar(&f.healthy, "healthy-threshold", config.DefaultHealthyThreshold, "consecutive passes to become healthy")
	fl.IntVar(&f.unhealthy, "unhealthy-threshold", config.DefaultUnhealthyThreshold, "consecutive failures to become unhealthy")
	fl.BoolVar(&f.ppv2, "proxy-protocol-v2", false, "send a PROXY protocol v2 header to targets")
	fl.BoolVar(&f.preserve, "preserve-client-ip", false, "connect to targets from the client's own address")
	fl.StringVar(&f.stickiness, "stickiness", "", "source_ip: pin each client IP to one target")
	fl.BoolVar(&f.crossZone, "cross-zone", false, "let every zone use every zone's targets")
	fl.BoolVar(&f.udpFastPath, "udp-fast-path", false, "forward qualifying UDP listeners in the kernel (needs --preserve-client-ip)")
	fl.StringVar(&f.idle, "idle-timeout", "350s", "close TCP flows idle this long")
	fl.StringVar(&f.udpIdle, "udp-idle-timeout", "120s", "expire UDP flows idle this long")
	fl.StringVar(&f.dereg, "deregistration-delay", "300s", "how long a deregistered target keeps its flows")
	fl.StringArrayVar(&o.flags.TLSCerts, "tls-cert", nil, "certificate file for TLS listeners (not built yet)")
	fl.StringArrayVar(&o.flags.TLSKeys, "tls-key", nil, "key file for TLS listeners (not built yet)")
	fl.StringVar(&f.alpn, "alpn-policy", "None", "ALPN policy of TLS listeners (not built yet)")
	fl.StringVar(&f.policy, "security-policy", config.DefaultSecurityPolicy, "TLS security policy of TLS listeners (not built yet)")
	fl.StringVar(&f.admin, "admin", config.DefaultAdminListen, `admin API address, or "off"`)
	fl.StringVar(&f.tokenFile, "admin-token-file", "", "file holding the admin API bearer token")
	fl.StringVar(&f.shutdown, "shutdown-timeout", "30s", "how long SIGTERM waits for flows before closing them")
	fl.StringVar(&o.logLevel, "log-level", "info", "debug|info|warn|error")
	fl.StringVar(&o.logFormat, "log-format", "json", "json|console")
	fl.DurationVar(&o.connectTimeout, "connect-timeout", lb.DefaultConnectTimeout, "timeout of one connect to a target before trying the next")

	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		// Only flags the user gave override the file.
		set := func(name string) bool { return cmd.Flags().Changed(name) }
		str := func(name string, v string) *string {
			if set(name) {
				return &v
			}
			return nil
		}
		o.flags.HealthCheck = str("health-check", f.healthCheck)
		o.flags.HealthInterval = str("health-interval", f.healthInterval)
		o.flags.HealthTimeout = str("health-timeout", f.healthTimeout)
		o.flags.Stickiness = str("stickiness", f.stickiness)
		o.flags.IdleTimeout = str("idle-timeout", f.idle)
		o.flags.UDPIdleTimeout = str("udp-idle-timeout", f.udpIdle)
		o.flags.DeregistrationDelay = str("deregistration-delay", f.dereg)
		o.flags.ALPNPolicy = str("alpn-policy", f.alpn)
		o.flags.SecurityPolicy = str("security-policy", f.policy)
		o.flags.Admin = str("admin", f.admin)
		o.flags.AdminTokenFile = str("admin-token-file", f.tokenFile)
		o.flags.ShutdownTimeout = str("shutdown-timeout", f.shutdown)
		if set("healthy-threshold") {
			o.flags.HealthyThreshold = &f.healthy
		}
		if set("unhealthy-threshold") {
			o.flags.UnhealthyThreshold = &f.unhealthy
		}
		if set("proxy-protocol-v2") {
			o.flags.ProxyProtocolV2 = &f.ppv2
		}
		if set("preserve-client-ip") {
			o.flags.PreserveClientIP = &f.preserve
		}
		if set("cross-zone") {
			o.flags.CrossZone = &f.crossZone
		}
		if set("udp-fast-path") {
			o.flags.UDPFastPath = &f.udpFastPath
		}
		cfg, err := loadServeConfig(&o)
		if err != nil {
			return err
		}
		log, err := newLogger(o.logLevel, o.logFormat, cmd.ErrOrStderr())
		if err != nil {
			return usageError{err}
		}
		defer log.Sync()
		return serve(cmd.Context(), cfg, log, o.connectTimeout, nil)
	}
	return cmd
}

func loadServeConfig(o *serveOpts) (*config.Config, error) {
	raw := &config.Raw{}
	if o.configPath != "" {
		var err error
		raw, err = config.LoadRaw(o.configPath)
		if err != nil {
			return nil, asUsage(err)
		}
	}
	if err := o.flags.Apply(raw); err != nil {
		return nil, err
	}
	cfg, err := config.Normalize(raw)
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

func newLogger(level, format string, w interface{ Write([]byte) (int, error) }) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %q is not debug, info, warn or error", level)
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	var encoder zapcore.Encoder
	switch format {
	case "json":
		encoder = zapcore.NewJSONEncoder(enc)
	case "console":
		encoder = zapcore.NewConsoleEncoder(enc)
	default:
		return nil, fmt.Errorf("--log-format: %q is not json or console", format)
	}
	return zap.New(zapcore.NewCore(encoder, zapcore.AddSync(w), lvl)), nil
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
	// The checks report to the server and the server feeds the checks; the
	// reporter is bound once both exist.
	var srv *lb.Server
	checks := healthcheck.NewScheduler(reporterFunc(func(g string, t netip.AddrPort, ok bool, reason, detail string) {
		srv.SetHealth(g, t, ok, reason, detail)
	}), healthcheck.Options{Logger: log, Metrics: m})
	defer checks.Close()
	srv, err := lb.New(cfg, lb.Options{Logger: log, Metrics: m, ConnectTimeout: connectTimeout, Health: checks})
	if err != nil {
		return usageError{err}
	}
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

// reporterFunc adapts a function to healthcheck.Reporter.
type reporterFunc func(group string, target netip.AddrPort, healthy bool, reason, detail string)

func (f reporterFunc) SetHealth(group string, target netip.AddrPort, healthy bool, reason, detail string) {
	f(group, target, healthy, reason, detail)
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
