package tlsterm

import (
	"crypto/tls"
	"slices"
)

// Policy is an ELB security policy: the protocol versions it allows and the
// cipher suites of TLS 1.2 and below, in order of preference. TLS 1.3's
// suites are not configurable in Go; they are the three every TLS 1.3
// policy lists (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305).
type Policy struct {
	Name     string
	Min, Max uint16
	Suites   []uint16
	// Curves are the key exchanges offered: the classical ones. None of
	// these policies is one of ELB's post-quantum (PQ) ones, so no hybrid
	// ML-KEM exchange, which crypto/tls would otherwise prefer and which
	// costs a handshake about a fifth more CPU.
	Curves []tls.CurveID
	// Unavailable are suites the policy lists that Go does not implement
	// (the CBC-SHA384 and AES256-SHA256 suites); clients always share a
	// suite they prefer with l4lb, so only the list differs.
	Unavailable []string
}

// The suites, named as OpenSSL (and AWS's tables) name them.
var (
	ecdheGCM = []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	}
	// ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256,
	// ECDHE-ECDSA-AES128-SHA256, ECDHE-RSA-AES128-SHA256,
	// ECDHE-ECDSA-AES256-GCM-SHA384, ECDHE-RSA-AES256-GCM-SHA384,
	// (ECDHE-ECDSA-AES256-SHA384, ECDHE-RSA-AES256-SHA384: not in Go).
	tls13Compat = []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	}
	// AES128-GCM-SHA256, AES128-SHA256, AES256-GCM-SHA384 (AES256-SHA256: not in Go).
	rsaKex = []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_RSA_WITH_AES_128_CBC_SHA256, tls.TLS_RSA_WITH_AES_256_GCM_SHA384}
	// ECDHE-ECDSA-AES128-SHA, ECDHE-RSA-AES128-SHA, AES128-SHA,
	// ECDHE-RSA-AES256-SHA, ECDHE-ECDSA-AES256-SHA, AES256-SHA.
	sha1CBC = []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_AES_128_CBC_SHA,
		tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, tls.TLS_RSA_WITH_AES_256_CBC_SHA,
	}
	missingSHA384 = []string{"ECDHE-ECDSA-AES256-SHA384", "ECDHE-RSA-AES256-SHA384"}
	missingRSA    = []string{"AES256-SHA256"}
)

func join(lists ...[]uint16) []uint16 { return slices.Concat(lists...) }

func joinS(lists ...[]string) []string { return slices.Concat(lists...) }

// policies are ELB's security policies for TLS listeners, as AWS documents
// them for Network Load Balancers.
var policies = map[string]Policy{
	"ELBSecurityPolicy-TLS13-1-2-2021-06":      {Min: tls.VersionTLS12, Max: tls.VersionTLS13, Suites: tls13Compat, Unavailable: missingSHA384},
	"ELBSecurityPolicy-TLS13-1-2-Res-2021-06":  {Min: tls.VersionTLS12, Max: tls.VersionTLS13, Suites: ecdheGCM},
	"ELBSecurityPolicy-TLS13-1-3-2021-06":      {Min: tls.VersionTLS13, Max: tls.VersionTLS13},
	"ELBSecurityPolicy-TLS13-1-2-Ext1-2021-06": {Min: tls.VersionTLS12, Max: tls.VersionTLS13, Suites: join(tls13Compat, rsaKex), Unavailable: joinS(missingSHA384, missingRSA)},
	"ELBSecurityPolicy-TLS13-1-2-Ext2-2021-06": {Min: tls.VersionTLS12, Max: tls.VersionTLS13, Suites: join(tls13Compat, sha1CBC, rsaKex), Unavailable: joinS(missingSHA384, missingRSA)},
	"ELBSecurityPolicy-TLS13-1-1-2021-06":      {Min: tls.VersionTLS11, Max: tls.VersionTLS13, Suites: join(tls13Compat, sha1CBC, rsaKex), Unavailable: joinS(missingSHA384, missingRSA)},
	"ELBSecurityPolicy-TLS13-1-0-2021-06":      {Min: tls.VersionTLS10, Max: tls.VersionTLS13, Suites: join(tls13Compat, sha1CBC, rsaKex), Unavailable: joinS(missingSHA384, missingRSA)},
	"ELBSecurityPolicy-2016-08":                {Min: tls.VersionTLS10, Max: tls.VersionTLS12, Suites: join(tls13Compat, sha1CBC, rsaKex), Unavailable: joinS(missingSHA384, missingRSA)},
	"ELBSecurityPolicy-TLS-1-2-2017-01":        {Min: tls.VersionTLS12, Max: tls.VersionTLS12, Suites: join(tls13Compat, rsaKex), Unavailable: joinS(missingSHA384, missingRSA)},
	"ELBSecurityPolicy-TLS-1-2-Ext-2018-06":    {Min: tls.VersionTLS12, Max: tls.VersionTLS12, Suites: join(tls13Compat, sha1CBC, rsaKex), Unavailable: joinS(missingSHA384, missingRSA)},
	"ELBSecurityPolicy-FS-1-2-Res-2020-10":     {Min: tls.VersionTLS12, Max: tls.VersionTLS12, Suites: ecdheGCM},
}

// classical are the key-exchange groups of ELB's non-PQ policies.
var classical = []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384}

// PolicyByName returns the named policy (config validation has checked the
// name against the same list).
func PolicyByName(name string) (Policy, bool) {
	p, ok := policies[name]
	p.Name = name
	p.Curves = classical
	return p, ok
}
