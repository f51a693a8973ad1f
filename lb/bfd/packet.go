// Package bfd runs Bidirectional Forwarding Detection (RFC 5880) sessions
// over single IP hops (RFC 5881), in asynchronous mode, beside the BGP
// sessions to the routers. A router that runs BFD with an l4lb node learns
// that the node is gone within the detection time (three missed packets,
// a few hundred milliseconds) rather than the BGP hold time (seconds), and
// stops sending it flows that soon.
//
// Only what a router peering with l4lb uses is built: asynchronous mode
// with control packets, Keyed SHA1 and Meticulous Keyed SHA1
// authentication (RFC 5880 section 6.7.4), no echo function and no demand
// mode. A packet that asks for what is not built is discarded, as RFC 5880
// section 6.8.6 says.
package bfd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// State is a session's state (RFC 5880 section 4.1).
type State uint8

const (
	AdminDown State = iota
	Down
	Init
	Up
)

var stateNames = [...]string{"admin-down", "down", "init", "up"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Diag says why a session last left Up (RFC 5880 section 4.1).
type Diag uint8

const (
	DiagNone                  Diag = iota
	DiagTimeExpired                // control detection time expired
	DiagEchoFailed                 // echo function failed
	DiagNeighborDown               // neighbor signaled session down
	DiagForwardingReset            // forwarding plane reset
	DiagPathDown                   // path down
	DiagConcatPathDown             // concatenated path down
	DiagAdminDown                  // administratively down
	DiagReverseConcatPathDown      // reverse concatenated path down
)

var diagNames = [...]string{
	"", "control detection time expired", "echo function failed", "neighbor signaled session down",
	"forwarding plane reset", "path down", "concatenated path down", "administratively down",
	"reverse concatenated path down",
}

func (d Diag) String() string {
	if int(d) < len(diagNames) {
		return diagNames[d]
	}
	return fmt.Sprintf("diagnostic %d", uint8(d))
}

const (
	version   = 1
	headerLen = 24 // a control packet without authentication
)

// Packet is a BFD control packet. Intervals are in microseconds, as on the
// wire.
type Packet struct {
	Diag  Diag
	State State
	// Poll asks the peer to answer with Final at once (a parameter change).
	Poll, Final bool
	// ControlPlaneIndependent, Demand and Multipoint are flags this
	// package never sets; Parse refuses Multipoint.
	ControlPlaneIndependent, Demand, Multipoint    bool
	DetectMult                                     uint8
	MyDiscriminator, YourDiscriminator             uint32
	DesiredMinTx, RequiredMinRx, RequiredMinEchoRx uint32
	// Auth is the authentication section's fields, when the A bit is set
	// (the digest is checked by the session, on the raw packet).
	Auth authSection
}

// Parse errors: each makes a received packet one to discard.
var (
	ErrShort         = errors.New("bfd: packet too short")
	ErrVersion       = errors.New("bfd: not version 1")
	ErrLength        = errors.New("bfd: length field does not fit the packet")
	ErrDetectMult    = errors.New("bfd: detect multiplier is zero")
	ErrMultipoint    = errors.New("bfd: multipoint bit set")
	ErrDiscriminator = errors.New("bfd: missing discriminator")
	ErrAuth          = errors.New("bfd: an authentication type that is not built (simple password, MD5)")
)

// Parse reads a control packet and checks it as RFC 5880 section 6.8.6
// says a receiver must before the packet reaches a session.
func Parse(b []byte) (Packet, error) {
	if len(b) < headerLen {
		return Packet{}, ErrShort
	}
	if b[0]>>5 != version {
		return Packet{}, ErrVersion
	}
	p := Packet{
		Diag:                    Diag(b[0] & 0x1f),
		State:                   State(b[1] >> 6),
		Poll:                    b[1]&0x20 != 0,
		Final:                   b[1]&0x10 != 0,
		ControlPlaneIndependent: b[1]&0x08 != 0,
		Demand:                  b[1]&0x02 != 0,
		Multipoint:              b[1]&0x01 != 0,
		DetectMult:              b[2],
		MyDiscriminator:         binary.BigEndian.Uint32(b[4:]),
		YourDiscriminator:       binary.BigEndian.Uint32(b[8:]),
		DesiredMinTx:            binary.BigEndian.Uint32(b[12:]),
		RequiredMinRx:           binary.BigEndian.Uint32(b[16:]),
		RequiredMinEchoRx:       binary.BigEndian.Uint32(b[20:]),
	}
	auth := b[1]&0x04 != 0
	switch n := int(b[3]); {
	case n < headerLen, auth && n < headerLen+2, n > len(b):
		return Packet{}, ErrLength
	case auth && AuthType(b[headerLen]) != AuthKeyedSHA1 && AuthType(b[headerLen]) != AuthMeticulousKeyedSHA1:
		return Packet{}, ErrAuth
	case auth && (n != headerLen+sha1AuthLen || b[headerLen+1] != sha1AuthLen):
		return Packet{}, ErrLength
	case p.DetectMult == 0:
		return Packet{}, ErrDetectMult
	case p.Multipoint:
		return Packet{}, ErrMultipoint
	case p.MyDiscriminator == 0, p.YourDiscriminator == 0 && p.State != Down && p.State != AdminDown:
		return Packet{}, ErrDiscriminator
	}
	if auth {
		p.Auth = authSection{typ: AuthType(b[headerLen]), keyID: b[headerLen+2], seq: binary.BigEndian.Uint32(b[headerLen+4:])}
	}
	return p, nil
}

// Append appends p, as sent on the wire, to b, without authentication.
func (p *Packet) Append(b []byte) []byte { return p.appendAuth(b, nil, 0) }

// appendAuth appends p to b, authenticated by a with sequence number seq
// when a is enabled.
func (p *Packet) appendAuth(b []byte, a *Auth, seq uint32) []byte {
	flags := byte(p.State) << 6
	for _, f := range []struct {
		set bool
		bit byte
	}{{p.Poll, 0x20}, {p.Final, 0x10}, {p.ControlPlaneIndependent, 0x08}, {p.Demand, 0x02}, {p.Multipoint, 0x01}} {
		if f.set {
			flags |= f.bit
		}
	}
	length := byte(headerLen)
	if a.Enabled() {
		flags |= 0x04
		length += sha1AuthLen
	}
	b = append(b, version<<5|byte(p.Diag)&0x1f, flags, p.DetectMult, length)
	for _, v := range []uint32{p.MyDiscriminator, p.YourDiscriminator, p.DesiredMinTx, p.RequiredMinRx, p.RequiredMinEchoRx} {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	if a.Enabled() {
		b = a.appendAuth(b, seq)
	}
	return b
}
