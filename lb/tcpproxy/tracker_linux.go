package tcpproxy

import (
	"sync"
)

// tracker knows every open flow, so that shutdown can wait for them and, at
// its deadline, close the rest (traefik's connection tracker). It is sharded to
// keep the per-flow lock short under many cores.
type tracker struct {
	shards [16]trackerShard
	mu     sync.Mutex // guards n and waiters
	n      int
	waiter chan struct{}
}

type trackerShard struct {
	mu    sync.Mutex
	flows map[*flow]struct{}
}

func (t *tracker) init() {
	for i := range t.shards {
		t.shards[i].flows = map[*flow]struct{}{}
	}
}

func (t *tracker) add(f *flow) {
	sh := &t.shards[f.id%uint64(len(t.shards))]
	sh.mu.Lock()
	sh.flows[f] = struct{}{}
	sh.mu.Unlock()
	t.mu.Lock()
	t.n++
	t.mu.Unlock()
}

func (t *tracker) remove(f *flow) {
	sh := &t.shards[f.id%uint64(len(t.shards))]
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
			f.abort()
			n++
		}
		sh.mu.Unlock()
	}
	return n
}

// each calls fn for open flows until it returns false. Flows seen under a
// shard's lock have not finished, so their fields are stable.
func (t *tracker) each(fn func(*flow) bool) {
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
// reset as l4lb's, and reports whether this call ended it. The flow's
// presence in its shard, checked under the shard's lock, proves it has not
// finished and been reused for another connection.
func (t *tracker) reset(f *flow, id uint64) bool {
	sh := &t.shards[id%uint64(len(t.shards))]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.flows[f]; !ok || f.id != id {
		return false
	}
	if !f.abort() {
		return false
	}
	f.l.lbResets.Inc()
	return true
}
