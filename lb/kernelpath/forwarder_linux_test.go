package kernelpath

import (
	"net/netip"
	"testing"
	"time"

	"github.com/l4lb/l4lb/lb/registry"
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
