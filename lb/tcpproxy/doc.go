// Package tcpproxy is l4lb's TCP data plane: per-core SO_REUSEPORT listeners
// served by per-core event loops, which carry plain TCP flows from accept to
// close without a goroutine per flow (evloop_linux.go, evflow_linux.go).
// Flows that must read before they are routed, or that speak TLS, run on
// goroutines: a connection's setup as a sequence of admission steps (PROXY
// header, ACL, per-source limit, SNI, connect with retries), and the
// zero-copy copy of its two directions (splice(2) for bulk, a pooled buffer
// for small messages, and parking of idle directions without a goroutine).
//
//	s, err := tcpproxy.New(cfg, reg, tcpproxy.Options{Logger: log, Metrics: m})
//	reg.Subscribe(s) // told which flows to end
//	err = s.Start()
//	...
//	err = s.Shutdown(ctx) // stop accepting, drain until ctx ends, reset the rest
//
// It is about 4 200 lines, past the project's 1 500: both kinds of flow
// share the listeners, their generations across reloads, the tracker that
// drains and terminates them, and the pools, and each kind's lifecycle (who
// may touch a flow, and when it may be reused) is clearest beside the
// other's.
//
// The package is built on Linux only: on other systems it is empty, so that
// the commands that only read a config or talk to the admin API build there.
package tcpproxy
