// Package proxyproto is l4lb's thin layer over github.com/pires/go-proxyproto:
// the PROXY protocol v2 headers l4lb sends to targets (with its TLVs and a
// CRC32C), the LOCAL header of health checks, and reading a header from a
// trusted upstream without reading a byte past it, so the connection stays a
// plain *net.TCPConn that splices.
//
//	hdr, _ := proxyproto.V2(false, client, listenerAddr, proxyproto.TLVs{FlowID: 42})
//	target.Write(hdr) // then splice as usual
package proxyproto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/netip"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
)

// TypeAWS is the AWS-style TLV type; its first value byte is a subtype.
const (
	TypeAWS          = pp.PP2Type(0xEA)
	AWSSubtypeVPCEID = 0x01
)

// TLVs are the optional TLVs of a header l4lb sends.
type TLVs struct {
	FlowID     uint64 // PP2_TYPE_UNIQUE_ID, always sent
	EndpointID string // the 0xEA endpoint-ID TLV, when not empty
	SSL        *SSL   // a TLS listener's terminated session, or nil
}

// SSL describes the client's TLS session on a TLS listener. It is sent as
// PP2_TYPE_SSL (with the client-SSL flag, verify 0, and the version and
// cipher sub-TLVs), PP2_TYPE_AUTHORITY (the SNI) and PP2_TYPE_ALPN, the last
// two when not empty.
type SSL struct {
	Version string // "TLSv1.3", as OpenSSL names versions
	Cipher  string // the suite's IANA name
	SNI     string
	ALPN    string
}

