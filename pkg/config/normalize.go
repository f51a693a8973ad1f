package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/l4lb/l4lb/pkg/quiclb"
)

// Load reads, decodes and normalizes a YAML config file.
func Load(path string) (*Config, error) { return LoadWithFlags(path, nil) }

// LoadWithFlags reads, decodes and normalizes a YAML config file ("": none)
// with flags laid over it (nil: none). Every problem, of the file, the flags
// and validation, comes back in one Errors, as validate prints them.
func LoadWithFlags(path string, flags *Flags) (*Config, error) {
	raw := &Raw{}
	var err error
	if path != "" {
		raw, err = LoadRaw(path)
	}
	var decodeErrs Errors
	if !errors.As(err, &decodeErrs) || raw == nil {
		if err != nil {
			return nil, err
		}
	}
	if flags != nil {
		var flagErrs Errors
		if err := flags.Apply(raw); errors.As(err, &flagErrs) {
			decodeErrs = append(decodeErrs, flagErrs...)
		} else if err != nil {
			return nil, err
		}
	}
	cfg, err := Normalize(raw)
	if len(decodeErrs) == 0 {
		return cfg, err
	}
	// Report what the decoder found and what validation found beyond it, but
	// not twice for one field.
	var more Errors
	errors.As(err, &more)
	for _, e := range more {
		if !slices.ContainsFunc(decodeErrs, func(d FieldError) bool { return d.Path == e.Path }) {
			decodeErrs = append(decodeErrs, e)
		}
	}
	return nil, decodeErrs
}

