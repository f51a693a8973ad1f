package lb

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l4lb/l4lb/pkg/config"
)

// TestReloadRemovingUDPListenerUnderLoad removes a UDP listener by reload
// while clients open new flows on it as fast as they can, ten times over.
// Every flow the removed listener made must end with it: a read loop still
// holding a batch when the listener closed used to make flows after the
// final sweep (their sockets and budget slots were never given back) and add
// them to an epoll set already closed. Run under -race, the test also checks
// that the listener's descriptors are not touched by two goroutines at once.
func TestReloadRemovingUDPListenerUnderLoad(t *testing.T) {
	tgt := startUDPTarget(t, false)
	cfg := udpConfig([]config.Target{{Address: tgt.addr, Weight: 1}}, nil)
	srv, _ := startUDPServer(t, cfg, Options{})
	target := srv.Registry.Group("tg").Targets()[0]

	with := *cfg
	gone := cfg.Listeners[0]
	gone.Name = "gone"
	with.Listeners = []config.Listener{cfg.Listeners[0], gone}

	for cycle := range 10 {
		if err := srv.Reload(&with); err != nil {
			t.Fatalf("cycle %d: adding the listener: %v", cycle, err)
		}
		addr := srv.UDPAddrs("gone")[0].(*net.UDPAddr)
		before := tgt.flows()
		var stop atomic.Bool
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				// Each datagram from a socket of its own: a new flow each.
				for i := 0; i < 2000 && !stop.Load(); i++ {
					c, err := net.DialUDP("udp", nil, addr)
					if err != nil {
						continue
					}
					c.Write([]byte("x"))
					c.Close()
				}
			})
		}
		// The flood is under way: the target has seen new flows.
		deadline := time.Now().Add(5 * time.Second)
		for tgt.flows() < before+100 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if err := srv.Reload(cfg); err != nil {
			t.Fatalf("cycle %d: removing the listener: %v", cycle, err)
		}
		// Reload returns once the removed listener has closed.
		if n := target.Flows(); n != 0 {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("cycle %d: %d flows of the removed listener outlived it", cycle, n)
		}
		stop.Store(true)
		wg.Wait()
	}
}