// ssl is the value of a PP2_TYPE_SSL TLV: client flags, verify result,
// then sub-TLVs (PROXY protocol spec, 2.2.5).
func (s *SSL) value() []byte {
	v := []byte{tlvparse.PP2_BITFIELD_CLIENT_SSL, 0, 0, 0, 0}
	for _, sub := range []struct {
		t pp.PP2Type
		v string
	}{{pp.PP2_SUBTYPE_SSL_VERSION, s.Version}, {pp.PP2_SUBTYPE_SSL_CIPHER, s.Cipher}} {
		if sub.v == "" {
			continue
		}
		v = append(v, byte(sub.t))
		v = binary.BigEndian.AppendUint16(v, uint16(len(sub.v)))
		v = append(v, sub.v...)
	}
	return v
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// MaxTLVValue bounds each value l4lb writes into a header: a header is
// read whole by the target before its first byte of payload, and what a
// client chose (the SNI, the ALPN protocol) must not make it large. Every
// value fits: an endpoint ID and an ALPN protocol name are at most 255
// bytes (RFC 7301), an SNI at most 253.
const MaxTLVValue = 255

// ErrTLVTooLong refuses a header with a value over MaxTLVValue.
var ErrTLVTooLong = errors.New("proxyproto: a TLV value is longer than 255 bytes")

// tooLong reports whether any value of t is over MaxTLVValue.
func (t *TLVs) tooLong() bool {
	if len(t.EndpointID) > MaxTLVValue {
		return true
	}
	if s := t.SSL; s != nil {
		for _, v := range [...]string{s.Version, s.Cipher, s.SNI, s.ALPN} {
			if len(v) > MaxTLVValue {
				return true
			}
		}
	}
	return false
}

// V2 builds a PROXY v2 PROXY-command header for a flow from src (the client)
// to dst (the listener address it reached), over UDP or TCP, with a unique-ID
// TLV, the endpoint TLV when set, and a CRC32C TLV over the whole header.
// A value over MaxTLVValue is refused (ErrTLVTooLong).
func V2(udp bool, src, dst netip.AddrPort, t TLVs) ([]byte, error) {
	if t.tooLong() {
		return nil, ErrTLVTooLong
	}
	var s, d net.Addr
	if udp {
		s, d = net.UDPAddrFromAddrPort(src), net.UDPAddrFromAddrPort(dst)
	} else {
		s, d = net.TCPAddrFromAddrPort(src), net.TCPAddrFromAddrPort(dst)
	}
	if src.Addr().Is4() != dst.Addr().Is4() {
		// Mixed families: say both in IPv6, as the spec allows.
		s, d = mapped(s, udp), mapped(d, udp)
	}
	h := pp.HeaderProxyFromAddrs(2, s, d)
	id := binary.BigEndian.AppendUint64(nil, t.FlowID)
	tlvs := []pp.TLV{{Type: pp.PP2_TYPE_UNIQUE_ID, Value: id}}
	if t.EndpointID != "" {
		tlvs = append(tlvs, pp.TLV{Type: TypeAWS, Value: append([]byte{AWSSubtypeVPCEID}, t.EndpointID...)})
	}
	if t.SSL != nil {
		if t.SSL.ALPN != "" {
			tlvs = append(tlvs, pp.TLV{Type: pp.PP2_TYPE_ALPN, Value: []byte(t.SSL.ALPN)})
		}
		if t.SSL.SNI != "" {
			tlvs = append(tlvs, pp.TLV{Type: pp.PP2_TYPE_AUTHORITY, Value: []byte(t.SSL.SNI)})
		}
		tlvs = append(tlvs, pp.TLV{Type: pp.PP2_TYPE_SSL, Value: t.SSL.value()})
	}
	// The checksum goes last, computed with its own value zeroed
	// (PROXY protocol spec, 2.2.5).
	tlvs = append(tlvs, pp.TLV{Type: pp.PP2_TYPE_CRC32C, Value: make([]byte, 4)})
	if err := h.SetTLVs(tlvs); err != nil {
		return nil, err
	}
	b, err := h.Format()
	if err != nil {
		return nil, err
	}
	binary.BigEndian.PutUint32(b[len(b)-4:], crc32.Checksum(b, castagnoli))
	return b, nil
}

func mapped(a net.Addr, udp bool) net.Addr {
	if udp {
		u := a.(*net.UDPAddr)
		return &net.UDPAddr{IP: u.IP.To16(), Port: u.Port}
	}
	t := a.(*net.TCPAddr)
	return &net.TCPAddr{IP: t.IP.To16(), Port: t.Port}
}

// Local is the v2 LOCAL header health checks send: "this connection is the
// proxy's own".
func Local() []byte {
	h := &pp.Header{Version: 2, Command: pp.LOCAL, TransportProtocol: pp.UNSPEC}
	b, _ := h.Format()
	return b
}

// HasSignature reports whether b starts like a PROXY header (v1 or v2), or
// could still turn into one (a prefix of a signature).
func HasSignature(b []byte) bool {
	for _, sig := range [][]byte{pp.SIGV2, pp.SIGV1} {
		n := min(len(b), len(sig))
		if n > 0 && bytes.Equal(b[:n], sig[:n]) {
			return true
		}
	}
	return false
}

// ErrNoHeader is returned by ReadHeader when the connection does not start
// with a PROXY header.
var ErrNoHeader = errors.New("proxyproto: no PROXY header")

// Policy is the explicit go-proxyproto connection policy l4lb applies to a
// listener's proxy_protocol_accept: trusted upstreams must send a header
// (REQUIRE); anyone else's header is refused (REJECT).
func Policy(trusted func(netip.Addr) bool) pp.ConnPolicyFunc {
	return func(o pp.ConnPolicyOptions) (pp.Policy, error) {
		if ta, ok := o.Upstream.(*net.TCPAddr); ok && trusted(ta.AddrPort().Addr().Unmap()) {
			return pp.REQUIRE, nil
		}
		return pp.REJECT, nil
	}
}

// ReadHeader reads a v1 or v2 header from r, consuming exactly the header and
// nothing after it, within deadline (set on conn). It returns the header's
// source and destination; a LOCAL header returns invalid addresses.
func ReadHeader(conn net.Conn, r io.Reader, deadline time.Time) (src, dst netip.AddrPort, err error) {
	conn.SetReadDeadline(deadline)
	defer conn.SetReadDeadline(time.Time{})
	raw, err := readRaw(r)
	if err != nil {
		return src, dst, err
	}
	h, err := pp.Read(bufio.NewReaderSize(bytes.NewReader(raw), len(raw)+16))
	if err != nil {
		return src, dst, fmt.Errorf("proxyproto: %w", err)
	}
	if v, ok := h.SourceAddr.(*net.TCPAddr); ok {
		src = v.AddrPort()
	}
	if v, ok := h.DestinationAddr.(*net.TCPAddr); ok {
		dst = v.AddrPort()
	}
	return netip.AddrPortFrom(src.Addr().Unmap(), src.Port()), netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port()), nil
}