// LoadRaw reads and decodes a YAML config file without normalizing it, so that
// flags can be laid over it first. With field errors it still returns the part
// it could decode.
func LoadRaw(path string) (*Raw, error) {
	data, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	raw, err := DecodeYAML(data)
	var errs Errors
	if errors.As(err, &errs) {
		// The file, not "(file)": the reader sees which one.
		for i := range errs {
			if rest, ok := strings.CutPrefix(errs[i].Path, "(file)"); ok {
				errs[i].Path = path + rest
			}
		}
		return raw, errs
	}
	return raw, err
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// Normalize applies defaults to raw and validates it. On failure it returns an
// Errors with every problem found.
func Normalize(raw *Raw) (*Config, error) {
	n := normalizer{raw: raw}
	cfg := n.run()
	if err := n.errs.err(); err != nil {
		return nil, err
	}
	return cfg, nil
}

type normalizer struct {
	raw *Raw
	fields
	zoneOf map[netip.Addr]string
}

// fields parses single values (durations, prefixes, thresholds and the
// like), recording what is wrong under each value's path.
type fields struct {
	errs Errors
}

func (n *normalizer) run() *Config {
	cfg := &Config{}
	n.admin(cfg)
	n.zones(cfg)
	if n.raw.LoadBalancer.CrossZone != nil {
		cfg.CrossZone = *n.raw.LoadBalancer.CrossZone
	}
	cfg.ShutdownTimeout = n.duration("load_balancer.shutdown_timeout", n.raw.LoadBalancer.ShutdownTimeout, DefaultShutdownTimeout)
	cfg.EndpointID = n.raw.LoadBalancer.EndpointID
	if len(cfg.EndpointID) > 255 {
		n.errs.add("load_balancer.endpoint_id", "longer than 255 bytes")
	}
	cfg.MaxFlows = DefaultMaxFlows
	if m := n.raw.LoadBalancer.MaxFlows; m != nil {
		if *m < 1 || *m > 1<<24 {
			n.errs.add("load_balancer.max_flows", "%d is outside 1-%d", *m, 1<<24)
		}
		cfg.MaxFlows = *m
	}
	if f := n.raw.LoadBalancer.UDPFastPath; f != nil {
		cfg.UDPFastPath = *f
	}
	if f := n.raw.LoadBalancer.TCPFastPath; f != nil {
		cfg.TCPFastPath = *f
	}
	cfg.BPFFS = DefaultBPFFS
	if b := n.raw.LoadBalancer.BPFFS; b != nil {
		switch {
		case *b == "" || *b == "off":
			cfg.BPFFS = ""
		case !filepath.IsAbs(*b):
			n.errs.add("load_balancer.bpffs", "%q is not an absolute path (or off)", *b)
		default:
			cfg.BPFFS = filepath.Clean(*b)
		}
	}
	cfg.UDPFastPathInterfaces = n.interfaces("load_balancer.udp_fast_path_interfaces", n.raw.LoadBalancer.UDPFastPathInterfaces)
	cfg.TCPFastPathInterfaces = n.interfaces("load_balancer.tcp_fast_path_interfaces", n.raw.LoadBalancer.TCPFastPathInterfaces)
	groups := map[string]bool{}
	for i := range n.raw.TargetGroups {
		tg := n.targetGroup(fmt.Sprintf("target_groups[%d]", i), &n.raw.TargetGroups[i], cfg)
		if groups[tg.Name] {
			n.errs.add(fmt.Sprintf("target_groups[%d].name", i), "%q is used by another target group", tg.Name)
		}
		groups[tg.Name] = true
		cfg.TargetGroups = append(cfg.TargetGroups, tg)
	}
	names := map[string]bool{}
	binds := map[string]string{}
	for i := range n.raw.Listeners {
		path := fmt.Sprintf("listeners[%d]", i)
		l := n.listener(path, &n.raw.Listeners[i], cfg)
		if names[l.Name] {
			n.errs.add(path+".name", "%q is used by another listener", l.Name)
		}
		names[l.Name] = true
		for _, b := range l.Bind {
			for _, proto := range []string{"tcp", "udp"} {
				if (proto == "tcp" && !l.Protocol.HasTCP()) || (proto == "udp" && !l.Protocol.HasUDP()) {
					continue
				}
				key := proto + " " + netip.AddrPortFrom(b.IP, l.Port).String()
				if other, ok := binds[key]; ok {
					n.errs.add(path+".port", "%s is also bound by listener %q", key, other)
				}
				binds[key] = l.Name
			}
		}
		cfg.Listeners = append(cfg.Listeners, l)
	}
	n.quicListeners(cfg)
	if len(cfg.Listeners) == 0 {
		n.errs.add("listeners", "at least one listener is required")
	}
	for i := range cfg.Listeners {
		n.dsrListener(fmt.Sprintf("listeners[%d]", i), &cfg.Listeners[i], cfg)
	}
	cfg.BGP = n.bgp(cfg)
	n.errs = append(n.errs, CheckLoops(cfg, nil)...)
	cfg.Registry = n.registry()
	return cfg
}

// registry normalizes the registry section: the file backend unless etcd
// is named, with its endpoints and prefix.
func (n *normalizer) registry() Registry {
	r := n.raw.Registry
	if r == nil || r.Backend == "" || r.Backend == RegistryFile {
		if r != nil && (len(r.Endpoints) > 0 || r.Prefix != "" || r.TLS != nil) {
			n.errs.add("registry.backend", "endpoints, prefix and tls belong to backend etcd; the file backend takes none")
		}
		return Registry{Backend: RegistryFile}
	}
	if r.Backend != RegistryEtcd {
		n.errs.add("registry.backend", "%q is not file or etcd", r.Backend)
		return Registry{Backend: RegistryFile}
	}
	out := Registry{Backend: RegistryEtcd, Prefix: r.Prefix}
	if len(r.Endpoints) == 0 {
		n.errs.add("registry.endpoints", "required with backend etcd")
	}
	for i, e := range r.Endpoints {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			n.errs.add(fmt.Sprintf("registry.endpoints[%d]", i), "want http://HOST:PORT or https://HOST:PORT, got %q", e)
			continue
		}
		out.Endpoints = append(out.Endpoints, e)
	}
	switch {
	case r.Prefix == "":
		n.errs.add("registry.prefix", "required with backend etcd: one prefix per cluster of l4lb nodes, such as /l4lb/prod")
	case !strings.HasPrefix(r.Prefix, "/") || strings.HasSuffix(r.Prefix, "/"):
		n.errs.add("registry.prefix", "%q: want /NAME[/NAME...], with no / at the end", r.Prefix)
	}
	if t := r.TLS; t != nil {
		out.TLS = RegistryTLS{CAFile: t.CAFile, CertFile: t.CertFile, KeyFile: t.KeyFile}
		if (t.CertFile == "") != (t.KeyFile == "") {
			n.errs.add("registry.tls", "cert_file and key_file go together")
		}
	}
	return out
}

