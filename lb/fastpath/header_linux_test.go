package fastpath

import (
	"testing"
	"unsafe"
)

// The programs' verdicts, as the tests read them back.
const (
	tcxNext = fastpathBPFTcxVerdictTCX_NEXT // not ours: the next program, then the stack
	tcxPass = fastpathBPFTcxVerdictTCX_PASS // rewritten: on into the stack
	tcxDrop = fastpathBPFTcxVerdictTCX_DROP
)

// The byte-level accessors (putAddr, decode, reverseKey) read and write the
// entries as the generated types lay them out: an address, then its port;
// a flow key's two addresses, then its two ports.
func TestEntryLayouts(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"flow_key4.daddr", unsafe.Offsetof(fastpathBPFFlowKey4{}.Daddr), 4},
		{"flow_key4.sport", unsafe.Offsetof(fastpathBPFFlowKey4{}.Sport), 8},
		{"flow_key4.dport", unsafe.Offsetof(fastpathBPFFlowKey4{}.Dport), 10},
		{"flow_key6.daddr", unsafe.Offsetof(fastpathBPFFlowKey6{}.Daddr), 16},
		{"flow_key6.sport", unsafe.Offsetof(fastpathBPFFlowKey6{}.Sport), 32},
		{"flow_key6.dport", unsafe.Offsetof(fastpathBPFFlowKey6{}.Dport), 34},
		{"flow_val4.port", unsafe.Offsetof(fastpathBPFFlowVal4{}.Port), 4},
		{"flow_val6.port", unsafe.Offsetof(fastpathBPFFlowVal6{}.Port), 16},
		{"svc_key4.port", unsafe.Offsetof(fastpathBPFSvcKey4{}.Port), 4},
		{"svc_key6.port", unsafe.Offsetof(fastpathBPFSvcKey6{}.Port), 16},
		{"slot4.port", unsafe.Offsetof(fastpathBPFSlot4{}.Port), 4},
		{"slot6.port", unsafe.Offsetof(fastpathBPFSlot6{}.Port), 16},
	} {
		if c.got != c.want {
			t.Errorf("%s is at byte %d, the accessors expect %d", c.name, c.got, c.want)
		}
	}
}
