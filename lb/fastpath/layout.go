package fastpath

// Layouts and constants shared with the kernel programs (bpf/fastpath.h and
// the structs of bpf/fastpath.c). TestHeaderMatchesGo checks the #defines
// against these; the map sizes are checked by the kernel when the maps are
// created from the program's BTF.

// family is what differs between IPv4 and IPv6 in the maps: how long the
// addresses, and so the map entries, are.
type family struct {
	name        string
	addrLen     int16 // 4 or 16
	lastOff     int16 // last-seen time in a flow value
	keySize     int   // flow key: saddr, daddr, sport, dport
	valSize     int   // flow value: address, port, service, last seen
	svcKeySize  int   // service key: address, port, pad
	slotValSize int   // table value: address, port, pad
}

var (
	ipv4 = family{name: "v4", addrLen: 4, lastOff: 8, keySize: 12, valSize: 16, svcKeySize: 8, slotValSize: ipv4SlotSize}
	ipv6 = family{name: "v6", addrLen: 16, lastOff: 24, keySize: 36, valSize: 32, svcKeySize: 20, slotValSize: ipv6SlotSize}
)

// Table values: address, port, pad.
const (
	ipv4SlotSize = 8
	ipv6SlotSize = 20
)

// Verdicts of a tcx program.
const (
	tcxNext = -1 // not ours: the next program, then the stack, sees it unchanged
	tcxPass = 0  // rewritten: on into the stack
	tcxDrop = 2
)

// Counter kinds, per service, in the stats map.
const (
	statForward   = iota // datagrams client → target (count, bytes)
	statReply            // datagrams target → client
	statNewFlow          // flows created (count)
	statFull             // new flows refused: a flow map refused the entries
	statNoTarget         // new flows refused: the table has no target
	statCollide          // new flows refused: a flow with the same target-side tuple exists for another listener
	statACL              // new flows refused by the listener's allow or deny list
	statClientRst        // TCP: resets from clients
	statTargetRst        // TCP: resets from targets
	statPromote          // TCP: handshakes completed
	statMidflow          // TCP: flows picked up mid-connection (begun on another node)
	statKinds     = 12
)

// Keys of the port bitmaps.
const (
	portsListeners = 0
	portsTargets   = 1
)

// Value layouts and flags shared with the programs.
const (
	svcValSize     = 32     // table base u32, flags u32, service id u32, DSR outer source (16 bytes), GUE port u16, pad u16
	statValSize    = 16     // count u64, bytes u64
	svcSticky      = 1      // service flags
	svcAllow       = 2      // check the allow list (it does not admit the whole family)
	svcDeny        = 4      // check the deny list
	svcDSR         = 8      // direct server return: IP in IP to the target
	svcGUE         = 16     // with svcDSR: IP in UDP (GUE variant 1) instead
	replyFlag      = 0x8000 // in a flow value's service field: a reply entry
	finFlag        = 0x4000 // TCP: its direction sent a FIN
	closedFlag     = 0x2000 // TCP: the flow is over and lingers
	dsrFlag        = 0x1000 // the flow is forwarded by direct server return
	svcMask        = 0x0fff
	targetStatSize = 16 // TCP resets from a target: SYNs answered with RST, others
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
