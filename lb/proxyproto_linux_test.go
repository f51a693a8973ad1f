package lb

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
	"github.com/l4lb/l4lb/pkg/proxyproto"
)

func withPPv2(_ *config.Listener, g *config.TargetGroup) { g.Attributes.ProxyProtocolV2 = true }

// dialFrom connects to addr from the loopback address src (not 127.0.0.1),
// so a target that reports 127.0.0.1 is provably wrong.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// A UDP target gets a PROXY v2 header in every datagram.
func TestProxyV2UDP(t *testing.T) {
	tc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := tc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			h, payload, err := pp.ParseUDPDatagram(buf[:n])
			if err != nil {
				tc.WriteToUDPAddrPort([]byte("no header: "+err.Error()), from)
				continue
			}
			s, _, _ := h.UDPAddrs()
			tc.WriteToUDPAddrPort([]byte(s.String()+" "+string(payload)), from)
		}
	}()
	cfg := udpConfig([]config.Target{{Address: tc.LocalAddr().(*net.UDPAddr).AddrPort(), Weight: 1}}, withPPv2)
	_, addr := startUDPServer(t, cfg, Options{})
	d := net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 9)}}
	c, err := d.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 5 {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "datagram %d", i)
		buf := make([]byte, 1500)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("%s datagram %d", c.LocalAddr(), i)
		if string(buf[:n]) != want {
			t.Fatalf("target replied %q, want %q", buf[:n], want)
		}
	}
}

