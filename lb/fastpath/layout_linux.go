package fastpath

import (
	"encoding/binary"
	"net/netip"
	"unsafe"
)

// Layouts and constants shared with the kernel programs, from what bpf2go
// generates out of bpf/fastpath.h's enums and bpf/fastpath.c's structs.

// family is what differs between IPv4 and IPv6 in the maps: how long the
// addresses are, and so the entries' sizes and where their fields sit,
// all taken from the types bpf2go generates from bpf/fastpath.c's structs.
type family struct {
	name    string
	addrLen int16 // 4 or 16
	keySize int   // flow key: saddr, daddr, sport, dport
	valSize int   // flow value: address, port, service, last seen
	svcOff  int   // the service field of a flow value
	lastOff int   // the last-seen time of a flow value
}

var (
	ipv4 = family{name: "v4", addrLen: 4,
		keySize: int(unsafe.Sizeof(fastpathBPFFlowKey4{})), valSize: int(unsafe.Sizeof(fastpathBPFFlowVal4{})),
		svcOff: int(unsafe.Offsetof(fastpathBPFFlowVal4{}.Svc)), lastOff: int(unsafe.Offsetof(fastpathBPFFlowVal4{}.Last))}
	ipv6 = family{name: "v6", addrLen: 16,
		keySize: int(unsafe.Sizeof(fastpathBPFFlowKey6{})), valSize: int(unsafe.Sizeof(fastpathBPFFlowVal6{})),
		svcOff: int(unsafe.Offsetof(fastpathBPFFlowVal6{}.Svc)), lastOff: int(unsafe.Offsetof(fastpathBPFFlowVal6{}.Last))}
)

// Flow entries, read and written whole as fixed-size arrays (batch calls)
// and taken apart by the byte-level accessors (decode, reverseKey), which
// serve both families with one code path; TestEntryLayouts checks that the
// generated types lay them out as those accessors expect.
type (
	flowKey4 = [unsafe.Sizeof(fastpathBPFFlowKey4{})]byte
	flowVal4 = [unsafe.Sizeof(fastpathBPFFlowVal4{})]byte
	flowKey6 = [unsafe.Sizeof(fastpathBPFFlowKey6{})]byte
	flowVal6 = [unsafe.Sizeof(fastpathBPFFlowVal6{})]byte
)

// Short names for the constants bpf2go exports from bpf/fastpath.h's enums
// (the values are the programs' own: none is restated here).
const (
	// Counter kinds, per service, in the stats map.
	statForward   = int(fastpathBPFStatKindSTAT_FORWARD)
	statReply     = int(fastpathBPFStatKindSTAT_REPLY)
	statNewFlow   = int(fastpathBPFStatKindSTAT_NEW_FLOW)
	statFull      = int(fastpathBPFStatKindSTAT_FULL)
	statNoTarget  = int(fastpathBPFStatKindSTAT_NO_TARGET)
	statCollide   = int(fastpathBPFStatKindSTAT_COLLIDE)
	statACL       = int(fastpathBPFStatKindSTAT_ACL)
	statClientRst = int(fastpathBPFStatKindSTAT_CLIENT_RST)
	statTargetRst = int(fastpathBPFStatKindSTAT_TARGET_RST)
	statPromote   = int(fastpathBPFStatKindSTAT_PROMOTE)
	statMidflow   = int(fastpathBPFStatKindSTAT_MIDFLOW)
	statKinds     = int(fastpathBPFStatKindSTAT_KINDS)

	statQUICHash       = int(fastpathBPFStatKindSTAT_QUIC_HASH)
	statQUICCID        = int(fastpathBPFStatKindSTAT_QUIC_CID)
	statQUICUnknown    = int(fastpathBPFStatKindSTAT_QUIC_UNKNOWN)
	statQUICBadVersion = int(fastpathBPFStatKindSTAT_QUIC_BAD_VERSION)
	statQUICShort      = int(fastpathBPFStatKindSTAT_QUIC_SHORT)
	statQUICMigration  = int(fastpathBPFStatKindSTAT_QUIC_MIGRATION)

	// Keys of the port bitmaps.
	portsListeners = int(fastpathBPFPortsKeyPORTS_LISTENERS)
	portsTargets   = int(fastpathBPFPortsKeyPORTS_TARGETS)

	// Service flags.
	svcSticky = uint32(fastpathBPFSvcFlagSVC_STICKY)
	svcAllow  = uint32(fastpathBPFSvcFlagSVC_ALLOW)
	svcDeny   = uint32(fastpathBPFSvcFlagSVC_DENY)
	svcDSR    = uint32(fastpathBPFSvcFlagSVC_DSR)
	svcGUE    = uint32(fastpathBPFSvcFlagSVC_GUE)
	svcQUIC   = uint32(fastpathBPFSvcFlagSVC_QUIC)

	// A flow value's service field: flags, and the service id.
	replyFlag  = uint16(fastpathBPFFlowFlagREPLY_FLAG)
	finFlag    = uint16(fastpathBPFFlowFlagFIN_FLAG)
	closedFlag = uint16(fastpathBPFFlowFlagCLOSED_FLAG)
	dsrFlag    = uint16(fastpathBPFFlowFlagDSR_FLAG)
	svcMask    = uint16(fastpathBPFFlowFlagSVC_MASK)
)

