package dsr

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
)

var (
	vip6   = netip.MustParseAddr("fd00:18:10::1")
	vip    = netip.MustParseAddr("198.18.10.1")
	node   = netip.MustParseAddr("198.18.1.1")
	target = netip.MustParseAddr("198.18.1.11")
	client = netip.MustParseAddrPort("198.18.0.2:40000")
)

const guePort = 6080

func newDecap(t testing.TB, guePort uint16) *Decap {
	t.Helper()
	d, err := NewDecap([]netip.Addr{vip, vip6}, guePort)
	if err != nil {
		if os.Geteuid() != 0 && os.Getenv("CI") == "" {
			t.Skipf("needs root for BPF: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func sum16(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// frame is an Ethernet frame holding an IPv4 TCP packet from client to dst.
func frame(dst netip.Addr, payload string) []byte {
	b := make([]byte, 14+20+20+len(payload))
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(ip[2:], uint16(40+len(payload)))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF, as TCP sends
	s, d := client.Addr().As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], ^sum16(ip))
	binary.BigEndian.PutUint16(b[34:], client.Port())
	binary.BigEndian.PutUint16(b[36:], 80)
	b[46], b[47] = 5<<4, 0x18
	copy(b[54:], payload)
	return b
}

// encap wraps a frame's IP packet in IPIP from node to target, as the
// nodes' program does (fastpath.c encap4; fastpath's TestDSRProgram checks
// that layout on the program's own output).
func encap(f []byte, fragment bool) []byte { return outer4(f, 4, 0, fragment) }

// encapGUE wraps a frame's IP packet in IPv4 and UDP from node to target's
// port (GUE variant 1), as the nodes' program does with gue_port
// (fastpath's TestDSRProgramGUE checks that layout on its output).
func encapGUE(f []byte, port uint16) []byte {
	b := outer4(f, 17, 8, false)
	putUDP(b[34:], port, len(f)-14)
	return b
}

// outer4 puts an outer IPv4 header from node to target, carrying proto,
// and room bytes after it, in front of a frame's IP packet.
func outer4(f []byte, proto byte, room int, fragment bool) []byte {
	b := make([]byte, len(f)+20+room)
	copy(b, f[:14])
	o := b[14:34]
	o[0], o[8], o[9] = 0x45, 64, proto
	binary.BigEndian.PutUint16(o[2:], uint16(len(b)-14))
	if fragment {
		binary.BigEndian.PutUint16(o[6:], 0x2000) // MF
	}
	s, d := node.As4(), target.As4()
	copy(o[12:], s[:])
	copy(o[16:], d[:])
	binary.BigEndian.PutUint16(o[10:], ^sum16(o))
	copy(b[34+room:], f[14:])
	return b
}

// putUDP writes a GUE UDP header to port, around inner bytes, at b;
// checksum zero.
func putUDP(b []byte, port uint16, inner int) {
	binary.BigEndian.PutUint16(b[0:], 50000)
	binary.BigEndian.PutUint16(b[2:], port)
	binary.BigEndian.PutUint16(b[4:], uint16(inner+8))
}

// frame6 is an Ethernet frame holding an IPv6 UDP datagram to dst.
func frame6(dst netip.Addr, payload string) []byte {
	b := make([]byte, 14+40+8+len(payload))
	binary.BigEndian.PutUint16(b[12:], 0x86dd)
	ip := b[14:54]
	ip[0], ip[6], ip[7] = 0x60, 17, 64
	binary.BigEndian.PutUint16(ip[4:], uint16(8+len(payload)))
	s, d := netip.MustParseAddr("2001:db8::2").As16(), dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	binary.BigEndian.PutUint16(b[54:], 40000)
	binary.BigEndian.PutUint16(b[56:], 53)
	binary.BigEndian.PutUint16(b[58:], uint16(8+len(payload)))
	binary.BigEndian.PutUint16(b[60:], 0xffff) // any non-zero checksum: the program does not read it
	copy(b[62:], payload)
	return b
}

// encap6 wraps a frame's IPv6 packet in IPv6, as the nodes' program does
// for an IPv6 service (fastpath's TestDSRProgramIPv6 checks that layout).
func encap6(f []byte) []byte {
	b := make([]byte, len(f)+40)
	copy(b, f[:14])
	o := b[14:54]
	binary.BigEndian.PutUint32(o, 6<<28|0x12345)
	binary.BigEndian.PutUint16(o[4:], uint16(len(f)-14))
	o[6], o[7] = 41, 64
	s, d := netip.MustParseAddr("fd00:18:1::1").As16(), netip.MustParseAddr("fd00:18:1::11").As16()
	copy(o[8:], s[:])
	copy(o[24:], d[:])
	copy(b[54:], f[14:])
	return b
}

// encap6GUE wraps a frame's IPv6 packet in IPv6 and UDP to port, with a
// zero checksum, as the nodes' program does for an IPv6 service with GUE.
func encap6GUE(f []byte, port uint16) []byte {
	inner := encap6(f)
	b := make([]byte, len(inner)+8)
	copy(b, inner[:54])
	binary.BigEndian.PutUint16(b[18:], uint16(len(f)-14+8))
	b[20] = 17
	putUDP(b[54:], port, len(f)-14)
	copy(b[62:], f[14:])
	return b
}

func run(t testing.TB, d *Decap, pkt []byte) (int32, []byte) {
	t.Helper()
	opts := ebpf.RunOptions{Data: pkt, DataOut: make([]byte, len(pkt)+64)}
	ret, err := d.objs.L4lbDecap.Run(&opts)
	if err != nil {
		t.Fatal(err)
	}
	return int32(ret), opts.DataOut
}

// IPIP, or GUE to the port, to a VIP loses its outer headers and goes on
// into the stack as the client sent it; anything else passes untouched.
func TestDecap(t *testing.T) {
	d := newDecap(t, guePort)
	in := frame(vip, "hello")
	in6 := frame6(vip6, "hello")
	for name, c := range map[string]struct{ pkt, want []byte }{
		"IPIP": {encap(in, false), in}, "GUE": {encapGUE(in, guePort), in}, "IPv6 in IPv6": {encap6(in6), in6},
		"GUE over IPv6": {encap6GUE(in6, guePort), in6},
	} {
		ret, out := run(t, d, c.pkt)
		if ret != 0 || !bytes.Equal(out, c.want) {
			t.Fatalf("%s to the VIP: returned %d, %x; want the client's packet %x", name, ret, out, c.want)
		}
	}
	for name, pkt := range map[string][]byte{
		"IPIP to another address":  encap(frame(netip.MustParseAddr("198.18.10.2"), "x"), false),
		"GUE to another address":   encapGUE(frame(netip.MustParseAddr("198.18.10.2"), "x"), guePort),
		"GUE to another port":      encapGUE(in, guePort+1),
		"an IPIP fragment":         encap(in, true),
		"plain TCP to the VIP":     in,
		"a short frame":            encap(in, false)[:40],
		"a short GUE frame":        encapGUE(in, guePort)[:60],
		"IPv6 in IPv6 elsewhere":   encap6(frame6(netip.MustParseAddr("fd00:18:10::2"), "x")),
		"plain IPv6 to the VIP":    in6,
		"a short IPv6 frame":       encap6(in6)[:80],
		"IPv6 GUE to another port": encap6GUE(in6, guePort+1),
		"IPv6 GUE elsewhere":       encap6GUE(frame6(netip.MustParseAddr("fd00:18:10::2"), "x"), guePort),
		"a short IPv6 GUE frame":   encap6GUE(in6, guePort)[:100],
	} {
		ret, out := run(t, d, pkt)
		if ret != -1 || !bytes.Equal(out, pkt) {
			t.Errorf("%s: returned %d (want -1, untouched), changed: %v", name, ret, !bytes.Equal(out, pkt))
		}
	}
	n, failed, err := d.Stats()
	if err != nil || n != 4 || failed != 0 {
		t.Fatalf("stats: %d decapsulated, %d failed (%v); want 4 and 0", n, failed, err)
	}
	// Without a GUE port, GUE is not taken in.
	ipip := newDecap(t, 0)
	for _, pkt := range [][]byte{encapGUE(in, guePort), encap6GUE(in6, guePort)} {
		if ret, _ := run(t, ipip, pkt); ret != -1 {
			t.Fatalf("GUE to a program without a GUE port: returned %d, want -1", ret)
		}
	}
}

// FuzzDecap feeds the program arbitrary frames: each passes untouched, or
// loses exactly the 20 bytes (IPIP), 28 (GUE), 40 (IPv6 in IPv6) or 48
// (GUE over IPv6) after the Ethernet header.
func FuzzDecap(f *testing.F) {
	in := frame(vip, "hello")
	f.Add(encap(in, false))
	f.Add(encap(in, true))
	f.Add(encapGUE(in, guePort))
	f.Add(encap6(frame6(vip6, "hello")))
	f.Add(encap6GUE(frame6(vip6, "hello"), guePort))
	f.Add(in)
	d := newDecap(f, guePort)
	f.Fuzz(func(t *testing.T, pkt []byte) {
		if len(pkt) < 14 || len(pkt) > 9000 {
			return // the kernel refuses to run on less than an Ethernet header
		}
		opts := ebpf.RunOptions{Data: pkt, DataOut: make([]byte, len(pkt)+64)}
		r, err := d.objs.L4lbDecap.Run(&opts)
		if err != nil {
			return // a frame the kernel's test runner refuses to build an skb from
		}
		ret, out := int32(r), opts.DataOut
		switch ret {
		case -1:
			if !bytes.Equal(out, pkt) {
				t.Fatalf("passed on, but changed")
			}
		case 0:
			room := 20
			switch {
			case pkt[12] == 0x86 && pkt[20] == 17:
				room = 48
			case pkt[12] == 0x86:
				room = 40
			case pkt[23] == 17:
				room = 28
			}
			if want := append(append([]byte{}, pkt[:14]...), pkt[14+room:]...); !bytes.Equal(out, want) {
				t.Fatalf("decapsulated wrongly:\n%x\n%x", out, want)
			}
		default:
			t.Fatalf("returned %d", ret)
		}
	})
}
