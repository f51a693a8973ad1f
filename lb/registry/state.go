package registry

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

// stateNames are NLB's names of the states.
var stateNames = [...]string{
	Initial:           "initial",
	Healthy:           "healthy",
	Unhealthy:         "unhealthy",
	UnhealthyDraining: "unhealthy.draining",
	Draining:          "draining",
	Unused:            "unused",
}

// Reason codes the registry gives, as NLB names them (health checks give
// the others).
const (
	ReasonInitialHealthChecking    = "Elb.InitialHealthChecking"
	ReasonDeregistrationInProgress = "Target.DeregistrationInProgress"
)

// String is NLB's name of the state, as describe-target-health shows it.
func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "unknown"
}

// ParseState is the state NLB names name.
func ParseState(name string) (State, bool) {
	for s, n := range stateNames {
		if n == name {
			return State(s), true
		}
	}
	return 0, false
}

// live says whether a target in this state may take new flows when its
// group fails open.
func (s State) live() bool { return s == Initial || s == Healthy || s.unhealthy() }

func (s State) unhealthy() bool { return s == Unhealthy || s == UnhealthyDraining }
