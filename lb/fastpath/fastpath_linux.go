package fastpath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/l4lb/l4lb/pkg/flowhash"
	"github.com/l4lb/l4lb/pkg/maglev"
)

// Options size the kernel maps; they are fixed for the life of a Path.
type Options struct {
	// Protocol is what the Path forwards: flowhash.ProtoUDP (the default)
	// or flowhash.ProtoTCP. Each protocol has a Path (programs and maps)
	// of its own.
	Protocol uint8
	// MaxTargets bounds the TCP targets whose resets are counted
	// (WatchTargets; default 1024).
	MaxTargets int
	// TCPLinger is how long a closed TCP flow (a FIN both ways, or a RST)
	// is kept for stray segments (default 5 s); TCPSynTimeout how long a
	// flow whose handshake has not completed is kept after its last
	// segment (default 10 s). Both are cut to the service's idle timeout.
	TCPLinger, TCPSynTimeout time.Duration
	MaxFlows                 int // flows pinned at once, per address family (default 65536)
	Services                 int // IPv4 listener addresses served (default 16 when neither is set)
	Services6                int // IPv6 listener addresses served
	// ACLPrefixes bounds the allow and deny prefixes of all services, per
	// list and family (default 64).
	ACLPrefixes int
	// Inherit, if not nil, has the flow maps a previous process handed over
	// (FlowFiles) in a binary upgrade. A map of the same shape is used
	// instead of a new one, so the flows it pinned keep their targets and
	// both processes' programs see the same flows while they overlap.
	Inherit interface{ Take(name string) *os.File }
	// Pin is a directory on the BPF filesystem where the links and maps
	// are pinned, so that forwarding outlives the process (pin_linux.go);
	// "" pins nothing. Pins found there are adopted.
	Pin string
}

// Path is the loaded programs, their maps and their attachments.
type Path struct {
	opts            Options
	fams            [2]*famPath // IPv4, IPv6
	stats, scratch  *ebpf.Map
	ports           *ebpf.Map // bitmaps of listener and target ports
	ingress, egress *ebpf.Program

	// portSet are the listener and the target ports the bitmaps hold.
	// Ports are only added: a removed listener's or target's flows still
	// need their packets rewritten until they end.
	portSet [2]map[uint16]bool

	mu    sync.Mutex
	links []link.Link
	svcs  []*service

	// KeptFlows says the flow maps a previous process handed over are
	// in use; Inherited says why one was not (its shape differs: MaxFlows
	// changed, say), whose flows then end when that process exits.
	KeptFlows bool
	Inherited []error
	pins
}

// pins are a Path's links and maps on the BPF filesystem, in Options.Pin.
type pins struct {
	dir string
	// AdoptedPins says the flow maps were taken from pins a previous
	// process left (it died, or stopped without removing them);
	// AdoptedLinks counts the pinned links moved to this Path's programs.
	AdoptedPins  bool
	AdoptedLinks int
	pinned       bool  // PinMaps pinned this Path's maps
	pinErr       error // why something could not be pinned
}

// Options are the options p was made with, defaults filled in.
func (p *Path) Options() Options { return p.opts }

// famPath is one address family's maps.
type famPath struct {
	f                       family
	services, tables, flows *ebpf.Map
	syn                     *ebpf.Map // TCP flows whose handshake has not completed
	targets                 *ebpf.Map // TCP resets per watched target
	allow, deny             *ebpf.Map // LPM tries keyed by service and prefix
	quic                    *ebpf.Map // QUIC services' server IDs, to their targets
	max                     int       // services it has tables for
	n                       int       // services it serves
}

type service struct {
	vip     netip.AddrPort
	idle    time.Duration
	sticky  bool
	flags   uint32                    // svcSticky, svcAllow, svcDeny, svcDSR, svcGUE
	encap   netip.Addr                // svcDSR: the outer source
	guePort uint16                    // svcGUE: the outer UDP destination port
	quicLen uint8                     // svcQUIC: the length of the targets' connection IDs
	quicIDs map[uint64]netip.AddrPort // svcQUIC: the server IDs written to the program
	fam     *famPath
	index   int    // within its family: which tables are its own
	removed uint64 // flows removed by Sweep and EndFlowsTo
	active  int    // which of the service's two tables the program reads
	gone    bool   // RemoveService took it out of the program's view
}

