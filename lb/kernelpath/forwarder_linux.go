package kernelpath

import (
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/fastpath"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/flowhash"
	"github.com/l4lb/l4lb/pkg/maglev"
)

// Front is one listener address a Forwarder serves, as its server (UDP or
// TCP) describes it.
type Front struct {
	Key           any // the server's own handle for it: Drop and Serves take it
	Name          string
	VIP           netip.AddrPort // a specific address, unmapped
	Zone          string
	Idle          time.Duration
	Sticky        bool
	DSR           bool   // forward by direct server return (IP in IP; replies go direct)
	GUEPort       uint16 // with DSR: encapsulate in UDP to this port (GUE) instead of IPIP
	QUICConnIDLen int    // QUIC listeners: route by connection ID, of this length
	Allow, Deny   []netip.Prefix
	Group         func() *registry.Group // its one target group, now
	Count         Counters
}

// Counters are a front's metrics, which the kernel's counts feed. Any may be
// nil.
type Counters struct {
	PacketsIn, BytesIn, PacketsOut, BytesOut prometheus.Counter
	NewFlows, Evictions                      prometheus.Counter
	RefusedFull, RefusedNoTarget, RefusedACL prometheus.Counter
	Collisions                               prometheus.Counter
	ClientResets                             prometheus.Counter // TCP
	Active, Entries                          prometheus.Gauge
	// QUIC listeners: datagrams by route (pkg/quiclb.Route order), and
	// migrations.
	QUIC           [5]prometheus.Counter
	QUICMigrations prometheus.Counter
}

// ForwarderOptions configure a Forwarder.
type ForwarderOptions struct {
	Path       fastpath.Options
	Interfaces []string // where to attach; empty means every interface that is up
	Log        *zap.Logger
	// Passive hears of a TCP target that refused connections (answered a
	// SYN with a reset); nil ignores them.
	Passive func(*registry.Target)
}

// Forwarder keeps a fastpath.Path in step with the registry for a set of fronts: it
// writes each front's Maglev table into the kernel whenever its group's
// snapshot changes, carries the kernel's counters and flow counts into the
// fronts' metrics and the targets' flow counts, sweeps idle flows, ends the
// flows of targets that leave, and (TCP) feeds the targets' resets into
// passive health.
type Forwarder struct {
	p      *fastpath.Path
	opts   ForwarderOptions
	proto  string
	fronts []*front
	sweep  time.Duration
	kick   chan struct{}
	// Targets whose flows are to end: a pending set and a kick, so that
	// asking never blocks. The registry asks while it holds a group's
	// lock, which the loop's own table writes take, and the loop itself
	// asks (passive health from its counters): a bounded channel could
	// fill and wedge both.
	endMu   sync.Mutex
	ends    map[netip.AddrPort]endReq
	endKick chan struct{}
	stop    chan struct{}
	done    chan struct{}
	resets  map[netip.AddrPort]fastpath.Resets // per target, at the last collect
	guard   *guard                             // the DSR fronts' rules for after a crash
}

// endReq asks the loop to end the flows pinned to a target.
type endReq struct {
	target netip.AddrPort
	name   string
	why    string
}

type front struct {
	Front
	id      int
	gone    atomic.Bool // removed by a reload: no new flows in the kernel
	last    fastpath.Stats
	flows   atomic.Int64                        // what the last sweep added to the front's gauges
	evicted uint64                              // evictions counted so far
	per     map[netip.AddrPort]int64            // and to each target's flow count
	tgts    map[netip.AddrPort]*registry.Target // the targets that got a count
}

