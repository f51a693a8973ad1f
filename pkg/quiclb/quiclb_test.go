package quiclb

import (
	"encoding/binary"
	"testing"
)

const testID = 0x0123456789abcdef

// long builds a long header packet: type, version, DCID, an empty SCID and
// a few payload bytes.
func long(typ uint8, version uint32, dcid []byte) []byte {
	b := []byte{0xc0 | typ<<4}
	b = binary.BigEndian.AppendUint32(b, version)
	b = append(b, byte(len(dcid)))
	b = append(b, dcid...)
	return append(b, 0, 1, 2, 3)
}

func short(dcid []byte) []byte { return append(append([]byte{0x40}, dcid...), 9, 9, 9) }

func TestClassify(t *testing.T) {
	rnd := []byte{0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}
	cid := ConnID(testID, 16, rnd)
	unroutable := append([]byte{Unroutable << 5}, cid[1:]...)
	clientChosen := []byte{0xe1, 2, 3, 4, 5, 6, 7, 8} // 8 bytes, codepoint 7: an Initial's
	for _, c := range []struct {
		name string
		pkt  []byte
		want Packet
	}{
		{"initial", long(TypeInitial, Version1, clientChosen), Packet{Route: ByHash, Long: true, Type: TypeInitial, Version: 1, DCIDLen: 8}},
		{"initial carrying a server ID", long(TypeInitial, Version1, cid), Packet{Route: ByHash, Long: true, Type: TypeInitial, Version: 1, DCIDLen: 16}},
		{"0-RTT", long(TypeZeroRTT, Version1, clientChosen), Packet{Route: ByHash, Long: true, Type: TypeZeroRTT, Version: 1, DCIDLen: 8}},
		{"handshake", long(TypeHandshake, Version1, cid), Packet{Route: ByCID, Long: true, Type: TypeHandshake, Version: 1, ServerID: testID, DCIDLen: 16}},
		{"handshake, unroutable", long(TypeHandshake, Version1, unroutable), Packet{Route: ByHash, Long: true, Type: TypeHandshake, Version: 1, DCIDLen: 16}},
		{"retry", long(TypeRetry, Version1, cid), Packet{Route: ByHash, Long: true, Type: TypeRetry, Version: 1, DCIDLen: 16}},
		{"version 2", long(TypeInitial, 0x6b3343cf, clientChosen), Packet{Route: BadVersion, Long: true, Type: TypeInitial, Version: 0x6b3343cf}},
		{"version negotiation", long(TypeInitial, 0, clientChosen), Packet{Route: BadVersion, Long: true}},
		{"long, DCID past the end", long(TypeInitial, Version1, clientChosen)[:10], Packet{Route: Short, Long: true, Version: 1, DCIDLen: 8}},
		{"long, DCID of 21", long(TypeInitial, Version1, make([]byte, 21)), Packet{Route: Short, Long: true, Version: 1, DCIDLen: 21}},
		{"long, 5 bytes", []byte{0xc0, 0, 0, 0, 1}, Packet{Route: Short, Long: true}},
		{"short", short(cid), Packet{Route: ByCID, ServerID: testID, DCIDLen: 16}},
		{"short, unroutable", short(unroutable), Packet{Route: UnknownCID, DCIDLen: 16}},
		{"short, truncated", short(cid)[:12], Packet{Route: Short}},
		{"empty", nil, Packet{Route: Short}},
	} {
		if got := Classify(c.pkt, 16); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
	if got := Classify(short(cid), 8); got.Route != Short {
		t.Errorf("a listener whose IDs are too short for a server ID: %+v", got)
	}
}

func TestServerIDText(t *testing.T) {
	id, err := ParseServerID("0x0123456789abcdef")
	if err != nil || id != testID || FormatServerID(id) != "0x0123456789abcdef" {
		t.Fatalf("%#x %v", id, err)
	}
	for _, bad := range []string{"", "0x", "0123456789abcdef", "0x0123456789ABCDEF", "0x0123456789abcde", "0x0123456789abcdef0", "1x0123456789abcdef", "0x0123456789abcdeg"} {
		if _, err := ParseServerID(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

// Whatever a datagram holds, Classify never panics, never reads past it,
// and a ByCID answer's ID is the one at octets 1..8 of the destination ID.
func FuzzClassify(f *testing.F) {
	cid := ConnID(testID, 16, make([]byte, 8))
	f.Add(long(TypeInitial, Version1, cid), 16)
	f.Add(long(TypeHandshake, Version1, cid), 16)
	f.Add(short(cid), 16)
	f.Add([]byte{0xc0, 0, 0, 0, 1, 255}, 20)
	f.Fuzz(func(t *testing.T, b []byte, n int) {
		n = MinConnIDLen + (n%(MaxConnIDLen-MinConnIDLen+1)+MaxConnIDLen)%(MaxConnIDLen-MinConnIDLen+1)
		p := Classify(b, n)
		if p.Route != ByCID {
			return
		}
		off := 1
		if p.Long {
			off = 6
		}
		if got := binary.BigEndian.Uint64(b[off+1 : off+9]); got != p.ServerID || b[off]>>5 == Unroutable {
			t.Fatalf("server ID %#x, the packet holds %#x (first octet %#x)", p.ServerID, got, b[off])
		}
	})
}
