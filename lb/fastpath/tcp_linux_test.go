package fastpath

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/l4lb/l4lb/pkg/flowhash"
	"github.com/l4lb/l4lb/pkg/maglev"
)

// TCP flags, as on the wire.
const (
	fin = 0x01
	syn = 0x02
	rst = 0x04
	psh = 0x08
	ack = 0x10
)

// segment builds an Ethernet frame with IPv4 and TCP (no options), both
// checksums set; segment6 the same over IPv6.
func segment(src, dst netip.AddrPort, flags byte, payload []byte) []byte {
	b := make([]byte, 54+len(payload))
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+20+len(payload)))
	ip[8] = 64
	ip[9] = 6
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], ^csum(0, ip))
	tcpHeader(b[34:], src, dst, flags, payload)
	binary.BigEndian.PutUint16(b[34+16:], ^csum(tcpPseudo(b[26:34], len(b)-34), b[34:]))
	return b
}

func segment6(src, dst netip.AddrPort, flags byte, payload []byte) []byte {
	b := make([]byte, 74+len(payload))
	binary.BigEndian.PutUint16(b[12:], 0x86dd)
	ip := b[14:54]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(20+len(payload)))
	ip[6] = 6
	ip[7] = 64
	s, d := src.Addr().As16(), dst.Addr().As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	tcpHeader(b[54:], src, dst, flags, payload)
	binary.BigEndian.PutUint16(b[54+16:], ^csum(tcpPseudo(b[22:54], len(b)-54), b[54:]))
	return b
}

func tcpHeader(h []byte, src, dst netip.AddrPort, flags byte, payload []byte) {
	binary.BigEndian.PutUint16(h[0:], src.Port())
	binary.BigEndian.PutUint16(h[2:], dst.Port())
	binary.BigEndian.PutUint32(h[4:], 1000)
	h[12] = 5 << 4
	h[13] = flags
	binary.BigEndian.PutUint16(h[14:], 65535)
	copy(h[20:], payload)
}

// tcpPseudo sums the pseudo header: the two addresses, the protocol and the
// segment's length.
func tcpPseudo(addrs []byte, n int) uint32 {
	p := make([]byte, len(addrs)+4)
	copy(p, addrs)
	p[len(addrs)+1] = 6
	binary.BigEndian.PutUint16(p[len(addrs)+2:], uint16(n))
	return uint32(csum(0, p))
}

// tcpOK verifies the checksums of a rewritten IPv4 segment and returns its
// addresses.
func tcpOK(t *testing.T, b []byte) (src, dst netip.AddrPort) {
	t.Helper()
	if c := csum(0, b[14:34]); c != 0xffff {
		t.Fatalf("IP checksum does not verify: %#x", c)
	}
	if c := csum(tcpPseudo(b[26:34], len(b)-34), b[34:]); c != 0xffff {
		t.Fatalf("TCP checksum does not verify: %#x", c)
	}
	return addrs(b)
}

func newTCPPath(t *testing.T, opts Options) *Path {
	t.Helper()
	opts.Protocol = flowhash.ProtoTCP
	return newPath(t, opts)
}

// entries counts a family's entries in the established and the embryonic
// maps.
func entries(t *testing.T, fp *famPath) (established, embryonic int) {
	t.Helper()
	if err := fp.readAll(fp.flows, func(k, v []byte) { established++ }); err != nil {
		t.Fatal(err)
	}
	if err := fp.readAll(fp.syn, func(k, v []byte) { embryonic++ }); err != nil {
		t.Fatal(err)
	}
	return
}

