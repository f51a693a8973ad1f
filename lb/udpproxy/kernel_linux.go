package udpproxy

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/fastpath"
	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/maglev"
)

// kernelPath hands the UDP fronts that qualify (load_balancer.udp_fast_path)
// to the kernel fast path: it writes each front's Maglev table into the
// kernel whenever the group's snapshot changes, and carries the kernel's
// counters and flow counts into the front's metrics and the targets'
// describe-health counts.
type kernelPath struct {
	s      *Server
	p      *fastpath.Path
	fronts []*kernelFront
	sweep  time.Duration
	kick   chan struct{}
	end    chan endReq // flows to end, handled by the loop
	stop   chan struct{}
	done   chan struct{}
}

// endReq asks the loop to end the flows pinned to a target.
type endReq struct {
	target netip.AddrPort
	name   string
	why    string
}

type kernelFront struct {
	u       *udpFront
	id      int
	gone    atomic.Bool // removed by a reload: no new flows in the kernel
	last    fastpath.Stats
	flows   atomic.Int64                        // what the last sweep added to the front's gauges
	evicted uint64                              // evictions counted so far
	per     map[netip.AddrPort]int64            // and to each target's flow count
	tgts    map[netip.AddrPort]*registry.Target // the targets that got a count
}

// kernelEligible says why a UDP front cannot go to the kernel, or "".
func kernelEligible(u *udpFront) string {
	r := u.route.Load()
	switch {
	case u.bindA.IP.IsUnspecified() || u.bindA.IP.Zone() != "":
		return "the bind address is a wildcard or has a zone"
	case len(r.Groups) != 1:
		return "it forwards to weighted target groups"
	case !r.Groups[0].Config().Attributes.PreserveClientIP:
		return "its target group does not preserve the client IP (preserve_client_ip.enabled)"
	case r.Groups[0].Config().Attributes.ProxyProtocolV2:
		return "its target group sends a PROXY header"
	}
	return ""
}

// startKernelPath loads the fast path for the qualifying fronts (already
// bound, so their ports are known). A kernel that cannot run it leaves every
// front in user space, with a warning: the fast path only accelerates.
func (s *Server) startKernelPath() {
	if !s.cfg.UDPFastPath {
		return
	}
	var fronts []*udpFront
	for _, u := range s.udp {
		if why := kernelEligible(u); why != "" {
			s.log.Info("UDP listener stays in user space", zap.String(logListener, u.cfg.Name), zap.Stringer(logAddr, u.Addr()), zap.String("reason", why))
			continue
		}
		fronts = append(fronts, u)
	}
	if len(fronts) == 0 {
		return
	}
	k, err := s.newKernelPath(fronts)
	if err != nil {
		s.log.Warn("UDP fast path unavailable; UDP stays in user space", zap.Error(err))
		return
	}
	s.kernel.Store(k)
	go k.run()
}

func (s *Server) newKernelPath(fronts []*udpFront) (*kernelPath, error) {
	opts := fastpath.Options{MaxFlows: s.cfg.MaxFlows, Inherit: s.opts.Inherit}
	for _, u := range fronts {
		acl := u.acl.Load()
		opts.ACLPrefixes += len(acl.Allow) + len(acl.Deny)
		if u.bindA.IP.Unmap().Is4() {
			opts.Services++
		} else {
			opts.Services6++
		}
	}
	p, err := fastpath.New(opts)
	if err != nil {
		return nil, err
	}
	for _, err := range p.Inherited {
		s.log.Warn("UDP fast path: a flow map handed over by the previous process is not used", zap.Error(err))
	}
	if p.KeptFlows {
		s.log.Info("UDP fast path: kept the previous process's flows")
	}
	k := &kernelPath{s: s, p: p, sweep: 10 * time.Second, kick: make(chan struct{}, 1), end: make(chan endReq, 64), stop: make(chan struct{}), done: make(chan struct{})}
	for _, u := range fronts {
		vip := u.Addr().(*net.UDPAddr).AddrPort()
		vip = netip.AddrPortFrom(vip.Addr().Unmap(), vip.Port())
		g := u.route.Load().Groups[0]
		id, err := p.AddService(vip, u.cfg.UDPIdleTimeout, g.Config().Attributes.Stickiness)
		if err == nil {
			acl := u.acl.Load()
			err = p.SetACL(id, acl.Allow, acl.Deny)
		}
		if err != nil {
			p.Close()
			return nil, err
		}
		k.fronts = append(k.fronts, &kernelFront{u: u, id: id, per: map[netip.AddrPort]int64{}, tgts: map[netip.AddrPort]*registry.Target{}})
		// Sweep within a quarter of the shortest timeout, at most every 10 s.
		k.sweep = max(100*time.Millisecond, min(k.sweep, u.cfg.UDPIdleTimeout/4))
	}
	if err := k.sync(); err != nil {
		p.Close()
		return nil, err
	}
	ifaces := s.cfg.UDPFastPathInterfaces
	if len(ifaces) == 0 {
		ifaces = upInterfaces()
	}
	for _, name := range ifaces {
		if err := p.Attach(name); err != nil {
			p.Close()
			return nil, err
		}
	}
	for _, f := range k.fronts {
		for _, t := range f.group().Config().Targets {
			if sysctl := forwardingSysctl(t.Address.Addr()); !isLocal(t.Address.Addr()) && readSysctl(sysctl) == "0" {
				s.log.Warn("IP forwarding is off, so the UDP fast path cannot reach targets on other hosts", zap.String("sysctl", sysctl), zap.Stringer(logTarget, t.Address))
			}
		}
	}
	for _, f := range k.fronts {
		s.log.Info("UDP listener forwarded in the kernel", zap.String(logListener, f.u.cfg.Name), zap.Stringer(logAddr, f.u.Addr()), zap.Strings("interfaces", ifaces))
	}
	return k, nil
}