// Stats are one service's counters since the Path was made.
type Stats struct {
	PacketsIn, BytesIn   uint64 // client → target
	PacketsOut, BytesOut uint64 // target → client
	NewFlows             uint64
	RefusedFull          uint64 // the flow map was full
	RefusedNoTarget      uint64 // the table had no target
	RefusedCollision     uint64 // another listener's flow holds the same target-side tuple
	RefusedACL           uint64 // the listener's allow or deny list
	// QUIC services: new flows' first datagrams by route (pkg/quiclb.Route
	// order: hash, cid, unknown_cid, bad_version, short; the last two
	// dropped), and connections seen from a new address.
	QUIC           [5]uint64
	QUICMigrations uint64
	ClientResets   uint64 // TCP: resets from clients
	TargetResets   uint64 // TCP: resets from targets
	Established    uint64 // TCP: handshakes completed
	PickedUp       uint64 // TCP: flows picked up mid-connection, begun on another node
}

// Flow is one pinned flow, as the sweep sees it.
type Flow struct {
	Service int
	Client  netip.AddrPort
	Target  netip.AddrPort
	Idle    time.Duration // since its last packet (client to target), as List read it
}

// ErrUnsupported means the kernel refused the program or its maps (no BPF,
// no tcx, or not permitted).
var ErrUnsupported = errors.New("fastpath: kernel fast path unavailable")

// New loads the programs with empty maps. They attach nowhere yet.
func New(opts Options) (*Path, error) {
	if opts.MaxFlows <= 0 {
		opts.MaxFlows = 65536
	}
	if opts.Services <= 0 && opts.Services6 <= 0 {
		opts.Services = 16
	}
	opts.Services, opts.Services6 = max(opts.Services, 0), max(opts.Services6, 0)
	if opts.ACLPrefixes <= 0 {
		opts.ACLPrefixes = 64
	}
	if opts.MaxTargets <= 0 {
		opts.MaxTargets = 1024
	}
	if opts.TCPLinger <= 0 {
		opts.TCPLinger = 5 * time.Second
	}
	if opts.TCPSynTimeout <= 0 {
		opts.TCPSynTimeout = 10 * time.Second
	}
	switch opts.Protocol {
	case 0:
		opts.Protocol = flowhash.ProtoUDP
	case flowhash.ProtoUDP, flowhash.ProtoTCP:
	default:
		return nil, fmt.Errorf("fastpath: protocol %d; UDP (17) or TCP (6)", opts.Protocol)
	}
	tcp := opts.Protocol == flowhash.ProtoTCP
	if opts.Services+opts.Services6 > int(svcMask) {
		return nil, fmt.Errorf("fastpath: %d services; at most %d", opts.Services+opts.Services6, svcMask)
	}
	p := &Path{opts: opts, pins: pins{dir: opts.Pin}}
	fail := func(err error) (*Path, error) {
		p.Close()
		return nil, err
	}
	spec, err := loadFastpathBPF()
	if err != nil {
		return fail(fmt.Errorf("%w: %v", ErrUnsupported, err))
	}
	if err := spec.Variables["cfg_proto"].Set(opts.Protocol); err != nil {
		return fail(err)
	}
	size := func(name string, n int) {
		spec.Maps[name].MaxEntries = uint32(max(n, 1)) // a family with no services still has maps
	}
	size("l4lb_stats", (opts.Services+opts.Services6)*statKinds)
	for i, f := range []family{ipv4, ipv6} {
		n := []int{opts.Services, opts.Services6}[i]
		flows := opts.MaxFlows
		if n == 0 {
			flows = 1 // nothing to serve: the smallest maps
		}
		size("l4lb_svcs_"+f.name, n)
		size("l4lb_tables_"+f.name, 2*n*maglev.DefaultSize)
		size("l4lb_flows_"+f.name, 2*flows) // each flow has two entries: client side and target side
		if tcp {
			size("l4lb_syn_"+f.name, 2*flows)
			size("l4lb_targets_"+f.name, opts.MaxTargets)
		} else {
			size("l4lb_syn_"+f.name, 1)
			size("l4lb_targets_"+f.name, 1)
		}
		size("l4lb_quic_"+f.name, min(n, 1)*opts.MaxTargets) // the QUIC services' server IDs
		size("l4lb_allow_"+f.name, opts.ACLPrefixes)
		size("l4lb_deny_"+f.name, opts.ACLPrefixes)
	}
	var lopts ebpf.CollectionOptions
	if opts.Inherit != nil {
		lopts.MapReplacements = map[string]*ebpf.Map{}
		defer func() {
			for _, m := range lopts.MapReplacements {
				m.Close() // loading took its own reference
			}
		}()
		for _, name := range handedOver(opts.Protocol) {
			m, err := inheritedMap(opts.Inherit.Take(handoverName(opts.Protocol, name)), spec.Maps[name])
			if err != nil {
				p.Inherited = append(p.Inherited, err)
			}
			if m != nil {
				lopts.MapReplacements[name] = m
			}
		}
	}
	if opts.Pin != "" {
		if err := os.MkdirAll(opts.Pin, 0o700); err != nil {
			p.pinErr = fmt.Errorf("fastpath: %w", err)
		}
	}
	if opts.Pin != "" && opts.Inherit == nil && p.pinErr == nil {
		if lopts.MapReplacements == nil {
			lopts.MapReplacements = map[string]*ebpf.Map{}
			defer func() {
				for _, m := range lopts.MapReplacements {
					m.Close() // loading took its own reference
				}
			}()
		}
		p.Inherited = append(p.Inherited, p.pins.flowMaps(spec, handedOver(opts.Protocol), lopts.MapReplacements)...)
	}
	p.KeptFlows = len(lopts.MapReplacements) > 0
	var objs fastpathBPFObjects
	if err := spec.LoadAndAssign(&objs, &lopts); err != nil {
		return fail(fmt.Errorf("%w: %v", ErrUnsupported, err))
	}
	m := &objs.fastpathBPFMaps
	p.stats, p.scratch, p.ports, p.ingress, p.egress = m.L4lbStats, m.L4lbScratch, m.L4lbPorts, objs.L4lbIn, objs.L4lbOut
	p.portSet = [2]map[uint16]bool{{}, {}}
	p.fams[0] = &famPath{f: ipv4, max: opts.Services, services: m.L4lbSvcsV4, tables: m.L4lbTablesV4, flows: m.L4lbFlowsV4,
		syn: m.L4lbSynV4, targets: m.L4lbTargetsV4, allow: m.L4lbAllowV4, deny: m.L4lbDenyV4, quic: m.L4lbQuicV4}
	p.fams[1] = &famPath{f: ipv6, max: opts.Services6, services: m.L4lbSvcsV6, tables: m.L4lbTablesV6, flows: m.L4lbFlowsV6,
		syn: m.L4lbSynV6, targets: m.L4lbTargetsV6, allow: m.L4lbAllowV6, deny: m.L4lbDenyV6, quic: m.L4lbQuicV6}
	return p, nil
}