// NewForwarder loads a fastpath.Path for fronts, writes their tables and attaches
// it. Call Run to keep it up to date.
func NewForwarder(fronts []Front, opts ForwarderOptions) (*Forwarder, error) {
	po := opts.Path
	for _, f := range fronts {
		po.ACLPrefixes += len(f.Allow) + len(f.Deny)
		if f.VIP.Addr().Is4() {
			po.Services++
		} else {
			po.Services6++
		}
	}
	p, err := fastpath.New(po)
	if err != nil {
		return nil, err
	}
	proto := protoName(p.Options().Protocol)
	for _, err := range p.Inherited {
		opts.Log.Warn(proto+" fast path: a flow map handed over by the previous process is not used", zap.Error(err))
	}
	switch {
	case p.AdoptedPins:
		opts.Log.Info(proto+" fast path: adopted the flows a previous process pinned", zap.String("bpffs", p.Options().Pin))
	case p.KeptFlows:
		opts.Log.Info(proto + " fast path: kept the previous process's flows")
	}
	k := &Forwarder{p: p, opts: opts, proto: proto, sweep: 10 * time.Second, kick: make(chan struct{}, 1), endKick: make(chan struct{}, 1), ends: map[netip.AddrPort]endReq{},
		stop: make(chan struct{}), done: make(chan struct{}), resets: map[netip.AddrPort]fastpath.Resets{}}
	for _, fr := range fronts {
		id, err := p.AddService(fr.VIP, fr.Idle, fr.Sticky)
		if err == nil {
			err = p.SetACL(id, fr.Allow, fr.Deny)
		}
		if err == nil && fr.DSR {
			var src netip.Addr
			if src, err = dsrSource(fr.Group()); err == nil {
				err = p.ForwardDSR(id, src, fr.GUEPort)
				encap := "ipip"
				switch {
				case fr.GUEPort != 0 && fr.VIP.Addr().Is6():
					encap = fmt.Sprintf("gue over ipv6, port %d", fr.GUEPort)
				case fr.GUEPort != 0:
					encap = fmt.Sprintf("gue, port %d", fr.GUEPort)
				case fr.VIP.Addr().Is6():
					encap = "ipv6 in ipv6"
				}
				opts.Log.Info(proto+" listener forwards by direct server return", zap.String("listener", fr.Name),
					zap.Stringer("encapsulation_source", src), zap.String("encapsulation", encap))
			}
		}
		if err != nil {
			p.Close()
			return nil, err
		}
		k.fronts = append(k.fronts, &front{Front: fr, id: id, per: map[netip.AddrPort]int64{}, tgts: map[netip.AddrPort]*registry.Target{}})
		// Sweep within a quarter of the shortest timeout, at most every 10 s.
		k.sweep = max(100*time.Millisecond, min(k.sweep, fr.Idle/4))
	}
	if proto == "TCP" {
		// Closed flows linger for seconds only, and a sweep removes them.
		k.sweep = min(k.sweep, time.Second)
	}
	if err := k.Sync(); err != nil {
		p.Close()
		return nil, err
	}
	ifaces := opts.Interfaces
	if len(ifaces) == 0 {
		ifaces = UpInterfaces()
	}
	for _, name := range ifaces {
		if err := p.Attach(name); err != nil {
			p.Close()
			return nil, err
		}
	}
	for _, f := range k.fronts {
		for _, t := range f.Group().Config().Targets {
			if sysctl := ForwardingSysctl(t.Address.Addr()); !IsLocal(t.Address.Addr()) && readSysctl(sysctl) == "0" {
				opts.Log.Warn("IP forwarding is off, so the "+proto+" fast path cannot reach targets on other hosts", zap.String("sysctl", sysctl), zap.Stringer("target", t.Address))
			}
		}
		opts.Log.Info(proto+" listener forwarded in the kernel", zap.String("listener", f.Name), zap.Stringer("address", f.VIP), zap.Strings("interfaces", ifaces))
		if f.DSR {
			warnAcceptLocal(opts.Log, ifaces)
		}
	}
	if p.Options().Pin != "" {
		if err := p.PinMaps(); err != nil {
			opts.Log.Warn(proto+" fast path not pinned: it stops forwarding when l4lb stops", zap.String("bpffs", p.Options().Pin), zap.Error(err))
		} else {
			opts.Log.Info(proto+" fast path pinned: it forwards on if l4lb dies", zap.String("bpffs", p.Options().Pin), zap.Int("adopted_links", p.AdoptedLinks))
		}
	}
	// The guard is the fallback: pinned programs forward on after l4lb
	// dies, and what reaches the guard is what they did not take (no pins
	// possible, or pins that died with a private mount namespace, as
	// under ip netns exec): dropped rather than reset.
	g, err := installGuard(fronts, p.Options().Protocol, os.Getpid())
	if err != nil {
		opts.Log.Warn("no guard for the "+proto+" DSR listeners: were l4lb to die, this host would reset their flows until the routers moved them", zap.Error(err))
	}
	k.guard = g
	return k, nil
}

