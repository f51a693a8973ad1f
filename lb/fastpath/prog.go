package fastpath

import (
	"fmt"

	"github.com/cilium/ebpf/asm"

	"github.com/l4lb/l4lb/pkg/flowhash"
	"github.com/l4lb/l4lb/pkg/maglev"
)

// family is what differs between IPv4 and IPv6: where things are in the
// packet (an untagged Ethernet or loopback frame, no IPv4 options, no IPv6
// extension headers) and how long the addresses, and so the map entries, are.
type family struct {
	name        string
	ethType     int32 // as a little-endian half-word load reads it
	addrLen     int16 // 4 or 16
	offSaddr    int16
	offDaddr    int16
	offL4       int16 // the UDP header
	offIPCsum   int16 // 0: no header checksum (IPv6)
	lastOff     int16 // last-seen time in a flow value
	keySize     int   // flow key: saddr, daddr, sport, dport
	valSize     int   // flow value: address, port, service, last seen
	svcKeySize  int   // service key: address, port, pad
	slotValSize int   // table value: address, port, pad
}

var (
	ipv4 = family{name: "v4", ethType: 0x0008, addrLen: 4, offSaddr: 26, offDaddr: 30, offL4: 34, offIPCsum: 24,
		lastOff: 8, keySize: 12, valSize: 16, svcKeySize: 8, slotValSize: ipv4SlotSize}
	ipv6 = family{name: "v6", ethType: 0xdd86, addrLen: 16, offSaddr: 22, offDaddr: 38, offL4: 54,
		lastOff: 24, keySize: 36, valSize: 32, svcKeySize: 20, slotValSize: ipv6SlotSize}
)

// Table values: address, port, pad.
const (
	ipv4SlotSize = 8
	ipv6SlotSize = 20
)

func (f family) minLen() int32         { return int32(f.offL4) + 8 }
func (f family) udpCsum() int16        { return f.offL4 + 6 }
func (f family) label(s string) string { return f.name + "_" + s }

const (
	offEthProto = 12
	skbLen      = 0  // __sk_buff.len
	skbData     = 76 // __sk_buff.data
	skbDataEnd  = 80 // __sk_buff.data_end
)

// Return codes of a tcx program.
const (
	tcxNext = -1 // not ours: the next program, then the stack, sees it unchanged
	tcxPass = 0  // rewritten: on into the stack
	tcxDrop = 2
)

// Helper flags.
const (
	fPseudoHdr   = 1 << 4
	fMarkMangled = 1 << 5
	updateAny    = 0
	updateNoExst = 1
)

// Stack layout (offsets from the frame pointer, R10), sized for IPv6 and
// used by both families. Every key and value a helper reads is built here
// first, pads zeroed.
const (
	stKey     = -40  // flow key: saddr, daddr, sport, dport, then a zero pad
	stSvcKey  = -64  // service key: vip address, vip port, pad
	stNewIP   = -88  // the address written into the packet, then its port
	stSlotKey = -92  // tables key
	stStatKey = -96  // stats key
	stRevKey  = -136 // reverse key: target, client, target port, client port, pad
	stRevVal  = -168 // reverse value: vip address, vip port, service, last seen
	stFwdVal  = -200 // forward value: target address, target port, service, last seen
	stFlags   = -204 // the service's flags
	stACLKey  = -232 // ACL key: prefix length, service id, address
)

// Stack positions inside the flow key.
func (f family) stSaddr() int16 { return stKey }
func (f family) stDaddr() int16 { return stKey + f.addrLen }
func (f family) stSport() int16 { return stKey + 2*f.addrLen }
func (f family) stDport() int16 { return stKey + 2*f.addrLen + 2 }
func (f family) stPort() int16  { return stNewIP + f.addrLen }

