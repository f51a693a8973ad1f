package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/l4lb/l4lb/internal/testpki"
	"github.com/l4lb/l4lb/pkg/quiclb"
)

// quicBench measures QUIC through the contenders that can carry it: quic-go
// directly, nginx's stream proxy for UDP (a 5-tuple peer, which a client
// that moves would lose), and l4lb's QUIC listener on its socket path (the
// UDP kernel path does not take QUIC listeners yet). Two figures: full
// handshakes per second (a new connection, one stream exchange, close), and
// one connection's bulk throughput to a sink. The target is a quic-go
// server in this process whose connection IDs carry its server ID. With
// the client, the proxy and the server on two cores, the proxies' cost is
// reported as CPU seconds per 1000 handshakes and per GB.
func quicBench(bin, nginx string, dur time.Duration, workers int) error {
	dir, err := os.MkdirTemp("", "l4lb-bench-quic")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ca, err := testpki.NewCA(dir)
	if err != nil {
		return err
	}
	certFile, keyFile, err := ca.IssueFiles(false, "localhost")
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	const alpn = "l4lb-bench"
	target, stop, err := quicSink(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{alpn}}, 0x0123456789abcdef)
	if err != nil {
		return err
	}
	defer stop()
	client := &tls.Config{RootCAs: ca.Pool, ServerName: "localhost", NextProtos: []string{alpn}}
	fmt.Printf("\nQUIC (quic-go client and server; one round of %v each; the contenders run one at a time)\n\n", dur)
	fmt.Printf("| contender | handshakes/s (%d workers) | vs direct | bulk MB/s (1 connection) | vs direct | proxy CPU s per 1000 handshakes | proxy CPU s per GB |\n|---|---|---|---|---|---|---|\n", workers)
	var dh, db float64
	for _, c := range []struct {
		name  string
		start func() (string, []int, func(), error)
	}{
		{"direct (quic-go)", func() (string, []int, func(), error) { return target, nil, func() {}, nil }},
		{"nginx stream (UDP, by 5-tuple)", func() (string, []int, func(), error) { return startNginxUDP(nginx, target, dir) }},
		{"l4lb QUIC listener (socket path)", func() (string, []int, func(), error) { return startL4LBQUIC(bin, target, dir, false) }},
		{"l4lb QUIC listener (kernel path)", func() (string, []int, func(), error) { return startL4LBQUIC(bin, target, dir, true) }},
	} {
		addr, pids, stopProxy, err := c.start()
		if err != nil {
			fmt.Printf("| %s | left out: %v |\n", c.name, err)
			continue
		}
		cpu0 := procCPU(pids)
		hs := quicHandshakes(addr, client, dur, workers)
		cpu1 := procCPU(pids)
		bytes := quicBulk(addr, client, dur)
		cpu2 := procCPU(pids)
		stopProxy()
		h, b := float64(hs)/dur.Seconds(), float64(bytes)/dur.Seconds()/1e6
		if dh == 0 {
			dh, db = h, b
		}
		perK, perGB := "-", "-"
		if pids != nil && hs > 0 && bytes > 0 {
			perK = fmt.Sprintf("%.3f", (cpu1-cpu0)/float64(hs)*1000)
			perGB = fmt.Sprintf("%.2f", (cpu2-cpu1)/float64(bytes)*1e9)
		}
		fmt.Printf("| %s | %.0f | %.2fx | %.1f | %.2fx | %s | %s |\n", c.name, h, h/dh, b, b/db, perK, perGB)
	}
	return nil
}

// benchIDs issues connection IDs that carry one server ID (QUIC-LB's
// plaintext layout, 16 bytes).
type benchIDs uint64

func (g benchIDs) GenerateConnectionID() (quic.ConnectionID, error) {
	r := make([]byte, 8)
	rand.Read(r)
	return quic.ConnectionIDFromBytes(quiclb.ConnID(uint64(g), 16, r)), nil
}

