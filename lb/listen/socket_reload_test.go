package listen

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/l4lb/l4lb/pkg/config"
)

// Diff opens what a config adds, lists what it removes, treats a changed
// port as both, skips the other protocol, and on a failed open closes what
// it had opened.
func TestDiff(t *testing.T) {
	ip := netip.MustParseAddr("127.0.0.1")
	bind := []config.BindAddr{{IP: ip}}
	cfg := &config.Config{Listeners: []config.Listener{
		{Name: "kept", Protocol: config.TCP, Port: 80, Bind: bind},
		{Name: "moved", Protocol: config.TCP, Port: 8443, Bind: bind},
		{Name: "added", Protocol: config.TCPUDP, Port: 53, Bind: bind},
		{Name: "udp", Protocol: config.UDP, Port: 54, Bind: bind},
	}}
	cur := map[Key]string{
		{"kept", ip, 80}:    "kept",
		{"moved", ip, 443}:  "moved:443",
		{"removed", ip, 90}: "removed",
	}
	var opened, closed []string
	open := func(lc *config.Listener, b config.BindAddr) (string, error) {
		opened = append(opened, lc.Name)
		return lc.Name, nil
	}
	add, remove, err := Diff(cfg, config.Protocol.HasTCP, cur, open, func(s string) { closed = append(closed, s) })
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(remove)
	if len(add) != 2 || add[Key{"moved", ip, 8443}] != "moved" || add[Key{"added", ip, 53}] != "added" {
		t.Fatalf("added %v", add)
	}
	if !slices.Equal(remove, []string{"moved:443", "removed"}) || len(closed) != 0 {
		t.Fatalf("removed %v, closed %v", remove, closed)
	}

	opened = nil
	boom := errors.New("address in use")
	_, _, err = Diff(cfg, config.Protocol.HasTCP, cur, func(lc *config.Listener, b config.BindAddr) (string, error) {
		if lc.Name == "added" {
			return "", boom
		}
		opened = append(opened, lc.Name)
		return lc.Name, nil
	}, func(s string) { closed = append(closed, s) })
	if !errors.Is(err, boom) || !slices.Equal(closed, opened) || len(opened) != 1 {
		t.Fatalf("failed open: err %v, opened %v, closed %v", err, opened, closed)
	}
}
