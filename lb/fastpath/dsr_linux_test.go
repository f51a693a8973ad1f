package fastpath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/l4lb/l4lb/pkg/flowhash"
	"github.com/l4lb/l4lb/pkg/maglev"
)

// runGrown runs the ingress program on pkt and returns its output whole,
// which encapsulation makes longer than the input.
func runGrown(t *testing.T, p *Path, pkt []byte) (fastpathBPFTcxVerdict, []byte) {
	t.Helper()
	opts := ebpf.RunOptions{Data: pkt, DataOut: make([]byte, len(pkt)+64)}
	ret, err := p.ingress.Run(&opts)
	if err != nil {
		t.Fatal(err)
	}
	return fastpathBPFTcxVerdict(ret), opts.DataOut
}

// encapsulated checks that out is pkt inside an outer IPv4 header from src
// to a target (IPIP, a valid header checksum) and returns that target.
func encapsulated(t *testing.T, out, pkt []byte, src netip.Addr) netip.Addr {
	t.Helper()
	return encapsulatedIn(t, out, pkt, src, 0, 0)
}

// encapsulatedIn is encapsulated, and with a guePort, checks a UDP header
// after the outer one: to guePort, from sport, no checksum (GUE variant 1).
func encapsulatedIn(t *testing.T, out, pkt []byte, src netip.Addr, guePort, sport uint16) netip.Addr {
	t.Helper()
	room, proto := 20, byte(4)
	if guePort != 0 {
		room, proto = 28, 17
	}
	if len(out) != len(pkt)+room {
		t.Fatalf("output is %d bytes, want the %d of the input and %d of outer headers", len(out), len(pkt), room)
	}
	outer := out[14:34]
	if outer[0] != 0x45 || outer[9] != proto || int(binary.BigEndian.Uint16(outer[2:])) != len(pkt)-14+room {
		t.Fatalf("outer header %x: want IPv4, protocol %d, length %d", outer, proto, len(pkt)-14+room)
	}
	if c := csum(0, outer); c != 0xffff {
		t.Fatalf("outer header checksum does not verify: %#x", c)
	}
	if got := netip.AddrFrom4([4]byte(outer[12:16])); got != src {
		t.Fatalf("outer source %s, want %s", got, src)
	}
	if guePort != 0 {
		udp := out[34:42]
		if binary.BigEndian.Uint16(udp[0:]) != sport || binary.BigEndian.Uint16(udp[2:]) != guePort ||
			int(binary.BigEndian.Uint16(udp[4:])) != len(pkt)-14+8 || binary.BigEndian.Uint16(udp[6:]) != 0 {
			t.Fatalf("outer UDP header %x: want %d -> %d, length %d, no checksum", udp, sport, guePort, len(pkt)-14+8)
		}
	}
	if !bytes.Equal(out[14+room:], pkt[14:]) {
		t.Fatalf("the inner packet changed:\n%x\n%x", out[14+room:], pkt[14:])
	}
	return netip.AddrFrom4([4]byte(outer[16:20]))
}

