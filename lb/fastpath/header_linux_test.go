package fastpath

import (
	"os"
	"regexp"
	"strconv"
	"testing"
	"unsafe"

	"github.com/l4lb/l4lb/pkg/flowhash"
	"github.com/l4lb/l4lb/pkg/maglev"
)

// Every constant the kernel programs share with Go is defined once on each
// side; this keeps the two the same. The hash itself is checked on real
// packets by TestProgramMatchesUserSpaceHash.
func TestHeaderMatchesGo(t *testing.T) {
	src, err := os.ReadFile("bpf/fastpath.h")
	if err != nil {
		t.Fatal(err)
	}
	defines := map[string]int64{}
	re := regexp.MustCompile(`(?m)^#define (\w+) (-?(?:0x[0-9a-fA-F]+|\d+))(?:ULL)?\b`)
	for _, m := range re.FindAllStringSubmatch(string(src), -1) {
		v, err := strconv.ParseUint(m[2], 0, 64)
		if m[2][0] == '-' {
			var s int64
			s, err = strconv.ParseInt(m[2], 0, 64)
			v = uint64(s)
		}
		if err != nil {
			t.Fatalf("%s: %v", m[1], err)
		}
		defines[m[1]] = int64(v)
	}
	u := func(v uint64) int64 { return int64(v) }
	want := map[string]int64{
		"FLOWHASH_OFFSET64":   u(flowhash.Offset64),
		"FLOWHASH_PRIME64":    flowhash.Prime64,
		"FLOWHASH_MIX_MUL1":   u(flowhash.MixMul1),
		"FLOWHASH_MIX_MUL2":   u(flowhash.MixMul2),
		"FLOWHASH_MIX_SHIFT1": flowhash.MixShift1,
		"FLOWHASH_MIX_SHIFT2": flowhash.MixShift2,
		"FLOWHASH_MIX_SHIFT3": flowhash.MixShift3,
		"PROTO_UDP":           flowhash.ProtoUDP,
		"PROTO_TCP":           flowhash.ProtoTCP,
		"MAGLEV_SIZE":         maglev.DefaultSize,
		"STAT_FORWARD":        statForward,
		"STAT_REPLY":          statReply,
		"STAT_NEW_FLOW":       statNewFlow,
		"STAT_FULL":           statFull,
		"STAT_NO_TARGET":      statNoTarget,
		"STAT_COLLIDE":        statCollide,
		"STAT_ACL":            statACL,
		"STAT_CLIENT_RST":     statClientRst,
		"STAT_TARGET_RST":     statTargetRst,
		"STAT_PROMOTE":        statPromote,
		"STAT_MIDFLOW":        statMidflow,
		"SVC_DSR":             svcDSR,
		"SVC_GUE":             svcGUE,
		"DSR_FLAG":            dsrFlag,
		"STAT_KINDS":          statKinds,
		"SVC_STICKY":          svcSticky,
		"PORTS_LISTENERS":     portsListeners,
		"PORTS_TARGETS":       portsTargets,
		"SVC_ALLOW":           svcAllow,
		"SVC_DENY":            svcDeny,
		"REPLY_FLAG":          replyFlag,
		"FIN_FLAG":            finFlag,
		"CLOSED_FLAG":         closedFlag,
		"SVC_MASK":            svcMask,
		"TCX_NEXT":            tcxNext,
		"TCX_PASS":            tcxPass,
		"TCX_DROP":            tcxDrop,
	}
	for name, w := range want {
		got, ok := defines[name]
		if !ok {
			t.Errorf("bpf/fastpath.h does not define %s", name)
			continue
		}
		if got != w {
			t.Errorf("%s = %#x in bpf/fastpath.h, %#x in Go", name, got, w)
		}
	}
	if len(defines) != len(want) {
		for name := range defines {
			if _, ok := want[name]; !ok {
				t.Errorf("bpf/fastpath.h defines %s, which no Go constant mirrors", name)
			}
		}
	}
}

// The generated loader's structs have the sizes the Go side writes.
func TestGeneratedLayouts(t *testing.T) {
	for _, c := range []struct {
		name string
		got  uintptr
		want int
	}{
		{"flow_key4", sizeofFlowKey4, ipv4.keySize}, {"flow_key6", sizeofFlowKey6, ipv6.keySize},
		{"flow_val4", sizeofFlowVal4, ipv4.valSize}, {"flow_val6", sizeofFlowVal6, ipv6.valSize},
		{"svc_key4", sizeofSvcKey4, ipv4.svcKeySize}, {"svc_key6", sizeofSvcKey6, ipv6.svcKeySize},
		{"slot4", sizeofSlot4, ipv4SlotSize}, {"slot6", sizeofSlot6, ipv6SlotSize},
		{"svc_val", sizeofSvcVal, svcValSize}, {"stat", sizeofStat, statValSize},
		{"target_stat", sizeofTargetStat, targetStatSize},
	} {
		if int(c.got) != c.want {
			t.Errorf("struct %s is %d bytes in C, %d in Go", c.name, c.got, c.want)
		}
	}
}

var (
	sizeofFlowKey4   = unsafe.Sizeof(fastpathBPFFlowKey4{})
	sizeofFlowKey6   = unsafe.Sizeof(fastpathBPFFlowKey6{})
	sizeofFlowVal4   = unsafe.Sizeof(fastpathBPFFlowVal4{})
	sizeofFlowVal6   = unsafe.Sizeof(fastpathBPFFlowVal6{})
	sizeofSvcKey4    = unsafe.Sizeof(fastpathBPFSvcKey4{})
	sizeofSvcKey6    = unsafe.Sizeof(fastpathBPFSvcKey6{})
	sizeofSlot4      = unsafe.Sizeof(fastpathBPFSlot4{})
	sizeofSlot6      = unsafe.Sizeof(fastpathBPFSlot6{})
	sizeofSvcVal     = unsafe.Sizeof(fastpathBPFSvcVal{})
	sizeofStat       = unsafe.Sizeof(fastpathBPFStat{})
	sizeofTargetStat = unsafe.Sizeof(fastpathBPFTargetStat{})
)
