package proxyproto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
)

func TestV2RoundTrip(t *testing.T) {
	src := netip.MustParseAddrPort("198.18.0.7:40000")
	dst := netip.MustParseAddrPort("10.0.1.5:443")
	b, err := V2(false, src, dst, TLVs{FlowID: 0x0102030405060708, EndpointID: "vpce-0123456789"})
	if err != nil {
		t.Fatal(err)
	}
	h, err := pp.Read(bufio.NewReader(bytes.NewReader(b)))
	if err != nil {
		t.Fatal(err)
	}
	s, d, _ := h.TCPAddrs()
	if s.AddrPort() != src || d.AddrPort() != dst || h.Command != pp.PROXY {
		t.Fatalf("header says %v -> %v (%v)", s, d, h.Command)
	}
	tlvs, err := h.TLVs()
	if err != nil {
		t.Fatal(err)
	}
	found := map[pp.PP2Type][]byte{}
	for _, tl := range tlvs {
		found[tl.Type] = tl.Value
	}
	if binary.BigEndian.Uint64(found[pp.PP2_TYPE_UNIQUE_ID]) != 0x0102030405060708 {
		t.Errorf("unique id TLV = %x", found[pp.PP2_TYPE_UNIQUE_ID])
	}
	if v := found[TypeAWS]; len(v) < 2 || v[0] != AWSSubtypeVPCEID || string(v[1:]) != "vpce-0123456789" {
		t.Errorf("AWS TLV = %q", v)
	}
	// The CRC32C covers the header with its own field zeroed.
	crc := found[pp.PP2_TYPE_CRC32C]
	zeroed := append([]byte(nil), b...)
	copy(zeroed[len(zeroed)-4:], []byte{0, 0, 0, 0})
	if binary.BigEndian.Uint32(crc) != crc32.Checksum(zeroed, crc32.MakeTable(crc32.Castagnoli)) {
		t.Error("CRC32C TLV does not match the header")
	}
}

func TestV2UDPAndMixedFamilies(t *testing.T) {
	b, err := V2(true, netip.MustParseAddrPort("[2001:db8::1]:53"), netip.MustParseAddrPort("127.0.0.1:53"), TLVs{FlowID: 1})
	if err != nil {
		t.Fatal(err)
	}
	h, payload, err := pp.ParseUDPDatagram(append(b, "query"...))
	if err != nil || string(payload) != "query" || h.TransportProtocol != pp.UDPv6 {
		t.Fatalf("UDP header: %v %q %v", h, payload, err)
	}
}

// pipeConn gives ReadHeader a net.Conn whose deadlines work.
func pipeConn(t *testing.T, data []byte) (net.Conn, func() []byte) {
	a, b := net.Pipe()
	go func() { b.Write(data); b.Close() }()
	t.Cleanup(func() { a.Close() })
	return a, func() []byte {
		rest := new(bytes.Buffer)
		rest.ReadFrom(a)
		return rest.Bytes()
	}
}

func TestReadHeaderConsumesExactlyTheHeader(t *testing.T) {
	src := netip.MustParseAddrPort("192.0.2.9:1234")
	dst := netip.MustParseAddrPort("127.0.0.1:80")
	v2, _ := V2(false, src, dst, TLVs{FlowID: 7})
	v1 := []byte("PROXY TCP4 192.0.2.9 127.0.0.1 1234 80\r\n")
	for name, hdr := range map[string][]byte{"v1": v1, "v2": v2} {
		c, rest := pipeConn(t, append(append([]byte(nil), hdr...), "GET / HTTP/1.0\r\n\r\n"...))
		s, d, err := ReadHeader(c, c, time.Now().Add(time.Second))
		if err != nil || s != src || d != dst {
			t.Fatalf("%s: %v %v %v", name, s, d, err)
		}
		if got := string(rest()); got != "GET / HTTP/1.0\r\n\r\n" {
			t.Fatalf("%s: after the header the stream holds %q", name, got)
		}
	}
}

