//go:build integration

package lb

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/l4lb/l4lb/pkg/config"
)

// needBinary finds a Debian-packaged peer. `make deps` installs them, so in
// CI a missing one is a failure, not a skip.
func needBinary(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed (make deps installs it)", name)
		}
		t.Skipf("%s is not installed; run make deps", name)
	}
	return p
}

// freeTCPUDPPort finds a loopback port free for both TCP and UDP, for a peer
// (unbound, nginx, HAProxy) to bind a moment later. It comes from below the
// kernel's ephemeral range (32768-60999), so no client socket of a test
// running alongside can take it in between.
func freeTCPUDPPort(t *testing.T) uint16 {
	t.Helper()
	for range 1000 {
		port := 10000 + (os.Getpid()*7+int(nextPort.Add(1)))%10000
		ln, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", port))
		ln.Close()
		if err == nil {
			pc.Close()
			return uint16(port)
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return 0
}

var nextPort atomic.Int64

// startUnbound runs a real unbound serving one local zone on 127.0.0.1.
func startUnbound(t *testing.T) netip.AddrPort {
	bin := needBinary(t, "unbound")
	dir := t.TempDir()
	port := freeTCPUDPPort(t)
	conf := fmt.Sprintf(`server:
  interface: 127.0.0.1@%d
  port: %d
  do-ip6: no
  do-daemonize: no
  username: ""
  chroot: ""
  directory: %q
  pidfile: %q
  use-syslog: no
  logfile: ""
  verbosity: 0
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  do-not-query-localhost: yes
  local-zone: "l4lb.test." static
  local-data: "a.l4lb.test. 60 IN A 192.0.2.53"
remote-control:
  control-enable: no
`, port, port, dir, filepath.Join(dir, "unbound.pid"))
	path := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-d", "-c", path)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := queryUDP(addr.String(), "a.l4lb.test."); err == nil {
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatal("unbound did not answer within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func dnsQuery(name string, id uint16) []byte {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	msg, _ := b.Finish()
	return msg
}

func dnsAnswer(msg []byte, id uint16) (netip.Addr, error) {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return netip.Addr{}, err
	}
	if h.ID != id {
		return netip.Addr{}, fmt.Errorf("answer id %d, want %d", h.ID, id)
	}
	p.SkipAllQuestions()
	a, err := p.Answer()
	if err != nil {
		return netip.Addr{}, err
	}
	ar, ok := a.Body.(*dnsmessage.AResource)
	if !ok {
		return netip.Addr{}, fmt.Errorf("answer is %T", a.Body)
	}
	return netip.AddrFrom4(ar.A), nil
}

func queryUDP(addr, name string) (netip.Addr, error) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write(dnsQuery(name, 0x1234)); err != nil {
		return netip.Addr{}, err
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		return netip.Addr{}, err
	}
	return dnsAnswer(buf[:n], 0x1234)
}

func queryTCP(addr, name string) (netip.Addr, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	q := dnsQuery(name, 0x4321)
	framed := binary.BigEndian.AppendUint16(nil, uint16(len(q)))
	if _, err := c.Write(append(framed, q...)); err != nil {
		return netip.Addr{}, err
	}
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		return netip.Addr{}, err
	}
	msg := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(c, msg); err != nil {
		return netip.Addr{}, err
	}
	return dnsAnswer(msg, 0x4321)
}

// A TCP_UDP listener in front of a real DNS server answers over UDP and over
// TCP on the same port.
func TestTCPUDPWithUnbound(t *testing.T) {
	dns := startUnbound(t)
	port := freeTCPUDPPort(t)
	cfg := testConfig([]config.Target{{Address: dns, Weight: 1}}, func(l *config.Listener, g *config.TargetGroup) {
		l.Protocol, g.Protocol = config.TCPUDP, config.TCPUDP
		l.Port = port
		l.UDPIdleTimeout = config.DefaultUDPIdleTimeout
	})
	cfg.MaxFlows = config.DefaultMaxFlows
	startedServer(t, cfg, Options{})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	want := netip.MustParseAddr("192.0.2.53")
	for range 20 {
		got, err := queryUDP(addr, "a.l4lb.test.")
		if err != nil || got != want {
			t.Fatalf("UDP query through l4lb: %v, %v", got, err)
		}
		got, err = queryTCP(addr, "a.l4lb.test.")
		if err != nil || got != want {
			t.Fatalf("TCP query through l4lb: %v, %v", got, err)
		}
	}
}
