package tcpproxy

import (
	"sync"

	"golang.org/x/sys/unix"
)

// pipe is a kernel pipe used as the splice(2) buffer of one direction of one
// flow while bytes are in flight. A pipe in the pool is always empty.
type pipe struct{ r, w int }

// pipePool hands out pipes only while a direction has data in flight, so an
// idle flow holds no pipe (the standard library's splice keeps one per
// direction for the life of the copy: two pipes, four descriptors per flow).
// It keeps at most max free pipes and closes the rest.
type pipePool struct {
	mu   sync.Mutex
	free []pipe
	max  int
	size int // F_SETPIPE_SZ; 0 keeps the kernel default (64 KiB)
}

func (p *pipePool) get() (pipe, error) {
	p.mu.Lock()
	if n := len(p.free); n > 0 {
		pp := p.free[n-1]
		p.free = p.free[:n-1]
		p.mu.Unlock()
		return pp, nil
	}
	p.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return pipe{}, err
	}
	if p.size > 0 {
		// Best effort: a larger pipe moves more per splice on bulk flows.
		_, _ = unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, p.size)
	}
	return pipe{r: fds[0], w: fds[1]}, nil
}

// put returns an empty pipe to the pool.
func (p *pipePool) put(pp pipe) {
	p.mu.Lock()
	if len(p.free) < p.max {
		p.free = append(p.free, pp)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	pp.close()
}

// drain closes every pooled pipe.
func (p *pipePool) drain() {
	p.mu.Lock()
	free := p.free
	p.free = nil
	p.mu.Unlock()
	for _, pp := range free {
		pp.close()
	}
}

func (pp pipe) close() {
	unix.Close(pp.r)
	unix.Close(pp.w)
}