// Start runs a Forwarder for fronts, or returns nil: when no front
// qualifies, or when the kernel cannot run the programs (no BPF, not
// permitted), which is logged as a warning: the fast path only
// accelerates, and the fronts stay in user space.
func Start(fronts []Front, opts ForwarderOptions) *Forwarder {
	if len(fronts) == 0 {
		return nil
	}
	k, err := NewForwarder(fronts, opts)
	if err != nil {
		proto := protoName(opts.Path.Protocol)
		opts.Log.Warn(proto+" fast path unavailable; "+proto+" stays in user space", zap.Error(err))
		return nil
	}
	go k.Run()
	return k
}

// Run keeps the fastpath.Path up to date until Close.
func (k *Forwarder) Run() {
	defer close(k.done)
	stats := time.NewTicker(500 * time.Millisecond)
	defer stats.Stop()
	sweep := time.NewTicker(k.sweep)
	defer sweep.Stop()
	for {
		select {
		case <-k.stop:
			return
		case <-k.kick:
			if err := k.Sync(); err != nil {
				k.opts.Log.Error("writing "+k.proto+" fast path tables", zap.Error(err))
			}
		case <-k.endKick:
			k.endFlows(k.takeEnds())
		case <-stats.C:
			k.collect()
		case <-sweep.C:
			k.expire()
		}
	}
}

