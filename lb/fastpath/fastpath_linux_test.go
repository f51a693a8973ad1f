package fastpath

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/l4lb/l4lb/pkg/flowhash"
	"github.com/l4lb/l4lb/pkg/maglev"
)

// newPath loads the program, or skips where the kernel cannot run it (not
// root). In CI, which runs as root on a BPF-capable kernel, a load failure
// fails the test.
func newPath(t *testing.T, opts Options) *Path {
	t.Helper()
	p, err := New(opts)
	if err != nil {
		if os.Geteuid() != 0 && os.Getenv("CI") == "" {
			t.Skipf("needs root for BPF: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// slotTargets gives slot i the target 10.x.y.z:i%60000+1, so the slot the
// program chose can be read off the rewritten packet.
func slotTargets() []netip.AddrPort {
	s := make([]netip.AddrPort, maglev.DefaultSize)
	for i := range s {
		s[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 53)
	}
	return s
}

// fill is a table whose every slot names t.
func fill(t netip.AddrPort) []netip.AddrPort {
	s := make([]netip.AddrPort, maglev.DefaultSize)
	for i := range s {
		s[i] = t
	}
	return s
}

func slotOf(a netip.Addr) int {
	b := a.As4()
	return int(b[1])<<16 | int(b[2])<<8 | int(b[3])
}

// packet builds an Ethernet frame with IPv4 and UDP, both checksums set.
func packet(src, dst netip.AddrPort, payload []byte) []byte {
	b := make([]byte, 42+len(payload))
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	ip[8] = 64
	ip[9] = 17
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], ^csum(0, ip))
	udp := b[34:]
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(udp[8:], payload)
	c := ^csum(pseudo(b), udp)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], c)
	return b
}

func pseudo(b []byte) uint32 {
	var p [12]byte
	copy(p[0:8], b[26:34])
	p[9] = 17
	binary.BigEndian.PutUint16(p[10:], uint16(len(b)-34))
	return uint32(csum(0, p[:]))
}

func csum(sum uint32, b []byte) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

// checksumsOK verifies both checksums of an output frame.
func checksumsOK(t *testing.T, b []byte) {
	t.Helper()
	if c := csum(0, b[14:34]); c != 0xffff {
		t.Fatalf("IP checksum does not verify: %#x", c)
	}
	if binary.BigEndian.Uint16(b[40:]) == 0 {
		return // no UDP checksum
	}
	if c := csum(pseudo(b), b[34:]); c != 0xffff {
		t.Fatalf("UDP checksum does not verify: %#x", c)
	}
}

func addrs(b []byte) (src, dst netip.AddrPort) {
	src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[26:30])), binary.BigEndian.Uint16(b[34:]))
	dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[30:34])), binary.BigEndian.Uint16(b[36:]))
	return
}

// run runs the ingress program on a frame; runOut the egress one.
func run(t *testing.T, p *Path, pkt []byte) (fastpathBPFTcxVerdict, []byte) {
	t.Helper()
	return runProg(t, p.ingress, pkt)
}

func runOut(t *testing.T, p *Path, pkt []byte) (fastpathBPFTcxVerdict, []byte) {
	t.Helper()
	return runProg(t, p.egress, pkt)
}

func runProg(t *testing.T, prog *ebpf.Program, pkt []byte) (fastpathBPFTcxVerdict, []byte) {
	t.Helper()
	out := make([]byte, len(pkt)+256)
	ret, err := prog.Run(&ebpf.RunOptions{Data: pkt, DataOut: out})
	if err != nil {
		t.Fatal(err)
	}
	return fastpathBPFTcxVerdict(ret), out[:len(pkt)]
}

