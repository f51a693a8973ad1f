package fastpath

import (
	"fmt"

	"github.com/cilium/ebpf/asm"

	"github.com/l4lb/l4lb/lb/balance"
	"github.com/l4lb/l4lb/pkg/maglev"
)

// Packet offsets of an untagged Ethernet (or loopback) frame carrying IPv4
// without options and UDP.
const (
	offEthProto = 12
	offVerIHL   = 14
	offFrag     = 20
	offProto    = 23
	offIPCsum   = 24
	offSaddr    = 26
	offDaddr    = 30
	offSport    = 34
	offDport    = 36
	offUDPCsum  = 40
	minLen      = 42

	skbLen     = 0  // __sk_buff.len
	skbData    = 76 // __sk_buff.data
	skbDataEnd = 80 // __sk_buff.data_end
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

// Stack layout (offsets from the frame pointer, R10). Every key and value a
// helper reads is built here first, pads zeroed.
const (
	stKey     = -16 // flow key: saddr, daddr, sport, dport (12 bytes)
	stSaddr   = -16
	stDaddr   = -12
	stSport   = -8
	stDport   = -6
	stKeyPad  = -4
	stSvcKey  = -24 // service key: vip ip, vip port, pad (8 bytes)
	stNewIP   = -32 // the address written into the packet
	stNewPort = -28
	stSlotKey = -36 // tables key
	stStatKey = -40
	stRevKey  = -56 // reverse key: target ip, client ip, target port, client port
	stRevVal  = -72 // reverse value: vip ip, vip port, service, last seen
	stFwdVal  = -88 // forward value: target ip, target port, service, last seen
)

// Counter kinds, per service, in the stats map.
const (
	statForward  = iota // datagrams client → target (count, bytes)
	statReply           // datagrams target → client
	statNewFlow         // flows created (count)
	statFull            // new flows refused: a flow map is full
	statNoTarget        // new flows refused: the table has no target
	statCollide         // new flows refused: a flow with the same target-side tuple exists for another listener
	statKinds    = 8
)

// Value layouts shared with the Go side.
const (
	svcValSize  = 16 // table base u32, flags u32, service id u32, pad
	slotValSize = 8  // target ip, target port, pad (all network order)
	flowKeySize = 12
	flowValSize = 16
	statValSize = 16 // count u64, bytes u64
	svcSticky   = 1
	replyFlag   = 0x8000 // in a flow value's service field: a reply entry
	svcMask     = 0x7fff
)

// maps are the descriptors the program is built against.
type maps struct {
	services, tables, flows, stats int
}

// program emits one of the two tc programs. On ingress, a client's datagram
// of an established flow has its destination rewritten to the flow's target
// before routing, and a first datagram to a service picks its target from the
// service's Maglev table exactly as user space does (balance.FlowHash or
// SourceHash, modulo the table size) and creates both entries. On egress,
// after routing, a target's reply has its source rewritten to the listener
// address the client used: rewriting it earlier would hand the routing code a
// local source address arriving from outside, which it drops as a martian
// when the reply is forwarded from a target on another host. Everything else
// goes on untouched.
func program(m maps, egress bool) asm.Instructions {
	b := &builder{}
	b.emit(
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, skbData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, minLen),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R4, asm.R2, offEthProto, asm.Half),
		asm.JNE.Imm(asm.R4, 0x0008, "pass"), // ETH_P_IP, as loaded little-endian
		asm.LoadMem(asm.R4, asm.R2, offVerIHL, asm.Byte),
		asm.JNE.Imm(asm.R4, 0x45, "pass"), // IPv4 without options
		asm.LoadMem(asm.R4, asm.R2, offProto, asm.Byte),
		asm.JNE.Imm(asm.R4, 17, "pass"),
		asm.LoadMem(asm.R4, asm.R2, offFrag, asm.Half),
		asm.And.Imm(asm.R4, 0xff3f), // MF or a fragment offset
		asm.JNE.Imm(asm.R4, 0, "pass"),
		asm.LoadMem(asm.R4, asm.R2, offSaddr, asm.Word),
		asm.StoreMem(asm.RFP, stSaddr, asm.R4, asm.Word),
		asm.LoadMem(asm.R4, asm.R2, offDaddr, asm.Word),
		asm.StoreMem(asm.RFP, stDaddr, asm.R4, asm.Word),
		asm.LoadMem(asm.R4, asm.R2, offSport, asm.Half),
		asm.StoreMem(asm.RFP, stSport, asm.R4, asm.Half),
		asm.LoadMem(asm.R4, asm.R2, offDport, asm.Half),
		asm.StoreMem(asm.RFP, stDport, asm.R4, asm.Half),
		asm.StoreImm(asm.RFP, stKeyPad, 0, asm.Word),
		asm.LoadMem(asm.R7, asm.R6, skbLen, asm.Word),
		asm.Add.Imm(asm.R7, -minLen), // count UDP payload bytes, as user space does
	)

	// An established flow: client to target, or a reply (its entry is
	// marked), target to client. One lookup serves both; each side acts on
	// its own direction only.
	b.lookup(m.flows, stKey)
	if egress {
		b.emit(
			asm.JEq.Imm(asm.R0, 0, "pass"),
			asm.LoadMem(asm.R1, asm.R0, 6, asm.Half),
			asm.And.Imm(asm.R1, replyFlag),
			asm.JEq.Imm(asm.R1, 0, "pass"),
		)
		b.touch(stNewIP, stNewPort)
		b.emit(asm.And.Imm(asm.R9, svcMask))
		b.count(m.stats, statReply)
		b.rewrite("rewrite_src", offSaddr, stSaddr, offSport, stSport)
		b.emit(asm.Mov.Imm(asm.R0, tcxNext).WithSymbol("pass"), asm.Return())
		return b.insns
	}
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "service"),
		asm.LoadMem(asm.R1, asm.R0, 6, asm.Half),
		asm.And.Imm(asm.R1, replyFlag),
		asm.JNE.Imm(asm.R1, 0, "pass"),
	)
	b.touch(stNewIP, stNewPort)
	b.count(m.stats, statForward)
	b.emit(asm.Ja.Label("rewrite_dst"))

	// A first datagram to a service.
	b.emit(
		asm.LoadMem(asm.R1, asm.RFP, stDaddr, asm.Word).WithSymbol("service"),
		asm.StoreMem(asm.RFP, stSvcKey, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.RFP, stDport, asm.Half),
		asm.StoreMem(asm.RFP, stSvcKey+4, asm.R1, asm.Half),
		asm.StoreImm(asm.RFP, stSvcKey+6, 0, asm.Half),
	)
	b.lookup(m.services, stSvcKey)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R8, asm.R0, 0, asm.Word), // table base
		asm.LoadMem(asm.R9, asm.R0, 8, asm.Word), // service id
		asm.LoadMem(asm.R1, asm.R0, 4, asm.Word), // flags
		asm.And.Imm(asm.R1, svcSticky),
		asm.JNE.Imm(asm.R1, 0, "sticky"),
	)
	b.flowHash()
	b.emit(asm.Ja.Label("slot"))
	b.sourceHash("sticky")
	b.emit(
		asm.Mod.Imm(asm.R0, maglev.DefaultSize).WithSymbol("slot"),
		asm.Add.Reg(asm.R0, asm.R8),
		asm.StoreMem(asm.RFP, stSlotKey, asm.R0, asm.Word),
	)
	b.lookup(m.tables, stSlotKey)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "no_target"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.JEq.Imm(asm.R1, 0, "no_target"),
		asm.StoreMem(asm.RFP, stNewIP, asm.R1, asm.Word),
		asm.StoreMem(asm.RFP, stRevKey, asm.R1, asm.Word),
		asm.StoreMem(asm.RFP, stFwdVal, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R0, 4, asm.Half),
		asm.StoreMem(asm.RFP, stNewPort, asm.R1, asm.Half),
		asm.StoreMem(asm.RFP, stRevKey+8, asm.R1, asm.Half),
		asm.StoreMem(asm.RFP, stFwdVal+4, asm.R1, asm.Half),
		asm.LoadMem(asm.R1, asm.RFP, stSaddr, asm.Word),
		asm.StoreMem(asm.RFP, stRevKey+4, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.RFP, stSport, asm.Half),
		asm.StoreMem(asm.RFP, stRevKey+10, asm.R1, asm.Half),
		asm.StoreImm(asm.RFP, stRevKey+12, 0, asm.Word),
		asm.LoadMem(asm.R1, asm.RFP, stDaddr, asm.Word),
		asm.StoreMem(asm.RFP, stRevVal, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.RFP, stDport, asm.Half),
		asm.StoreMem(asm.RFP, stRevVal+4, asm.R1, asm.Half),
		asm.StoreMem(asm.RFP, stFwdVal+6, asm.R9, asm.Half),
		asm.Mov.Reg(asm.R1, asm.R9),
		asm.Or.Imm(asm.R1, replyFlag),
		asm.StoreMem(asm.RFP, stRevVal+6, asm.R1, asm.Half),
		asm.FnKtimeGetCoarseNs.Call(),
		asm.StoreMem(asm.RFP, stRevVal+8, asm.R0, asm.DWord),
		asm.StoreMem(asm.RFP, stFwdVal+8, asm.R0, asm.DWord),
	)
	// The reply entry first, and only if no other flow holds that
	// target-side tuple: then replies can never be handed to the wrong one.
	b.update(m.flows, stRevKey, stRevVal, updateNoExst)
	b.emit(asm.JEq.Imm(asm.R0, 0, "rev_ok"))
	b.lookup(m.flows, stRevKey)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "full"), // not there: the map is full
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.LoadMem(asm.R2, asm.RFP, stRevVal, asm.Word),
		asm.JNE.Reg(asm.R1, asm.R2, "collide"),
		asm.LoadMem(asm.R1, asm.R0, 4, asm.Half),
		asm.LoadMem(asm.R2, asm.RFP, stRevVal+4, asm.Half),
		asm.JNE.Reg(asm.R1, asm.R2, "collide"),
		asm.LoadMem(asm.R1, asm.R0, 6, asm.Half),
		asm.LoadMem(asm.R2, asm.RFP, stRevVal+6, asm.Half),
		asm.JNE.Reg(asm.R1, asm.R2, "collide"),
		// The same flow, created on another CPU a moment ago.
	)
	b.update(m.flows, stKey, stFwdVal, updateAny)
	b.emit(asm.Ja.Label("fwd_done"))

	b.emit(asm.Mov.Imm(asm.R0, 0).WithSymbol("rev_ok"))
	b.update(m.flows, stKey, stFwdVal, updateAny)
	b.emit(asm.JEq.Imm(asm.R0, 0, "created"))
	b.emit(
		asm.LoadMapPtr(asm.R1, m.flows),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stRevKey),
		asm.FnMapDeleteElem.Call(),
		asm.Ja.Label("full"),
	)
	b.emit(asm.Mov.Imm(asm.R0, 0).WithSymbol("created"))
	b.count(m.stats, statNewFlow)
	b.emit(asm.Mov.Imm(asm.R0, 0).WithSymbol("fwd_done"))
	b.count(m.stats, statForward)
	b.emit(asm.Ja.Label("rewrite_dst"))

	for _, r := range []struct {
		label string
		kind  int
	}{{"full", statFull}, {"no_target", statNoTarget}, {"collide", statCollide}} {
		b.emit(asm.Mov.Imm(asm.R0, 0).WithSymbol(r.label))
		b.count(m.stats, r.kind)
		b.emit(asm.Mov.Imm(asm.R0, tcxDrop), asm.Return())
	}

	b.rewrite("rewrite_dst", offDaddr, stDaddr, offDport, stDport)

	b.emit(asm.Mov.Imm(asm.R0, tcxNext).WithSymbol("pass"), asm.Return())
	return b.insns
}

