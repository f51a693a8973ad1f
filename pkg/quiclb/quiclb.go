// Package quiclb reads what a load balancer needs from a QUIC v1 packet
// (RFC 9000, RFC 8999's invariants) to route it by connection ID, with the
// server ID layout of the QUIC-LB draft's plaintext mode
// (draft-ietf-quic-load-balancers):
//
//	octet 0       3 config-rotation bits (7: unroutable) and 5 bits the target's own
//	octets 1..8   the target's server ID, 8 bytes
//	the rest      the target's own, up to the connection ID length
//
// A packet with a long header names its destination connection ID's
// length; one with a short header does not, so the listener's
// connection_id_length says it. Classify never allocates: it runs on every
// datagram.
package quiclb

import (
	"encoding/binary"
	"fmt"
)

// Version1 is QUIC version 1 (RFC 9000), the only one routed: NLB does no
// version negotiation.
const Version1 = 0x00000001

// ServerIDLen is the length of a server ID, at octets 1..8 of a server's
// connection IDs.
const ServerIDLen = 8

// Connection ID lengths a listener may use (QUIC allows 0 to 20; a server
// ID needs 1 + ServerIDLen).
const (
	MinConnIDLen = 1 + ServerIDLen
	MaxConnIDLen = 20
)

// Unroutable is the config-rotation codepoint of a connection ID that
// carries no server ID.
const Unroutable = 7

// Route says how a packet is to be routed; its names are the route label of
// l4lb_quic_packets_total.
type Route uint8

const (
	// ByHash: the flow hash and the Maglev table, as for UDP: an Initial
	// or 0-RTT packet, whose destination ID the client chose, or a
	// Handshake packet without a server ID.
	ByHash Route = iota
	// ByCID: the server ID in the destination connection ID.
	ByCID
	// UnknownCID: a short header whose ID is unroutable (codepoint 7), or
	// names no target (the caller decides that); routed as a 5-tuple flow.
	UnknownCID
	// BadVersion: a long header of a version other than 1; dropped.
	BadVersion
	// Short: too short to hold its connection ID, or no QUIC packet at
	// all; dropped.
	Short
	// NumRoutes is how many routes there are.
	NumRoutes = iota
)

var routeNames = [...]string{ByHash: "hash", ByCID: "cid", UnknownCID: "unknown_cid", BadVersion: "bad_version", Short: "short"}

func (r Route) String() string { return routeNames[r] }

// Routes lists every Route, in label order.
var Routes = []Route{ByHash, ByCID, UnknownCID, BadVersion, Short}

// Long header packet types (RFC 9000 section 17.2).
const (
	TypeInitial   = 0
	TypeZeroRTT   = 1
	TypeHandshake = 2
	TypeRetry     = 3
)

// Packet is what Classify read of one datagram's first packet.
type Packet struct {
	Route    Route
	Long     bool
	Type     uint8  // long header only
	Version  uint32 // long header only
	ServerID uint64 // Route ByCID: the ID to look up
	DCIDLen  int
}

// Classify reads the first packet of datagram b; connIDLen is the length of
// the connection IDs the listener's targets issue (a short header's
// destination ID). A ByCID packet's server ID may still name no target:
// the caller then treats it as UnknownCID.
func Classify(b []byte, connIDLen int) Packet {
	if len(b) == 0 {
		return Packet{Route: Short}
	}
	if b[0]&0x80 == 0 { // short header: 1 octet, then the destination ID
		if len(b) < 1+connIDLen || connIDLen < MinConnIDLen {
			return Packet{Route: Short}
		}
		p := Packet{DCIDLen: connIDLen}
		id, ok := ServerID(b[1 : 1+connIDLen])
		if !ok {
			p.Route = UnknownCID
			return p
		}
		p.Route, p.ServerID = ByCID, id
		return p
	}
	// Long header: 1 octet, version, DCID length, DCID, SCID length, SCID.
	if len(b) < 6 {
		return Packet{Route: Short, Long: true}
	}
	p := Packet{Long: true, Version: binary.BigEndian.Uint32(b[1:5]), Type: b[0] >> 4 & 3}
	if p.Version != Version1 {
		p.Route = BadVersion
		return p
	}
	p.DCIDLen = int(b[5])
	if p.DCIDLen > MaxConnIDLen || len(b) < 6+p.DCIDLen+1 {
		p.Route = Short
		return p
	}
	switch p.Type {
	case TypeHandshake:
		// The client has the server's ID by now; one that carries none
		// goes by the flow, which the Initial pinned.
		if id, ok := ServerID(b[6 : 6+p.DCIDLen]); ok {
			p.Route, p.ServerID = ByCID, id
			return p
		}
		p.Route = ByHash
	default: // Initial, 0-RTT (client-chosen IDs), Retry (never from a client)
		p.Route = ByHash
	}
	return p
}

// ServerID reads the server ID of a connection ID in the plaintext layout,
// or says it has none: too short, or codepoint 7.
func ServerID(cid []byte) (uint64, bool) {
	if len(cid) < MinConnIDLen || cid[0]>>5 == Unroutable {
		return 0, false
	}
	return binary.BigEndian.Uint64(cid[1 : 1+ServerIDLen]), true
}

// ConnID is a connection ID of length n (MinConnIDLen to MaxConnIDLen)
// that carries server ID id, with config-rotation codepoint 0: what a
// target's connection ID generator issues. random fills the target's own
// bits (its first byte's low 5 bits, and octets 9 on); it needs n-8 bytes.
func ConnID(id uint64, n int, random []byte) []byte {
	b := make([]byte, n)
	b[0] = random[0] & 0x1f
	binary.BigEndian.PutUint64(b[1:], id)
	copy(b[MinConnIDLen:], random[1:])
	return b
}

// ParseServerID reads a server ID as NLB writes it: "0x" and 16 lowercase
// hex digits.
func ParseServerID(s string) (uint64, error) {
	if len(s) != 18 || s[:2] != "0x" {
		return 0, fmt.Errorf("want 0x and 16 lowercase hex digits, got %q", s)
	}
	var id uint64
	for _, c := range s[2:] {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = byte(c - '0')
		case c >= 'a' && c <= 'f':
			d = byte(c-'a') + 10
		default:
			return 0, fmt.Errorf("want 0x and 16 lowercase hex digits, got %q", s)
		}
		id = id<<4 | uint64(d)
	}
	return id, nil
}

// FormatServerID writes a server ID as NLB does.
func FormatServerID(id uint64) string { return fmt.Sprintf("0x%016x", id) }
