#!/usr/bin/env bash
# Policy routing for preserve_client_ip.enabled (transparent mode).
#
# l4lb connects to targets from each client's own address (IP_TRANSPARENT).
# The targets answer that address, so:
#   1. on each target, the route back to clients must go through this host
#      (default gateway, or a route for the client ranges);
#   2. on this host, those answers must be delivered locally, to l4lb's
#      transparent sockets, instead of being forwarded. Either mark the
#      packets that belong to a transparent socket (nftables `socket
#      transparent`) or treat everything arriving from the target-facing
#      interface as local.
#
# Usage: deploy/transparent.sh TARGET_IFACE   (as root)
# l4lb itself needs CAP_NET_ADMIN for IP_TRANSPARENT (see l4lb.service).
set -euo pipefail
iface=${1:?usage: $0 TARGET_IFACE}
table=100
mark=0x4c34

# Answers for transparent sockets are marked...
nft -f - <<NFT
table inet l4lb {
  chain prerouting {
    type filter hook prerouting priority mangle; policy accept;
    iifname "$iface" meta l4proto { tcp, udp } socket transparent 1 meta mark set $mark
  }
}
NFT
# ...and routed to this host.
ip rule add fwmark $mark lookup $table 2>/dev/null || true
ip route replace local 0.0.0.0/0 dev lo table $table
ip -6 rule add fwmark $mark lookup $table 2>/dev/null || true
ip -6 route replace local ::/0 dev lo table $table

# Without nftables, the coarser equivalent (everything from the targets'
# interface is local) is:
#   ip rule add iif "$iface" lookup $table
sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf."$iface".rp_filter=0
echo "transparent routing ready on $iface (table $table, mark $mark)"
