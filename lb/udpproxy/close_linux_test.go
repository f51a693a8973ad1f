package udpproxy

import (
	"sync"
	"testing"

	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/config"
)

// TestEndFlowsRacesClose has the registry end a target's flows from several
// goroutines while the server closes. Close must wait for every termination
// it let start, and none may start once it waits: run under -race, an Add
// made between Close's check and its Wait is reported as a misuse.
func TestEndFlowsRacesClose(t *testing.T) {
	tgt := &registry.Target{Name: "t"}
	for range 200 {
		s, err := New(&config.Config{}, nil, Options{})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 4 {
			wg.Go(func() {
				<-start
				for range 20 {
					s.EndFlows(tgt, "test")
				}
			})
		}
		close(start)
		s.Close()
		wg.Wait()
	}
}
