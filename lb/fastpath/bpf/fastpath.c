// SPDX-License-Identifier: Apache-2.0
/*
 * l4lb's kernel fast path: two tc (tcx) programs, loaded once for UDP and
 * once for TCP (cfg_proto, set by the loader: the other protocol's code is
 * pruned at load time, and its packets leave after a few instructions).
 *
 * On ingress, a client's datagram of an established flow has its destination
 * rewritten to the flow's target before routing, and a first datagram to a
 * service picks its target from the service's Maglev table exactly as user
 * space does (the flow hash, or the source hash with stickiness, modulo the
 * table size) and creates the flow's two entries. On egress, after routing,
 * a target's reply has its source rewritten to the listener address the
 * client used: rewriting it earlier would hand the routing code a local
 * source address arriving from outside, which it drops as a martian when the
 * reply is forwarded from a target on another host. Everything else goes on
 * untouched, to the stack and the user-space listener: fragments, IPv4
 * options, IPv6 extension headers, zero IPv6 UDP checksums.
 *
 * Each family has its own maps; one code path serves both, specialised by
 * the constant v6 that every inlined function takes.
 *
 * TCP adds connection state. A SYN makes a flow in the embryonic map, and
 * the client's first ACK without SYN moves it to the established map: a SYN
 * flood fills (and evicts from) the embryonic map only, never pushing out
 * established flows. A FIN marks its direction's entry; a FIN both ways, or
 * a RST, marks the flow closed, and user space removes it after a short
 * linger for stray segments. Resets are counted by origin and, for targets,
 * per target (a SYN answered with RST apart), for passive health.
 *
 * A service may forward by direct server return (SVC_DSR): instead of
 * rewriting the destination, the program wraps the client's packet whole
 * in an outer header to the target, which the stack then routes; the
 * target, holding the listener address on a local interface, answers the
 * client directly. An IPv4 service uses IPIP, or, where the routers between
 * node and target spread flows only by UDP or TCP ports, GUE (SVC_GUE): a
 * UDP header to the service's encap_port, from a source port of the flow
 * hash, with the client's packet right after it (GUE variant 1, which the
 * kernel's fou module and lb/dsr's program both take in). An IPv6 service
 * uses IPv6 in IPv6, the outer flow label taken from the flow hash. Such a
 * flow has one entry, client side, and no node holds anything a reply
 * needs: a connection outlives the node that carried it. A TCP flow goes
 * straight to the established map (the node never sees the handshake
 * complete), and a client's FIN closes it: what comes later goes to the
 * same target by the table.
 *
 * A segment with no entry that is neither a SYN nor a RST belongs to a
 * connection this node has not seen: it began on another l4lb node, and
 * the routers moved it here (a node died, or the ECMP set changed). As
 * Katran does, it goes to the target the Maglev table names for its flow
 * hash, which every node computes alike, and the flow is entered straight
 * into the established map. A RST with no entry goes on to the stack, which
 * drops it.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "fastpath.h"

char LICENSE[] SEC("license") = "Apache-2.0";

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPV4_HLEN 20
#define IPV6_HLEN 40
#define UDP_HLEN 8
#define TCP_HLEN 20

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* Each enum of fastpath.h named once, so that its type is in the object's
 * BTF and bpf2go exports its constants to Go. */
volatile const enum stat_kind l4lb_enum_stat_kind;
volatile const enum ports_key l4lb_enum_ports_key;
volatile const enum svc_flag l4lb_enum_svc_flag;
volatile const enum flow_flag l4lb_enum_flow_flag;
volatile const enum tcx_verdict l4lb_enum_tcx_verdict;

/* The protocol this load serves, PROTO_UDP or PROTO_TCP: set by the loader. */
volatile const __u8 cfg_proto = PROTO_UDP;

/* Map layouts. Addresses and ports are kept in network order, as they are
 * in the packet; every key is built whole, pads zeroed. */
struct flow_key4 {
	__u32 saddr, daddr;
	__u16 sport, dport;
};
struct flow_key6 {
	__u32 saddr[4], daddr[4];
	__u16 sport, dport;
};
/* A flow entry: the address and port to write, the service (with REPLY_FLAG
 * on the target-side entry), and when it last carried a datagram. */
struct flow_val4 {
	__u32 addr;
	__u16 port, svc;
	__u64 last;
};
struct flow_val6 {
	__u32 addr[4];
	__u16 port, svc;
	__u32 pad;
	__u64 last;
};
struct svc_key4 {
	__u32 addr;
	__u16 port, pad;
};
struct svc_key6 {
	__u32 addr[4];
	__u16 port, pad;
};
struct svc_val {
	__u32 base;  /* the first slot of the table in use */
	__u32 flags; /* SVC_* */
	__u32 id;
	__u32 encap_src[4]; /* SVC_DSR: the outer source address (IPv4: the first word) */
	__u16 encap_port;   /* SVC_GUE: the outer UDP destination port (network order) */
	__u8 quic_len;      /* SVC_QUIC: the length of the targets' connection IDs */
	__u8 pad;
};
/* SVC_QUIC: a service's server ID, to the target that issues it. */
struct quic_key {
	__u32 svc;
	__u32 pad;
	__u64 id; /* the 8 bytes of the connection ID, read big-endian */
};
/* A Maglev slot: its target; port 0 is an empty slot. */
struct slot4 {
	__u32 addr;
	__u16 port, pad;
};
struct slot6 {
	__u32 addr[4];
	__u16 port, pad;
};
struct acl_key4 {
	__u32 prefixlen; /* 32 bits of service id, then the address's */
	__u32 svc;
	__u32 addr;
};
struct acl_key6 {
	__u32 prefixlen;
	__u32 svc;
	__u32 addr[4];
};
struct stat {
	__u64 packets, bytes;
};
/* TCP resets from one target (keyed by its slot value): those that answer a
 * SYN (the target refused the connection), and the others. */