// Counter kinds, per service, in the stats map.
const (
	statForward  = iota // datagrams client → target (count, bytes)
	statReply           // datagrams target → client
	statNewFlow         // flows created (count)
	statFull            // new flows refused: a flow map is full
	statNoTarget        // new flows refused: the table has no target
	statCollide         // new flows refused: a flow with the same target-side tuple exists for another listener
	statACL             // new flows refused by the listener's allow or deny list
	statKinds    = 8
)

// Value layouts shared with the Go side.
const (
	svcValSize  = 16     // table base u32, flags u32, service id u32, pad
	statValSize = 16     // count u64, bytes u64
	svcSticky   = 1      // service flags
	svcAllow    = 2      // check the allow list (it does not admit the whole family)
	svcDeny     = 4      // check the deny list
	replyFlag   = 0x8000 // in a flow value's service field: a reply entry
	svcMask     = 0x7fff
)

// famMaps are one family's map descriptors.
type famMaps struct {
	services, tables, flows, allow, deny int
}

// maps are the descriptors the program is built against.
type maps struct {
	v4, v6 famMaps
	stats  int
}

// program emits one of the two tc programs. On ingress, a client's datagram
// of an established flow has its destination rewritten to the flow's target
// before routing, and a first datagram to a service picks its target from the
// service's Maglev table exactly as user space does (flowhash.Flow or
// SourceHash, modulo the table size) and creates both entries. On egress,
// after routing, a target's reply has its source rewritten to the listener
// address the client used: rewriting it earlier would hand the routing code a
// local source address arriving from outside, which it drops as a martian
// when the reply is forwarded from a target on another host. Everything else
// goes on untouched.
func program(m maps, egress bool) asm.Instructions {
	b := &builder{stats: m.stats}
	b.emit(
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, skbData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, offEthProto+2),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R4, asm.R2, offEthProto, asm.Half),
		asm.JEq.Imm(asm.R4, ipv4.ethType, ipv4.label("parse")),
		asm.JEq.Imm(asm.R4, ipv6.ethType, ipv6.label("parse")),
		asm.Ja.Label("pass"),
	)
	b.family(ipv4, m.v4, egress)
	b.family(ipv6, m.v6, egress)
	b.emit(asm.Mov.Imm(asm.R0, tcxNext).WithSymbol("pass"), asm.Return())
	return b.insns
}