func (n *normalizer) admin(cfg *Config) {
	cfg.Admin.Listen = DefaultAdminListen
	if n.raw.Admin == nil {
		return
	}
	cfg.Admin.TokenFile = n.raw.Admin.TokenFile
	if n.raw.Admin.Listen != nil {
		cfg.Admin.Listen = *n.raw.Admin.Listen
	}
	if cfg.Admin.Listen == "off" {
		cfg.Admin.Listen = ""
		return
	}
	host, port, err := net.SplitHostPort(cfg.Admin.Listen)
	if err != nil {
		n.errs.add("admin.listen", "want HOST:PORT or \"off\", got %q", cfg.Admin.Listen)
		return
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		n.errs.add("admin.listen", "bad port %q", port)
	}
	loopback := host == "localhost"
	if ip, err := netip.ParseAddr(host); err == nil {
		loopback = ip.IsLoopback()
	} else if host != "localhost" {
		n.errs.add("admin.listen", "want an IP address or localhost, got %q", host)
	}
	if !loopback && cfg.Admin.TokenFile == "" {
		n.errs.add("admin.token_file", "required when admin.listen (%s) is not a loopback address", cfg.Admin.Listen)
	}
}

func (n *normalizer) zones(cfg *Config) {
	n.zoneOf = map[netip.Addr]string{}
	for _, name := range sortedKeys(n.raw.Zones) {
		path := "zones." + name
		if !nameRE.MatchString(name) {
			n.errs.add(path, "zone name must be letters, digits, '-', '_' or '.'")
		}
		z := Zone{Name: name}
		for i, s := range n.raw.Zones[name] {
			ip, err := netip.ParseAddr(s)
			if err != nil {
				n.errs.add(fmt.Sprintf("%s[%d]", path, i), "want an IP address, got %q", s)
				continue
			}
			if other, ok := n.zoneOf[ip]; ok {
				n.errs.add(fmt.Sprintf("%s[%d]", path, i), "%s already belongs to zone %q", ip, other)
				continue
			}
			n.zoneOf[ip] = name
			z.IPs = append(z.IPs, ip)
		}
		if len(z.IPs) == 0 {
			n.errs.add(path, "a zone needs at least one IP")
		}
		cfg.Zones = append(cfg.Zones, z)
	}
}

