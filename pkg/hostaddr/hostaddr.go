// Package hostaddr knows this host's own IP addresses, so that l4lb can
// tell a target that is itself (a forwarding loop) from one that is not.
// A Set is read without locks on the data path; Watch keeps it current as
// addresses come and go.
//
//	s := hostaddr.New()            // read once
//	go s.Watch(stop, onChange)     // Linux: netlink; elsewhere a poll
//	if s.Local(ip) { ... }
package hostaddr

import (
	"net"
	"net/netip"
	"sync/atomic"
)

// Set is the host's addresses as last read.
type Set struct {
	addrs atomic.Pointer[map[netip.Addr]struct{}]
}

// New reads the host's addresses.
func New() *Set {
	s := &Set{}
	s.Refresh()
	return s
}

// Refresh reads the host's addresses again, and reports whether they
// changed.
func (s *Set) Refresh() bool {
	m := map[netip.Addr]struct{}{}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				m[p.Addr().Unmap().WithZone("")] = struct{}{}
			}
		}
	}
	old := s.addrs.Swap(&m)
	if old == nil || len(*old) != len(m) {
		return true
	}
	for a := range m {
		if _, ok := (*old)[a]; !ok {
			return true
		}
	}
	return false
}

// Local reports whether ip is this host's: a loopback address, or one of
// its interfaces' addresses. A nil Set knows loopback alone.
func (s *Set) Local(ip netip.Addr) bool {
	ip = ip.Unmap()
	if ip.IsLoopback() {
		return true
	}
	if s == nil {
		return false
	}
	m := s.addrs.Load()
	if m == nil {
		return false
	}
	_, ok := (*m)[ip.WithZone("")]
	return ok
}
