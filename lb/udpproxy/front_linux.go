package udpproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/lb/flowtable"
	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/flowhash"
	"github.com/l4lb/l4lb/pkg/metrics"
	"github.com/l4lb/l4lb/pkg/proxyproto"
)

const (
	udpBatch   = 32
	udpBufSize = 65536 // the largest UDP payload, so nothing is truncated
)

// udpFront is a UDP listener on one bind address: SocketsPerAddr
// SO_REUSEPORT sockets, each with a read goroutine taking datagrams in
// batches (recvmmsg), and one reply goroutine that waits on every flow's
// upstream socket in an epoll set and sends replies back in batches
// (sendmmsg) from the address the client sent to.
type udpFront struct {
	srv      *Server
	cfg      *config.Listener
	bindA    config.BindAddr
	zone     string
	route    atomic.Pointer[listen.Route]
	acl      atomic.Pointer[listen.ACL] // replaced by a reload
	socks    []*net.UDPConn
	sendRC   syscall.RawConn // the socket replies leave from
	wildcard bool
	table    *flowtable.Table[*udpFlow]

	epfd    int
	wake    int
	mu      sync.Mutex // guards slots and free
	slots   []*udpFlow
	free    []int32
	done    chan struct{}
	started bool         // the reply loop runs (and will close done)
	closing atomic.Bool  // close was called: the reply loop ends its flows and exits
	stopped atomic.Bool  // stopReading was called: the read loops exit
	replied atomic.Int64 // when a reply last left, Unix nanoseconds

	newFlows, evictions                prometheus.Counter
	rejects                            *listen.RejectCounters
	pktsIn, pktsOut, bytesIn, bytesOut prometheus.Counter
	dropped, rxDrops, socketRx         prometheus.Counter
	active, entries                    prometheus.Gauge
}

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

	mu     sync.RWMutex // writers hold it shared; close holds it exclusively
	closed bool
}

func newFront(s *Server, lc *config.Listener, b config.BindAddr, r *listen.Route) *udpFront {
	u := &udpFront{srv: s, cfg: lc, bindA: b, zone: b.Zone, wildcard: b.IP.IsUnspecified(),
		table: flowtable.NewTable[*udpFlow](flowtable.Options{Max: s.cfg.MaxFlows, Idle: lc.UDPIdleTimeout}), done: make(chan struct{})}
	acl := listen.NewACL(lc)
	u.acl.Store(&acl)
	if r != nil {
		u.route.Store(r)
	}
	m := s.m
	lbl := []string{lc.Name, "UDP", b.Zone}
	c := func(f metrics.ID, extra ...string) prometheus.Counter {
		return m.Counter(f, append(append([]string{}, lbl...), extra...)...)
	}
	u.newFlows = c(metrics.NewFlows)
	u.rejects = listen.NewRejectCounters(m, lbl, listen.ReasonFlowTableFull, listen.ReasonACL, listen.ReasonNoTarget, listen.ReasonDatagramDropped, listen.ReasonLocalResources)
	u.dropped = u.rejects[listen.ReasonDatagramDropped]
	u.evictions = m.Counter(metrics.FlowEvictions, lc.Name, "table_full")
	u.rxDrops = c(metrics.UDPReceiveDrops)
	u.socketRx = c(metrics.UDPSocketDatagrams)
	u.pktsIn = c(metrics.ProcessedPackets, "in")
	u.pktsOut = c(metrics.ProcessedPackets, "out")
	u.bytesIn = c(metrics.ProcessedBytes, "in")
	u.bytesOut = c(metrics.ProcessedBytes, "out")
	u.active = m.Gauge(metrics.ActiveFlows, lbl...)
	u.entries = m.Gauge(metrics.FlowTableEntries, lc.Name)
	return u
}