// A SYN picks the slot user space computes for TCP, with valid checksums.
// A segment of no flow that is not a SYN began on another node: it goes to
// the same slot, and its flow is entered as established; a RST of no flow
// goes on to the stack unchanged, as does UDP to a TCP path.
func TestTCPProgramMatchesUserSpaceHash(t *testing.T) {
	p := newTCPPath(t, Options{MaxFlows: 4096, Services: 1})
	vip := netip.MustParseAddrPort("127.0.0.80:80")
	id, _ := p.AddService(vip, time.Minute, false)
	if err := p.SetTable(id, slotTargets()); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 300 {
		client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, byte(r.IntN(256)), byte(r.IntN(256)), byte(1 + r.IntN(254))}), uint16(1024+r.IntN(60000)))
		ret, out := run(t, p, segment(client, vip, syn, nil))
		if ret != tcxPass {
			t.Fatalf("SYN %d: returned %d", i, ret)
		}
		src, dst := tcpOK(t, out)
		want := flowhash.Flow(flowhash.ProtoTCP, client, vip) % maglev.DefaultSize
		if src != client || slotOf(dst.Addr()) != int(want) || dst.Port() != 53 {
			t.Fatalf("SYN from %s went to %s, user space says slot %d", client, dst, want)
		}
	}
	for i, flags := range []byte{ack, ack | fin, syn | ack, ack | psh} {
		moved := netip.MustParseAddrPort(fmt.Sprintf("127.0.0.9:%d", 900+i))
		ret, out := run(t, p, segment(moved, vip, flags, []byte("x")))
		if ret != tcxPass {
			t.Fatalf("a segment (flags %#x) of a flow begun elsewhere: returned %d", flags, ret)
		}
		_, dst := tcpOK(t, out)
		if want := flowhash.Flow(flowhash.ProtoTCP, moved, vip) % maglev.DefaultSize; slotOf(dst.Addr()) != int(want) {
			t.Fatalf("a segment (flags %#x) of a flow begun elsewhere went to slot %d, user space says %d", flags, slotOf(dst.Addr()), want)
		}
	}
	stray := netip.MustParseAddrPort("127.0.0.9:999")
	in := segment(stray, vip, rst, []byte("x"))
	if ret, out := run(t, p, in); ret != tcxNext || string(out) != string(in) {
		t.Fatalf("a RST of no flow: returned %d", ret)
	}
	if ret, _ := run(t, p, packet(stray, vip, nil)); ret != tcxNext {
		t.Fatalf("a UDP datagram on the TCP path: returned %d", ret)
	}
	st, _ := p.Stats(id)
	if st.NewFlows != 304 || st.PickedUp != 4 || st.Established != 0 {
		t.Fatalf("stats %+v, want 304 new flows, 4 picked up mid-connection, no handshake completed", st)
	}
	if est, emb := entries(t, p.fams[0]); est != 8 || emb != 600 {
		t.Fatalf("%d established and %d embryonic entries; want 8 and 600", est, emb)
	}
}

// A connection's life: SYN, SYN-ACK rewritten back to the listener, the
// client's ACK moves the flow to the established map, data both ways keeps
// its target after the table changes, FIN both ways closes it, and it
// lingers only briefly. A SYN on the closed tuple starts a new flow.
func TestTCPFlowLifecycle(t *testing.T) {
	p := newTCPPath(t, Options{MaxFlows: 64, Services: 1, TCPLinger: 100 * time.Millisecond})
	vip := netip.MustParseAddrPort("127.0.0.80:80")
	a := netip.MustParseAddrPort("127.0.0.1:8080")
	b := netip.MustParseAddrPort("127.0.0.2:8080")
	id, _ := p.AddService(vip, time.Minute, false)
	if err := p.SetTable(id, fill(a)); err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddrPort("127.9.9.9:40000")
	in := func(flags byte, data string) netip.AddrPort {
		t.Helper()
		ret, out := run(t, p, segment(client, vip, flags, []byte(data)))
		if ret != tcxPass {
			t.Fatalf("client segment %#x: returned %d", flags, ret)
		}
		_, dst := tcpOK(t, out)
		return dst
	}
	target := a
	out := func(flags byte, data string) {
		t.Helper()
		ret, o := runOut(t, p, segment(target, client, flags, []byte(data)))
		if ret != tcxPass {
			t.Fatalf("target segment %#x: returned %d", flags, ret)
		}
		if src, dst := tcpOK(t, o); src != vip || dst != client {
			t.Fatalf("reply %s -> %s, want %s -> %s", src, dst, vip, client)
		}
	}
	if dst := in(syn, ""); dst != a {
		t.Fatalf("SYN went to %s", dst)
	}
	out(syn|ack, "")
	in(ack, "")
	if est, emb := entries(t, p.fams[0]); est != 2 || emb != 0 {
		t.Fatalf("after the handshake: %d established, %d embryonic entries", est, emb)
	}
	if err := p.SetTable(id, fill(b)); err != nil {
		t.Fatal(err)
	}
	if dst := in(ack, "GET / HTTP/1.1\r\n\r\n"); dst != a {
		t.Fatalf("an established flow moved to %s when the table changed", dst)
	}
	out(ack, "HTTP/1.1 200 OK\r\n\r\n")
	in(fin|ack, "")
	out(fin|ack, "")
	in(ack, "") // the last ACK still reaches the target
	st, _ := p.Stats(id)
	if st.NewFlows != 1 || st.Established != 1 || st.PacketsIn != 5 || st.PacketsOut != 3 || st.BytesIn != 18 {
		t.Fatalf("stats %+v", st)
	}
	closed := 0
	p.fams[0].readAll(p.fams[0].flows, func(k, v []byte) {
		if p.fams[0].svc(v)&closedFlag != 0 {
			closed++
		}
	})
	if closed != 2 {
		t.Fatalf("%d entries marked closed after FIN both ways, want 2", closed)
	}
	time.Sleep(200 * time.Millisecond)
	if n, err := p.Sweep(nil); err != nil || n != 1 {
		t.Fatalf("the sweep after the linger removed %d flows (%v), want 1", n, err)
	}
	if est, emb := entries(t, p.fams[0]); est != 0 || emb != 0 {
		t.Fatalf("after the sweep: %d established, %d embryonic entries", est, emb)
	}
	// The same tuple again, to the table's target now; reset, then a SYN
	// on the closed tuple before any sweep: a new flow.
	target = b
	if dst := in(syn, ""); dst != b {
		t.Fatalf("a SYN after the flow was swept went to %s, want the table's %s", dst, b)
	}
	out(syn|ack, "")
	in(ack, "")
	in(rst, "")
	if err := p.SetTable(id, fill(a)); err != nil {
		t.Fatal(err)
	}
	if dst := in(syn, ""); dst != a {
		t.Fatalf("a SYN on a reset flow's tuple went to %s, want the table's %s", dst, a)
	}
	if st, _ := p.Stats(id); st.NewFlows != 3 || st.ClientResets != 1 {
		t.Fatalf("stats %+v; want 3 new flows, 1 client reset", st)
	}
}

