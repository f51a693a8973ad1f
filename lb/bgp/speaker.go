// Package bgp announces each zone's addresses to routers over BGP while the
// zone can serve, with an embedded speaker (GoBGP). Routers that hear the
// same prefix from several l4lb nodes spread flows over them with ECMP;
// every node picks the same target for a flow (the same Maglev tables), so a
// flow that moves to another node keeps its target.
//
// A zone's prefixes are announced while GET /v1/zones/{zone}/health says
// 200, and withdrawn when it does not. A node that leaves (SIGTERM, or an
// upgrade handing over) withdraws everything first and waits
// bgp.withdraw_grace for the routers to send new flows elsewhere; only then
// does it drain.
package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/events"
	l4api "github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// Options are what a Speaker needs from the rest of l4lb.
type Options struct {
	Logger  *zap.Logger
	Metrics *metrics.Metrics
	// Healthy says whether a zone can serve, and if not, why (the zone
	// health endpoint's answer).
	Healthy func(zone string) (bool, string)
	// Settling names what keeps this node's tables for a zone from
	// matching its peers' (a target still on its first health checks), or
	// is "". A zone is announced the first time only once it is "": a node
	// just started would otherwise carry flows moved to it (a node died,
	// the ECMP set changed) to other targets than its peers would. Once
	// settled, a zone stays so (targets added later do not withdraw it).
	// Nil: always settled.
	Settling func(zone string) string
	// Every is how often zone health is read; 500 ms when zero.
	Every time.Duration
	// Changed, when a value arrives, has zone health read at once: the
	// registry's targets changed (a zone's last target deregistered is
	// withdrawn then, not at the next Every).
	Changed <-chan struct{}
	// Events, when not nil, hears of sessions up and down, and routes
	// announced and withdrawn.
	Events *events.Log
}

// Speaker is the embedded BGP speaker of one l4lb process.
type Speaker struct {
	opts Options
	log  *zap.Logger

	mu      sync.Mutex
	cfg     *config.BGP
	bgp     *server.BgpServer // nil while stopped
	routes  []*route
	settled map[string]bool   // zones Settling has let go once
	peers   map[string]string // address -> last session state seen, for logs and metrics

	rejected      atomic.Uint64 // connections from no configured peer
	rejMu         sync.Mutex    // guards the rate limit of rejectedConn's log
	rejLast       time.Time
	rejSuppressed int
	leaving       bool
	bfd           *bfdPeers
	stop          chan struct{}
	done          chan struct{}
}

// route is one prefix of one zone.
type route struct {
	zone        string
	prefix      netip.Prefix
	communities []uint32
	uuid        []byte // the speaker's id of the path while it is announced
	why         string
}

// New returns a stopped speaker for cfg.
func New(cfg *config.BGP, opts Options) *Speaker {
	if opts.Every == 0 {
		opts.Every = 500 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	s := &Speaker{opts: opts, log: opts.Logger.Named("bgp"), settled: map[string]bool{}}
	s.bfd = newBFDPeers(s.log, opts.Metrics, s.bfdLost)
	s.setConfig(cfg)
	return s
}

func (s *Speaker) setConfig(cfg *config.BGP) {
	s.cfg = cfg
	s.routes = s.routes[:0]
	for _, z := range cfg.Announce {
		for _, p := range z.Prefixes {
			s.routes = append(s.routes, &route{zone: z.Zone, prefix: p, communities: z.Communities, why: "not yet checked"})
		}
	}
}

// rejectedConn counts a BGP connection from an address that is no peer
// (bgp_rejected_connections_total) and logs it, one line a second at most:
// a scan or a flood must not fill the log.
func (s *Speaker) rejectedConn(remote string) {
	s.opts.Metrics.Counter(metrics.BGPRejectedConnections).Inc()
	s.rejected.Add(1)
	now := time.Now()
	s.rejMu.Lock()
	defer s.rejMu.Unlock()
	if now.Sub(s.rejLast) < time.Second {
		s.rejSuppressed++
		return
	}
	s.log.Warn("BGP connection refused: the address is no configured peer", zap.String("remote", remote), zap.Int("more_since_last_line", s.rejSuppressed))
	s.rejLast, s.rejSuppressed = now, 0
}

// Start brings the speaker up: its sessions to every peer, and the loop that
// announces a zone's prefixes while the zone is healthy. A speaker that was
// stopped can start again (after a failed upgrade), and announces again.
func (s *Speaker) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bgp != nil {
		return nil
	}
	cfg := s.cfg
	b := server.NewBgpServer(server.LoggerOption(logger{l: s.log, rejected: s.rejectedConn}))
	go b.Serve()
	listen := int32(cfg.ListenPort)
	if listen == 0 {
		listen = -1 // connect out only
	}
	ctx := context.Background()
	if err := b.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: cfg.LocalAS, RouterId: cfg.RouterID.String(), ListenPort: listen,
	}}); err != nil {
		b.Stop()
		return fmt.Errorf("bgp: starting the speaker: %w", err)
	}
	for _, p := range cfg.Peers {
		if err := b.AddPeer(ctx, &api.AddPeerRequest{Peer: peer(p, s.families())}); err != nil {
			b.StopBgp(ctx, &api.StopBgpRequest{})
			b.Stop()
			return fmt.Errorf("bgp: peer %s: %w", p.Address, err)
		}
	}
	if err := s.bfd.update(cfg.Peers); err != nil {
		s.bfd.close()
		b.StopBgp(ctx, &api.StopBgpRequest{})
		b.Stop()
		return err
	}
	s.bgp, s.peers, s.leaving = b, map[string]string{}, false
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	s.log.Info("BGP speaker up", zap.Uint32("local_as", cfg.LocalAS), zap.Stringer("router_id", cfg.RouterID), zap.Int("peers", len(cfg.Peers)), zap.Int("prefixes", len(s.routes)))
	go s.loop(s.stop, s.done)
	return nil
}

