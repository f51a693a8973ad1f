package bfd

import (
	"bytes"
	"errors"
	"testing"
)

func TestPacketRoundTrip(t *testing.T) {
	p := Packet{Diag: DiagNeighborDown, State: Up, Poll: true, DetectMult: 3, MyDiscriminator: 0x01020304,
		YourDiscriminator: 0x0a0b0c0d, DesiredMinTx: 100000, RequiredMinRx: 300000, RequiredMinEchoRx: 0}
	b := p.Append(nil)
	want := []byte{0x20 | 3, 3<<6 | 0x20, 3, 24, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d, 0, 1, 0x86, 0xa0, 0, 4, 0x93, 0xe0, 0, 0, 0, 0}
	if !bytes.Equal(b, want) {
		t.Fatalf("Append:\n got % x\nwant % x", b, want)
	}
	got, err := Parse(b)
	if err != nil || got != p {
		t.Fatalf("Parse(Append(p)) = %+v, %v; want %+v", got, err, p)
	}
}

func TestParseRefuses(t *testing.T) {
	good := func() []byte {
		p := Packet{State: Up, DetectMult: 3, MyDiscriminator: 7, YourDiscriminator: 9, DesiredMinTx: 1e6, RequiredMinRx: 1e6}
		return p.Append(nil)
	}
	for _, c := range []struct {
		name string
		edit func(b []byte) []byte
		want error
	}{
		{"short", func(b []byte) []byte { return b[:23] }, ErrShort},
		{"version 0", func(b []byte) []byte { b[0] &= 0x1f; return b }, ErrVersion},
		{"length below 24", func(b []byte) []byte { b[3] = 20; return b }, ErrLength},
		{"length past the datagram", func(b []byte) []byte { b[3] = 30; return b }, ErrLength},
		{"authentication", func(b []byte) []byte { b[1] |= 0x04; b[3] = 26; return append(b, 1, 2) }, ErrAuth},
		{"authentication, too short for its section", func(b []byte) []byte { b[1] |= 0x04; return b }, ErrLength},
		{"detect multiplier 0", func(b []byte) []byte { b[2] = 0; return b }, ErrDetectMult},
		{"multipoint", func(b []byte) []byte { b[1] |= 0x01; return b }, ErrMultipoint},
		{"my discriminator 0", func(b []byte) []byte { copy(b[4:8], []byte{0, 0, 0, 0}); return b }, ErrDiscriminator},
		{"your discriminator 0 while up", func(b []byte) []byte { copy(b[8:12], []byte{0, 0, 0, 0}); return b }, ErrDiscriminator},
	} {
		if _, err := Parse(c.edit(good())); !errors.Is(err, c.want) {
			t.Errorf("%s: Parse error %v, want %v", c.name, err, c.want)
		}
	}
	// A peer that does not know this side yet sends Down with no
	// discriminator of ours: that is valid. Trailing bytes past the length
	// are ignored.
	b := good()
	b[1] = byte(Down) << 6
	copy(b[8:12], []byte{0, 0, 0, 0})
	if p, err := Parse(append(b, 0xff)); err != nil || p.State != Down {
		t.Errorf("Down with no discriminator of ours: %+v, %v", p, err)
	}
}

// FuzzParse: no input panics, and whatever parses appends back to the same
// first 24 bytes.
func FuzzParse(f *testing.F) {
	p := Packet{State: Init, DetectMult: 3, MyDiscriminator: 1, YourDiscriminator: 2, DesiredMinTx: 1e6, RequiredMinRx: 3e5}
	f.Add(p.Append(nil))
	f.Add([]byte{0x20, 0x40, 3, 24, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			return
		}
		out := p.Append(nil)
		// Parse drops the length (always 24 on the way out) and the
		// authentication bit (refused).
		in := append([]byte(nil), b[:headerLen]...)
		in[3] = headerLen
		if !bytes.Equal(out, in) {
			t.Fatalf("Append(Parse(b)):\n got % x\nwant % x", out, in)
		}
	})
}
