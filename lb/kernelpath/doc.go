// Package kernelpath keeps the kernel fast paths (lb/fastpath) in step with
// l4lb: a Forwarder writes each listener's Maglev table into the kernel
// whenever its target group's snapshot changes, carries the kernel's
// counters and flow counts into the listeners' metrics and the targets'
// flow counts, sweeps idle flows, ends the flows of targets that leave,
// and (TCP) feeds targets' resets into passive health. For direct server
// return it installs the nftables guard that keeps a node whose programs
// died from resetting flows it no longer carries.
//
// lb/fastpath is the mechanism (programs, maps, pins, typed accessors) and
// knows nothing of the registry, metrics or logs; this package is the
// policy that joins them.
//
// The package is built on Linux only.
package kernelpath
