// Package config is l4lb's model of listeners, target groups and zones: decoded
// from YAML (or built from serve flags), given NLB's defaults in one place, and
// validated into typed values with the field's path in every error.
//
//	cfg, err := config.Load("l4lb.yaml")
//	if err != nil {
//		// err is an *Errors: one "path.to.field: problem" line per fault.
//	}
//	for _, l := range cfg.Listeners { ... }
//
// It is about 2 900 lines, past the project's 1 500: the raw model, the
// typed one, the flags and the validation of every field are one contract
// (docs/reference.md, "Config file"), and their error paths must agree,
// which is easiest to keep true in one package.
package config

import (
	"net/netip"
	"time"
)

// Config is a validated configuration. Every field holds its final value:
// defaults are applied and strings are parsed.
type Config struct {
	Admin           Admin
	Zones           []Zone // sorted by name; empty means one unnamed zone
	CrossZone       bool   // load_balancer.cross_zone
	ShutdownTimeout time.Duration
	// MaxFlows bounds each UDP listener address's flow table; new flows
	// beyond it are refused and counted (load_balancer.max_flows).
	MaxFlows int
	// EndpointID, when set, is sent in every PROXY v2 header as an AWS-style
	// 0xEA TLV (subtype 0x01), as NLB does for PrivateLink endpoint IDs
	// (load_balancer.endpoint_id).
	EndpointID string
	// UDPFastPath forwards qualifying UDP listeners in the kernel (a tc
	// program) instead of through sockets (load_balancer.udp_fast_path): a
	// specific bind address, one target group with preserve_client_ip on and
	// no PROXY header.
	UDPFastPath bool
	// UDPFastPathInterfaces are where the program runs; empty means every
	// interface that is up (loopback and Ethernet).
	UDPFastPathInterfaces []string
	// TCPFastPath forwards qualifying TCP listeners in the kernel, as a NAT
	// (load_balancer.tcp_fast_path): a specific bind address, one target
	// group with preserve_client_ip on, no PROXY header, no TLS, no SNI
	// rules and no per-source limit.
	TCPFastPath bool
	// TCPFastPathInterfaces are where its programs run; empty means every
	// interface that is up.
	TCPFastPathInterfaces []string
	// BPFFS is the directory on the BPF filesystem under which the kernel
	// paths pin their links and maps, one directory per l4lb instance, so
	// that they go on forwarding if l4lb dies (load_balancer.bpffs;
	// DefaultBPFFS). Empty pins nothing.
	BPFFS        string
	Listeners    []Listener
	TargetGroups []TargetGroup
	// BGP, when not nil, announces each zone's addresses to routers while
	// the zone is healthy (the bgp section).
	BGP *BGP
	// Registry is where the target groups' registrations live.
	Registry Registry
}

// Registry backends.
const (
	RegistryFile = "file" // this config and the admin API of each node (the default)
	RegistryEtcd = "etcd" // an etcd cluster that every node watches
)

// Registry says where registrations live. With etcd, every node watches
// Prefix, and a registration through any node's API (or any client of
// etcd) reaches every node.
type Registry struct {
	Backend   string
	Endpoints []string // etcd client URLs
	Prefix    string   // one per cluster of l4lb nodes: /l4lb/prod
	TLS       RegistryTLS
}

// RegistryTLS is the client TLS towards etcd; empty files: none.
type RegistryTLS struct {
	CAFile, CertFile, KeyFile string
}

// BGP is the embedded BGP speaker's configuration.
type BGP struct {
	LocalAS  uint32
	RouterID netip.Addr
	// ListenPort is where the speaker accepts sessions; 0 (the default)
	// means it only connects out to its peers.
	ListenPort int
	Peers      []BGPPeer
	// Announce is, per zone, the prefixes announced while the zone's health
	// (GET /v1/zones/{zone}/health) is 200, and the communities they carry;
	// sorted by zone.
	Announce []BGPZone
	// WithdrawGrace is how long a node waits, after withdrawing its routes
	// on SIGTERM or before an upgrade, for the routers to move new flows
	// elsewhere before it drains.
	WithdrawGrace time.Duration
}

// BGPPeer is one BGP neighbour.
type BGPPeer struct {
	Address      netip.Addr
	AS           uint32
	Port         uint16
	HoldTime     time.Duration
	LocalAddress netip.Addr // the session's source; invalid: the kernel's choice
	Password     string     // TCP MD5 (RFC 2385); "" for none
	// Multihop is how many hops away the peer may be (eBGP multihop's
	// TTL, and BFD's multihop mode, RFC 5883); 0: directly connected.
	Multihop uint8
	BFD      BFD // the zero value: no BFD session
}

