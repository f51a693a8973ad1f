package config

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/l4lb/l4lb/pkg/quiclb"
)

// Target groups: their targets, health checks and attributes.

func (n *normalizer) targetGroup(path string, r *RawTargetGroup, cfg *Config) TargetGroup {
	g := TargetGroup{Name: r.Name}
	if g.Name == "" {
		n.errs.add(path+".name", "required")
	} else if !nameRE.MatchString(g.Name) {
		n.errs.add(path+".name", "%q: use letters, digits, '-', '_' or '.', at most 63", g.Name)
	}
	g.Protocol = n.protocol(path+".protocol", r.Protocol)
	if r.Port != nil {
		if *r.Port < 1 || *r.Port > 65535 {
			n.errs.add(path+".port", "%d is outside 1-65535", *r.Port)
		} else {
			g.Port = uint16(*r.Port)
		}
	}
	seen := map[netip.AddrPort]bool{}
	for i, rt := range r.Targets {
		tp := fmt.Sprintf("%s.targets[%d]", path, i)
		t, err := ParseTargetAddress(rt.Address, g.Port)
		if err != nil {
			n.errs.add(tp+".address", "%v", err)
			continue
		}
		if seen[t] {
			n.errs.add(tp+".address", "%s is registered twice", t)
		}
		seen[t] = true
		tgt := Target{Address: t, Zone: rt.Zone, Weight: DefaultTargetWeight}
		if rt.Zone != "" && len(cfg.Zones) > 0 && !slices.ContainsFunc(cfg.Zones, func(z Zone) bool { return z.Name == rt.Zone }) {
			n.errs.add(tp+".zone", "no zone named %q", rt.Zone)
		}
		if rt.Weight != nil {
			if *rt.Weight < 1 || *rt.Weight > MaxTargetWeight {
				n.errs.add(tp+".weight", "%d is outside 1-%d", *rt.Weight, MaxTargetWeight)
			}
			tgt.Weight = *rt.Weight
		}
		tgt.QUICServerID = rt.QUICServerID
		if err := CheckQUICServerID(g.Protocol, rt.QUICServerID); err != nil {
			n.errs.add(tp+".quic_server_id", "%v", err)
		}
		g.Targets = append(g.Targets, tgt)
	}
	ids := map[string]string{}
	for i, t := range g.Targets {
		if t.QUICServerID == "" {
			continue
		}
		if other, ok := ids[t.QUICServerID]; ok {
			n.errs.add(fmt.Sprintf("%s.targets[%d].quic_server_id", path, i), "%s is also target %s's: a server ID is unique within its target group", t.QUICServerID, other)
		}
		ids[t.QUICServerID] = t.Address.String()
	}
	switch g.Forwarding = r.Forwarding; g.Forwarding {
	case "":
		g.Forwarding = ForwardNAT
	case ForwardNAT:
	case ForwardDSR:
		if g.Protocol == TLS {
			n.errs.add(path+".forwarding", "dsr forwards packets as they are: a TLS target group cannot use it")
		}
		for i, t := range g.Targets {
			if t.Address.Addr().Is4() != g.Targets[0].Address.Addr().Is4() {
				n.errs.add(fmt.Sprintf("%s.targets[%d].address", path, i), "a dsr group's targets are all IPv4 or all IPv6; %s is not of the first one's family", t.Address)
				break
			}
		}
	default:
		n.errs.add(path+".forwarding", "%q is not nat or dsr", r.Forwarding)
	}
	n.encapsulation(path, r, &g)
	n.healthCheck(path+".health_check", r.HealthCheck, &g)
	n.attributes(path+".attributes", r.Attributes, &g)
	if g.Protocol.IsQUIC() && g.Attributes.ProxyProtocolV2 {
		n.errs.add(path+".attributes.proxy_protocol_v2.enabled", "a %s target group passes QUIC datagrams as they are: a PROXY header would break them", g.Protocol)
	}
	if g.Protocol.IsQUIC() && g.Forwarding == ForwardDSR {
		n.errs.add(path+".forwarding", "a %s target group is routed by connection ID, which only the socket path does yet: use nat", g.Protocol)
	}
	if g.Forwarding == ForwardDSR && g.Attributes.ProxyProtocolV2 {
		n.errs.add(path+".forwarding", "dsr forwards packets as they are: it cannot send a PROXY header (proxy_protocol_v2.enabled)")
	}
	if r.TLS != nil {
		if g.Protocol != TLS {
			n.errs.add(path+".tls", "only TLS target groups take a tls section")
		} else {
			g.TLS = TargetTLS{CAFile: r.TLS.CAFile, ServerName: r.TLS.ServerName}
			if g.TLS.CAFile != "" {
				if _, err := os.Stat(g.TLS.CAFile); err != nil {
					n.errs.add(path+".tls.ca_file", "%v", err)
				}
			}
		}
	}
	return g
}