// family emits the whole path of one address family, from its parse label.
// R2 is the packet start and R3 its end on entry.
func (b *builder) family(f family, m famMaps, egress bool) {
	b.emit(
		asm.Mov.Reg(asm.R4, asm.R2).WithSymbol(f.label("parse")),
		asm.Add.Imm(asm.R4, f.minLen()),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
	)
	if f.offIPCsum != 0 {
		b.emit(
			asm.LoadMem(asm.R4, asm.R2, 14, asm.Byte),
			asm.JNE.Imm(asm.R4, 0x45, "pass"), // IPv4 without options
			asm.LoadMem(asm.R4, asm.R2, 23, asm.Byte),
			asm.JNE.Imm(asm.R4, 17, "pass"),
			asm.LoadMem(asm.R4, asm.R2, 20, asm.Half),
			asm.And.Imm(asm.R4, 0xff3f), // MF or a fragment offset
			asm.JNE.Imm(asm.R4, 0, "pass"),
		)
	} else {
		b.emit(
			asm.LoadMem(asm.R4, asm.R2, 14, asm.Byte),
			asm.And.Imm(asm.R4, 0xf0),
			asm.JNE.Imm(asm.R4, 0x60, "pass"),
			asm.LoadMem(asm.R4, asm.R2, 20, asm.Byte),
			asm.JNE.Imm(asm.R4, 17, "pass"), // UDP right after the fixed header
			// A zero UDP checksum is invalid over IPv6 (RFC 8200 8.1); the
			// stack drops it, and the checksum helpers would leave it zero.
			asm.LoadMem(asm.R4, asm.R2, f.udpCsum(), asm.Half),
			asm.JEq.Imm(asm.R4, 0, "pass"),
		)
	}
	b.copyWords(asm.R2, f.offSaddr, asm.RFP, f.stSaddr(), f.addrLen)
	b.copyWords(asm.R2, f.offDaddr, asm.RFP, f.stDaddr(), f.addrLen)
	b.emit(
		asm.LoadMem(asm.R4, asm.R2, f.offL4, asm.Half),
		asm.StoreMem(asm.RFP, f.stSport(), asm.R4, asm.Half),
		asm.LoadMem(asm.R4, asm.R2, f.offL4+2, asm.Half),
		asm.StoreMem(asm.RFP, f.stDport(), asm.R4, asm.Half),
		asm.StoreImm(asm.RFP, f.stDport()+2, 0, asm.Word),
		asm.LoadMem(asm.R7, asm.R6, skbLen, asm.Word),
		asm.Add.Imm(asm.R7, -f.minLen()), // count UDP payload bytes, as user space does
	)

	// An established flow: client to target, or a reply (its entry is
	// marked), target to client. One lookup serves both; each side acts on
	// its own direction only.
	b.lookup(m.flows, stKey)
	if egress {
		b.emit(
			asm.JEq.Imm(asm.R0, 0, "pass"),
			asm.LoadMem(asm.R1, asm.R0, int16(f.addrLen)+2, asm.Half),
			asm.And.Imm(asm.R1, replyFlag),
			asm.JEq.Imm(asm.R1, 0, "pass"),
		)
		b.touch(f)
		b.emit(asm.And.Imm(asm.R9, svcMask))
		b.count(statReply)
		b.rewrite(f, f.offSaddr, f.stSaddr(), f.offL4, f.stSport())
		return
	}
	b.emit(
		asm.JEq.Imm(asm.R0, 0, f.label("service")),
		asm.LoadMem(asm.R1, asm.R0, f.addrLen+2, asm.Half),
		asm.And.Imm(asm.R1, replyFlag),
		asm.JNE.Imm(asm.R1, 0, "pass"),
	)
	b.touch(f)
	b.count(statForward)
	b.emit(asm.Ja.Label(f.label("rewrite_dst")))

	// A first datagram to a service.
	b.emit(asm.Mov.Imm(asm.R0, 0).WithSymbol(f.label("service")))
	b.copyWords(asm.RFP, f.stDaddr(), asm.RFP, stSvcKey, f.addrLen)
	b.emit(
		asm.LoadMem(asm.R1, asm.RFP, f.stDport(), asm.Half),
		asm.StoreMem(asm.RFP, stSvcKey+f.addrLen, asm.R1, asm.Half),
		asm.StoreImm(asm.RFP, stSvcKey+f.addrLen+2, 0, asm.Half),
	)
	b.lookup(m.services, stSvcKey)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R8, asm.R0, 0, asm.Word), // table base
		asm.LoadMem(asm.R9, asm.R0, 8, asm.Word), // service id
		asm.LoadMem(asm.R1, asm.R0, 4, asm.Word), // flags
		asm.StoreMem(asm.RFP, stFlags, asm.R1, asm.Word),
		asm.And.Imm(asm.R1, svcAllow|svcDeny),
		asm.JEq.Imm(asm.R1, 0, f.label("acl_ok")),
	)
	// The listener's allow and deny lists, as user space applies them: a
	// deny match refuses, then only an allow match admits.
	b.emit(
		asm.StoreImm(asm.RFP, stACLKey, int64(32+8*f.addrLen), asm.Word), // the service id, then the address
		asm.StoreMem(asm.RFP, stACLKey+4, asm.R9, asm.Word),
	)
	b.copyWords(asm.RFP, f.stSaddr(), asm.RFP, stACLKey+8, f.addrLen)
	b.emit(
		asm.LoadMem(asm.R1, asm.RFP, stFlags, asm.Word),
		asm.And.Imm(asm.R1, svcDeny),
		asm.JEq.Imm(asm.R1, 0, f.label("allow")),
	)
	b.lookup(m.deny, stACLKey)
	b.emit(
		asm.JNE.Imm(asm.R0, 0, f.label("acl_refused")),
		asm.LoadMem(asm.R1, asm.RFP, stFlags, asm.Word).WithSymbol(f.label("allow")),
		asm.And.Imm(asm.R1, svcAllow),
		asm.JEq.Imm(asm.R1, 0, f.label("acl_ok")),
	)
	b.lookup(m.allow, stACLKey)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, f.label("acl_refused")),
		asm.LoadMem(asm.R1, asm.RFP, stFlags, asm.Word).WithSymbol(f.label("acl_ok")),
		asm.And.Imm(asm.R1, svcSticky),
		asm.JNE.Imm(asm.R1, 0, f.label("sticky")),
	)
	b.flowHash(f)
	b.emit(asm.Ja.Label(f.label("slot")))
	b.emit(asm.Mov.Imm(asm.R0, 0).WithSymbol(f.label("sticky")))
	b.sourceHash(f)
	b.emit(
		asm.Mod.Imm(asm.R0, maglev.DefaultSize).WithSymbol(f.label("slot")),
		asm.Add.Reg(asm.R0, asm.R8),
		asm.StoreMem(asm.RFP, stSlotKey, asm.R0, asm.Word),
	)
	b.lookup(m.tables, stSlotKey)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, f.label("no_target")),
		asm.LoadMem(asm.R1, asm.R0, f.addrLen, asm.Half),
		asm.JEq.Imm(asm.R1, 0, f.label("no_target")), // an empty slot has port 0
		asm.StoreMem(asm.RFP, f.stPort(), asm.R1, asm.Half),
		asm.StoreMem(asm.RFP, stRevKey+2*f.addrLen, asm.R1, asm.Half),
		asm.StoreMem(asm.RFP, stFwdVal+f.addrLen, asm.R1, asm.Half),
		asm.Mov.Reg(asm.R8, asm.R0),
	)
	b.copyWords(asm.R8, 0, asm.RFP, stNewIP, f.addrLen)
	b.copyWords(asm.R8, 0, asm.RFP, stRevKey, f.addrLen)
	b.copyWords(asm.R8, 0, asm.RFP, stFwdVal, f.addrLen)
	b.copyWords(asm.RFP, f.stSaddr(), asm.RFP, stRevKey+f.addrLen, f.addrLen)
	b.copyWords(asm.RFP, f.stDaddr(), asm.RFP, stRevVal, f.addrLen)
	b.emit(
		asm.LoadMem(asm.R1, asm.RFP, f.stSport(), asm.Half),
		asm.StoreMem(asm.RFP, stRevKey+2*f.addrLen+2, asm.R1, asm.Half),
		asm.StoreImm(asm.RFP, stRevKey+2*f.addrLen+4, 0, asm.Word),
		asm.LoadMem(asm.R1, asm.RFP, f.stDport(), asm.Half),
		asm.StoreMem(asm.RFP, stRevVal+f.addrLen, asm.R1, asm.Half),
		asm.StoreMem(asm.RFP, stFwdVal+f.addrLen+2, asm.R9, asm.Half),
		asm.Mov.Reg(asm.R1, asm.R9),
		asm.Or.Imm(asm.R1, replyFlag),
		asm.StoreMem(asm.RFP, stRevVal+f.addrLen+2, asm.R1, asm.Half),
	)
	if pad := f.lastOff - (f.addrLen + 4); pad > 0 {
		b.emit(
			asm.StoreImm(asm.RFP, stRevVal+f.addrLen+4, 0, asm.Word),
			asm.StoreImm(asm.RFP, stFwdVal+f.addrLen+4, 0, asm.Word),
		)
	}
	b.emit(
		asm.FnKtimeGetCoarseNs.Call(),
		asm.StoreMem(asm.RFP, stRevVal+f.lastOff, asm.R0, asm.DWord),
		asm.StoreMem(asm.RFP, stFwdVal+f.lastOff, asm.R0, asm.DWord),
	)
	// The reply entry first, and only if no other flow holds that
	// target-side tuple: then replies can never be handed to the wrong one.
	b.update(m.flows, stRevKey, stRevVal, updateNoExst)
	b.emit(asm.JEq.Imm(asm.R0, 0, f.label("rev_ok")))
	b.lookup(m.flows, stRevKey)
	b.emit(asm.JEq.Imm(asm.R0, 0, f.label("full"))) // not there: the map is full
	// The same flow, created on another CPU a moment ago, or another's.
	for off := int16(0); off < f.addrLen+4; off += 2 {
		b.emit(
			asm.LoadMem(asm.R1, asm.R0, off, asm.Half),
			asm.LoadMem(asm.R2, asm.RFP, stRevVal+off, asm.Half),
			asm.JNE.Reg(asm.R1, asm.R2, f.label("collide")),
		)
	}
	b.update(m.flows, stKey, stFwdVal, updateAny)
	b.emit(asm.Ja.Label(f.label("fwd_done")))

	b.emit(asm.Mov.Imm(asm.R0, 0).WithSymbol(f.label("rev_ok")))
	b.update(m.flows, stKey, stFwdVal, updateAny)
	b.emit(asm.JEq.Imm(asm.R0, 0, f.label("created")))
	b.emit(
		asm.LoadMapPtr(asm.R1, m.flows),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stRevKey),
		asm.FnMapDeleteElem.Call(),
		asm.Ja.Label(f.label("full")),
	)
	b.emit(asm.Mov.Imm(asm.R0, 0).WithSymbol(f.label("created")))
	b.count(statNewFlow)
	b.emit(asm.Mov.Imm(asm.R0, 0).WithSymbol(f.label("fwd_done")))
	b.count(statForward)
	b.emit(asm.Ja.Label(f.label("rewrite_dst")))

	for _, r := range []struct {
		label string
		kind  int
	}{{"full", statFull}, {"no_target", statNoTarget}, {"collide", statCollide}, {"acl_refused", statACL}} {
		b.emit(asm.Mov.Imm(asm.R0, 0).WithSymbol(f.label(r.label)))
		b.count(r.kind)
		b.emit(asm.Mov.Imm(asm.R0, tcxDrop), asm.Return())
	}

	b.emit(asm.Mov.Imm(asm.R0, 0).WithSymbol(f.label("rewrite_dst")))
	b.rewrite(f, f.offDaddr, f.stDaddr(), f.offL4+2, f.stDport())
}