// forwardingSysctl is the file that turns on forwarding for ip's family.
func forwardingSysctl(ip netip.Addr) string {
	if ip.Unmap().Is4() {
		return "/proc/sys/net/ipv4/ip_forward"
	}
	return "/proc/sys/net/ipv6/conf/all/forwarding"
}

func readSysctl(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

// isLocal reports whether ip is loopback or an address of this host.
func isLocal(ip netip.Addr) bool {
	ip = ip.Unmap()
	if ip.IsLoopback() {
		return true
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if h, ok := netip.AddrFromSlice(n.IP); ok && h.Unmap() == ip {
				return true
			}
		}
	}
	return false
}

// upInterfaces lists the interfaces that are up and carry Ethernet framing
// (loopback included), which the program parses.
func upInterfaces() []string {
	ifs, _ := net.Interfaces()
	var out []string
	for _, ifi := range ifs {
		if ifi.Flags&net.FlagUp == 0 {
			continue
		}
		b, err := os.ReadFile("/sys/class/net/" + ifi.Name + "/type")
		if t := strings.TrimSpace(string(b)); err == nil && (t == "1" || t == "772") { // ARPHRD_ETHER, ARPHRD_LOOPBACK
			out = append(out, ifi.Name)
		}
	}
	return out
}

// endFlows ends the UDP flows pinned to t, in user space and in the kernel
// (whose tables are brought up to date first, so the clients' next datagrams
// cannot be pinned to t again).
func (s *Server) endFlows(t *registry.Target, why string) {
	n := 0
	for _, u := range s.current() {
		n += u.endFlows(t)
	}
	if n > 0 {
		s.log.Info("ended UDP flows", zap.String(logTarget, t.Name), zap.Int(logFlows, n), zap.String("why", why))
	}
	if k := s.kernel.Load(); k != nil {
		select {
		case k.end <- endReq{netip.AddrPortFrom(t.Addr.Addr().Unmap(), t.Addr.Port()), t.Name, why}:
		case <-k.stop:
		}
	}
}

// endFlows ends the kernel's flows to one target, after writing the tables.
func (k *kernelPath) endFlows(r endReq) {
	if err := k.sync(); err != nil {
		k.s.log.Error("writing UDP fast path tables", zap.Error(err))
	}
	n, err := k.p.EndFlowsTo(r.target)
	if err != nil {
		k.s.log.Error("ending UDP fast path flows", zap.Error(err))
	}
	if n > 0 {
		k.s.log.Info("ended UDP flows in the kernel", zap.String(logTarget, r.name), zap.Int(logFlows, n), zap.String("why", r.why))
	}
}