// families are the address families the announced prefixes need.
func (s *Speaker) families() []*api.Family {
	fs := []*api.Family{v4}
	if slices.ContainsFunc(s.routes, func(r *route) bool { return r.prefix.Addr().Is6() }) {
		fs = append(fs, v6)
	}
	return fs
}

func (s *Speaker) loop(stop, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(s.opts.Every)
	defer t.Stop()
	for {
		s.mu.Lock()
		if s.bgp == nil {
			// Stopped: Stop took the server and closed stop, and this
			// round's select may have taken the ticker instead.
			s.mu.Unlock()
			return
		}
		s.sync()
		s.watchPeers()
		s.mu.Unlock()
		select {
		case <-stop:
			return
		case <-t.C:
		case <-s.opts.Changed:
		}
	}
}

// sync announces the prefixes of healthy zones and withdraws the others.
// The caller holds mu.
func (s *Speaker) sync() {
	if s.bgp == nil {
		return
	}
	health := map[string]string{}
	for _, r := range s.routes {
		why, seen := health[r.zone]
		if !seen {
			switch ok, reason := s.opts.Healthy(r.zone); {
			case s.leaving:
				why = "leaving: withdrawn before the drain"
			case !ok:
				why = "zone unhealthy: " + reason
			case !s.settled[r.zone] && s.opts.Settling != nil:
				if t := s.opts.Settling(r.zone); t != "" {
					why = "health checks settling: " + t + " has not finished its first checks"
					break
				}
				s.settled[r.zone] = true
			}
			health[r.zone] = why
		}
		switch {
		case why == "" && r.uuid == nil:
			uuid, err := s.announce(r)
			if err != nil {
				s.log.Error("could not announce", zap.String("zone", r.zone), zap.Stringer("prefix", r.prefix), zap.Error(err))
				r.why = "announce failed: " + err.Error()
				continue
			}
			r.uuid, r.why = uuid, "zone healthy"
			s.log.Info("announced", zap.String("zone", r.zone), zap.Stringer("prefix", r.prefix))
			s.opts.Events.Add(events.BGPRoute, r.prefix.String(), "announced (zone "+r.zone+")")
		case why != "" && r.uuid != nil:
			if err := s.bgp.DeletePath(context.Background(), &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Uuid: r.uuid}); err != nil {
				s.log.Error("could not withdraw", zap.String("zone", r.zone), zap.Stringer("prefix", r.prefix), zap.Error(err))
				continue
			}
			r.uuid, r.why = nil, why
			s.log.Info("withdrawn", zap.String("zone", r.zone), zap.Stringer("prefix", r.prefix), zap.String("why", why))
			s.opts.Events.Add(events.BGPRoute, r.prefix.String(), "withdrawn: "+why)
		case why != "":
			r.why = why
		}
	}
	n := 0
	for _, r := range s.routes {
		if r.uuid != nil {
			n++
		}
	}
	s.opts.Metrics.Gauge(metrics.BGPAnnouncedRoutes).Set(float64(n))
}

func (s *Speaker) announce(r *route) ([]byte, error) {
	res, err := s.bgp.AddPath(context.Background(), &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path(r.prefix, r.communities)})
	if err != nil {
		return nil, err
	}
	return res.Uuid, nil
}

