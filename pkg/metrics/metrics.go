// Package metrics holds every l4lb Prometheus collector, declared in one
// table and registered on a registry the caller passes in (never the global
// one):
//
//	reg := prometheus.NewRegistry()
//	m := metrics.New(reg)
//	flows := m.Counter(metrics.NewFlows, "web", "TCP", "a") // resolved once
//	flows.Inc()                                               // on the data path
//
// A nil *Metrics is valid: every method on it does nothing, so tests and tools
// that do not care about metrics pass nil.
package metrics

import "github.com/prometheus/client_golang/prometheus"

// Label names, shared by every collector.
const (
	LabelListener    = "listener"
	LabelProtocol    = "protocol"
	LabelZone        = "zone"
	LabelTargetGroup = "target_group"
	LabelTarget      = "target"
	LabelReason      = "reason"
	LabelResult      = "result"
	LabelDirection   = "direction"
	LabelPeer        = "peer"
)

// ID names one collector of the table.
type ID int

// The collectors (docs/reference.md, "Metrics").
const (
	ActiveFlows ID = iota
	NewFlows
	ProcessedBytes
	ProcessedPackets
	HealthyTargets
	UnhealthyTargets
	TCPClientResets
	TCPTargetResets
	TCPLBResets
	ClientTLSErrors
	TargetTLSErrors
	PortAllocationErrors
	UnhealthyRoutingFlows
	TargetConnectErrors
	RejectedFlows
	HealthChecks
	FlowTableEntries
	FlowEvictions
	UDPReceiveDrops
	UDPSocketDatagrams
	TLSHandshakes
	ConfigReloads
	ConfigLastReloadSuccess
	ConfigInfo
	Upgrades
	BGPSessionUp
	BGPAnnouncedRoutes
	RegistryAppliedRevision
	RegistryEtcdUp
	BFDSessionUp
	BFDPackets
	BGPRejectedConnections
	QUICPackets
	QUICMigrations
	ZonalShiftActive
	TLSCertificateNotAfter
	TargetNewFlows
	TargetProcessedBytes
	HealthCheckLastDuration
	numIDs
)

type kind uint8

const (
	counter kind = iota
	gauge
)

var (
	lpz    = []string{LabelListener, LabelProtocol, LabelZone}
	target = []string{LabelTargetGroup, LabelTarget}
)

