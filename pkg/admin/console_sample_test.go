package admin

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/pkg/metrics"
)

// A sample sums an object's series over its zones and protocols, keeps
// the labels that are not the object's, and rates are per second between
// two samples.
func TestSamplerRates(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	// The listener's and the target's series exist from their start, as
	// l4lb makes them; a reject reason's only once it is counted.
	a, b := m.Counter(metrics.NewFlows, "web", "TCP", "a"), m.Counter(metrics.NewFlows, "web", "TCP", "b")
	m.AddTarget("tg", "127.0.0.1:80")
	s := newSampler(t.Context(), reg)
	s.sample()
	a.Add(30)
	b.Add(10)
	m.Counter(metrics.RejectedFlows, "web", "TCP", "a", "acl").Add(4)
	m.Counter(metrics.RejectedFlows, "web", "TCP", "b", "source_limit").Add(2)
	m.Counter(metrics.TargetNewFlows, "tg", "127.0.0.1:80").Add(20)
	s.mu.Lock()
	s.at = s.at.Add(-2 * time.Second) // the last sample, two seconds ago
	s.mu.Unlock()
	s.sample()
	s.read(func(cur, rate map[string]series, spark map[string][]float64) {
		l, r := cur[listenerKey("web")], rate[listenerKey("web")]
		if l["new_flows_total"] != 40 || r["new_flows_total"] < 19 || r["new_flows_total"] > 20 {
			t.Errorf("the listener's new flows: %v, %v/s; want 40, 20/s", l["new_flows_total"], r["new_flows_total"])
		}
		if by := l.by("rejected_flows_total", "reason"); by["acl"] != 4 || by["source_limit"] != 2 || l.sum("rejected_flows_total") != 6 {
			t.Errorf("rejects by reason: %v, sum %v", by, l.sum("rejected_flows_total"))
		}
		if x := r.sum("rejected_flows_total"); x < 2.9 || x > 3 {
			t.Errorf("rejects/s of reasons first counted: %v, want 3", x)
		}
		tk := targetKey("tg", "127.0.0.1:80")
		if sp := spark[tk]; len(sp) != 1 || sp[0] < 9.5 || sp[0] > 10 {
			t.Errorf("the target's sparkline: %v, want one point of 10/s", sp)
		}
	})
}

// Sampling stops when its context ends, and does not start again.
func TestSamplerStopsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	s := newSampler(ctx, prometheus.NewRegistry())
	s.view()
	running := func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.running }
	if !running() {
		t.Fatal("a viewed console does not sample")
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for running() {
		if time.Now().After(deadline) {
			t.Fatal("the sampling goes on after its context ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.view()
	if running() {
		t.Fatal("the sampling started again after its context ended")
	}
}