// Direct server return: the client's packet goes whole to the target the
// Maglev table names, inside IPIP from the configured source; a flow has
// one entry, and TCP flows start established; a client's FIN closes one; a
// segment of no flow goes to the same target, as on any node.
func TestDSRProgram(t *testing.T) {
	src := netip.MustParseAddr("198.18.1.1")
	for _, proto := range []uint8{flowhash.ProtoTCP, flowhash.ProtoUDP} {
		p := newPath(t, Options{Protocol: proto, MaxFlows: 4096, Services: 1})
		vip := netip.MustParseAddrPort("198.18.10.1:80")
		id, err := p.AddService(vip, time.Minute, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.ForwardDSR(id, src, 0); err != nil {
			t.Fatal(err)
		}
		if err := p.SetTable(id, slotTargets()); err != nil {
			t.Fatal(err)
		}
		first := func(c netip.AddrPort, payload []byte) []byte {
			if proto == flowhash.ProtoTCP {
				return segment(c, vip, syn, payload)
			}
			return packet(c, vip, payload)
		}
		for i := range 50 {
			c := netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), uint16(40000+i))
			in := first(c, []byte("hello"))
			ret, out := runGrown(t, p, in)
			if ret != tcxPass {
				t.Fatalf("proto %d, first packet %d: returned %d", proto, i, ret)
			}
			tgt := encapsulated(t, out, in, src)
			want := flowhash.Flow(proto, c, vip) % maglev.DefaultSize
			if slotOf(tgt) != int(want) {
				t.Fatalf("proto %d: flow from %s went to slot %d, user space says %d", proto, c, slotOf(tgt), want)
			}
			// The next packet follows the pinned entry, to the same target.
			next := packet(c, vip, []byte("more"))
			if proto == flowhash.ProtoTCP {
				next = segment(c, vip, ack, []byte("more"))
			}
			if ret, out := runGrown(t, p, next); ret != tcxPass || encapsulated(t, out, next, src) != tgt {
				t.Fatalf("proto %d: the flow's second packet: %d", proto, ret)
			}
		}
		st, _ := p.Stats(id)
		if st.NewFlows != 50 || st.PacketsIn != 100 {
			t.Fatalf("proto %d: stats %+v, want 50 flows and 100 packets", proto, st)
		}
		fp := p.fams[0]
		n := 0
		fp.readAll(fp.flows, func(k, v []byte) {
			n++
			if fp.svc(v)&(dsrFlag|replyFlag) != dsrFlag {
				t.Errorf("entry service field %#x: want a client-side DSR entry", fp.svc(v))
			}
		})
		if n != 50 {
			t.Fatalf("proto %d: %d flow entries, want one per flow (50)", proto, n)
		}
		if proto != flowhash.ProtoTCP {
			continue
		}
		if _, emb := entries(t, fp); emb != 0 {
			t.Fatalf("%d embryonic entries: a DSR flow starts established", emb)
		}
		// A client's FIN closes the flow (it lingers, then goes).
		c := netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, 0}), 40000)
		runGrown(t, p, segment(c, vip, fin|ack, nil))
		key := make([]byte, fp.f.keySize)
		putAddr(key, c)
		copy(key[4:], vip.Addr().AsSlice())
		binary.BigEndian.PutUint16(key[8:], c.Port())
		binary.BigEndian.PutUint16(key[10:], vip.Port())
		val := make([]byte, fp.f.valSize)
		if err := fp.flows.Lookup(key, val); err != nil || fp.svc(val)&closedFlag == 0 {
			t.Fatalf("after the client's FIN: %v, service field %#x; want it closed", err, fp.svc(val))
		}
		// A segment of a flow this node never saw goes by the table.
		moved := netip.MustParseAddrPort("203.0.113.200:50000")
		in := segment(moved, vip, ack, []byte("x"))
		ret, out := runGrown(t, p, in)
		if ret != tcxPass {
			t.Fatalf("a segment of a moved flow: %d", ret)
		}
		if tgt := encapsulated(t, out, in, src); slotOf(tgt) != int(flowhash.Flow(proto, moved, vip)%maglev.DefaultSize) {
			t.Fatalf("a segment of a moved flow went to %s", tgt)
		}
	}
}

// GUE: the same flows, with a UDP header after the outer one, to the
// configured port, from the source port GUESourcePort gives the flow's
// hash; every packet of a flow has the same one.
func TestDSRProgramGUE(t *testing.T) {
	src := netip.MustParseAddr("198.18.1.1")
	const guePort = 6080
	for _, proto := range []uint8{flowhash.ProtoTCP, flowhash.ProtoUDP} {
		p := newPath(t, Options{Protocol: proto, MaxFlows: 4096, Services: 1})
		vip := netip.MustParseAddrPort("198.18.10.1:53")
		id, err := p.AddService(vip, time.Minute, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.ForwardDSR(id, src, guePort); err != nil {
			t.Fatal(err)
		}
		if err := p.SetTable(id, slotTargets()); err != nil {
			t.Fatal(err)
		}
		ports := map[uint16]bool{}
		for i := range 200 {
			c := netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), uint16(40000+i))
			h := flowhash.Flow(proto, c, vip)
			sport := GUESourcePort(h)
			if sport < 49152 {
				t.Fatalf("GUESourcePort gave %d, outside the dynamic range", sport)
			}
			ports[sport] = true
			in, next := packet(c, vip, []byte("hello")), packet(c, vip, []byte("more"))
			if proto == flowhash.ProtoTCP {
				in, next = segment(c, vip, syn, []byte("hello")), segment(c, vip, ack, []byte("more"))
			}
			for _, pkt := range [][]byte{in, next} {
				ret, out := runGrown(t, p, pkt)
				if ret != tcxPass {
					t.Fatalf("proto %d, flow %d: returned %d", proto, i, ret)
				}
				if tgt := encapsulatedIn(t, out, pkt, src, guePort, sport); slotOf(tgt) != int(h%maglev.DefaultSize) {
					t.Fatalf("proto %d: flow from %s went to slot %d, user space says %d", proto, c, slotOf(tgt), h%maglev.DefaultSize)
				}
			}
		}
		if len(ports) < 190 {
			t.Fatalf("200 flows used %d outer source ports: too few for the routers to spread them", len(ports))
		}
	}
}

