package registry

import (
	"maps"
	"net/netip"
	"slices"
	"time"

	"go.uber.org/zap"
)

// Saved is one target as a binary upgrade hands it to the new process: its
// registration and its state, so the new process routes exactly as the old
// one did (the same healthy set gives the same Maglev table, so a UDP flow
// keeps its target) and keeps what the API registered or deregistered.
type Saved struct {
	Group    string `json:"group"`
	Address  string `json:"address"`
	Zone     string `json:"zone,omitempty"`
	Weight   int    `json:"weight"`
	State    string `json:"state"`
	Reason   string `json:"reason,omitempty"`
	Detail   string `json:"detail,omitempty"`
	FromFile bool   `json:"from_file"`
	// GroupSettling and GroupServed carry the group's settling (a reload
	// added it) and the zones it has served in, so that the new process
	// withdraws no zone for a group that never served (Group.ZoneProblem).
	GroupSettling bool     `json:"group_settling,omitempty"`
	QUICServerID  string   `json:"quic_server_id,omitempty"`
	GroupServed   []string `json:"group_served,omitempty"`
}

// Save lists every target of every group.
func (r *Registry) Save() []Saved {
	var out []Saved
	for _, g := range r.all() {
		g.mu.Lock()
		served := slices.Sorted(maps.Keys(g.served))
		for _, t := range g.targets {
			out = append(out, Saved{Group: g.Name(), Address: t.Name, Zone: t.zone, Weight: t.weight,
				State: t.state.String(), Reason: t.reason, Detail: t.detail, FromFile: t.fromFile,
				GroupSettling: g.settling, GroupServed: served, QUICServerID: t.quicID})
		}
		g.mu.Unlock()
	}
	return out
}

// Restore takes over what an old process saved. Call it after New and before
// WatchHealth. Targets the API registered come back; healthy and unhealthy
// states carry over (the checks then go on from there); a draining target
// drains again, with its full delay. A saved file target that the new config
// no longer lists, or a group it no longer has, is left out.
func (r *Registry) Restore(saved []Saved) {
	if len(saved) == 0 {
		return
	}
	restored := 0
	for _, sv := range saved {
		g := r.Group(sv.Group)
		addr, err := netip.ParseAddrPort(sv.Address)
		if g == nil || err != nil {
			continue
		}
		g.mu.Lock()
		g.settling = sv.GroupSettling
		for _, z := range sv.GroupServed {
			g.served[z] = true
		}
		t := g.find(addr)
		if t == nil && !sv.FromFile {
			t = g.newTarget(addr, sv.Zone, max(sv.Weight, 1), sv.QUICServerID)
			g.targets = append(g.targets, t)
		}
		if t == nil {
			g.mu.Unlock()
			continue
		}
		restored++
		state, _ := ParseState(sv.State)
		switch state {
		case Healthy:
			g.setState(t, Healthy, "", "")
		case Unhealthy, UnhealthyDraining:
			g.setState(t, Unhealthy, sv.Reason, sv.Detail)
		}
		r.logErr(g.rebuild())
		g.mu.Unlock()
		if state == Draining {
			r.logErr(r.deregister(g, addr, time.Time{}))
		}
	}
	r.log.Info("targets taken over from the previous process", zap.Int("targets", restored), zap.Int("saved", len(saved)))
}
