package tcpproxy

import (
	"time"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/registry"
)

// endFlows resets the TCP flows pinned to t, spread over up to three
// seconds rather than all at once (NLB spreads its closes too), so clients
// do not all reconnect in the same instant. It stops early when l4lb shuts
// down.
func (s *Server) endFlows(t *registry.Target, why string) {
	s.endFlowsWhere(func(f trackedFlow) bool { return f.targetOf() == t }, t.Name, why)
}

// endFlowsWhere resets the flows that match, spread over a few seconds so
// that their clients do not all come back at once.
func (s *Server) endFlowsWhere(match func(trackedFlow) bool, what, why string) {
	type victim struct {
		f  trackedFlow
		id uint64
	}
	var vs []victim
	s.flows.each(func(f trackedFlow) bool {
		if match(f) {
			vs = append(vs, victim{f, f.flowID()})
		}
		return true
	})
	if len(vs) == 0 {
		return
	}
	n := time.Duration(len(vs))
	spread := min(3*time.Second, n*20*time.Millisecond)
	step := spread / n
	s.log.Info("terminating flows", zap.String("of", what), zap.Int(logFlows, len(vs)), zap.String("why", why), zap.Duration("spread", spread))
	for i, v := range vs {
		if s.closing.Load() {
			return
		}
		if i > 0 {
			time.Sleep(step)
		}
		s.flows.reset(v.f, v.id)
	}
}
