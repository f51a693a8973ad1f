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
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/flowhash"
	"github.com/l4lb/l4lb/pkg/metrics"
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
	wildcard bool
	quic     *quicRouting // QUIC and TCP_QUIC listeners; nil for UDP
	udpSockets
	udpFlows
	udpMetrics
}

// udpSockets are a front's sockets and the loops that read them.
type udpSockets struct {
	socks   []*net.UDPConn
	sendRC  syscall.RawConn // the socket replies leave from
	epfd    int             // set by bind, closed by close once no loop uses it
	wake    int
	readers sync.WaitGroup // the read loops, which make flows
	done    chan struct{}
	started bool        // the reply loop runs (and will close done)
	closing atomic.Bool // the read loops have ended: the reply loop ends the flows and exits
	stopped atomic.Bool // stopReading or close was called: the read loops exit
}

// udpFlows are a front's flows: the table, and the slots the reply loop's
// epoll events name them by.
type udpFlows struct {
	table   *flowtable.Table[*udpFlow]
	mu      sync.Mutex // guards slots and free
	slots   []*udpFlow
	free    []int32
	replied atomic.Int64 // when a reply last left, Unix nanoseconds
	evicted atomic.Int64 // when a flow was last evicted, Unix nanoseconds
}

// udpMetrics are a front's counters and gauges.
type udpMetrics struct {
	newFlows, evictions                prometheus.Counter
	rejects                            *listen.RejectCounters
	pktsIn, pktsOut, bytesIn, bytesOut prometheus.Counter
	dropped, rxDrops, socketRx         prometheus.Counter
	active, entries                    prometheus.Gauge
}

func newFront(s *Server, lc *config.Listener, b config.BindAddr, r *listen.Route) *udpFront {
	u := &udpFront{srv: s, cfg: lc, bindA: b, zone: b.Zone, wildcard: b.IP.IsUnspecified()}
	u.table = flowtable.NewTable[*udpFlow](flowtable.Options{Max: s.cfg.MaxFlows, Idle: lc.UDPIdleTimeout})
	u.done = make(chan struct{})
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
	u.rejects = listen.NewRejectCounters(m, lbl, listen.ReasonFlowTableFull, listen.ReasonACL, listen.ReasonNoTarget, listen.ReasonDatagramDropped, listen.ReasonLocalResources, listen.ReasonLoop)
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
	if lc.Protocol.IsQUIC() {
		u.quic = newQUICRouting(m, lc)
	}
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

// Files adds a duplicate of each of the front's sockets, by name, for a new
// process to take over.
func (u *udpFront) Files(add func(name string, f *os.File)) error {
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

// Zone is the zone of the front's address.
func (u *udpFront) Zone() string { return u.zone }

// Routes is the front's route.
func (u *udpFront) Routes() []*listen.Route { return []*listen.Route{u.route.Load()} }

// Addr is the address the front is bound to.
func (u *udpFront) Addr() net.Addr {
	if len(u.socks) == 0 {
		return nil
	}
	return u.socks[0].LocalAddr()
}

func (u *udpFront) start() {
	for _, sock := range u.socks {
		u.readers.Add(1)
		go u.readLoop(sock)
	}
	u.started = true
	go u.replyLoop()
}

// close stops reading; the reply loop closes every flow and exits. The read
// loops have ended before the reply loop's last sweep, so no flow is made
// after it (its socket and budget slot would be lost), and before the epoll
// set closes, so none is added to a closed or reused descriptor.
func (u *udpFront) close() {
	u.stopped.Store(true)
	for _, s := range u.socks {
		s.Close()
	}
	u.readers.Wait()
	u.closing.Store(true)
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
	defer u.readers.Done()
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
	var rerr error   // a receive error other than EAGAIN, for the loop to report
	read := func(fd uintptr) bool {
		for {
			if u.stopped.Load() {
				// A closed socket stays open while this callback runs:
				// without this check a flood would keep it reading.
				return true
			}
			b.prepRecv(udpBatch, true)
			n, err := recvmmsg(int(fd), b, udpBatch)
			if err == unix.EINTR {
				continue
			}
			if err != nil && err != unix.EAGAIN {
				rerr = err
				return true
			}
			if err != nil || n == 0 {
				return false // wait for more
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
				if u.quic != nil {
					flows[i] = u.quic.lookup(u, b.addr(i), dst, b.bufs[i][:b.hdrs[i].len], now)
				} else {
					flows[i] = u.lookup(b.addr(i), dst, now)
				}
			}
			for i := range n {
				f := flows[i]
				if f == nil {
					continue
				}
				k, fbytes := 0, 0
				for j := i; j < n; j++ {
					if flows[j] != f {
						continue
					}
					flows[j] = nil
					size := int(b.hdrs[j].len)
					out.setPayload(k, f.pp, b.bufs[j][:size])
					fbytes += size
					k++
				}
				bytes += fbytes
				f.tgt.Bytes.Add(float64(fbytes))
				sent := u.send(f, out, k)
				pkts += sent
			}
			u.pktsIn.Add(float64(pkts))
			u.bytesIn.Add(float64(bytes))
		}
	}
	var logged time.Time
	for {
		err := rc.Read(read)
		if err == nil {
			err, rerr = rerr, nil
		}
		if err == nil {
			continue
		}
		if errors.Is(err, net.ErrClosed) || u.srv.closing.Load() || u.stopped.Load() {
			return
		}
		// Logged at most once a second, and retried after a pause, so an
		// error that repeats neither floods the log nor spins a core.
		if now := time.Now(); now.Sub(logged) >= time.Second {
			logged = now
			u.srv.log.Warn("udp read failed; retrying", zap.String(logListener, u.cfg.Name), zap.Error(err))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lookup finds a datagram's flow, making it if it is new; nil means drop.
func (u *udpFront) lookup(src, dst netip.AddrPort, now time.Time) *udpFlow {
	key := flowtable.Key{Proto: flowhash.ProtoUDP, Src: src, Dst: dst}
	if f, ok := u.table.Get(key, now); ok {
		return f
	}
	return u.newFlow(key, now, nil)
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
