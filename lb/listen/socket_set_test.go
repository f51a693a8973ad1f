package listen

import (
	"net"
	"net/netip"
	"os"
	"testing"
)

type fakeMember struct {
	key   Key
	zone  string
	addr  net.Addr
	route *Route
}

func (f *fakeMember) Key() Key                                      { return f.key }
func (f *fakeMember) Zone() string                                  { return f.zone }
func (f *fakeMember) Addr() net.Addr                                { return f.addr }
func (f *fakeMember) Files(add func(name string, f *os.File)) error { return nil }
func (f *fakeMember) Routes() []*Route                              { return []*Route{f.route} }

func TestSet(t *testing.T) {
	a1, a2 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	r1, r2 := &Route{}, &Route{}
	web1 := &fakeMember{key: Key{"web", a1, 80}, zone: "a", addr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(a1, 80)), route: r1}
	web2 := &fakeMember{key: Key{"web", a2, 80}, zone: "b", addr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(a2, 80)), route: r2}
	dns := &fakeMember{key: Key{"dns", a1, 53}, zone: "a", addr: net.UDPAddrFromAddrPort(netip.AddrPortFrom(a1, 53)), route: r1}
	unbound := &fakeMember{key: Key{"late", a1, 81}, zone: "a"}
	var s Set[*fakeMember]
	s.Store([]*fakeMember{web1, web2, dns, unbound})

	if m, ok := s.Find("web", a2); !ok || m != web2 {
		t.Fatalf("Find(web, %v) = %v, %v", a2, m, ok)
	}
	if m, ok := s.Find("web", netip.Addr{}); !ok || m != web1 {
		t.Fatalf("Find(web) without an address = %v, %v; want the first", m, ok)
	}
	if m, ok := s.Find("web", netip.MustParseAddr("::ffff:192.0.2.2")); !ok || m != web2 {
		t.Fatalf("Find(web, a mapped address) = %v, %v", m, ok)
	}
	if _, ok := s.Find("nope", a1); ok {
		t.Fatal("Find of a listener that is not there")
	}
	if got := s.Addrs("web"); len(got) != 2 || got[1].String() != "192.0.2.2:80" {
		t.Fatalf("Addrs(web) = %v", got)
	}
	if got := s.Addrs("late"); len(got) != 0 {
		t.Fatalf("Addrs of an unbound member = %v", got)
	}
	if got := s.Bound(); len(got) != 3 || got[2] != netip.AddrPortFrom(a1, 53) {
		t.Fatalf("Bound = %v", got)
	}
	zr := s.ZoneRoutes("a")
	if len(zr) != 3 || len(zr["web"]) != 1 || zr["web"][0] != r1 || len(zr["dns"]) != 1 {
		t.Fatalf("ZoneRoutes(a) = %v", zr)
	}
	if by := s.ByKey(); len(by) != 4 || by[Key{"web", a2, 80}] != web2 {
		t.Fatalf("ByKey = %v", by)
	}
}
