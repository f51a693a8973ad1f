package udpproxy

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsghdr is struct mmsghdr of recvmmsg(2)/sendmmsg(2).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// batch is a reusable set of datagram slots for recvmmsg/sendmmsg. Its
// buffers, addresses and control space are allocated once, so moving
// datagrams allocates nothing. (golang.org/x/net's ReadBatch allocates a
// net.Addr per datagram; this is the same pair of system calls without it.)
type batch struct {
	hdrs  []mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for IPv4 too
	bufs  [][]byte
	oob   [][]byte
}

// oobSize holds an IP_PKTINFO or IPV6_PKTINFO control message and an
// SO_RXQ_OVFL one.
const oobSize = 96

func newBatch(n, size int) *batch {
	b := &batch{
		hdrs:  make([]mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		names: make([]unix.RawSockaddrInet6, n),
		bufs:  make([][]byte, n),
		oob:   make([][]byte, n),
	}
	for i := range n {
		b.bufs[i] = make([]byte, size)
		b.oob[i] = make([]byte, oobSize)
		b.iovs[i].Base = &b.bufs[i][0]
		h := &b.hdrs[i].hdr
		h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.Iov = &b.iovs[i]
		h.Iovlen = 1
	}
	return b
}

// prepRecv readies the first n slots to receive.
func (b *batch) prepRecv(n int, withOOB bool) {
	for i := range n {
		h := &b.hdrs[i].hdr
		h.Namelen = uint32(unsafe.Sizeof(b.names[i]))
		b.iovs[i].SetLen(len(b.bufs[i]))
		h.Flags = 0
		if withOOB {
			h.Control = &b.oob[i][0]
			h.SetControllen(oobSize)
		} else {
			h.Control = nil
			h.SetControllen(0)
		}
	}
}

// recvmmsg and sendmmsg never wait (MSG_DONTWAIT), so they are made raw,
// without the scheduler's enter and exit bookkeeping.
func recvmmsg(fd int, b *batch, n int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(n), unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func sendmmsg(fd int, b *batch, n int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(n), unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// addr decodes slot i's peer address.
func (b *batch) addr(i int) netip.AddrPort {
	sa := &b.names[i]
	switch sa.Family {
	case unix.AF_INET:
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(s4.Addr), binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&s4.Port))[:]))
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:]))
	}
	return netip.AddrPort{}
}

// dst decodes the destination address from slot i's IP_PKTINFO or
// IPV6_PKTINFO control message (wildcard listeners), or returns false.
func (b *batch) dst(i int) (netip.Addr, bool) {
	h := &b.hdrs[i].hdr
	msgs, err := unix.ParseSocketControlMessage(b.oob[i][:h.Controllen])
	if err != nil {
		return netip.Addr{}, false
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= unix.SizeofInet4Pktinfo:
			pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&m.Data[0]))
			return netip.AddrFrom4(pi.Addr), true
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= unix.SizeofInet6Pktinfo:
			pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&m.Data[0]))
			return netip.AddrFrom16(pi.Addr).Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// drops reads the SO_RXQ_OVFL control message of slot i: how many datagrams
// the socket has dropped so far for a full receive queue. The kernel adds it
// only once there has been a drop. It parses in place, allocating nothing.
func (b *batch) drops(i int) (uint32, bool) {
	h := &b.hdrs[i].hdr
	oob := b.oob[i][:h.Controllen]
	for off := 0; off+unix.CmsgLen(0) <= len(oob); {
		c := (*unix.Cmsghdr)(unsafe.Pointer(&oob[off]))
		n := int(c.Len)
		if n < unix.CmsgLen(0) || off+n > len(oob) {
			return 0, false
		}
		if c.Level == unix.SOL_SOCKET && c.Type == unix.SO_RXQ_OVFL && n >= unix.CmsgLen(4) {
			return *(*uint32)(unsafe.Pointer(&oob[off+unix.CmsgLen(0)])), true
		}
		off += unix.CmsgSpace(n - unix.CmsgLen(0))
	}
	return 0, false
}

// setSend readies slot i to send n bytes of its buffer to the prepared peer
// name, from src when src is valid (a wildcard listener answers from the
// address the client sent to).
func (b *batch) setSend(i, n int, name *unix.RawSockaddrInet6, namelen uint32, src netip.Addr) {
	h := &b.hdrs[i].hdr
	b.names[i] = *name
	h.Namelen = namelen
	b.iovs[i].SetLen(n)
	h.Control = nil
	h.SetControllen(0)
	if !src.IsValid() {
		return
	}
	oob := b.oob[i]
	if src.Is4() {
		hdr := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		hdr.Level, hdr.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		hdr.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&oob[unix.CmsgLen(0)]))
		*pi = unix.Inet4Pktinfo{Spec_dst: src.As4()}
		h.Control = &oob[0]
		h.SetControllen(unix.CmsgSpace(unix.SizeofInet4Pktinfo))
		return
	}
	hdr := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	hdr.Level, hdr.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
	hdr.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
	pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&oob[unix.CmsgLen(0)]))
	*pi = unix.Inet6Pktinfo{Addr: src.As16()}
	h.Control = &oob[0]
	h.SetControllen(unix.CmsgSpace(unix.SizeofInet6Pktinfo))
}

// sockaddr builds the raw socket address of ap.
func sockaddr(ap netip.AddrPort) (unix.RawSockaddrInet6, uint32) {
	var sa unix.RawSockaddrInet6
	port := (*[2]byte)(unsafe.Pointer(&sa.Port))
	binary.BigEndian.PutUint16(port[:], ap.Port())
	if ap.Addr().Is4() {
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa))
		s4.Family = unix.AF_INET
		s4.Addr = ap.Addr().As4()
		return sa, unix.SizeofSockaddrInet4
	}
	sa.Family = unix.AF_INET6
	sa.Addr = ap.Addr().As16()
	return sa, unix.SizeofSockaddrInet6
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
