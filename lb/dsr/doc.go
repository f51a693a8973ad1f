// Package dsr is the target side of direct server return (a target group's
// forwarding: dsr). The l4lb nodes send a client's packet to the target
// whole: inside an outer IPv4 header (IPIP), an outer IPv6 header for IPv6
// VIPs (IPv6 in IPv6), or, with encapsulation: gue, inside that outer
// header and UDP to the group's gue_port (GUE variant 1: the packet right
// after the UDP header, for routers that spread flows by ports; over IPv6
// with a zero UDP checksum, RFC 6935). The target takes the
// outer headers off, delivers the packet to its service on the listener
// address (VIP), which it holds on lo, and answers the client directly.
//
// A kernel with the ipip module (fou for GUE, fou6 for GUE over IPv6,
// ip6_tunnel for IPv6) does
// that itself (deploy/dsr-target.sh sets it up). For one without, Decap is
// a tc program that strips the outer headers of all four kinds of packet
// to the VIPs it is told, before the stack sees them; `l4lb dsr-target`
// runs it:
//
//	d, err := dsr.NewDecap([]netip.Addr{vip}, 6080) // 0: no GUE
//	err = d.Attach("eth0")
//	defer d.Close()
package dsr