// BFD is a BFD session (RFC 5880; single hop as in RFC 5881, or multihop
// as in RFC 5883 for a peer with Multihop) beside a BGP session: the
// router learns of the node's end within Interval times Multiplier, not
// the hold time. The zero value is off.
type BFD struct {
	// Interval is how often control packets are sent and expected once
	// the session is up.
	Interval   time.Duration
	Multiplier uint8 // missed intervals that take the session down
	Auth       BFDAuth
}

// BFDAuth authenticates a BFD session's packets (RFC 5880 section 6.7),
// as BIRD's authentication and password options do. The zero value is
// none.
type BFDAuth struct {
	Type     BFDAuthType
	KeyID    uint8
	Password string // 1 to 20 bytes
}

// BFDAuthType is a BFD authentication type.
type BFDAuthType uint8

const (
	BFDAuthNone BFDAuthType = iota
	BFDAuthKeyedSHA1
	BFDAuthMeticulousKeyedSHA1
)

var bfdAuthNames = []string{"none", "keyed_sha1", "meticulous_keyed_sha1"}

func (t BFDAuthType) String() string { return bfdAuthNames[t] }

// Enabled reports whether the peer runs BFD.
func (b BFD) Enabled() bool { return b.Interval > 0 }

// BGPZone is what one zone announces.
type BGPZone struct {
	Zone        string
	Prefixes    []netip.Prefix
	Communities []uint32 // as AS:value, high 16 bits the AS
}

// Admin is the admin API endpoint. Listen is empty when the API is off.
type Admin struct {
	Listen    string
	TokenFile string
}

// Zone is an availability zone and the static IPs this host owns in it.
type Zone struct {
	Name string
	IPs  []netip.Addr
}

// Listener is one front-end port on one or more bind addresses.
type Listener struct {
	Name     string
	Protocol Protocol
	Port     uint16
	// Bind holds the addresses to listen on, each with the zone that owns it
	// ("" for an address outside every zone, such as 0.0.0.0).
	Bind        []BindAddr
	TargetGroup string    // set when the listener forwards to one group
	Forward     []Forward // set instead of TargetGroup for weighted groups
	Rules       []Rule
	// IdleTimeout ends a TCP or TLS flow with no bytes in either direction;
	// UDPIdleTimeout does the same for UDP flows.
	IdleTimeout             time.Duration
	UDPIdleTimeout          time.Duration
	Allow                   []netip.Prefix
	Deny                    []netip.Prefix
	MaxConnectionsPerSource int // 0 means unlimited
	ProxyProtocolAccept     []netip.Prefix
	TLS                     *ListenerTLS // nil unless Protocol is TLS
	// QUIC is the layout of a QUIC or TCP_QUIC listener's connection IDs;
	// nil for other protocols.
	QUIC *ListenerQUIC
}

// ListenerQUIC is the QUIC-LB plaintext layout of the connection IDs a
// QUIC listener's targets issue: octet 0 holds 3 config-rotation bits (7:
// unroutable), octets 1..8 the target's server ID, and the rest is the
// target's own, up to ConnIDLen bytes.
type ListenerQUIC struct {
	ConnIDLen int // 9..20; DefaultQUICConnIDLen
}

// DefaultQUICConnIDLen is the default length of a QUIC listener's
// connection IDs.
const DefaultQUICConnIDLen = 16

// BindAddr is a listening address and the zone it belongs to.
type BindAddr struct {
	IP   netip.Addr
	Zone string
}

// Forward is one weighted target group of a listener.
type Forward struct {
	TargetGroup string
	Weight      int
}

// Rule sends TCP connections whose ClientHello names one of SNI to TargetGroup.
type Rule struct {
	SNI         []string
	TargetGroup string
}

// ListenerTLS is the TLS termination of a TLS listener.
type ListenerTLS struct {
	Certificates   []Certificate // the first is the default
	SecurityPolicy string
	ALPNPolicy     ALPNPolicy
	AccessLog      string // a file to append one line per connection to; "" is none
	Handshake      TLSHandshake
}

// TLSHandshake bounds a TLS listener's handshakes, so that connections that
// say nothing, or many handshakes from one network, cannot lock other
// clients out. A connection holds a handshake slot only from its whole
// ClientHello on.
type TLSHandshake struct {
	// HelloTimeout closes a connection whose ClientHello has not all
	// arrived this long after accept (default 5s).
	HelloTimeout time.Duration
	// Timeout bounds the handshake from the hello on (default 10s).
	Timeout time.Duration
	// QueueTimeout is how long a hello waits for a slot when the listener's
	// or its source's slots are all taken, before it is refused (default
	// 500ms).
	QueueTimeout time.Duration
	// Max is the listener's concurrent handshakes (default 1024).
	Max int
	// PerSource is the concurrent handshakes of one source network, a /24
	// (IPv4) or a /64 (IPv6) (default Max/16, at least 4).
	PerSource int
}

