package lb

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quic-go/quic-go"

	"github.com/l4lb/l4lb/healthcheck"
	"github.com/l4lb/l4lb/internal/testpki"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
	"github.com/l4lb/l4lb/pkg/quiclb"
)

const quicALPN = "l4lb-test"

// serverIDs issues a target's QUIC connection IDs in the QUIC-LB plaintext
// layout: its server ID at octets 1..8, random around it.
type serverIDs struct {
	id  uint64
	len int
}

func (g serverIDs) GenerateConnectionID() (quic.ConnectionID, error) {
	r := make([]byte, g.len-8)
	rand.Read(r)
	return quic.ConnectionIDFromBytes(quiclb.ConnID(g.id, g.len, r)), nil
}

func (g serverIDs) ConnectionIDLen() int { return g.len }

// quicTarget is a quic-go server that answers each stream with its name. It
// also listens on TCP on the same port, for l4lb's health checks.
type quicTarget struct {
	name string
	id   string // its server ID, as NLB writes it
	addr netip.AddrPort
}

func startQUICTarget(t *testing.T, name string, id uint64, tlsConf *tls.Config) quicTarget {
	t.Helper()
	var uc *net.UDPConn
	var tcp net.Listener
	for range 20 { // a port free for UDP and TCP alike
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		if tcp, err = net.Listen("tcp", c.LocalAddr().String()); err == nil {
			uc = c
			break
		}
		c.Close()
	}
	if uc == nil {
		t.Fatal("no port free for both UDP and TCP")
	}
	go func() { // TCP: the HTTP/2 fallback's stand-in says its name too
		for {
			c, err := tcp.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s\n", name)
			c.Close()
		}
	}()
	tr := &quic.Transport{Conn: uc, ConnectionIDGenerator: serverIDs{id: id, len: config.DefaultQUICConnIDLen}}
	ln, err := tr.Listen(tlsConf, &quic.Config{MaxIdleTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); tr.Close(); tcp.Close() })
	go func() {
		for {
			conn, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			go func() {
				for {
					st, err := conn.AcceptStream(context.Background())
					if err != nil {
						return
					}
					go func() {
						defer st.Close()
						if _, err := bufio.NewReader(st).ReadString('\n'); err == nil {
							fmt.Fprintf(st, "%s\n", name)
						}
					}()
				}
			}()
		}
	}()
	return quicTarget{name: name, id: quiclb.FormatServerID(id), addr: uc.LocalAddr().(*net.UDPAddr).AddrPort()}
}

// askQUIC opens a stream on conn and returns the server's name.
func askQUIC(ctx context.Context, conn *quic.Conn) (string, error) {
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return "", err
	}
	defer st.Close()
	if d, ok := ctx.Deadline(); ok {
		st.SetDeadline(d)
	}
	if _, err := st.Write([]byte("who\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(st).ReadString('\n')
	return strings.TrimSpace(line), err
}

// quicMigrations opens n QUIC connections to lbAddr from 127.0.0.1, asks
// each which server it reached, then moves each to a new local port on
// moveTo(i) and asks again. It returns how many connections broke: failed
// after the move, or reached another server.
func quicMigrations(t *testing.T, lbAddr string, n int, clientTLS *tls.Config, moveTo func(i int) net.IP) (broken int, errs []string) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			fail := func(err error) {
				mu.Lock()
				defer mu.Unlock()
				broken++
				if len(errs) < 3 {
					errs = append(errs, err.Error())
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Error(err)
				return
			}
			tr := &quic.Transport{Conn: uc}
			defer tr.Close()
			addr, _ := net.ResolveUDPAddr("udp", lbAddr)
			conn, err := tr.Dial(ctx, addr, clientTLS, &quic.Config{MaxIdleTimeout: 10 * time.Second})
			if err != nil {
				t.Errorf("connection %d: %v", i, err)
				return
			}
			defer conn.CloseWithError(0, "")
			before, err := askQUIC(ctx, conn)
			if err != nil {
				t.Errorf("connection %d before the move: %v", i, err)
				return
			}
			uc2, err := net.ListenUDP("udp", &net.UDPAddr{IP: moveTo(i)})
			if err != nil {
				t.Error(err)
				return
			}
			tr2 := &quic.Transport{Conn: uc2}
			defer tr2.Close()
			path, err := conn.AddPath(tr2)
			if err != nil {
				t.Errorf("connection %d: %v", i, err)
				return
			}
			probe, cancelProbe := context.WithTimeout(ctx, 2*time.Second)
			err = path.Probe(probe)
			cancelProbe()
			if err == nil {
				err = path.Switch()
			}
			if err != nil {
				fail(fmt.Errorf("moving to %s: %w", uc2.LocalAddr(), err))
				return
			}
			ask, cancelAsk := context.WithTimeout(ctx, 2*time.Second)
			after, err := askQUIC(ask, conn)
			cancelAsk()
			switch {
			case err != nil:
				fail(fmt.Errorf("after moving to %s: %w", uc2.LocalAddr(), err))
			case after != before:
				fail(fmt.Errorf("reached %s before the move and %s after", before, after))
			}
		})
	}
	wg.Wait()
	return broken, errs
}

