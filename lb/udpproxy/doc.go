// Package udpproxy is l4lb's UDP data plane: per-core SO_REUSEPORT listener
// sockets read in batches (recvmmsg), one connected upstream socket per flow
// in a bounded flow table, replies sent back in batches (sendmmsg) from the
// address the client sent to, and the orchestration of the kernel fast path
// (lb/fastpath) for the listeners that qualify.
//
//	s, err := udpproxy.New(cfg, reg, udpproxy.Options{Logger: log, Metrics: m})
//	reg.Subscribe(s) // snapshot changes (kernel tables), flows to end
//	err = s.Start()
//	...
//	s.Close() // UDP has no connections to drain: flows end with it
//
// The package is built on Linux only: on other systems it is empty, so that
// the commands that only read a config or talk to the admin API build there.
package udpproxy
