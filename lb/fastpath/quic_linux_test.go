package fastpath

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/l4lb/l4lb/pkg/quiclb"
)

// The QUIC service of the tests: server ID quicID is quicTarget's, and
// every slot of its table is quicHashed, so where a datagram went says how
// it was routed.
var (
	quicVIP    = netip.MustParseAddrPort("127.0.0.44:443")
	quicTarget = netip.MustParseAddrPort("10.44.0.1:4433")
	quicHashed = netip.MustParseAddrPort("10.44.0.2:4433")
)

const quicID = 0x0123456789abcdef

var quicShared struct {
	once sync.Once
	p    *Path
	id   int
	err  error
}

// quicPath is a path with one QUIC service (connection IDs of 16 bytes),
// shared by the tests and the fuzz target.
func quicPath(t *testing.T) (*Path, int) {
	t.Helper()
	quicShared.once.Do(func() {
		p, err := New(Options{MaxFlows: 1 << 16, Services: 1})
		if err == nil {
			quicShared.id, err = p.AddService(quicVIP, time.Minute, false)
		}
		if err == nil {
			err = p.RouteQUIC(quicShared.id, 16, map[uint64]netip.AddrPort{quicID: quicTarget})
		}
		if err == nil {
			err = p.SetTable(quicShared.id, fill(quicHashed))
		}
		quicShared.p, quicShared.err = p, err
	})
	if quicShared.err != nil {
		if os.Geteuid() != 0 && os.Getenv("CI") == "" {
			t.Skipf("needs root for BPF: %v", quicShared.err)
		}
		t.Fatal(quicShared.err)
	}
	return quicShared.p, quicShared.id
}

// quicWant is where the program must send payload's datagram, by pkg/quiclb:
// dropped (an invalid address), to the ID's target, or by the table.
func quicWant(payload []byte) netip.AddrPort {
	p := quiclb.Classify(payload, 16)
	switch {
	case p.Route == quiclb.BadVersion || p.Route == quiclb.Short:
		return netip.AddrPort{}
	case p.Route == quiclb.ByCID && p.ServerID == quicID:
		return quicTarget
	}
	return quicHashed
}

// quicSend runs a new flow's datagram with payload through the program,
// from a client port of its own, and says where it went (invalid: dropped).
func quicSend(t *testing.T, p *Path, port uint16, payload []byte) netip.AddrPort {
	t.Helper()
	client := netip.AddrPortFrom(netip.MustParseAddr("127.9.44.1"), port)
	buf := make([]byte, 42+len(payload)+256)
	in := packet(client, quicVIP, payload)
	r, err := p.ingress.Run(&ebpf.RunOptions{Data: in, DataOut: buf})
	if err != nil {
		t.Fatal(err)
	}
	switch fastpathBPFTcxVerdict(r) {
	case tcxDrop:
		return netip.AddrPort{}
	case tcxPass:
		_, dst := addrs(buf[:len(in)])
		return dst
	}
	t.Fatalf("verdict %d for a datagram to a QUIC service", r)
	return netip.AddrPort{}
}

func quicLong(typ byte, version uint32, dcid []byte) []byte {
	b := []byte{0xc0 | typ<<4}
	b = binary.BigEndian.AppendUint32(b, version)
	b = append(b, byte(len(dcid)))
	b = append(b, dcid...)
	return append(b, 0, 1, 2, 3, 4, 5, 6, 7)
}

