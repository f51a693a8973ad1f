package hostaddr

import (
	"net"
	"net/netip"
	"testing"
)

// Loopback addresses are always the host's, the interfaces' addresses are,
// documentation addresses are not; a nil Set knows loopback alone.
func TestLocal(t *testing.T) {
	s := New()
	for _, a := range []string{"127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"} {
		if !s.Local(netip.MustParseAddr(a)) || !(*Set)(nil).Local(netip.MustParseAddr(a)) {
			t.Errorf("%s is not local", a)
		}
	}
	if s.Local(netip.MustParseAddr("192.0.2.1")) || (*Set)(nil).Local(netip.MustParseAddr("192.0.2.1")) {
		t.Error("192.0.2.1 (TEST-NET-1) is local")
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err == nil && !s.Local(p.Addr()) {
			t.Errorf("the interface address %s is not local", p.Addr())
		}
	}
	if s.Refresh() {
		t.Error("a second read with nothing changed reports a change")
	}
}
