package kernelpath

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/fastpath"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// Asking to end a target's flows never blocks, however many targets ask
// while the loop is busy (or is the asker: passive health runs on it), and
// the loop then ends each target's flows once.
func TestEndFlowsNeverBlocks(t *testing.T) {
	k := &Forwarder{endKick: make(chan struct{}, 1), ends: map[netip.AddrPort]endReq{}, stop: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 1000 {
			a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 80)
			k.EndFlows(&registry.Target{Addr: a, Name: a.String()}, "test")
			k.EndFlows(&registry.Target{Addr: a, Name: a.String()}, "asked twice")
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("EndFlows blocked while the loop was not reading")
	}
	if got := len(k.takeEnds()); got != 1000 {
		t.Fatalf("%d targets pending, want 1000", got)
	}
	if got := len(k.takeEnds()); got != 0 {
		t.Fatalf("%d targets still pending after the loop took them", got)
	}
	select {
	case <-k.endKick:
	default:
		t.Fatal("the loop was not kicked")
	}
}

// A read of the targets' reset counts that failed part way is not the
// baseline of the next: each reset is counted once, and a target missing
// from the partial read is not counted again from zero.
func TestPartialResetReadIsNoBaseline(t *testing.T) {
	a, b := netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.2:80")
	reg, err := registry.New(&config.Config{TargetGroups: []config.TargetGroup{{Name: "web", Protocol: config.TCP, Port: 80,
		Targets: []config.Target{{Address: a, Weight: 1}, {Address: b, Weight: 1}}}}},
		registry.Options{Metrics: metrics.New(prometheus.NewRegistry())})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	g := reg.Group("web")
	k := &Forwarder{opts: ForwarderOptions{Log: zap.NewNop()}, proto: "TCP", resets: map[netip.AddrPort]fastpath.Resets{},
		fronts: []*front{{Front: Front{Group: func() *registry.Group { return g }}}}}
	k.countResets(map[netip.AddrPort]fastpath.Resets{a: {Other: 2}, b: {Other: 3}}, nil)
	k.countResets(map[netip.AddrPort]fastpath.Resets{a: {Other: 4}}, errors.New("map iteration aborted"))
	k.countResets(map[netip.AddrPort]fastpath.Resets{a: {Other: 4}, b: {Other: 5}}, nil)
	for _, tg := range g.Targets() {
		want := map[netip.AddrPort]float64{a: 4, b: 5}[tg.Addr]
		if got := testutil.ToFloat64(tg.Resets); got != want {
			t.Errorf("target %s: %v resets counted, want %v", tg.Addr, got, want)
		}
	}
}
