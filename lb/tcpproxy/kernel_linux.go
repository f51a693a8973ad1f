package tcpproxy

import (
	"path/filepath"

	"github.com/l4lb/l4lb/lb/fastpath"
	"github.com/l4lb/l4lb/lb/kernelpath"
	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/flowhash"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// kernelEligible says why a TCP listener cannot be forwarded in the kernel,
// or "": the kernel path rewrites addresses and nothing else, so it takes
// only listeners whose flows need no byte of theirs read or written.
func kernelEligible(l *listener) string {
	if why := l.route.Load().KernelReason(l.bindA); why != "" {
		return why
	}
	g := l.route.Load().Groups[0].Config()
	switch {
	case l.cfg.Protocol == config.TLS:
		return "it terminates TLS"
	case len(l.rules) > 0:
		return "it routes by SNI"
	case l.cfg.MaxConnectionsPerSource > 0:
		return "it limits connections per source"
	case len(l.cfg.ProxyProtocolAccept) > 0:
		return "it reads PROXY headers from upstream (proxy_protocol_accept)"
	case g.Protocol == config.TLS:
		return "its target group is TLS"
	}
	return ""
}

// startKernelPath hands the qualifying listeners (bound already, so their
// ports are known) to the kernel fast path (load_balancer.tcp_fast_path).
// Their sockets stay bound for what the programs pass on (fragments, IP
// options, resets of no flow). A kernel that cannot run the programs
// leaves every listener in user space, with a warning.
func (s *Server) startKernelPath() {
	if !s.cfg.TCPFastPath {
		return
	}
	fronts := kernelpath.Offer(s.log, "TCP", s.set.Current(), kernelEligible, (*listener).kernelFront)
	s.kernel.Set(kernelpath.Start(fronts, kernelpath.ForwarderOptions{
		Path:       fastpath.Options{Protocol: flowhash.ProtoTCP, MaxFlows: s.cfg.MaxFlows, Inherit: s.opts.Inherit, Pin: pinDir(s.opts.KernelPin, "tcp")},
		Interfaces: s.cfg.TCPFastPathInterfaces,
		Log:        s.log,
		Passive:    s.reg.PassiveFailure,
	}))
}

// pinDir is where a kernel path of proto pins, under the instance's
// directory; "" when nothing is pinned.
func pinDir(instance, proto string) string {
	if instance == "" {
		return ""
	}
	return filepath.Join(instance, proto)
}

// kernelFront describes l to the kernel path, with its metrics. Its key is
// its slot, which reloads keep.
func (l *listener) kernelFront() kernelpath.Front {
	m := l.srv.m
	lbl := []string{l.cfg.Name, l.protocol(), l.zone}
	slot := l.slot
	return kernelpath.NewFront(slot, l.cfg, l.zone, l.cfg.IdleTimeout, l.Addr(), l.route.Load(), &l.acl,
		func() *registry.Group { return slot.Load().route.Load().Groups[0] },
		kernelpath.Counters{
			PacketsIn: m.Counter(metrics.ProcessedPackets, append(lbl, "in")...), BytesIn: l.bytesIn,
			PacketsOut: m.Counter(metrics.ProcessedPackets, append(lbl, "out")...), BytesOut: l.bytesOut,
			NewFlows: l.newFlows, Evictions: m.Counter(metrics.FlowEvictions, l.cfg.Name, "table_full"),
			RefusedFull:     m.Counter(metrics.RejectedFlows, append(lbl, listen.ReasonFlowTableFull.String())...),
			RefusedNoTarget: l.rejects[listen.ReasonNoTarget], RefusedACL: l.rejects[listen.ReasonACL],
			Collisions:   l.rejects[listen.ReasonLocalResources],
			ClientResets: l.clientRsts, Active: l.active,
		})
}

// Kernel is the slot of the kernel fast path: whether it runs, and its
// flows.
func (s *Server) Kernel() *kernelpath.Slot { return &s.kernel }
