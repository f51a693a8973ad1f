package lb

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/pkg/config"
)

// A reload whose new listener cannot bind (its port is taken) fails with
// nothing changed: no target registered, the old listener serving. Once the
// port is free, the same reload applies: the new listener serves and the
// target is there.
func TestReloadPortInUseChangesNothing(t *testing.T) {
	e1, e2 := startEcho(t), startEcho(t)
	cfg := testConfig([]config.Target{{Address: e1.addr, Weight: 1}}, nil)
	srv, addr := startServer(t, cfg, Options{})
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(busy.Addr().(*net.TCPAddr).Port)

	next := *cfg
	added := cfg.Listeners[0]
	added.Name, added.Port = "added", port
	next.Listeners = []config.Listener{cfg.Listeners[0], added}
	next.TargetGroups = []config.TargetGroup{cfg.TargetGroups[0]}
	next.TargetGroups[0].Targets = []config.Target{{Address: e1.addr, Weight: 1}, {Address: e2.addr, Weight: 1}}

	err = srv.Reload(&next)
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("reload onto a taken port: %v", err)
	}
	if n := len(srv.Registry.Group("tg").Targets()); n != 1 {
		t.Fatalf("a failed reload registered targets: %d", n)
	}
	if len(srv.Addrs("added")) != 0 {
		t.Fatal("a failed reload left a listener")
	}
	roundTrip(t, addr, "still here")

	busy.Close()
	if err := srv.Reload(&next); err != nil {
		t.Fatal(err)
	}
	if n := len(srv.Registry.Group("tg").Targets()); n != 2 {
		t.Fatalf("targets after the reload: %d", n)
	}
	got := srv.Addrs("added")
	if len(got) != 1 || got[0].(*net.TCPAddr).AddrPort() != netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port) {
		t.Fatalf("the added listener: %v", got)
	}
	roundTrip(t, got[0].String(), "new listener")
	roundTrip(t, addr, "old listener")
}
