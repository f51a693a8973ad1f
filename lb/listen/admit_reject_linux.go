package listen

import (
	"errors"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/pkg/metrics"
)

// Reason is why a flow was refused: a closed set, and the reason label of
// rejected_flows_total (as Envoy's upstream failure reasons are).
type Reason uint8

const (
	ReasonACL             Reason = iota // the listener's allow/deny lists
	ReasonNoTarget                      // no target took the flow
	ReasonProxyProtocol                 // a malformed header, or one from an untrusted client
	ReasonSourceLimit                   // max_connections_per_source reached
	ReasonTLSHello                      // no ClientHello where SNI rules need one
	ReasonTLSHandshake                  // a TLS listener's handshake failed, timed out or hit its cap
	ReasonLocalResources                // l4lb itself is out of descriptors, ports or memory
	ReasonFlowTableFull                 // the UDP flow table is full
	ReasonDatagramDropped               // a datagram that could not be forwarded
	ReasonTLSBadSNI                     // a ClientHello whose server_name is not a DNS host name
	ReasonTLSHelloTimeout               // no whole ClientHello within the hello timeout
	ReasonTLSBusy                       // the listener's handshakes stayed at their cap for the queue timeout
	ReasonTLSSourceBusy                 // the source's share of handshakes stayed used up for the queue timeout
	ReasonLoop                          // a connection from l4lb's own connect to a target: a forwarding loop
	numReasons
)

var reasonNames = [numReasons]string{
	ReasonACL:             "acl",
	ReasonNoTarget:        "no_target",
	ReasonProxyProtocol:   "proxy_protocol",
	ReasonSourceLimit:     "source_limit",
	ReasonTLSHello:        "tls_hello",
	ReasonTLSHandshake:    "tls_handshake",
	ReasonLocalResources:  "local_resources",
	ReasonFlowTableFull:   "flow_table_full",
	ReasonDatagramDropped: "datagram_dropped",
	ReasonTLSBadSNI:       "tls_bad_sni",
	ReasonTLSHelloTimeout: "tls_hello_timeout",
	ReasonTLSBusy:         "tls_busy",
	ReasonTLSSourceBusy:   "tls_source_busy",
	ReasonLoop:            "loop",
}

func (r Reason) String() string { return reasonNames[r] }

// RejectCounters are a listener's rejected_flows_total series, one per
// reason it can refuse for, resolved once.
type RejectCounters [numReasons]prometheus.Counter

func NewRejectCounters(m *metrics.Metrics, labels []string, reasons ...Reason) *RejectCounters {
	var rc RejectCounters
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

// LocalFailure reports whether err is this host running out of something
// (descriptors, memory, socket buffers, source ports) rather than a target
// failing. Such an error is never counted against a target nor fed to
// passive health: under a descriptor flood, healthy targets must stay
// healthy and keep their flows.
func LocalFailure(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.EADDRNOTAVAIL)
}

// OutOfPorts reports whether err says no source port was left towards the
// target (port_allocation_errors_total).
func OutOfPorts(err error) bool {
	return errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EAGAIN)
}
