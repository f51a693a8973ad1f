package lb

import (
	"errors"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/pkg/metrics"
)

// reason is why a flow was refused: a closed set, and the reason label of
// rejected_flows_total (as Envoy's upstream failure reasons are).
type reason uint8

const (
	reasonACL             reason = iota // the listener's allow/deny lists
	reasonNoTarget                      // no target took the flow
	reasonProxyProtocol                 // a malformed header, or one from an untrusted client
	reasonSourceLimit                   // max_connections_per_source reached
	reasonTLSHello                      // no ClientHello where SNI rules need one
	reasonLocalResources                // l4lb itself is out of descriptors, ports or memory
	reasonFlowTableFull                 // the UDP flow table is full
	reasonDatagramDropped               // a datagram that could not be forwarded
	numReasons
)

var reasonNames = [numReasons]string{
	reasonACL:             "acl",
	reasonNoTarget:        "no_target",
	reasonProxyProtocol:   "proxy_protocol",
	reasonSourceLimit:     "source_limit",
	reasonTLSHello:        "tls_hello",
	reasonLocalResources:  "local_resources",
	reasonFlowTableFull:   "flow_table_full",
	reasonDatagramDropped: "datagram_dropped",
}

func (r reason) String() string { return reasonNames[r] }

// rejectCounters are a listener's rejected_flows_total series, one per
// reason it can refuse for, resolved once.
type rejectCounters [numReasons]prometheus.Counter

func newRejectCounters(m *metrics.Metrics, labels []string, reasons ...reason) *rejectCounters {
	var rc rejectCounters
	for i := range rc {
		rc[i] = noCount{}
	}
	for _, r := range reasons {
		rc[r] = m.Counter(metrics.RejectedFlows, append(append([]string(nil), labels...), r.String())...)
	}
	return &rc
}

// noCount stands for the reasons a listener never refuses for.
type noCount struct{ prometheus.Counter }

func (noCount) Inc()        {}
func (noCount) Add(float64) {}

// localFailure reports whether err is this host running out of something
// (descriptors, memory, socket buffers, source ports) rather than a target
// failing. Such an error is never counted against a target nor fed to
// passive health: under a descriptor flood, healthy targets must stay
// healthy and keep their flows.
func localFailure(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.EADDRNOTAVAIL)
}

// outOfPorts reports whether err says no source port was left towards the
// target (port_allocation_errors_total).
func outOfPorts(err error) bool {
	return errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EAGAIN)
}