type builder struct {
	insns asm.Instructions
	stats int
	n     int
}

func (b *builder) emit(ins ...asm.Instruction) { b.insns = append(b.insns, ins...) }

func (b *builder) label(prefix string) string {
	b.n++
	return fmt.Sprintf("%s_%d", prefix, b.n)
}

// copyWords copies n bytes (a multiple of 4) from src+from to dst+to.
func (b *builder) copyWords(src asm.Register, from int16, dst asm.Register, to int16, n int16) {
	for i := int16(0); i < n; i += 4 {
		b.emit(
			asm.LoadMem(asm.R4, src, from+i, asm.Word),
			asm.StoreMem(dst, to+i, asm.R4, asm.Word),
		)
	}
}

// lookup leaves in R0 the value of the key at stack offset key, or 0.
func (b *builder) lookup(fd int, key int16) {
	b.emit(
		asm.LoadMapPtr(asm.R1, fd),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, int32(key)),
		asm.FnMapLookupElem.Call(),
	)
}

func (b *builder) update(fd int, key, val int16, flags int32) {
	b.emit(
		asm.LoadMapPtr(asm.R1, fd),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, int32(key)),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, int32(val)),
		asm.Mov.Imm(asm.R4, flags),
		asm.FnMapUpdateElem.Call(),
	)
}

