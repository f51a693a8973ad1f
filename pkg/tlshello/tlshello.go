// Package tlshello reads the server name (SNI) from the first bytes of a TLS
// connection, its ClientHello, without terminating TLS, so that a TCP
// listener can route by host name and pass the bytes on untouched.
package tlshello

import (
	"encoding/binary"
	"errors"
	"strings"
)

// MaxLen is the most a ServerName call needs: one TLS record header and the
// largest record payload (2^14 bytes).
const MaxLen = 5 + 1<<14

var (
	// ErrShort means the hello is not all there yet: read more and retry.
	ErrShort = errors.New("tlshello: incomplete ClientHello")
	// ErrNotHello means the bytes are not a TLS ClientHello, or a malformed one.
	ErrNotHello = errors.New("tlshello: not a TLS ClientHello")
	// ErrBadServerName means the hello's server_name is not a DNS host
	// name (RFC 6066, section 3): see ValidServerName.
	ErrBadServerName = errors.New("tlshello: the server_name is not a DNS host name of at most 253 bytes")
)

// MaxServerName is the longest host name in DNS (RFC 1035's 255 bytes of
// wire format, less the length octets of the first label and the root).
const MaxServerName = 253

// ValidServerName reports whether name, as a ClientHello's server_name
// carries it, is a DNS host name: at most 253 bytes (a trailing dot aside),
// labels of 1 to 63 letters, digits, hyphens or underscores (the last is
// not in RFC 952 but common in real names), separated by dots. RFC 6066
// allows nothing else, and anything else (control characters, spaces,
// quotes, 60 KB of name) is an attack on what reads the name next: access
// logs, routing rules, the PROXY header sent to the target.
func ValidServerName(name string) bool {
	name = strings.TrimSuffix(name, ".")
	if len(name) == 0 || len(name) > MaxServerName {
		return false
	}
	label := 0
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return false
		}
		if label++; label > 63 {
			return false
		}
	}
	return label > 0
}

// ServerName returns the host name a ClientHello asks for, lower-cased and
// without a trailing dot; "" when it has no server_name extension. b is the
// start of the connection. Only a hello that fits in its first record is
// read, as every common client sends it.
func ServerName(b []byte) (string, error) {
	if len(b) < 5 {
		if len(b) > 0 && b[0] != 22 {
			return "", ErrNotHello
		}
		return "", ErrShort
	}
	if b[0] != 22 || b[1] != 3 { // handshake record, TLS 1.x (SSL 3.0 has no extensions)
		return "", ErrNotHello
	}
	n := int(binary.BigEndian.Uint16(b[3:5]))
	if n < 4 || n > 1<<14 {
		return "", ErrNotHello
	}
	if len(b) < 5+n {
		return "", ErrShort
	}
	rec := b[5 : 5+n]
	if rec[0] != 1 { // ClientHello
		return "", ErrNotHello
	}
	hl := int(rec[1])<<16 | int(rec[2])<<8 | int(rec[3])
	if hl > len(rec)-4 {
		return "", ErrNotHello // spans records: not what clients send
	}
	p := parser{b: rec[4 : 4+hl]}
	p.skip(2 + 32)  // legacy version, random
	p.skip(p.u8())  // session id
	p.skip(p.u16()) // cipher suites
	p.skip(p.u8())  // compression methods
	if p.bad {
		return "", ErrNotHello
	}
	if len(p.b) == 0 {
		return "", nil // no extensions
	}
	exts := parser{b: p.bytes(p.u16())}
	if p.bad {
		return "", ErrNotHello
	}
	for len(exts.b) > 0 {
		typ := exts.u16()
		body := exts.bytes(exts.u16())
		if exts.bad {
			return "", ErrNotHello
		}
		if typ != 0 { // server_name
			continue
		}
		list := parser{b: body}
		names := parser{b: list.bytes(list.u16())}
		for len(names.b) > 0 && !names.bad {
			kind := names.u8()
			name := names.bytes(names.u16())
			if !names.bad && kind == 0 { // host_name
				return normalize(name)
			}
		}
		if list.bad || names.bad {
			return "", ErrNotHello
		}
		return "", nil
	}
	return "", nil
}

// normalize checks a host name (ValidServerName) and lower-cases it.
func normalize(name []byte) (string, error) {
	if !ValidServerName(string(name)) {
		return "", ErrBadServerName
	}
	return strings.TrimSuffix(strings.ToLower(string(name)), "."), nil
}

// parser reads big-endian fields; past the end it sets bad and yields zeros.
type parser struct {
	b   []byte
	bad bool
}

func (p *parser) u8() int {
	if len(p.b) < 1 {
		p.bad = true
		return 0
	}
	v := int(p.b[0])
	p.b = p.b[1:]
	return v
}

func (p *parser) u16() int {
	if len(p.b) < 2 {
		p.bad = true
		p.b = nil
		return 0
	}
	v := int(binary.BigEndian.Uint16(p.b))
	p.b = p.b[2:]
	return v
}

func (p *parser) bytes(n int) []byte {
	if n > len(p.b) {
		p.bad = true
		p.b = nil
		return nil
	}
	v := p.b[:n]
	p.b = p.b[n:]
	return v
}

func (p *parser) skip(n int) { p.bytes(n) }

// Match reports whether host matches pattern: equal, or for "*.example.com"
// any name ending in ".example.com" (one label or more in front). Both are
// compared lower-case.
func Match(pattern, host string) bool {
	if suffix, ok := strings.CutPrefix(pattern, "*"); ok {
		return len(host) > len(suffix) && strings.HasSuffix(host, suffix)
	}
	return pattern == host
}
