package tlsterm

import (
	"crypto/tls"
	"testing"

	"github.com/l4lb/l4lb/pkg/config"
)

// Every policy name the config accepts has a definition, with versions in
// order and suites Go implements and allows configuring.
func TestEveryPolicyIsDefined(t *testing.T) {
	known := map[uint16]bool{}
	for _, s := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		known[s.ID] = true
	}
	for _, name := range config.SecurityPolicies() {
		p, ok := PolicyByName(name)
		if !ok {
			t.Errorf("%s: not defined", name)
			continue
		}
		if p.Min == 0 || p.Max < p.Min {
			t.Errorf("%s: versions %x-%x", name, p.Min, p.Max)
		}
		if p.Min < tls.VersionTLS13 && len(p.Suites) == 0 {
			t.Errorf("%s: allows TLS 1.2 or below with no suite", name)
		}
		for _, s := range p.Suites {
			if !known[s] {
				t.Errorf("%s: suite %x unknown to crypto/tls", name, s)
			}
		}
	}
	if len(policies) != len(config.SecurityPolicies()) {
		t.Errorf("%d policies defined, the config knows %d", len(policies), len(config.SecurityPolicies()))
	}
}
