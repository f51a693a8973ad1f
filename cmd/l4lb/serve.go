package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/hostaddr"
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
		healthCheck, stickiness, alpn, policy, admin, tokenFile       string
		healthInterval, healthTimeout, idle, udpIdle, dereg, shutdown time.Duration
		healthy, unhealthy                                            int
		ppv2, preserve, crossZone, udpFastPath, tcpFastPath           bool
	}
	cmd := &cobra.Command{
		Use:   "serve [--config FILE] [flags]",
		Short: "Run the load balancer",
		Args:  cobra.NoArgs,
	}
	fl := cmd.Flags()
	fl.StringVar(&o.configPath, "config", "", "config file (YAML); flags override it")
	fl.StringArrayVar(&o.flags.Listen, "listen", nil, "listener URL, repeatable: tcp://IP:PORT, udp://, tcp_udp://, tls:// (terminated; needs --tls-cert and --tls-key); :PORT binds every zone IP")
	fl.StringArrayVar(&o.flags.Targets, "target", nil, "target ADDR[,zone=Z][,weight=W] of group \"default\", repeatable")
	fl.StringArrayVar(&o.flags.Zones, "zone", nil, "availability zone NAME=IP[,IP], repeatable")
	fl.StringVar(&f.healthCheck, "health-check", "tcp", "tcp | tcp://:PORT | http://[:PORT]/PATH | https://[:PORT]/PATH")
	fl.DurationVar(&f.healthInterval, "health-interval", config.DefaultHealthInterval, "time between health checks")
	fl.DurationVar(&f.healthTimeout, "health-timeout", 0, "health check timeout (default 10s; 6s for HTTP and HTTPS checks)")
	fl.IntVar(&f.healthy, "healthy-threshold", config.DefaultHealthyThreshold, "consecutive passes to become healthy")
	fl.IntVar(&f.unhealthy, "unhealthy-threshold", config.DefaultUnhealthyThreshold, "consecutive failures to become unhealthy")
	fl.BoolVar(&f.ppv2, "proxy-protocol-v2", false, "send a PROXY protocol v2 header to targets")
	fl.BoolVar(&f.preserve, "preserve-client-ip", false, "connect to targets from the client's own address")
	fl.StringVar(&f.stickiness, "stickiness", "", "source_ip: pin each client IP to one target")
	fl.BoolVar(&f.crossZone, "cross-zone", false, "let every zone use every zone's targets")
	fl.BoolVar(&f.udpFastPath, "udp-fast-path", false, "forward qualifying UDP listeners in the kernel (needs --preserve-client-ip)")
	fl.BoolVar(&f.tcpFastPath, "tcp-fast-path", false, "forward qualifying TCP listeners in the kernel as a NAT (needs --preserve-client-ip)")
	fl.DurationVar(&f.idle, "idle-timeout", config.DefaultIdleTimeout, "close TCP flows idle this long")
	fl.DurationVar(&f.udpIdle, "udp-idle-timeout", config.DefaultUDPIdleTimeout, "expire UDP flows idle this long")
	fl.DurationVar(&f.dereg, "deregistration-delay", config.DefaultDeregistrationDelay, "how long a deregistered target keeps its flows")
	fl.StringArrayVar(&o.flags.TLSCerts, "tls-cert", nil, "certificate chain (PEM) for TLS listeners, repeatable; the first is the default, SNI picks among the rest")
	fl.StringArrayVar(&o.flags.TLSKeys, "tls-key", nil, "key (PEM) of the --tls-cert at the same position")
	fl.StringVar(&f.alpn, "alpn-policy", "None", "ALPN policy of TLS listeners: None, HTTP1Only, HTTP2Only, HTTP2Optional, HTTP2Preferred")
	fl.StringVar(&f.policy, "security-policy", config.DefaultSecurityPolicy, "ELB security policy of TLS listeners (versions and cipher suites)")
	fl.StringVar(&f.admin, "admin", config.DefaultAdminListen, `admin API address, or "off"`)
	fl.StringVar(&f.tokenFile, "admin-token-file", "", "file holding the admin API bearer token")
	fl.StringVar(&f.tokenFile, "token-file", "", "the client commands' name of --admin-token-file")
	fl.MarkHidden("token-file")
	fl.DurationVar(&f.shutdown, "shutdown-timeout", config.DefaultShutdownTimeout, "how long SIGTERM waits for flows before closing them")
	fl.StringVar(&o.logLevel, "log-level", "info", "debug|info|warn|error")
	fl.StringVar(&o.logFormat, "log-format", "json", "json|console")
	fl.DurationVar(&o.connectTimeout, "connect-timeout", config.DefaultConnectTimeout, "timeout of one connect to a target before trying the next")

	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		sigs := catchSignals() // first: see catchSignals
		// Only flags the user gave override the file.
		set := func(name string) bool { return cmd.Flags().Changed(name) }
		str := func(name string, v string) *string {
			if set(name) {
				return &v
			}
			return nil
		}
		o.flags.HealthCheck = str("health-check", f.healthCheck)
		dur := func(name string, v time.Duration) *string {
			if set(name) {
				s := v.String()
				return &s
			}
			return nil
		}
		o.flags.HealthInterval = dur("health-interval", f.healthInterval)
		o.flags.HealthTimeout = dur("health-timeout", f.healthTimeout)
		o.flags.Stickiness = str("stickiness", f.stickiness)
		o.flags.IdleTimeout = dur("idle-timeout", f.idle)
		o.flags.UDPIdleTimeout = dur("udp-idle-timeout", f.udpIdle)
		o.flags.DeregistrationDelay = dur("deregistration-delay", f.dereg)
		o.flags.ALPNPolicy = str("alpn-policy", f.alpn)
		o.flags.SecurityPolicy = str("security-policy", f.policy)
		o.flags.Admin = str("admin", f.admin)
		o.flags.AdminTokenFile = str("admin-token-file", f.tokenFile)
		if set("token-file") {
			o.flags.AdminTokenFile = &f.tokenFile
		}
		o.flags.ShutdownTimeout = dur("shutdown-timeout", f.shutdown)
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
		if set("tcp-fast-path") {
			o.flags.TCPFastPath = &f.tcpFastPath
		}
		src := func() (*config.Config, string, error) { return loadServeConfig(&o) }
		cfg, hash, err := src()
		if err != nil {
			return err
		}
		log, err := newLogger(o.logLevel, o.logFormat, cmd.ErrOrStderr())
		if err != nil {
			return usageError{err}
		}
		defer log.Sync()
		if o.configPath == "" {
			src = nil // started from flags alone: no file to read again
		}
		return runServe(cmd.Context(), loaded{cfg: cfg, hash: hash, path: o.configPath, src: src, sigs: sigs}, log, o.connectTimeout, nil)
	}
	return cmd
}

