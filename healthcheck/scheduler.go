package healthcheck

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// Reporter receives state transitions. The target registry implements it.
type Reporter interface {
	SetHealth(group string, target netip.AddrPort, healthy bool, reason, detail string)
}

// Options are the injected parts of a Scheduler; the zero value works.
type Options struct {
	Logger  *zap.Logger
	Metrics *metrics.Metrics
}

// Scheduler runs one check loop per watched target: the first check at a
// random point within the first interval (so a restart does not probe every
// target at once), then one per interval, never two at a time for a target.
type Scheduler struct {
	rep     Reporter
	log     *zap.Logger
	m       *metrics.Metrics
	checker *checker
	ctx     context.Context
	cancel  context.CancelFunc
	mu      sync.Mutex
	watches map[key]*watch
	wg      sync.WaitGroup
}

type key struct {
	group  string
	target netip.AddrPort
}

type watch struct {
	key
	spec config.HealthCheck
	stop chan struct{}
	mu   sync.Mutex // guards m; held while reporting, so reports keep order
	m    Machine
	pass prometheus.Counter
	fail prometheus.Counter
	took prometheus.Gauge // the last active check's duration
}

// NewScheduler returns a scheduler reporting to rep.
func NewScheduler(rep Reporter, o Options) *Scheduler {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Scheduler{rep: rep, log: o.Logger, m: o.Metrics, checker: newChecker(), ctx: ctx, cancel: cancel, watches: map[key]*watch{}}
}

// Watch starts checking target of group with spec; watching it again replaces
// the spec and starts over from Initial.
func (s *Scheduler) Watch(group string, target netip.AddrPort, spec config.HealthCheck) {
	k := key{group, target}
	w := &watch{key: k, spec: spec, stop: make(chan struct{}), m: Machine{Rise: spec.HealthyThreshold, Fall: spec.UnhealthyThreshold}}
	w.pass = s.m.Counter(metrics.HealthChecks, group, target.String(), "success")
	w.fail = s.m.Counter(metrics.HealthChecks, group, target.String(), "failure")
	w.took = s.m.Gauge(metrics.HealthCheckLastDuration, group, target.String())
	s.mu.Lock()
	if old, ok := s.watches[k]; ok {
		close(old.stop)
	}
	s.watches[k] = w
	s.mu.Unlock()
	s.wg.Add(1)
	go s.loop(w)
}

// Unwatch stops checking a target.
func (s *Scheduler) Unwatch(group string, target netip.AddrPort) {
	s.mu.Lock()
	if w, ok := s.watches[key{group, target}]; ok {
		close(w.stop)
		delete(s.watches, key{group, target})
	}
	s.mu.Unlock()
}

// PassiveFailure counts a failed connect on live traffic as a failed check.
func (s *Scheduler) PassiveFailure(group string, target netip.AddrPort) {
	s.mu.Lock()
	w := s.watches[key{group, target}]
	s.mu.Unlock()
	if w != nil {
		s.observe(w, Result{Reason: api.ReasonFailedHealthChecks, Detail: "Connection to target failed on live traffic"})
	}
}

// Close stops every check and waits for the loops to end.
func (s *Scheduler) Close() {
	s.cancel()
	s.wg.Wait()
}

func (s *Scheduler) loop(w *watch) {
	defer s.wg.Done()
	first := time.Duration(rand.Int64N(int64(w.spec.Interval)))
	t := time.NewTimer(first)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		res := s.checker.check(s.ctx, &w.spec, w.target)
		select {
		case <-w.stop: // unwatched during the check: report nothing
			return
		default:
		}
		w.took.Set(time.Since(start).Seconds())
		s.observe(w, res)
		t.Reset(max(w.spec.Interval-time.Since(start), 0))
	}
}

func (s *Scheduler) observe(w *watch, res Result) {
	if res.Pass {
		w.pass.Inc()
	} else {
		w.fail.Inc()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.m.Observe(res.Pass) {
		return
	}
	state := w.m.State()
	s.log.Info("target health changed", zap.String("target_group", w.group), zap.Stringer("target", w.target),
		zap.Stringer("state", state), zap.String("reason", res.Reason), zap.String("detail", res.Detail))
	s.rep.SetHealth(w.group, w.target, state == Healthy, res.Reason, res.Detail)
}