func (u *udpFront) bind() error {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		if err := listen.Control(network, address, c); err != nil {
			return err
		}
		var serr error
		c.Control(func(fd uintptr) {
			// Each datagram then says how many the socket has dropped for
			// a full receive queue (udp_receive_drops_total).
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1); serr != nil || !u.wildcard {
				return
			}
			if network == "udp6" {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
			}
		})
		return serr
	}}
	add := func(pc net.PacketConn) (uint16, error) {
		uc, ok := pc.(*net.UDPConn)
		if !ok {
			pc.Close()
			return 0, fmt.Errorf("not a UDP socket: %s", pc.LocalAddr())
		}
		u.socks = append(u.socks, uc)
		return uc.LocalAddr().(*net.UDPAddr).AddrPort().Port(), nil
	}
	err := listen.BindEach(u.srv.opts.SocketsPerAddr, "udp", u.cfg.Name, netip.AddrPortFrom(u.bindA.IP, u.cfg.Port), u.srv.opts.Inherit,
		func(network, addr string) (uint16, error) {
			pc, err := lc.ListenPacket(context.Background(), network, addr)
			if err != nil {
				return 0, err
			}
			return add(pc)
		},
		func(f *os.File) (uint16, error) {
			pc, err := net.FilePacketConn(f)
			if err != nil {
				return 0, err
			}
			return add(pc)
		})
	if err != nil {
		return err
	}
	if u.sendRC, err = u.socks[0].SyscallConn(); err != nil {
		return err
	}
	if u.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return err
	}
	if u.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1}
	return unix.EpollCtl(u.epfd, unix.EPOLL_CTL_ADD, u.wake, &ev)
}

// files adds a duplicate of each of the front's sockets, by name, for a new
// process to take over.
func (u *udpFront) files(add func(name string, f *os.File)) error {
	at := netip.AddrPortFrom(u.bindA.IP, u.cfg.Port)
	for i, sock := range u.socks {
		f, err := sock.File()
		if err != nil {
			return err
		}
		add(listen.SocketName("udp", u.cfg.Name, at, i), f)
	}
	return nil
}

func (u *udpFront) Addr() net.Addr {
	if len(u.socks) == 0 {
		return nil
	}
	return u.socks[0].LocalAddr()
}

func (u *udpFront) start() {
	for _, sock := range u.socks {
		u.srv.loops.Add(1)
		go u.readLoop(sock)
	}
	u.started = true
	go u.replyLoop()
}