// Resets from a target are counted for it: one answering a SYN apart from
// one ending an established flow.
func TestTCPTargetResets(t *testing.T) {
	p := newTCPPath(t, Options{MaxFlows: 64, Services: 1})
	vip := netip.MustParseAddrPort("127.0.0.80:80")
	a := netip.MustParseAddrPort("127.0.0.1:8080")
	id, _ := p.AddService(vip, time.Minute, false)
	if err := p.SetTable(id, fill(a)); err != nil {
		t.Fatal(err)
	}
	if err := p.WatchTargets([]netip.AddrPort{a, netip.MustParseAddrPort("127.0.0.2:8080")}); err != nil {
		t.Fatal(err)
	}
	c1 := netip.MustParseAddrPort("127.9.9.9:40001")
	c2 := netip.MustParseAddrPort("127.9.9.9:40002")
	run(t, p, segment(c1, vip, syn, nil))
	if ret, _ := runOut(t, p, segment(a, c1, rst|ack, nil)); ret != tcxPass {
		t.Fatalf("the target's RST was not passed back: %d", ret)
	}
	run(t, p, segment(c2, vip, syn, nil))
	runOut(t, p, segment(a, c2, syn|ack, nil))
	run(t, p, segment(c2, vip, ack, nil))
	runOut(t, p, segment(a, c2, rst, nil))
	runOut(t, p, segment(a, c2, rst, nil)) // a second RST of a closed flow counts once
	got, err := p.TargetResets()
	if err != nil {
		t.Fatal(err)
	}
	if got[a] != (Resets{SYN: 1, Other: 1}) || len(got) != 2 {
		t.Fatalf("target resets %v", got)
	}
	if st, _ := p.Stats(id); st.TargetResets != 2 {
		t.Fatalf("stats %+v; want 2 target resets", st)
	}
	if err := p.WatchTargets([]netip.AddrPort{a}); err != nil {
		t.Fatal(err)
	}
	if got, _ := p.TargetResets(); len(got) != 1 || got[a].SYN != 1 {
		t.Fatalf("after unwatching one target: %v", got)
	}
}

