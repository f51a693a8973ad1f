package main

import (
	"testing"

	"github.com/l4lb/l4lb/pkg/api"
)

func TestBFDSummary(t *testing.T) {
	for _, c := range []struct {
		in   *api.BFDSession
		want string
	}{
		{nil, "-"},
		{&api.BFDSession{State: "up", DetectTimeMS: 600}, "up, detect 600ms"},
		{&api.BFDSession{State: "up", DetectTimeMS: 900, Multihop: true}, "up, detect 900ms, multihop"},
		{&api.BFDSession{State: "down", Diagnostic: "control detection time expired"}, "down (control detection time expired)"},
		{&api.BFDSession{State: "init", DetectTimeMS: 3000, Multihop: true, Diagnostic: "neighbor signaled session down"}, "init, detect 3000ms, multihop (neighbor signaled session down)"},
	} {
		if got := bfdSummary(c.in); got != c.want {
			t.Errorf("bfdSummary(%+v) = %q, want %q", c.in, got, c.want)
		}
	}
}
