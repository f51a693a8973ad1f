package lb

import (
	"net/netip"
	"sync"
)

// sourceLimit caps a listener's open TCP connections per client IP
// (max_connections_per_source), over all its addresses. The client is the
// flow's: a trusted PROXY header's source when there is one.
type sourceLimit struct {
	max int32
	mu  sync.Mutex
	n   map[netip.Addr]int32
}

// newSourceLimit is nil, and costs nothing, when max is 0 (unlimited).
func newSourceLimit(max int) *sourceLimit {
	if max <= 0 {
		return nil
	}
	return &sourceLimit{max: int32(max), n: map[netip.Addr]int32{}}
}

// acquire takes a connection slot for ip, or reports that it has none left.
func (s *sourceLimit) acquire(ip netip.Addr) bool {
	ip = ip.Unmap()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n[ip] >= s.max {
		return false
	}
	s.n[ip]++
	return true
}

// release gives back a slot that acquire took.
func (s *sourceLimit) release(ip netip.Addr) {
	ip = ip.Unmap()
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.n[ip]; c > 1 {
		s.n[ip] = c - 1
	} else {
		delete(s.n, ip)
	}
}

// open is the number of connections ip holds now.
func (s *sourceLimit) open(ip netip.Addr) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int(s.n[ip.Unmap()])
}

// releaseSource gives back the slot a flow from src took, if the listener
// limits sources.
func (l *listener) releaseSource(src netip.AddrPort) {
	if l.limit != nil {
		l.limit.release(src.Addr())
	}
}
