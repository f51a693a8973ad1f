package tcpproxy

import (
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Direction states for parking. Only the direction's own goroutine moves it
// from running to parking; unpark never resumes a direction that is still
// registering, it marks it woken and the registering goroutine carries on.
const (
	running int32 = iota
	parking
	parked
	woken
)

// parker lets idle directions wait without a goroutine. A direction that has
// moved nothing for a while registers its source socket in the parker's own
// epoll set (one-shot) and its goroutine exits; when the socket turns readable
// (or hangs up), or the flow's idle timeout passes, the parker starts a fresh
// goroutine that carries on where the old one stopped. An idle flow then costs
// its two sockets and its pooled flow struct, not two parked goroutine stacks.
//
// Active directions never come here: they wait in Go's own poller, and only a
// deadline that fires on a direction with no traffic since the last one parks
// it, so request/response traffic pays nothing for this.
type parker struct {
	epfd   int
	log    *zap.Logger
	wake   int           // eventfd that interrupts the wait on close
	scan   time.Duration // how often parked flows are checked for idle expiry
	mu     sync.Mutex
	slots  []*halfFlow // epoll user data is a slot index, never a Go pointer
	free   []int32
	closed atomic.Bool
	done   chan struct{}
	due    []*halfFlow // scratch for the expiry scan, owned by loop

	// Parking frees goroutine stacks, but the runtime only returns their
	// spans at the next GC, and an idle proxy allocates too little to cause
	// one, and the scavenger hands pages back to the OS slowly. So the loop
	// frees memory to the OS (at most every gcEvery) once a burst of parks
	// is over, or during a steady stream of them, and idle flows stop
	// costing their old stacks and buffers.
	parks     atomic.Int64
	lastParks int64 // parks at the previous scan
	lastGC    time.Time
	bg        sync.WaitGroup // a memory release in progress
}

const (
	gcAfterBurst = 1024  // parks, followed by a scan interval with none
	gcAfterParks = 65536 // parks in a stream that does not stop
	gcEvery      = 10 * time.Second
)

func newParker(scan time.Duration, log *zap.Logger) (*parker, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1}
	if err := unix.EpollCtl(fd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(fd)
		unix.Close(wake)
		return nil, err
	}
	p := &parker{epfd: fd, wake: wake, scan: scan, done: make(chan struct{}), log: log}
	go p.loop()
	return p, nil
}

// park hands h to the parker. It returns false if h must keep its goroutine
// (parker closed, epoll refused, or woken while registering); after true the
// caller must not touch h.
func (p *parker) park(h *halfFlow) bool {
	p.mu.Lock()
	if p.closed.Load() {
		p.mu.Unlock()
		return false
	}
	var slot int32
	if n := len(p.free); n > 0 {
		slot = p.free[n-1]
		p.free = p.free[:n-1]
	} else {
		slot = int32(len(p.slots))
		p.slots = append(p.slots, nil)
	}
	p.slots[slot] = h
	h.slot = slot
	h.state.Store(parking)
	p.mu.Unlock()
	// The descriptor is used only inside the socket's RawConn callback,
	// which holds a reference to it: an abort that closes the socket
	// meanwhile cannot free the number for another socket to reuse, and a
	// socket closed already is refused here instead of registering whatever
	// now has its number.
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: slot}
	ok := false
	cerr := h.srcRC.Control(func(fd uintptr) {
		if h.f.aborted.Load() {
			return
		}
		if unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev) != nil {
			return
		}
		if h.state.CompareAndSwap(parking, parked) {
			ok = true
			return
		}
		// An abort came while registering: stay on this goroutine.
		unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
	if cerr == nil && ok {
		p.parks.Add(1)
		return true
	}
	h.state.Store(running)
	p.freeSlot(slot)
	return false
}