struct target_stat {
	__u64 syn_rst, rst;
};

/* Port bitmaps: PORTS_LISTENERS has the ports of every listener address
 * served, PORTS_TARGETS those of every target. A packet to no listener
 * port (ingress) or from no target port (egress) is not ours, and leaves
 * after a few instructions, before any hash lookup. */
struct ports {
	__u64 bits[1024];
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ports);
	__uint(max_entries, 2);
} l4lb_ports SEC(".maps");

static __always_inline bool port_in(__u32 which, __u16 port_be)
{
	struct ports *p = bpf_map_lookup_elem(&l4lb_ports, &which);
	if (!p)
		return false;
	__u16 port = bpf_ntohs(port_be);
	return p->bits[(port >> 6) & 1023] & (1ULL << (port & 63));
}

/* Sizes are set by the loader (package fastpath) before loading. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct stat);
	__uint(max_entries, 1);
} l4lb_stats SEC(".maps");

#define FAMILY_MAPS(f)                                           \
	struct {                                                     \
		__uint(type, BPF_MAP_TYPE_HASH);                         \
		__type(key, struct svc_key##f);                          \
		__type(value, struct svc_val);                           \
		__uint(max_entries, 1);                                  \
	} l4lb_svcs_v##f SEC(".maps");                               \
	struct {                                                     \
		__uint(type, BPF_MAP_TYPE_ARRAY);                        \
		__type(key, __u32);                                      \
		__type(value, struct slot##f);                           \
		__uint(max_entries, 1);                                  \
	} l4lb_tables_v##f SEC(".maps");                             \
	/* Two entries per flow; the least recently used go first    \
	 * when it is full, so a flood cannot lock clients out. */   \
	struct {                                                     \
		__uint(type, BPF_MAP_TYPE_LRU_HASH);                     \
		__type(key, struct flow_key##f);                         \
		__type(value, struct flow_val##f);                       \
		__uint(max_entries, 1);                                  \
	} l4lb_flows_v##f SEC(".maps");                              \
	/* TCP flows whose handshake has not completed. */           \
	struct {                                                     \
		__uint(type, BPF_MAP_TYPE_LRU_HASH);                     \
		__type(key, struct flow_key##f);                         \
		__type(value, struct flow_val##f);                       \
		__uint(max_entries, 1);                                  \
	} l4lb_syn_v##f SEC(".maps");                                \
	/* TCP: entries for the targets user space watches. */       \
	struct {                                                     \
		__uint(type, BPF_MAP_TYPE_HASH);                         \
		__type(key, struct slot##f);                             \
		__type(value, struct target_stat);                       \
		__uint(max_entries, 1);                                  \
	} l4lb_targets_v##f SEC(".maps");                            \
	struct {                                                     \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);                     \
		__type(key, struct acl_key##f);                          \
		__type(value, __u8);                                     \
		__uint(map_flags, BPF_F_NO_PREALLOC);                    \
		__uint(max_entries, 1);                                  \
	} l4lb_allow_v##f SEC(".maps");                              \
	struct {                                                     \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);                     \
		__type(key, struct acl_key##f);                          \
		__type(value, __u8);                                     \
		__uint(map_flags, BPF_F_NO_PREALLOC);                    \
		__uint(max_entries, 1);                                  \
	} l4lb_deny_v##f SEC(".maps");                               \
	struct {                                                     \
		__uint(type, BPF_MAP_TYPE_HASH);                         \
		__type(key, struct quic_key);                            \
		__type(value, struct slot##f);                           \
		__uint(max_entries, 1);                                  \
	} l4lb_quic_v##f SEC(".maps");

FAMILY_MAPS(4)
FAMILY_MAPS(6)

#define MAP(name, v6) ((v6) ? (void *)&name##_v6 : (void *)&name##_v4)

/* A parsed datagram: where its fields are, and their values. */
struct pkt {
	__u32 saddr[4], daddr[4]; /* IPv4: the first word only */
	__u16 sport, dport;
	__u32 off_saddr, off_daddr, off_sport, off_dport, off_csum;
	__u64 bytes; /* the payload, as user space counts it */
	__u8 flags;  /* TCP flags */
};

/* Key-sized scratch, big enough for either family. */
union flow_key {
	struct flow_key4 v4;
	struct flow_key6 v6;
};
union flow_val {
	struct flow_val4 v4;
	struct flow_val6 v6;
};

/* new_flow's entries, built here rather than on the stack, which the IPv6
 * path would overrun. */
/* An outer IPv6 header, for direct server return (encap6), and with GUE
 * the UDP header after it. */
struct outer6 {
	__u32 vtcfl;
	__u16 payload_len;
	__u8 nexthdr, hop_limit;
	__u32 saddr[4], daddr[4];
	__u16 sport, dport, len, csum; /* SVC_GUE only */
};
/* Room too large for the stack: a new flow's entries, an outer header. */
struct scratch {
	union flow_key rkey;
	union flow_val rval, fval;
	struct outer6 hdr6;
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct scratch);
	__uint(max_entries, 1);
} l4lb_scratch SEC(".maps");

static __always_inline int addr_words(bool v6) { return v6 ? 4 : 1; }

static __always_inline void copy_addr(__u32 *dst, const __u32 *src, bool v6)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		if (i < addr_words(v6))
			dst[i] = src[i];
}

static __always_inline bool same_addr(const __u32 *a, const __u32 *b, bool v6)
{
	bool same = true;
#pragma unroll
	for (int i = 0; i < 4; i++)
		if (i < addr_words(v6))
			same = same && a[i] == b[i];
	return same;
}

/* parse fills p from an untagged Ethernet (or loopback) frame carrying
 * cfg_proto right after a fixed IP header; it returns false for anything
 * else. */
static __always_inline bool parse(struct __sk_buff *skb, struct pkt *p, bool v6)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	bool tcp = cfg_proto == PROTO_TCP;
	__u32 l4 = ETH_HLEN + (v6 ? IPV6_HLEN : IPV4_HLEN);
	if (data + l4 + (tcp ? TCP_HLEN : UDP_HLEN) > end)
		return false;
	__u8 *ip = data + ETH_HLEN;
	if (v6) {
		if ((ip[0] & 0xf0) != 0x60 || ip[6] != cfg_proto)
			return false;
		/* A zero UDP checksum is invalid over IPv6 (RFC 8200 8.1): the
		 * stack drops it, and the checksum helpers would keep it zero. */
		if (!tcp && *(__u16 *)(data + l4 + 6) == 0)
			return false;
		p->off_saddr = ETH_HLEN + 8;
		p->off_daddr = ETH_HLEN + 24;
	} else {
		if (ip[0] != 0x45 || ip[9] != cfg_proto)
			return false;
		if (*(__u16 *)(ip + 6) & bpf_htons(0x3fff)) /* MF, or a fragment offset */
			return false;
		p->off_saddr = ETH_HLEN + 12;
		p->off_daddr = ETH_HLEN + 16;
	}
	copy_addr(p->saddr, data + p->off_saddr, v6);
	copy_addr(p->daddr, data + p->off_daddr, v6);
	p->off_sport = l4;
	p->off_dport = l4 + 2;
	p->sport = *(__u16 *)(data + l4);
	p->dport = *(__u16 *)(data + l4 + 2);
	if (tcp) {
		__u8 *th = data + l4;
		__u32 doff = (th[12] >> 4) * 4;
		if (doff < TCP_HLEN || skb->len < l4 + doff)
			return false;
		p->off_csum = l4 + 16;
		p->flags = th[13];
		p->bytes = skb->len - (l4 + doff);
	} else {
		p->off_csum = l4 + 6;
		p->bytes = skb->len - (l4 + UDP_HLEN);
	}
	return true;
}

static __always_inline void flow_key(union flow_key *k, const struct pkt *p, bool v6)
{
	__builtin_memset(k, 0, sizeof(*k));
	if (v6) {
		copy_addr(k->v6.saddr, p->saddr, true);
		copy_addr(k->v6.daddr, p->daddr, true);
		k->v6.sport = p->sport;
		k->v6.dport = p->dport;
	} else {
		k->v4.saddr = p->saddr[0];
		k->v4.daddr = p->daddr[0];
		k->v4.sport = p->sport;
		k->v4.dport = p->dport;
	}
}

/* Field access on a flow value of either family. */
static __always_inline __u32 *val_addr(void *v) { return v; }
static __always_inline __u16 *val_port(void *v, bool v6) { return v + (v6 ? 16 : 4); }
static __always_inline __u16 *val_svc(void *v, bool v6) { return v + (v6 ? 18 : 6); }
static __always_inline __u64 *val_last(void *v, bool v6) { return v + (v6 ? 24 : 8); }

/* The flow hash, as pkg/flowhash computes it: FNV-1a over the protocol and
 * the 16-byte form of each address (IPv4-mapped for IPv4) with its port in
 * network order, then the splitmix64 finalizer. */
static __always_inline __u64 fnv_byte(__u64 h, __u8 b) { return (h ^ b) * FLOWHASH_PRIME64; }

static __always_inline __u64 fnv_addr(__u64 h, const __u32 *addr, bool v6)
{
	const __u8 *b = (const __u8 *)addr;
	if (!v6) {
#pragma unroll
		for (int i = 0; i < 10; i++)
			h = fnv_byte(h, 0);
		h = fnv_byte(h, 0xff);
		h = fnv_byte(h, 0xff);
	}
#pragma unroll
	for (int i = 0; i < 16; i++)
		if (i < 4 * addr_words(v6))
			h = fnv_byte(h, b[i]);
	return h;
}

static __always_inline __u64 fnv_port(__u64 h, __u16 port)
{
	const __u8 *b = (const __u8 *)&port; /* network order: high byte first */
	return fnv_byte(fnv_byte(h, b[0]), b[1]);
}

static __always_inline __u64 mix(__u64 x)
{
	x ^= x >> FLOWHASH_MIX_SHIFT1;
	x *= FLOWHASH_MIX_MUL1;
	x ^= x >> FLOWHASH_MIX_SHIFT2;
	x *= FLOWHASH_MIX_MUL2;
	x ^= x >> FLOWHASH_MIX_SHIFT3;
	return x;
}

static __always_inline __u64 flow_hash(const struct pkt *p, bool v6)
{
	__u64 h = FLOWHASH_OFFSET64 ^ cfg_proto;
	h = fnv_addr(h, p->saddr, v6);
	h = fnv_port(h, p->sport);
	h = fnv_addr(h, p->daddr, v6);
	h = fnv_port(h, p->dport);
	return mix(h);
}

static __always_inline __u64 source_hash(const struct pkt *p, bool v6)
{
	return mix(fnv_addr(FLOWHASH_OFFSET64, p->saddr, v6));
}

/* count adds one datagram of bytes to a service's counter kind. The stats
 * are per CPU, so plain adds suffice. */
static __always_inline void count(__u32 svc, __u32 kind, __u64 bytes)
{
	__u32 key = svc * STAT_KINDS + kind;
	struct stat *st = bpf_map_lookup_elem(&l4lb_stats, &key);
	if (st) {
		st->packets++;
		st->bytes += bytes;
	}
}

/* The address and port a rewrite writes. */
struct endpoint {
	__u32 addr[4];
	__u16 port;
};

/* touch takes a flow value: it returns its service field, copies its address
 * and port to to, and stamps the entry with the (coarse, jiffy-grained) time,
 * writing only when that changed, so the entry's cache line stays shared. */
static __always_inline __u16 touch(void *v, struct endpoint *to, bool v6)
{
	copy_addr(to->addr, val_addr(v), v6);
	to->port = *val_port(v, v6);
	__u64 now = bpf_ktime_get_coarse_ns();
	if (*val_last(v, v6) != now)
		*val_last(v, v6) = now;
	return *val_svc(v, v6);
}

/* rewrite replaces the address and port at the given offsets (whose old
 * values are from and from_port) with to's, fixing the layer 4 checksum (a
 * zero IPv4 UDP checksum stays zero) and the IPv4 header checksum. A helper
 * that fails leaves the packet half rewritten (an address changed and its
 * checksum not, or the reverse): such a packet is dropped, never passed on
 * to be misdelivered or refused by the peer's stack. */
static __always_inline int rewrite(struct __sk_buff *skb, const struct pkt *p, bool v6, __u32 off_addr, const __u32 *from,
				   __u32 off_port, __u16 from_port, const struct endpoint *to)
{
	__u64 mangled = cfg_proto == PROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	long err = 0;
#pragma unroll
	for (int i = 0; i < 4; i++)
		if (i < addr_words(v6))
			err |= bpf_l4_csum_replace(skb, p->off_csum, from[i], to->addr[i],
						   BPF_F_PSEUDO_HDR | mangled | sizeof(__u32));
	err |= bpf_l4_csum_replace(skb, p->off_csum, from_port, to->port, mangled | sizeof(__u16));
	if (!v6)
		err |= bpf_l3_csum_replace(skb, ETH_HLEN + 10, from[0], to->addr[0], sizeof(__u32));
	err |= bpf_skb_store_bytes(skb, off_addr, to->addr, 4 * addr_words(v6), 0);
	err |= bpf_skb_store_bytes(skb, off_port, &to->port, sizeof(__u16), 0);
	return err ? TCX_DROP : TCX_PASS;
}

/* encap4 wraps the packet for direct server return, the inner packet left
 * as the client sent it: in an outer IPv4 header from the service's encap
 * source to the target (IPIP), and with SVC_GUE a UDP header after it, to
 * the service's encap port from a source port of the flow's hash, for the
 * routers' multipath hash (GUE variant 1). */
struct outer4 {
	__u8 vihl, tos;
	__u16 tot_len, id, frag_off;
	__u8 ttl, protocol;
	__u16 check;
	__u32 saddr, daddr;
	__u16 sport, dport, len, csum; /* SVC_GUE only */
};

/* gue_source_port maps a flow hash to a UDP source port, in the dynamic
 * range (49152-65535); layout.go's GUESourcePort mirrors it. */
static __always_inline __u16 gue_source_port(__u64 hash)
{
	return bpf_htons(0xc000 | (__u16)((hash ^ (hash >> 32)) & 0x3fff));
}

/* encap_room makes room after the Ethernet header for the outer headers of
 * service s: an IP header of hlen bytes (l3 the adjust_room flag of its
 * family), and with SVC_GUE a UDP header after it, to *dport (0 without
 * GUE). It returns the room made, or 0 if it could not. */
static __always_inline __u32 encap_room(struct __sk_buff *skb, const struct svc_val *s, __u32 hlen, __u64 l3, __u16 *dport)
{
	*dport = (s->flags & SVC_GUE) ? s->encap_port : 0;
	if (*dport) {
		hlen += UDP_HLEN;
		l3 |= BPF_F_ADJ_ROOM_ENCAP_L4_UDP;
	}
	if (bpf_skb_adjust_room(skb, hlen, BPF_ADJ_ROOM_MAC, l3))
		return 0;
	return hlen;
}

static __always_inline int encap4(struct __sk_buff *skb, __u32 daddr, const struct svc_val *s, __u64 hash)
{
	__u32 inner = skb->len - ETH_HLEN;
	__u16 dport;
	__u32 room = encap_room(skb, s, IPV4_HLEN, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, &dport);
	if (!room)
		return TCX_DROP;
	bool gue = dport != 0;
	struct outer4 h = {
		.vihl = 0x45,
		.tot_len = bpf_htons(inner + room),
		.ttl = 64,
		.protocol = gue ? 17 : 4, /* IPPROTO_UDP, IPPROTO_IPIP */
		.saddr = s->encap_src[0],
		.daddr = daddr,
		.sport = gue_source_port(hash),
		.dport = dport,
		.len = bpf_htons(inner + UDP_HLEN),
		/* .csum 0: none, which UDP over IPv4 allows; the inner
		 * packet carries its own. */
	};
	__s64 sum = bpf_csum_diff(0, 0, (__be32 *)&h, IPV4_HLEN, 0);
	if (sum < 0)
		return TCX_DROP;
	__u32 c = (__u32)sum;
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	h.check = (__u16)~c;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &h, gue ? sizeof(h) : IPV4_HLEN, 0))
		return TCX_DROP;
	return TCX_PASS;
}

/* encap6 wraps an IPv6 packet in an outer IPv6 header from the service's
 * encap source to the target (IPv6 in IPv6), whose flow label comes from
 * the flow's hash, for the routers' multipath hash; with SVC_GUE, a UDP
 * header after it as encap4 writes one. Its checksum is zero, which UDP
 * over IPv6 allows for tunnels whose receivers accept it (RFC 6935, 6936):
 * the target's decapsulation does, and the inner packet carries its own. */
static __always_inline int encap6(struct __sk_buff *skb, const __u32 *daddr, const struct svc_val *s, __u64 hash)
{
	/* The hash now, not after the call below: its inputs would stay live
	 * across it, on the stack. */
	asm volatile("" : "+r"(hash));
	__u32 inner = skb->len - ETH_HLEN, zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&l4lb_scratch, &zero);
	if (!sc)
		return TCX_DROP;
	struct outer6 *h = &sc->hdr6;
	__u16 dport;
	if (!encap_room(skb, s, IPV6_HLEN, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, &dport))
		return TCX_DROP;
	bool gue = dport != 0;
	h->vtcfl = bpf_htonl(0x60000000 | (__u32)((hash ^ (hash >> 32)) & 0xfffff));
	h->payload_len = bpf_htons(gue ? inner + UDP_HLEN : inner);
	h->nexthdr = gue ? 17 : 41; /* IPPROTO_UDP, IPPROTO_IPV6 */
	h->hop_limit = 64;
	copy_addr(h->saddr, s->encap_src, true);
	copy_addr(h->daddr, daddr, true);
	h->sport = gue_source_port(hash);
	h->dport = dport;
	h->len = bpf_htons(inner + UDP_HLEN);
	h->csum = 0;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, h, gue ? sizeof(*h) : IPV6_HLEN, 0))
		return TCX_DROP;
	return TCX_PASS;
}

