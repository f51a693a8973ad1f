package admin

import (
	"context"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Sampling of the console's rates: once a second while a console is open,
// the metrics are gathered and each counter's rate since the last sample
// kept, with a few minutes of each target's new-flow rate for its
// sparkline. Nothing runs while no console asks.
const (
	sampleStep   = time.Second
	sparkPoints  = 240             // four minutes at one a second
	sampleLinger = 2 * time.Minute // sampling stops this long after the last snapshot
)

// series is one object's metric values, by metric and the labels that are
// not the object's (rejected_flows_total/reason=acl, say), summed over the
// object's zones and protocols.
type series map[string]float64

// objKey names a sampled object: "l/LISTENER" or "t/GROUP/TARGET".
func listenerKey(name string) string      { return "l/" + name }
func targetKey(group, addr string) string { return "t/" + group + "/" + addr }

// objectLabels are the labels that name an object rather than a series of
// it; their values are summed over.
var objectLabels = map[string]bool{"listener": true, "target_group": true, "target": true, "protocol": true, "zone": true}

// sampler keeps the last two samples of the metrics and the sparklines.
type sampler struct {
	g    prometheus.Gatherer
	done <-chan struct{} // closed: stop sampling for good

	mu      sync.Mutex
	at      time.Time // when cur was taken
	cur     map[string]series
	rate    map[string]series // per second, between the last two samples
	spark   map[string][]float64
	viewed  time.Time // the last snapshot asked
	running bool
}

func newSampler(ctx context.Context, g prometheus.Gatherer) *sampler {
	if ctx == nil {
		ctx = context.Background()
	}
	return &sampler{g: g, done: ctx.Done(), cur: map[string]series{}, rate: map[string]series{}, spark: map[string][]float64{}}
}

// stopped says whether the sampler's context is done.
func (s *sampler) stopped() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// view marks the console as open, starting the sampling loop if it does
// not run, and takes a first sample when there is none.
func (s *sampler) view() {
	s.mu.Lock()
	s.viewed = time.Now()
	start := !s.running && s.g != nil && !s.stopped()
	s.running = s.running || start
	first := s.at.IsZero()
	s.mu.Unlock()
	if first && s.g != nil {
		s.sample()
	}
	if start {
		go s.loop()
	}
}

func (s *sampler) loop() {
	t := time.NewTicker(sampleStep)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-s.done:
		}
		s.mu.Lock()
		idle := time.Since(s.viewed) > sampleLinger || s.stopped()
		if idle {
			s.running = false
		}
		s.mu.Unlock()
		if idle {
			return
		}
		s.sample()
	}
}

// sample gathers the metrics and computes the rates since the last sample.
func (s *sampler) sample() {
	mfs, err := s.g.Gather()
	if err != nil && len(mfs) == 0 {
		return
	}
	now := time.Now()
	next := map[string]series{}
	for _, mf := range mfs {
		name := strings.TrimPrefix(mf.GetName(), "l4lb_")
		if name == mf.GetName() {
			continue // not l4lb's
		}
		for _, m := range mf.GetMetric() {
			var obj, group, target string
			var extra []string
			for _, lp := range m.GetLabel() {
				switch lp.GetName() {
				case "listener":
					obj = listenerKey(lp.GetValue())
				case "target_group":
					group = lp.GetValue()
				case "target":
					target = lp.GetValue()
				}
				if !objectLabels[lp.GetName()] {
					extra = append(extra, lp.GetName()+"="+lp.GetValue())
				}
			}
			if target != "" {
				obj = targetKey(group, target)
			}
			if obj == "" {
				continue
			}
			key := name
			if len(extra) > 0 {
				key += "/" + strings.Join(extra, ",")
			}
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			if next[obj] == nil {
				next[obj] = series{}
			}
			next[obj][key] += v
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	dt := now.Sub(s.at).Seconds()
	rate := map[string]series{}
	for obj, vals := range next {
		prev := s.cur[obj]
		r := series{}
		for k, v := range vals {
			// A series new to a known object (a reject reason counted for
			// the first time) counted from 0; a new object has no rate yet.
			if p := prev[k]; prev != nil && dt > 0 && v >= p {
				r[k] = round2((v - p) / dt)
			}
		}
		rate[obj] = r
		if strings.HasPrefix(obj, "t/") && !s.at.IsZero() {
			sp := append(s.spark[obj], r["target_new_flows_total"])
			if len(sp) > sparkPoints {
				sp = sp[len(sp)-sparkPoints:]
			}
			s.spark[obj] = sp
		}
	}
	for obj := range s.spark {
		if next[obj] == nil {
			delete(s.spark, obj) // the target left
		}
	}
	s.at, s.cur, s.rate = now, next, rate
}

// read calls fn with the last sample's values, rates and sparklines, under
// the sampler's lock.
func (s *sampler) read(fn func(cur, rate map[string]series, spark map[string][]float64)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(s.cur, s.rate, s.spark)
}

func round2(v float64) float64 { return math.Round(v*100) / 100 }

// sum adds the values of keys that start with prefix (every reason of
// rejected_flows_total, say).
func (v series) sum(prefix string) float64 {
	t := 0.0
	for k, x := range v {
		if k == prefix || strings.HasPrefix(k, prefix+"/") {
			t += x
		}
	}
	return t
}

// by lists the values of prefix's series by one extra label's value
// (rejected_flows_total by reason), leaving out zeros.
func (v series) by(prefix, label string) map[string]float64 {
	var out map[string]float64
	for k, x := range v {
		rest, ok := strings.CutPrefix(k, prefix+"/")
		if !ok || x == 0 {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if val, ok := strings.CutPrefix(kv, label+"="); ok {
				if out == nil {
					out = map[string]float64{}
				}
				out[val] += x
			}
		}
	}
	return out
}
