package tcpproxy

import (
	"net"
	"sync"
	"time"

	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/api"
)

// trackedFlow is what the tracker knows of an open flow, on a goroutine
// (flow) or on an event loop (evFlow).
type trackedFlow interface {
	flowID() uint64
	listenerOf() *listener
	targetOf() *registry.Target
	// resetFlow resets both sides if it still is flow id, counting the
	// reset as l4lb's when lb is set. An event loop's flow is reset by its
	// loop, shortly after.
	resetFlow(id uint64, lb bool)
	describe(now time.Time) api.Flow
}

// tracker knows every open flow, so that shutdown can wait for them and, at
// its deadline, close the rest (traefik's connection tracker). It is sharded to
// keep the per-flow lock short under many cores.
type tracker struct {
	shards [16]trackerShard
	// setups are the client connections of goroutine flows still in
	// setup (a TLS handshake, a PROXY header, a connect), which closeAll
	// closes too: the drain's deadline must not wait for them.
	setups sync.Map   // *net.TCPConn -> struct{}
	mu     sync.Mutex // guards n and waiters
	n      int
	waiter chan struct{}
}

type trackerShard struct {
	mu    sync.Mutex
	flows map[trackedFlow]struct{}
}

func (t *tracker) init() {
	for i := range t.shards {
		t.shards[i].flows = map[trackedFlow]struct{}{}
	}
}

func (t *tracker) add(f trackedFlow) {
	sh := &t.shards[f.flowID()%uint64(len(t.shards))]
	sh.mu.Lock()
	sh.flows[f] = struct{}{}
	sh.mu.Unlock()
	t.mu.Lock()
	t.n++
	t.mu.Unlock()
}

func (t *tracker) remove(f trackedFlow) {
	sh := &t.shards[f.flowID()%uint64(len(t.shards))]
	sh.mu.Lock()
	delete(sh.flows, f)
	sh.mu.Unlock()
	t.settled()
}

// accepted counts a connection still in setup (admission, connect) as an
// open flow, so that a drain waits for it too; settled ends that count once
// the connection was refused or became a flow (add counts it then).
func (t *tracker) accepted() {
	t.mu.Lock()
	t.n++
	t.mu.Unlock()
}

func (t *tracker) settled() {
	t.mu.Lock()
	t.n--
	if t.n == 0 && t.waiter != nil {
		close(t.waiter)
		t.waiter = nil
	}
	t.mu.Unlock()
}

func (t *tracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
}

// idle returns a channel closed once no flow is open.
func (t *tracker) idle() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	ch := make(chan struct{})
	if t.n == 0 {
		close(ch)
		return ch
	}
	if t.waiter == nil {
		t.waiter = make(chan struct{})
	}
	return t.waiter
}

// closeAll resets every open flow and returns how many it closed.
func (t *tracker) closeAll() int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for f := range sh.flows {
			f.resetFlow(f.flowID(), false)
			n++
		}
		sh.mu.Unlock()
	}
	t.setups.Range(func(c, _ any) bool {
		c.(*net.TCPConn).Close()
		n++
		return true
	})
	return n
}

// each calls fn for open flows until it returns false. Flows seen under a
// shard's lock have not finished, so their fields are stable.
func (t *tracker) each(fn func(trackedFlow) bool) {
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for f := range sh.flows {
			if !fn(f) {
				sh.mu.Unlock()
				return
			}
		}
		sh.mu.Unlock()
	}
}

// reset resets f if it is still the open flow numbered id, counting the
// reset as l4lb's. The flow's
// presence in its shard, checked under the shard's lock, proves it has not
// finished and been reused for another connection.
func (t *tracker) reset(f trackedFlow, id uint64) {
	sh := &t.shards[id%uint64(len(t.shards))]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.flows[f]; ok && f.flowID() == id {
		f.resetFlow(id, true)
	}
}
