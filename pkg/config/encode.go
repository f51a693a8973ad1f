package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// YAML renders the normalized config with every default spelled out, in the
// file's own format, so `l4lb validate` shows what will run.
func (c *Config) YAML() ([]byte, error) {
	return yaml.Marshal(c.ToRaw())
}

// ToRaw turns a Config back into its written form. Normalize(ToRaw(c)) gives c.
func (c *Config) ToRaw() *Raw {
	r := &Raw{}
	listen := c.Admin.Listen
	if listen == "" {
		listen = "off"
	}
	r.Admin = &RawAdmin{Listen: &listen, TokenFile: c.Admin.TokenFile}
	if len(c.Zones) > 0 {
		r.Zones = map[string][]string{}
		for _, z := range c.Zones {
			for _, ip := range z.IPs {
				r.Zones[z.Name] = append(r.Zones[z.Name], ip.String())
			}
		}
	}
	cz := c.CrossZone
	mf := c.MaxFlows
	fp, tfp := c.UDPFastPath, c.TCPFastPath
	bpffs := c.BPFFS
	if bpffs == "" {
		bpffs = "off"
	}
	if c.Registry.Backend == RegistryEtcd {
		r.Registry = &RawRegistry{Backend: RegistryEtcd, Endpoints: c.Registry.Endpoints, Prefix: c.Registry.Prefix}
		if t := c.Registry.TLS; t != (RegistryTLS{}) {
			r.Registry.TLS = &RawRegistryTLS{CAFile: t.CAFile, CertFile: t.CertFile, KeyFile: t.KeyFile}
		}
	}
	r.LoadBalancer = RawLoadBalancer{CrossZone: &cz, ShutdownTimeout: dur(c.ShutdownTimeout), MaxFlows: &mf, EndpointID: c.EndpointID,
		UDPFastPath: &fp, UDPFastPathInterfaces: c.UDPFastPathInterfaces, TCPFastPath: &tfp, TCPFastPathInterfaces: c.TCPFastPathInterfaces, BPFFS: &bpffs}
	for _, l := range c.Listeners {
		port := int(l.Port)
		maxc := l.MaxConnectionsPerSource
		rl := RawListener{
			Name: l.Name, Protocol: l.Protocol.String(), Port: &port,
			TargetGroup: l.TargetGroup, IdleTimeout: dur(l.IdleTimeout), UDPIdleTimeout: dur(l.UDPIdleTimeout),
			Allow: prefixStrings(l.Allow), Deny: prefixStrings(l.Deny), MaxConnectionsPerSource: &maxc,
		}
		for _, b := range l.Bind {
			rl.Bind = append(rl.Bind, b.IP.String())
		}
		for _, f := range l.Forward {
			w := f.Weight
			rl.Forward = append(rl.Forward, RawForward{TargetGroup: f.TargetGroup, Weight: &w})
		}
		for _, rule := range l.Rules {
			rl.Rules = append(rl.Rules, RawRule(rule))
		}
		if len(l.ProxyProtocolAccept) > 0 {
			rl.ProxyProtocolAccept = &RawProxyAccept{From: prefixStrings(l.ProxyProtocolAccept)}
		}
		if l.TLS != nil {
			h := l.TLS.Handshake
			t := &RawTLS{SecurityPolicy: l.TLS.SecurityPolicy, ALPNPolicy: l.TLS.ALPNPolicy.String(), AccessLog: l.TLS.AccessLog,
				HelloTimeout: h.HelloTimeout.String(), HandshakeTimeout: h.Timeout.String(), HandshakeQueueTimeout: h.QueueTimeout.String(),
				MaxHandshakes: &h.Max, MaxHandshakesPerSource: &h.PerSource}
			for _, cert := range l.TLS.Certificates {
				t.Certificates = append(t.Certificates, RawCertificate(cert))
			}
			rl.TLS = t
		}
		if l.QUIC != nil {
			n := l.QUIC.ConnIDLen
			rl.QUIC = &RawQUIC{ConnectionIDLength: &n}
		}
		r.Listeners = append(r.Listeners, rl)
	}
	for _, g := range c.TargetGroups {
		rg := RawTargetGroup{Name: g.Name, Protocol: g.Protocol.String()}
		if g.Port != 0 {
			port := int(g.Port)
			rg.Port = &port
		}
		for _, t := range g.Targets {
			w := t.Weight
			rg.Targets = append(rg.Targets, RawTarget{Address: t.Address.String(), Zone: t.Zone, Weight: &w, QUICServerID: t.QUICServerID})
		}
		h := g.HealthCheck
		hi, ui := h.HealthyThreshold, h.UnhealthyThreshold
		rh := &RawHealthCheck{
			Protocol: h.Protocol.String(), Port: "traffic-port", Path: h.Path,
			Interval: dur(h.Interval), Timeout: dur(h.Timeout),
			HealthyThreshold: &hi, UnhealthyThreshold: &ui, Matcher: matcherString(h.Matcher),
		}
		if h.Port != 0 {
			rh.Port = strconv.Itoa(int(h.Port))
		}
		rg.HealthCheck = rh
		rg.Attributes = g.Attributes.strings()
		rg.Forwarding = g.Forwarding
		rg.Encapsulation = g.Encapsulation
		if g.GUEPort != 0 {
			p := int(g.GUEPort)
			rg.GUEPort = &p
		}
		r.TargetGroups = append(r.TargetGroups, rg)
	}
	r.BGP = c.BGP.toRaw()
	return r
}