// ppEcho is a target that reads the PROXY header, reports its source, then
// echoes (and counts nothing else: the rest is spliced to it).
func ppEcho(t *testing.T) netip.AddrPort {
	return serveTCP(t, func(c net.Conn) {
		src, _, err := proxyproto.ReadHeader(c, c, time.Now().Add(5*time.Second))
		if err != nil {
			return
		}
		fmt.Fprintf(c, "%-21s", src)
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
}

// After the header, bulk bytes still move by splice(2).
func TestProxyV2StillSplices(t *testing.T) {
	srv, addr := startServer(t, testConfig([]config.Target{{Address: ppEcho(t), Weight: 1}}, withPPv2), Options{})
	c := dialFrom(t, "127.0.0.10", addr)
	id := make([]byte, 21)
	c.Write([]byte("x"))
	if _, err := io.ReadFull(c, id); err != nil || !strings.HasPrefix(string(id), "127.0.0.10:") {
		t.Fatalf("target saw %q (%v)", id, err)
	}
	const size = 64 << 20
	go func() {
		io.Copy(c, io.LimitReader(rand.NewChaCha8([32]byte{5}), size))
		c.(*net.TCPConn).CloseWrite()
	}()
	n, _ := io.Copy(io.Discard, c)
	if n != size+1 {
		t.Fatalf("echoed %d bytes, want %d", n, size+1)
	}
	c.Close()
	waitFor(t, func() bool { return srv.ActiveFlows() == 0 })
	total, spliced := srv.MovedBytes()
	if float64(spliced) < 0.9*float64(total) {
		t.Fatalf("%d of %d bytes spliced after a PROXY header", spliced, total)
	}
}

// A trusted upstream's header makes its source the flow's client (for the
// onward header too); a malformed header from it, or any header from an
// untrusted client, closes that connection, is counted, and reaches nothing.
func TestProxyAccept(t *testing.T) {
	target := ppEcho(t)
	reg := prometheus.NewRegistry()
	cfg := testConfig([]config.Target{{Address: target, Weight: 1}}, func(l *config.Listener, g *config.TargetGroup) {
		g.Attributes.ProxyProtocolV2 = true
		l.ProxyProtocolAccept = []netip.Prefix{netip.MustParsePrefix("127.0.0.20/32")}
	})
	_, addr := startServer(t, cfg, Options{Metrics: metrics.New(reg)})

	// Trusted, v1 and v2.
	c := dialFrom(t, "127.0.0.20", addr)
	fmt.Fprintf(c, "PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\nx")
	id := make([]byte, 21)
	if _, err := io.ReadFull(c, id); err != nil || strings.TrimSpace(string(id)) != "203.0.113.9:5555" {
		t.Fatalf("target saw %q (%v), want the header's source", id, err)
	}
	hdr, _ := proxyproto.V2(false, netip.MustParseAddrPort("[2001:db8::5]:6000"), netip.MustParseAddrPort("[2001:db8::1]:80"), proxyproto.TLVs{FlowID: 1})
	c2 := dialFrom(t, "127.0.0.20", addr)
	c2.Write(append(hdr, 'y'))
	if _, err := io.ReadFull(c2, id); err != nil || strings.TrimSpace(string(id)) != "[2001:db8::5]:6000" {
		t.Fatalf("target saw %q (%v), want the v2 header's source", id, err)
	}

	refused := func(src string, first []byte) {
		t.Helper()
		c := dialFrom(t, src, addr)
		c.Write(first)
		// The target speaks first, so its 21-byte greeting may come through
		// before the header is seen; the header itself must never reach it
		// (it would come back echoed), and the connection must end.
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("%s: connection still open after the header", src)
		}
		if len(got) > 21 {
			t.Fatalf("%s: the header reached the target: got back %q", src, got)
		}
	}
	refused("127.0.0.20", []byte("PROXY TCP4 bogus\r\n"))                          // trusted, malformed
	refused("127.0.0.20", []byte("GET / HTTP/1.0\r\n\r\n"))                        // trusted, no header
	refused("127.0.0.21", []byte("PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\nx")) // untrusted
	refused("127.0.0.21", hdr)                                                     // untrusted, v2
	// A header split over writes is refused the same way: the first bytes
	// of a signature alone are held back until the rest settles it.
	refusedSplit := func(src string, parts ...[]byte) {
		t.Helper()
		c := dialFrom(t, src, addr)
		for _, p := range parts {
			c.Write(p)
			time.Sleep(50 * time.Millisecond) // separate segments, separate reads
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("%s: connection still open after a split header", src)
		}
		if len(got) > 21 {
			t.Fatalf("%s: part of a split header reached the target: got back %q", src, got)
		}
	}
	refusedSplit("127.0.0.21", []byte("PR"), []byte("OXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\nx"))
	refusedSplit("127.0.0.21", hdr[:5], hdr[5:11], hdr[11:])
	waitFor(t, func() bool { return counterValue(t, reg, "l4lb_rejected_flows_total") == 6 })

	// What starts like a signature but is not one (the HTTP/2 preface
	// starts "PR") reaches the target whole, in order.
	c4 := dialFrom(t, "127.0.0.21", addr)
	c4.Write([]byte("PR"))
	time.Sleep(50 * time.Millisecond)
	c4.Write([]byte("I * HTTP/2.0"))
	c4.SetReadDeadline(time.Now().Add(5 * time.Second))
	back := make([]byte, 21+len("PRI * HTTP/2.0"))
	if _, err := io.ReadFull(c4, back); err != nil || string(back[21:]) != "PRI * HTTP/2.0" {
		t.Fatalf("HTTP/2 preface split after PR: target echoed %q (%v)", back, err)
	}

	// An untrusted client that sends no header is served as usual.
	c3 := dialFrom(t, "127.0.0.21", addr)
	c3.Write([]byte("z"))
	if _, err := io.ReadFull(c3, id); err != nil || !strings.HasPrefix(string(id), "127.0.0.21:") {
		t.Fatalf("plain client: target saw %q (%v)", id, err)
	}
}

// An untrusted client whose first bytes are a strict prefix of a PROXY
// signature ("P", then nothing) is held no longer than the PROXY header
// timeout: then its connection closes, and the close is counted.
func TestProxyPrefixTimesOut(t *testing.T) {
	target := ppEcho(t)
	reg := prometheus.NewRegistry()
	cfg := testConfig([]config.Target{{Address: target, Weight: 1}}, func(l *config.Listener, _ *config.TargetGroup) {
		l.ProxyProtocolAccept = []netip.Prefix{netip.MustParsePrefix("127.0.0.20/32")}
	})
	const timeout = 500 * time.Millisecond
	_, addr := startServer(t, cfg, Options{Metrics: metrics.New(reg), ProxyHeaderTimeout: timeout})
	for _, first := range []string{"P", "PROX", "\r\n\r\n\x00"} {
		c := dialFrom(t, "127.0.0.21", addr)
		start := time.Now()
		c.Write([]byte(first))
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		got, err := io.ReadAll(c)
		took := time.Since(start)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("%q and then nothing: still open after 15 s", first)
		}
		if len(got) > 21 {
			t.Fatalf("%q reached the target: got back %q", first, got)
		}
		if took < timeout {
			t.Fatalf("%q: closed after %v, before the %v timeout", first, took, timeout)
		}
		t.Logf("%q and then nothing: closed after %v", first, took.Round(time.Millisecond))
	}
	waitFor(t, func() bool {
		return counterValue(t, reg, "l4lb_rejected_flows_total") == 3
	})
	// A client that speaks second, sending nothing, is not closed by it.
	c := dialFrom(t, "127.0.0.21", addr)
	c.SetReadDeadline(time.Now().Add(3 * timeout))
	if _, err := c.Read(make([]byte, 1)); err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a silent client was closed: %v", err)
	}
}

// The header carries the flow's unique ID and, when configured, the AWS-style
// endpoint TLV, and its CRC32C checks out at the receiver.
func TestProxyV2TLVsReachTarget(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		h, err := pp.Read(bufio.NewReader(c))
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		tlvs, err := h.TLVs()
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		var parts []string
		for _, tl := range tlvs {
			switch tl.Type {
			case proxyproto.TypeAWS:
				parts = append(parts, "aws="+string(tl.Value[1:]))
			case pp.PP2_TYPE_UNIQUE_ID:
				parts = append(parts, fmt.Sprintf("id=%d", len(tl.Value)))
			case pp.PP2_TYPE_CRC32C:
				parts = append(parts, "crc")
			}
		}
		got <- strings.Join(parts, " ")
	}()
	cfg := testConfig([]config.Target{{Address: ln.Addr().(*net.TCPAddr).AddrPort(), Weight: 1}}, withPPv2)
	cfg.EndpointID = "vpce-0123"
	_, addr := startServer(t, cfg, Options{})
	c := dialFrom(t, "127.0.0.11", addr)
	c.Write([]byte("x"))
	select {
	case s := <-got:
		if s != "id=8 aws=vpce-0123 crc" {
			t.Fatalf("target saw TLVs %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("target got no header")
	}
}
