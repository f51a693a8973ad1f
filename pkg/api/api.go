// Package api holds the JSON types of the admin API, shared by the server side
// (lb fills them, pkg/admin serves them) and the CLI client.
package api

import (
	"errors"
	"time"
)

// Target states, as NLB names them.
const (
	StateInitial           = "initial"
	StateHealthy           = "healthy"
	StateUnhealthy         = "unhealthy"
	StateUnhealthyDraining = "unhealthy.draining"
	StateDraining          = "draining"
	StateUnused            = "unused"
)

// Reason codes, as NLB names them.
const (
	ReasonRegistrationInProgress   = "Elb.RegistrationInProgress"
	ReasonInitialHealthChecking    = "Elb.InitialHealthChecking"
	ReasonResponseCodeMismatch     = "Target.ResponseCodeMismatch"
	ReasonTimeout                  = "Target.Timeout"
	ReasonFailedHealthChecks       = "Target.FailedHealthChecks"
	ReasonDeregistrationInProgress = "Target.DeregistrationInProgress"
	ReasonNotInUse                 = "Target.NotInUse"
)

// Errors the registry returns; the admin API maps them to status codes.
var (
	ErrNotFound = errors.New("not found") // 404
	ErrInvalid  = errors.New("invalid")   // 400
	ErrConflict = errors.New("conflict")  // 409
)

// TargetHealth is one row of describe-target-health.
type TargetHealth struct {
	Address     string `json:"address"`
	Zone        string `json:"zone,omitempty"`
	Weight      int    `json:"weight"`
	State       string `json:"state"`
	Reason      string `json:"reason,omitempty"`
	Description string `json:"description,omitempty"`
	ActiveFlows int64  `json:"active_flows"`
	LeaseID     int64  `json:"lease_id,omitempty"` // a registration with a lease: pass it back to renew it
	// QUICServerID is a QUIC or TCP_QUIC group's target's server ID.
	QUICServerID string `json:"quic_server_id,omitempty"`
}

// TargetGroupInfo is what a target group is, apart from its targets.
type TargetGroupInfo struct {
	Name      string   `json:"name"`
	Protocol  string   `json:"protocol"`
	Port      int      `json:"port,omitempty"`
	FailOpen  bool     `json:"fail_open"` // routing to all targets: too few are healthy
	Listeners []string `json:"listeners,omitempty"`
}

// TargetGroup is a group with its targets.
type TargetGroup struct {
	TargetGroupInfo
	Targets []TargetHealth `json:"targets"`
}

// RegisterRequest is the body of POST /v1/target-groups/{name}/targets.
type RegisterRequest struct {
	Address string `json:"address"`
	Zone    string `json:"zone,omitempty"`
	Weight  int    `json:"weight,omitempty"`
	// LeaseSeconds (registry backend etcd) ties the registration to an
	// etcd lease of this many seconds: it lives while the caller registers
	// again within that time (passing LeaseID back), and is deregistered,
	// on every node, when it lapses.
	LeaseSeconds int   `json:"lease_seconds,omitempty"`
	LeaseID      int64 `json:"lease_id,omitempty"`
	// QUICServerID is required in QUIC and TCP_QUIC groups, and refused in
	// others: 0x and 16 lowercase hex digits, unique in the group, and
	// fixed while the target is registered.
	QUICServerID string `json:"quic_server_id,omitempty"`
}

// Route says which target a flow would get, and why.
type Route struct {
	Listener    string   `json:"listener"`
	Protocol    string   `json:"protocol"`
	Source      string   `json:"source"`
	Destination string   `json:"destination"`
	Zone        string   `json:"zone,omitempty"`
	TargetGroup string   `json:"target_group"`
	Target      string   `json:"target"`
	Preference  []string `json:"preference"` // the target, then the retry order
	Key         string   `json:"key"`        // "5-tuple" or "source_ip"
	Hash        string   `json:"hash"`
	FailOpen    bool     `json:"fail_open"`
	Why         string   `json:"why"`
	// AppliedRevision is the etcd revision of the registrations the answer
	// comes from (registry backend etcd): nodes at one revision, with
	// the same health, answer alike.
	AppliedRevision int64 `json:"applied_revision,omitempty"`
}

// Flow is one active flow.
type Flow struct {
	Listener    string `json:"listener"`
	Protocol    string `json:"protocol"`
	Client      string `json:"client"`
	Target      string `json:"target"`
	TargetGroup string `json:"target_group"`
	// Path is what carries the flow on this node: socket (l4lb's own
	// sockets), kernel (the kernel path, by NAT) or dsr (the kernel path,
	// by direct server return: replies do not come back through).
	Path string `json:"path"`
	// AgeSeconds is how long the flow has been open; the kernel keeps no
	// start time, so kernel and dsr flows leave it out.
	AgeSeconds float64 `json:"age_seconds,omitempty"`
	// IdleSeconds is how long since the client last sent (kernel and dsr
	// flows).
	IdleSeconds float64 `json:"idle_seconds,omitempty"`
}

// ZoneHealth answers GET /v1/zones/{zone}/health.
type ZoneHealth struct {
	Zone      string            `json:"zone"`
	Healthy   bool              `json:"healthy"`
	Listeners map[string]string `json:"listeners"` // listener -> "ok" or why not
	// ZonalShift is the shift that takes the zone out of service, if one
	// is in force: the zone is then unhealthy, whatever its targets.
	ZonalShift *ZonalShift `json:"zonal_shift,omitempty"`
}