// The program picks the slot user space computes, for flow and source
// hashing, rewrites the destination with valid checksums, and pins the flow.
func TestProgramMatchesUserSpaceHash(t *testing.T) {
	p := newPath(t, Options{MaxFlows: 4096, Services: 2})
	vip := netip.MustParseAddrPort("127.0.0.53:53")
	sticky := netip.MustParseAddrPort("127.0.0.54:53")
	for _, v := range []netip.AddrPort{vip, sticky} {
		id, err := p.AddService(v, time.Minute, v == sticky)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.SetTable(id, slotTargets()); err != nil {
			t.Fatal(err)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, byte(r.IntN(256)), byte(r.IntN(256)), byte(1 + r.IntN(254))}), uint16(1024+r.IntN(60000)))
		to, want := vip, flowhash.Flow(flowhash.ProtoUDP, client, vip)
		if i%2 == 1 {
			to, want = sticky, flowhash.Source(client.Addr())
		}
		payload := make([]byte, r.IntN(64))
		ret, out := run(t, p, packet(client, to, payload))
		if ret != tcxPass {
			t.Fatalf("flow %d: returned %d", i, ret)
		}
		src, dst := addrs(out)
		if src != client {
			t.Fatalf("source changed to %s", src)
		}
		if got := slotOf(dst.Addr()); got != int(want%maglev.DefaultSize) || dst.Port() != 53 {
			t.Fatalf("flow %d from %s: slot %d, user space says %d", i, client, got, want%maglev.DefaultSize)
		}
		checksumsOK(t, out)
	}
	st, _ := p.Stats(0)
	if st.NewFlows != 250 || st.PacketsIn != 250 {
		t.Fatalf("stats %+v, want 250 new flows and datagrams", st)
	}
}

// A flow stays on its target when the table changes; replies get the
// listener's address as source; a zero UDP checksum stays zero.
func TestProgramPinsAndReverses(t *testing.T) {
	p := newPath(t, Options{MaxFlows: 64, Services: 1})
	vip := netip.MustParseAddrPort("127.0.0.53:53")
	id, _ := p.AddService(vip, time.Minute, false)
	a := netip.MustParseAddrPort("127.0.0.1:5300")
	b := netip.MustParseAddrPort("127.0.0.2:5300")
	if err := p.SetTable(id, fill(a)); err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddrPort("127.9.9.9:40000")
	_, out := run(t, p, packet(client, vip, []byte("query")))
	if _, dst := addrs(out); dst != a {
		t.Fatalf("first datagram went to %s, want %s", dst, a)
	}
	if err := p.SetTable(id, fill(b)); err != nil {
		t.Fatal(err)
	}
	_, out = run(t, p, packet(client, vip, []byte("again")))
	if _, dst := addrs(out); dst != a {
		t.Fatalf("pinned flow moved to %s", dst)
	}
	other := netip.MustParseAddrPort("127.9.9.9:40001")
	_, out = run(t, p, packet(other, vip, []byte("new")))
	if _, dst := addrs(out); dst != b {
		t.Fatalf("new flow went to %s, want %s", dst, b)
	}

	reply := packet(a, client, []byte("answer"))
	binary.BigEndian.PutUint16(reply[40:], 0) // no checksum
	// Replies are rewritten on egress, after routing, and only there; a
	// client's datagram only on ingress.
	if ret, out := run(t, p, reply); ret != tcxNext || string(out) != string(reply) {
		t.Fatalf("ingress touched a reply: %d", ret)
	}
	if q := packet(client, vip, []byte("again")); true {
		if ret, out := runOut(t, p, q); ret != tcxNext || string(out) != string(q) {
			t.Fatalf("egress touched a client's datagram: %d", ret)
		}
	}
	ret, out := runOut(t, p, reply)
	src, dst := addrs(out)
	if ret != tcxPass || src != vip || dst != client {
		t.Fatalf("reply: %d %s → %s, want from %s", ret, src, dst, vip)
	}
	if binary.BigEndian.Uint16(out[40:]) != 0 {
		t.Fatal("a zero UDP checksum was filled in")
	}
	checksumsOK(t, out)

	// Not ours: other ports, other protocols, fragments pass untouched.
	for name, pkt := range map[string][]byte{
		"other port": packet(client, netip.MustParseAddrPort("127.0.0.53:54"), nil),
		"fragment": func() []byte {
			b := packet(client, vip, nil)
			b[20] |= 0x20
			return b
		}(),
		"tcp": func() []byte {
			b := packet(client, vip, nil)
			b[23] = 6
			return b
		}(),
		"short": packet(client, vip, nil)[:40],
	} {
		if ret, out := run(t, p, pkt); ret != tcxNext || string(out) != string(pkt) {
			t.Fatalf("%s: returned %d, changed %v", name, ret, string(out) != string(pkt))
		}
	}
	st, _ := p.Stats(id)
	if st.NewFlows != 2 || st.PacketsIn != 3 || st.PacketsOut != 1 || st.BytesIn != 5+5+3 || st.BytesOut != 6 {
		t.Fatalf("stats %+v", st)
	}

	// Ending the flows to a: the client's next datagram is a new flow, on
	// today's table (b), and a's late reply is no longer rewritten.
	if n, err := p.EndFlowsTo(a); n != 1 || err != nil {
		t.Fatalf("ended %d flows (%v), want 1", n, err)
	}
	_, out = run(t, p, packet(client, vip, []byte("after")))
	if _, dst := addrs(out); dst != b {
		t.Fatalf("after its flow ended, the client went to %s, want %s", dst, b)
	}
	if ret, _ := runOut(t, p, reply); ret != tcxNext {
		t.Fatal("a reply of an ended flow was rewritten")
	}
}

