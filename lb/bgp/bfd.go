package bgp

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/bfd"
	l4api "github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// bfdPeers runs a BFD session beside each BGP session whose peer asks for
// one (bfd block). The router ends its BGP session, and withdraws this
// node's routes, as soon as the BFD session fails; this side does the same
// (lost), unless the router stopped BFD on purpose (admin-down).
type bfdPeers struct {
	log  *zap.Logger
	m    *metrics.Metrics
	lost func(peer netip.Addr) // the BFD session with peer failed

	// unmatched counts the packets no session took, by result.
	unmatched [2]atomic.Uint64 // malformed, no_session

	mu        sync.Mutex
	endpoints map[netip.AddrPort]*bfd.Endpoint // by the local address they receive on
	sessions  map[netip.Addr]*bfdPeer
}

type bfdPeer struct {
	cfg config.BGPPeer
	s   *bfd.Session
	on  netip.AddrPort // its endpoint
}

func newBFDPeers(log *zap.Logger, m *metrics.Metrics, lost func(netip.Addr)) *bfdPeers {
	return &bfdPeers{log: log, m: m, lost: lost, endpoints: map[netip.AddrPort]*bfd.Endpoint{}, sessions: map[netip.Addr]*bfdPeer{}}
}

// update runs a session for each peer of peers that asks for BFD, and ends
// the others. A new interval or multiplier is applied to the running
// session (a poll sequence, the session stays up); a new local address
// starts it again.
func (b *bfdPeers) update(peers []config.BGPPeer) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	want := map[netip.Addr]config.BGPPeer{}
	for _, p := range peers {
		if p.BFD.Enabled() {
			want[p.Address] = p
		}
	}
	var errs []error
	for addr, bp := range b.sessions {
		p, ok := want[addr]
		switch {
		case !ok || p.LocalAddress != bp.cfg.LocalAddress || p.Multihop != bp.cfg.Multihop || p.BFD.Auth != bp.cfg.BFD.Auth:
			b.end(addr, bp)
			continue
		case p.BFD != bp.cfg.BFD:
			if err := bp.s.Update(p.BFD.Interval, p.BFD.Multiplier); err != nil {
				errs = append(errs, fmt.Errorf("bgp: peer %s: %w", addr, err))
				continue
			}
			b.log.Info("BFD session settings changed", zap.Stringer("peer", addr), zap.Duration("interval", p.BFD.Interval), zap.Uint8("multiplier", p.BFD.Multiplier))
		}
		bp.cfg = p
	}
	for addr, p := range want {
		if b.sessions[addr] != nil {
			continue
		}
		if err := b.start(p); err != nil {
			errs = append(errs, fmt.Errorf("bgp: peer %s: %w", addr, err))
		}
	}
	b.closeIdle()
	return errors.Join(errs...)
}

// start opens p's session, on an endpoint at its local address (or all of
// its family's): port 3784, or 4784 for a peer that is more than one hop
// away (multihop). The caller holds mu.
func (b *bfdPeers) start(p config.BGPPeer) error {
	local := p.LocalAddress
	if !local.IsValid() {
		local = netip.IPv4Unspecified()
		if p.Address.Is6() {
			local = netip.IPv6Unspecified()
		}
	}
	on := netip.AddrPortFrom(local, bfd.Port)
	if p.Multihop > 0 {
		on = netip.AddrPortFrom(local, bfd.MultihopPort)
	}
	e := b.endpoints[on]
	if e == nil {
		var err error
		if e, err = bfd.Listen(on, p.Multihop > 0, b.log, b.count); err != nil {
			return err
		}
		b.endpoints[on] = e
	}
	peer := p.Address.String()
	up := b.m.Gauge(metrics.BFDSessionUp, peer)
	was := bfd.Down
	s, err := e.Add(bfd.Config{Peer: p.Address, Local: p.LocalAddress, Interval: p.BFD.Interval, Multiplier: p.BFD.Multiplier, Auth: bfdAuth(p.BFD.Auth)}, func(st bfd.Status) {
		if st.State == bfd.Up {
			up.Set(1)
		} else {
			up.Set(0)
		}
		if was == bfd.Up && st.State == bfd.Down && st.RemoteState != bfd.AdminDown {
			go b.lost(st.Peer) // not on the session's goroutine: end waits for it
		}
		was = st.State
	})
	if err != nil {
		return err
	}
	up.Set(0)
	b.sessions[p.Address] = &bfdPeer{cfg: p, s: s, on: on}
	b.log.Info("BFD session started", zap.String("peer", peer), zap.Duration("interval", p.BFD.Interval), zap.Uint8("multiplier", p.BFD.Multiplier), zap.Uint8("multihop", p.Multihop))
	return nil
}