// familyOf is the family of fams (IPv4, IPv6) that serves a (unmapped)
// address.
func familyOf(fams *[2]*famPath, a netip.Addr) *famPath {
	if a.Is4() {
		return fams[0]
	}
	return fams[1]
}

// AddService serves a listener address: datagrams to it are forwarded once
// SetTable has given it targets. It returns the service's id.
func (p *Path) AddService(vip netip.AddrPort, idle time.Duration, sticky bool) (int, error) {
	if vip.Addr().Is4In6() || vip.Addr().IsUnspecified() || vip.Addr().Zone() != "" {
		return 0, fmt.Errorf("fastpath: %s: only a specific address can be served", vip)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fp := familyOf(&p.fams, vip.Addr())
	if fp.n == fp.max {
		return 0, fmt.Errorf("fastpath: %s: all %d services of its family in use", vip, fp.max)
	}
	for _, s := range p.svcs {
		if s.vip == vip && !s.gone {
			return 0, fmt.Errorf("fastpath: %s served twice", vip)
		}
	}
	if err := p.addPorts(portsListeners, []netip.AddrPort{vip}); err != nil {
		return 0, err
	}
	s := &service{vip: vip, idle: idle, sticky: sticky, fam: fp, index: fp.n}
	if sticky {
		s.flags |= svcSticky
	}
	p.svcs = append(p.svcs, s)
	fp.n++
	return len(p.svcs) - 1, nil
}

// ForwardDSR makes service id forward by direct server return from its
// next SetTable on: each packet goes to its target whole, inside an outer
// header from src (of the service's family), and the target answers the
// client directly. An IPv4 service uses IPIP, an IPv6 one IPv6 in IPv6,
// with a flow label from the flow's hash (FlowLabel). With a guePort other
// than 0, a UDP header to that port follows the outer header (GUE variant
// 1), from a source port of the flow's hash (GUESourcePort), for routers
// that spread flows by ports only; its checksum is zero. The
// target must hold the service's address on a local interface and take
// the encapsulation in (deploy/dsr-target.sh); the packet keeps its
// destination port, so the target listens on the listener's port.
func (p *Path) ForwardDSR(id int, src netip.Addr, guePort uint16) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.svcs[id]
	if v4 := s.vip.Addr().Is4(); v4 != src.Is4() || src.Is4In6() {
		return fmt.Errorf("fastpath: %s: direct server return from %s: the outer source must be of the service's family", s.vip, src)
	}
	s.flags |= svcDSR
	s.encap = src
	if s.guePort = guePort; guePort != 0 {
		s.flags |= svcGUE
	}
	return nil
}

