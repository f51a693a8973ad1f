package config

import (
	"fmt"
	"slices"
	"strings"
)

// Protocol is a listener or target group protocol.
type Protocol uint8

// Protocols, in NLB's spelling.
const (
	TCP Protocol = iota + 1
	UDP
	TCPUDP
	TLS
	QUIC    // QUIC v1 passthrough, routed by connection ID
	TCPQUIC // TCP and QUIC on one port
)

var protocolNames = []string{TCP: "TCP", UDP: "UDP", TCPUDP: "TCP_UDP", TLS: "TLS", QUIC: "QUIC", TCPQUIC: "TCP_QUIC"}

func (p Protocol) String() string { return enumName(protocolNames, int(p)) }

// HasTCP reports whether the protocol carries TCP (TLS runs over TCP).
func (p Protocol) HasTCP() bool { return p == TCP || p == TCPUDP || p == TLS || p == TCPQUIC }

// HasUDP reports whether the protocol carries UDP (QUIC runs over UDP).
func (p Protocol) HasUDP() bool { return p == UDP || p == TCPUDP || p == QUIC || p == TCPQUIC }

// IsQUIC reports whether the protocol's datagrams are QUIC, routed by the
// server ID in their connection IDs.
func (p Protocol) IsQUIC() bool { return p == QUIC || p == TCPQUIC }

// HealthProtocol is the protocol of a health check.
type HealthProtocol uint8

// Health check protocols. UDP is never one, as in NLB.
const (
	HealthTCP HealthProtocol = iota + 1
	HealthHTTP
	HealthHTTPS
	HealthTLS
)

var healthProtocolNames = []string{HealthTCP: "TCP", HealthHTTP: "HTTP", HealthHTTPS: "HTTPS", HealthTLS: "TLS"}

func (p HealthProtocol) String() string { return enumName(healthProtocolNames, int(p)) }

// ALPNPolicy is NLB's ALPN policy of a TLS listener.
type ALPNPolicy uint8

// ALPN policies.
const (
	ALPNNone ALPNPolicy = iota + 1
	ALPNHTTP1Only
	ALPNHTTP2Only
	ALPNHTTP2Optional
	ALPNHTTP2Preferred
)

var alpnNames = []string{ALPNNone: "None", ALPNHTTP1Only: "HTTP1Only", ALPNHTTP2Only: "HTTP2Only", ALPNHTTP2Optional: "HTTP2Optional", ALPNHTTP2Preferred: "HTTP2Preferred"}

func (p ALPNPolicy) String() string { return enumName(alpnNames, int(p)) }

// CrossZoneMode is a target group's load_balancing.cross_zone.enabled.
type CrossZoneMode uint8

// Cross-zone modes.
const (
	CrossZoneInherit CrossZoneMode = iota + 1
	CrossZoneOn
	CrossZoneOff
)

var crossZoneNames = []string{CrossZoneInherit: "use_load_balancer_configuration", CrossZoneOn: "true", CrossZoneOff: "false"}

func (m CrossZoneMode) String() string { return enumName(crossZoneNames, int(m)) }

// securityPolicies are the ELB TLS security policies l4lb knows.
var securityPolicies = []string{
	"ELBSecurityPolicy-TLS13-1-2-2021-06",
	"ELBSecurityPolicy-TLS13-1-2-Res-2021-06",
	"ELBSecurityPolicy-TLS13-1-3-2021-06",
	"ELBSecurityPolicy-TLS13-1-2-Ext1-2021-06",
	"ELBSecurityPolicy-TLS13-1-2-Ext2-2021-06",
	"ELBSecurityPolicy-TLS13-1-1-2021-06",
	"ELBSecurityPolicy-TLS13-1-0-2021-06",
	"ELBSecurityPolicy-2016-08",
	"ELBSecurityPolicy-TLS-1-2-2017-01",
	"ELBSecurityPolicy-TLS-1-2-Ext-2018-06",
	"ELBSecurityPolicy-FS-1-2-Res-2020-10",
}

func enumName(names []string, i int) string {
	if i <= 0 || i >= len(names) {
		return fmt.Sprintf("unknown(%d)", i)
	}
	return names[i]
}

// parseEnum finds s among names (exact spelling) and returns its index.
func parseEnum(names []string, s string) (int, error) {
	for i, n := range names {
		if n != "" && n == s {
			return i, nil
		}
	}
	var valid []string
	for _, n := range names {
		if n != "" {
			valid = append(valid, n)
		}
	}
	return 0, fmt.Errorf("%q is not one of %s", s, strings.Join(valid, ", "))
}

// SecurityPolicies lists the security policy names a TLS listener takes.
func SecurityPolicies() []string { return slices.Clone(securityPolicies) }
