package udpproxy

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/lb/flowtable"
	"github.com/l4lb/l4lb/lb/registry"
)

// TestReplyNeverUsesAReusedDescriptor closes the listener socket that
// replies leave from and hands its descriptor number to another socket, as
// the kernel does with the lowest free number, before a target's reply is
// sent. The reply must be dropped and counted, not sent from the stranger:
// a saved descriptor number would do exactly that.
func TestReplyNeverUsesAReusedDescriptor(t *testing.T) {
	target := listenUDP(t)
	client := listenUDP(t)

	// The flow's upstream socket, connected to the target.
	up, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(up)
	ta := target.LocalAddr().(*net.UDPAddr).AddrPort()
	if err := unix.Connect(up, &unix.SockaddrInet4{Port: int(ta.Port()), Addr: ta.Addr().As4()}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(up)
	if err != nil {
		t.Fatal(err)
	}
	upAddr := net.UDPAddr{IP: net.IP(sa.(*unix.SockaddrInet4).Addr[:]), Port: sa.(*unix.SockaddrInet4).Port}

	// The listener replies leave from, closed while its number is remembered.
	lis := listenUDP(t)
	rc, err := lis.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var oldFD int
	rc.Control(func(fd uintptr) { oldFD = int(fd) })
	lis.Close()

	// A stranger socket takes the old number.
	stranger := listenUDP(t)
	src, err := stranger.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var dupErr error
	src.Control(func(fd uintptr) {
		if int(fd) != oldFD { // it usually has it already: the lowest free number
			dupErr = unix.Dup3(int(fd), oldFD, unix.O_CLOEXEC)
			t.Cleanup(func() { unix.Close(oldFD) })
		}
	})
	if dupErr != nil {
		t.Fatal(dupErr)
	}

	// The target answers the flow.
	if _, err := target.WriteToUDP([]byte("reply"), &upAddr); err != nil {
		t.Fatal(err)
	}
	// Wait until the reply is queued on the upstream socket.
	pfd := []unix.PollFd{{Fd: int32(up), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 5000); err != nil || n != 1 {
		t.Fatalf("the target's reply did not arrive: %d, %v", n, err)
	}

	ca := client.LocalAddr().(*net.UDPAddr).AddrPort()
	u := &udpFront{}
	u.sendRC = rc
	u.table = flowtable.NewTable[*udpFlow](flowtable.Options{Max: 4, Idle: time.Minute})
	u.dropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"})
	u.pktsOut = prometheus.NewCounter(prometheus.CounterOpts{Name: "out"})
	u.bytesOut = prometheus.NewCounter(prometheus.CounterOpts{Name: "bytes"})
	f := &udpFlow{key: flowtable.Key{Src: ca, Dst: netip.MustParseAddrPort("127.0.0.1:1")}, fd: up,
		tgt: &registry.Target{Bytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "target_bytes"})}}
	f.name, f.namelen = sockaddr(ca)
	u.reply(f, newBatch(udpBatch, udpBufSize), time.Now())

	client.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, 64)
	if n, from, err := client.ReadFromUDP(buf); err == nil {
		t.Fatalf("the reply %q left from %v, a socket that is not the listener's", buf[:n], from)
	}
	if got := value(u.dropped); got != 1 {
		t.Fatalf("dropped = %v, want 1 (the listener was closed)", got)
	}
	if got := value(u.pktsOut); got != 0 {
		t.Fatalf("packets out = %v, want 0", got)
	}
}

func listenUDP(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func value(c prometheus.Counter) float64 {
	var m dto.Metric
	c.Write(&m)
	return m.GetCounter().GetValue()
}