// close stops reading; the reply loop closes every flow and exits.
func (u *udpFront) close() {
	u.closing.Store(true)
	for _, s := range u.socks {
		s.Close()
	}
	if u.started {
		unix.Write(u.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		<-u.done
	}
	if u.epfd > 0 {
		unix.Close(u.epfd)
	}
	if u.wake > 0 {
		unix.Close(u.wake)
	}
	u.epfd, u.wake, u.started = 0, 0, false
}

// stopReading ends the read loops but keeps the sockets open, so replies to
// the flows already made still leave from the listener address. (After a
// binary upgrade the sockets are shared with the new process, which reads
// from them now.)
func (u *udpFront) stopReading() {
	u.stopped.Store(true)
	for _, s := range u.socks {
		s.SetReadDeadline(time.Unix(1, 0))
	}
}

// quietFor reports whether no reply has left for d.
func (u *udpFront) quietFor(d time.Duration, now time.Time) bool {
	return now.UnixNano()-u.replied.Load() >= int64(d)
}

// readLoop takes client datagrams in batches and forwards each on its flow's
// upstream socket, creating the flow on its first datagram.
func (u *udpFront) readLoop(sock *net.UDPConn) {
	defer u.srv.loops.Done()
	rc, err := sock.SyscallConn()
	if err != nil {
		return
	}
	b := newBatch(udpBatch, udpBufSize)
	out := newSendBatch(udpBatch)
	var flows [udpBatch]*udpFlow
	var localDst netip.AddrPort
	if !u.wildcard {
		localDst = sock.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	port := sock.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	var drops uint32 // the socket's drop count, as last reported
	read := func(fd uintptr) bool {
		for {
			b.prepRecv(udpBatch, true)
			n, err := recvmmsg(int(fd), b, udpBatch)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n == 0 {
				return err != unix.EAGAIN // wait for more, or give up on a real error
			}
			if d, ok := b.drops(n - 1); ok && d != drops {
				u.rxDrops.Add(float64(d - drops)) // uint32 arithmetic survives a wrap
				drops = d
			}
			u.socketRx.Add(float64(n))
			now := time.Now()
			var pkts, bytes int
			// Resolve each datagram's flow, then hand each flow its
			// datagrams in one sendmmsg on its connected socket.
			for i := range n {
				flows[i] = nil
				dst := localDst
				if u.wildcard {
					ip, ok := b.dst(i)
					if !ok {
						u.dropped.Inc()
						continue
					}
					dst = netip.AddrPortFrom(ip, port)
				}
				if b.hdrs[i].hdr.Flags&unix.MSG_TRUNC != 0 {
					u.dropped.Inc() // cannot happen with 64 KiB buffers; counted if it does
					continue
				}
				flows[i] = u.lookup(b.addr(i), dst, now)
			}
			for i := range n {
				f := flows[i]
				if f == nil {
					continue
				}
				k := 0
				for j := i; j < n; j++ {
					if flows[j] != f {
						continue
					}
					flows[j] = nil
					size := int(b.hdrs[j].len)
					out.setPayload(k, f.pp, b.bufs[j][:size])
					bytes += size
					k++
				}
				sent := u.send(f, out, k)
				pkts += sent
			}
			u.pktsIn.Add(float64(pkts))
			u.bytesIn.Add(float64(bytes))
		}
	}
	for {
		if err := rc.Read(read); err != nil {
			if errors.Is(err, net.ErrClosed) || u.srv.closing.Load() || u.stopped.Load() {
				return
			}
			u.srv.log.Warn("udp read failed", zap.String(logListener, u.cfg.Name), zap.Error(err))
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// lookup finds a datagram's flow, making it if it is new; nil means drop.
func (u *udpFront) lookup(src, dst netip.AddrPort, now time.Time) *udpFlow {
	key := flowtable.Key{Proto: flowhash.ProtoUDP, Src: src, Dst: dst}
	if f, ok := u.table.Get(key, now); ok {
		return f
	}
	return u.newFlow(key, now)
}

// send writes the first k datagrams of out on f's upstream socket and
// returns how many went. What the socket refuses (a full buffer, an ICMP
// error from the target) is dropped and counted, as UDP would.
func (u *udpFront) send(f *udpFlow, out *batch, k int) int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		u.dropped.Add(float64(k))
		return 0
	}
	return u.sendAll(f.fd, out, k)
}

// sendAll sends the first n slots of b on fd, resuming after partial sends;
// what the socket refuses is dropped and counted. It returns how many went.
func (u *udpFront) sendAll(fd int, b *batch, n int) int {
	sent := 0
	for sent < n {
		m, err := sendmmsg(fd, sliceBatch(b, sent), n-sent)
		if err == unix.EINTR {
			continue
		}
		if err != nil || m == 0 {
			u.dropped.Add(float64(n - sent))
			break
		}
		sent += m
	}
	return sent
}

func (u *udpFront) newFlow(key flowtable.Key, now time.Time) *udpFlow {
	if !u.acl.Load().Permits(key.Src.Addr()) {
		u.rejects[listen.ReasonACL].Inc()
		return nil
	}
	g, snap, hash := u.route.Load().Lookup(flowhash.ProtoUDP, u.zone, key.Src, key.Dst)
	var buf [1]int
	prefs := snap.Balance.Pick(hash, buf[:])
	if len(prefs) == 0 {
		u.rejects[listen.ReasonNoTarget].Inc()
		return nil
	}
	tgt := snap.Targets[prefs[0]]
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

// release closes a flow's socket once no writer holds it and frees its slot.
func (u *udpFront) release(f *udpFlow) {
	f.mu.Lock()
	if !f.closed {
		f.closed = true
		unix.EpollCtl(u.epfd, unix.EPOLL_CTL_DEL, f.fd, nil)
		unix.Close(f.fd)
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
	for {
		n, err := unix.EpollWait(u.epfd, events, int(scan/time.Millisecond))
		if err != nil && err != unix.EINTR {
			return
		}
		if u.srv.closing.Load() || u.closing.Load() {
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
		u.replied.Store(now.UnixNano())
		if n < udpBatch {
			return // drained; epoll is level-triggered and says if more came
		}
	}
}

// sliceBatch is b from slot i on, sharing its memory.
func sliceBatch(b *batch, i int) *batch {
	if i == 0 {
		return b
	}
	return &batch{hdrs: b.hdrs[i:]}
}

// newSendBatch is a batch of iovec-only slots for a connected socket: the
// iovecs point into a receive batch's buffers, so nothing is copied. Each
// slot has two iovecs: a PROXY header, when the flow sends one, and the
// datagram.
func newSendBatch(n int) *batch {
	b := &batch{hdrs: make([]mmsghdr, n), iovs: make([]unix.Iovec, 2*n)}
	for i := range n {
		b.hdrs[i].hdr.Iov = &b.iovs[2*i]
	}
	return b
}

// setPayload points slot k at header (may be empty) and payload.
func (b *batch) setPayload(k int, header, payload []byte) {
	iov := b.iovs[2*k : 2*k+2]
	n := 0
	if len(header) > 0 {
		iov[0] = unix.Iovec{Base: &header[0]}
		iov[0].SetLen(len(header))
		n++
	}
	if len(payload) > 0 {
		iov[n] = unix.Iovec{Base: &payload[0]}
		iov[n].SetLen(len(payload))
		n++
	}
	b.hdrs[k].hdr.SetIovlen(n)
}
