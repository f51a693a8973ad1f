package tcpproxy

import (
	"errors"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/lb/listen"
)

// evloop is one of the per-core event loops that carry plain TCP flows, as
// HAProxy's and nginx's workers do: it accepts from its share of the
// SO_REUSEPORT listening sockets, connects to targets without blocking,
// and moves bytes with read/write or splice, all from one epoll set and one
// goroutine. A flow has no goroutine and no net.Conn, and its sockets are
// not in Go's poller; a batch of events costs one wakeup, not one per
// socket.
//
// The loop waits for its epoll set through Go's poller (an epoll descriptor
// is itself pollable), so an idle loop parks its goroutine like any other,
// and a busy one reads its events without a scheduler round trip.
//
// Everything about a loop's flows happens on the loop's goroutine. Others
// (a target's termination, a drain's deadline, a listener's close) post a
// command and wake it with an eventfd.
type evloop struct {
	s      *Server
	epfd   int
	ep     *os.File        // epfd in Go's poller
	rc     syscall.RawConn // ep's, for the wait
	wake   int             // eventfd
	events []unix.EpollEvent
	addr   rawAddr // the system calls' address buffer
	buf    []byte  // read buffer of small messages, written out at once
	now    int64   // unix nanoseconds, read once per batch of events
	scan   int64   // nanoseconds between idle and connect-timeout scans
	next   int64   // when the next scan is due
	onWait func(fd uintptr) bool

	evSlots
	backlog []*lsock  // listening sockets with connections left after a batch
	flows   []*evFlow // open flows, for the scans; a flow knows its index
	pool    []*evFlow // finished flows, for reuse
	evCmds
	stopped atomic.Bool
	done    chan struct{}
}

// evSlots are a loop's registrations: an event's Fd is an index into slots
// and its Pad the tag of the registration, so an event for a socket closed
// earlier in the same batch (its slot reused) is recognised and ignored.
type evSlots struct {
	slots []evSlot
	free  []int32
	tags  uint32
}

// evCmds are the commands other goroutines post to a loop.
type evCmds struct {
	mu    sync.Mutex
	cmds  []evCmd
	spare []evCmd
}

// evSlot is what a registration's events are for: a listening socket or
// one flow (whose client and target sockets have tags of their own).
type evSlot struct {
	ls *lsock
	f  *evFlow
}

// evCmd is work posted to a loop: exactly one field is set.
type evCmd struct {
	add, remove *lsock          // start or stop accepting on a socket
	reset       *evFlow         // reset a flow, if it still is flow id
	id          uint64          //
	countLB     bool            // count the reset as l4lb's
	cut         bool            // the drain's deadline: end the connects under way
	ack         chan<- struct{} // closed once done
}

// Registration tags: the wake eventfd's, and the loop's listening sockets'
// (one slot each; the slot's ls says which).
const (
	tagWake   = 1
	tagListen = 2
	firstTag  = 3
)

func newEvloop(s *Server, scan time.Duration) (*evloop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	lp := &evloop{s: s, epfd: epfd, wake: wake, events: make([]unix.EpollEvent, 256), buf: make([]byte, bufSize),
		scan: int64(scan), evSlots: evSlots{tags: firstTag}, done: make(chan struct{})}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1, Pad: tagWake}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		lp.closeFDs()
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	// An epoll descriptor polls readable while it has events: Go's poller
	// waits for it, and the loop reads them with a zero timeout.
	if err := unix.SetNonblock(epfd, true); err != nil {
		lp.closeFDs()
		return nil, os.NewSyscallError("fcntl", err)
	}
	lp.ep = os.NewFile(uintptr(epfd), "l4lb-evloop")
	if lp.rc, err = lp.ep.SyscallConn(); err != nil {
		lp.ep.Close()
		unix.Close(wake)
		return nil, err
	}
	lp.onWait = lp.poll
	return lp, nil
}

func (lp *evloop) closeFDs() {
	unix.Close(lp.epfd)
	unix.Close(lp.wake)
}

// run is the loop's goroutine: it handles events until stop.
func (lp *evloop) run() {
	defer close(lp.done)
	defer func() {
		if v := recover(); v != nil {
			lp.s.log.Error("panic in TCP event loop", zap.Any("panic", v), zap.ByteString("stack", debug.Stack()))
			panic(v)
		}
	}()
	lp.now = time.Now().UnixNano()
	lp.next = lp.now + lp.scan
	lp.ep.SetReadDeadline(time.Unix(0, lp.next))
	for !lp.stopped.Load() {
		err := lp.rc.Read(lp.onWait)
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			lp.s.log.Error("TCP event loop wait failed", zap.Error(err))
			return
		}
		if lp.now = time.Now().UnixNano(); lp.now >= lp.next {
			lp.sweep()
			lp.next = lp.now + lp.scan
			lp.ep.SetReadDeadline(time.Unix(0, lp.next))
		}
	}
}

