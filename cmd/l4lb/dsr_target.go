package main

import (
	"fmt"
	"net/netip"

	"github.com/spf13/cobra"
)

// newDSRTarget is `l4lb dsr-target`: the target side of direct server
// return, on a target whose kernel cannot take the encapsulation in itself.
func newDSRTarget() *cobra.Command {
	var ifaces, vips []string
	var guePort uint16
	cmd := &cobra.Command{
		Use:   "dsr-target --interface IF --vip IP [--vip IP...] [--gue-port PORT]",
		Short: "On a target of a dsr target group: take the l4lb nodes' IPIP, IPv6-in-IPv6 or GUE packets in (a tc program), until stopped",
		Long: `Take direct server return's outer headers off on a target.

The l4lb nodes of a target group with forwarding: dsr send each client
packet inside an outer header: IPv4 in IPv4 (IPIP), IPv6 in IPv6, and with
encapsulation: gue a UDP header to the group's gue_port after it. A kernel
with the ipip, fou and ip6_tunnel modules takes them off itself
(deploy/dsr-target.sh sets that up). On one without, this command runs a
tc program on each --interface that does, for packets to the --vip
addresses, until SIGTERM or SIGINT: IPIP and IPv6 in IPv6 always, GUE (over
IPv4 or IPv6) when --gue-port names the port.

The VIPs must be on a local interface (lo), and the service must listen on
the listener's port; deploy/dsr-target.sh does both.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var addrs []netip.Addr
			for _, v := range vips {
				a, err := netip.ParseAddr(v)
				if err != nil || a.Zone() != "" {
					return usageError{fmt.Errorf("--vip: want an IP address, got %q", v)}
				}
				addrs = append(addrs, a)
			}
			if len(addrs) == 0 || len(ifaces) == 0 {
				return usageError{fmt.Errorf("name at least one --interface and one --vip")}
			}
			return runDSRTarget(cmd, ifaces, addrs, guePort)
		},
	}
	cmd.Flags().StringArrayVar(&ifaces, "interface", nil, "interface the encapsulated packets arrive on, repeatable")
	cmd.Flags().StringArrayVar(&vips, "vip", nil, "listener address (VIP) this target serves, repeatable")
	cmd.Flags().Uint16Var(&guePort, "gue-port", 0, "also take GUE in, to this UDP port (the target group's gue_port)")
	return cmd
}