// loaded is a configuration and where it came from: src reads it again for
// a reload (nil: it cannot be reloaded).
type loaded struct {
	cfg  *config.Config
	hash string // SHA-256 of the file, or of the normalized config without one
	path string
	src  func() (*config.Config, string, error)
	sigs *signals // caught since the process started; nil: serve catches them
	// noUpgrade says why this process refuses a binary upgrade ("": it
	// upgrades).
	noUpgrade string
}

// checkBeforeServing is what validate and serve check beyond the config's
// own rules: the host (a target at its own listener's address loops) and
// the files the config names.
func checkBeforeServing(cfg *config.Config) error {
	errs := config.CheckLoops(cfg, hostaddr.New().Local)
	errs = append(errs, config.CheckFiles(cfg)...)
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// loadServeConfig reads the config file, applies the flags given on top, and
// validates the result. It returns the config and its hash.
func loadServeConfig(o *serveOpts) (*config.Config, string, error) {
	var data []byte
	if o.configPath != "" {
		var err error
		if data, err = config.ReadFile(o.configPath); err != nil {
			return nil, "", usageError{err}
		}
	}
	cfg, err := config.LoadWithFlags(o.configPath, &o.flags)
	if err != nil {
		return nil, "", asUsage(err)
	}
	if err := checkBeforeServing(cfg); err != nil {
		return nil, "", err
	}
	if data == nil {
		data, _ = json.Marshal(cfg)
	}
	sum := sha256.Sum256(data)
	return cfg, hex.EncodeToString(sum[:]), nil
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
