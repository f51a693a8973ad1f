package udpproxy

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/lb/events"
	"github.com/l4lb/l4lb/lb/flowtable"
	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/flowhash"
	"github.com/l4lb/l4lb/pkg/proxyproto"
)

// The flow side of a UDP front: a client 5-tuple's flow, its connected
// socket to the target, and the loop that carries the targets' replies
// back to the clients.

// udpFlow is one client 5-tuple with its connected upstream socket.
type udpFlow struct {
	key     flowtable.Key
	fd      int // connected, non-blocking; owned by the front's reply loop
	slot    int32
	tgt     *registry.Target
	start   time.Time
	name    unix.RawSockaddrInet6 // the client, ready for sendmmsg
	namelen uint32
	src     netip.Addr // reply source for wildcard listeners
	pp      []byte     // PROXY v2 header sent before every datagram, or nil
	loopKey listen.ConnEnds

	mu     sync.RWMutex // writers hold it shared; close holds it exclusively
	closed bool
}

// newFlow makes key's flow, to want when it is not nil (the target a QUIC
// connection ID names), else to the target the flow hash picks.
func (u *udpFront) newFlow(key flowtable.Key, now time.Time, want *registry.Target) *udpFlow {
	loops := u.srv.opts.Loops
	if loops.Looped(key.Src, key.Dst) {
		u.rejects[listen.ReasonLoop].Inc()
		return nil
	}
	if !u.acl.Load().Permits(key.Src.Addr()) {
		u.rejects[listen.ReasonACL].Inc()
		return nil
	}
	g, snap, hash := u.route.Load().Lookup(flowhash.ProtoUDP, u.zone, key.Src, key.Dst)
	tgt := want
	if tgt == nil {
		var buf [1]int
		prefs := snap.Balance.Pick(hash, buf[:])
		if len(prefs) == 0 {
			u.rejects[listen.ReasonNoTarget].Inc()
			return nil
		}
		tgt = snap.Targets[prefs[0]]
	}
	var client netip.AddrPort
	if g.Config().Attributes.PreserveClientIP {
		client = key.Src
	}
	if u.table.Full() {
		// Make room by evicting a flow idle for a while (a spoofed source
		// that sent once, most likely); a table of moving flows refuses.
		if old, ok := u.table.EvictIdle(now); ok {
			u.release(old)
			u.active.Dec()
			u.entries.Dec()
			u.evictions.Inc()
			if last := u.evicted.Swap(now.UnixNano()); now.UnixNano()-last > int64(10*time.Second) {
				// The first eviction after a quiet while: the table is
				// under pressure (a flood of new sources, or too small).
				u.srv.opts.Events.Add(events.FlowPressure, u.cfg.Name, fmt.Sprintf("flow table full (%d flows): evicting idle flows", u.table.Len()))
			}
		}
	}
	if !u.srv.budget.Acquire() {
		u.rejects[listen.ReasonLocalResources].Inc()
		return nil
	}
	fd, err := dialUDP(tgt, client)
	if err != nil {
		u.srv.budget.Release()
		switch {
		case listen.OutOfPorts(err):
			tgt.PortErrors.Inc() // the ephemeral port range is used up
			u.rejects[listen.ReasonLocalResources].Inc()
		case listen.LocalFailure(err):
			u.rejects[listen.ReasonLocalResources].Inc()
		default:
			tgt.ConnectErrors.Inc()
			u.rejects[listen.ReasonNoTarget].Inc()
		}
		return nil
	}
	f := &udpFlow{key: key, fd: fd, tgt: tgt, start: now}
	// Remembered before the first datagram is sent: a UDP socket has its
	// local address once connected.
	if sa, err := unix.Getsockname(fd); err == nil {
		f.loopKey = loops.Mark(sockaddrAddrPort(sa), tgt.Addr)
	}
	if g.Config().Attributes.ProxyProtocolV2 {
		if f.pp, err = proxyproto.V2(true, key.Src, key.Dst, proxyproto.TLVs{FlowID: u.srv.ids.Add(1), EndpointID: u.srv.cfg.EndpointID}); err != nil {
			unix.Close(fd)
			u.srv.budget.Release()
			u.rejects[listen.ReasonNoTarget].Inc()
			return nil
		}
	}
	f.name, f.namelen = sockaddr(key.Src)
	if u.wildcard {
		f.src = key.Dst.Addr()
	}
	got, created, err := u.table.Insert(key, f, now)
	if err != nil || !created {
		unix.Close(fd)
		u.srv.budget.Release()
		if err != nil {
			u.rejects[listen.ReasonFlowTableFull].Inc()
		}
		return got // nil when full; the winner of a race otherwise
	}
	if snap.Counted {
		g.UnhealthyRouting.Inc()
	}
	tgt.AddFlows(1) // release takes it back, whatever happens next
	tgt.NewFlows.Inc()
	u.mu.Lock()
	if n := len(u.free); n > 0 {
		f.slot = u.free[n-1]
		u.free = u.free[:n-1]
		u.slots[f.slot] = f
	} else {
		f.slot = int32(len(u.slots))
		u.slots = append(u.slots, f)
	}
	u.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: f.slot}
	if err := unix.EpollCtl(u.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		u.table.Delete(key)
		u.release(f)
		return nil
	}
	u.newFlows.Inc()
	u.active.Inc()
	u.entries.Inc()
	return f
}