// poll handles the events there are; it returns false, to wait in Go's
// poller, once there are none, and true when a scan is due or the loop
// stops.
func (lp *evloop) poll(uintptr) bool {
	for {
		n, err := listen.EpollPoll(lp.epfd, lp.events)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			lp.s.log.Error("epoll_wait", zap.Error(err))
			return true
		}
		if n == 0 && len(lp.backlog) == 0 {
			return lp.stopped.Load()
		}
		lp.now = time.Now().UnixNano()
		for i := range n {
			lp.handle(&lp.events[i])
		}
		lp.acceptBacklog()
		if lp.now >= lp.next || lp.stopped.Load() {
			return true
		}
		// Read again before waiting: events that came while these were
		// handled are taken now, without parking the goroutine and being
		// woken for them.
	}
}

func (lp *evloop) handle(ev *unix.EpollEvent) {
	switch tag := uint32(ev.Pad); tag {
	case tagWake:
		var b [8]byte
		unix.Read(lp.wake, b[:])
		lp.runCmds()
		return
	case tagListen:
		if s := ev.Fd; s >= 0 && int(s) < len(lp.slots) {
			if ls := lp.slots[s].ls; ls != nil {
				lp.acceptFrom(ls)
			}
		}
		return
	default:
		if s := ev.Fd; s >= 0 && int(s) < len(lp.slots) {
			if f := lp.slots[s].f; f != nil {
				f.event(tag, ev.Events)
			}
		}
	}
}

// register adds fd to the epoll set for slot, edge-triggered for a flow's
// sockets (the loop reads and writes until told it must wait), and returns
// the registration's tag.
func (lp *evloop) register(fd int, slot int32) (uint32, error) {
	lp.tags++
	if lp.tags < firstTag {
		lp.tags = firstTag
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: slot, Pad: int32(lp.tags)}
	if err := sysEpollCtl(lp.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return 0, os.NewSyscallError("epoll_ctl", err)
	}
	return lp.tags, nil
}

func (es *evSlots) takeSlot() int32 {
	if n := len(es.free); n > 0 {
		s := es.free[n-1]
		es.free = es.free[:n-1]
		return s
	}
	es.slots = append(es.slots, evSlot{})
	return int32(len(es.slots) - 1)
}

func (es *evSlots) freeSlot(s int32) {
	es.slots[s] = evSlot{}
	es.free = append(es.free, s)
}

// post hands cmd to the loop and wakes it. It reports false if the loop
// has stopped.
func (lp *evloop) post(cmd evCmd) bool {
	lp.mu.Lock()
	if lp.stopped.Load() {
		lp.mu.Unlock()
		return false
	}
	lp.cmds = append(lp.cmds, cmd)
	first := len(lp.cmds) == 1
	lp.mu.Unlock()
	if first {
		unix.Write(lp.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}
	return true
}

// do runs fn on the loop and waits for it; a stopped loop runs nothing.
func (lp *evloop) do(cmd evCmd) {
	ack := make(chan struct{})
	cmd.ack = ack
	if lp.post(cmd) {
		<-ack
	}
}

func (lp *evloop) runCmds() {
	lp.mu.Lock()
	cmds := lp.cmds
	lp.cmds = lp.spare[:0]
	lp.mu.Unlock()
	for i := range cmds {
		c := &cmds[i]
		switch {
		case c.add != nil:
			lp.addListener(c.add)
		case c.remove != nil:
			lp.removeListener(c.remove)
		case c.cut:
			lp.cutSetups()
		case c.reset != nil:
			f := c.reset
			if l := f.l; f.open && f.id == c.id && f.abort(true, true) && c.countLB {
				l.lbResets.Inc()
			}
		}
		if c.ack != nil {
			close(c.ack)
		}
		cmds[i] = evCmd{}
	}
	lp.spare = cmds
}

// addListener starts accepting on ls, edge-triggered: each event takes
// what is queued, acceptBatch at a time (the loop's other events are
// handled between batches), until the socket says there is no more.
func (lp *evloop) addListener(ls *lsock) {
	s := lp.takeSlot()
	lp.slots[s] = evSlot{ls: ls}
	ls.slot = s
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: s, Pad: tagListen}
	if err := unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_ADD, ls.fd, &ev); err != nil {
		lp.s.log.Error("cannot accept on a listening socket", zap.Stringer(logAddr, ls.addr), zap.Error(err))
		lp.freeSlot(s)
		ls.slot = -1
	}
}