// Changed asks for the tables to be written again (a group's snapshot
// changed). It never blocks.
func (k *Forwarder) Changed() {
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// EndFlows has the loop end the kernel's flows pinned to t, after writing
// the tables (so the clients' next packets cannot be pinned to t again).
// It never blocks: the request joins a pending set, which the loop takes
// whole (one request per target: asking twice ends its flows once).
func (k *Forwarder) EndFlows(t *registry.Target, why string) {
	a := netip.AddrPortFrom(t.Addr.Addr().Unmap(), t.Addr.Port())
	k.endMu.Lock()
	k.ends[a] = endReq{a, t.Name, why}
	k.endMu.Unlock()
	select {
	case k.endKick <- struct{}{}:
	default:
	}
}

// takeEnds empties the pending set.
func (k *Forwarder) takeEnds() []endReq {
	k.endMu.Lock()
	defer k.endMu.Unlock()
	out := make([]endReq, 0, len(k.ends))
	for _, r := range k.ends {
		out = append(out, r)
	}
	clear(k.ends)
	return out
}

// endFlows ends the kernel's flows to the targets of rs, once the tables
// no longer route new flows to them: one table write and one pass over the
// flow maps for all of them.
func (k *Forwarder) endFlows(rs []endReq) {
	if len(rs) == 0 {
		return
	}
	if err := k.Sync(); err != nil {
		k.opts.Log.Error("writing "+k.proto+" fast path tables", zap.Error(err))
	}
	targets := make([]netip.AddrPort, len(rs))
	names := make([]string, len(rs))
	whys := map[string]bool{}
	for i, r := range rs {
		targets[i], names[i] = r.target, r.name
		whys[r.why] = true
	}
	n, err := k.p.EndFlowsTo(targets...)
	if err != nil {
		k.opts.Log.Error("ending "+k.proto+" fast path flows", zap.Error(err))
	}
	if n > 0 {
		k.opts.Log.Info("ended "+k.proto+" flows in the kernel", zap.Strings("targets", names), zap.Int("flows", n),
			zap.Strings("why", slices.Sorted(maps.Keys(whys))))
	}
}

// Sync writes every front's current table: the target of each Maglev slot
// of the front's zone view, so the kernel picks what user space would. For
// TCP it also watches the targets' resets.
func (k *Forwarder) Sync() error {
	var buf [1]int
	var watch []netip.AddrPort
	for _, f := range k.fronts {
		if f.gone.Load() {
			continue
		}
		snap := f.Group().Snapshot().ForZone(f.Zone)
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
		if f.QUICConnIDLen > 0 {
			// The server IDs first: the table switch below makes the
			// service's QUIC routing take effect.
			ids := map[uint64]netip.AddrPort{}
			for id, t := range f.Group().Snapshot().ServerIDs {
				ids[id] = t.Addr
			}
			if err := k.p.RouteQUIC(f.id, f.QUICConnIDLen, ids); err != nil {
				return fmt.Errorf("listener %s: %w", f.Name, err)
			}
		}
		if err := k.p.SetTable(f.id, slots); err != nil {
			return fmt.Errorf("listener %s: %w", f.Name, err)
		}
		for _, t := range f.Group().Targets() {
			watch = append(watch, t.Addr)
		}
	}
	if k.p.Options().Protocol == flowhash.ProtoTCP {
		return k.p.WatchTargets(watch)
	}
	return nil
}

// collect adds what the kernel counted since the last call to the fronts'
// counters, and hands targets' refusals to passive health.
func (k *Forwarder) collect() {
	for _, f := range k.fronts {
		st, err := k.p.Stats(f.id)
		if err != nil {
			k.opts.Log.Error("reading "+k.proto+" fast path counters", zap.Error(err))
			return
		}
		c, d := &f.Count, f.last
		add(c.PacketsIn, st.PacketsIn-d.PacketsIn)
		add(c.BytesIn, st.BytesIn-d.BytesIn)
		add(c.PacketsOut, st.PacketsOut-d.PacketsOut)
		add(c.BytesOut, st.BytesOut-d.BytesOut)
		add(c.NewFlows, st.NewFlows-d.NewFlows)
		add(c.RefusedFull, st.RefusedFull-d.RefusedFull)
		add(c.RefusedNoTarget, st.RefusedNoTarget-d.RefusedNoTarget)
		add(c.Collisions, st.RefusedCollision-d.RefusedCollision)
		add(c.RefusedACL, st.RefusedACL-d.RefusedACL)
		add(c.ClientResets, st.ClientResets-d.ClientResets)
		for i := range st.QUIC {
			add(c.QUIC[i], st.QUIC[i]-d.QUIC[i])
		}
		add(c.QUICMigrations, st.QUICMigrations-d.QUICMigrations)
		f.last = st
	}
	if k.p.Options().Protocol != flowhash.ProtoTCP {
		return
	}
	k.countResets(k.p.TargetResets())
}

// countResets adds to each target's counter what its reset counts in the
// kernel grew by since the last read, and hears refused connects as
// passive health failures.
func (k *Forwarder) countResets(now map[netip.AddrPort]fastpath.Resets, err error) {
	if err != nil {
		// A partial read must not become the baseline: the next full one
		// would count the missing targets' resets again, and passive
		// health would fire for them again.
		k.opts.Log.Error("reading "+k.proto+" fast path target resets", zap.Error(err))
		return
	}
	seen := map[*registry.Target]bool{}
	for _, f := range k.fronts {
		for _, t := range f.Group().Targets() {
			a := netip.AddrPortFrom(t.Addr.Addr().Unmap(), t.Addr.Port())
			r, was := now[a], k.resets[a]
			if seen[t] || r.SYN < was.SYN || r.Other < was.Other {
				continue // counted already, or counting started again
			}
			seen[t] = true
			add(t.Resets, r.SYN-was.SYN+r.Other-was.Other)
			// Each refusal is a failed connect, as on the socket path; a
			// few per collect suffice to cross any unhealthy threshold.
			// They are reported off this loop, a goroutine a target: a
			// health change rebuilds the group's tables under its lock,
			// which this loop's table writes take too, and changes that
			// come together share one rebuild.
			if n := min(r.SYN-was.SYN, 10); n > 0 && k.opts.Passive != nil {
				go func() {
					for range n {
						k.opts.Passive(t)
					}
				}()
			}
		}
	}
	k.resets = now
}

// protoName names a protocol in logs; 0 is UDP, a fastpath.Path's default.
func protoName(p uint8) string {
	if p == flowhash.ProtoTCP {
		return "TCP"
	}
	return "UDP"
}

func add(c prometheus.Counter, n uint64) {
	if c != nil && n > 0 {
		c.Add(float64(n))
	}
}

func addGauge(g prometheus.Gauge, n int64) {
	if g != nil && n != 0 {
		g.Add(float64(n))
	}
}

// expire sweeps idle flows and brings the flow gauges and the targets' flow
// counts up to date.
func (k *Forwarder) expire() {
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
		k.opts.Log.Error("sweeping "+k.proto+" fast path flows", zap.Error(err))
	}
	for i, f := range k.fronts {
		old := f.flows.Swap(perFront[i])
		addGauge(f.Count.Active, perFront[i]-old)
		addGauge(f.Count.Entries, perFront[i]-old)
		f.count(per[i])
		// The flow maps are LRU hashes: what a full one evicted shows as
		// flows made that neither ended nor live.
		if ev := k.p.Evicted(f.id, int(perFront[i])); ev > f.evicted {
			add(f.Count.Evictions, ev-f.evicted)
			f.evicted = ev
		}
	}
}

