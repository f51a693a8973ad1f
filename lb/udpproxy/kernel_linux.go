package udpproxy

import (
	"net"
	"net/netip"
	"path/filepath"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/fastpath"
	"github.com/l4lb/l4lb/lb/kernelpath"
	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/config"
)

// kernelEligible says why a UDP front cannot go to the kernel, or "".
func kernelEligible(u *udpFront) string { return u.route.Load().KernelReason(u.bindA) }

// startKernelPath hands the qualifying fronts (already bound, so their ports
// are known) to the kernel fast path (load_balancer.udp_fast_path). A kernel
// that cannot run it leaves every front in user space, with a warning: the
// fast path only accelerates.
func (s *Server) startKernelPath() {
	if !s.cfg.UDPFastPath {
		return
	}
	var fronts []kernelpath.Front
	for _, u := range s.udp {
		if why := kernelEligible(u); why != "" {
			s.log.Info("UDP listener stays in user space", zap.String(logListener, u.cfg.Name), zap.Stringer(logAddr, u.Addr()), zap.String("reason", why))
			continue
		}
		fronts = append(fronts, u.kernelFront())
	}
	if k := kernelpath.Start(fronts, kernelpath.ForwarderOptions{
		Path:       fastpath.Options{MaxFlows: s.cfg.MaxFlows, Inherit: s.opts.Inherit, Pin: pinDir(s.opts.KernelPin)},
		Interfaces: s.cfg.UDPFastPathInterfaces,
		Log:        s.log,
	}); k != nil {
		s.kernel.Store(k)
	}
}

// kernelFront describes u to the kernel path, with its metrics.
func (u *udpFront) kernelFront() kernelpath.Front {
	vip := u.Addr().(*net.UDPAddr).AddrPort()
	acl := u.acl.Load()
	return kernelpath.Front{
		Key: u, Name: u.cfg.Name, Zone: u.zone, Idle: u.cfg.UDPIdleTimeout,
		VIP:     netip.AddrPortFrom(vip.Addr().Unmap(), vip.Port()),
		Sticky:  u.route.Load().Groups[0].Config().Attributes.Stickiness,
		DSR:     u.route.Load().Groups[0].Config().Forwarding == config.ForwardDSR,
		GUEPort: u.route.Load().Groups[0].Config().GUEPort,
		Allow:   acl.Allow, Deny: acl.Deny,
		Group: func() *registry.Group { return u.route.Load().Groups[0] },
		Count: kernelpath.Counters{
			PacketsIn: u.pktsIn, BytesIn: u.bytesIn, PacketsOut: u.pktsOut, BytesOut: u.bytesOut,
			NewFlows: u.newFlows, Evictions: u.evictions,
			RefusedFull: u.rejects[listen.ReasonFlowTableFull], RefusedNoTarget: u.rejects[listen.ReasonNoTarget],
			RefusedACL: u.rejects[listen.ReasonACL], Collisions: u.dropped,
			Active: u.active, Entries: u.entries,
		},
	}
}

// endFlows ends the UDP flows pinned to t, in user space and in the kernel.
func (s *Server) endFlows(t *registry.Target, why string) {
	n := 0
	for _, u := range s.current() {
		n += u.endFlows(t)
	}
	if n > 0 {
		s.log.Info("ended UDP flows", zap.String(logTarget, t.Name), zap.Int(logFlows, n), zap.String("why", why))
	}
	if k := s.kernel.Load(); k != nil {
		k.EndFlows(t, why)
	}
}

// pinDir is where the UDP kernel path pins, under the instance's
// directory; "" when nothing is pinned.
func pinDir(instance string) string {
	if instance == "" {
		return ""
	}
	return filepath.Join(instance, "udp")
}