// Defaults of TLSHandshake.
const (
	DefaultTLSHelloTimeout          = 5 * time.Second
	DefaultTLSHandshakeTimeout      = 10 * time.Second
	DefaultTLSHandshakeQueueTimeout = 500 * time.Millisecond
	DefaultTLSMaxHandshakes         = 1024
)

// Certificate is a PEM certificate chain and its key, as file paths.
type Certificate struct {
	Cert string
	Key  string
}

// TargetGroup is a set of targets with one health check and NLB's attributes.
type TargetGroup struct {
	Name        string
	Protocol    Protocol
	Port        uint16 // 0 when every target names its own port
	Targets     []Target
	HealthCheck HealthCheck
	Attributes  Attributes
	TLS         TargetTLS // protocol TLS only
	// Forwarding is how the kernel paths reach the targets: ForwardNAT
	// rewrites addresses (replies return through l4lb), ForwardDSR
	// encapsulates to the target, which answers the client directly.
	Forwarding string
	// Encapsulation is how ForwardDSR wraps a packet: EncapIPIP (IP in IP:
	// IPIP for IPv4 targets, IPv6 in IPv6 for IPv6 ones), or EncapGUE,
	// an outer IP header of the targets' family and UDP to GUEPort, for
	// routers between l4lb and the targets that spread flows by ports
	// only. Empty for ForwardNAT.
	Encapsulation string
	GUEPort       uint16 // EncapGUE only
}

// Forwarding modes of a target group.
const (
	ForwardNAT = "nat"
	ForwardDSR = "dsr"
)

// Encapsulations of ForwardDSR.
const (
	EncapIPIP = "ipip"
	EncapGUE  = "gue"
)

// TargetTLS is how a TLS target group encrypts to its targets. Without a
// CA file, as NLB, the target's certificate is not verified; with one, its
// chain must lead to that CA, and its name must be ServerName when set.
// ServerName is also sent as SNI.
type TargetTLS struct {
	CAFile     string
	ServerName string
}

// Target is one registered backend.
type Target struct {
	Address netip.AddrPort
	Zone    string // "" means reachable from every zone
	Weight  int
	// QUICServerID is a QUIC or TCP_QUIC group's target's server ID, as
	// NLB writes it: 0x and 16 lowercase hex digits; "" in other groups.
	QUICServerID string
}

// HealthCheck configures the active checks of a target group.
type HealthCheck struct {
	Protocol           HealthProtocol
	Port               uint16 // 0 means the target's traffic port
	Path               string // HTTP and HTTPS only
	Interval           time.Duration
	Timeout            time.Duration
	HealthyThreshold   int
	UnhealthyThreshold int
	Matcher            []StatusRange // HTTP and HTTPS only
	// SendProxyLocal makes checks open with a PROXY v2 LOCAL header; it is
	// set from the group's proxy_protocol_v2.enabled, not written in YAML.
	SendProxyLocal bool
}

// StatusRange is an inclusive range of HTTP status codes.
type StatusRange struct{ Lo, Hi int }

// Attributes are NLB's target group attributes, parsed. Zero in an "off"-able
// count or percentage means off.
type Attributes struct {
	DeregistrationDelay                  time.Duration
	DeregistrationConnectionTermination  bool
	PreserveClientIP                     bool
	ProxyProtocolV2                      bool
	Stickiness                           bool
	StickinessType                       string
	CrossZone                            CrossZoneMode
	UnhealthyConnectionTermination       bool
	UnhealthyDrainingInterval            time.Duration
	UnhealthyRoutingMinHealthyCount      int
	UnhealthyRoutingMinHealthyPercentage int
	DNSFailoverMinHealthyCount           int
	DNSFailoverMinHealthyPercentage      int
}

// CrossZoneEnabled resolves the group's cross-zone attribute against the load
// balancer's setting.
func (g *TargetGroup) CrossZoneEnabled(lb bool) bool {
	switch g.Attributes.CrossZone {
	case CrossZoneOn:
		return true
	case CrossZoneOff:
		return false
	}
	return lb
}

// TargetGroup returns the group named name, or nil.
func (c *Config) TargetGroup(name string) *TargetGroup {
	for i := range c.TargetGroups {
		if c.TargetGroups[i].Name == name {
			return &c.TargetGroups[i]
		}
	}
	return nil
}
