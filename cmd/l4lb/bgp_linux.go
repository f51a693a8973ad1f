//go:build linux

package main

import (
	"context"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb"
	"github.com/l4lb/l4lb/lb/bgp"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// bgpNode runs the BGP speaker the config asks for, if any: it starts,
// changes or stops it as reloads add, change or remove the bgp section.
type bgpNode struct {
	mu   sync.Mutex
	spk  *bgp.Speaker // nil: no bgp section
	opts bgp.Options
}

// newBGPNode announces a zone while it is healthy, the first time once its
// targets' first health checks are over (bgp.Options.Settling). Zone health
// is read again as soon as a target group changes.
func newBGPNode(srv *lb.Server, log *zap.Logger, m *metrics.Metrics) *bgpNode {
	changed := make(chan struct{}, 1)
	srv.Registry.Subscribe(groupsChanged(changed))
	srv.ZoneShifts.OnChange(groupsChanged(changed).kick)
	return &bgpNode{opts: bgp.Options{Logger: log, Metrics: m, Healthy: func(zone string) (bool, string) {
		zh, err := srv.ZoneHealth(zone)
		if err != nil {
			return false, err.Error()
		}
		if sh := zh.ZonalShift; sh != nil {
			return false, "zonal shift away from the zone until " + sh.Expires.Format(time.RFC3339)
		}
		return zh.Healthy, zoneProblem(zh)
	}, Settling: srv.ZoneUnsettled, Changed: changed, Events: srv.Events}}
}

// groupsChanged is a registry subscriber that says, without blocking, that
// some group's targets changed.
type groupsChanged chan struct{}

func (c groupsChanged) SnapshotChanged(*registry.Group) { c.kick() }

// kick says, without blocking, that zone health is to be read again.
func (c groupsChanged) kick() {
	select {
	case c <- struct{}{}:
	default: // a read is already due
	}
}

func (groupsChanged) EndFlows(*registry.Target, string) {}

// zoneProblem names the first listener that keeps a zone unhealthy.
func zoneProblem(zh api.ZoneHealth) string {
	names := make([]string, 0, len(zh.Listeners))
	for name, status := range zh.Listeners {
		if status != "ok" {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return ""
	}
	sort.Strings(names)
	return "listener " + names[0] + ": " + zh.Listeners[names[0]]
}

// apply brings the speaker in line with cfg's bgp section.
func (b *bgpNode) apply(cfg *config.BGP) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case cfg == nil && b.spk != nil:
		b.spk.Stop()
		b.spk = nil
	case cfg == nil:
	case b.spk == nil:
		spk := bgp.New(cfg, b.opts)
		if err := spk.Start(); err != nil {
			return err
		}
		b.spk = spk
	default:
		return b.spk.Update(cfg)
	}
	return nil
}

// speaker is the running speaker, or nil.
func (b *bgpNode) speaker() *bgp.Speaker {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.spk
}

func (b *bgpNode) status() (api.BGPStatus, bool) {
	spk := b.speaker()
	if spk == nil {
		return api.BGPStatus{}, false
	}
	return spk.Status(), true
}

// leave withdraws every route and waits the withdraw grace (or until ctx
// ends): the first step of leaving, before the drain.
func (b *bgpNode) leave(ctx context.Context) {
	if spk := b.speaker(); spk != nil {
		spk.Leave(ctx)
	}
}

// handOver leaves and then closes the sessions, so that the process taking
// over can open its own to the same routers. undo starts them again, for an
// upgrade that failed.
func (b *bgpNode) handOver() (undo func()) {
	spk := b.speaker()
	if spk == nil {
		return func() {}
	}
	spk.Leave(context.Background())
	spk.Stop()
	return func() {
		if err := spk.Start(); err != nil {
			b.opts.Logger.Error("BGP speaker could not start again after the failed upgrade", zap.Error(err))
		}
	}
}

func (b *bgpNode) stop() {
	if spk := b.speaker(); spk != nil {
		spk.Stop()
	}
}