// CheckQUICServerID says what is wrong with a target's QUIC server ID in
// a group of protocol p, as NLB's API words it: required, in NLB's
// spelling, for QUIC and TCP_QUIC groups, and refused for every other.
func CheckQUICServerID(p Protocol, id string) error {
	switch {
	case p.IsQUIC() && id == "":
		return fmt.Errorf("required for a %s target group: the server ID its connection IDs carry (0x and 16 lowercase hex digits)", p)
	case !p.IsQUIC() && id != "":
		return fmt.Errorf("only QUIC and TCP_QUIC target groups take a server ID; this group is %s", p)
	case id == "":
		return nil
	}
	_, err := quiclb.ParseServerID(id)
	return err
}

// ParseTargetAddress parses "IP:PORT", or a bare IP that takes defaultPort.
func ParseTargetAddress(s string, defaultPort uint16) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return ap, fmt.Errorf("%q: port 0 is not a target port", s)
		}
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), checkTargetIP(s, ap.Addr())
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("want IP:PORT or IP, got %q", s)
	}
	if defaultPort == 0 {
		return netip.AddrPort{}, fmt.Errorf("%q has no port and the target group has none", s)
	}
	return netip.AddrPortFrom(ip.Unmap(), defaultPort), checkTargetIP(s, ip)
}

// Address blocks no flow can be forwarded to (RFC 6890).
var (
	thisNetwork = netip.MustParsePrefix("0.0.0.0/8")   // "this host on this network" (RFC 1122)
	reserved4   = netip.MustParsePrefix("240.0.0.0/4") // reserved for future use (RFC 1112), and broadcast
)

// checkTargetIP refuses addresses no flow can be forwarded to: the
// unspecified address and the rest of 0.0.0.0/8 (a connect to them reaches
// this host, often l4lb itself), the reserved 240.0.0.0/4, multicast and
// broadcast.
func checkTargetIP(s string, ip netip.Addr) error {
	ip = ip.Unmap()
	switch {
	case ip.IsUnspecified():
		return fmt.Errorf("%q: the unspecified address is not a target", s)
	case thisNetwork.Contains(ip):
		return fmt.Errorf("%q: 0.0.0.0/8 (this network, RFC 1122) is not a target", s)
	case ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("%q: the broadcast address is not a target", s)
	case reserved4.Contains(ip):
		return fmt.Errorf("%q: 240.0.0.0/4 (reserved, RFC 1112) is not a target", s)
	case ip.IsMulticast():
		return fmt.Errorf("%q: a multicast address is not a target", s)
	}
	return nil
}

func (n *normalizer) healthCheck(path string, r *RawHealthCheck, g *TargetGroup) {
	if r == nil {
		r = &RawHealthCheck{}
	}
	h := &g.HealthCheck
	h.Protocol = HealthTCP
	if r.Protocol != "" {
		p, err := parseEnum(healthProtocolNames, r.Protocol)
		if err != nil {
			n.errs.add(path+".protocol", "%v", err)
		}
		h.Protocol = HealthProtocol(p)
	}
	http := h.Protocol == HealthHTTP || h.Protocol == HealthHTTPS
	if r.Port != "" && r.Port != "traffic-port" {
		p, err := strconv.Atoi(r.Port)
		if err != nil || p < 1 || p > 65535 {
			n.errs.add(path+".port", "want traffic-port or 1-65535, got %q", r.Port)
		} else {
			h.Port = uint16(p)
		}
	}
	if http {
		h.Path = DefaultHealthPath
		if r.Path != "" {
			if !strings.HasPrefix(r.Path, "/") || strings.ContainsAny(r.Path, " \r\n") {
				n.errs.add(path+".path", "%q must start with / and hold no spaces", r.Path)
			}
			h.Path = r.Path
		}
		m := r.Matcher
		if m == "" {
			m = DefaultMatcher
		}
		ranges, err := ParseMatcher(m)
		if err != nil {
			n.errs.add(path+".matcher", "%v", err)
		}
		h.Matcher = ranges
	} else {
		if r.Path != "" {
			n.errs.add(path+".path", "only HTTP and HTTPS checks take a path")
		}
		if r.Matcher != "" {
			n.errs.add(path+".matcher", "only HTTP and HTTPS checks take a matcher")
		}
	}
	h.Interval = n.duration(path+".interval", r.Interval, DefaultHealthInterval)
	defTimeout := DefaultHealthTimeoutTCP
	if http {
		defTimeout = DefaultHealthTimeoutHTTP
	}
	h.Timeout = n.duration(path+".timeout", r.Timeout, defTimeout)
	if r.Timeout == "" && h.Timeout > h.Interval {
		h.Timeout = h.Interval // a short interval shortens the default timeout with it
	}
	if h.Timeout > h.Interval {
		n.errs.add(path+".timeout", "%s is longer than the interval %s", h.Timeout, h.Interval)
	}
	h.HealthyThreshold = n.threshold(path+".healthy_threshold", r.HealthyThreshold, DefaultHealthyThreshold)
	h.UnhealthyThreshold = n.threshold(path+".unhealthy_threshold", r.UnhealthyThreshold, DefaultUnhealthyThreshold)
}