// removeListener stops accepting on ls. The registration must go before
// the socket closes: a duplicate handed to a new process keeps the socket
// open, and with it the registration.
func (lp *evloop) removeListener(ls *lsock) {
	if ls.slot < 0 {
		return
	}
	unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_DEL, ls.fd, nil)
	lp.freeSlot(ls.slot)
	ls.slot = -1
	if ls.queued {
		ls.queued = false
		lp.backlog = slices.DeleteFunc(lp.backlog, func(x *lsock) bool { return x == ls })
	}
}

// acceptBatch bounds the connections one listening socket's event takes,
// so one busy listener cannot starve the flows of the loop.
const acceptBatch = 64

func (lp *evloop) acceptFrom(ls *lsock) {
	if ls.paused || ls.queued {
		return
	}
	for range acceptBatch {
		fd, err := lp.addr.accept(ls.fd)
		switch {
		case err == nil:
			lp.s.flows.accepted()
			lp.accepted(ls, fd)
		case err == unix.EINTR || err == unix.ECONNABORTED:
		case err == unix.EAGAIN:
			return
		default:
			// Out of descriptors or memory: pause this socket, as
			// net/http's Serve backs off, instead of spinning on it.
			ls.delay = min(max(2*ls.delay, 5*time.Millisecond), time.Second)
			ls.pausedUntil = lp.now + int64(ls.delay)
			unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_DEL, ls.fd, nil)
			ls.paused = true
			lp.s.log.Warn("accept failed; retrying", zap.String(logListener, ls.l.Load().cfg.Name), zap.Error(err), zap.Duration("retry_in", ls.delay))
			return
		}
	}
	// More may be queued, and no new edge will say so: take them after
	// this batch of events.
	ls.queued = true
	lp.backlog = append(lp.backlog, ls)
}

// acceptBacklog goes on accepting from the sockets that had more queued
// than one batch.
func (lp *evloop) acceptBacklog() {
	for n := len(lp.backlog); n > 0; n-- {
		ls := lp.backlog[0]
		lp.backlog = append(lp.backlog[:0], lp.backlog[1:]...)
		ls.queued = false
		lp.acceptFrom(ls)
	}
}

// sweep ends flows idle past their timeout, fails connects past the
// connect timeout, and resumes listening sockets paused by an error.
func (lp *evloop) sweep() {
	for i := 0; i < len(lp.flows); i++ {
		f := lp.flows[i]
		f.expire(lp.now)
		if i < len(lp.flows) && lp.flows[i] != f {
			i-- // f ended and the last flow took its place
		}
	}
	for i := range lp.slots {
		if ls := lp.slots[i].ls; ls != nil && ls.paused && lp.now >= ls.pausedUntil {
			ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(i), Pad: tagListen}
			if unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_ADD, ls.fd, &ev) == nil {
				ls.paused = false
				lp.acceptFrom(ls) // what queued meanwhile brought no edge
			}
		}
	}
	if lp.now-int64(time.Second) > lp.next {
		lp.s.log.Debug("TCP event loop scan late")
	}
}

// cutSetups resets the connections whose target connect is under way, at
// the drain's deadline (counted as l4lb's resets, local_resources): open
// flows are reset through the tracker, and these would otherwise keep the
// drain waiting for their connects.
func (lp *evloop) cutSetups() {
	for i := 0; i < len(lp.flows); i++ {
		if f := lp.flows[i]; f.state == evConnecting {
			f.reject(listen.ReasonLocalResources)
			i-- // the last flow took its place
		}
	}
}

// track and untrack keep the loop's list of flows for sweep.
func (lp *evloop) track(f *evFlow) {
	f.at = len(lp.flows)
	lp.flows = append(lp.flows, f)
}

func (lp *evloop) untrack(f *evFlow) {
	last := len(lp.flows) - 1
	moved := lp.flows[last]
	lp.flows[f.at] = moved
	moved.at = f.at
	lp.flows[last] = nil
	lp.flows = lp.flows[:last]
}

// stop ends the loop; its flows must have ended (Shutdown waits for them).
func (lp *evloop) stop() {
	lp.mu.Lock()
	lp.stopped.Store(true)
	lp.mu.Unlock()
	unix.Write(lp.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	<-lp.done
	// Commands posted meanwhile were refused; any left are acknowledged.
	for _, c := range lp.cmds {
		if c.ack != nil {
			close(c.ack)
		}
	}
	lp.ep.Close()
	unix.Close(lp.wake)
}