// RemoveService stops forwarding new flows of service id: its datagrams
// reach the local stack again (a user-space socket, or none). Flows already
// pinned keep their targets until they idle out or are ended. Its slot is
// not reused.
func (p *Path) RemoveService(id int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.svcs[id]
	if s.gone {
		return nil
	}
	if err := s.fam.services.Delete(svcKey(s.vip)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("fastpath: removing service %s: %w", s.vip, err)
	}
	s.gone = true
	return nil
}

// SetTable gives service id its Maglev table: the target of every slot
// (maglev.DefaultSize of them), or nil for a service with no usable target.
// A slot whose target is of the other address family stays empty. The
// program switches to the new table at once; pinned flows keep their
// targets.
func (p *Path) SetTable(id int, slots []netip.AddrPort) error {
	if slots != nil && len(slots) != maglev.DefaultSize {
		return fmt.Errorf("fastpath: a table has %d slots, not %d", len(slots), maglev.DefaultSize)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.svcs[id]
	if s.gone {
		return nil // removed: the program no longer looks at its table
	}
	fp := s.fam
	next := 1 - s.active
	base := uint32((2*s.index + next) * maglev.DefaultSize)
	keys := make([]uint32, maglev.DefaultSize)
	for i := range keys {
		keys[i] = base + uint32(i)
	}
	// A slot whose target is of the other family stays empty (port 0).
	mine := func(i int) bool {
		return slots != nil && slots[i].IsValid() && familyOf(&p.fams, slots[i].Addr()) == fp && !slots[i].Addr().Is4In6()
	}
	var vals any
	if fp.f.addrLen == 4 {
		v := make([]fastpathBPFSlot4, maglev.DefaultSize)
		for i := range v {
			if mine(i) {
				v[i] = fastpathBPFSlot4{Addr: words(slots[i].Addr())[0], Port: netOrder(slots[i].Port())}
			}
		}
		vals = v
	} else {
		v := make([]fastpathBPFSlot6, maglev.DefaultSize)
		for i := range v {
			if mine(i) {
				v[i] = fastpathBPFSlot6{Addr: words(slots[i].Addr()), Port: netOrder(slots[i].Port())}
			}
		}
		vals = v
	}
	if err := p.addPorts(portsTargets, slots); err != nil {
		return err
	}
	if _, err := fp.tables.BatchUpdate(keys, vals, nil); err != nil {
		return fmt.Errorf("fastpath: writing table: %w", err)
	}
	val := fastpathBPFSvcVal{Base: base, Flags: s.flags, Id: uint32(id), EncapSrc: words(s.encap), EncapPort: netOrder(s.guePort), QuicLen: s.quicLen}
	if err := fp.services.Update(svcKey(s.vip), &val, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("fastpath: switching table: %w", err)
	}
	s.active = next
	return nil
}

// SetACL gives service id the allow and deny lists of its listener, with
// l4lb's meaning: a deny match refuses a new flow, then only an allow match
// admits it. Prefixes of the other family are left out, as they can never
// match. Call it before the service's first SetTable.
func (p *Path) SetACL(id int, allow, deny []netip.Prefix) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.svcs[id]
	fp := s.fam
	is6 := fp.f.addrLen == 16
	all := false
	for _, list := range []struct {
		m    *ebpf.Map
		ps   []netip.Prefix
		flag uint32
	}{{fp.allow, allow, svcAllow}, {fp.deny, deny, svcDeny}} {
		for _, pre := range list.ps {
			pre = pre.Masked()
			if pre.Addr().Is6() != is6 || pre.Addr().Is4In6() {
				continue
			}
			if list.flag == svcAllow && pre.Bits() == 0 {
				all = true // the whole family is allowed: no check
			}
			// The prefix length counts the service id's 32 bits too.
			var key any = &fastpathBPFAclKey4{Prefixlen: uint32(32 + pre.Bits()), Svc: uint32(id), Addr: words(pre.Addr())[0]}
			if is6 {
				key = &fastpathBPFAclKey6{Prefixlen: uint32(32 + pre.Bits()), Svc: uint32(id), Addr: words(pre.Addr())}
			}
			if err := list.m.Update(key, []byte{1}, ebpf.UpdateAny); err != nil {
				return fmt.Errorf("fastpath: %s: adding %s: %w", s.vip, pre, err)
			}
			s.flags |= list.flag
		}
	}
	if all {
		s.flags &^= svcAllow
	} else {
		s.flags |= svcAllow // no allow prefix of this family: nothing is admitted
	}
	return nil
}