// A full flow map makes room by evicting its least recently used flows, so
// a flood of new sources cannot lock a new client out; the most recent flows
// stay pinned, and the evictions can be told from the counters. Sweeping
// frees idle flows.
func TestProgramBoundAndSweep(t *testing.T) {
	p := newPath(t, Options{MaxFlows: 50, Services: 1})
	vip := netip.MustParseAddrPort("127.0.0.53:53")
	id, _ := p.AddService(vip, 200*time.Millisecond, false)
	if err := p.SetTable(id, slotTargets()); err != nil {
		t.Fatal(err)
	}
	client := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}), 5000)
	}
	for i := range 200 {
		if ret, _ := run(t, p, packet(client(i), vip, nil)); ret != tcxPass {
			t.Fatalf("new source %d was refused (%d) by a full map instead of evicting", i, ret)
		}
	}
	st, _ := p.Stats(id)
	if st.NewFlows != 200 || st.RefusedFull != 0 {
		t.Fatalf("stats %+v; want 200 new flows, none refused", st)
	}
	live := 0
	if _, err := p.Sweep(func(Flow) { live++ }); err != nil {
		t.Fatal(err)
	}
	if live > 50 || live == 0 {
		t.Fatalf("%d live flows in a map bounded at 50", live)
	}
	if ev := p.Evicted(id, live); ev < 150 {
		t.Fatalf("Evicted = %d, want at least 150 of 200 flows in a map for 50", ev)
	}
	// The newest flow kept its entries: its reply is rewritten.
	reply := packet(netip.AddrPortFrom(slotTargets()[flowhash.Flow(flowhash.ProtoUDP, client(199), vip)%maglev.DefaultSize].Addr(), 53), client(199), nil)
	if ret, out := runOut(t, p, reply); ret != tcxPass {
		t.Fatal("the newest flow's reply was not rewritten")
	} else if src, _ := addrs(out); src != vip {
		t.Fatalf("reply source %v, want %v", src, vip)
	}
	time.Sleep(300 * time.Millisecond)
	expired, err := p.Sweep(nil)
	if err != nil || expired != live {
		t.Fatalf("expired %d (%v), want %d", expired, err, live)
	}
	left := 0
	if err := p.fams[0].readAll(p.fams[0].flows, func(k, v []byte) { left++ }); err != nil || left != 0 {
		t.Fatalf("%d entries left after the sweep (%v): orphaned halves of evicted flows stay", left, err)
	}
	if ret, _ := run(t, p, packet(client(1000), vip, nil)); ret != tcxPass {
		t.Fatal("no room after the sweep")
	}
}

func TestNoTarget(t *testing.T) {
	p := newPath(t, Options{MaxFlows: 8, Services: 1})
	vip := netip.MustParseAddrPort("127.0.0.53:53")
	id, _ := p.AddService(vip, time.Minute, false)
	if err := p.SetTable(id, nil); err != nil {
		t.Fatal(err)
	}
	if ret, _ := run(t, p, packet(netip.MustParseAddrPort("127.0.0.9:9"), vip, nil)); ret != tcxDrop {
		t.Fatalf("returned %d with no target", ret)
	}
	if st, _ := p.Stats(id); st.RefusedNoTarget != 1 {
		t.Fatalf("stats %+v", st)
	}
	if _, err := p.AddService(netip.MustParseAddrPort("[::1]:53"), time.Minute, false); err == nil {
		t.Fatal("an IPv6 service was accepted by a path sized for IPv4 only")
	}
	if err := p.SetTable(id, make([]netip.AddrPort, 3)); err == nil {
		t.Fatal("a short table was accepted")
	}
}