// quicLab is three quic-go servers, each with its server ID, and the TLS
// configurations of a server and a client.
type quicLab struct {
	targets   []quicTarget
	clientTLS *tls.Config
	kernel    bool // serve on the UDP kernel path (on lo)
}

func newQUICLab(t *testing.T) *quicLab {
	ca := testpki.New(t)
	certFile, keyFile := ca.Issue(t, false, "localhost")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	serverTLS := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{quicALPN}}
	l := &quicLab{clientTLS: &tls.Config{RootCAs: ca.Pool, ServerName: "localhost", NextProtos: []string{quicALPN}}}
	for i, id := range []uint64{0x0123456789abcdef, 0x1111111111111111, 0xfedcba9876543210} {
		l.targets = append(l.targets, startQUICTarget(t, fmt.Sprintf("server%d", i+1), id, serverTLS))
	}
	return l
}

// server starts an l4lb in front of the lab's servers, with a QUIC
// listener (or a plain UDP one), once every server is healthy.
func (l *quicLab) server(t *testing.T, quicListener bool) (*Server, *metrics.Metrics) {
	t.Helper()
	proto := config.UDP
	if quicListener {
		proto = config.QUIC
	}
	return l.serverOf(t, proto, 0)
}

// serverOf starts an l4lb with a listener of protocol proto on port (0:
// any) in front of the lab's servers, once every server is healthy.
func (l *quicLab) serverOf(t *testing.T, proto config.Protocol, port uint16) (*Server, *metrics.Metrics) {
	t.Helper()
	quicListener, kernel := proto.IsQUIC(), l.kernel
	var ts []config.Target
	for _, tg := range l.targets {
		ct := config.Target{Address: tg.addr, Weight: 1}
		if quicListener {
			ct.QUICServerID = tg.id
		}
		ts = append(ts, ct)
	}
	cfg := udpConfig(ts, func(l *config.Listener, g *config.TargetGroup) {
		l.Protocol, g.Protocol, l.Port = proto, proto, port
		if quicListener {
			l.QUIC = &config.ListenerQUIC{ConnIDLen: config.DefaultQUICConnIDLen}
		}
		g.HealthCheck = config.HealthCheck{Protocol: config.HealthTCP, Interval: 200 * time.Millisecond, Timeout: 100 * time.Millisecond, HealthyThreshold: 2, UnhealthyThreshold: 2}
		g.Attributes.PreserveClientIP = kernel // the kernel path forwards only so
	})
	if l.kernel {
		cfg.UDPFastPath, cfg.UDPFastPathInterfaces = true, []string{"lo"}
	}
	m := metrics.New(prometheus.NewRegistry())
	srv := startedServer(t, cfg, Options{Metrics: m})
	if l.kernel && !srv.udp.KernelPath() {
		if os.Geteuid() != 0 && os.Getenv("CI") == "" {
			t.Skip("the UDP kernel path needs root")
		}
		t.Fatal("the UDP kernel path did not come up")
	}
	checks := healthcheck.NewScheduler(srv.Registry, healthcheck.Options{})
	t.Cleanup(checks.Close)
	srv.Registry.WatchHealth(checks)
	waitFor(t, func() bool {
		g, _ := srv.Registry.TargetGroup("tg")
		healthy := 0
		for _, th := range g.Targets {
			if th.State.String() == "healthy" {
				healthy++
			}
		}
		return healthy == len(l.targets)
	})
	return srv, m
}

