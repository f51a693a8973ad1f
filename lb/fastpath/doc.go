// Package fastpath forwards UDP and TCP flows inside the kernel. A tc
// ingress program (tcx) rewrites the destination of a client's packets to
// the flow's target before routing, and an egress program rewrites the
// source of the target's replies back to the listener address after
// routing, so a packet costs l4lb no system call at all. One C source
// serves both protocols; each protocol loads it as a Path of its own, with
// its own maps (Options.Protocol).
//
// It is the kernel half of a listener whose target group preserves the
// client IP (the target sees the client's own address, as it would with
// preserve_client_ip in user space) and sends no PROXY header. The
// user-space listener stays bound and takes whatever the program passes on:
// fragments, IPv4 options, IPv6 extension headers, and TCP resets of no
// known flow. IPv4 and IPv6 each have their own maps.
//
// A first packet (for TCP, a SYN) picks its target exactly as user space
// does (same flow hash, same Maglev table, which user space writes into the
// kernel on every change), and the flow is then pinned in a bounded LRU flow
// map: when it is full, the kernel evicts the least recently used flows, and
// l4lb counts them. TCP flows start in a map of their own until the client
// completes the handshake, so a SYN flood evicts only incomplete
// handshakes; FIN both ways or a RST closes a flow, which lingers briefly.
// A TCP segment of no known flow that is not a SYN began on another l4lb
// node (the routers moved it): it goes to the target the Maglev table
// names, as it would on every node, and its flow is entered as
// established.
// Flows idle past their listener's timeout are swept from user space.
//
//	p, err := fastpath.New(fastpath.Options{MaxFlows: 65536, Services: 4})
//	id, err := p.AddService(vip, 120*time.Second, false)
//	err = p.SetTable(id, slots) // one target per Maglev slot
//	err = p.Attach("lo")
//
// The package is built on Linux only: on other systems it is empty, so that
// the commands that only read a config or talk to the admin API build there.
package fastpath