// FuzzProgram feeds the program arbitrary frames: whatever it returns, a
// frame it passes on unchanged is byte-identical, and a frame it rewrites
// still has a valid IP checksum and a valid (or absent) UDP checksum.
func FuzzProgram(f *testing.F) {
	vip := netip.MustParseAddrPort("127.0.0.53:53")
	client := netip.MustParseAddrPort("127.9.9.9:40000")
	f.Add(packet(client, vip, []byte("query")), false)
	f.Add(packet(client, vip, nil)[:41], false)
	f.Add(packet(netip.MustParseAddrPort("10.0.0.1:53"), client, []byte("reply")), true)
	f.Add(packet6(netip.MustParseAddrPort("[fd00::9]:40000"), netip.MustParseAddrPort("[fd00::53]:53"), []byte("query")), false)
	f.Fuzz(func(t *testing.T, frame []byte, keepHeader bool) {
		if len(frame) < 14 {
			return // the kernel's test run wants an Ethernet header
		}
		p := fuzzPath(t)
		in := frame
		if keepHeader && len(frame) >= 42 {
			// Keep a well-formed header and fuzz the rest, so the rewrite
			// paths are reached too.
			in = packet(client, vip, frame[42:])
			if frame[0]&1 == 1 {
				in = packet6(netip.MustParseAddrPort("[fd00::9]:40000"), netip.MustParseAddrPort("[fd00::53]:53"), frame[42:])
			}
		}
		for _, prog := range []*ebpf.Program{p.ingress, p.egress} {
			checkFrame(t, prog, in)
		}
	})
}

// checkFrame runs one program on a frame and checks what it did.
func checkFrame(t *testing.T, prog *ebpf.Program, in []byte) {
	t.Helper()
	buf := make([]byte, len(in)+256)
	r, err := prog.Run(&ebpf.RunOptions{Data: in, DataOut: buf})
	if err != nil {
		return // the kernel's test harness refused the frame (a truncated IP header, say)
	}
	ret, out := fastpathBPFTcxVerdict(r), buf[:len(in)]
	switch ret {
	case tcxNext, tcxDrop:
		if string(out) != string(in) {
			t.Fatalf("returned %d but changed the frame", ret)
		}
	case tcxPass:
		if binary.BigEndian.Uint16(in[12:]) == 0x86dd {
			if csum(pseudo6(in), in[54:]) == 0xffff {
				if c := csum(pseudo6(out), out[54:]); c != 0xffff {
					t.Fatalf("a valid UDP checksum became invalid: %#x", c)
				}
			}
			return
		}
		if c := csum(0, out[14:34]); c != 0xffff && csum(0, in[14:34]) == 0xffff {
			t.Fatalf("a valid IP checksum became %#x", c)
		}
		if binary.BigEndian.Uint16(in[40:]) != 0 && csum(pseudo(in), in[34:]) == 0xffff {
			if c := csum(pseudo(out), out[34:]); c != 0xffff {
				t.Fatalf("a valid UDP checksum became invalid: %#x", c)
			}
		}
	default:
		t.Fatalf("returned %d", ret)
	}
}

var shared struct {
	p   *Path
	err error
}

