// Package tcpproxy is l4lb's TCP data plane: per-core SO_REUSEPORT listeners,
// a connection's setup as a sequence of admission steps (PROXY header, ACL,
// per-source limit, SNI, connect with retries), and the zero-copy copy of
// its two directions (splice(2) for bulk, a pooled buffer for small
// messages, and parking of idle directions without a goroutine).
//
//	s, err := tcpproxy.New(cfg, reg, tcpproxy.Options{Logger: log, Metrics: m})
//	reg.Subscribe(s) // told which flows to end
//	err = s.Start()
//	...
//	err = s.Shutdown(ctx) // stop accepting, drain until ctx ends, reset the rest
//
// It is about 1 800 lines, past the project's 1 500: the flow, its two
// directions, the parker and the tracker share the pooled flow's lifecycle
// (who may touch a flow, and when it may be reused), which is clearest in
// one package.
//
// The package is built on Linux only: on other systems it is empty, so that
// the commands that only read a config or talk to the admin API build there.
package tcpproxy