// watchPeers logs session changes and keeps l4lb_bgp_session_up. The
// caller holds mu.
func (s *Speaker) watchPeers() {
	s.bgp.ListPeer(context.Background(), &api.ListPeerRequest{}, func(p *api.Peer) {
		addr, state := p.GetConf().GetNeighborAddress(), sessionState(p)
		if prev := s.peers[addr]; prev != state {
			switch {
			case state == "established":
				s.log.Info("BGP session up", zap.String("peer", addr))
				s.opts.Events.Add(events.BGPSession, addr, "up")
			case prev == "established":
				s.log.Warn("BGP session down", zap.String("peer", addr), zap.String("state", state))
				s.opts.Events.Add(events.BGPSession, addr, "down ("+state+")")
			}
			s.peers[addr] = state
		}
		up := 0.0
		if state == "established" {
			up = 1
		}
		s.opts.Metrics.Gauge(metrics.BGPSessionUp, addr).Set(up)
	})
}

// Leave withdraws every prefix and keeps them withdrawn, then waits the
// withdraw grace (or until ctx ends) for the routers to send new flows to
// the other nodes. The sessions stay up, so the routers hear no more than
// the withdrawal.
func (s *Speaker) Leave(ctx context.Context) {
	s.mu.Lock()
	s.leaving = true
	s.sync()
	grace := s.cfg.WithdrawGrace
	s.mu.Unlock()
	s.log.Info("withdrew every route to leave; waiting for the routers", zap.Duration("withdraw_grace", grace))
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// Rejoin announces the healthy zones again after a Leave that was not
// followed by an exit (a failed upgrade).
func (s *Speaker) Rejoin() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.leaving = false
	s.sync()
}

// Stop closes the sessions and stops the speaker. The routers withdraw what
// it announced when the sessions close.
func (s *Speaker) Stop() {
	s.mu.Lock()
	b, stop, done := s.bgp, s.stop, s.done
	s.bgp = nil
	s.mu.Unlock()
	if b == nil {
		return
	}
	close(stop)
	<-done
	b.StopBgp(context.Background(), &api.StopBgpRequest{})
	b.Stop()
	s.bfd.close()
	// Status reads the routes and peers under mu too.
	s.mu.Lock()
	for _, r := range s.routes {
		r.uuid = nil
	}
	for addr := range s.peers {
		s.opts.Metrics.Gauge(metrics.BGPSessionUp, addr).Set(0)
	}
	s.mu.Unlock()
	s.opts.Metrics.Gauge(metrics.BGPAnnouncedRoutes).Set(0)
	s.log.Info("BGP speaker stopped")
}

// Update applies a reloaded bgp section. A change of the speaker itself
// (AS, router ID or listen port) restarts it. A change of a peer restarts
// that peer's session alone (added peers connect, removed ones close), and
// a change of what is announced does not touch the sessions.
func (s *Speaker) Update(cfg *config.BGP) error {
	s.mu.Lock()
	running := s.bgp != nil
	if running && !sameSpeaker(s.cfg, cfg) {
		s.mu.Unlock()
		s.log.Info("BGP speaker settings changed: restarting it")
		s.Stop()
		s.mu.Lock()
		s.setConfig(cfg)
		s.mu.Unlock()
		return s.Start()
	}
	defer s.mu.Unlock()
	// Withdraw what the new config no longer announces, then take it.
	for _, r := range s.routes {
		if r.uuid != nil && running && !announces(cfg, r) {
			s.bgp.DeletePath(context.Background(), &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Uuid: r.uuid})
			s.log.Info("withdrawn", zap.String("zone", r.zone), zap.Stringer("prefix", r.prefix), zap.String("why", "no longer in the config"))
		}
	}
	kept := map[netip.Prefix][]byte{}
	for _, r := range s.routes {
		if r.uuid != nil && announces(cfg, r) {
			kept[r.prefix] = r.uuid
		}
	}
	oldCfg, oldFamilies := s.cfg, s.families()
	s.setConfig(cfg)
	for _, r := range s.routes {
		r.uuid = kept[r.prefix]
	}
	if running {
		if err := s.updatePeers(oldCfg, oldFamilies); err != nil {
			return err
		}
	}
	s.sync()
	return nil
}

// updatePeers closes the sessions of the peers that s.cfg no longer names
// or names differently, and opens the new ones; with a change of address
// families (an IPv6 prefix added, say), every session. The others are
// left alone. The caller holds mu.
func (s *Speaker) updatePeers(old *config.BGP, oldFamilies []*api.Family) error {
	families := s.families()
	// A change of bfd alone is bfdPeers.update's, not a new BGP session.
	same := func(p config.BGPPeer, in []config.BGPPeer) bool {
		p.BFD = config.BFD{}
		return slices.Equal(families, oldFamilies) && slices.ContainsFunc(in, func(o config.BGPPeer) bool {
			o.BFD = config.BFD{}
			return o == p
		})
	}
	ctx := context.Background()
	for _, p := range old.Peers {
		if same(p, s.cfg.Peers) {
			continue
		}
		if err := s.bgp.DeletePeer(ctx, &api.DeletePeerRequest{Address: p.Address.String()}); err != nil {
			return fmt.Errorf("bgp: peer %s: %w", p.Address, err)
		}
		delete(s.peers, p.Address.String())
		s.opts.Metrics.Gauge(metrics.BGPSessionUp, p.Address.String()).Set(0)
		s.log.Info("BGP peer removed or changed: its session closes", zap.Stringer("peer", p.Address))
	}
	for _, p := range s.cfg.Peers {
		if same(p, old.Peers) {
			continue
		}
		if err := s.bgp.AddPeer(ctx, &api.AddPeerRequest{Peer: peer(p, families)}); err != nil {
			return fmt.Errorf("bgp: peer %s: %w", p.Address, err)
		}
		s.log.Info("BGP peer added", zap.Stringer("peer", p.Address))
	}
	return s.bfd.update(s.cfg.Peers)
}