// fuzzPath is one Path for the whole fuzz run, serving vip with a table of
// slot targets.
func fuzzPath(t *testing.T) *Path {
	if shared.p == nil && shared.err == nil {
		shared.p, shared.err = New(Options{MaxFlows: 1024, Services: 1, Services6: 1})
		if shared.err == nil {
			id, _ := shared.p.AddService(netip.MustParseAddrPort("127.0.0.53:53"), time.Minute, false)
			shared.err = shared.p.SetTable(id, slotTargets())
		}
		if shared.err == nil {
			id, _ := shared.p.AddService(netip.MustParseAddrPort("[fd00::53]:53"), time.Minute, false)
			slots := make([]netip.AddrPort, maglev.DefaultSize)
			for i := range slots {
				slots[i] = netip.MustParseAddrPort("[fd00::1]:5353")
			}
			shared.err = shared.p.SetTable(id, slots)
		}
	}
	if shared.err != nil {
		if os.Geteuid() != 0 && os.Getenv("CI") == "" {
			t.Skipf("needs root for BPF: %v", shared.err)
		}
		t.Fatal(shared.err)
	}
	return shared.p
}

// A bound above a million flows is not preallocated, so it loads and holds
// memory only for the flows there are.
func TestLargeBoundLoads(t *testing.T) {
	p := newPath(t, Options{MaxFlows: 1 << 21, Services: 1})
	vip := netip.MustParseAddrPort("127.0.0.53:53")
	id, _ := p.AddService(vip, time.Minute, false)
	if err := p.SetTable(id, slotTargets()); err != nil {
		t.Fatal(err)
	}
	if ret, _ := run(t, p, packet(netip.MustParseAddrPort("127.0.0.9:9"), vip, nil)); ret != tcxPass {
		t.Fatalf("returned %d", ret)
	}
}

// packet6 builds an Ethernet frame with IPv6 and UDP, checksum set.
func packet6(src, dst netip.AddrPort, payload []byte) []byte {
	b := make([]byte, 62+len(payload))
	binary.BigEndian.PutUint16(b[12:], 0x86dd)
	ip := b[14:54]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(8+len(payload)))
	ip[6], ip[7] = 17, 64
	s, d := src.Addr().As16(), dst.Addr().As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	udp := b[54:]
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(udp[8:], payload)
	c := ^csum(pseudo6(b), udp)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], c)
	return b
}

func pseudo6(b []byte) uint32 {
	var p [40]byte
	copy(p[0:32], b[22:54])
	binary.BigEndian.PutUint32(p[32:], uint32(len(b)-54))
	p[39] = 17
	return uint32(csum(0, p[:]))
}

func addrs6(b []byte) (src, dst netip.AddrPort) {
	src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[22:38])), binary.BigEndian.Uint16(b[54:]))
	dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[38:54])), binary.BigEndian.Uint16(b[56:]))
	return
}

