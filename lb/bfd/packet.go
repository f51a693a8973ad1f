// Package bfd runs Bidirectional Forwarding Detection (RFC 5880) sessions
// over single IP hops (RFC 5881), in asynchronous mode, beside the BGP
// sessions to the routers. A router that runs BFD with an l4lb node learns
// that the node is gone within the detection time (three missed packets,
// a few hundred milliseconds) rather than the BGP hold time (seconds), and
// stops sending it flows that soon.
//
// Only what a router peering with l4lb uses is built: asynchronous mode
// with control packets, no echo function, no demand mode and no
// authentication. A packet that asks for any of them is discarded, as
// RFC 5880 section 6.8.6 says.
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
}

// Parse errors: each makes a received packet one to discard.
var (
	ErrShort         = errors.New("bfd: packet too short")
	ErrVersion       = errors.New("bfd: not version 1")
	ErrLength        = errors.New("bfd: length field does not fit the packet")
	ErrDetectMult    = errors.New("bfd: detect multiplier is zero")
	ErrMultipoint    = errors.New("bfd: multipoint bit set")
	ErrDiscriminator = errors.New("bfd: missing discriminator")
	ErrAuth          = errors.New("bfd: authentication is not supported")
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
	case auth:
		return Packet{}, ErrAuth
	case p.DetectMult == 0:
		return Packet{}, ErrDetectMult
	case p.Multipoint:
		return Packet{}, ErrMultipoint
	case p.MyDiscriminator == 0, p.YourDiscriminator == 0 && p.State != Down && p.State != AdminDown:
		return Packet{}, ErrDiscriminator
	}
	return p, nil
}

// Append appends p, as sent on the wire, to b.
func (p *Packet) Append(b []byte) []byte {
	flags := byte(p.State) << 6
	for _, f := range []struct {
		set bool
		bit byte
	}{{p.Poll, 0x20}, {p.Final, 0x10}, {p.ControlPlaneIndependent, 0x08}, {p.Demand, 0x02}, {p.Multipoint, 0x01}} {
		if f.set {
			flags |= f.bit
		}
	}
	b = append(b, version<<5|byte(p.Diag)&0x1f, flags, p.DetectMult, headerLen)
	for _, v := range []uint32{p.MyDiscriminator, p.YourDiscriminator, p.DesiredMinTx, p.RequiredMinRx, p.RequiredMinEchoRx} {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return b
}
