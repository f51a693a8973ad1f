package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
)

// Target kinds for `l4lb bench target`.
const (
	TargetEcho = "echo" // sends back what it reads (TCP and UDP)
	TargetSink = "sink" // reads to EOF, then answers the count it read (8 bytes, big-endian); UDP: discards
	TargetRR   = "rr"   // answers each read (TCP) or datagram (UDP) with Size bytes
)

// Target is a running load target.
type Target struct {
	Addr    net.Addr
	closeFn func() error
	wg      sync.WaitGroup
}

// Close stops the target and waits for its connections to end.
func (t *Target) Close() error {
	err := t.closeFn()
	t.wg.Wait()
	return err
}

// ParseListen splits tcp://IP:PORT or udp://IP:PORT.
func ParseListen(s string) (network, addr string, err error) {
	network, addr, ok := strings.Cut(s, "://")
	if !ok || (network != "tcp" && network != "udp") {
		return "", "", fmt.Errorf("--listen %q: want tcp://IP:PORT or udp://IP:PORT", s)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", "", fmt.Errorf("--listen %q: %v", s, err)
	}
	return network, addr, nil
}

// StartTarget serves kind on network ("tcp" or "udp") at addr. size is the
// rr target's answer (default 64 bytes).
func StartTarget(kind, network, addr string, size int) (*Target, error) {
	if size <= 0 {
		size = 64
	}
	if kind != TargetEcho && kind != TargetSink && kind != TargetRR {
		return nil, fmt.Errorf("bench: no target %q; echo, sink or rr", kind)
	}
	t := &Target{}
	switch network {
	case "tcp":
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, err
		}
		t.Addr, t.closeFn = ln.Addr(), ln.Close
		var mu sync.Mutex
		open := map[net.Conn]bool{}
		t.closeFn = func() error {
			err := ln.Close()
			mu.Lock()
			for c := range open {
				c.Close()
			}
			mu.Unlock()
			return err
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					if errors.Is(err, net.ErrClosed) {
						return
					}
					continue
				}
				mu.Lock()
				open[c] = true
				mu.Unlock()
				t.wg.Add(1)
				go func() {
					defer t.wg.Done()
					serveTCP(kind, c, size)
					c.Close()
					mu.Lock()
					delete(open, c)
					mu.Unlock()
				}()
			}
		}()
	case "udp":
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, err
		}
		t.Addr, t.closeFn = pc.LocalAddr(), pc.Close
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			serveUDP(kind, pc, size)
		}()
	default:
		return nil, fmt.Errorf("bench: network %q; tcp or udp", network)
	}
	return t, nil
}

func serveTCP(kind string, c net.Conn, size int) {
	buf := make([]byte, 64<<10)
	switch kind {
	case TargetEcho:
		io.CopyBuffer(c, c, buf)
	case TargetSink:
		var n int64
		for {
			k, err := c.Read(buf)
			n += int64(k)
			if err == io.EOF {
				var ack [8]byte
				binary.BigEndian.PutUint64(ack[:], uint64(n))
				c.Write(ack[:])
				return
			}
			if err != nil {
				return
			}
		}
	case TargetRR:
		out := make([]byte, size)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
			if _, err := c.Write(out); err != nil {
				return
			}
		}
	}
}

func serveUDP(kind string, pc net.PacketConn, size int) {
	buf := make([]byte, 65536)
	out := make([]byte, size)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		switch kind {
		case TargetEcho:
			pc.WriteTo(buf[:n], from)
		case TargetRR:
			pc.WriteTo(out, from)
		}
	}
}
