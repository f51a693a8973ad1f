#!/bin/sh
# Sets a target up for direct server return (target group forwarding: dsr):
# it takes the l4lb nodes' IPIP packets in, holds the listener addresses
# (VIPs) on lo, answers clients from them directly, and never answers ARP
# for them, so that the routers keep sending the VIPs to the l4lb nodes.
#
#   deploy/dsr-target.sh 198.18.10.1 [more VIPs...]
#
# The target's service listens on the listener's port (on the VIP, or on
# every address). Run as root; undo with: ip addr del VIP/32 dev lo.
#
# A kernel with the ipip module decapsulates (tunl0). On one without, the
# script says so and exits 3 after the rest of the setup: run
#   l4lb dsr-target --interface IF --vip VIP ...
# (a tc program that takes the outer header off) as a service instead.
set -eu
[ $# -ge 1 ] || { echo "usage: $0 VIP [VIP...]" >&2; exit 2; }

for vip in "$@"; do
	ip addr replace "$vip/32" dev lo
done
# The VIPs are on lo: answer ARP only for addresses of the interface asked
# on, and never use a VIP as the source of an ARP request.
sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
# Decapsulated packets arrive from clients whose route goes out elsewhere:
# strict reverse-path filtering would drop them.
sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0

modprobe ipip 2>/dev/null || true # built in, or loaded already, or absent
if ip link set tunl0 up 2>/dev/null; then
	sysctl -qw net.ipv4.conf.tunl0.rp_filter=0
	echo "dsr-target: tunl0 up, $* on lo"
	exit 0
fi
echo "dsr-target: $* on lo; this kernel has no ipip module: run l4lb dsr-target --interface IF$(printf ' --vip %s' "$@")" >&2
exit 3
