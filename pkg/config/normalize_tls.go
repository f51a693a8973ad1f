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
	l.TLS = t
}
