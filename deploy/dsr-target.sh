#!/bin/sh
# Sets a target up for direct server return (target group forwarding: dsr):
# it takes the l4lb nodes' encapsulated packets in (IPIP; IPv6 in IPv6 for
# IPv6 VIPs; and with --gue-port, GUE: IP in UDP to that port, a group's
# encapsulation: gue), holds the listener addresses (VIPs) on lo, answers
# clients from them directly, and never answers ARP for them, so that the
# routers keep sending the VIPs to the l4lb nodes.
#
#   deploy/dsr-target.sh [--gue-port 6080] 198.18.10.1 [fd00:18:10::1 ...]
#
# The target's service listens on the listener's port (on the VIP, or on
# every address). Run as root; undo with: ip addr del VIP/32 dev lo (/128
# for IPv6; and ip fou del port PORT [-6]).
#
# A kernel with the ipip module (fou for GUE, fou6 for GUE over IPv6,
# ip6_tunnel for IPv6) decapsulates (tunl0, ip6tnl0). On one without, the script says so and
# exits 3 after the rest of the setup: run
#   l4lb dsr-target --interface IF --vip VIP ... [--gue-port PORT]
# (a tc program that takes the outer headers off) as a service instead.
set -eu
usage() { echo "usage: $0 [--gue-port PORT] VIP [VIP...]" >&2; exit 2; }
gue=""
if [ "${1:-}" = "--gue-port" ]; then
	[ $# -ge 2 ] || usage
	gue=$2
	shift 2
fi
[ $# -ge 1 ] || usage

v4="" v6=""
for vip in "$@"; do
	case "$vip" in
	*:*) ip -6 addr replace "$vip/128" dev lo; v6=1 ;;
	*) ip addr replace "$vip/32" dev lo; v4=1 ;;
	esac
done
# The VIPs are on lo: answer ARP only for addresses of the interface asked
# on, and never use a VIP as the source of an ARP request. (IPv6 neighbour
# discovery answers only for the asking interface's own addresses.)
sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
# Decapsulated packets arrive from clients whose route goes out elsewhere:
# strict reverse-path filtering would drop them.
sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0

vips="$*"
fallback="l4lb dsr-target --interface IF$(printf ' --vip %s' "$@")${gue:+ --gue-port $gue}"
missing() {
	echo "dsr-target: $vips on lo; this kernel has no $1 module: run $fallback" >&2
	exit 3
}
if [ -n "$v4" ]; then
	modprobe ipip 2>/dev/null || true # built in, or loaded already, or absent
	ip link set tunl0 up 2>/dev/null || missing ipip
	sysctl -qw net.ipv4.conf.tunl0.rp_filter=0
	if [ -n "$gue" ]; then
		# GUE variant 1 (the inner packet right after the UDP header) on
		# the port: fou hands the inner IPv4 packet to tunl0.
		modprobe fou 2>/dev/null || true
		if ! ip fou show 2>/dev/null | grep -q "port $gue " && ! ip fou add port "$gue" gue 2>/dev/null; then
			missing fou
		fi
	fi
fi
if [ -n "$v6" ]; then
	modprobe ip6_tunnel 2>/dev/null || true
	ip link set ip6tnl0 up 2>/dev/null || missing ip6_tunnel
	if [ -n "$gue" ]; then
		# GUE over IPv6 (zero UDP checksum, RFC 6935): fou hands the
		# inner IPv6 packet to ip6tnl0.
		modprobe fou6 2>/dev/null || true
		if ! ip fou show 2>/dev/null | grep -q "port $gue gue -6" && ! ip fou add port "$gue" gue -6 2>/dev/null; then
			missing fou6
		fi
	fi
fi
echo "dsr-target: decapsulating${v4:+ on tunl0}${gue:+ (GUE on UDP port $gue)}${v6:+ on ip6tnl0}, $* on lo"