// A SYN flood fills and evicts from the embryonic map only: established
// flows keep their targets, and incomplete handshakes time out.
func TestTCPSynFloodKeepsEstablished(t *testing.T) {
	p := newTCPPath(t, Options{MaxFlows: 64, Services: 1, TCPSynTimeout: 100 * time.Millisecond})
	vip := netip.MustParseAddrPort("127.0.0.80:80")
	a := netip.MustParseAddrPort("127.0.0.1:8080")
	b := netip.MustParseAddrPort("127.0.0.2:8080")
	id, _ := p.AddService(vip, time.Minute, false)
	if err := p.SetTable(id, fill(a)); err != nil {
		t.Fatal(err)
	}
	client := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}), 5000)
	}
	for i := range 20 {
		run(t, p, segment(client(i), vip, syn, nil))
		runOut(t, p, segment(a, client(i), syn|ack, nil))
		run(t, p, segment(client(i), vip, ack, nil))
	}
	if err := p.SetTable(id, fill(b)); err != nil {
		t.Fatal(err)
	}
	for i := range 2000 {
		if ret, _ := run(t, p, segment(client(1000+i), vip, syn, nil)); ret != tcxPass {
			t.Fatalf("flood SYN %d refused (%d) instead of evicting", i, ret)
		}
	}
	for i := range 20 {
		ret, out := run(t, p, segment(client(i), vip, ack, []byte("data")))
		if ret != tcxPass {
			t.Fatalf("established flow %d lost to the flood: %d", i, ret)
		}
		if _, dst := tcpOK(t, out); dst != a {
			t.Fatalf("established flow %d moved to %s", i, dst)
		}
	}
	live := 0
	if _, err := p.Sweep(func(Flow) { live++ }); err != nil {
		t.Fatal(err)
	}
	if ev := p.Evicted(id, live); ev < 1800 {
		t.Fatalf("Evicted = %d of 2000 flood SYNs in a map for 64 flows", ev)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := p.Sweep(nil); err != nil {
		t.Fatal(err)
	}
	if est, emb := entries(t, p.fams[0]); est != 40 || emb != 0 {
		t.Fatalf("after the SYN timeout: %d established, %d embryonic entries; want 40 and 0", est, emb)
	}
}