/* encap6_flow is encap6 with the flow's hash, in a stack frame of its own:
 * the IPv6 handler's has no room for it. */
static __attribute__((noinline)) int encap6_flow(struct __sk_buff *skb, const struct pkt *p, const __u32 *daddr, const struct svc_val *s)
{
	return encap6(skb, daddr, s, flow_hash(p, true));
}

/* encap wraps the packet as service s says: s is read (a map value) as
 * the packet is built. */
static __always_inline int encap(struct __sk_buff *skb, const struct pkt *p, const __u32 *daddr, const struct svc_val *s, bool v6)
{
	return v6 ? encap6_flow(skb, p, daddr, s) : encap4(skb, daddr[0], s, flow_hash(p, false));
}

/* service is the service of the packet's destination, or NULL. */
static __always_inline struct svc_val *service(const struct pkt *p, bool v6)
{
	struct svc_key6 sk = {};
	copy_addr(sk.addr, p->daddr, v6);
	if (v6)
		sk.port = p->dport;
	else
		((struct svc_key4 *)&sk)->port = p->dport;
	return bpf_map_lookup_elem(MAP(l4lb_svcs, v6), &sk);
}

/* dsr_service is the service of the packet's destination if it forwards by
 * direct server return, or NULL. */
static __always_inline const struct svc_val *dsr_service(const struct pkt *p, bool v6)
{
	struct svc_val *s = service(p, v6);
	return s && (s->flags & SVC_DSR) ? s : NULL;
}