// touch takes a flow value in R0 (address, port u16, service u16, last seen
// u64): it copies the address and port to stNewIP, the service field to R9,
// and stamps the entry with the (coarse, jiffy-grained) time, writing only
// when that changed, so the entry's cache line stays shared.
func (b *builder) touch(f family) {
	skip := b.label("fresh")
	b.emit(asm.Mov.Reg(asm.R8, asm.R0))
	b.copyWords(asm.R8, 0, asm.RFP, stNewIP, f.addrLen)
	b.emit(
		asm.LoadMem(asm.R1, asm.R8, f.addrLen, asm.Half),
		asm.StoreMem(asm.RFP, f.stPort(), asm.R1, asm.Half),
		asm.LoadMem(asm.R9, asm.R8, f.addrLen+2, asm.Half),
		asm.FnKtimeGetCoarseNs.Call(),
		asm.LoadMem(asm.R1, asm.R8, f.lastOff, asm.DWord),
		asm.JEq.Reg(asm.R1, asm.R0, skip),
		asm.StoreMem(asm.R8, f.lastOff, asm.R0, asm.DWord),
		asm.Mov.Imm(asm.R0, 0).WithSymbol(skip),
	)
}

// count adds one datagram of R7 bytes to the service-in-R9's counter kind.
// Stats are per CPU, so plain adds suffice.
func (b *builder) count(kind int) {
	skip := b.label("counted")
	b.emit(
		asm.Mov.Reg(asm.R1, asm.R9),
		asm.LSh.Imm(asm.R1, 3),
		asm.Add.Imm(asm.R1, int32(kind)),
		asm.StoreMem(asm.RFP, stStatKey, asm.R1, asm.Word),
	)
	b.lookup(b.stats, stStatKey)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, skip),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.LoadMem(asm.R1, asm.R0, 8, asm.DWord),
		asm.Add.Reg(asm.R1, asm.R7),
		asm.StoreMem(asm.R0, 8, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 0).WithSymbol(skip),
	)
}

