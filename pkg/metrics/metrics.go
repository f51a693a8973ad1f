// Package metrics holds every l4lb Prometheus collector in one struct,
// registered on a registry the caller passes in (never the global one):
//
//	reg := prometheus.NewRegistry()
//	m := metrics.New(reg)
//	m.NewFlows.WithLabelValues("web", "TCP", "a").Inc()
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
)

// Metrics is the set of l4lb collectors (SPEC §6).
type Metrics struct {
	ActiveFlows           *prometheus.GaugeVec
	NewFlows              *prometheus.CounterVec
	ProcessedBytes        *prometheus.CounterVec
	ProcessedPackets      *prometheus.CounterVec
	HealthyTargets        *prometheus.GaugeVec
	UnhealthyTargets      *prometheus.GaugeVec
	TCPClientResets       *prometheus.CounterVec
	TCPTargetResets       *prometheus.CounterVec
	TCPLBResets           *prometheus.CounterVec
	ClientTLSErrors       *prometheus.CounterVec
	TargetTLSErrors       *prometheus.CounterVec
	PortAllocationErrors  *prometheus.CounterVec
	UnhealthyRoutingFlows *prometheus.CounterVec
	TargetConnectErrors   *prometheus.CounterVec
	RejectedFlows         *prometheus.CounterVec
	HealthChecks          *prometheus.CounterVec
	FlowTableEntries      *prometheus.GaugeVec
}

// New creates the collectors and registers them on reg (when reg is not nil).
func New(reg prometheus.Registerer) *Metrics {
	lpz := []string{LabelListener, LabelProtocol, LabelZone}
	tgt := []string{LabelTargetGroup, LabelTarget}
	m := &Metrics{
		ActiveFlows:           gauge("active_flows", "Flows open now.", lpz...),
		NewFlows:              counter("new_flows_total", "Flows accepted.", lpz...),
		ProcessedBytes:        counter("processed_bytes_total", "Bytes moved, by direction (in = client to target).", append(lpz, LabelDirection)...),
		ProcessedPackets:      counter("processed_packets_total", "Datagrams moved (UDP), by direction.", append(lpz, LabelDirection)...),
		HealthyTargets:        gauge("healthy_targets", "Targets in state healthy.", LabelTargetGroup, LabelZone),
		UnhealthyTargets:      gauge("unhealthy_targets", "Targets in state unhealthy.", LabelTargetGroup, LabelZone),
		TCPClientResets:       counter("tcp_client_resets_total", "Resets sent by clients.", lpz...),
		TCPTargetResets:       counter("tcp_target_resets_total", "Resets sent by targets.", tgt...),
		TCPLBResets:           counter("tcp_lb_resets_total", "Resets sent by l4lb (idle timeout, no target, termination).", lpz...),
		ClientTLSErrors:       counter("client_tls_negotiation_errors_total", "Failed TLS handshakes with clients.", lpz...),
		TargetTLSErrors:       counter("target_tls_negotiation_errors_total", "Failed TLS handshakes with targets.", tgt...),
		PortAllocationErrors:  counter("port_allocation_errors_total", "Source ports exhausted dialing targets.", tgt...),
		UnhealthyRoutingFlows: counter("unhealthy_routing_flows_total", "Flows routed fail-open to unhealthy targets.", LabelTargetGroup),
		TargetConnectErrors:   counter("target_connect_errors_total", "Refused or timed-out connects to targets.", tgt...),
		RejectedFlows:         counter("rejected_flows_total", "Flows refused, by reason.", append(lpz, LabelReason)...),
		HealthChecks:          counter("health_checks_total", "Health checks, by result.", append(tgt, LabelResult)...),
		FlowTableEntries:      gauge("flow_table_entries", "Entries in the UDP flow table.", LabelListener),
	}
	if reg != nil {
		for _, c := range m.collectors() {
			reg.MustRegister(c)
		}
	}
	return m
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.ActiveFlows, m.NewFlows, m.ProcessedBytes, m.ProcessedPackets, m.HealthyTargets,
		m.UnhealthyTargets, m.TCPClientResets, m.TCPTargetResets, m.TCPLBResets, m.ClientTLSErrors,
		m.TargetTLSErrors, m.PortAllocationErrors, m.UnhealthyRoutingFlows, m.TargetConnectErrors,
		m.RejectedFlows, m.HealthChecks, m.FlowTableEntries,
	}
}

func counter(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "l4lb", Name: name, Help: help}, labels)
}

func gauge(name, help string, labels ...string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "l4lb", Name: name, Help: help}, labels)
}

// Counter returns the labelled child of c, or a no-op counter when m is nil, so
// the data path can resolve its counters once and never check for nil again.
func (m *Metrics) Counter(c func(*Metrics) *prometheus.CounterVec, labels ...string) prometheus.Counter {
	if m == nil {
		return noop{}
	}
	return c(m).WithLabelValues(labels...)
}

// Gauge is Counter for gauges.
func (m *Metrics) Gauge(g func(*Metrics) *prometheus.GaugeVec, labels ...string) prometheus.Gauge {
	if m == nil {
		return noop{}
	}
	return g(m).WithLabelValues(labels...)
}

// noop is the counter and gauge of a nil *Metrics.
type noop struct{ prometheus.Gauge }

func (noop) Inc()              {}
func (noop) Dec()              {}
func (noop) Add(float64)       {}
func (noop) Sub(float64)       {}
func (noop) Set(float64)       {}
func (noop) SetToCurrentTime() {}