// readRaw reads one header's bytes: v2's fixed 16 bytes and its stated
// length, or v1's line up to CRLF (at most 107 bytes), one byte at a time so
// that nothing past the header is taken.
func readRaw(r io.Reader) ([]byte, error) {
	first := make([]byte, 6)
	if _, err := io.ReadFull(r, first); err != nil {
		return nil, fmt.Errorf("proxyproto: reading header: %w", err)
	}
	if bytes.HasPrefix(first, pp.SIGV1) {
		line := first
		var c [1]byte
		for len(line) < 107 {
			if _, err := io.ReadFull(r, c[:]); err != nil {
				return nil, fmt.Errorf("proxyproto: reading v1 header: %w", err)
			}
			line = append(line, c[0])
			if bytes.HasSuffix(line, []byte("\r\n")) {
				return line, nil
			}
		}
		return nil, errors.New("proxyproto: v1 header longer than 107 bytes")
	}
	if !bytes.Equal(first, pp.SIGV2[:6]) {
		return nil, ErrNoHeader
	}
	fixed := make([]byte, 16)
	copy(fixed, first)
	if _, err := io.ReadFull(r, fixed[6:]); err != nil {
		return nil, fmt.Errorf("proxyproto: reading v2 header: %w", err)
	}
	if !bytes.Equal(fixed[:12], pp.SIGV2) {
		return nil, ErrNoHeader
	}
	n := binary.BigEndian.Uint16(fixed[14:16])
	if n > pp.MaxV2HeaderSize {
		return nil, fmt.Errorf("proxyproto: v2 header of %d bytes is too long", n)
	}
	rest := make([]byte, n)
	if _, err := io.ReadFull(r, rest); err != nil {
		return nil, fmt.Errorf("proxyproto: reading v2 header: %w", err)
	}
	return append(fixed, rest...), nil
}

// IsHeader reports whether b, the first bytes a client sent, are a PROXY
// header: "PROXY " for v1 or the 12-byte v2 signature. Unlike HasSignature it
// needs the whole signature, so a protocol that merely starts with "PR" (the
// HTTP/2 preface does) is never mistaken for one.
func IsHeader(b []byte) bool {
	return bytes.HasPrefix(b, []byte("PROXY ")) || bytes.HasPrefix(b, pp.SIGV2)
}

// SignatureLen is how many first bytes decide whether a stream starts with a
// PROXY header: the length of the v2 signature, the longer of the two.
const SignatureLen = 12

// Verdict is what a stream's first bytes say about a PROXY header.
type Verdict uint8

const (
	NotHeader Verdict = iota // they cannot start a header
	Header                   // they start one ("PROXY " or the v2 signature)
	Undecided                // a strict prefix of a signature: more bytes decide
)

// Classify looks at the first bytes of a stream, however few arrived, so a
// header split across reads ("PR", then "OXY TCP4 ...") is caught: a prefix
// of a signature is Undecided until the bytes that follow settle it.
func Classify(b []byte) Verdict {
	if IsHeader(b) {
		return Header
	}
	for _, sig := range [...][]byte{[]byte("PROXY "), pp.SIGV2} {
		if len(b) < len(sig) && bytes.Equal(b, sig[:len(b)]) {
			return Undecided
		}
	}
	return NotHeader
}