// IPv6 takes the same path, and ending a target's flows removes them from
// both maps; a later segment is picked up as any node would.
func TestTCPProgramIPv6AndEndFlows(t *testing.T) {
	p := newTCPPath(t, Options{MaxFlows: 64, Services6: 1})
	vip := netip.MustParseAddrPort("[fd00::80]:80")
	a := netip.MustParseAddrPort("[fd00::1]:8080")
	id, err := p.AddService(vip, time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SetTable(id, fill(a)); err != nil {
		t.Fatal(err)
	}
	c1 := netip.MustParseAddrPort("[fd00::9]:40001")
	c2 := netip.MustParseAddrPort("[fd00::9]:40002")
	ret, out := run(t, p, segment6(c1, vip, syn, nil))
	if ret != tcxPass {
		t.Fatalf("SYN: %d", ret)
	}
	if _, dst := addrs6(out); dst != a {
		t.Fatalf("SYN went to %s", dst)
	}
	if c := csum(tcpPseudo(out[22:54], len(out)-54), out[54:]); c != 0xffff {
		t.Fatalf("TCP checksum does not verify: %#x", c)
	}
	ret, out = runOut(t, p, segment6(a, c1, syn|ack, nil))
	if src, _ := addrs6(out); ret != tcxPass || src != vip {
		t.Fatalf("SYN-ACK: %d from %s", ret, src)
	}
	run(t, p, segment6(c1, vip, ack, nil))
	run(t, p, segment6(c2, vip, syn, nil))
	if est, emb := entries(t, p.fams[1]); est != 2 || emb != 2 {
		t.Fatalf("%d established and %d embryonic entries; want 2 and 2", est, emb)
	}
	if n, err := p.EndFlowsTo(a); err != nil || n != 2 {
		t.Fatalf("EndFlowsTo ended %d (%v), want 2", n, err)
	}
	if est, emb := entries(t, p.fams[1]); est != 0 || emb != 0 {
		t.Fatalf("after EndFlowsTo: %d established and %d embryonic entries", est, emb)
	}
	// A segment after its flow ended goes where the table says now (here,
	// still a), as any node would send it; a target that no longer knows
	// the connection answers with a reset.
	ret, out = run(t, p, segment6(c1, vip, ack, []byte("late")))
	if _, dst := addrs6(out); ret != tcxPass || dst != a {
		t.Fatalf("a segment of an ended flow: %d to %s, want it sent to %s", ret, dst, a)
	}
}

// FuzzTCPProgram feeds the TCP programs arbitrary frames: a frame passed on
// unchanged is byte-identical, and a rewritten one keeps valid checksums.
func FuzzTCPProgram(f *testing.F) {
	vip := netip.MustParseAddrPort("127.0.0.80:80")
	client := netip.MustParseAddrPort("127.9.9.9:40000")
	f.Add(segment(client, vip, syn, nil), byte(0))
	f.Add(segment(client, vip, ack, []byte("data")), byte(1))
	f.Add(segment(client, vip, syn, nil)[:50], byte(2))
	f.Add(segment6(netip.MustParseAddrPort("[fd00::9]:1"), netip.MustParseAddrPort("[fd00::80]:80"), syn, nil), byte(3))
	p := (*Path)(nil)
	f.Fuzz(func(t *testing.T, frame []byte, flags byte) {
		if len(frame) < 14 {
			return
		}
		if p == nil {
			p = newTCPPath(t, Options{MaxFlows: 1024, Services: 1})
			id, _ := p.AddService(vip, time.Minute, false)
			if err := p.SetTable(id, slotTargets()); err != nil {
				t.Fatal(err)
			}
		}
		in := frame
		if flags&0x80 != 0 && len(frame) >= 54 {
			in = segment(client, vip, flags&0x17, frame[54:])
		}
		for _, prog := range []*ebpf.Program{p.ingress, p.egress} {
			buf := make([]byte, len(in)+256)
			r, err := prog.Run(&ebpf.RunOptions{Data: in, DataOut: buf})
			if err != nil {
				continue
			}
			out := buf[:len(in)]
			switch fastpathBPFTcxVerdict(r) {
			case tcxNext, tcxDrop:
				if string(out) != string(in) {
					t.Fatalf("returned %d but changed the frame", int32(r))
				}
			case tcxPass:
				if binary.BigEndian.Uint16(in[12:]) == 0x0800 && csum(0, in[14:34]) == 0xffff && in[14] == 0x45 {
					if c := csum(0, out[14:34]); c != 0xffff {
						t.Fatalf("a valid IP checksum became %#x", c)
					}
					n := int(binary.BigEndian.Uint16(in[16:])) + 14
					if n == len(in) && csum(tcpPseudo(in[26:34], len(in)-34), in[34:]) == 0xffff {
						if c := csum(tcpPseudo(out[26:34], len(out)-34), out[34:]); c != 0xffff {
							t.Fatalf("a valid TCP checksum became invalid: %#x", c)
						}
					}
				}
			default:
				t.Fatalf("returned %d", int32(r))
			}
		}
	})
}

// BenchmarkProgramCost runs the TCP ingress program in the kernel
// (BPF_PROG_TEST_RUN, many repeats per call) on a segment that is not for
// it, and on one to a listener's port at another address (which passes the
// port filter and misses the flow maps), and reports the kernel's time per
// run, the test harness's own included. (A rewritten segment cannot be
// timed this way: the repeats see it rewritten.)
func BenchmarkProgramCost(b *testing.B) {
	p, err := New(Options{Protocol: flowhash.ProtoTCP, MaxFlows: 4096, Services: 1})
	if err != nil {
		b.Skip(err)
	}
	defer p.Close()
	vip := netip.MustParseAddrPort("127.0.0.80:80")
	id, _ := p.AddService(vip, time.Minute, false)
	if err := p.SetTable(id, fill(netip.MustParseAddrPort("127.0.0.1:8080"))); err != nil {
		b.Fatal(err)
	}
	client := netip.MustParseAddrPort("127.9.9.9:40000")
	for _, c := range []struct {
		name string
		pkt  []byte
	}{
		{"unrelated", segment(netip.MustParseAddrPort("127.0.0.1:5000"), netip.MustParseAddrPort("127.0.0.1:6000"), ack, []byte("x"))},
		{"listener-port-other-address", segment(client, netip.MustParseAddrPort("127.0.0.1:80"), ack, []byte("x"))},
	} {
		b.Run(c.name, func(b *testing.B) {
			const repeat = 100000
			var total time.Duration
			for b.Loop() {
				_, d, err := p.ingress.Benchmark(c.pkt, repeat, nil)
				if err != nil {
					b.Fatal(err)
				}
				total += d
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/packet")
		})
	}
}
