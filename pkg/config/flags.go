package config

import (
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Flags are the `l4lb serve` flags. A nil pointer or empty slice is a flag that
// was not given; given flags override the file (Apply).
type Flags struct {
	Listen  []string // tcp://IP:PORT, udp://, tcp_udp://, tls://; ":PORT" binds every zone IP
	Targets []string // ADDR[,zone=Z][,weight=W], into target group "default"
	Zones   []string // NAME=IP[,IP]
	HealthFlags
	ProxyProtocolV2     *bool
	PreserveClientIP    *bool
	Stickiness          *string // source_ip
	CrossZone           *bool
	UDPFastPath         *bool
	TCPFastPath         *bool
	IdleTimeout         *string
	UDPIdleTimeout      *string
	DeregistrationDelay *string
	TLSFlags
	Admin           *string
	AdminTokenFile  *string
	ShutdownTimeout *string
}

// HealthFlags set every target group's health check.
type HealthFlags struct {
	HealthCheck        *string // tcp | tcp://:PORT | http://[:PORT]/PATH | https://[:PORT]/PATH
	HealthInterval     *string
	HealthTimeout      *string
	HealthyThreshold   *int
	UnhealthyThreshold *int
}

// TLSFlags set the TLS listeners' certificates and policies.
type TLSFlags struct {
	TLSCerts       []string
	TLSKeys        []string
	ALPNPolicy     *string
	SecurityPolicy *string
}

// Apply lays the given flags over raw: --listen adds listeners that forward to
// target group "default", --target fills that group, and the per-group and
// per-listener flags override every group and listener. Errors name the flag.
func (f *Flags) Apply(r *Raw) error {
	var errs Errors
	for i, z := range f.Zones {
		name, ips, ok := strings.Cut(z, "=")
		if !ok || name == "" || ips == "" {
			errs.add(fmt.Sprintf("--zone[%d]", i), "want NAME=IP[,IP], got %q", z)
			continue
		}
		if r.Zones == nil {
			r.Zones = map[string][]string{}
		}
		// A comma, as --target uses; a semicolon (which needs quoting
		// in a shell) is still taken.
		r.Zones[name] = strings.FieldsFunc(ips, func(r rune) bool { return r == ',' || r == ';' })
	}
	if len(f.Targets) > 0 {
		g := defaultGroup(r)
		g.Targets = nil
		for i, t := range f.Targets {
			rt, err := parseTargetFlag(t)
			if err != nil {
				errs.add(fmt.Sprintf("--target[%d]", i), "%v", err)
				continue
			}
			g.Targets = append(g.Targets, rt)
		}
	}
	for i, s := range f.Listen {
		l, err := parseListenFlag(s)
		if err != nil {
			errs.add(fmt.Sprintf("--listen[%d]", i), "%v", err)
			continue
		}
		if len(f.Listen) > 1 {
			l.Name = fmt.Sprintf("%s-%d-%d", strings.ToLower(l.Protocol), *l.Port, i)
		}
		if l.Protocol == "TLS" {
			for j := range f.TLSCerts {
				if j < len(f.TLSKeys) {
					if l.TLS == nil {
						l.TLS = &RawTLS{}
					}
					l.TLS.Certificates = append(l.TLS.Certificates, RawCertificate{Cert: f.TLSCerts[j], Key: f.TLSKeys[j]})
				}
			}
		}
		r.Listeners = append(r.Listeners, l)
		g := defaultGroup(r)
		if g.Protocol == "" || l.Protocol == "UDP" || l.Protocol == "TCP_UDP" {
			g.Protocol = groupProtocolFor(l.Protocol)
		}
	}
	if len(f.TLSCerts) != len(f.TLSKeys) {
		errs.add("--tls-cert", "%d certificates but %d --tls-key; give them in pairs", len(f.TLSCerts), len(f.TLSKeys))
	}
	if f.Admin != nil || f.AdminTokenFile != nil {
		if r.Admin == nil {
			r.Admin = &RawAdmin{}
		}
		if f.Admin != nil {
			r.Admin.Listen = f.Admin
		}
		if f.AdminTokenFile != nil {
			r.Admin.TokenFile = *f.AdminTokenFile
		}
	}
	if f.CrossZone != nil {
		r.LoadBalancer.CrossZone = f.CrossZone
	}
	if f.UDPFastPath != nil {
		r.LoadBalancer.UDPFastPath = f.UDPFastPath
	}
	if f.TCPFastPath != nil {
		r.LoadBalancer.TCPFastPath = f.TCPFastPath
	}
	if f.ShutdownTimeout != nil {
		r.LoadBalancer.ShutdownTimeout = *f.ShutdownTimeout
	}
	for i := range r.Listeners {
		l := &r.Listeners[i]
		setStr(&l.IdleTimeout, f.IdleTimeout)
		setStr(&l.UDPIdleTimeout, f.UDPIdleTimeout)
		if l.Protocol == "TLS" && (f.ALPNPolicy != nil || f.SecurityPolicy != nil) {
			if l.TLS == nil {
				l.TLS = &RawTLS{}
			}
			setStr(&l.TLS.ALPNPolicy, f.ALPNPolicy)
			setStr(&l.TLS.SecurityPolicy, f.SecurityPolicy)
		}
	}
	f.applyGroups(r, &errs)
	return errs.err()
}

func (f *Flags) applyGroups(r *Raw, errs *Errors) {
	var hc *RawHealthCheck
	if f.HealthCheck != nil {
		var err error
		if hc, err = parseHealthFlag(*f.HealthCheck); err != nil {
			errs.add("--health-check", "%v", err)
		}
	}
	attrs := map[string]string{}
	setBool := func(k string, b *bool) {
		if b != nil {
			attrs[k] = strconv.FormatBool(*b)
		}
	}
	setBool(AttrProxyProtocolV2, f.ProxyProtocolV2)
	setBool(AttrPreserveClientIP, f.PreserveClientIP)
	if f.Stickiness != nil {
		attrs[AttrStickiness] = "true"
		attrs[AttrStickinessType] = *f.Stickiness
	}
	if f.DeregistrationDelay != nil {
		d, err := time.ParseDuration(*f.DeregistrationDelay)
		if err != nil || d < 0 {
			errs.add("--deregistration-delay", "want a duration such as 30s, got %q", *f.DeregistrationDelay)
		}
		attrs[AttrDeregistrationDelay] = strconv.Itoa(int((d + time.Second - 1) / time.Second))
	}
	for i := range r.TargetGroups {
		g := &r.TargetGroups[i]
		if hc != nil || f.HealthInterval != nil || f.HealthTimeout != nil || f.HealthyThreshold != nil || f.UnhealthyThreshold != nil {
			if g.HealthCheck == nil {
				g.HealthCheck = &RawHealthCheck{}
			}
			h := g.HealthCheck
			if hc != nil {
				h.Protocol, h.Port, h.Path = hc.Protocol, hc.Port, hc.Path
			}
			setStr(&h.Interval, f.HealthInterval)
			setStr(&h.Timeout, f.HealthTimeout)
			if f.HealthyThreshold != nil {
				h.HealthyThreshold = f.HealthyThreshold
			}
			if f.UnhealthyThreshold != nil {
				h.UnhealthyThreshold = f.UnhealthyThreshold
			}
		}
		for k, v := range attrs {
			if g.Attributes == nil {
				g.Attributes = map[string]string{}
			}
			g.Attributes[k] = v
		}
	}
}

func setStr(dst *string, v *string) {
	if v != nil {
		*dst = *v
	}
}

func defaultGroup(r *Raw) *RawTargetGroup {
	for i := range r.TargetGroups {
		if r.TargetGroups[i].Name == DefaultTargetGroupName {
			return &r.TargetGroups[i]
		}
	}
	r.TargetGroups = append(r.TargetGroups, RawTargetGroup{Name: DefaultTargetGroupName})
	return &r.TargetGroups[len(r.TargetGroups)-1]
}

// groupProtocolFor is the target group protocol an implicit group needs to
// serve a listener of protocol p.
func groupProtocolFor(p string) string {
	switch p {
	case "UDP", "TCP_UDP":
		return p
	}
	return "TCP"
}

func parseListenFlag(s string) (RawListener, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return RawListener{}, fmt.Errorf("want PROTOCOL://[IP]:PORT such as tcp://:80, got %q", s)
	}
	proto := strings.ToUpper(scheme)
	if _, err := parseEnum(protocolNames, proto); err != nil {
		return RawListener{}, fmt.Errorf("%q: protocol must be tcp, udp, tcp_udp or tls", s)
	}
	i := strings.LastIndex(rest, ":")
	if i < 0 {
		return RawListener{}, fmt.Errorf("%q has no port", s)
	}
	host, portStr := strings.Trim(rest[:i], "[]"), rest[i+1:]
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return RawListener{}, fmt.Errorf("%q: port must be 1-65535", s)
	}
	l := RawListener{Name: fmt.Sprintf("%s-%d", strings.ToLower(proto), port), Protocol: proto, Port: &port, TargetGroup: DefaultTargetGroupName}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil {
			return RawListener{}, fmt.Errorf("%q: %q is not an IP address", s, host)
		}
		l.Bind = []string{host}
	}
	return l, nil
}