// Drop takes the front with key out of the kernel path, if it is there:
// new flows reach its socket (or, once it is closed, nothing); the kernel's
// pinned flows keep their targets until they idle out.
func (k *Forwarder) Drop(key any, why string) {
	for _, f := range k.fronts {
		if f.Key != key || f.gone.Swap(true) {
			continue
		}
		if err := k.p.RemoveService(f.id); err != nil {
			k.opts.Log.Error("removing a listener from the "+k.proto+" fast path", zap.Error(err))
		}
		k.opts.Log.Info(k.proto+" listener leaves the kernel path", zap.String("listener", f.Name), zap.Stringer("address", f.VIP), zap.String("reason", why))
	}
}

// Serves reports whether the front with key is forwarded in the kernel.
func (k *Forwarder) Serves(key any) bool {
	for _, f := range k.fronts {
		if f.Key == key && !f.gone.Load() {
			return true
		}
	}
	return false
}

// count moves each target's share of the kernel's flows into its flow count.
func (f *front) count(now map[netip.AddrPort]int64) {
	for a, n := range f.per {
		if t := f.tgts[a]; t != nil {
			t.AddFlows(-n)
		}
	}
	clear(f.per)
	clear(f.tgts)
	for _, t := range f.Group().Targets() {
		a := netip.AddrPortFrom(t.Addr.Addr().Unmap(), t.Addr.Port())
		if n := now[a]; n > 0 {
			t.AddFlows(n)
			f.per[a], f.tgts[a] = n, t
		}
	}
}

// Path says how the kernel carries the named listener's address vip:
// "kernel" (NAT), "dsr", or "" when it does not.
func (k *Forwarder) Path(name string, vip netip.AddrPort) string {
	vip = netip.AddrPortFrom(vip.Addr().Unmap(), vip.Port())
	for _, f := range k.fronts {
		if f.Name != name || f.VIP != vip || f.gone.Load() {
			continue
		}
		if f.DSR {
			return "dsr"
		}
		return "kernel"
	}
	return ""
}

// Flows is the number of flows the kernel pins, as of the last sweep.
func (k *Forwarder) Flows() int {
	n := 0
	for _, f := range k.fronts {
		n += int(f.flows.Load())
	}
	return n
}

// FlowFiles hands the flow maps over to a new process (fastpath.Path.FlowFiles).
func (k *Forwarder) FlowFiles(add func(name string, f *os.File)) error { return k.p.FlowFiles(add) }

// Close stops the loop and unloads the programs; the flows they pinned end
// (unless a new process took the maps over). The last counts reach the
// metrics first. Then the DSR guard goes: l4lb stopped on purpose.
func (k *Forwarder) Close() error {
	close(k.stop)
	<-k.done
	k.collect()
	for _, f := range k.fronts {
		old := f.flows.Swap(0)
		addGauge(f.Count.Active, -old)
		addGauge(f.Count.Entries, -old)
		f.count(nil)
	}
	err := k.p.Close()
	if gerr := k.guard.remove(); gerr != nil {
		k.opts.Log.Warn("removing the "+k.proto+" DSR guard", zap.Error(gerr))
	}
	return err
}
