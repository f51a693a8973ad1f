// Package dsr is the target side of direct server return (a target group's
// forwarding: dsr). The l4lb nodes send a client's packet to the target
// whole, inside an outer IPv4 header (IPIP); the target takes the outer
// header off, delivers the packet to its service on the listener address
// (VIP), which it holds on lo, and answers the client directly.
//
// A kernel with the ipip module does that itself (deploy/dsr-target.sh
// sets it up). For one without, Decap is a tc program that strips the
// outer header of IPIP packets to the VIPs it is told, before the stack
// sees them; `l4lb dsr-target` runs it:
//
//	d, err := dsr.NewDecap([]netip.Addr{vip})
//	err = d.Attach("eth0")
//	defer d.Close()
package dsr