// rewrite replaces the packet's address and port at the given offsets with
// the ones at stNewIP, fixing the UDP checksum (a zero IPv4 UDP checksum
// stays zero) and the IPv4 header checksum, and passes the packet on.
func (b *builder) rewrite(f family, offIP, oldIP, offPort, oldPort int16) {
	for i := int16(0); i < f.addrLen; i += 4 {
		b.csum(asm.FnL4CsumReplace, f.udpCsum(), oldIP+i, stNewIP+i, asm.Word, fPseudoHdr|fMarkMangled|4)
	}
	b.csum(asm.FnL4CsumReplace, f.udpCsum(), oldPort, f.stPort(), asm.Half, fMarkMangled|2)
	if f.offIPCsum != 0 {
		b.csum(asm.FnL3CsumReplace, f.offIPCsum, oldIP, stNewIP, asm.Word, 4)
	}
	b.store(offIP, stNewIP, int32(f.addrLen))
	b.store(offPort, f.stPort(), 2)
	b.emit(asm.Mov.Imm(asm.R0, tcxPass), asm.Return())
}

// csum calls a checksum helper on the checksum at packet offset at, for the
// value at stack offset old becoming the one at stack offset new.
func (b *builder) csum(fn asm.BuiltinFunc, at, old, new int16, size asm.Size, flags int32) {
	b.emit(
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, int32(at)),
		asm.LoadMem(asm.R3, asm.RFP, old, size),
		asm.LoadMem(asm.R4, asm.RFP, new, size),
		asm.Mov.Imm(asm.R5, flags),
		fn.Call(),
	)
}

// store writes n bytes from stack offset from into the packet at offset at.
func (b *builder) store(at, from int16, n int32) {
	b.emit(
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, int32(at)),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, int32(from)),
		asm.Mov.Imm(asm.R4, n),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnSkbStoreBytes.Call(),
	)
}

