package registry

import (
	"net/netip"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/pkg/metrics"
)

// Target is one registered backend and its NLB state. The data planes read
// its address and counters, and count the flows they pin to it; the
// registry never holds a flow.
type Target struct {
	Addr netip.AddrPort
	Name string // Addr as text, for logs and labels

	// Counters the data planes add to, resolved once.
	ConnectErrors prometheus.Counter // refused or timed-out connects
	PortErrors    prometheus.Counter // source ports exhausted dialing it
	TLSErrors     prometheus.Counter // failed TLS handshakes (TLS target groups)
	Resets        prometheus.Counter // flows its side ended with an error
	NewFlows      prometheus.Counter // flows the socket paths pinned to it
	Bytes         prometheus.Counter // bytes the socket paths moved to and from it

	group  *Group
	active atomic.Int64 // flows pinned to it, as the data planes count them

	// Guarded by group.mu.
	zone       string
	weight     int
	state      State
	reason     string
	detail     string
	generation int    // bumped on every state change, so stale timers do nothing
	fromFile   bool   // listed in the config file (else registered through the API)
	quicID     string // QUIC and TCP_QUIC groups: its server ID (0x...), fixed while registered
}

func (g *Group) newTarget(addr netip.AddrPort, zone string, weight int, quicID string) *Target {
	t := &Target{group: g, Addr: addr, Name: addr.String(), zone: zone, weight: weight, quicID: quicID,
		state: Initial, reason: ReasonInitialHealthChecking}
	m := g.r.m
	m.AddTarget(g.Name(), t.Name)
	t.ConnectErrors = m.Counter(metrics.TargetConnectErrors, g.Name(), t.Name)
	t.PortErrors = m.Counter(metrics.PortAllocationErrors, g.Name(), t.Name)
	t.TLSErrors = m.Counter(metrics.TargetTLSErrors, g.Name(), t.Name)
	t.Resets = m.Counter(metrics.TCPTargetResets, g.Name(), t.Name)
	t.NewFlows = m.Counter(metrics.TargetNewFlows, g.Name(), t.Name)
	t.Bytes = m.Counter(metrics.TargetProcessedBytes, g.Name(), t.Name)
	return t
}

// Group is the target group the target belongs to.
func (t *Target) Group() *Group { return t.group }

// AddFlows records n flows pinned to the target (negative: ended). The
// data planes call it; describe-target-health shows the sum.
func (t *Target) AddFlows(n int64) { t.active.Add(n) }

// Flows is the number of flows pinned to the target now.
func (t *Target) Flows() int64 { return t.active.Load() }

// Health is a target's row of describe-target-health.
type Health struct {
	Address     netip.AddrPort
	Zone        string
	Weight      int
	State       State
	Reason      string
	Description string
	ActiveFlows int64
	// QUICServerID is a QUIC or TCP_QUIC group's target's server ID.
	QUICServerID string
}

// describe is the target's row of describe-target-health (g.mu held).
func (t *Target) describe() Health {
	return Health{Address: t.Addr, Zone: t.zone, Weight: t.weight, State: t.state,
		Reason: t.reason, Description: t.detail, ActiveFlows: t.Flows(), QUICServerID: t.quicID}
}