// bfdLost resets the BGP session with a peer whose BFD session failed, as
// the router does on its side: the session starts again once the path
// works, rather than waiting out the hold time.
// It holds mu throughout, so Stop cannot stop the speaker under it.
func (s *Speaker) bfdLost(peer netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.bgp
	if b == nil {
		return
	}
	s.log.Warn("BFD session with the peer failed: resetting the BGP session", zap.Stringer("peer", peer))
	s.opts.Events.Add(events.BFDSession, peer.String(), "down: the BGP session is reset")
	if err := b.ResetPeer(context.Background(), &api.ResetPeerRequest{Address: peer.String(), Communication: "BFD session down"}); err != nil {
		s.log.Error("resetting the BGP session", zap.Stringer("peer", peer), zap.Error(err))
	}
}

// announces reports whether cfg announces r's prefix from r's zone with
// r's communities.
func announces(cfg *config.BGP, r *route) bool {
	for _, z := range cfg.Announce {
		if z.Zone == r.zone && slices.Contains(z.Prefixes, r.prefix) && slices.Equal(z.Communities, r.communities) {
			return true
		}
	}
	return false
}

func sameSpeaker(a, b *config.BGP) bool {
	return a.LocalAS == b.LocalAS && a.RouterID == b.RouterID && a.ListenPort == b.ListenPort
}

// Status reports the sessions and the routes.
func (s *Speaker) Status() l4api.BGPStatus {
	// What the speaker holds, read under its lock; the sessions are asked
	// of GoBGP without it, so a GoBGP call that waits on the speaker (a
	// peer event) can never wait on this one.
	s.mu.Lock()
	out := l4api.BGPStatus{LocalAS: s.cfg.LocalAS, RouterID: s.cfg.RouterID.String(), Leaving: s.leaving, Peers: []l4api.BGPPeer{}, Routes: []l4api.BGPRoute{},
		BFDDropped: s.bfd.dropped(), RejectedConnections: s.rejected.Load()}
	bgp := s.bgp
	routes := make([]route, len(s.routes))
	for i, r := range s.routes {
		routes[i] = *r
	}
	s.mu.Unlock()
	if bgp != nil {
		bgp.ListPeer(context.Background(), &api.ListPeerRequest{}, func(p *api.Peer) {
			bp := l4api.BGPPeer{Address: p.GetConf().GetNeighborAddress(), AS: p.GetConf().GetPeerAsn(), State: sessionState(p),
				HoldTime: int(p.GetTimers().GetState().GetNegotiatedHoldTime())}
			ts := p.GetTimers().GetState().GetDowntime()
			if bp.State == "established" {
				ts = p.GetTimers().GetState().GetUptime()
			}
			if ts != nil && ts.GetSeconds() > 0 {
				bp.Since = ts.AsTime()
			}
			if addr, err := netip.ParseAddr(bp.Address); err == nil {
				bp.BFD = s.bfd.status(addr)
			}
			out.Peers = append(out.Peers, bp)
		})
	}
	slices.SortFunc(out.Peers, func(a, b l4api.BGPPeer) int {
		pa, _ := netip.ParseAddr(a.Address)
		pb, _ := netip.ParseAddr(b.Address)
		return pa.Compare(pb)
	})
	// A route counts as announced once a session is up to send it on: in
	// the speaker's table alone, no router has it yet.
	established := slices.ContainsFunc(out.Peers, func(p l4api.BGPPeer) bool { return p.State == "established" })
	for _, r := range routes {
		br := l4api.BGPRoute{Zone: r.zone, Prefix: r.prefix.String(), Announced: r.uuid != nil && established, Why: r.why}
		if r.uuid != nil && !established {
			br.Why = "waiting for session: no BGP session is established to send it on"
		}
		for _, c := range r.communities {
			br.Communities = append(br.Communities, fmt.Sprintf("%d:%d", c>>16, c&0xffff))
		}
		out.Routes = append(out.Routes, br)
	}
	return out
}
