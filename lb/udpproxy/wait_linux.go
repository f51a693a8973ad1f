package udpproxy

import (
	"errors"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/lb/listen"
)

// epollWaiter waits for an epoll set through Go's poller: an epoll
// descriptor is itself pollable, so the reply loop parks like any goroutine
// while no reply comes, and reads its events with a zero timeout when some
// do. A blocking epoll_wait would hold a thread in a system call instead,
// and the runtime's monitor, finding it there again and again, would poll
// every 20 µs for as long as replies flow.
type epollWaiter struct {
	epfd     int
	f        *os.File // a duplicate of epfd, in Go's poller
	rc       syscall.RawConn
	deadline time.Time
	events   []unix.EpollEvent
	n        int
	err      error
	onReady  func(uintptr) bool
}

func newEpollWaiter(epfd int, events []unix.EpollEvent) (*epollWaiter, error) {
	dup, err := unix.FcntlInt(uintptr(epfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	// epoll_wait ignores O_NONBLOCK; Go's poller needs it to take the
	// descriptor.
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return nil, os.NewSyscallError("fcntl", err)
	}
	w := &epollWaiter{epfd: epfd, f: os.NewFile(uintptr(dup), "l4lb-udp-replies"), events: events}
	if w.rc, err = w.f.SyscallConn(); err != nil {
		w.f.Close()
		return nil, err
	}
	w.onReady = w.poll
	return w, nil
}

// poll reads the events there are without waiting; false asks Go's poller
// to wait for more.
func (w *epollWaiter) poll(uintptr) bool {
	for {
		n, err := listen.EpollPoll(w.epfd, w.events)
		if err == unix.EINTR {
			continue
		}
		w.n, w.err = n, err
		return n > 0 || err != nil
	}
}

// wait returns the number of events in w.events, or 0 once deadline passes.
func (w *epollWaiter) wait(deadline time.Time) (int, error) {
	if !deadline.Equal(w.deadline) {
		w.deadline = deadline
		w.f.SetReadDeadline(deadline)
	}
	err := w.rc.Read(w.onReady)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return w.n, w.err
}

func (w *epollWaiter) close() { w.f.Close() }