static __always_inline int refuse(__u32 svc, __u32 kind, __u64 bytes)
{
	count(svc, kind, bytes);
	return TCX_DROP;
}

/* acl_refuses applies the listener's allow and deny lists as user space
 * does: a deny match refuses, then only an allow match admits. */
static __always_inline bool acl_refuses(const struct pkt *p, __u32 id, __u32 flags, bool v6)
{
	if (!(flags & (SVC_ALLOW | SVC_DENY)))
		return false;
	struct acl_key6 k = {};
	k.prefixlen = 32 + 32 * addr_words(v6);
	k.svc = id;
	copy_addr(k.addr, p->saddr, v6);
	if ((flags & SVC_DENY) && bpf_map_lookup_elem(MAP(l4lb_deny, v6), &k))
		return true;
	return (flags & SVC_ALLOW) && !bpf_map_lookup_elem(MAP(l4lb_allow, v6), &k);
}

/* QUIC routes of a datagram (pkg/quiclb.Route). */
enum quic_route {
	QUIC_HASH,
	QUIC_CID,
	QUIC_UNKNOWN,
	QUIC_BAD_VERSION,
	QUIC_SHORT,
};

/* server_id reads the 8 bytes of a server ID at off, big-endian. (From
 * the packet, not the copy of its head: an index into a stack array that
 * two call sites share becomes pointer arithmetic the verifier refuses.) */
