// Package lb wires l4lb's data plane together: the target registry
// (lb/registry), the TCP data plane (lb/tcpproxy) and the UDP data plane
// (lb/udpproxy, with the kernel fast path), over the listener and route
// layer they share (lb/listen). It answers the admin API's questions about
// all of them: routes, flows, zone health.
//
//	srv, err := lb.New(cfg, lb.Options{Logger: log, Metrics: m})
//	checks := healthcheck.NewScheduler(srv.Registry, ...)
//	srv.Registry.WatchHealth(checks)
//	if err := srv.Start(); err != nil { ... }
//	...
//	srv.Shutdown(ctx) // stop accepting, drain flows until ctx ends, close the rest
//
// The package is built on Linux only: on other systems it is empty, so that
// the commands that only read a config or talk to the admin API build there.
package lb
