// SPDX-License-Identifier: Apache-2.0
/*
 * The target side of direct server return, for targets whose kernel cannot
 * take IPIP in itself (no ipip module): a tc (tcx) ingress program that
 * strips the outer IPv4 header the l4lb nodes add (fastpath.c, encap4) or
 * the outer IPv6 header of IPv6 in IPv6 (encap6), and with GUE the UDP
 * header after either (to port cfg_gue_port), from packets whose inner
 * destination is one of the listener addresses (VIPs) this target serves.
 * The inner packet then goes on into the stack
 * as if the client had sent it here, and the target answers the client
 * directly, from the VIP. Everything else passes untouched.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Apache-2.0";

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPV6_HLEN 40
#define IPPROTO_IPV6 41
#define IPV4_HLEN 20
#define UDP_HLEN 8
#define IPPROTO_IPIP 4
#define IPPROTO_UDP 17

/* The UDP port GUE packets come to (network order); 0 takes IPIP only. */
volatile const __u16 cfg_gue_port = 0;

#define TCX_NEXT -1
#define TCX_PASS 0
#define TCX_DROP 2

/* The VIPs served here (IPv4, network order). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u8);
	__uint(max_entries, 1024);
} l4lb_vips SEC(".maps");

/* The IPv6 VIPs served here. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u8[16]);
	__type(value, __u8);
	__uint(max_entries, 1024);
} l4lb_vips6 SEC(".maps");

/* Packets decapsulated (0), and those that could not be (1). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 2);
} l4lb_decap_stats SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&l4lb_decap_stats, &which);
	if (n)
		*n += 1;
}

/* strip takes room bytes of outer headers off, after the Ethernet header.
 * No flags: a kernel without the ipip module has no GRO for IPIP (nor one
 * without fou for GUE, or without ip6_tunnel for IPv6 in IPv6), so these
 * packets arrive one by one, never as a GSO aggregate. */
static __always_inline int strip(struct __sk_buff *skb, __s32 room)
{
	if (bpf_skb_adjust_room(skb, -room, BPF_ADJ_ROOM_MAC, 0)) {
		count(1);
		return TCX_DROP;
	}
	count(0);
	return TCX_PASS;
}

/* gue_inner is the packet after the UDP header at udp, if that header goes
 * to cfg_gue_port and need bytes of the inner header are there (GUE
 * variant 1: the client's packet right after the UDP header); else NULL. */
static __always_inline __u8 *gue_inner(__u8 *udp, void *end, __u32 need)
{
	__u8 *inner = udp + UDP_HLEN;
	if ((void *)(inner + need) > end || *(__u16 *)(udp + 2) != cfg_gue_port)
		return NULL;
	return inner;
}

/* decap6 takes IPv6 in IPv6 to an IPv6 VIP in, or in GUE over IPv6 (a
 * UDP header to cfg_gue_port between the two; its checksum, zero as the
 * nodes send it, is not checked: the inner packet carries its own). */
static __always_inline int decap6(struct __sk_buff *skb, void *data, void *end)
{
	if (data + ETH_HLEN + 2 * IPV6_HLEN > end)
		return TCX_NEXT;
	__u8 *outer = data + ETH_HLEN, *inner = outer + IPV6_HLEN;
	if ((outer[0] >> 4) != 6)
		return TCX_NEXT;
	__s32 room = IPV6_HLEN;
	if (outer[6] == IPPROTO_UDP && cfg_gue_port) {
		if (!(inner = gue_inner(outer + IPV6_HLEN, end, IPV6_HLEN)))
			return TCX_NEXT;
		room += UDP_HLEN;
	} else if (outer[6] != IPPROTO_IPV6) {
		return TCX_NEXT;
	}
	if ((inner[0] >> 4) != 6)
		return TCX_NEXT;
	if (!bpf_map_lookup_elem(&l4lb_vips6, inner + 24))
		return TCX_NEXT;
	return strip(skb, room);
}

SEC("tcx/ingress")
int l4lb_decap(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (data + ETH_HLEN > end)
		return TCX_NEXT;
	if (*(__u16 *)(data + 12) == bpf_htons(ETH_P_IPV6))
		return decap6(skb, data, end);
	if (data + ETH_HLEN + 2 * IPV4_HLEN > end)
		return TCX_NEXT;
	if (*(__u16 *)(data + 12) != bpf_htons(ETH_P_IP))
		return TCX_NEXT;
	__u8 *outer = data + ETH_HLEN, *inner = outer + IPV4_HLEN;
	if (outer[0] != 0x45)
		return TCX_NEXT;
	if (*(__u16 *)(outer + 6) & bpf_htons(0x3fff)) /* a fragment: the stack reassembles */
		return TCX_NEXT;
	__s32 room = IPV4_HLEN;
	if (outer[9] == IPPROTO_UDP && cfg_gue_port) {
		if (!(inner = gue_inner(outer + IPV4_HLEN, end, IPV4_HLEN)))
			return TCX_NEXT;
		room += UDP_HLEN;
	} else if (outer[9] != IPPROTO_IPIP) {
		return TCX_NEXT;
	}
	if ((inner[0] >> 4) != 4)
		return TCX_NEXT;
	__u32 vip = *(__u32 *)(inner + 16);
	if (!bpf_map_lookup_elem(&l4lb_vips, &vip))
		return TCX_NEXT;
	return strip(skb, room);
}