static __always_inline bool server_id(struct __sk_buff *skb, __u32 off, __u64 *id)
{
	__u64 raw;
	if (bpf_skb_load_bytes(skb, off, &raw, 8))
		return false;
	*id = bpf_be64_to_cpu(raw);
	return true;
}

/* quic_classify reads a QUIC service's datagram as pkg/quiclb.Classify
 * does: its route, and for QUIC_CID the server ID (as the packet holds it)
 * and whether the header was short. */
static __always_inline int quic_classify(struct __sk_buff *skb, const struct pkt *p, __u32 cid_len, __u64 *id, bool *shorthdr)
{
	__u32 off = p->off_sport + UDP_HLEN;
	if (skb->len <= off)
		return QUIC_SHORT;
	__u32 plen = skb->len - off;
	__u8 b[16] = {};
	if (plen >= 16) {
		if (bpf_skb_load_bytes(skb, off, b, 16))
			return QUIC_SHORT;
	} else if (plen >= 6) {
		if (bpf_skb_load_bytes(skb, off, b, 6))
			return QUIC_SHORT;
	} else if (bpf_skb_load_bytes(skb, off, b, 1)) {
		return QUIC_SHORT;
	}
	*shorthdr = !(b[0] & 0x80);
	if (*shorthdr) {
		/* 1 octet, then the destination ID of the listener's length. */
		if (plen < 1 + cid_len || cid_len < 9 || plen < 10)
			return QUIC_SHORT;
		if ((b[1] >> 5) == 7)
			return QUIC_UNKNOWN;
		return server_id(skb, off + 2, id) ? QUIC_CID : QUIC_SHORT;
	}
	/* Long: 1 octet, version, DCID length, DCID, SCID length, ... */
	if (plen < 6)
		return QUIC_SHORT;
	if (b[1] != 0 || b[2] != 0 || b[3] != 0 || b[4] != 1)
		return QUIC_BAD_VERSION;
	__u32 dcid_len = b[5];
	if (dcid_len > 20 || plen < 6 + dcid_len + 1)
		return QUIC_SHORT;
	/* A Handshake packet carries the server's ID; Initial and 0-RTT the
	 * client's own (and plen >= 16 whenever dcid_len >= 9). */
	if (((b[0] >> 4) & 3) == 2 && dcid_len >= 9 && (b[6] >> 5) != 7)
		return server_id(skb, off + 7, id) ? QUIC_CID : QUIC_SHORT;
	return QUIC_HASH;
}