// An IPv6 service: the client's packet goes whole inside an outer IPv6
// header (IPv6 in IPv6) from the configured source to the target the table
// names, with the flow label FlowLabel gives the flow's hash, on its first
// packet and on its pinned ones alike; with GUE, with the UDP header
// encap4 writes after it (checksum zero, as RFC 6935 lets tunnels have).
func TestDSRProgramIPv6(t *testing.T) {
	src := netip.MustParseAddr("fd00:18:1::1")
	for _, c := range []struct {
		proto   uint8
		guePort uint16
	}{{flowhash.ProtoTCP, 0}, {flowhash.ProtoUDP, 0}, {flowhash.ProtoTCP, 6080}, {flowhash.ProtoUDP, 6080}} {
		proto, guePort := c.proto, c.guePort
		p := newPath(t, Options{Protocol: proto, MaxFlows: 4096, Services6: 1})
		vip := netip.MustParseAddrPort("[fd00:18:10::1]:80")
		id, err := p.AddService(vip, time.Minute, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.ForwardDSR(id, netip.MustParseAddr("198.18.1.1"), 0); err == nil {
			t.Fatal("ForwardDSR took an IPv4 source for an IPv6 service")
		}
		if err := p.ForwardDSR(id, src, guePort); err != nil {
			t.Fatal(err)
		}
		room := 40
		if guePort != 0 {
			room += 8
		}
		slots := make([]netip.AddrPort, maglev.DefaultSize)
		for i := range slots {
			slots[i] = netip.AddrPortFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x18, 0, 0x20, 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)}), 80)
		}
		if err := p.SetTable(id, slots); err != nil {
			t.Fatal(err)
		}
		for i := range 50 {
			c := netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i)}), uint16(40000+i))
			h := flowhash.Flow(proto, c, vip)
			in, next := packet6(c, vip, []byte("hello")), packet6(c, vip, []byte("more"))
			if proto == flowhash.ProtoTCP {
				in, next = segment6(c, vip, syn, []byte("hello")), segment6(c, vip, ack, []byte("more"))
			}
			for _, pkt := range [][]byte{in, next} {
				ret, out := runGrown(t, p, pkt)
				if ret != tcxPass {
					t.Fatalf("proto %d, flow %d: returned %d", proto, i, ret)
				}
				if len(out) != len(pkt)+room {
					t.Fatalf("output is %d bytes, want the %d of the input and %d of outer headers", len(out), len(pkt), room)
				}
				outer := out[14:54]
				if vtcfl := binary.BigEndian.Uint32(outer); vtcfl != 6<<28|FlowLabel(h) {
					t.Fatalf("outer version and flow label %#x, want %#x", vtcfl, 6<<28|FlowLabel(h))
				}
				next := byte(41)
				if guePort != 0 {
					next = 17
					udp := out[54:62]
					if binary.BigEndian.Uint16(udp[0:]) != GUESourcePort(h) || binary.BigEndian.Uint16(udp[2:]) != guePort ||
						int(binary.BigEndian.Uint16(udp[4:])) != len(pkt)-14+8 || binary.BigEndian.Uint16(udp[6:]) != 0 {
						t.Fatalf("outer UDP header %x: want %d -> %d, length %d, checksum 0", udp, GUESourcePort(h), guePort, len(pkt)-14+8)
					}
				}
				if int(binary.BigEndian.Uint16(outer[4:])) != len(out)-54 || outer[6] != next || outer[7] != 64 {
					t.Fatalf("outer header %x: want payload length %d, next header %d, hop limit 64", outer[:8], len(out)-54, next)
				}
				if got := netip.AddrFrom16([16]byte(outer[8:24])); got != src {
					t.Fatalf("outer source %s, want %s", got, src)
				}
				if got, want := netip.AddrFrom16([16]byte(outer[24:40])), slots[h%maglev.DefaultSize].Addr(); got != want {
					t.Fatalf("proto %d: flow from %s went to %s, user space says %s", proto, c, got, want)
				}
				if !bytes.Equal(out[14+room:], pkt[14:]) {
					t.Fatalf("the inner packet changed")
				}
			}
		}
		if st, _ := p.Stats(id); st.NewFlows != 50 || st.PacketsIn != 100 {
			t.Fatalf("proto %d: stats %+v, want 50 flows and 100 packets", proto, st)
		}
	}
}