// A QUIC listener routes by the server ID in each packet's connection ID:
// 50 quic-go connections through l4lb each move to a new local port, a
// third of them to a new local address too, and every one keeps its
// server. Against a plain UDP listener, which hashes the 5-tuple, most
// moved connections break: the check can fail.
func TestQUICConnectionsKeepTheirTargetWhenTheyMove(t *testing.T) {
	l := newQUICLab(t)
	run := func(quicListener bool) (int, []string, *metrics.Metrics) {
		srv, m := l.server(t, quicListener)
		defer srv.Close()
		// Every third to a new address too.
		broken, errs := quicMigrations(t, srv.UDPAddrs("test")[0].String(), 50, l.clientTLS, func(i int) net.IP {
			if i%3 == 0 {
				return net.IPv4(127, 0, 0, 2)
			}
			return net.IPv4(127, 0, 0, 1)
		})
		return broken, errs, m
	}
	broken, errs, m := run(true)
	byCID := testutil.ToFloat64(m.Counter(metrics.QUICPackets, "test", "cid"))
	moved := testutil.ToFloat64(m.Counter(metrics.QUICMigrations, "test"))
	if broken != 0 || moved < 50 || byCID == 0 {
		t.Fatalf("QUIC listener: %d of 50 moved connections broke %v; %v migrations counted, %v packets routed by connection ID", broken, errs, moved, byCID)
	}
	plain, plainErrs, _ := run(false)
	if plain < 15 {
		t.Fatalf("plain UDP listener: only %d of 50 moved connections broke %v; a 5-tuple hash should move about two thirds of them to another server", plain, plainErrs)
	}
	t.Logf("50 QUIC connections moved to a new port (17 to a new address too): through a QUIC listener %d broke (%v migrations, %v packets by connection ID, %v by hash); through a plain UDP listener %d broke, e.g. %v",
		broken, moved, byCID, testutil.ToFloat64(m.Counter(metrics.QUICPackets, "test", "hash")), plain, plainErrs[:min(1, len(plainErrs))])
}

