package udpproxy

import (
	"path/filepath"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/fastpath"
	"github.com/l4lb/l4lb/lb/kernelpath"
	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/registry"
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
	fronts := kernelpath.Offer(s.log, "UDP", s.set.Current(), kernelEligible, (*udpFront).kernelFront)
	s.kernel.Set(kernelpath.Start(fronts, kernelpath.ForwarderOptions{
		Path:       fastpath.Options{MaxFlows: s.cfg.MaxFlows, Inherit: s.opts.Inherit, Pin: pinDir(s.opts.KernelPin)},
		Interfaces: s.cfg.UDPFastPathInterfaces,
		Log:        s.log,
	}))
}

// kernelFront describes u to the kernel path, with its metrics.
func (u *udpFront) kernelFront() kernelpath.Front {
	c := kernelpath.Counters{
		PacketsIn: u.pktsIn, BytesIn: u.bytesIn, PacketsOut: u.pktsOut, BytesOut: u.bytesOut,
		NewFlows: u.newFlows, Evictions: u.evictions,
		RefusedFull: u.rejects[listen.ReasonFlowTableFull], RefusedNoTarget: u.rejects[listen.ReasonNoTarget],
		RefusedACL: u.rejects[listen.ReasonACL], Collisions: u.dropped,
		Active: u.active, Entries: u.entries,
	}
	if u.quic != nil { // the kernel counts QUIC routes as the socket path does
		c.QUIC, c.QUICMigrations = u.quic.packets, u.quic.migrations
	}
	return kernelpath.NewFront(u, u.cfg, u.zone, u.cfg.UDPIdleTimeout, u.Addr(), u.route.Load(), u.acl.Load(),
		func() *registry.Group { return u.route.Load().Groups[0] }, c)
}

// endFlows ends the UDP flows pinned to t, in user space and in the kernel.
func (s *Server) endFlows(t *registry.Target, why string) {
	n := 0
	for _, u := range s.set.Current() {
		n += u.endFlows(t)
	}
	if n > 0 {
		s.log.Info("ended UDP flows", zap.String(logTarget, t.Name), zap.Int(logFlows, n), zap.String("why", why))
	}
	s.kernel.EndFlows(t, why)
}

// pinDir is where the UDP kernel path pins, under the instance's
// directory; "" when nothing is pinned.
func pinDir(instance string) string {
	if instance == "" {
		return ""
	}
	return filepath.Join(instance, "udp")
}
