package config

import (
	"fmt"
	"slices"
	"strings"
)

func (n *normalizer) listenerTLS(path string, r *RawListener, l *Listener) {
	if l.Protocol != TLS {
		if r.TLS != nil {
			n.errs.add(path+".tls", "only TLS listeners take a tls section")
		}
		return
	}
	if r.TLS == nil || len(r.TLS.Certificates) == 0 {
		n.errs.add(path+".tls.certificates", "a TLS listener needs at least one certificate")
		return
	}
	t := &ListenerTLS{SecurityPolicy: DefaultSecurityPolicy, ALPNPolicy: ALPNNone}
	for i, c := range r.TLS.Certificates {
		cp := fmt.Sprintf("%s.tls.certificates[%d]", path, i)
		if c.Cert == "" {
			n.errs.add(cp+".cert", "required")
		}
		if c.Key == "" {
			n.errs.add(cp+".key", "required")
		}
		t.Certificates = append(t.Certificates, Certificate(c))
	}
	if r.TLS.SecurityPolicy != "" {
		if !slices.Contains(securityPolicies, r.TLS.SecurityPolicy) {
			n.errs.add(path+".tls.security_policy", "%q is not one of %s", r.TLS.SecurityPolicy, strings.Join(securityPolicies, ", "))
		}
		t.SecurityPolicy = r.TLS.SecurityPolicy
	}
	if r.TLS.ALPNPolicy != "" {
		p, err := parseEnum(alpnNames, r.TLS.ALPNPolicy)
		if err != nil {
			n.errs.add(path+".tls.alpn_policy", "%v", err)
		}
		t.ALPNPolicy = ALPNPolicy(p)
	}
	t.AccessLog = r.TLS.AccessLog
	n.handshake(path+".tls", r.TLS, &t.Handshake)
	l.TLS = t
}

// handshake reads the handshake's bounds, defaults in place of what is
// absent.
func (n *normalizer) handshake(path string, r *RawTLS, h *TLSHandshake) {
	h.HelloTimeout = n.duration(path+".hello_timeout", r.HelloTimeout, DefaultTLSHelloTimeout)
	h.Timeout = n.duration(path+".handshake_timeout", r.HandshakeTimeout, DefaultTLSHandshakeTimeout)
	h.QueueTimeout = n.duration(path+".handshake_queue_timeout", r.HandshakeQueueTimeout, DefaultTLSHandshakeQueueTimeout)
	count := func(key string, v *int, def int) int {
		switch {
		case v == nil:
			return def
		case *v < 1 || *v > maxHandshakes:
			n.errs.add(path+"."+key, "%d is not between 1 and %d", *v, maxHandshakes)
			return def
		}
		return *v
	}
	h.Max = count("max_handshakes", r.MaxHandshakes, DefaultTLSMaxHandshakes)
	h.PerSource = count("max_handshakes_per_source", r.MaxHandshakesPerSource, max(h.Max/16, 4))
	if h.PerSource > h.Max {
		n.errs.add(path+".max_handshakes_per_source", "%d is more than max_handshakes (%d)", h.PerSource, h.Max)
	}
}

// maxHandshakes bounds max_handshakes: past it the handshakes' CPU, not
// their count, is the limit.
const maxHandshakes = 1 << 20