func (benchIDs) ConnectionIDLen() int { return 16 }

// quicSink is a quic-go server on 127.0.0.1: each stream's bytes are read
// to its end, and one byte answers.
func quicSink(tlsConf *tls.Config, id uint64) (string, func(), error) {
	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return "", nil, err
	}
	tr := &quic.Transport{Conn: uc, ConnectionIDGenerator: benchIDs(id)}
	ln, err := tr.Listen(tlsConf, &quic.Config{MaxIncomingStreams: 1000})
	if err != nil {
		return "", nil, err
	}
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
						io.Copy(io.Discard, st)
						st.Write([]byte{1})
						st.Close()
					}()
				}
			}()
		}
	}()
	return uc.LocalAddr().String(), func() { ln.Close(); tr.Close() }, nil
}

// startL4LBQUIC runs l4lb with a QUIC listener before target, on its
// socket path or its UDP kernel path.
func startL4LBQUIC(bin, target, dir string, kernel bool) (string, []int, func(), error) {
	p, extra, attrs := port(460), "", ""
	if kernel {
		p, extra, attrs = port(461), "load_balancer: {udp_fast_path: true, udp_fast_path_interfaces: [lo]}\n", `
    attributes: {preserve_client_ip.enabled: "true"}`
	}
	cfg := fmt.Sprintf(`admin: {listen: "off"}
%slisteners:
  - {name: h3, protocol: QUIC, port: %d, bind: [127.0.0.1], target_group: h3}
target_groups:
  - name: h3
    protocol: QUIC
    targets: [{address: %q, quic_server_id: "0x0123456789abcdef"}]%s
`, extra, p, target, attrs)
	need := ""
	if kernel {
		need = "UDP listener forwarded in the kernel"
	}
	pid, stop, err := serveL4LB(bin, dir, fmt.Sprintf("l4lb-quic-%d", p), cfg, need)
	if err != nil {
		return "", nil, nil, err
	}
	return fmt.Sprintf("127.0.0.1:%d", p), []int{pid}, stop, nil
}

// quicHandshakes runs workers that each, until dur ends, open a connection,
// exchange one stream and close it; it returns the connections completed.
func quicHandshakes(addr string, client *tls.Config, dur time.Duration, workers int) int64 {
	var n atomic.Int64
	end := time.Now().Add(dur)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := 0; i < 1_000_000 && time.Now().Before(end); i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				err := quicOnce(ctx, addr, client, 1)
				cancel()
				if err == nil {
					n.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return n.Load()
}

// quicBulk streams 64 KiB writes on one connection for dur and returns the
// bytes the server confirmed.
func quicBulk(addr string, client *tls.Config, dur time.Duration) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), dur+10*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, addr, client, &quic.Config{})
	if err != nil {
		return 0
	}
	defer conn.CloseWithError(0, "")
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return 0
	}
	buf := make([]byte, 64<<10)
	var sent int64
	end := time.Now().Add(dur)
	for time.Now().Before(end) {
		n, err := st.Write(buf)
		sent += int64(n)
		if err != nil {
			return 0
		}
	}
	st.Close()
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
		return 0 // the server never had it all
	}
	return sent
}

// quicOnce opens a connection, sends size bytes on one stream, waits for
// the answer, and closes.
func quicOnce(ctx context.Context, addr string, client *tls.Config, size int) error {
	conn, err := quic.DialAddr(ctx, addr, client, &quic.Config{})
	if err != nil {
		return err
	}
	defer conn.CloseWithError(0, "")
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	if _, err := st.Write(make([]byte, size)); err != nil {
		return err
	}
	st.Close()
	if d, ok := ctx.Deadline(); ok {
		st.SetReadDeadline(d)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(st, b); err != nil {
		return err
	}
	if b[0] != 1 {
		return errors.New("wrong answer")
	}
	return nil
}
