package listen

import (
	"net/netip"
	"sync"
)

// SourceLimit caps a listener's open TCP connections per client IP
// (max_connections_per_source), over all its addresses. The client is the
// flow's: a trusted PROXY header's source when there is one.
type SourceLimit struct {
	max int32
	mu  sync.Mutex
	n   map[netip.Addr]int32
}

// NewSourceLimit is nil, and costs nothing, when max is 0 (unlimited).
func NewSourceLimit(max int) *SourceLimit {
	if max <= 0 {
		return nil
	}
	return &SourceLimit{max: int32(max), n: map[netip.Addr]int32{}}
}

// Acquire takes a connection slot for ip, or reports that it has none left.
func (s *SourceLimit) Acquire(ip netip.Addr) bool {
	ip = ip.Unmap()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n[ip] >= s.max {
		return false
	}
	s.n[ip]++
	return true
}

// Release gives back a slot that Acquire took.
func (s *SourceLimit) Release(ip netip.Addr) {
	ip = ip.Unmap()
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.n[ip]; c > 1 {
		s.n[ip] = c - 1
	} else {
		delete(s.n, ip)
	}
}

// Open is the number of connections ip holds now.
func (s *SourceLimit) Open(ip netip.Addr) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int(s.n[ip.Unmap()])
}
