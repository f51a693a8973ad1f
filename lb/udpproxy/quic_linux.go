package udpproxy

import (
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/lb/flowtable"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/flowhash"
	"github.com/l4lb/l4lb/pkg/metrics"
	"github.com/l4lb/l4lb/pkg/quiclb"
)

// A QUIC or TCP_QUIC listener's UDP side routes each client datagram by
// the server ID in its destination connection ID (pkg/quiclb): a client
// that moves to a new address and port keeps its target. Initial and
// 0-RTT packets, whose IDs the client chose, go by the flow hash as UDP
// does; the flow table then pins the 5-tuple, so the connection's later
// packets from there need no lookup.

// quicRouting is a QUIC front's routing state: its connection IDs' length
// and its counters.
type quicRouting struct {
	connIDLen  int
	packets    [quiclb.NumRoutes]prometheus.Counter // by quiclb.Route
	migrations prometheus.Counter
}

func newQUICRouting(m *metrics.Metrics, lc *config.Listener) *quicRouting {
	q := &quicRouting{connIDLen: lc.QUIC.ConnIDLen, migrations: m.Counter(metrics.QUICMigrations, lc.Name)}
	for _, r := range quiclb.Routes {
		q.packets[r] = m.Counter(metrics.QUICPackets, lc.Name, r.String())
	}
	return q
}

// lookup finds a QUIC datagram's flow on front u, making it if it is new:
// to the target the datagram's connection ID names, else by the flow hash.
// nil means drop: a version other than 1, or a datagram too short for its
// connection ID. A datagram of a flow there is goes by the flow, with no
// server ID lookup; the routes of new flows' first datagrams (and the
// drops) are counted, as the kernel program counts them.
func (q *quicRouting) lookup(u *udpFront, src, dst netip.AddrPort, payload []byte, now time.Time) *udpFlow {
	p := quiclb.Classify(payload, q.connIDLen)
	if p.Route == quiclb.BadVersion || p.Route == quiclb.Short {
		q.packets[p.Route].Inc()
		return nil
	}
	key := flowtable.Key{Proto: flowhash.ProtoUDP, Src: src, Dst: dst}
	if f, ok := u.table.Get(key, now); ok {
		return f
	}
	var tgt *registry.Target
	route := p.Route
	if route == quiclb.ByCID {
		if tgt = u.route.Load().Groups[0].Snapshot().ServerIDs[p.ServerID]; tgt == nil {
			route = quiclb.UnknownCID // an ID of no target: the flow hash
		}
	}
	q.packets[route].Inc()
	f := u.newFlow(key, now, tgt)
	if f != nil && tgt != nil && !p.Long { // a short header by ID from a new 5-tuple
		q.migrations.Inc()
	}
	return f
}