func (n *normalizer) listener(path string, r *RawListener, cfg *Config) Listener {
	l := Listener{Name: r.Name}
	l.Protocol = n.protocol(path+".protocol", r.Protocol)
	if r.Port == nil {
		n.errs.add(path+".port", "required")
	} else if *r.Port < 1 || *r.Port > 65535 {
		n.errs.add(path+".port", "%d is outside 1-65535", *r.Port)
	} else {
		l.Port = uint16(*r.Port)
	}
	if l.Name == "" {
		l.Name = fmt.Sprintf("%s-%d", strings.ToLower(l.Protocol.String()), l.Port)
	} else if !nameRE.MatchString(l.Name) {
		n.errs.add(path+".name", "%q: use letters, digits, '-', '_' or '.', at most 63", l.Name)
	}

	if len(r.Bind) == 0 {
		for _, z := range cfg.Zones {
			for _, ip := range z.IPs {
				l.Bind = append(l.Bind, BindAddr{IP: ip, Zone: z.Name})
			}
		}
		if len(l.Bind) == 0 {
			l.Bind = []BindAddr{{IP: netip.IPv4Unspecified()}}
		}
	}
	for i, s := range r.Bind {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			n.errs.add(fmt.Sprintf("%s.bind[%d]", path, i), "want an IP address, got %q", s)
			continue
		}
		l.Bind = append(l.Bind, BindAddr{IP: ip, Zone: n.zoneOf[ip]})
	}

	switch {
	case r.TargetGroup != "" && len(r.Forward) > 0:
		n.errs.add(path+".forward", "give target_group or forward, not both")
	case r.TargetGroup == "" && len(r.Forward) == 0:
		n.errs.add(path+".target_group", "required (or forward)")
	case r.TargetGroup != "":
		l.TargetGroup = r.TargetGroup
		n.groupRef(path+".target_group", r.TargetGroup, l.Protocol, cfg)
	default:
		total := 0
		for i, f := range r.Forward {
			fp := fmt.Sprintf("%s.forward[%d]", path, i)
			w := 1
			if f.Weight != nil {
				w = *f.Weight
			}
			if w < 0 || w > 999 {
				n.errs.add(fp+".weight", "%d is outside 0-999", w)
			}
			total += w
			n.groupRef(fp+".target_group", f.TargetGroup, l.Protocol, cfg)
			l.Forward = append(l.Forward, Forward{TargetGroup: f.TargetGroup, Weight: w})
		}
		if total == 0 {
			n.errs.add(path+".forward", "weights add up to 0; at least one group needs traffic")
		}
	}
	for i, rule := range r.Rules {
		rp := fmt.Sprintf("%s.rules[%d]", path, i)
		if l.Protocol != TCP {
			n.errs.add(rp, "SNI rules apply to TCP listeners only")
		}
		if len(rule.SNI) == 0 {
			n.errs.add(rp+".sni", "at least one host name is required")
		}
		for j, h := range rule.SNI {
			if !validSNI(h) {
				n.errs.add(fmt.Sprintf("%s.sni[%d]", rp, j), "%q is not a host name or *.domain pattern", h)
			}
		}
		n.groupRef(rp+".target_group", rule.TargetGroup, l.Protocol, cfg)
		l.Rules = append(l.Rules, Rule{SNI: lowerAll(rule.SNI), TargetGroup: rule.TargetGroup})
	}
	l.IdleTimeout = n.duration(path+".idle_timeout", r.IdleTimeout, DefaultIdleTimeout)
	l.UDPIdleTimeout = n.duration(path+".udp_idle_timeout", r.UDPIdleTimeout, DefaultUDPIdleTimeout)
	l.Allow = n.prefixes(path+".allow", r.Allow)
	if r.Allow == nil {
		l.Allow = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	}
	l.Deny = n.prefixes(path+".deny", r.Deny)
	if r.MaxConnectionsPerSource != nil {
		switch {
		case *r.MaxConnectionsPerSource < 0:
			n.errs.add(path+".max_connections_per_source", "%d is negative (0 means unlimited)", *r.MaxConnectionsPerSource)
		case *r.MaxConnectionsPerSource > 0 && l.Protocol == UDP:
			n.errs.add(path+".max_connections_per_source", "limits TCP connections; UDP flows are bounded by load_balancer.max_flows")
		}
		l.MaxConnectionsPerSource = *r.MaxConnectionsPerSource
	}
	if r.ProxyProtocolAccept != nil {
		l.ProxyProtocolAccept = n.prefixes(path+".proxy_protocol_accept.from", r.ProxyProtocolAccept.From)
	}
	n.listenerTLS(path, r, &l)
	n.listenerQUIC(path, r, &l)
	return l
}

// listenerQUIC reads a QUIC or TCP_QUIC listener's quic section, and
// refuses what such a listener cannot do: it routes datagrams by the
// server ID in their connection IDs, to one target group.
func (n *normalizer) listenerQUIC(path string, r *RawListener, l *Listener) {
	if !l.Protocol.IsQUIC() {
		if r.QUIC != nil {
			n.errs.add(path+".quic", "only QUIC and TCP_QUIC listeners take a quic section")
		}
		return
	}
	l.QUIC = &ListenerQUIC{ConnIDLen: DefaultQUICConnIDLen}
	if r.QUIC != nil && r.QUIC.ConnectionIDLength != nil {
		if c := *r.QUIC.ConnectionIDLength; c < quiclb.MinConnIDLen || c > quiclb.MaxConnIDLen {
			n.errs.add(path+".quic.connection_id_length", "%d is outside %d-%d (1 octet, an 8-byte server ID, and the target's own)", c, quiclb.MinConnIDLen, quiclb.MaxConnIDLen)
		} else {
			l.QUIC.ConnIDLen = c
		}
	}
	if len(r.Forward) > 0 {
		n.errs.add(path+".forward", "a %s listener routes by connection ID to one target group: use target_group", l.Protocol)
	}
}