// table is every collector: its name (after the l4lb_ prefix), kind, help and
// labels. Collectors labelled by target group and target are per-target: a
// target's series exist from its registration (at 0) to its removal.
var table = [numIDs]struct {
	name   string
	kind   kind
	help   string
	labels []string
}{
	ActiveFlows:             {"active_flows", gauge, "Flows open now.", lpz},
	NewFlows:                {"new_flows_total", counter, "Flows accepted.", lpz},
	ProcessedBytes:          {"processed_bytes_total", counter, "Bytes moved, by direction (in = client to target).", with(lpz, LabelDirection)},
	ProcessedPackets:        {"processed_packets_total", counter, "Packets moved: UDP datagrams, and TCP segments on the kernel fast path, by direction.", with(lpz, LabelDirection)},
	HealthyTargets:          {"healthy_targets", gauge, "Targets in state healthy, by zone (\"\" for targets outside every zone).", []string{LabelTargetGroup, LabelZone}},
	UnhealthyTargets:        {"unhealthy_targets", gauge, "Targets in state unhealthy or unhealthy.draining, by zone.", []string{LabelTargetGroup, LabelZone}},
	TCPClientResets:         {"tcp_client_resets_total", counter, "Flows ended by an error on the client's side (a reset, a broken pipe).", lpz},
	TCPTargetResets:         {"tcp_target_resets_total", counter, "Flows ended by an error on the target's side (a reset, a broken pipe).", target},
	TCPLBResets:             {"tcp_lb_resets_total", counter, "Resets sent by l4lb (idle timeout, no target, termination).", lpz},
	ClientTLSErrors:         {"client_tls_negotiation_errors_total", counter, "Failed TLS handshakes with clients.", lpz},
	TargetTLSErrors:         {"target_tls_negotiation_errors_total", counter, "Failed TLS handshakes with targets.", target},
	PortAllocationErrors:    {"port_allocation_errors_total", counter, "Source ports exhausted dialing targets.", target},
	UnhealthyRoutingFlows:   {"unhealthy_routing_flows_total", counter, "Flows routed fail-open to unhealthy targets.", []string{LabelTargetGroup}},
	TargetConnectErrors:     {"target_connect_errors_total", counter, "Refused or timed-out connects to targets (never l4lb's own lack of descriptors or ports).", target},
	RejectedFlows:           {"rejected_flows_total", counter, "Flows refused, by reason.", with(lpz, LabelReason)},
	HealthChecks:            {"health_checks_total", counter, "Health checks, by result.", with(target, LabelResult)},
	FlowTableEntries:        {"flow_table_entries", gauge, "Entries in the UDP flow table.", []string{LabelListener}},
	FlowEvictions:           {"flow_evictions_total", counter, "Flows evicted from a full table to make room (UDP, and TCP on the kernel fast path), by reason.", []string{LabelListener, LabelReason}},
	UDPReceiveDrops:         {"udp_receive_drops_total", counter, "Datagrams the kernel dropped because a listener socket's receive queue was full (SO_RXQ_OVFL).", lpz},
	UDPSocketDatagrams:      {"udp_socket_datagrams_total", counter, "Client datagrams a UDP listener's sockets read in user space; on the kernel fast path, only those its programs pass up (none, normally).", lpz},
	TLSHandshakes:           {"tls_handshakes_total", counter, "Completed TLS handshakes with clients, by protocol version and whether the session was resumed.", []string{LabelListener, "version", "resumed"}},
	ConfigReloads:           {"config_reloads_total", counter, "Config reloads, by result (success, refused: a bad file, failed: could not be applied).", []string{LabelResult}},
	ConfigLastReloadSuccess: {"config_last_reload_success_timestamp_seconds", gauge, "When the running config was loaded (start, reload or upgrade), in Unix seconds.", nil},
	ConfigInfo:              {"config_info", gauge, "1, labelled with the SHA-256 of the running config file.", []string{"sha256"}},
	Upgrades:                {"upgrades_total", counter, "Binary upgrades this process started, by result (success, failed).", []string{LabelResult}},
	BGPSessionUp:            {"bgp_session_up", gauge, "1 while the BGP session to the peer is established, else 0.", []string{LabelPeer}},
	BFDSessionUp:            {"bfd_session_up", gauge, "1 while the BFD session with the BGP peer is up, else 0.", []string{LabelPeer}},
	BFDPackets:              {"bfd_packets_total", counter, "BFD control packets received, by result (accepted, malformed, no_session, ttl, auth); peer is empty for those no session took.", []string{LabelPeer, LabelResult}},
	BGPRejectedConnections:  {"bgp_rejected_connections_total", counter, "BGP connections refused because their source is no configured peer.", nil},
	BGPAnnouncedRoutes:      {"bgp_announced_routes", gauge, "Prefixes the BGP speaker announces now (its zones are healthy and the node is not leaving).", nil},
	RegistryAppliedRevision: {"registry_applied_revision", gauge, "registry.backend etcd: the etcd revision of the registrations this node applied (equal on nodes in step).", nil},
	QUICPackets:             {"quic_packets_total", counter, "QUIC listeners' new flows, by how their first datagram was routed: cid (the server ID in the destination connection ID), hash (the flow hash: Initial and 0-RTT), unknown_cid (an ID of no target, or unroutable: the flow hash); and datagrams dropped: bad_version, short.", []string{LabelListener, "route"}},
	QUICMigrations:          {"quic_migrations_total", counter, "QUIC connections seen from a new client address or port, and kept on their target by connection ID.", []string{LabelListener}},
	TLSCertificateNotAfter:  {"tls_certificate_not_after_seconds", gauge, "When a TLS listener's certificate expires, in Unix seconds (its leaf's NotAfter), by certificate file.", []string{LabelListener, "certificate"}},
	ZonalShiftActive:        {"zonal_shift_active", gauge, "1 while a zonal shift takes the zone out of service (its health is 503, its prefixes withdrawn), else 0.", []string{LabelZone}},
	TargetNewFlows:          {"target_new_flows_total", counter, "Flows the socket paths pinned to the target (the kernel path counts its flows per listener).", target},
	TargetProcessedBytes:    {"target_processed_bytes_total", counter, "Bytes the socket paths moved to and from the target, both directions (TCP: as each flow ends; UDP: as datagrams go).", target},
	HealthCheckLastDuration: {"health_check_last_duration_seconds", gauge, "How long the target's last active health check took, passed or failed.", target},
	RegistryEtcdUp:          {"registry_etcd_up", gauge, "registry.backend etcd: 1 while etcd answers, 0 while the node serves the state it applied last.", nil},
}

