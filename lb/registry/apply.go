package registry

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/pkg/config"
)

// Apply brings the registry to cfg, a validated configuration, as a
// difference:
//
//   - groups added are built, their targets initial and checked; until
//     such a group has served in a zone, it does not make the zone
//     unhealthy (Group.ZoneProblem);
//   - groups removed drain every target under their deregistration rules,
//     and are gone from the API at once;
//   - groups kept take the new attributes (for new flows) and health check
//     (only a changed check restarts the group's checkers), and the file's
//     targets: new ones are registered, ones no longer listed are
//     deregistered and drain. Targets registered through the API and not in
//     the file stay; where both name a target, the file's zone and weight win.
//
// Targets that stay keep their states. On error nothing has changed.
func (r *Registry) Apply(cfg *config.Config) error {
	r.apply.Lock()
	defer r.apply.Unlock()
	old := r.all()
	for i := range cfg.TargetGroups {
		if err := keepsForwarding(old[cfg.TargetGroups[i].Name], &cfg.TargetGroups[i]); err != nil {
			return err
		}
	}
	prevCfg := r.Config()
	r.cfg.Store(cfg) // new groups see the new zones and cross-zone default
	next := make(map[string]*Group, len(cfg.TargetGroups))
	var added []*Group
	for i := range cfg.TargetGroups {
		tg := &cfg.TargetGroups[i]
		if g := old[tg.Name]; g != nil {
			next[tg.Name] = g
			continue
		}
		g, err := newGroup(r, tg)
		if err != nil {
			r.cfg.Store(prevCfg)
			for _, a := range added {
				a.forget()
			}
			return fmt.Errorf("target group %s: %w", tg.Name, err)
		}
		g.settling = true // not shared yet
		next[tg.Name] = g
		added = append(added, g)
	}
	r.groups.Store(&next)
	w := r.watcher()
	for _, g := range added {
		r.log.Info("target group added", zap.String(logGroup, g.Name()), zap.Int("targets", len(g.targets)))
		if w != nil {
			for _, t := range g.Targets() {
				w.Watch(g.Name(), t.Addr, g.checkSpec())
			}
		}
	}
	for i := range cfg.TargetGroups {
		if g := old[cfg.TargetGroups[i].Name]; g != nil {
			r.update(g, &cfg.TargetGroups[i])
		}
	}
	for name, g := range old {
		if next[name] == nil {
			r.retire(g)
		}
	}
	return nil
}

// update gives a kept group its new configuration and file targets.
func (r *Registry) update(g *Group, tg *config.TargetGroup) {
	g.mu.Lock()
	oldSpec := g.checkSpec()
	c := *tg
	g.cfg.Store(&c)
	g.crossZone.Store(tg.CrossZoneEnabled(r.Config().CrossZone))
	listed := make(map[netip.AddrPort]config.Target, len(tg.Targets))
	for _, ft := range tg.Targets {
		listed[ft.Address] = ft
	}
	var gone, watch []*Target
	for _, t := range g.targets {
		ft, ok := listed[t.Addr]
		switch {
		case ok:
			t.zone, t.weight, t.fromFile, t.quicID = ft.Zone, ft.Weight, true, ft.QUICServerID
			if t.state == Draining { // listed again: back in service
				g.setState(t, Initial, ReasonInitialHealthChecking, "")
				watch = append(watch, t)
			}
			delete(listed, t.Addr)
		case t.fromFile && t.state != Draining:
			gone = append(gone, t)
		}
	}
	for _, ft := range tg.Targets {
		if _, left := listed[ft.Address]; left {
			t := g.newTarget(ft.Address, ft.Zone, ft.Weight, ft.QUICServerID)
			t.fromFile = true
			g.targets = append(g.targets, t)
			watch = append(watch, t)
			r.log.Info("target registered", zap.String(logGroup, g.Name()), zap.String(logTarget, t.Name), zap.String("by", "reload"))
		}
	}
	r.logErr(g.rebuild())
	spec := g.checkSpec()
	if !reflect.DeepEqual(spec, oldSpec) {
		// The check changed: every live target's checker restarts with it;
		// the targets keep their states until the new checks say otherwise.
		watch = watch[:0]
		for _, t := range g.targets {
			if t.state != Draining && !slices.Contains(gone, t) {
				watch = append(watch, t)
			}
		}
		r.log.Info("health check changed", zap.String(logGroup, g.Name()), zap.Int("targets", len(watch)))
	}
	g.mu.Unlock()
	if w := r.watcher(); w != nil {
		for _, t := range watch {
			w.Watch(g.Name(), t.Addr, spec)
		}
	}
	for _, t := range gone {
		r.logErr(r.deregister(g, t.Addr, time.Time{}))
	}
}

// retire drains every target of a group that left the configuration.
func (r *Registry) retire(g *Group) {
	r.log.Info("target group removed; its targets drain", zap.String(logGroup, g.Name()))
	for _, t := range g.Targets() {
		r.logErr(r.deregister(g, t.Addr, time.Time{}))
	}
}

// forget drops the metrics series of a group that was built but never
// served (an Apply that failed).
func (g *Group) forget() {
	for _, t := range g.targets {
		g.r.m.RemoveTarget(g.Name(), t.Name)
	}
}

// keepsForwarding refuses a change of a kept group's forwarding mode or
// encapsulation: the kernel paths read them when they start, so they
// change on a restart or an upgrade, never silently half-way.
func keepsForwarding(g *Group, tg *config.TargetGroup) error {
	if g == nil {
		return nil
	}
	was := g.Config()
	if was.Forwarding == tg.Forwarding && was.Encapsulation == tg.Encapsulation && was.GUEPort == tg.GUEPort {
		return nil
	}
	mode := func(c *config.TargetGroup) string {
		switch {
		case c.Forwarding != config.ForwardDSR:
			return c.Forwarding
		case c.Encapsulation == config.EncapGUE:
			return fmt.Sprintf("dsr by gue to port %d", c.GUEPort)
		}
		return "dsr by " + c.Encapsulation
	}
	return fmt.Errorf("target group %s: forwarding changes (from %s to %s) when l4lb restarts or upgrades, not on reload", tg.Name, mode(was), mode(tg))
}
