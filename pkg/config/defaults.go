package config

import "time"

// NLB's defaults, in one place. Normalize fills every absent field from these.
const (
	DefaultAdminListen         = "127.0.0.1:9900"
	DefaultShutdownTimeout     = 30 * time.Second
	DefaultConnectTimeout      = 3 * time.Second // one connect to a target, before the next is tried
	DefaultMaxFlows            = 65536
	DefaultIdleTimeout         = 350 * time.Second
	DefaultUDPIdleTimeout      = 120 * time.Second
	DefaultHealthInterval      = 30 * time.Second
	DefaultHealthTimeoutTCP    = 10 * time.Second
	DefaultHealthTimeoutHTTP   = 6 * time.Second
	DefaultHealthyThreshold    = 5
	DefaultUnhealthyThreshold  = 2
	DefaultHealthPath          = "/"
	DefaultMatcher             = "200-399"
	DefaultSecurityPolicy      = "ELBSecurityPolicy-TLS13-1-2-2021-06"
	DefaultDeregistrationDelay = 300 * time.Second
	DefaultTargetWeight        = 1
	DefaultTargetGroupName     = "default"
	DefaultMinHealthyCount     = 1
	MaxTargetWeight            = 1000
	DefaultBGPPort             = 179
	DefaultBPFFS               = "/sys/fs/bpf/l4lb" // the kernel paths' pins, a directory per instance
	DefaultBGPHoldTime         = 90 * time.Second
	DefaultBGPWithdrawGrace    = 5 * time.Second
	DefaultBFDInterval         = 300 * time.Millisecond
	DefaultBFDMultiplier       = 3
	DefaultGUEPort             = 6080 // dsr's UDP port for encapsulation: gue
	maxDuration                = 7 * 24 * time.Hour
	maxDeregistrationDelaySecs = 3600
	maxDrainingIntervalSecs    = 360000
)

// Attribute keys, verbatim from NLB.
const (
	AttrDeregistrationDelay           = "deregistration_delay.timeout_seconds"
	AttrDeregistrationTermination     = "deregistration_delay.connection_termination.enabled"
	AttrPreserveClientIP              = "preserve_client_ip.enabled"
	AttrProxyProtocolV2               = "proxy_protocol_v2.enabled"
	AttrStickiness                    = "stickiness.enabled"
	AttrStickinessType                = "stickiness.type"
	AttrCrossZone                     = "load_balancing.cross_zone.enabled"
	AttrUnhealthyTermination          = "target_health_state.unhealthy.connection_termination.enabled"
	AttrUnhealthyDrainingInterval     = "target_health_state.unhealthy.draining_interval_seconds"
	AttrUnhealthyRoutingMinCount      = "target_group_health.unhealthy_state_routing.minimum_healthy_targets.count"
	AttrUnhealthyRoutingMinPercentage = "target_group_health.unhealthy_state_routing.minimum_healthy_targets.percentage"
	AttrDNSFailoverMinCount           = "target_group_health.dns_failover.minimum_healthy_targets.count"
	AttrDNSFailoverMinPercentage      = "target_group_health.dns_failover.minimum_healthy_targets.percentage"
)

// defaultAttributes are the values of attributes a target group does not set.
var defaultAttributes = map[string]string{
	AttrDeregistrationDelay:           "300",
	AttrDeregistrationTermination:     "false",
	AttrPreserveClientIP:              "false",
	AttrProxyProtocolV2:               "false",
	AttrStickiness:                    "false",
	AttrStickinessType:                "source_ip",
	AttrCrossZone:                     "use_load_balancer_configuration",
	AttrUnhealthyTermination:          "true",
	AttrUnhealthyDrainingInterval:     "0",
	AttrUnhealthyRoutingMinCount:      "1",
	AttrUnhealthyRoutingMinPercentage: "off",
	AttrDNSFailoverMinCount:           "off",
	AttrDNSFailoverMinPercentage:      "off",
}