// dialUDP opens a non-blocking UDP socket connected to the target, outside
// Go's poller: the front's reply loop waits on it. With a valid client it is
// bound to the client's own address first (preserve_client_ip).
func dialUDP(tgt *registry.Target, client netip.AddrPort) (int, error) {
	t := tgt.Addr
	family := unix.AF_INET
	if t.Addr().Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if client.IsValid() {
		if client.Addr().Is4() != t.Addr().Is4() {
			unix.Close(fd)
			return -1, errors.New("cannot preserve the client's address across IP families")
		}
		if err := bindTransparent(fd, client, tgt); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	var sa unix.Sockaddr
	if family == unix.AF_INET {
		sa = &unix.SockaddrInet4{Port: int(t.Port()), Addr: t.Addr().As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(t.Port()), Addr: t.Addr().As16()}
	}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// sockaddrAddrPort is sa as an address and port.
func sockaddrAddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// release closes a flow's socket once no writer holds it and frees its slot.
func (u *udpFront) release(f *udpFlow) {
	f.mu.Lock()
	if !f.closed {
		f.closed = true
		unix.Close(f.fd) // which takes it out of the epoll set: it has no duplicate
		u.srv.opts.Loops.Forget(f.loopKey)
		u.srv.budget.Release()
		f.tgt.AddFlows(-1)
	}
	f.mu.Unlock()
	u.mu.Lock()
	if int(f.slot) < len(u.slots) && u.slots[f.slot] == f {
		u.slots[f.slot] = nil
		u.free = append(u.free, f.slot)
	}
	u.mu.Unlock()
}

// endFlows ends the flows pinned to t at once (a datagram has no connection
// to reset: the client's next one starts a new flow) and returns how many.
func (u *udpFront) endFlows(t *registry.Target) int {
	ended := u.table.RemoveIf(func(f *udpFlow) bool { return f.tgt == t }, nil)
	for _, f := range ended {
		u.release(f)
		u.active.Dec()
		u.entries.Dec()
	}
	return len(ended)
}

// replyLoop sends targets' replies back to their clients and expires idle
// flows. It is the only closer of flow sockets.
func (u *udpFront) replyLoop() {
	defer close(u.done)
	events := make([]unix.EpollEvent, 128)
	b := newBatch(udpBatch, udpBufSize)
	scan := min(time.Second, max(u.cfg.UDPIdleTimeout/4, 10*time.Millisecond))
	lastScan := time.Now()
	var expired []*udpFlow
	w, err := newEpollWaiter(u.epfd, events)
	if err != nil {
		u.srv.log.Error("UDP replies cannot be waited for", zap.String(logListener, u.cfg.Name), zap.Error(err))
		return
	}
	defer w.close()
	for {
		n, err := w.wait(lastScan.Add(scan))
		if err != nil {
			u.srv.log.Error("UDP reply loop: epoll_wait failed", zap.String(logListener, u.cfg.Name), zap.Error(err))
			return
		}
		if u.closing.Load() { // set once the read loops have ended
			u.table.Range(func(_ flowtable.Key, f *udpFlow) bool { u.release(f); return true })
			return
		}
		now := time.Now()
		for i := range max(n, 0) {
			slot := events[i].Fd
			if slot < 0 {
				continue
			}
			u.mu.Lock()
			var f *udpFlow
			if int(slot) < len(u.slots) {
				f = u.slots[slot]
			}
			u.mu.Unlock()
			if f != nil {
				u.reply(f, b, now)
			}
		}
		if now.Sub(lastScan) >= scan {
			lastScan = now
			expired = u.table.Expire(now, expired[:0])
			for _, f := range expired {
				u.release(f)
				u.active.Dec()
				u.entries.Dec()
			}
		}
	}
}

// reply drains a flow's upstream socket to its client.
func (u *udpFront) reply(f *udpFlow, b *batch, now time.Time) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return
	}
	u.table.Get(f.key, now) // replies keep the flow alive too
	for {
		b.prepRecv(udpBatch, false)
		n, err := recvmmsg(f.fd, b, udpBatch)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return // EAGAIN, or an ICMP error queued on the socket
		}
		bytes := 0
		for i := range n {
			size := int(b.hdrs[i].len)
			bytes += size
			b.setSend(i, size, &f.name, f.namelen, f.src)
		}
		// The descriptor is used only inside the callback, which holds a
		// reference to it: a close meanwhile cannot hand its number to
		// another socket that the replies would then go out of.
		sent := 0
		if err := u.sendRC.Write(func(fd uintptr) bool {
			sent = u.sendAll(int(fd), b, n)
			return true
		}); err != nil {
			u.dropped.Add(float64(n)) // the listener is closing
		}
		u.pktsOut.Add(float64(sent))
		u.bytesOut.Add(float64(bytes))
		f.tgt.Bytes.Add(float64(bytes))
		u.replied.Store(now.UnixNano())
		if n < udpBatch {
			return // drained; epoll is level-triggered and says if more came
		}
	}
}