/* new_flow serves the first datagram of a flow to a service: it picks the
 * target, creates the flow's entries and forwards the datagram. A TCP flow
 * starts in the embryonic map, or, picked up mid-connection (midflow), in
 * the established one. */
static __always_inline int new_flow(struct __sk_buff *skb, const struct pkt *p, union flow_key *key, bool midflow, bool v6)
{
	struct svc_val *s = service(p, v6);
	if (!s)
		return TCX_NEXT;
	__u32 id = s->id, flags = s->flags, base = s->base;
	bool dsr = flags & SVC_DSR;
	if (acl_refuses(p, id, flags, v6))
		return refuse(id, STAT_ACL, p->bytes);

	void *t = NULL;
	if (flags & SVC_QUIC) {
		/* The server ID in the connection ID names the target, whatever
		 * the client's address: a connection that moved keeps it. */
		struct quic_key qk = {.svc = id};
		bool shorthdr = false;
		int route = quic_classify(skb, p, s->quic_len, &qk.id, &shorthdr);
		if (route == QUIC_BAD_VERSION)
			return refuse(id, STAT_QUIC_BAD_VERSION, p->bytes);
		if (route == QUIC_SHORT)
			return refuse(id, STAT_QUIC_SHORT, p->bytes);
		if (route == QUIC_CID) {
			t = bpf_map_lookup_elem(MAP(l4lb_quic, v6), &qk);
			if (!t)
				route = QUIC_UNKNOWN;
			else if (shorthdr)
				count(id, STAT_QUIC_MIGRATION, 0);
		}
		count(id, route == QUIC_CID ? STAT_QUIC_CID : route == QUIC_UNKNOWN ? STAT_QUIC_UNKNOWN : STAT_QUIC_HASH, p->bytes);
	}
	if (!t) {
		__u64 h = (flags & SVC_STICKY) ? source_hash(p, v6) : flow_hash(p, v6);
		__u32 slot = base + (__u32)(h % MAGLEV_SIZE);
		t = bpf_map_lookup_elem(MAP(l4lb_tables, v6), &slot);
	}
	if (!t || *val_port(t, v6) == 0) /* a slot has the flow value's head */
		return refuse(id, STAT_NO_TARGET, p->bytes);
	struct endpoint to = {};
	copy_addr(to.addr, t, v6);
	to.port = *val_port(t, v6);

	/* The target-side entry maps target, client, target port, client port
	 * back to the listener address; the client-side one maps the 5-tuple
	 * to the target. */
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&l4lb_scratch, &zero);
	if (!sc)
		return TCX_NEXT;
	__builtin_memset(sc, 0, sizeof(*sc));
	__u64 now = bpf_ktime_get_coarse_ns();
	if (v6) {
		copy_addr(sc->rkey.v6.saddr, to.addr, true);
		copy_addr(sc->rkey.v6.daddr, p->saddr, true);
		sc->rkey.v6.sport = to.port;
		sc->rkey.v6.dport = p->sport;
	} else {
		sc->rkey.v4.saddr = to.addr[0];
		sc->rkey.v4.daddr = p->saddr[0];
		sc->rkey.v4.sport = to.port;
		sc->rkey.v4.dport = p->sport;
	}
	copy_addr(val_addr(&sc->rval), p->daddr, v6);
	*val_port(&sc->rval, v6) = p->dport;
	*val_svc(&sc->rval, v6) = id | REPLY_FLAG;
	*val_last(&sc->rval, v6) = now;
	copy_addr(val_addr(&sc->fval), to.addr, v6);
	*val_port(&sc->fval, v6) = to.port;
	*val_svc(&sc->fval, v6) = id;
	*val_last(&sc->fval, v6) = now;

	if (dsr) {
		/* One entry, client side; a TCP flow starts established. */
		*val_svc(&sc->fval, v6) = id | DSR_FLAG;
		if (bpf_map_update_elem(MAP(l4lb_flows, v6), key, &sc->fval, BPF_ANY) != 0)
			return refuse(id, STAT_FULL, p->bytes);
		count(id, STAT_NEW_FLOW, p->bytes);
		if (midflow)
			count(id, STAT_MIDFLOW, 0);
		count(id, STAT_FORWARD, p->bytes);
		return encap(skb, p, to.addr, s, v6);
	}

	void *flows = MAP(l4lb_flows, v6);
	if (cfg_proto == PROTO_TCP) {
		/* A TCP flow starts in the embryonic map; a live established
		 * flow of another listener on the same target-side tuple is a
		 * collision, a closed one gives way (its port was reused). */
		void *old = bpf_map_lookup_elem(flows, &sc->rkey);
		if (old && !(*val_svc(old, v6) & CLOSED_FLAG))
			return refuse(id, STAT_COLLIDE, p->bytes);
		if (old)
			bpf_map_delete_elem(flows, &sc->rkey);
		if (!midflow)
			flows = MAP(l4lb_syn, v6);
	}
	/* The reply entry first, and only if no other flow holds that
	 * target-side tuple: then replies can never go to the wrong client. */
	if (bpf_map_update_elem(flows, &sc->rkey, &sc->rval, BPF_NOEXIST) == 0) {
		if (bpf_map_update_elem(flows, key, &sc->fval, BPF_ANY) != 0) {
			bpf_map_delete_elem(flows, &sc->rkey);
			return refuse(id, STAT_FULL, p->bytes);
		}
		count(id, STAT_NEW_FLOW, p->bytes);
		if (midflow)
			count(id, STAT_MIDFLOW, 0);
	} else {
		void *old = bpf_map_lookup_elem(flows, &sc->rkey);
		if (!old)
			return refuse(id, STAT_FULL, p->bytes);
		/* The same flow, made on another CPU a moment ago (or whose
		 * client-side entry was evicted), or another flow's. */
		if (!same_addr(val_addr(old), val_addr(&sc->rval), v6) || *val_port(old, v6) != *val_port(&sc->rval, v6) ||
		    (*val_svc(old, v6) & (REPLY_FLAG | SVC_MASK)) != *val_svc(&sc->rval, v6))
			return refuse(id, STAT_COLLIDE, p->bytes);
		bpf_map_update_elem(flows, key, &sc->fval, BPF_ANY);
	}
	count(id, STAT_FORWARD, p->bytes);
	return rewrite(skb, p, v6, p->off_daddr, p->daddr, p->off_dport, p->dport, &to);
}