// The program routes a QUIC service's new flows as pkg/quiclb says:
// Handshake and short headers by the server ID, Initial and 0-RTT by the
// table, unknown and unroutable IDs by the table, versions other than 1
// and truncated datagrams dropped; and counts each route.
func TestProgramRoutesQUIC(t *testing.T) {
	p, id := quicPath(t)
	cid := quiclb.ConnID(quicID, 16, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	other := quiclb.ConnID(0x42, 16, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	unroutable := append([]byte{7 << 5}, cid[1:]...)
	before, _ := p.Stats(id)
	for i, c := range []struct {
		name    string
		payload []byte
		want    netip.AddrPort
	}{
		{"initial", quicLong(0, 1, cid[:8]), quicHashed},
		{"initial with a server ID", quicLong(0, 1, cid), quicHashed},
		{"0-RTT", quicLong(1, 1, cid), quicHashed},
		{"handshake", quicLong(2, 1, cid), quicTarget},
		{"handshake, unknown ID", quicLong(2, 1, other), quicHashed},
		{"handshake, unroutable", quicLong(2, 1, unroutable), quicHashed},
		{"version 2", quicLong(0, 0x6b3343cf, cid), netip.AddrPort{}},
		{"long, truncated DCID", quicLong(2, 1, cid)[:12], netip.AddrPort{}},
		{"short", append(append([]byte{0x40}, cid...), 9, 9), quicTarget},
		{"short, unknown ID", append(append([]byte{0x40}, other...), 9), quicHashed},
		{"short, unroutable", append(append([]byte{0x40}, unroutable...), 9), quicHashed},
		{"short, truncated", append([]byte{0x40}, cid[:10]...), netip.AddrPort{}},
		{"empty", nil, netip.AddrPort{}},
	} {
		if want := quicWant(c.payload); want != c.want {
			t.Fatalf("%s: pkg/quiclb says %v, the test %v", c.name, want, c.want)
		}
		if got := quicSend(t, p, uint16(20000+i), c.payload); got != c.want {
			t.Errorf("%s: went to %v, want %v", c.name, got, c.want)
		}
	}
	after, _ := p.Stats(id)
	var got [5]uint64
	for i := range got {
		got[i] = after.QUIC[i] - before.QUIC[i]
	}
	// hash, cid, unknown_cid, bad_version, short
	if want := [5]uint64{4, 2, 3, 1, 3}; got != want || after.QUICMigrations-before.QUICMigrations != 1 {
		t.Errorf("routes counted %v, want %v; migrations %d, want 1", got, want, after.QUICMigrations-before.QUICMigrations)
	}
}

// Random QUIC-shaped datagrams go where pkg/quiclb says.
func TestProgramQUICMatchesUserSpace(t *testing.T) {
	p, _ := quicPath(t)
	r := rand.New(rand.NewPCG(3, 9))
	cid := quiclb.ConnID(quicID, 16, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	for i := range 3000 {
		var b []byte
		switch r.IntN(3) {
		case 0:
			b = quicLong(byte(r.IntN(4)), []uint32{1, 1, 1, 2, 0}[r.IntN(5)], cid[:r.IntN(17)])
		case 1:
			b = append([]byte{0x40 | byte(r.IntN(64))}, cid...)
		default:
			b = make([]byte, r.IntN(40))
			for j := range b {
				b[j] = byte(r.Uint32())
			}
		}
		b = b[:r.IntN(len(b)+1)]
		if got, want := quicSend(t, p, uint16(30000+i), b), quicWant(b); got != want {
			t.Fatalf("datagram %x: went to %v, pkg/quiclb says %v", b, got, want)
		}
	}
}

// Whatever a QUIC service's datagram holds, the program sends it where
// pkg/quiclb says, or drops it when that says so.
func FuzzQUICProgram(f *testing.F) {
	cid := quiclb.ConnID(quicID, 16, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	f.Add(quicLong(2, 1, cid), uint16(1))
	f.Add(append([]byte{0x40}, cid...), uint16(2))
	f.Add(quicLong(0, 2, cid), uint16(3))
	f.Fuzz(func(t *testing.T, payload []byte, port uint16) {
		if len(payload) > 1400 {
			return
		}
		p, _ := quicPath(t)
		// A new flow each time: a client port the fuzzer picks, ended after.
		got := quicSend(t, p, port|1, payload)
		if want := quicWant(payload); got != want {
			t.Fatalf("datagram %x: went to %v, pkg/quiclb says %v", payload, got, want)
		}
		if got.IsValid() {
			p.EndFlowsTo(got)
		}
	})
}