// Attach runs the programs on the named interface (tcx, alongside any other
// programs there): the ingress one where clients' datagrams arrive, the
// egress one where replies leave towards clients. Attach every such
// interface; "lo" serves clients and targets on this host.
func (p *Path) Attach(ifname string) error {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("fastpath: %w", err)
	}
	for _, a := range []struct {
		prog *ebpf.Program
		at   ebpf.AttachType
	}{{p.ingress, ebpf.AttachTCXIngress}, {p.egress, ebpf.AttachTCXEgress}} {
		var l link.Link
		if p.opts.Pin != "" && p.pinErr == nil {
			side := "in"
			if a.at == ebpf.AttachTCXEgress {
				side = "out"
			}
			l, err = p.attachPinned("link_"+side+"_"+ifname, ifi.Index, a.prog, a.at)
		} else {
			l, err = link.AttachTCX(link.TCXOptions{Interface: ifi.Index, Program: a.prog, Attach: a.at})
		}
		if err != nil {
			return fmt.Errorf("%w: attaching to %s: %v", ErrUnsupported, ifname, err)
		}
		p.mu.Lock()
		p.links = append(p.links, l)
		p.mu.Unlock()
	}
	return nil
}

// Stats returns service id's counters, summed over CPUs.
func (p *Path) Stats(id int) (Stats, error) {
	var st Stats
	dst := []*[2]uint64{
		statForward: {}, statReply: {}, statNewFlow: {}, statFull: {}, statNoTarget: {}, statCollide: {}, statACL: {},
		statClientRst: {}, statTargetRst: {}, statPromote: {}, statMidflow: {},
		statQUICHash: {}, statQUICCID: {}, statQUICUnknown: {}, statQUICBadVersion: {}, statQUICShort: {}, statQUICMigration: {},
	}
	for kind, d := range dst {
		var per []fastpathBPFStat // one per CPU
		if err := p.stats.Lookup(uint32(id*statKinds+kind), &per); err != nil {
			return st, fmt.Errorf("fastpath: reading stats: %w", err)
		}
		for _, v := range per {
			d[0] += v.Packets
			d[1] += v.Bytes
		}
	}
	st.PacketsIn, st.BytesIn = dst[statForward][0], dst[statForward][1]
	st.PacketsOut, st.BytesOut = dst[statReply][0], dst[statReply][1]
	st.NewFlows = dst[statNewFlow][0]
	st.RefusedFull = dst[statFull][0]
	st.RefusedNoTarget = dst[statNoTarget][0]
	st.RefusedCollision = dst[statCollide][0]
	st.RefusedACL = dst[statACL][0]
	st.ClientResets = dst[statClientRst][0]
	st.TargetResets = dst[statTargetRst][0]
	st.Established = dst[statPromote][0]
	st.PickedUp = dst[statMidflow][0]
	for i, k := range []int{statQUICHash, statQUICCID, statQUICUnknown, statQUICBadVersion, statQUICShort} {
		st.QUIC[i] = dst[k][0]
	}
	st.QUICMigrations = dst[statQUICMigration][0]
	return st, nil
}

// Close detaches the programs and frees the maps; pinned flows end with
// them, unless a new process took the flow maps over (FlowFiles).
func (p *Path) Close() error {
	p.unpinIfOwner()
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	p.links = nil
	for _, prog := range []*ebpf.Program{p.ingress, p.egress} {
		if prog != nil {
			errs = append(errs, prog.Close())
		}
	}
	ms := []*ebpf.Map{p.stats, p.scratch, p.ports}
	for _, fp := range p.fams {
		if fp != nil {
			ms = append(ms, fp.services, fp.tables, fp.flows, fp.syn, fp.targets, fp.allow, fp.deny)
		}
	}
	for _, m := range ms {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

// addPorts adds the ports of addrs to a port bitmap (p.mu held), writing it
// only when it grew.
func (p *Path) addPorts(which int, addrs []netip.AddrPort) error {
	set, grew := p.portSet[which], false
	for _, a := range addrs {
		if a.IsValid() && !set[a.Port()] {
			set[a.Port()], grew = true, true
		}
	}
	if !grew {
		return nil
	}
	var bits [1024]uint64
	for port := range set {
		bits[port>>6] |= 1 << (port & 63)
	}
	if err := p.ports.Update(uint32(which), bits, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("fastpath: writing the port bitmap: %w", err)
	}
	return nil
}