/* reverse_key is the key of a flow's other entry. From the client side's
 * key (client, listener) and value (target): target, client, target port,
 * client port. From the target side's key (target, client) and value
 * (listener): client, listener, client port, listener port. */
static __always_inline void reverse_key(union flow_key *r, const union flow_key *k, void *v, bool reply, bool v6)
{
	__builtin_memset(r, 0, sizeof(*r));
	if (v6) {
		copy_addr(r->v6.saddr, reply ? k->v6.daddr : val_addr(v), true);
		copy_addr(r->v6.daddr, reply ? val_addr(v) : k->v6.saddr, true);
		r->v6.sport = reply ? k->v6.dport : *val_port(v, true);
		r->v6.dport = reply ? *val_port(v, true) : k->v6.sport;
	} else {
		r->v4.saddr = reply ? k->v4.daddr : *val_addr(v);
		r->v4.daddr = reply ? *val_addr(v) : k->v4.saddr;
		r->v4.sport = reply ? k->v4.dport : *val_port(v, false);
		r->v4.dport = reply ? *val_port(v, false) : k->v4.sport;
	}
}

/* find_flow looks a TCP key up in the established map, then in the
 * embryonic one (setting *embryonic). */
static __always_inline void *find_flow(const union flow_key *k, bool v6, bool *embryonic)
{
	*embryonic = false;
	void *v = bpf_map_lookup_elem(MAP(l4lb_flows, v6), k);
	if (v || cfg_proto != PROTO_TCP)
		return v;
	v = bpf_map_lookup_elem(MAP(l4lb_syn, v6), k);
	*embryonic = v != NULL;
	return v;
}

/* tcp_state follows a TCP flow from one of its segments: v is the entry of
 * the segment's direction (key k), r the key of the other. A RST closes the
 * flow; a FIN marks its direction, and closes the flow if the other
 * direction sent one too. It returns the flags the flow had before. */
static __always_inline __u16 tcp_state(const struct pkt *p, void *v, const union flow_key *r, bool embryonic, bool v6)
{
	__u16 was = *val_svc(v, v6);
	if (!(p->flags & (TCP_RST | TCP_FIN)))
		return was;
	void *o = bpf_map_lookup_elem(embryonic ? MAP(l4lb_syn, v6) : MAP(l4lb_flows, v6), r);
	__u16 mark = FIN_FLAG;
	if ((p->flags & TCP_RST) || (o && (*val_svc(o, v6) & FIN_FLAG)))
		mark |= CLOSED_FLAG;
	*val_svc(v, v6) |= mark;
	if (o && (mark & CLOSED_FLAG))
		*val_svc(o, v6) |= CLOSED_FLAG;
	return was;
}

/* promote moves a flow whose client completed the handshake from the
 * embryonic map to the established one: both entries. */
static __always_inline void promote(const union flow_key *k, void *v, const union flow_key *r, __u16 svc, bool v6)
{
	void *syn = MAP(l4lb_syn, v6), *est = MAP(l4lb_flows, v6);
	void *o = bpf_map_lookup_elem(syn, r);
	if (!o)
		return; /* the target side was evicted: the flow ends as embryonic */
	if (bpf_map_update_elem(est, r, o, BPF_ANY) || bpf_map_update_elem(est, k, v, BPF_ANY))
		return;
	bpf_map_delete_elem(syn, k);
	bpf_map_delete_elem(syn, r);
	count(svc, STAT_PROMOTE, 0);
}

