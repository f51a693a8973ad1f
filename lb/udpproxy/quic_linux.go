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

// target reads a client datagram: drop it (a version other than 1, or
// too short for its connection ID), or route it to the target its server
// ID names (nil: by the 5-tuple flow). moved says it is a short header
// routed by ID: from a new address, a migration.
func (q *quicRouting) target(u *udpFront, payload []byte) (tgt *registry.Target, drop, moved bool) {
	p := quiclb.Classify(payload, q.connIDLen)
	switch p.Route {
	case quiclb.BadVersion, quiclb.Short:
		q.packets[p.Route].Inc()
		return nil, true, false
	case quiclb.ByCID:
		if t := u.route.Load().Groups[0].Snapshot().ServerIDs[p.ServerID]; t != nil {
			q.packets[quiclb.ByCID].Inc()
			return t, false, !p.Long
		}
		q.packets[quiclb.UnknownCID].Inc() // an ID of no target: the 5-tuple
		return nil, false, false
	}
	q.packets[p.Route].Inc()
	return nil, false, false
}

// lookup finds a QUIC datagram's flow on front u, making it if it is new:
// to the target the datagram's connection ID names, else by the flow hash.
// nil means drop.
func (q *quicRouting) lookup(u *udpFront, src, dst netip.AddrPort, payload []byte, now time.Time) *udpFlow {
	tgt, drop, moved := q.target(u, payload)
	if drop {
		return nil
	}
	key := flowtable.Key{Proto: flowhash.ProtoUDP, Src: src, Dst: dst}
	if f, ok := u.table.Get(key, now); ok {
		return f
	}
	f := u.newFlow(key, now, tgt)
	if f != nil && moved {
		q.migrations.Inc()
	}
	return f
}