func (b *BGP) toRaw() *RawBGP {
	if b == nil {
		return nil
	}
	as, lp := int(b.LocalAS), b.ListenPort
	r := &RawBGP{LocalAS: &as, RouterID: b.RouterID.String(), ListenPort: &lp, WithdrawGrace: dur(b.WithdrawGrace),
		Announce: map[string][]string{}}
	for _, p := range b.Peers {
		pas, port := int(p.AS), int(p.Port)
		rp := RawBGPPeer{Address: p.Address.String(), AS: &pas, Port: &port, HoldTime: dur(p.HoldTime), Password: p.Password}
		if p.LocalAddress.IsValid() {
			rp.LocalAddress = p.LocalAddress.String()
		}
		if p.Multihop > 0 {
			hops := int(p.Multihop)
			rp.Multihop = &hops
		}
		if p.BFD.Enabled() {
			mult := int(p.BFD.Multiplier)
			rp.BFD = &RawBFD{Interval: dur(p.BFD.Interval), Multiplier: &mult}
			if a := p.BFD.Auth; a.Type != BFDAuthNone {
				id := int(a.KeyID)
				// The key is not printed: validate's output is shown and
				// pasted, and a key belongs in the file alone.
				rp.BFD.Authentication = &RawBFDAuth{Type: a.Type.String(), KeyID: &id, Password: "(redacted)"}
			}
		}
		r.Peers = append(r.Peers, rp)
	}
	for _, z := range b.Announce {
		r.Announce[z.Zone] = prefixStrings(z.Prefixes)
		for _, c := range z.Communities {
			if r.Communities == nil {
				r.Communities = map[string][]string{}
			}
			r.Communities[z.Zone] = append(r.Communities[z.Zone], fmt.Sprintf("%d:%d", c>>16, c&0xffff))
		}
	}
	return r
}

func (a *Attributes) strings() map[string]string {
	off := func(i int) string {
		if i == 0 {
			return "off"
		}
		return strconv.Itoa(i)
	}
	return map[string]string{
		AttrDeregistrationDelay:           strconv.Itoa(int(a.DeregistrationDelay / time.Second)),
		AttrDeregistrationTermination:     strconv.FormatBool(a.DeregistrationConnectionTermination),
		AttrPreserveClientIP:              strconv.FormatBool(a.PreserveClientIP),
		AttrProxyProtocolV2:               strconv.FormatBool(a.ProxyProtocolV2),
		AttrStickiness:                    strconv.FormatBool(a.Stickiness),
		AttrStickinessType:                a.StickinessType,
		AttrCrossZone:                     a.CrossZone.String(),
		AttrUnhealthyTermination:          strconv.FormatBool(a.UnhealthyConnectionTermination),
		AttrUnhealthyDrainingInterval:     strconv.Itoa(int(a.UnhealthyDrainingInterval / time.Second)),
		AttrUnhealthyRoutingMinCount:      off(a.UnhealthyRoutingMinHealthyCount),
		AttrUnhealthyRoutingMinPercentage: off(a.UnhealthyRoutingMinHealthyPercentage),
		AttrDNSFailoverMinCount:           off(a.DNSFailoverMinHealthyCount),
		AttrDNSFailoverMinPercentage:      off(a.DNSFailoverMinHealthyPercentage),
	}
}

func matcherString(rs []StatusRange) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		if r.Lo == r.Hi {
			parts[i] = strconv.Itoa(r.Lo)
		} else {
			parts[i] = fmt.Sprintf("%d-%d", r.Lo, r.Hi)
		}
	}
	return strings.Join(parts, ",")
}

func dur(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return d.String()
}

func prefixStrings[T fmt.Stringer](ps []T) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}
