package lb

import (
	"fmt"
	"testing"

	"github.com/l4lb/l4lb/pkg/config"
)

// examples/canary.yaml, as it documents itself: with stickiness on in both
// groups, a client stays in one group for all its connections, and clients
// spread 90/10.
func TestCanaryStickinessAsDocumented(t *testing.T) {
	cfg, err := config.Load("../examples/canary.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listeners[0].Port = 0
	srv := startedServer(t, cfg, Options{})
	dst := srv.Addrs("web")[0].String()
	groups := map[string]int{}
	for c := range 400 {
		client := fmt.Sprintf("127.0.%d.%d", 1+c/200, 1+c%200)
		var first string
		for port := 40000; port < 40020; port++ {
			r, err := srv.Route("web", fmt.Sprintf("%s:%d", client, port), dst, "tcp", "")
			if err != nil {
				t.Fatal(err)
			}
			if first == "" {
				first = r.TargetGroup
				groups[first]++
			} else if r.TargetGroup != first {
				t.Fatalf("client %s: connection from port %d went to group %s, its first to %s", client, port, r.TargetGroup, first)
			}
		}
	}
	// 400 clients at 10%: 40 expected, ±3 standard deviations (6 each).
	if g := groups["green"]; g < 22 || g > 58 || groups["blue"]+g != 400 {
		t.Fatalf("clients per group: %v; want about 360 blue and 40 green", groups)
	}
	t.Logf("clients per group: %v, each client in one group for all of its 20 connections", groups)

	// Without stickiness a client's connections spread over both.
	for i := range cfg.TargetGroups {
		cfg.TargetGroups[i].Attributes.Stickiness = false
	}
	plain := startedServer(t, cfg, Options{})
	dst = plain.Addrs("web")[0].String()
	seen := map[string]bool{}
	for port := 40000; port < 40200; port++ {
		r, _ := plain.Route("web", fmt.Sprintf("127.0.0.9:%d", port), dst, "tcp", "")
		seen[r.TargetGroup] = true
	}
	if !seen["blue"] || !seen["green"] {
		t.Fatalf("without stickiness, 200 connections of one client went to %v only", seen)
	}
}
