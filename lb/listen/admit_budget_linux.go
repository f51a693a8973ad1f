package listen

import (
	"sync/atomic"
	"syscall"
)

// Budget bounds flows by the descriptors they hold, so that a flood of one
// kind cannot take the descriptors that another kind, the listeners, the
// health checks or the admin API need. A zero max means no bound.
type Budget struct {
	Max int64 // zero: no bound
	n   atomic.Int64
}

// Acquire takes a slot, or reports that none is left.
func (b *Budget) Acquire() bool {
	if b.Max == 0 {
		return true
	}
	if b.n.Add(1) > b.Max {
		b.n.Add(-1)
		return false
	}
	return true
}

// Release gives back a slot Acquire took.
func (b *Budget) Release() {
	if b.Max != 0 {
		b.n.Add(-1)
	}
}

// InUse is how many slots are taken now (0 without a bound).
func (b *Budget) InUse() int64 { return b.n.Load() }

// Budgets derives the TCP and UDP flow bounds from the open-file limit. A
// reserve (1/16 of the limit, 64 to 4096) stays for listener sockets, health
// checks, the admin API and the epoll sets. Of the rest, UDP flows (one
// socket each) get a quarter when there are UDP listeners, and TCP flows (two
// sockets each) what is left.
func Budgets(nofile int64, haveTCP, haveUDP bool) (tcp, udp int64) {
	reserve := min(max(nofile/16, 64), 4096)
	avail := max(nofile-reserve, 2)
	switch {
	case haveTCP && haveUDP:
		udp = max(avail/4, 1)
		tcp = max((avail-udp)/2, 1)
	case haveUDP:
		udp = avail
	default:
		tcp = max(avail/2, 1)
	}
	return tcp, udp
}

// OpenFileLimit is the process's current RLIMIT_NOFILE.
func OpenFileLimit() int64 {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil || r.Cur > 1<<40 {
		return 1 << 20
	}
	return int64(r.Cur)
}
