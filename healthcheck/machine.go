// Package healthcheck runs l4lb's active health checks (TCP connect, HTTP and
// HTTPS) and turns their results into target states with a pure rise/fall
// state machine:
//
//	s := healthcheck.NewScheduler(reporter, healthcheck.Options{Logger: log})
//	s.Watch("web", target, cfg.TargetGroups[0].HealthCheck)
//	...
//	s.PassiveFailure("web", target) // a live connect failed: counts as a failed check
//
// It reports transitions only, through the Reporter the target registry
// implements; it knows nothing of the data plane.
package healthcheck

import "github.com/l4lb/l4lb/pkg/api"

// State is a target's health as the checks see it.
type State uint8

// Health states. Draining is the registry's business, not the checks'.
const (
	Initial State = iota
	Healthy
	Unhealthy
)

func (s State) String() string {
	switch s {
	case Healthy:
		return api.StateHealthy
	case Unhealthy:
		return api.StateUnhealthy
	}
	return api.StateInitial
}

// Machine is the rise/fall state machine of one target: Rise consecutive
// passes make it healthy, Fall consecutive failures unhealthy (NLB's
// healthy_threshold and unhealthy_threshold). A new target is Initial until
// either count is reached. It does no I/O and is not safe for concurrent use.
type Machine struct {
	Rise, Fall int
	state      State
	passes     int
	fails      int
}

// State is the current state.
func (m *Machine) State() State { return m.state }

// Observe records one result and reports whether the state changed.
func (m *Machine) Observe(pass bool) (changed bool) {
	if pass {
		m.passes++
		m.fails = 0
		if m.state != Healthy && m.passes >= m.Rise {
			m.state = Healthy
			return true
		}
		return false
	}
	m.fails++
	m.passes = 0
	if m.state != Unhealthy && m.fails >= m.Fall {
		m.state = Unhealthy
		return true
	}
	return false
}
