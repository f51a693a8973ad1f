package listen

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/tlshello"
)

// Rule sends TLS flows whose ClientHello names a matching host to its own
// target group. The first matching rule wins; a hello without a name, or
// with a name no rule matches, takes the listener's target_group or forward.
type Rule struct {
	Patterns []string // lower-case host names or *.domain patterns
	Route    *Route
}

// NewRules builds a listener's SNI rules.
func NewRules(l *config.Listener, reg *registry.Registry) ([]Rule, error) {
	var rules []Rule
	for _, r := range l.Rules {
		g := reg.Group(r.TargetGroup)
		if g == nil {
			return nil, fmt.Errorf("listener %s: no target group %q", l.Name, r.TargetGroup)
		}
		rules = append(rules, Rule{Patterns: r.SNI, Route: &Route{Groups: []*registry.Group{g}, cum: []int{1}, total: 1}})
	}
	return rules, nil
}

// RouteFor is the route of a host name: the first rule that matches it, or
// def.
func RouteFor(rules []Rule, def *Route, host string) *Route {
	if host != "" {
		for _, r := range rules {
			if slices.ContainsFunc(r.Patterns, func(p string) bool { return tlshello.Match(p, host) }) {
				return r.Route
			}
		}
	}
	return def
}

// Endpoint is what a route explanation needs of one listener address.
type Endpoint struct {
	Zone     string
	IP       netip.Addr
	Port     uint16
	Route    *Route // for the SNI asked about, on a listener with rules
	HasRules bool
}
