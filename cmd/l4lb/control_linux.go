//go:build linux

package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb"
	"github.com/l4lb/l4lb/lb/events"
	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// control changes a running l4lb: it reloads the config (SIGHUP, POST
// /v1/reload) and upgrades the binary (SIGUSR2, POST /v1/upgrade). It
// serves the admin API's /v1/config, /v1/reload and /v1/upgrade.
type control struct {
	srv     *lb.Server
	log     *zap.Logger
	m       *metrics.Metrics
	src     func() (*config.Config, string, error) // nil: no reload
	upgrade func() (api.Upgrade, error)            // nil: no upgrade
	bgp     *bgpNode                               // nil: no BGP (tests)

	// done is closed when an upgrade through the admin API has handed over:
	// the serve loop then drains, as after SIGUSR2.
	done     chan struct{}
	doneOnce sync.Once

	mu      sync.Mutex // one reload or upgrade at a time; guards what follows
	cfg     *config.Config
	current api.Config
}

func newControl(srv *lb.Server, l loaded, log *zap.Logger, m *metrics.Metrics) *control {
	c := &control{srv: srv, log: log, m: m, src: l.src, cfg: l.cfg, done: make(chan struct{})}
	c.loaded(l.path, l.hash)
	return c
}

// loaded records the running config's hash and load time (c.mu held, or
// before c is shared).
func (c *control) loaded(path, hash string) {
	c.current = api.Config{Path: path, SHA256: hash, LoadedAt: time.Now().UTC(), PID: os.Getpid(), Version: version}
	c.m.Gauge(metrics.ConfigLastReloadSuccess).Set(float64(c.current.LoadedAt.UnixNano()) / 1e9)
	c.m.SetInfo(metrics.ConfigInfo, hash)
}

// Config describes the running configuration.
func (c *control) Config() api.Config {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.current
}

// Running is the configuration in force now (its shutdown timeout, say).
func (c *control) Running() *config.Config {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfg
}

// refusal is a config file that did not validate: one "path: problem"
// line per error. Nothing was changed.
type refusal []string

func (r refusal) Error() string   { return "config refused: " + strings.Join(r, "; ") }
func (r refusal) Lines() []string { return r }
func (r refusal) Unwrap() error   { return api.ErrInvalid }

// Reload reads and validates the config file; a good one is applied as a
// difference, a bad one changes nothing and is reported line by line.
func (c *control) Reload() (api.Config, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.src == nil {
		c.m.Counter(metrics.ConfigReloads, "refused").Inc()
		return api.Config{}, fmt.Errorf("%w: there is no config file to reload: this l4lb was started from flags alone (serve --config FILE reloads FILE)", api.ErrInvalid)
	}
	cfg, hash, err := c.src()
	if err != nil {
		var lines []string
		var cerrs config.Errors
		if errors.As(err, &cerrs) {
			lines = cerrs.Lines()
		} else {
			lines = []string{"config: " + err.Error()}
		}
		for _, l := range lines {
			c.log.Error("reload refused; the running config is kept", zap.String("problem", l))
		}
		c.m.Counter(metrics.ConfigReloads, "refused").Inc()
		c.srv.Events.Add(events.Reload, "config", "refused: "+strings.Join(lines, "; "))
		return api.Config{}, refusal(lines)
	}
	if err := c.srv.Reload(cfg); err != nil {
		c.log.Error("reload failed; the running config is kept", zap.Error(err))
		c.m.Counter(metrics.ConfigReloads, "failed").Inc()
		c.srv.Events.Add(events.Reload, "config", "failed: "+err.Error())
		if isBindError(err) {
			// The file is good, the host is not ready for it (another
			// process holds the port): a conflict, not l4lb's fault.
			return api.Config{}, fmt.Errorf("%w: %v", api.ErrConflict, err)
		}
		return api.Config{}, err
	}
	if c.bgp != nil {
		// The listeners and targets are the new config's already; a
		// speaker that cannot start is logged, and l4lb serves on.
		if err := c.bgp.apply(cfg.BGP); err != nil {
			c.log.Error("reload: the BGP speaker could not apply the new bgp section", zap.Error(err))
		}
	}
	c.cfg = cfg
	c.loaded(c.current.Path, hash)
	c.m.Counter(metrics.ConfigReloads, "success").Inc()
	c.srv.Events.Add(events.Reload, "config", "success: sha256 "+hash)
	c.log.Info("reloaded", zap.String("sha256", hash))
	return c.current, nil
}

// Upgrade starts the binary again with the listening sockets, and returns
// once the new process serves.
func (c *control) Upgrade() (api.Upgrade, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.upgrade == nil {
		return api.Upgrade{}, errors.New("upgrade is not available in this process")
	}
	c.srv.Events.Add(events.Upgrade, "process", fmt.Sprintf("pid %d hands over to the binary on disk", os.Getpid()))
	u, err := c.upgrade()
	if err != nil {
		c.m.Counter(metrics.Upgrades, "failed").Inc()
		c.srv.Events.Add(events.Upgrade, "process", "failed, this process serves on: "+err.Error())
		c.log.Error("upgrade failed; this process keeps serving", zap.Error(err))
		return api.Upgrade{}, err
	}
	c.m.Counter(metrics.Upgrades, "success").Inc()
	c.doneOnce.Do(func() { close(c.done) })
	return u, nil
}

// handedOver is closed once an upgrade succeeded: this process drains.
func (c *control) handedOver() <-chan struct{} { return c.done }