/* target_reset counts a RST from a target, for passive health. */
static __always_inline void target_reset(const struct pkt *p, bool embryonic, bool v6)
{
	struct slot6 k = {};
	copy_addr(k.addr, p->saddr, v6);
	if (v6)
		k.port = p->sport;
	else
		((struct slot4 *)&k)->port = p->sport;
	struct target_stat *st = bpf_map_lookup_elem(MAP(l4lb_targets, v6), &k);
	if (!st)
		return;
	if (embryonic)
		__sync_fetch_and_add(&st->syn_rst, 1);
	else
		__sync_fetch_and_add(&st->rst, 1);
}

static __always_inline int handle_family(struct __sk_buff *skb, bool egress, bool v6)
{
	struct pkt p = {};
	if (!parse(skb, &p, v6))
		return TCX_NEXT;
	if (egress ? !port_in(PORTS_TARGETS, p.sport) : !port_in(PORTS_LISTENERS, p.dport))
		return TCX_NEXT;
	bool tcp = cfg_proto == PROTO_TCP;
	union flow_key key, rkey;
	flow_key(&key, &p, v6);
	/* An established flow: client to target, or a reply (its entry is
	 * marked), target to client. One lookup serves both; each side acts
	 * on its own direction only. */
	bool embryonic;
	void *v = find_flow(&key, v6, &embryonic);
	struct endpoint to = {};
	if (egress) {
		if (!v || !(*val_svc(v, v6) & REPLY_FLAG))
			return TCX_NEXT;
		__u16 svc = touch(v, &to, v6) & SVC_MASK;
		if (tcp) {
			reverse_key(&rkey, &key, v, true, v6);
			__u16 was = tcp_state(&p, v, &rkey, embryonic, v6);
			if ((p.flags & TCP_RST) && !(was & CLOSED_FLAG)) {
				count(svc, STAT_TARGET_RST, 0);
				target_reset(&p, embryonic, v6);
			}
		}
		count(svc, STAT_REPLY, p.bytes);
		return rewrite(skb, &p, v6, p.off_saddr, p.saddr, p.off_sport, p.sport, &to);
	}
	bool syn = tcp && (p.flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN)) == TCP_SYN;
	if (v && tcp && syn && (*val_svc(v, v6) & (REPLY_FLAG | CLOSED_FLAG)) == CLOSED_FLAG) {
		/* A new connection on a closed flow's tuple: start over. */
		reverse_key(&rkey, &key, v, false, v6);
		void *m = embryonic ? MAP(l4lb_syn, v6) : MAP(l4lb_flows, v6);
		bpf_map_delete_elem(m, &rkey);
		bpf_map_delete_elem(m, &key);
		v = NULL;
	}
	if (!v) {
		if (tcp && (p.flags & TCP_RST))
			return TCX_NEXT; /* nothing to reset here: the stack drops it */
		return new_flow(skb, &p, &key, tcp && !syn, v6);
	}
	if (*val_svc(v, v6) & REPLY_FLAG)
		return TCX_NEXT;
	__u16 flags = touch(v, &to, v6), svc = flags & SVC_MASK;
	if (flags & DSR_FLAG) {
		const struct svc_val *s = dsr_service(&p, v6);
		if (!s)
			return TCX_NEXT; /* the service no longer forwards by DSR */
		if (tcp && (p.flags & (TCP_RST | TCP_FIN))) {
			*val_svc(v, v6) |= FIN_FLAG | CLOSED_FLAG;
			if ((p.flags & TCP_RST) && !(flags & CLOSED_FLAG))
				count(svc, STAT_CLIENT_RST, 0);
		}
		count(svc, STAT_FORWARD, p.bytes);
		return encap(skb, &p, to.addr, s, v6);
	}
	if (tcp) {
		reverse_key(&rkey, &key, v, false, v6);
		__u16 was = tcp_state(&p, v, &rkey, embryonic, v6);
		if ((p.flags & TCP_RST) && !(was & CLOSED_FLAG))
			count(svc, STAT_CLIENT_RST, 0);
		else if (embryonic && (p.flags & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_ACK)
			promote(&key, v, &rkey, svc, v6);
	}
	count(svc, STAT_FORWARD, p.bytes);
	return rewrite(skb, &p, v6, p.off_daddr, p.daddr, p.off_dport, p.dport, &to);
}

/* One subprogram per direction and family, each with a stack frame of its
 * own. */
#define HANDLER(name, egress, v6)                                                \
	static __attribute__((noinline)) int name(struct __sk_buff *skb)            \
	{                                                                        \
		return handle_family(skb, egress, v6);                               \
	}
HANDLER(in4, false, false)
HANDLER(in6, false, true)
HANDLER(out4, true, false)
HANDLER(out6, true, true)

static __always_inline int handle(struct __sk_buff *skb, bool egress)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (data + ETH_HLEN > end)
		return TCX_NEXT;
	__u16 proto = *(__u16 *)(data + 12);
	if (proto == bpf_htons(ETH_P_IP))
		return egress ? out4(skb) : in4(skb);
	if (proto == bpf_htons(ETH_P_IPV6))
		return egress ? out6(skb) : in6(skb);
	return TCX_NEXT;
}

SEC("tcx/ingress")
int l4lb_in(struct __sk_buff *skb) { return handle(skb, false); }

SEC("tcx/egress")
int l4lb_out(struct __sk_buff *skb) { return handle(skb, true); }
