package bgp

import (
	"fmt"
	"net/netip"
	"strings"

	api "github.com/osrg/gobgp/v3/api"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/l4lb/l4lb/pkg/config"
)

// The speaker's messages, in GoBGP's API types.

var (
	v4 = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	v6 = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
)

// connectRetrySeconds is how soon a session that could not connect tries
// again (GoBGP's default is two minutes: a router that comes up after l4lb
// would wait that long for its routes). The speaker only connects out, so
// after a BFD failure this bounds how soon the node rejoins, once the
// router's own error wait is over: 1 s keeps that within deploy/README's
// 5 s on a loaded host (at 5 s a missed attempt alone took it past).
const connectRetrySeconds = 1

// idleAfterResetSeconds is how long a session reset (its BFD session
// failed) waits before it connects again; GoBGP's default is 30 s.
const idleAfterResetSeconds = 1

func peer(p config.BGPPeer, families []*api.Family) *api.Peer {
	hold := uint64(p.HoldTime.Seconds())
	out := &api.Peer{
		Conf: &api.PeerConf{NeighborAddress: p.Address.String(), PeerAsn: p.AS, AuthPassword: p.Password},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime: hold, KeepaliveInterval: max(hold/3, 1), ConnectRetry: connectRetrySeconds,
			IdleHoldTimeAfterReset: idleAfterResetSeconds,
		}},
		Transport: &api.Transport{RemotePort: uint32(p.Port)},
	}
	if p.LocalAddress.IsValid() {
		out.Transport.LocalAddress = p.LocalAddress.String()
	}
	if p.Multihop > 0 {
		// eBGP: TTL Multihop instead of 1, so the packets cross the
		// routers on the way (an iBGP session's TTL allows it anyway).
		out.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(p.Multihop)}
	}
	for _, f := range families {
		out.AfiSafis = append(out.AfiSafis, &api.AfiSafi{Config: &api.AfiSafiConfig{Family: f, Enabled: true}})
	}
	return out
}

// path is prefix announced with the session's own address as its next hop
// (an unspecified next hop is the speaker's local address), origin IGP and
// the zone's communities.
func path(prefix netip.Prefix, communities []uint32) *api.Path {
	nlri, _ := anypb.New(&api.IPAddressPrefix{Prefix: prefix.Addr().String(), PrefixLen: uint32(prefix.Bits())})
	origin, _ := anypb.New(&api.OriginAttribute{Origin: 0})
	p := &api.Path{Family: v4, Nlri: nlri, Pattrs: []*anypb.Any{origin}}
	if prefix.Addr().Is6() {
		reach, _ := anypb.New(&api.MpReachNLRIAttribute{Family: v6, NextHops: []string{"::"}, Nlris: []*anypb.Any{nlri}})
		p.Family, p.Pattrs = v6, append(p.Pattrs, reach)
	} else {
		nh, _ := anypb.New(&api.NextHopAttribute{NextHop: "0.0.0.0"})
		p.Pattrs = append(p.Pattrs, nh)
	}
	if len(communities) > 0 {
		c, _ := anypb.New(&api.CommunitiesAttribute{Communities: communities})
		p.Pattrs = append(p.Pattrs, c)
	}
	return p
}

// sessionState is the FSM state in lower case: idle, connect, active,
// opensent, openconfirm or established.
func sessionState(p *api.Peer) string {
	s := p.GetState().GetSessionState()
	if s == api.PeerState_UNKNOWN {
		return "idle"
	}
	return strings.ToLower(s.String())
}

// logger hands GoBGP's log lines to zap. GoBGP says a lot at info (every
// FSM step); l4lb logs the session changes itself, so those go to debug.
type logger struct {
	l *zap.Logger
	// rejected hears of a connection from an address that is no peer.
	rejected func(remote string)
}

// gobgpUnknownPeer is GoBGP's message for a connection from an address
// that is no configured peer. GoBGP offers no other hook, so its log line
// is the sign; it says Info, and l4lb logs GoBGP's Info at debug.
const gobgpUnknownPeer = "Can't find configuration for a new passive connection"

func fields(f gobgplog.Fields) []zap.Field {
	out := make([]zap.Field, 0, len(f))
	for k, v := range f {
		out = append(out, zap.Any(k, v))
	}
	return out
}

func (g logger) Panic(msg string, f gobgplog.Fields) { g.l.Error(msg, fields(f)...) }
func (g logger) Fatal(msg string, f gobgplog.Fields) { g.l.Error(msg, fields(f)...) }
func (g logger) Error(msg string, f gobgplog.Fields) { g.l.Error(msg, fields(f)...) }
func (g logger) Warn(msg string, f gobgplog.Fields)  { g.l.Warn(msg, fields(f)...) }
func (g logger) Info(msg string, f gobgplog.Fields) {
	if msg == gobgpUnknownPeer && g.rejected != nil {
		g.rejected(fmt.Sprint(f["Key"]))
		return
	}
	g.l.Debug(msg, fields(f)...)
}
func (g logger) Debug(msg string, f gobgplog.Fields) { g.l.Debug(msg, fields(f)...) }
func (g logger) SetLevel(gobgplog.LogLevel)          {}
func (g logger) GetLevel() gobgplog.LogLevel {
	if g.l.Core().Enabled(zap.DebugLevel) {
		return gobgplog.DebugLevel
	}
	return gobgplog.InfoLevel
}