// quicListeners checks NLB's rules for QUIC listeners: one QUIC or
// TCP_QUIC listener per load balancer, and none beside UDP or TCP_UDP
// listeners.
func (n *normalizer) quicListeners(cfg *Config) {
	quic, udp := -1, -1
	for i, l := range cfg.Listeners {
		switch {
		case l.Protocol.IsQUIC() && quic >= 0:
			n.errs.add(fmt.Sprintf("listeners[%d].protocol", i), "listener %q is %s already: a load balancer has one QUIC or TCP_QUIC listener", cfg.Listeners[quic].Name, cfg.Listeners[quic].Protocol)
		case l.Protocol.IsQUIC():
			quic = i
		case l.Protocol.HasUDP() && udp < 0:
			udp = i
		}
	}
	if quic >= 0 && udp >= 0 {
		n.errs.add(fmt.Sprintf("listeners[%d].protocol", quic), "a %s listener cannot share a load balancer with UDP or TCP_UDP listeners (listener %q is %s)", cfg.Listeners[quic].Protocol, cfg.Listeners[udp].Name, cfg.Listeners[udp].Protocol)
	}
}

// groupRef checks that a listener's group exists and speaks a protocol the
// listener can forward to, as NLB pairs them.
func (n *normalizer) groupRef(path, name string, lp Protocol, cfg *Config) {
	if name == "" {
		n.errs.add(path, "required")
		return
	}
	g := cfg.TargetGroup(name)
	if g == nil {
		n.errs.add(path, "no target group named %q", name)
		return
	}
	ok := map[Protocol][]Protocol{
		TCP:     {TCP, TCPUDP},
		UDP:     {UDP, TCPUDP},
		TCPUDP:  {TCPUDP},
		TLS:     {TCP, TLS},
		QUIC:    {QUIC},
		TCPQUIC: {TCPQUIC},
	}[lp]
	if lp != 0 && g.Protocol != 0 && !slices.Contains(ok, g.Protocol) {
		n.errs.add(path, "a %s listener cannot forward to %s target group %q", lp, g.Protocol, name)
	}
}

func (n *fields) protocol(path, s string) Protocol {
	if s == "" {
		return TCP
	}
	p, err := parseEnum(protocolNames, s)
	if err != nil {
		n.errs.add(path, "%v", err)
	}
	return Protocol(p)
}

func (n *fields) duration(path, s string, def time.Duration) time.Duration {
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		n.errs.add(path, "want a duration such as 500ms, 30s or 2m, got %q", s)
		return def
	case d <= 0:
		n.errs.add(path, "%s must be positive", s)
	case d > maxDuration:
		n.errs.add(path, "%s is longer than %s", s, maxDuration)
	}
	return d
}

func (n *fields) prefixes(path string, ss []string) []netip.Prefix {
	var out []netip.Prefix
	for i, s := range ss {
		p, err := ParsePrefix(s)
		if err != nil {
			n.errs.add(fmt.Sprintf("%s[%d]", path, i), "%v", err)
			continue
		}
		out = append(out, p)
	}
	return out
}

// ParsePrefix parses a CIDR, or a bare IP as a host prefix.
func ParsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("want a CIDR such as 10.0.0.0/8 or an IP, got %q", s)
	}
	return netip.PrefixFrom(ip, ip.BitLen()), nil
}

func validSNI(h string) bool {
	h = strings.TrimPrefix(h, "*.")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			if !(c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
				return false
			}
		}
	}
	return true
}

func lowerAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.ToLower(s)
	}
	return out
}

// interfaces checks a list of interface names.
func (n *fields) interfaces(path string, names []string) []string {
	for i, name := range names {
		if name == "" || len(name) > 15 || strings.ContainsAny(name, "/ ") {
			n.errs.add(fmt.Sprintf("%s[%d]", path, i), "%q is not an interface name", name)
		}
	}
	return names
}
