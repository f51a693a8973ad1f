package kernelpath

import (
	"net"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/config"
)

// Offer lists the fronts of the members that the kernel path can take:
// why says why one cannot ("" when it can), and front describes one that
// can. Each member that stays in user space is logged with its reason.
func Offer[M listen.Member](log *zap.Logger, proto string, members []M, why func(M) string, front func(M) Front) []Front {
	var fronts []Front
	for _, m := range members {
		if reason := why(m); reason != "" {
			log.Info(proto+" listener stays in user space", zap.String("listener", m.Key().Name), zap.Stringer("addr", m.Addr()), zap.String("reason", reason))
			continue
		}
		fronts = append(fronts, front(m))
	}
	return fronts
}

// NewFront describes a listener address bound at addr to the kernel path:
// its settings come from its route's one target group as it is now, and
// group gives that group as a reload leaves it.
func NewFront(key any, lc *config.Listener, zone string, idle time.Duration, addr net.Addr, r *listen.Route, acl *listen.ACL, group func() *registry.Group, c Counters) Front {
	var vip netip.AddrPort
	switch a := addr.(type) {
	case *net.TCPAddr:
		vip = a.AddrPort()
	case *net.UDPAddr:
		vip = a.AddrPort()
	}
	g := r.Groups[0].Config()
	f := Front{
		Key: key, Name: lc.Name, Zone: zone, Idle: idle,
		VIP:    netip.AddrPortFrom(vip.Addr().Unmap(), vip.Port()),
		Sticky: g.Attributes.Stickiness, DSR: g.Forwarding == config.ForwardDSR, GUEPort: g.GUEPort,
		Allow: acl.Allow, Deny: acl.Deny, Group: group, Count: c,
	}
	if lc.QUIC != nil {
		f.QUICConnIDLen = lc.QUIC.ConnIDLen
	}
	return f
}
