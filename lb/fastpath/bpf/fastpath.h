/* Constants the kernel programs share with package fastpath (Go). The
 * flow hash's and the table size's are checked on real packets
 * (TestProgramMatchesUserSpaceHash and the table tests), the enums are
 * exported to Go by bpf2go. */
#ifndef L4LB_FASTPATH_H
#define L4LB_FASTPATH_H

/* The flow hash: FNV-1a, then the splitmix64 finalizer (pkg/flowhash). */
#define FLOWHASH_OFFSET64 0xcbf29ce484222325ULL
#define FLOWHASH_PRIME64 0x100000001b3ULL
#define FLOWHASH_MIX_MUL1 0xbf58476d1ce4e5b9ULL
#define FLOWHASH_MIX_MUL2 0x94d049bb133111ebULL
#define FLOWHASH_MIX_SHIFT1 30
#define FLOWHASH_MIX_SHIFT2 27
#define FLOWHASH_MIX_SHIFT3 31
#define PROTO_TCP 6
#define PROTO_UDP 17

/* Slots of a Maglev table (pkg/maglev.DefaultSize). */
#define MAGLEV_SIZE 65537

/* The constants below are enums, which bpf2go exports to Go from the
 * object's BTF (fastpath.c names each enum type once), so Go uses these
 * very values and no twin of them is kept. */

/* Counter kinds, per service, in l4lb_stats: key = service * STAT_KINDS + kind. */
enum stat_kind {
	STAT_FORWARD = 0,     /* datagrams client -> target (count, payload bytes) */
	STAT_REPLY = 1,       /* datagrams target -> client */
	STAT_NEW_FLOW = 2,    /* flows created */
	STAT_FULL = 3,        /* new flows refused: a flow map refused the entries */
	STAT_NO_TARGET = 4,   /* new flows refused: the table has no target */
	STAT_COLLIDE = 5,     /* new flows refused: another listener's flow holds the target-side tuple */
	STAT_ACL = 6,         /* new flows refused by the listener's allow or deny list */
	STAT_CLIENT_RST = 7,  /* TCP: resets from clients */
	STAT_TARGET_RST = 8,  /* TCP: resets from targets */
	STAT_PROMOTE = 9,     /* TCP: handshakes completed (flows moved to the established map) */
	STAT_MIDFLOW = 10,    /* TCP: flows picked up mid-connection (begun on another node) */
	/* QUIC services: new flows' first datagrams by how they were routed
	 * (pkg/quiclb's routes), and connections seen from a new address. */
	STAT_QUIC_HASH = 11,        /* Initial, 0-RTT: the flow hash */
	STAT_QUIC_CID = 12,         /* the server ID of the destination connection ID */
	STAT_QUIC_UNKNOWN = 13,     /* an ID of no target, or unroutable: the flow hash */
	STAT_QUIC_BAD_VERSION = 14, /* a version other than 1: dropped */
	STAT_QUIC_SHORT = 15,       /* too short for its connection ID: dropped */
	STAT_QUIC_MIGRATION = 16,   /* a short header by ID from a new address */
	STAT_KINDS = 18,
};

/* Keys of the port bitmaps. */
enum ports_key {
	PORTS_LISTENERS = 0,
	PORTS_TARGETS = 1,
};

/* Service flags. */
enum svc_flag {
	SVC_STICKY = 1, /* key on the source address alone */
	SVC_ALLOW = 2,  /* check the allow list (it does not admit the whole family) */
	SVC_DENY = 4,   /* check the deny list */
	SVC_DSR = 8,    /* direct server return: IPIP to the target, replies go direct */
	SVC_GUE = 16,   /* with SVC_DSR: IP in UDP (GUE variant 1) instead of IPIP */
	SVC_QUIC = 32,  /* QUIC: route by the server ID in the connection ID (pkg/quiclb) */
};

/* In a flow value's service field: the entry is a reply (target-side) one;
 * TCP: its direction sent a FIN; the flow is over (FIN both ways, or a RST)
 * and only lingers for stray segments; the flow is forwarded by direct
 * server return. The rest is the service id. */
enum flow_flag {
	REPLY_FLAG = 0x8000,
	FIN_FLAG = 0x4000,
	CLOSED_FLAG = 0x2000,
	DSR_FLAG = 0x1000,
	SVC_MASK = 0x0fff,
};

/* tcx verdicts. */
enum tcx_verdict {
	TCX_NEXT = -1, /* not ours: the next program, then the stack, sees it unchanged */
	TCX_PASS = 0,  /* rewritten: on into the stack */
	TCX_DROP = 2,
};

#endif
