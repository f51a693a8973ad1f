package bfd

import (
	"crypto/sha1"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
)

// AuthType is a control packet's authentication type (RFC 5880 section
// 4.1). Keyed SHA1 and Meticulous Keyed SHA1 are built; the others (simple
// password, MD5) are refused.
type AuthType uint8

const (
	AuthNone                AuthType = 0
	AuthKeyedSHA1           AuthType = 4
	AuthMeticulousKeyedSHA1 AuthType = 5
)

func (a AuthType) String() string {
	switch a {
	case AuthNone:
		return "none"
	case AuthKeyedSHA1:
		return "keyed SHA1"
	case AuthMeticulousKeyedSHA1:
		return "meticulous keyed SHA1"
	}
	return fmt.Sprintf("auth type %d", uint8(a))
}

// sha1AuthLen is the Keyed SHA1 section's length: type, length, key ID,
// reserved, sequence number, 20 bytes of key or digest (RFC 5880 section
// 4.4).
const sha1AuthLen = 28

// MaxKeyLen is the longest SHA1 key: the digest field's 20 bytes.
const MaxKeyLen = 20

// Auth is a session's authentication: its type, and the one key it sends
// with and accepts (key ID and secret).
type Auth struct {
	Type  AuthType
	KeyID uint8
	Key   []byte // 1 to MaxKeyLen bytes
}

// Enabled reports whether packets are authenticated.
func (a *Auth) Enabled() bool { return a != nil && a.Type != AuthNone }

func (a *Auth) check() error {
	if !a.Enabled() {
		return nil
	}
	switch {
	case a.Type != AuthKeyedSHA1 && a.Type != AuthMeticulousKeyedSHA1:
		return fmt.Errorf("bfd: %s is not built (keyed SHA1 and meticulous keyed SHA1 are)", a.Type)
	case len(a.Key) == 0 || len(a.Key) > MaxKeyLen:
		return fmt.Errorf("bfd: a SHA1 key is 1 to %d bytes, not %d", MaxKeyLen, len(a.Key))
	}
	return nil
}

// Why an authenticated packet was refused.
var (
	ErrAuthMissing  = errors.New("bfd: the packet is not authenticated, the session is")
	ErrAuthExpected = errors.New("bfd: the packet is authenticated, the session is not")
	ErrAuthType     = errors.New("bfd: the packet's authentication type is not the session's")
	ErrAuthKeyID    = errors.New("bfd: the packet's key ID is not the session's")
	ErrAuthSequence = errors.New("bfd: the packet's sequence number is out of the window")
	ErrAuthDigest   = errors.New("bfd: the packet's SHA1 digest is wrong")
)

// appendAuth appends a's section with sequence number seq to b, a packet
// whose header says so (A bit, length), and fills in the digest: SHA1 over
// the whole packet with the key, zero-padded, in the digest field (RFC 5880
// section 6.7.4).
func (a *Auth) appendAuth(b []byte, seq uint32) []byte {
	start := len(b)
	b = append(b, byte(a.Type), sha1AuthLen, a.KeyID, 0)
	b = binary.BigEndian.AppendUint32(b, seq)
	var key [MaxKeyLen]byte
	copy(key[:], a.Key)
	b = append(b, key[:]...)
	sum := sha1.Sum(b[start-headerLen:])
	copy(b[len(b)-MaxKeyLen:], sum[:])
	return b
}

// authSection is a received packet's Keyed SHA1 section.
type authSection struct {
	typ   AuthType
	keyID uint8
	seq   uint32
}

// verify checks raw, a received packet that Parse took, against a: its
// section's type and key ID, then its digest. The sequence number is the
// session's to check (it knows the last one).
func (a *Auth) verify(raw []byte, p Packet) error {
	switch {
	case !a.Enabled() && p.Auth.typ == AuthNone:
		return nil
	case !a.Enabled():
		return ErrAuthExpected
	case p.Auth.typ == AuthNone:
		return ErrAuthMissing
	case p.Auth.typ != a.Type || len(raw) < headerLen+sha1AuthLen || raw[headerLen+1] != sha1AuthLen:
		return ErrAuthType
	case p.Auth.keyID != a.KeyID:
		return ErrAuthKeyID
	}
	pkt := make([]byte, headerLen+sha1AuthLen)
	copy(pkt, raw)
	digest := make([]byte, MaxKeyLen)
	copy(digest, pkt[headerLen+8:])
	clear(pkt[headerLen+8:])
	copy(pkt[headerLen+8:], a.Key)
	sum := sha1.Sum(pkt)
	if subtle.ConstantTimeCompare(sum[:], digest) != 1 {
		return ErrAuthDigest
	}
	return nil
}

// inWindow reports whether seq may follow last, the last sequence number
// taken, with a detect multiplier of mult: within 3 x mult of it, and past
// it for meticulous authentication (RFC 5880 section 6.7.4; the arithmetic
// wraps at 2^32).
func inWindow(typ AuthType, seq, last uint32, mult uint8) bool {
	d := seq - last
	if typ == AuthMeticulousKeyedSHA1 && d == 0 {
		return false
	}
	return d <= 3*uint32(mult)
}
