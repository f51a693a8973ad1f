package listen

import (
	"net"
	"net/netip"
	"os"
	"sync"
)

// Member is one listener address of a data plane (a TCP listener, a UDP
// front), as a Set holds it.
type Member interface {
	Key() Key
	Zone() string
	Addr() net.Addr // nil until bound
	// Files adds a duplicate of each of its sockets, by name, for a new
	// process to take over.
	Files(add func(name string, f *os.File)) error
	// Routes are every route it may take (its own and its SNI rules').
	Routes() []*Route
}

// Listeners is what a data plane's listener set answers about its
// addresses.
type Listeners interface {
	// Addrs lists the bound addresses of the named listener.
	Addrs(name string) []net.Addr
	// Bound lists every bound listener address.
	Bound() []netip.AddrPort
	// ZoneRoutes lists, per listener name, the routes of those bound in
	// zone.
	ZoneRoutes(zone string) map[string][]*Route
	// Each calls fn with every bound address: its key, zone and address.
	Each(fn func(k Key, zone string, addr netip.AddrPort))
}

// Set is a data plane's listener addresses now. A reload replaces the list
// whole; readers take the list of the moment and never see half of one.
type Set[M Member] struct {
	mu   sync.Mutex
	list []M
}

// Current is the list now; the caller must not change it.
func (s *Set[M]) Current() []M {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.list
}

// Store replaces the list.
func (s *Set[M]) Store(list []M) {
	s.mu.Lock()
	s.list = list
	s.mu.Unlock()
}

// ByKey maps the members now by their keys, for a reload to tell the kept
// from the removed.
func (s *Set[M]) ByKey() map[Key]M {
	out := map[Key]M{}
	for _, m := range s.Current() {
		out[m.Key()] = m
	}
	return out
}

// Addrs lists the bound addresses of the named listener, one per bind IP.
func (s *Set[M]) Addrs(name string) []net.Addr {
	var out []net.Addr
	for _, m := range s.Current() {
		if m.Key().Name == name {
			if a := m.Addr(); a != nil {
				out = append(out, a)
			}
		}
	}
	return out
}

// Bound lists every bound listener address.
func (s *Set[M]) Bound() []netip.AddrPort {
	var out []netip.AddrPort
	for _, m := range s.Current() {
		switch a := m.Addr().(type) {
		case *net.TCPAddr:
			out = append(out, a.AddrPort())
		case *net.UDPAddr:
			out = append(out, a.AddrPort())
		}
	}
	return out
}

// Each calls fn with every bound address, in the list's order.
func (s *Set[M]) Each(fn func(k Key, zone string, addr netip.AddrPort)) {
	for _, m := range s.Current() {
		switch a := m.Addr().(type) {
		case *net.TCPAddr:
			fn(m.Key(), m.Zone(), a.AddrPort())
		case *net.UDPAddr:
			fn(m.Key(), m.Zone(), a.AddrPort())
		}
	}
}

// Files adds a duplicate of every member's sockets, by name.
func (s *Set[M]) Files(add func(name string, f *os.File)) error {
	for _, m := range s.Current() {
		if err := m.Files(add); err != nil {
			return err
		}
	}
	return nil
}

// Find is the named listener's member bound to dst, or its first when dst
// is not given or none is.
func (s *Set[M]) Find(name string, dst netip.Addr) (M, bool) {
	var first M
	found := false
	for _, m := range s.Current() {
		k := m.Key()
		if k.Name != name {
			continue
		}
		if !found || (dst.IsValid() && k.IP == dst.Unmap()) {
			first, found = m, true
		}
	}
	return first, found
}

// ZoneRoutes lists, per listener name, the routes of the members bound in
// zone (for zone health).
func (s *Set[M]) ZoneRoutes(zone string) map[string][]*Route {
	out := map[string][]*Route{}
	for _, m := range s.Current() {
		if m.Zone() == zone {
			name := m.Key().Name
			out[name] = append(out[name], m.Routes()...)
		}
	}
	return out
}