// FNV-1a as flowhash.Flow computes it, over the 16-byte form of each
// address (IPv4-mapped for IPv4): constant parts are folded into constants
// here, the variable bytes hashed one by one. R0 is the hash, R1 the prime,
// R2 and R3 scratch. Every constant comes from package flowhash, and
// TestProgramMatchesUserSpaceHash checks the result on real packets.
var (
	mappedPrefix = [12]byte{10: 0xff, 11: 0xff}
	v4FlowSeed   = flowhash.FNV(uint64(flowhash.Offset64)^flowhash.ProtoUDP, mappedPrefix[:]) // proto, then the source's prefix
	v4SourceSeed = flowhash.FNV(flowhash.Offset64, mappedPrefix[:])
	prime10      = pow(flowhash.Prime64, 10)
)

func pow(x uint64, n int) uint64 {
	r := uint64(1)
	for range n {
		r *= x
	}
	return r
}

func (b *builder) flowHash(f family) {
	seed := uint64(flowhash.Offset64) ^ flowhash.ProtoUDP
	if f.addrLen == 4 {
		seed = v4FlowSeed
	}
	b.emit(asm.LoadImm(asm.R0, int64(seed), asm.DWord), asm.LoadImm(asm.R1, flowhash.Prime64, asm.DWord))
	b.hashBytes(f.stSaddr(), f.addrLen)
	b.hashBytes(f.stSport(), 2)
	if f.addrLen == 4 {
		// The destination's ten zero bytes multiply by the prime ten times.
		b.emit(asm.LoadImm(asm.R2, int64(prime10), asm.DWord), asm.Mul.Reg(asm.R0, asm.R2))
		for range 2 {
			b.emit(asm.Xor.Imm(asm.R0, 0xff), asm.Mul.Reg(asm.R0, asm.R1))
		}
	}
	b.hashBytes(f.stDaddr(), f.addrLen)
	b.hashBytes(f.stDport(), 2)
	b.mix()
}

func (b *builder) sourceHash(f family) {
	seed := uint64(flowhash.Offset64)
	if f.addrLen == 4 {
		seed = v4SourceSeed
	}
	b.emit(asm.LoadImm(asm.R0, int64(seed), asm.DWord), asm.LoadImm(asm.R1, flowhash.Prime64, asm.DWord))
	b.hashBytes(f.stSaddr(), f.addrLen)
	b.mix()
}

// hashBytes hashes n bytes (2, or a multiple of 4) at stack offset off in
// memory order.
func (b *builder) hashBytes(off int16, n int16) {
	size, step := asm.Word, int16(4)
	if n == 2 {
		size, step = asm.Half, 2
	}
	for w := int16(0); w < n; w += step {
		b.emit(asm.LoadMem(asm.R3, asm.RFP, off+w, size))
		for i := range step {
			b.emit(
				asm.Mov.Reg(asm.R2, asm.R3),
				asm.RSh.Imm(asm.R2, int32(8*i)),
				asm.And.Imm(asm.R2, 0xff),
				asm.Xor.Reg(asm.R0, asm.R2),
				asm.Mul.Reg(asm.R0, asm.R1),
			)
		}
	}
}

// mix is flowhash.Mix.
func (b *builder) mix() {
	x := uint64(flowhash.MixMul1)
	y := uint64(flowhash.MixMul2)
	b.emit(
		asm.Mov.Reg(asm.R2, asm.R0), asm.RSh.Imm(asm.R2, flowhash.MixShift1), asm.Xor.Reg(asm.R0, asm.R2),
		asm.LoadImm(asm.R2, int64(x), asm.DWord), asm.Mul.Reg(asm.R0, asm.R2),
		asm.Mov.Reg(asm.R2, asm.R0), asm.RSh.Imm(asm.R2, flowhash.MixShift2), asm.Xor.Reg(asm.R0, asm.R2),
		asm.LoadImm(asm.R2, int64(y), asm.DWord), asm.Mul.Reg(asm.R0, asm.R2),
		asm.Mov.Reg(asm.R2, asm.R0), asm.RSh.Imm(asm.R2, flowhash.MixShift3), asm.Xor.Reg(asm.R0, asm.R2),
	)
}