// IPv6 is served like IPv4: the slot user space computes, a valid UDP
// checksum, pinning, replies rewritten on egress, and IPv4 services beside.
func TestProgramIPv6(t *testing.T) {
	p := newPath(t, Options{MaxFlows: 1024, Services: 1, Services6: 2})
	vip := netip.MustParseAddrPort("[fd00::53]:53")
	sticky := netip.MustParseAddrPort("[fd00::54]:53")
	slots := make([]netip.AddrPort, maglev.DefaultSize)
	for i := range slots {
		slots[i] = netip.AddrPortFrom(netip.AddrFrom16([16]byte{0: 0xfd, 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)}), 5353)
	}
	for _, v := range []netip.AddrPort{vip, sticky} {
		id, err := p.AddService(v, time.Minute, v == sticky)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.SetTable(id, slots); err != nil {
			t.Fatal(err)
		}
	}
	r := rand.New(rand.NewPCG(3, 4))
	var client netip.AddrPort
	var target netip.AddrPort
	for i := range 200 {
		var a [16]byte
		a[0] = 0xfd
		for j := 1; j < 16; j++ {
			a[j] = byte(r.IntN(256))
		}
		client = netip.AddrPortFrom(netip.AddrFrom16(a), uint16(1024+r.IntN(60000)))
		to, want := vip, flowhash.Flow(flowhash.ProtoUDP, client, vip)
		if i%2 == 1 {
			to, want = sticky, flowhash.Source(client.Addr())
		}
		ret, out := run(t, p, packet6(client, to, make([]byte, r.IntN(64))))
		if ret != tcxPass {
			t.Fatalf("flow %d: returned %d", i, ret)
		}
		src, dst := addrs6(out)
		b := dst.Addr().As16()
		if got := int(b[13])<<16 | int(b[14])<<8 | int(b[15]); src != client || got != int(want%maglev.DefaultSize) || dst.Port() != 5353 {
			t.Fatalf("flow %d from %s: %s → %s, slot %d; user space says slot %d", i, client, src, dst, got, want%maglev.DefaultSize)
		}
		if c := csum(pseudo6(out), out[54:]); c != 0xffff {
			t.Fatalf("UDP checksum does not verify: %#x", c)
		}
		target = dst
	}
	// A zero UDP checksum is invalid over IPv6: left to the stack, which
	// drops it, rather than rewritten with the zero kept.
	zero := packet6(netip.MustParseAddrPort("[fd00::7]:7"), vip, []byte("q"))
	zero[60], zero[61] = 0, 0
	if ret, out := run(t, p, zero); ret != tcxNext || string(out) != string(zero) {
		t.Fatalf("a zero-checksum IPv6 datagram: returned %d, changed %v", ret, string(out) != string(zero))
	}
	// The last flow (sticky) again: pinned. Its reply: rewritten on egress.
	_, out := run(t, p, packet6(client, sticky, []byte("again")))
	if _, dst := addrs6(out); dst != target {
		t.Fatalf("pinned flow went to %s, want %s", dst, target)
	}
	reply := packet6(target, client, []byte("answer"))
	if ret, _ := run(t, p, reply); ret != tcxNext {
		t.Fatal("ingress rewrote a reply")
	}
	ret, out := runOut(t, p, reply)
	if src, dst := addrs6(out); ret != tcxPass || src != sticky || dst != client {
		t.Fatalf("reply: %d %s → %s, want from %s", ret, src, dst, sticky)
	}
	if c := csum(pseudo6(out), out[54:]); c != 0xffff {
		t.Fatalf("reply UDP checksum does not verify: %#x", c)
	}
	if n, err := p.EndFlowsTo(target); n != 1 || err != nil {
		t.Fatalf("ended %d flows (%v)", n, err)
	}
	n := 0
	if _, err := p.Sweep(func(Flow) { n++ }); err != nil || n != 199 {
		t.Fatalf("sweep saw %d flows (%v), want 199", n, err)
	}
	if _, err := p.AddService(netip.MustParseAddrPort("[fd00::55]:53"), time.Minute, false); err == nil {
		t.Fatal("a third IPv6 service was accepted with room for two")
	}
	if _, err := p.AddService(netip.MustParseAddrPort("127.0.0.53:53"), time.Minute, false); err != nil {
		t.Fatalf("the IPv4 service beside: %v", err)
	}
}