// changed asks for the tables to be written again (a group's snapshot
// changed). It never blocks.
func (k *kernelPath) changed() {
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// sync writes every front's current table: the target of each Maglev slot
// of the front's zone view, so the kernel picks what user space would.
func (k *kernelPath) sync() error {
	var buf [1]int
	for _, f := range k.fronts {
		if f.gone.Load() {
			continue
		}
		snap := f.group().Snapshot().ForZone(f.u.zone)
		var slots []netip.AddrPort
		if len(snap.Targets) > 0 {
			slots = make([]netip.AddrPort, maglev.DefaultSize)
			for i := range slots {
				// A slot's owner is the first choice of a hash equal to it.
				// (A target of the other family leaves its slots empty.)
				if p := snap.Balance.Pick(uint64(i), buf[:]); len(p) == 1 {
					a := snap.Targets[p[0]].Addr
					slots[i] = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
				}
			}
		}
		if err := k.p.SetTable(f.id, slots); err != nil {
			return fmt.Errorf("listener %s: %w", f.u.cfg.Name, err)
		}
	}
	return nil
}

func (k *kernelPath) run() {
	defer close(k.done)
	stats := time.NewTicker(time.Second)
	defer stats.Stop()
	sweep := time.NewTicker(k.sweep)
	defer sweep.Stop()
	for {
		select {
		case <-k.stop:
			return
		case <-k.kick:
			if err := k.sync(); err != nil {
				k.s.log.Error("writing UDP fast path tables", zap.Error(err))
			}
		case r := <-k.end:
			k.endFlows(r)
		case <-stats.C:
			k.collect()
		case <-sweep.C:
			k.expire()
		}
	}
}

// collect adds what the kernel counted since the last call to the fronts'
// counters.
func (k *kernelPath) collect() {
	for _, f := range k.fronts {
		st, err := k.p.Stats(f.id)
		if err != nil {
			k.s.log.Error("reading UDP fast path counters", zap.Error(err))
			return
		}
		u, d := f.u, f.last
		u.pktsIn.Add(float64(st.PacketsIn - d.PacketsIn))
		u.bytesIn.Add(float64(st.BytesIn - d.BytesIn))
		u.pktsOut.Add(float64(st.PacketsOut - d.PacketsOut))
		u.bytesOut.Add(float64(st.BytesOut - d.BytesOut))
		u.newFlows.Add(float64(st.NewFlows - d.NewFlows))
		u.rejects[listen.ReasonFlowTableFull].Add(float64(st.RefusedFull - d.RefusedFull))
		u.rejects[listen.ReasonNoTarget].Add(float64(st.RefusedNoTarget - d.RefusedNoTarget))
		u.dropped.Add(float64(st.RefusedCollision - d.RefusedCollision))
		u.rejects[listen.ReasonACL].Add(float64(st.RefusedACL - d.RefusedACL))
		f.last = st
	}
}

// expire sweeps idle flows and brings the flow gauges and the targets' flow
// counts up to date.
func (k *kernelPath) expire() {
	perFront := make([]int64, len(k.fronts))
	per := make([]map[netip.AddrPort]int64, len(k.fronts))
	for i := range per {
		per[i] = map[netip.AddrPort]int64{}
	}
	if _, err := k.p.Sweep(func(fl fastpath.Flow) {
		if fl.Service < len(k.fronts) {
			perFront[fl.Service]++
			per[fl.Service][fl.Target]++
		}
	}); err != nil {
		// What was read still counts; a failed removal is retried next time.
		k.s.log.Error("sweeping UDP fast path flows", zap.Error(err))
	}
	for i, f := range k.fronts {
		old := f.flows.Swap(perFront[i])
		f.u.active.Add(float64(perFront[i] - old))
		f.u.entries.Add(float64(perFront[i] - old))
		f.count(per[i])
		// The flow maps are LRU hashes: what a full one evicted shows as
		// flows made that neither ended nor live.
		if ev := k.p.Evicted(f.id, int(perFront[i])); ev > f.evicted {
			f.u.evictions.Add(float64(ev - f.evicted))
			f.evicted = ev
		}
	}
}

// group is the front's target group now (a reload may change it).
func (f *kernelFront) group() *registry.Group { return f.u.route.Load().Groups[0] }

// drop takes u out of the kernel path, if it is there: new flows reach
// its socket (or, once it is closed, nothing); the kernel's pinned flows
// keep their targets until they idle out.
func (k *kernelPath) drop(u *udpFront, why string) {
	for _, f := range k.fronts {
		if f.u != u || f.gone.Swap(true) {
			continue
		}
		if err := k.p.RemoveService(f.id); err != nil {
			k.s.log.Error("removing a listener from the UDP fast path", zap.Error(err))
		}
		k.s.log.Info("UDP listener leaves the kernel path", zap.String(logListener, u.cfg.Name), zap.Stringer(logAddr, u.Addr()), zap.String("reason", why))
	}
}

// serves reports whether u is forwarded in the kernel.
func (k *kernelPath) serves(u *udpFront) bool {
	for _, f := range k.fronts {
		if f.u == u && !f.gone.Load() {
			return true
		}
	}
	return false
}

// count moves each target's share of the kernel's flows into its flow count.
func (f *kernelFront) count(now map[netip.AddrPort]int64) {
	for a, n := range f.per {
		if t := f.tgts[a]; t != nil {
			t.AddFlows(-n)
		}
	}
	clear(f.per)
	clear(f.tgts)
	for _, t := range f.group().Targets() {
		a := netip.AddrPortFrom(t.Addr.Addr().Unmap(), t.Addr.Port())
		if n := now[a]; n > 0 {
			t.AddFlows(n)
			f.per[a], f.tgts[a] = n, t
		}
	}
}

// flows is the number of flows the kernel pins, as of the last sweep.
func (k *kernelPath) flows() int {
	n := 0
	for _, f := range k.fronts {
		n += int(f.flows.Load())
	}
	return n
}

// close stops the loop and unloads the programs; the flows they pinned end.
// The last counts reach the metrics first.
func (k *kernelPath) close() {
	close(k.stop)
	<-k.done
	k.collect()
	for _, f := range k.fronts {
		old := f.flows.Swap(0)
		f.u.active.Add(float64(-old))
		f.u.entries.Add(float64(-old))
		f.count(nil)
	}
	k.p.Close()
}