// bfdAuth is the config's authentication in the bfd package's terms.
func bfdAuth(a config.BFDAuth) *bfd.Auth {
	switch a.Type {
	case config.BFDAuthKeyedSHA1:
		return &bfd.Auth{Type: bfd.AuthKeyedSHA1, KeyID: a.KeyID, Key: []byte(a.Password)}
	case config.BFDAuthMeticulousKeyedSHA1:
		return &bfd.Auth{Type: bfd.AuthMeticulousKeyedSHA1, KeyID: a.KeyID, Key: []byte(a.Password)}
	}
	return nil
}

// count counts a received BFD packet. The peer label is the session's
// peer, or empty for a packet no session took: a flood of spoofed sources
// must not make a series each.
func (b *bfdPeers) count(src netip.Addr, r bfd.Result) {
	peer := src.String()
	switch r {
	case bfd.DroppedMalformed:
		peer = ""
		b.unmatched[0].Add(1)
	case bfd.DroppedNoSession:
		peer = ""
		b.unmatched[1].Add(1)
	}
	b.m.Counter(metrics.BFDPackets, peer, r.String()).Inc()
}

// end takes a session administratively down (the router sees that it was
// stopped, not that the path failed). The caller holds mu.
func (b *bfdPeers) end(addr netip.Addr, bp *bfdPeer) {
	bp.s.Close()
	delete(b.sessions, addr)
	b.m.Gauge(metrics.BFDSessionUp, addr.String()).Set(0)
}

// closeIdle closes the endpoints no session uses. The caller holds mu.
func (b *bfdPeers) closeIdle() {
	for on, e := range b.endpoints {
		used := false
		for _, bp := range b.sessions {
			used = used || bp.on == on
		}
		if !used {
			e.Close()
			delete(b.endpoints, on)
		}
	}
}

// close ends every session.
func (b *bfdPeers) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for addr, bp := range b.sessions {
		b.end(addr, bp)
	}
	b.closeIdle()
}

// dropped counts the packets no session took, by why.
func (b *bfdPeers) dropped() map[string]uint64 {
	out := map[string]uint64{}
	for i, r := range []bfd.Result{bfd.DroppedMalformed, bfd.DroppedNoSession} {
		if n := b.unmatched[i].Load(); n > 0 {
			out[r.String()] = n
		}
	}
	return out
}

// status is the BFD session with addr, or nil.
func (b *bfdPeers) status(addr netip.Addr) *l4api.BFDSession {
	b.mu.Lock()
	bp := b.sessions[addr]
	b.mu.Unlock()
	if bp == nil {
		return nil
	}
	st := bp.s.Status()
	return &l4api.BFDSession{State: st.State.String(), RemoteState: st.RemoteState.String(), Diagnostic: st.Diag.String(), Since: st.Since,
		TxIntervalMS: float64(st.TxInterval.Microseconds()) / 1000, DetectTimeMS: float64(st.DetectTime.Microseconds()) / 1000,
		Multihop: bp.cfg.Multihop > 0, Packets: bp.s.Packets(), Authentication: bp.cfg.BFD.Auth.Type.String()}
}