// Allow and deny lists apply to new flows as in user space: a deny match
// refuses even inside an allowed prefix, outside every allowed prefix is
// refused, and each refusal is counted. IPv6 alike; a list that allows the
// whole family checks nothing.
func TestProgramACL(t *testing.T) {
	p := newPath(t, Options{MaxFlows: 64, Services: 2, Services6: 1})
	pfx := func(ss ...string) (out []netip.Prefix) {
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	v4 := netip.MustParseAddrPort("127.0.0.53:53")
	open4 := netip.MustParseAddrPort("127.0.0.54:53")
	v6 := netip.MustParseAddrPort("[fd00::53]:53")
	slots6 := make([]netip.AddrPort, maglev.DefaultSize)
	for i := range slots6 {
		slots6[i] = netip.MustParseAddrPort("[fd00::1]:5353")
	}
	for _, c := range []struct {
		vip         netip.AddrPort
		allow, deny []netip.Prefix
		slots       []netip.AddrPort
	}{
		{v4, pfx("127.1.0.0/16", "fd00::/8"), pfx("127.1.2.0/24"), slotTargets()},
		{open4, pfx("0.0.0.0/0", "::/0"), nil, slotTargets()},
		{v6, pfx("127.1.0.0/16", "fd00::/8"), pfx("fd00:1::/32"), slots6},
	} {
		id, err := p.AddService(c.vip, time.Minute, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.SetACL(id, c.allow, c.deny); err != nil {
			t.Fatal(err)
		}
		if err := p.SetTable(id, c.slots); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		client string
		vip    netip.AddrPort
		want   fastpathBPFTcxVerdict
	}{
		{"127.1.1.1:1000", v4, tcxPass},
		{"127.1.2.3:1000", v4, tcxDrop}, // denied inside the allowed /16
		{"127.2.0.1:1000", v4, tcxDrop}, // not allowed
		{"127.2.0.1:1000", open4, tcxPass},
		{"[fd00:2::1]:1000", v6, tcxPass},
		{"[fd00:1::1]:1000", v6, tcxDrop},
		{"[fe80::1]:1000", v6, tcxDrop},
	} {
		client := netip.MustParseAddrPort(c.client)
		build := packet
		if client.Addr().Is6() {
			build = packet6
		}
		pkt := build(client, c.vip, []byte("q"))
		if ret, _ := run(t, p, pkt); ret != c.want {
			t.Errorf("%s to %s: returned %d, want %d", client, c.vip, ret, c.want)
		}
	}
	for id, want := range []uint64{2, 0, 2} {
		if st, _ := p.Stats(id); st.RefusedACL != want {
			t.Errorf("service %d: %d refused by its lists, want %d", id, st.RefusedACL, want)
		}
	}
}

// files is what a binary upgrade hands over: named descriptors, taken once.
type files map[string]*os.File

func (f files) Take(name string) *os.File {
	file := f[name]
	delete(f, name)
	return file
}

// A new Path loaded with the flow maps an old one handed over keeps the old
// one's flows: a flow pinned before keeps its target though the new table
// names another, after the old Path is gone. A map of another shape is not
// used, and says why.
func TestFlowMapsHandedOver(t *testing.T) {
	old := newPath(t, Options{MaxFlows: 64, Services: 1})
	vip := netip.MustParseAddrPort("127.0.0.53:53")
	a := netip.MustParseAddrPort("127.0.0.1:5300")
	b := netip.MustParseAddrPort("127.0.0.2:5300")
	id, _ := old.AddService(vip, time.Minute, false)
	if err := old.SetTable(id, fill(a)); err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddrPort("127.9.9.9:40000")
	if _, out := run(t, old, packet(client, vip, []byte("q"))); true {
		if _, dst := addrs(out); dst != a {
			t.Fatalf("first datagram went to %s, want %s", dst, a)
		}
	}
	handed := files{}
	if err := old.FlowFiles(func(name string, f *os.File) { handed[name] = f }); err != nil {
		t.Fatal(err)
	}
	if len(handed) != 2 {
		t.Fatalf("handed over %d flow maps, want one per family", len(handed))
	}
	next := newPath(t, Options{MaxFlows: 64, Services: 1, Inherit: handed})
	if !next.KeptFlows || len(next.Inherited) != 0 || len(handed) != 0 {
		t.Fatalf("kept %v, problems %v, %d left untaken", next.KeptFlows, next.Inherited, len(handed))
	}
	id, _ = next.AddService(vip, time.Minute, false)
	if err := next.SetTable(id, fill(b)); err != nil {
		t.Fatal(err)
	}
	old.Close()
	_, out := run(t, next, packet(client, vip, []byte("again")))
	if _, dst := addrs(out); dst != a {
		t.Fatalf("the flow pinned before the handover went to %s, want %s", dst, a)
	}
	_, out = run(t, next, packet(netip.MustParseAddrPort("127.9.9.9:40001"), vip, []byte("new")))
	if _, dst := addrs(out); dst != b {
		t.Fatalf("a new flow went to %s, want %s", dst, b)
	}
	var live []Flow
	if _, err := next.Sweep(func(f Flow) { live = append(live, f) }); err != nil || len(live) != 2 {
		t.Fatalf("sweep saw %v (%v), want both flows", live, err)
	}

	// Another MaxFlows: the IPv4 map has another shape, so a new one, and a
	// reason. (The IPv6 map, smallest for want of services, fits.)
	handed = files{}
	next.FlowFiles(func(name string, f *os.File) { handed[name] = f })
	other := newPath(t, Options{MaxFlows: 128, Services: 1, Inherit: handed})
	if len(other.Inherited) != 1 || !strings.Contains(other.Inherited[0].Error(), "flows_v4") {
		t.Fatalf("a map of another size: problems %v", other.Inherited)
	}
	t.Log(other.Inherited[0])
}