// Event is one thing that happened to a running l4lb (GET /v1/events): a
// target's state changed, a drain began or ended, a group failed open, a
// reload, an upgrade, a BGP session or route, flow-table pressure, a zonal
// shift.
type Event struct {
	Seq    uint64    `json:"seq"` // 1, 2, ... in order; ?since= takes one
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"`
	Object string    `json:"object"`
	Detail string    `json:"detail,omitempty"`
}

// ZonalShift is a zone taken out of service until Expires (NLB's
// start-zonal-shift).
type ZonalShift struct {
	Zone    string    `json:"zone"`
	Started time.Time `json:"started"`
	Expires time.Time `json:"expires"`
}

// ZoneShiftRequest is the body of POST /v1/zones/{zone}/shift.
type ZoneShiftRequest struct {
	ExpiresIn string `json:"expires_in"` // a duration, 1m to 72h: "1h"
}

// Zone is one zone of GET /v1/zones: its addresses, its health, and its
// zonal shift, if one is in force.
type Zone struct {
	Name       string      `json:"name"`
	IPs        []string    `json:"ips"`
	Healthy    bool        `json:"healthy"`
	ZonalShift *ZonalShift `json:"zonal_shift,omitempty"`
}

// Config describes the configuration a running l4lb serves: the SHA-256 of
// the file it was read from (of the flags alone when there is no file) and
// when it was loaded. POST /v1/reload answers with it.
type Config struct {
	Path     string    `json:"path,omitempty"`
	SHA256   string    `json:"sha256"`
	LoadedAt time.Time `json:"loaded_at"`
	PID      int       `json:"pid"`
	Version  string    `json:"version,omitempty"` // of the binary that runs it
}

// Cluster is GET /v1/cluster: where this node's registrations live.
type Cluster struct {
	Backend          string     `json:"backend"` // file or etcd
	Prefix           string     `json:"prefix,omitempty"`
	AppliedRevision  int64      `json:"applied_revision,omitempty"` // etcd: the revision this node applied
	Connected        bool       `json:"connected"`                  // etcd: the watch runs
	UnreachableSince *time.Time `json:"unreachable_since,omitempty"`
	TableHash        string     `json:"table_hash"` // equal on nodes that pick the same targets
	// Nodes are the admin addresses of the cluster's nodes, as recorded in
	// etcd (etcd backend).
	Nodes []string `json:"nodes,omitempty"`
	// Targets and Healthy count this node's targets, over every group.
	Targets int `json:"targets"`
	Healthy int `json:"healthy"`
}

// Upgrade is the answer to POST /v1/upgrade: the new process serves.
type Upgrade struct {
	OldPID int `json:"old_pid"`
	NewPID int `json:"new_pid"`
}

// Error is the body of every error response. A refused config lists one
// "path.to.field: problem" line per error in Errors.
type Error struct {
	Error  string   `json:"error"`
	Errors []string `json:"errors,omitempty"`
}

// BGPStatus answers GET /v1/bgp: the embedded speaker's sessions and the
// routes it announces.
type BGPStatus struct {
	LocalAS  uint32 `json:"local_as"`
	RouterID string `json:"router_id"`
	// Leaving is set once the node withdrew everything to leave (SIGTERM,
	// or an upgrade handing over).
	Leaving bool       `json:"leaving"`
	Peers   []BGPPeer  `json:"peers"`
	Routes  []BGPRoute `json:"routes"`
	// BFDDropped counts the BFD packets no session took, by why:
	// malformed, or no_session (an unknown discriminator or source).
	BFDDropped map[string]uint64 `json:"bfd_dropped,omitempty"`
	// RejectedConnections counts BGP connections from addresses that are
	// no configured peer.
	RejectedConnections uint64 `json:"rejected_connections,omitempty"`
}

// BGPPeer is one BGP session.
type BGPPeer struct {
	Address string `json:"address"`
	AS      uint32 `json:"as"`
	// State is the session's FSM state: idle, connect, active, opensent,
	// openconfirm or established.
	State    string    `json:"state"`
	Since    time.Time `json:"since,omitzero"` // established since, or down since
	HoldTime int       `json:"hold_time_seconds,omitempty"`
	// BFD is the BFD session beside this one, if the peer runs BFD.
	BFD *BFDSession `json:"bfd,omitempty"`
}

// BFDSession is a BFD session (RFC 5880, single hop) with a BGP peer.
type BFDSession struct {
	// State and RemoteState: admin-down, down, init or up.
	State       string    `json:"state"`
	RemoteState string    `json:"remote_state"`
	Diagnostic  string    `json:"diagnostic,omitempty"` // why it last changed state
	Since       time.Time `json:"since"`
	// TxIntervalMS is the agreed time between packets sent; DetectTimeMS
	// how long the peer may stay silent before the session goes down.
	TxIntervalMS float64 `json:"tx_interval_ms"`
	DetectTimeMS float64 `json:"detect_time_ms"`
	Multihop     bool    `json:"multihop,omitempty"` // RFC 5883, port 4784
	// Authentication is none, keyed_sha1 or meticulous_keyed_sha1.
	Authentication string `json:"authentication,omitempty"`
	// Packets are the control packets received for the session, by
	// result: accepted, or dropped for ttl or auth.
	Packets map[string]uint64 `json:"packets,omitempty"`
}

// BGPRoute is one prefix a zone announces, and whether it is announced now.
type BGPRoute struct {
	Zone        string   `json:"zone"`
	Prefix      string   `json:"prefix"`
	Communities []string `json:"communities,omitempty"`
	Announced   bool     `json:"announced"`
	Why         string   `json:"why"` // "zone healthy", or why it is withdrawn
}