// GUESourcePort is the outer UDP source port of a flow that direct server
// return encapsulates in GUE, from its flow hash (flowhash.Flow): one port
// of the dynamic range per flow, so that routers that hash on ports spread
// the flows, and keep each on one path. The program computes the same.
func GUESourcePort(flowHash uint64) uint16 {
	return 0xc000 | uint16((flowHash^flowHash>>32)&0x3fff)
}

// FlowLabel is the outer flow label of an IPv6 flow that direct server
// return encapsulates, from its flow hash: routers that hash on the flow
// label spread the flows, and keep each on one path. The program computes
// the same.
func FlowLabel(flowHash uint64) uint32 {
	return uint32((flowHash ^ flowHash>>32) & 0xfffff)
}

// svcKey is the service map's key of vip, in the generated type of its
// family.
func svcKey(vip netip.AddrPort) any {
	if vip.Addr().Is4() {
		return &fastpathBPFSvcKey4{Addr: words(vip.Addr())[0], Port: netOrder(vip.Port())}
	}
	return &fastpathBPFSvcKey6{Addr: words(vip.Addr()), Port: netOrder(vip.Port())}
}

// slotKey is a target as the target map keys it (a table slot's layout),
// in the generated type of its family.
func slotKey(t netip.AddrPort) any {
	if t.Addr().Is4() {
		return &fastpathBPFSlot4{Addr: words(t.Addr())[0], Port: netOrder(t.Port())}
	}
	return &fastpathBPFSlot6{Addr: words(t.Addr()), Port: netOrder(t.Port())}
}

// fromWords is the address that words gives w, of n bytes.
func fromWords(w []uint32, n int) netip.Addr {
	var b [16]byte
	for i, x := range w {
		binary.NativeEndian.PutUint32(b[4*i:], x)
	}
	a, _ := netip.AddrFromSlice(b[:n])
	return a
}

// words holds a's bytes as the programs' __u32 address fields do: in
// network order, read as native words. The zero address is all zeros.
func words(a netip.Addr) (w [4]uint32) {
	if !a.IsValid() {
		return w
	}
	b := a.AsSlice()
	for i := 0; i+4 <= len(b); i += 4 {
		w[i/4] = binary.NativeEndian.Uint32(b[i:])
	}
	return w
}

// netOrder is v as the programs keep ports: network order in a __u16 (and
// back: the swap is its own inverse).
func netOrder(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// putAddr writes an address and port in network order: the layout of a
// flow value's head (EndFlowsTo matches targets by it).
func putAddr(b []byte, a netip.AddrPort) {
	ip := a.Addr().AsSlice()
	copy(b, ip)
	binary.BigEndian.PutUint16(b[len(ip):], a.Port())
}
