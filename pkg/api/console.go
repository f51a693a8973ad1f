package api

import "time"

// Console is GET /v1/console: one snapshot of what the live console shows.
// Rates are per second over the last sampling step (SparkStep); totals are
// the counters since the process started.
type Console struct {
	Time time.Time `json:"time"`
	// Auth says what changes need: "token" (the API has one, and the
	// console sends it), or "none" (the API has no token: the console
	// stays read-only).
	Auth         string            `json:"auth"`
	Config       Config            `json:"config"`
	Cluster      *Cluster          `json:"cluster,omitempty"`
	Listeners    []ListenerState   `json:"listeners"`
	TargetGroups []TargetGroupRate `json:"target_groups"`
	Zones        []Zone            `json:"zones"`
	BGP          *BGPStatus        `json:"bgp,omitempty"`
	Kernel       []KernelCounter   `json:"kernel"`
	Events       []Event           `json:"events"` // the newest, oldest first
	// SparkStep is the seconds between two points of a sparkline.
	SparkStep float64 `json:"spark_step_seconds"`
}

// ListenerAddress is one bound address of a listener.
type ListenerAddress struct {
	Zone    string `json:"zone,omitempty"`
	Address string `json:"address"`
	// Path is what carries its flows: socket (l4lb's process), kernel
	// (the tc programs, NAT) or dsr (the tc programs, direct return).
	Path string `json:"path"`
}

// ListenerInfo is a listener as the config and the data planes have it.
type ListenerInfo struct {
	Name         string            `json:"name"`
	Protocol     string            `json:"protocol"`
	Port         int               `json:"port"`
	TargetGroups []string          `json:"target_groups"`
	Addresses    []ListenerAddress `json:"addresses"`
}

// ListenerState is a listener with its traffic.
type ListenerState struct {
	ListenerInfo
	ActiveFlows  float64            `json:"active_flows"`
	NewFlowsRate float64            `json:"new_flows_per_second"`
	BytesRate    float64            `json:"bytes_per_second"`
	Rejects      map[string]float64 `json:"rejects,omitempty"`           // totals by reason
	Resets       map[string]float64 `json:"resets,omitempty"`            // totals by origin: client, lb
	TLSErrors    float64            `json:"client_tls_errors,omitempty"` // failed client handshakes
	RejectsRate  float64            `json:"rejects_per_second"`
}

// TargetGroupRate is a target group with its targets' traffic.
type TargetGroupRate struct {
	TargetGroupInfo
	Targets []TargetRate `json:"targets"`
}

// TargetRate is a target's health with its traffic. Its rates count the
// socket paths; the kernel path counts per listener.
type TargetRate struct {
	TargetHealth
	NewFlowsRate  float64 `json:"new_flows_per_second"`
	BytesRate     float64 `json:"bytes_per_second"`
	Resets        float64 `json:"resets"`         // flows its side ended with an error
	ConnectErrors float64 `json:"connect_errors"` // refused or timed-out connects
	// CheckSeconds is how long its last active health check took; 0: none
	// yet.
	CheckSeconds float64 `json:"check_seconds,omitempty"`
	// Spark is its new flows per second, oldest first, one point per
	// SparkStep, over the last few minutes.
	Spark []float64 `json:"spark"`
}

// KernelCounter is one of the kernel path's counters, for one listener.
type KernelCounter struct {
	Listener string  `json:"listener"`
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Rate     float64 `json:"per_second"`
}