func (n *fields) threshold(path string, v *int, def int) int {
	if v == nil {
		return def
	}
	if *v < 1 || *v > 10 {
		n.errs.add(path, "%d is outside 1-10", *v)
	}
	return *v
}

// ParseMatcher parses an HTTP success-code matcher: "200", "200,202",
// "200-399", or a mix, each code within 100-599.
func ParseMatcher(s string) ([]StatusRange, error) {
	var out []StatusRange
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		if !isRange {
			hi = lo
		}
		l, err1 := strconv.Atoi(lo)
		h, err2 := strconv.Atoi(hi)
		if err1 != nil || err2 != nil || l < 100 || h > 599 || l > h {
			return nil, fmt.Errorf("%q: want codes or ranges within 100-599, such as 200-399 or 200,202", s)
		}
		out = append(out, StatusRange{Lo: l, Hi: h})
	}
	return out, nil
}

func (n *normalizer) attributes(path string, given map[string]string, g *TargetGroup) {
	for _, k := range sortedKeys(given) {
		if _, ok := defaultAttributes[k]; !ok {
			n.errs.add(join(path, k), "unknown attribute (valid: %s)", strings.Join(sortedKeys(defaultAttributes), ", "))
		}
	}
	get := func(k string) (string, string) {
		if v, ok := given[k]; ok {
			return v, join(path, k)
		}
		return defaultAttributes[k], join(path, k)
	}
	a := &g.Attributes
	a.DeregistrationDelay = time.Duration(n.intAttr(get(AttrDeregistrationDelay))(0, maxDeregistrationDelaySecs, false)) * time.Second
	a.DeregistrationConnectionTermination = n.boolAttr(get(AttrDeregistrationTermination))
	a.PreserveClientIP = n.boolAttr(get(AttrPreserveClientIP))
	a.ProxyProtocolV2 = n.boolAttr(get(AttrProxyProtocolV2))
	a.Stickiness = n.boolAttr(get(AttrStickiness))
	if v, p := get(AttrStickinessType); v != "source_ip" {
		n.errs.add(p, "%q: the only stickiness type of a network load balancer is source_ip", v)
	}
	a.StickinessType = "source_ip"
	cz, czPath := get(AttrCrossZone)
	m, err := parseEnum(crossZoneNames, cz)
	if err != nil {
		n.errs.add(czPath, "%v", err)
	}
	a.CrossZone = CrossZoneMode(m)
	a.UnhealthyConnectionTermination = n.boolAttr(get(AttrUnhealthyTermination))
	a.UnhealthyDrainingInterval = time.Duration(n.intAttr(get(AttrUnhealthyDrainingInterval))(0, maxDrainingIntervalSecs, false)) * time.Second
	if a.UnhealthyDrainingInterval > 0 && a.UnhealthyConnectionTermination {
		_, p := get(AttrUnhealthyDrainingInterval)
		n.errs.add(p, "takes effect only when %s is false", AttrUnhealthyTermination)
	}
	a.UnhealthyRoutingMinHealthyCount = n.intAttr(get(AttrUnhealthyRoutingMinCount))(1, 1<<16, true)
	a.UnhealthyRoutingMinHealthyPercentage = n.intAttr(get(AttrUnhealthyRoutingMinPercentage))(1, 100, true)
	a.DNSFailoverMinHealthyCount = n.intAttr(get(AttrDNSFailoverMinCount))(1, 1<<16, true)
	a.DNSFailoverMinHealthyPercentage = n.intAttr(get(AttrDNSFailoverMinPercentage))(1, 100, true)
}