func TestReadHeaderRefusesJunk(t *testing.T) {
	for name, data := range map[string][]byte{
		"no header":      []byte("GET / HTTP/1.1\r\n\r\n"),
		"bad v1":         []byte("PROXY TCP9 nonsense\r\n"),
		"endless v1":     append([]byte("PROXY "), bytes.Repeat([]byte("x"), 200)...),
		"short v2":       pp.SIGV2,
		"v2 bad version": append(append([]byte(nil), pp.SIGV2...), 0x31, 0x11, 0, 0),
	} {
		c, _ := pipeConn(t, data)
		if _, _, err := ReadHeader(c, c, time.Now().Add(time.Second)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestHasSignature(t *testing.T) {
	v2, _ := V2(false, netip.MustParseAddrPort("1.2.3.4:5"), netip.MustParseAddrPort("5.6.7.8:9"), TLVs{})
	for _, b := range [][]byte{v2, v2[:3], []byte("PROXY TCP4"), []byte("PRO")} {
		if !HasSignature(b) {
			t.Errorf("%q: no signature found", b)
		}
	}
	for _, b := range [][]byte{[]byte("GET /"), {0x16, 0x03, 0x01}, nil} {
		if HasSignature(b) {
			t.Errorf("%q: signature found", b)
		}
	}
}

func TestPolicy(t *testing.T) {
	trusted := func(a netip.Addr) bool { return a == netip.MustParseAddr("10.0.0.1") }
	p := Policy(trusted)
	if got, _ := p(pp.ConnPolicyOptions{Upstream: &net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 1}}); got != pp.REQUIRE {
		t.Errorf("trusted upstream: %v", got)
	}
	if got, _ := p(pp.ConnPolicyOptions{Upstream: &net.TCPAddr{IP: net.ParseIP("10.0.0.2"), Port: 1}}); got != pp.REJECT {
		t.Errorf("untrusted upstream: %v", got)
	}
}

// FuzzReadHeader: any bytes are read as a header or refused, never a panic,
// and an accepted header never takes more bytes than the input holds.
func FuzzReadHeader(f *testing.F) {
	v2, _ := V2(false, netip.MustParseAddrPort("1.2.3.4:5"), netip.MustParseAddrPort("5.6.7.8:9"), TLVs{FlowID: 3, EndpointID: "e"})
	f.Add(v2)
	f.Add([]byte("PROXY TCP4 192.0.2.9 127.0.0.1 1234 80\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add(Local())
	// A header is accepted only after a signature, consumes exactly
	// itself, reads the same from its own bytes, and its addresses survive
	// being written as v2 and read back. Anything else is refused, never a
	// panic.
	f.Fuzz(func(t *testing.T, data []byte) {
		c, _ := net.Pipe()
		defer c.Close()
		read := func(b []byte) (netip.AddrPort, netip.AddrPort, int, error) {
			r := bytes.NewReader(b)
			src, dst, err := ReadHeader(c, r, time.Now().Add(time.Second))
			return src, dst, len(b) - r.Len(), err
		}
		src, dst, n, err := read(data)
		if err != nil {
			return
		}
		if !HasSignature(data) {
			t.Fatalf("accepted %q, which has no PROXY signature", data)
		}
		if s2, d2, n2, err := read(data[:n]); err != nil || s2 != src || d2 != dst || n2 != n {
			t.Fatalf("the header's own %d bytes read as %v %v (%d bytes), %v; the whole input as %v %v", n, s2, d2, n2, err, src, dst)
		}
		if !src.IsValid() || !dst.IsValid() || src.Addr().Is4() != dst.Addr().Is4() {
			return
		}
		enc, err := V2(false, src, dst, TLVs{})
		if err != nil {
			t.Fatalf("cannot write back %v %v: %v", src, dst, err)
		}
		if s3, d3, _, err := read(enc); err != nil || s3 != src || d3 != dst {
			t.Fatalf("%v %v written as v2 read back as %v %v, %v", src, dst, s3, d3, err)
		}
	})
}

func TestClassify(t *testing.T) {
	v2 := "\r\n\r\n\x00\r\nQUIT\n"
	for _, c := range []struct {
		in   string
		want Verdict
	}{
		{"", Undecided},
		{"P", Undecided},
		{"PR", Undecided},
		{"PROXY", Undecided},
		{"PROXY ", Header},
		{"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", Header},
		{"PRI * HTTP/2.0\r\n", NotHeader},
		{"GET / HTTP/1.1\r\n", NotHeader},
		{v2[:1], Undecided},
		{v2[:11], Undecided},
		{v2, Header},
		{v2 + "\x21", Header},
		{"\r\n\r\nX", NotHeader},
	} {
		if got := Classify([]byte(c.in)); got != c.want {
			t.Errorf("Classify(%q) = %d, want %d", c.in, got, c.want)
		}
	}
}

// A TLS listener's header carries the session: PP2_TYPE_SSL with the
// client-SSL flag, verify 0, version and cipher, and the SNI and ALPN in
// their own TLVs; a parser other than ours reads them back.
func TestV2SSLTLVs(t *testing.T) {
	ssl := &SSL{Version: "TLSv1.3", Cipher: "TLS_AES_128_GCM_SHA256", SNI: "api.example.com", ALPN: "h2"}
	b, err := V2(false, netip.MustParseAddrPort("198.18.0.7:40000"), netip.MustParseAddrPort("10.0.1.5:443"), TLVs{FlowID: 9, SSL: ssl})
	if err != nil {
		t.Fatal(err)
	}
	h, err := pp.Read(bufio.NewReader(bytes.NewReader(b)))
	if err != nil {
		t.Fatal(err)
	}
	tlvs, err := h.TLVs()
	if err != nil {
		t.Fatal(err)
	}
	var got SSL
	for _, tl := range tlvs {
		switch tl.Type {
		case pp.PP2_TYPE_ALPN:
			got.ALPN = string(tl.Value)
		case pp.PP2_TYPE_AUTHORITY:
			got.SNI = string(tl.Value)
		case pp.PP2_TYPE_SSL:
			s, err := tlvparse.SSL(tl)
			if err != nil {
				t.Fatal(err)
			}
			if !s.ClientSSL() || !s.Verified() {
				t.Errorf("SSL TLV flags: client %v verified %v", s.ClientSSL(), s.Verified())
			}
			got.Version, _ = s.SSLVersion()
			for _, sub := range s.TLV {
				if sub.Type == pp.PP2_SUBTYPE_SSL_CIPHER {
					got.Cipher = string(sub.Value)
				}
			}
		}
	}
	if got != *ssl {
		t.Fatalf("read back %+v, want %+v", got, *ssl)
	}
}

// No value over MaxTLVValue is written: a 60 KB SNI or ALPN cannot make a
// 60 KB header. Values at the bound are.
func TestV2BoundsTLVs(t *testing.T) {
	src, dst := netip.MustParseAddrPort("192.0.2.1:1000"), netip.MustParseAddrPort("192.0.2.2:443")
	big := strings.Repeat("a", 60000)
	for name, tl := range map[string]TLVs{
		"sni":      {SSL: &SSL{Version: "TLSv1.3", SNI: big}},
		"alpn":     {SSL: &SSL{Version: "TLSv1.3", ALPN: big}},
		"cipher":   {SSL: &SSL{Cipher: big}},
		"endpoint": {EndpointID: big},
	} {
		if hdr, err := V2(false, src, dst, tl); !errors.Is(err, ErrTLVTooLong) {
			t.Errorf("%s of 60000 bytes: a %d-byte header, %v", name, len(hdr), err)
		}
	}
	at := strings.Repeat("b", MaxTLVValue)
	hdr, err := V2(false, src, dst, TLVs{EndpointID: at, SSL: &SSL{Version: "TLSv1.3", SNI: at[:253], ALPN: at}})
	if err != nil {
		t.Fatalf("values at the bound: %v", err)
	}
	if len(hdr) > 1024 {
		t.Fatalf("a %d-byte header", len(hdr))
	}
}
