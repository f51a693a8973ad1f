package registry

import "github.com/l4lb/l4lb/pkg/api"

// State is a target's NLB state.
type State uint8

const (
	Initial State = iota
	Healthy
	Unhealthy
	UnhealthyDraining
	Draining
	Unused
)

var stateNames = [...]string{
	Initial:           api.StateInitial,
	Healthy:           api.StateHealthy,
	Unhealthy:         api.StateUnhealthy,
	UnhealthyDraining: api.StateUnhealthyDraining,
	Draining:          api.StateDraining,
	Unused:            api.StateUnused,
}

// String is NLB's name of the state, as describe-target-health shows it.
func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "unknown"
}

// live says whether a target in this state may take new flows when its
// group fails open.
func (s State) live() bool { return s == Initial || s == Healthy || s.unhealthy() }

func (s State) unhealthy() bool { return s == Unhealthy || s == UnhealthyDraining }
