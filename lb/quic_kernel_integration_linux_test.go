//go:build integration

package lb

import (
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/l4lb/l4lb/pkg/metrics"
)

// On the UDP kernel path too, a QUIC listener routes by the server ID:
// 50 quic-go connections move to a new port (a third to a new address),
// and none breaks; the program, not the sockets, routed them.
func TestQUICConnectionsKeepTheirTargetOnTheKernelPath(t *testing.T) {
	l := newQUICLab(t)
	l.kernel = true
	srv, m := l.server(t, true)
	broken, errs := quicMigrations(t, srv.UDPAddrs("test")[0].String(), 50, l.clientTLS, func(i int) net.IP {
		if i%3 == 0 {
			return net.IPv4(127, 0, 0, 2)
		}
		return net.IPv4(127, 0, 0, 1)
	})
	// The kernel's counts reach the metrics every 500 ms.
	waitFor(t, func() bool { return testutil.ToFloat64(m.Counter(metrics.QUICMigrations, "test")) >= 50 })
	byCID := testutil.ToFloat64(m.Counter(metrics.QUICPackets, "test", "cid"))
	moved := testutil.ToFloat64(m.Counter(metrics.QUICMigrations, "test"))
	socket := testutil.ToFloat64(m.Counter(metrics.UDPSocketDatagrams, "test", "UDP", ""))
	if broken != 0 || moved < 50 || byCID == 0 {
		t.Fatalf("QUIC listener on the kernel path: %d of 50 moved connections broke %v; the kernel counted %v migrations, %v datagrams by connection ID", broken, errs, moved, byCID)
	}
	t.Logf("50 QUIC connections moved on the UDP kernel path: %d broke; the program counted %v migrations and %v new flows by connection ID; %v datagrams reached l4lb's sockets", broken, moved, byCID, socket)
}