// Across two l4lb nodes: a relay in front stands for the routers' ECMP,
// sending clients from 127.0.0.1 to node A and from 127.0.0.2 to node B.
// 50 connections start on node A and move to 127.0.0.2, so every moved
// packet reaches node B, which has never seen the connection: it routes
// by the server ID to the same server, and none breaks.
func TestQUICConnectionsMoveAcrossNodes(t *testing.T) {
	l := newQUICLab(t)
	a, _ := l.server(t, true)
	b, mb := l.server(t, true)
	relay := startRelay(t, map[netip.Addr]string{
		netip.MustParseAddr("127.0.0.1"): a.UDPAddrs("test")[0].String(),
		netip.MustParseAddr("127.0.0.2"): b.UDPAddrs("test")[0].String(),
	})
	broken, errs := quicMigrations(t, relay, 50, l.clientTLS, func(int) net.IP { return net.IPv4(127, 0, 0, 2) })
	moved := testutil.ToFloat64(mb.Counter(metrics.QUICMigrations, "test"))
	if broken != 0 || moved < 50 {
		t.Fatalf("%d of 50 connections broke moving from node A to node B %v; node B counted %v migrations", broken, errs, moved)
	}
	t.Logf("50 QUIC connections moved from node A to node B: %d broke; node B took %v of them by connection ID", broken, moved)

	// l4lb route --quic-dcid says the same, on either node.
	cid := fmt.Sprintf("0x%x", quiclb.ConnID(0x1111111111111111, config.DefaultQUICConnIDLen, make([]byte, 8)))
	for _, srv := range []*Server{a, b} {
		rt, err := srv.RouteQUIC("test", cid)
		if err != nil || rt.Target != l.targets[1].addr.String() || rt.Hash != "0x1111111111111111" {
			t.Fatalf("route of %s: %+v %v; want %s", cid, rt, err, l.targets[1].addr)
		}
	}
	unroutable := "0xe0" + strings.Repeat("00", config.DefaultQUICConnIDLen-1)
	unknown := fmt.Sprintf("0x%x", quiclb.ConnID(0x42, config.DefaultQUICConnIDLen, make([]byte, 8)))
	for dcid, want := range map[string]string{unroutable: "unroutable", unknown: "names no target", "0x0102": "bytes; listener", "nothex": "want 0x"} {
		rt, err := a.RouteQUIC("test", dcid)
		if got := fmt.Sprint(rt.Why, err); rt.Target != "" || !strings.Contains(got, want) {
			t.Errorf("route of %s: %+v %v; want %q", dcid, rt, err, want)
		}
	}
}

// startRelay forwards datagrams to the node its map names for the client's
// address, one upstream socket per client address and port (as a router's
// ECMP keeps a 5-tuple on one next hop), and the replies back; it returns
// its address.
func startRelay(t *testing.T, nodes map[netip.Addr]string) string {
	t.Helper()
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	up := map[netip.AddrPort]*net.UDPConn{}
	t.Cleanup(func() {
		front.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range up {
			c.Close()
		}
	})
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := front.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			mu.Lock()
			c := up[from]
			if c == nil {
				to, _ := net.ResolveUDPAddr("udp", nodes[from.Addr().Unmap()])
				if c, err = net.DialUDP("udp", nil, to); err != nil {
					mu.Unlock()
					continue
				}
				up[from] = c
				go func() {
					rb := make([]byte, 65536)
					for {
						n, err := c.Read(rb)
						if err != nil {
							return
						}
						front.WriteToUDPAddrPort(rb[:n], from)
					}
				}()
			}
			mu.Unlock()
			c.Write(buf[:n])
		}
	}()
	return front.LocalAddr().String()
}

// A TCP_QUIC listener serves TCP and QUIC on one port, from one target
// group: QUIC connections keep their server when they move, and TCP
// connections on the same port reach the group's servers.
func TestTCPQUICServesBothOnOnePort(t *testing.T) {
	l := newQUICLab(t)
	var port uint16
	for range 20 { // a port free for UDP and TCP alike
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		p := c.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", c.LocalAddr().String())
		c.Close()
		if err == nil {
			ln.Close()
			port = uint16(p)
			break
		}
	}
	srv, _ := l.serverOf(t, config.TCPQUIC, port)
	tcpAddr, udpAddr := srv.Addrs("test")[0].String(), srv.UDPAddrs("test")[0].String()
	if tcpAddr != udpAddr {
		t.Fatalf("TCP on %s, QUIC on %s: want one port", tcpAddr, udpAddr)
	}
	seen := map[string]bool{}
	for range 30 {
		c, err := net.DialTimeout("tcp", tcpAddr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		seen[strings.TrimSpace(line)] = true
	}
	broken, errs := quicMigrations(t, udpAddr, 20, l.clientTLS, func(int) net.IP { return net.IPv4(127, 0, 0, 2) })
	if broken != 0 || len(seen) < 2 {
		t.Fatalf("TCP_QUIC on %s: %d of 20 moved QUIC connections broke %v; TCP reached %v", tcpAddr, broken, errs, seen)
	}
	t.Logf("TCP_QUIC on %s: 30 TCP connections reached %d servers; 20 QUIC connections moved, %d broke", tcpAddr, len(seen), broken)
}