// Desc describes one metric, for the reference.
type Desc struct {
	Name, Type, Help string
	Labels           []string
}

// Describe lists every metric l4lb exports, in the table's order.
func Describe() []Desc {
	out := make([]Desc, 0, len(table))
	for _, m := range table {
		typ := "counter"
		if m.kind == gauge {
			typ = "gauge"
		}
		out = append(out, Desc{Name: "l4lb_" + m.name, Type: typ, Help: m.help, Labels: m.labels})
	}
	return out
}

func with(labels []string, more ...string) []string {
	return append(append([]string(nil), labels...), more...)
}

// Metrics is the set of l4lb collectors.
type Metrics struct {
	counters [numIDs]*prometheus.CounterVec
	gauges   [numIDs]*prometheus.GaugeVec
}

// New creates the collectors and registers them on reg (when reg is not nil).
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{}
	for id, d := range table {
		var c prometheus.Collector
		switch d.kind {
		case counter:
			m.counters[id] = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "l4lb", Name: d.name, Help: d.help}, d.labels)
			c = m.counters[id]
		case gauge:
			m.gauges[id] = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "l4lb", Name: d.name, Help: d.help}, d.labels)
			c = m.gauges[id]
		}
		if reg != nil {
			reg.MustRegister(c)
		}
	}
	return m
}

// Counter returns the labelled child of counter id, or a no-op counter when m
// is nil, so the data path resolves its counters once and never checks for
// nil again.
func (m *Metrics) Counter(id ID, labels ...string) prometheus.Counter {
	if m == nil {
		return noop{}
	}
	return m.counters[id].WithLabelValues(labels...)
}

// Gauge is Counter for gauges.
func (m *Metrics) Gauge(id ID, labels ...string) prometheus.Gauge {
	if m == nil {
		return noop{}
	}
	return m.gauges[id].WithLabelValues(labels...)
}

// SetInfo makes labels the only series of info gauge id, at 1 (the running
// config's hash, say: the previous one goes).
func (m *Metrics) SetInfo(id ID, labels ...string) {
	if m == nil {
		return
	}
	m.gauges[id].Reset()
	m.gauges[id].WithLabelValues(labels...).Set(1)
}

// AddTarget creates a target's per-target series at 0, so a dashboard sees
// them from its registration on, not from its first error.
func (m *Metrics) AddTarget(group, tgt string) {
	if m == nil {
		return
	}
	for id, d := range table {
		if !perTarget(d.labels) {
			continue
		}
		switch {
		case ID(id) == HealthChecks:
			m.counters[id].WithLabelValues(group, tgt, "success")
			m.counters[id].WithLabelValues(group, tgt, "failure")
		case len(d.labels) == 2 && d.kind == counter:
			m.counters[id].WithLabelValues(group, tgt)
		}
	}
}

// RemoveTarget deletes every series of a target that left its group, so the
// label sets do not grow with target churn.
func (m *Metrics) RemoveTarget(group, tgt string) {
	if m == nil {
		return
	}
	match := prometheus.Labels{LabelTargetGroup: group, LabelTarget: tgt}
	for id, d := range table {
		if !perTarget(d.labels) {
			continue
		}
		if m.counters[id] != nil {
			m.counters[id].DeletePartialMatch(match)
		}
		if m.gauges[id] != nil {
			m.gauges[id].DeletePartialMatch(match)
		}
	}
}

func perTarget(labels []string) bool {
	return len(labels) >= 2 && labels[0] == LabelTargetGroup && labels[1] == LabelTarget
}

// noop is the counter and gauge of a nil *Metrics.
type noop struct{ prometheus.Gauge }

func (noop) Inc()              {}
func (noop) Dec()              {}
func (noop) Add(float64)       {}
func (noop) Sub(float64)       {}
func (noop) Set(float64)       {}
func (noop) SetToCurrentTime() {}
