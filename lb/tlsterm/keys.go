package tlsterm

import (
	"crypto/rand"
	"crypto/tls"
	"sync"
	"sync/atomic"
	"time"
)

// TicketKeys are the session-ticket keys of every TLS listener of the
// process: a ticket issued on one listener (or socket) resumes on another.
// The newest key issues tickets; the two before it still decrypt, so a
// ticket lives for two to three rotation periods.
type TicketKeys struct {
	mu      sync.Mutex
	keys    [][32]byte // newest first
	version atomic.Uint64
	stop    chan struct{}
	done    chan struct{}
}

// keep is how many keys decrypt tickets: the current one and two before.
const keep = 3

// DefaultRotation is how often a new ticket key takes over.
const DefaultRotation = time.Hour

// NewTicketKeys starts with keys (handed over by a previous process, say),
// or a fresh random key when there are none, and rotates every period.
func NewTicketKeys(period time.Duration, keys [][32]byte) *TicketKeys {
	k := &TicketKeys{stop: make(chan struct{}), done: make(chan struct{})}
	k.keys = append(k.keys, keys...)
	if len(k.keys) == 0 {
		k.rotate()
	}
	k.version.Store(1)
	go func() {
		defer close(k.done)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				k.rotate()
			case <-k.stop:
				return
			}
		}
	}()
	return k
}

func (k *TicketKeys) rotate() {
	var key [32]byte
	rand.Read(key[:])
	k.mu.Lock()
	k.keys = append([][32]byte{key}, k.keys...)
	if len(k.keys) > keep {
		k.keys = k.keys[:keep]
	}
	k.mu.Unlock()
	k.version.Add(1)
}

// Keys returns the keys, newest first.
func (k *TicketKeys) Keys() [][32]byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([][32]byte(nil), k.keys...)
}

// apply gives cfg the current keys if it has older ones (seen is the
// version it last got).
func (k *TicketKeys) apply(cfg *tls.Config, seen *atomic.Uint64) {
	v := k.version.Load()
	if seen.Load() == v {
		return
	}
	cfg.SetSessionTicketKeys(k.Keys())
	seen.Store(v)
}

// Close stops the rotation.
func (k *TicketKeys) Close() {
	close(k.stop)
	<-k.done
}