// intAttr parses an integer attribute within [lo, hi]; with off, "off" is
// accepted and read as 0.
func (n *fields) intAttr(v, path string) func(lo, hi int, off bool) int {
	return func(lo, hi int, off bool) int {
		if off && v == "off" {
			return 0
		}
		i, err := strconv.Atoi(v)
		if err != nil || i < lo || i > hi {
			alt := ""
			if off {
				alt = " or \"off\""
			}
			n.errs.add(path, "want a whole number within %d-%d%s, got %q", lo, hi, alt, v)
			return lo
		}
		return i
	}
}

func (n *fields) boolAttr(v, path string) bool {
	b, err := parseBool(v)
	if err != nil {
		n.errs.add(path, "want true or false, got %q", v)
	}
	return b
}

// dsrListener checks a listener that forwards to a dsr target group: only
// the kernel fast path forwards by direct server return, so the listener
// must be one it takes, with the fast path on for its protocol, and the
// targets must listen on the listener's own port (the packet keeps it).
func (n *normalizer) dsrListener(path string, l *Listener, cfg *Config) {
	var dsr *TargetGroup
	uses := func(name string) {
		for i := range cfg.TargetGroups {
			if g := &cfg.TargetGroups[i]; g.Name == name && g.Forwarding == ForwardDSR {
				dsr = g
			}
		}
	}
	uses(l.TargetGroup)
	for _, f := range l.Forward {
		uses(f.TargetGroup)
	}
	for _, r := range l.Rules {
		uses(r.TargetGroup)
	}
	if dsr == nil {
		return
	}
	why := ""
	switch {
	case l.Protocol == TLS:
		why = "it terminates TLS"
	case len(l.Forward) > 0:
		why = "it forwards to weighted target groups"
	case len(l.Rules) > 0:
		why = "it routes by SNI"
	case len(l.ProxyProtocolAccept) > 0:
		why = "it reads PROXY headers (proxy_protocol_accept)"
	case l.MaxConnectionsPerSource > 0:
		why = "it limits connections per source"
	case l.Protocol.HasTCP() && !cfg.TCPFastPath:
		why = "load_balancer.tcp_fast_path is off"
	case l.Protocol.HasUDP() && !cfg.UDPFastPath:
		why = "load_balancer.udp_fast_path is off"
	}
	v6 := len(dsr.Targets) > 0 && dsr.Targets[0].Address.Addr().Is6()
	family := map[bool]string{false: "IPv4", true: "IPv6"}[v6]
	for _, b := range l.Bind {
		if b.IP.Is6() != v6 || b.IP.IsUnspecified() || b.IP.Zone() != "" {
			why = "it binds " + b.IP.String() + ": dsr needs specific " + family + " addresses, of its targets' family"
		}
	}
	if why != "" {
		n.errs.add(path, "target group %q forwards by dsr, which only the kernel fast path does, and this listener cannot use it: %s", dsr.Name, why)
	}
	for _, t := range dsr.Targets {
		if t.Address.Port() != l.Port {
			n.errs.add(path+".port", "target group %q forwards by dsr, so its targets listen on the listener's port %d; %s does not", dsr.Name, l.Port, t.Address)
			break
		}
	}
}

// encapsulation reads how a dsr group wraps packets: ipip, or gue to a UDP
// port (DefaultGUEPort unless gue_port says).
func (n *normalizer) encapsulation(path string, r *RawTargetGroup, g *TargetGroup) {
	if g.Forwarding != ForwardDSR {
		if r.Encapsulation != "" {
			n.errs.add(path+".encapsulation", "only forwarding: dsr encapsulates")
		}
		if r.GUEPort != nil {
			n.errs.add(path+".gue_port", "only forwarding: dsr with encapsulation: gue takes a gue_port")
		}
		return
	}
	switch g.Encapsulation = r.Encapsulation; g.Encapsulation {
	case "":
		g.Encapsulation = EncapIPIP
	case EncapIPIP, EncapGUE:
	default:
		n.errs.add(path+".encapsulation", "%q is not ipip or gue", r.Encapsulation)
	}
	switch {
	case g.Encapsulation == EncapGUE && r.GUEPort == nil:
		g.GUEPort = DefaultGUEPort
	case g.Encapsulation == EncapGUE && (*r.GUEPort < 1 || *r.GUEPort > 65535):
		n.errs.add(path+".gue_port", "%d is not a port (1-65535)", *r.GUEPort)
	case g.Encapsulation == EncapGUE:
		g.GUEPort = uint16(*r.GUEPort)
	case r.GUEPort != nil:
		n.errs.add(path+".gue_port", "only encapsulation: gue takes a gue_port")
	}
}