func parseTargetFlag(s string) (RawTarget, error) {
	parts := strings.Split(s, ",")
	t := RawTarget{Address: parts[0]}
	if _, err := netip.ParseAddrPort(parts[0]); err != nil {
		return t, fmt.Errorf("want IP:PORT[,zone=Z][,weight=W], got %q", s)
	}
	for _, kv := range parts[1:] {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "zone":
			t.Zone = v
		case "weight":
			w, err := strconv.Atoi(v)
			if err != nil {
				return t, fmt.Errorf("%q: weight must be a whole number", s)
			}
			t.Weight = &w
		default:
			return t, fmt.Errorf("%q: unknown option %q (zone, weight)", s, k)
		}
	}
	return t, nil
}

func parseHealthFlag(s string) (*RawHealthCheck, error) {
	if s == "tcp" {
		return &RawHealthCheck{Protocol: "TCP"}, nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "tcp" && u.Scheme != "http" && u.Scheme != "https") || u.Hostname() != "" {
		return nil, fmt.Errorf("want tcp, tcp://:PORT, http://[:PORT]/PATH or https://[:PORT]/PATH, got %q", s)
	}
	h := &RawHealthCheck{Protocol: strings.ToUpper(u.Scheme), Port: u.Port()}
	if u.Scheme != "tcp" {
		h.Path = u.RequestURI()
	} else if u.Port() == "" {
		return nil, fmt.Errorf("%q: tcp:// needs a port (or say tcp for the traffic port)", s)
	}
	return h, nil
}