// unpark resumes a parked direction on a new goroutine; whoever wins the
// state change (an event, the expiry scan or an abort) does it, once.
func (p *parker) unpark(h *halfFlow) {
	for {
		switch h.state.Load() {
		case parked:
			if !h.state.CompareAndSwap(parked, running) {
				continue
			}
			// Remove the registration through the socket's RawConn, so
			// it is never done on a number that was closed and reused. A
			// socket closed already left the set when it closed.
			h.srcRC.Control(func(fd uintptr) { unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil) })
			p.freeSlot(h.slot)
			h.f.resume(h)
			return
		case parking:
			if h.state.CompareAndSwap(parking, woken) {
				return
			}
		default:
			return
		}
	}
}

func (p *parker) freeSlot(slot int32) {
	p.mu.Lock()
	p.slots[slot] = nil
	p.free = append(p.free, slot)
	p.mu.Unlock()
}

func (p *parker) loop() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 256)
	lastScan := time.Now()
	wait := int(max(p.scan/time.Millisecond, 1))
	for !p.closed.Load() {
		n, err := unix.EpollWait(p.epfd, events, wait)
		if err != nil && err != unix.EINTR {
			// Parked directions would wait for events that never come:
			// wake them all, and refuse parking from now on (idle
			// directions keep their goroutines).
			p.log.Error("parking idle flows stopped: epoll_wait failed; idle flows keep their goroutines from now on", zap.Error(err))
			p.wakeAll()
			return
		}
		for i := range max(n, 0) {
			p.mu.Lock()
			var h *halfFlow
			if s := events[i].Fd; s >= 0 && int(s) < len(p.slots) {
				h = p.slots[s]
			}
			p.mu.Unlock()
			// A slot reused since the event fired only causes a spurious
			// wake: the direction finds nothing to read and parks again.
			if h != nil {
				p.unpark(h)
			}
		}
		if now := time.Now(); now.Sub(lastScan) >= p.scan {
			lastScan = now
			p.expire(now)
			p.reclaim(now)
		}
	}
}

// reclaim returns freed memory to the OS after many parks: once they stop
// (a burst of flows gone idle), or after gcAfterParks of them.
func (p *parker) reclaim(now time.Time) {
	n := p.parks.Load()
	burstOver := n >= gcAfterBurst && n == p.lastParks
	p.lastParks = n
	if (burstOver || n >= gcAfterParks) && now.Sub(p.lastGC) >= gcEvery {
		p.parks.Add(-n)
		p.lastParks = 0
		p.lastGC = now
		// Off the loop: a GC of a large heap must not delay waking flows.
		// close waits for it.
		p.bg.Add(1)
		go func() {
			defer p.bg.Done()
			debug.FreeOSMemory()
		}()
	}
}

// expire wakes parked directions whose flow has idled past its timeout; the
// resumed goroutine sees that and ends the flow.
func (p *parker) expire(now time.Time) {
	p.due = p.due[:0]
	p.mu.Lock()
	for _, h := range p.slots {
		if h != nil && now.Sub(h.f.lastActive()) >= h.f.idle {
			p.due = append(p.due, h)
		}
	}
	p.mu.Unlock()
	for _, h := range p.due {
		p.unpark(h)
	}
}

// wakeAll refuses further parks and resumes every parked direction.
func (p *parker) wakeAll() {
	p.mu.Lock()
	p.closed.Store(true)
	hs := make([]*halfFlow, 0, len(p.slots))
	for _, h := range p.slots {
		if h != nil {
			hs = append(hs, h)
		}
	}
	p.mu.Unlock()
	for _, h := range hs {
		p.unpark(h)
	}
}

// close stops the loop; directions still parked are woken first.
func (p *parker) close() {
	p.wakeAll()
	unix.Write(p.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	<-p.done
	p.bg.Wait()
	unix.Close(p.epfd)
	unix.Close(p.wake)
}

// count is the number of directions parked now.
func (p *parker) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.slots) - len(p.free)
}