type builder struct {
	insns asm.Instructions
	n     int
}

func (b *builder) emit(ins ...asm.Instruction) { b.insns = append(b.insns, ins...) }

func (b *builder) label(prefix string) string {
	b.n++
	return fmt.Sprintf("%s_%d", prefix, b.n)
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

// touch takes a flow value in R0 (address u32, port u16, service u16, last
// seen u64): it copies the address and port to the stack, the service field
// to R9, and stamps the entry with the (coarse, jiffy-grained) time, writing
// only when that changed, so the entry's cache line stays shared.
func (b *builder) touch(ip, port int16) {
	skip := b.label("fresh")
	b.emit(
		asm.Mov.Reg(asm.R8, asm.R0),
		asm.LoadMem(asm.R1, asm.R8, 0, asm.Word),
		asm.StoreMem(asm.RFP, ip, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R8, 4, asm.Half),
		asm.StoreMem(asm.RFP, port, asm.R1, asm.Half),
		asm.LoadMem(asm.R9, asm.R8, 6, asm.Half),
		asm.FnKtimeGetCoarseNs.Call(),
		asm.LoadMem(asm.R1, asm.R8, 8, asm.DWord),
		asm.JEq.Reg(asm.R1, asm.R0, skip),
		asm.StoreMem(asm.R8, 8, asm.R0, asm.DWord),
		asm.Mov.Imm(asm.R0, 0).WithSymbol(skip),
	)
}

// count adds one datagram of R7 bytes to the service-in-R9's counter kind.
// Stats are per CPU, so plain adds suffice.
func (b *builder) count(fd int, kind int) {
	skip := b.label("counted")
	b.emit(
		asm.Mov.Reg(asm.R1, asm.R9),
		asm.LSh.Imm(asm.R1, 3),
		asm.Add.Imm(asm.R1, int32(kind)),
		asm.StoreMem(asm.RFP, stStatKey, asm.R1, asm.Word),
	)
	b.lookup(fd, stStatKey)
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
// the ones at stNewIP/stNewPort, fixing the IP and UDP checksums (a zero UDP
// checksum stays zero), and passes the packet on.
func (b *builder) rewrite(label string, offIP int16, oldIP int16, offPort int16, oldPort int16) {
	b.emit(asm.Mov.Imm(asm.R0, 0).WithSymbol(label))
	b.csum(asm.FnL4CsumReplace, offUDPCsum, oldIP, stNewIP, asm.Word, fPseudoHdr|fMarkMangled|4)
	b.csum(asm.FnL4CsumReplace, offUDPCsum, oldPort, stNewPort, asm.Half, fMarkMangled|2)
	b.csum(asm.FnL3CsumReplace, offIPCsum, oldIP, stNewIP, asm.Word, 4)
	b.store(offIP, stNewIP, 4)
	b.store(offPort, stNewPort, 2)
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

// FNV-1a as balance.FlowHash computes it, over the IPv4-mapped form of each
// address: the constant parts are folded into constants here, the variable
// bytes hashed one by one. R0 is the hash, R1 the prime, R2 and R3 scratch.
var (
	mappedPrefix = [12]byte{10: 0xff, 11: 0xff}
	flowSeed     = fnv(uint64(offset64)^balance.ProtoUDP, mappedPrefix[:]) // proto, then the source's prefix
	sourceSeed   = fnv(offset64, mappedPrefix[:])
	prime10      = pow(prime64, 10)
)

const (
	offset64 = 14695981039346656037
	prime64  = 1099511628211
)

func fnv(h uint64, bs []byte) uint64 {
	for _, c := range bs {
		h = (h ^ uint64(c)) * prime64
	}
	return h
}

func pow(x uint64, n int) uint64 {
	r := uint64(1)
	for range n {
		r *= x
	}
	return r
}

func (b *builder) flowHash() {
	b.emit(asm.LoadImm(asm.R0, int64(flowSeed), asm.DWord), asm.LoadImm(asm.R1, prime64, asm.DWord))
	b.hashBytes(stSaddr, 4)
	b.hashBytes(stSport, 2)
	// The destination's ten zero bytes multiply by the prime ten times.
	b.emit(asm.LoadImm(asm.R2, int64(prime10), asm.DWord), asm.Mul.Reg(asm.R0, asm.R2))
	for range 2 {
		b.emit(asm.Xor.Imm(asm.R0, 0xff), asm.Mul.Reg(asm.R0, asm.R1))
	}
	b.hashBytes(stDaddr, 4)
	b.hashBytes(stDport, 2)
	b.mix()
}

func (b *builder) sourceHash(label string) {
	b.emit(asm.LoadImm(asm.R0, int64(sourceSeed), asm.DWord).WithSymbol(label), asm.LoadImm(asm.R1, prime64, asm.DWord))
	b.hashBytes(stSaddr, 4)
	b.mix()
}

// hashBytes hashes n bytes at stack offset off in memory order.
func (b *builder) hashBytes(off int16, n int) {
	size := asm.Word
	if n == 2 {
		size = asm.Half
	}
	b.emit(asm.LoadMem(asm.R3, asm.RFP, off, size))
	for i := range n {
		b.emit(
			asm.Mov.Reg(asm.R2, asm.R3),
			asm.RSh.Imm(asm.R2, int32(8*i)),
			asm.And.Imm(asm.R2, 0xff),
			asm.Xor.Reg(asm.R0, asm.R2),
			asm.Mul.Reg(asm.R0, asm.R1),
		)
	}
}

// mix is maglev.Mix.
func (b *builder) mix() {
	x := uint64(0xbf58476d1ce4e5b9)
	y := uint64(0x94d049bb133111eb)
	b.emit(
		asm.Mov.Reg(asm.R2, asm.R0), asm.RSh.Imm(asm.R2, 30), asm.Xor.Reg(asm.R0, asm.R2),
		asm.LoadImm(asm.R2, int64(x), asm.DWord), asm.Mul.Reg(asm.R0, asm.R2),
		asm.Mov.Reg(asm.R2, asm.R0), asm.RSh.Imm(asm.R2, 27), asm.Xor.Reg(asm.R0, asm.R2),
		asm.LoadImm(asm.R2, int64(y), asm.DWord), asm.Mul.Reg(asm.R0, asm.R2),
		asm.Mov.Reg(asm.R2, asm.R0), asm.RSh.Imm(asm.R2, 31), asm.Xor.Reg(asm.R0, asm.R2),
	)
}
