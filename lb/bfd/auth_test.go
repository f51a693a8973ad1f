package bfd

import (
	"errors"
	"math"
	"testing"
)

func authed(a *Auth, seq uint32) ([]byte, Packet) {
	p := Packet{State: Up, DetectMult: 3, MyDiscriminator: 7, YourDiscriminator: 9, DesiredMinTx: 1e5, RequiredMinRx: 1e5}
	b := p.appendAuth(nil, a, seq)
	got, _ := Parse(b)
	return b, got
}

// A packet signed with a key verifies with it, and with nothing else: not
// another key, key ID or type, not a byte changed, not with the section
// missing or unexpected.
func TestKeyedSHA1(t *testing.T) {
	a := &Auth{Type: AuthMeticulousKeyedSHA1, KeyID: 3, Key: []byte("s3cret")}
	b, p := authed(a, 1000)
	if len(b) != 52 || b[3] != 52 || b[1]&0x04 == 0 || b[24] != 5 || b[25] != 28 || b[26] != 3 {
		t.Fatalf("the section: % x", b)
	}
	if p.Auth != (authSection{typ: AuthMeticulousKeyedSHA1, keyID: 3, seq: 1000}) {
		t.Fatalf("Parse: %+v", p.Auth)
	}
	if err := a.verify(b, p); err != nil {
		t.Fatalf("its own packet: %v", err)
	}
	for _, c := range []struct {
		name string
		a    *Auth
		want error
	}{
		{"another key", &Auth{Type: AuthMeticulousKeyedSHA1, KeyID: 3, Key: []byte("s3creT")}, ErrAuthDigest},
		{"another key ID", &Auth{Type: AuthMeticulousKeyedSHA1, KeyID: 4, Key: []byte("s3cret")}, ErrAuthKeyID},
		{"keyed, not meticulous", &Auth{Type: AuthKeyedSHA1, KeyID: 3, Key: []byte("s3cret")}, ErrAuthType},
		{"no authentication", nil, ErrAuthExpected},
	} {
		if err := c.a.verify(b, p); !errors.Is(err, c.want) {
			t.Errorf("%s: %v; want %v", c.name, err, c.want)
		}
	}
	for i := range 24 { // every header byte but the length is covered
		if i == 3 {
			continue
		}
		bad := append([]byte(nil), b...)
		bad[i] ^= 0x40
		if q, err := Parse(bad); err == nil && q.Auth.typ != AuthNone {
			if err := a.verify(bad, q); err == nil {
				t.Errorf("byte %d changed, the digest still verifies", i)
			}
		}
	}
	plain := (&Packet{State: Down, DetectMult: 3, MyDiscriminator: 7, YourDiscriminator: 9}).Append(nil)
	q, _ := Parse(plain)
	if err := a.verify(plain, q); !errors.Is(err, ErrAuthMissing) {
		t.Fatalf("an unauthenticated Down: %v", err)
	}
	if err := (&Auth{Type: 2, Key: []byte("x")}).check(); err == nil {
		t.Fatal("MD5 was configured")
	}
}

// The sequence window (RFC 5880 section 6.7.4): within 3 x the detect
// multiplier of the last number, across the wrap at 2^32; the same number
// again is taken for keyed SHA1, refused for meticulous.
func TestSequenceWindow(t *testing.T) {
	for _, last := range []uint32{0, 1000, math.MaxUint32 - 2} {
		for d := uint32(0); d < 20; d++ {
			seq := last + d
			for _, typ := range []AuthType{AuthKeyedSHA1, AuthMeticulousKeyedSHA1} {
				want := d <= 9 && (typ == AuthKeyedSHA1 || d > 0)
				if got := inWindow(typ, seq, last, 3); got != want {
					t.Errorf("%s: last %d, seq %d (+%d): %v", typ, last, seq, d, got)
				}
			}
		}
		if inWindow(AuthKeyedSHA1, last-1, last, 3) {
			t.Errorf("a number behind %d was taken", last)
		}
	}
}

// FuzzParse's twin for authenticated packets: whatever the bytes, verify
// never panics and never accepts without the key.
func FuzzAuth(f *testing.F) {
	a := &Auth{Type: AuthKeyedSHA1, KeyID: 1, Key: []byte("k")}
	b, _ := authed(a, 5)
	f.Add(b)
	f.Fuzz(func(t *testing.T, raw []byte) {
		p, err := Parse(raw)
		if err != nil || p.Auth.typ == AuthNone {
			return
		}
		other := &Auth{Type: p.Auth.typ, KeyID: p.Auth.keyID, Key: []byte("not the key")}
		if other.verify(raw, p) == nil && a.verify(raw, p) == nil {
			t.Fatalf("one digest verified under two keys: % x", raw)
		}
	})
}
