/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Structures shared between the XDP program and userspace.
 *
 * This header is the single source of truth for every key, value, event and
 * configuration layout.  The Python side (xpro.layout) declares the same
 * structures as numpy dtypes and a test (tests/kernel/test_layout.py) checks
 * both against the BTF of the compiled object, field by field; every
 * constant here (#define XPRO_* and enum) is checked against its Python twin
 * by tests/unit/test_shared_constants.py.
 *
 * Ownership (docs/semantics.rst, "Record ownership"): every field of a flow
 * or destination record is written only from kernel context.  The XDP
 * program counts with one atomic add per packet; the daemon never writes a
 * record from userspace but hands batches of deltas to the control program
 * (xpro_apply), which applies them in the kernel with atomic adds and a
 * generation check.  The sync's own baseline lives in fields the packet path
 * never reads.  So a sync can never lose or double a packet counted while it
 * runs.
 */
#ifndef XPRO_SHARED_H
#define XPRO_SHARED_H

#include <linux/types.h>

/* Destination key modes (config.dst_mode). */
#define XPRO_DST_ADDR 0       /* key on the destination address only */
#define XPRO_DST_ADDR_PORT 1  /* address, L4 protocol and destination port */

/* Verdict modes (config.mode and dst_policy values). */
#define XPRO_MODE_ENFORCE 0
#define XPRO_MODE_MONITOR 1

/* Policy for malformed IP packets (config.malformed_policy). */
#define XPRO_MALFORMED_DROP 0
#define XPRO_MALFORMED_PASS 1

/* The key pad of a destination's closed-drops record (struct xpro_dst_key):
 * a parsed packet always has pad 0, so that key is no real flow's. */
#define XPRO_DST_PAD_CLOSED 1
/* In XPRO_DST_ADDR_PORT mode, the key of an address's own aggregate (every
 * port and protocol of the address: port 0, proto 0), a destination record
 * in `dsts` beside the per-(address, port, protocol) ones; and the key pad of
 * that aggregate's closed-drops record (PAD_ADDR | PAD_CLOSED).  No packet's
 * key has either (docs/semantics.rst, "Address aggregates"). */
#define XPRO_DST_PAD_ADDR 2
#define XPRO_DST_PAD_ADDR_CLOSED 3

/* Bounds of the parser. */
#define XPRO_MAX_VLAN 2       /* 802.1Q / 802.1ad tags walked */
#define XPRO_MAX_EXTHDR 8     /* IPv6 extension headers walked */

/*
 * Verdict reasons: the index into the per-CPU `stats` array.  Every packet
 * the program sees is counted under exactly one reason.
 */
enum xpro_reason {
	XPRO_R_PASS = 0,        /* passed every check */
	XPRO_R_NON_IP = 1,      /* not IPv4/IPv6 (ARP, LLDP, ...): passed */
	XPRO_R_ALLOW = 2,       /* source in the allow list: passed */
	XPRO_R_DENY = 3,        /* source in the deny list: dropped */
	XPRO_R_MALFORMED = 4,   /* truncated or malformed IP: malformed_policy */
	XPRO_R_SRC_RATE = 5,    /* over T_F1 (enforce): dropped */
	XPRO_R_DST_RATE = 6,    /* over T_F2 (enforce): dropped */
	XPRO_R_MON_SRC_RATE = 7,/* over T_F1 in monitor mode: passed */
	XPRO_R_MON_DST_RATE = 8,/* over T_F2 in monitor mode: passed */
	XPRO_R_DST_CLOSED = 9,  /* destination closed to unknown sources: dropped */
	XPRO_R_MON_DST_CLOSED = 10, /* the same in monitor mode: passed */
	XPRO_R_MAX = 11,
};

/*
 * Values of the `known` map: sources the daemon has classified for one
 * destination key (written only from userspace, read per packet only while
 * the destination is closed).
 */
enum xpro_known_class {
	XPRO_KNOWN_CLIENT = 1, /* a known client: served while the destination
				* is closed, counted in kc */
	XPRO_KNOWN_HEAVY = 2,  /* over T_F1 somewhere in the mesh: goes through
				* its flow record (its drops count as src_rate),
				* never served by a closed destination */
};

/* Ring-buffer event kinds. */
enum xpro_event_kind {
	XPRO_EV_SRC_OVERLOAD = 1, /* a (source, destination) flow over T_F1 */
	XPRO_EV_DST_OVERLOAD = 2, /* a destination over T_F2 */
};

/* The destination key: 20 bytes. In XPRO_DST_ADDR mode port and proto are 0. */
struct xpro_dst_key {
	__u8 addr[16];   /* IPv6, or IPv4-mapped IPv6 (::ffff:a.b.c.d) */
	__u16 port;      /* destination port, network byte order */
	__u8 proto;      /* IP protocol number */
	__u8 pad;        /* 0; XPRO_DST_PAD_* in the keys of records no packet has */
};

/*
 * The flow key: 36 bytes.  A destination's closed-drops record (the packets
 * dropped because it was closed to unknown sources) is the flow record
 * under src = 16 zero bytes, dst = the destination key with
 * pad = XPRO_DST_PAD_CLOSED: counted, reset, synced and merged like a flow.
 * It is kept inside the destination's record (struct xpro_dst, cd), not in
 * the flow table: the closed path then reads one record, not two.
 */
struct xpro_flow_key {
	__u8 src[16];
	struct xpro_dst_key dst;
};

/*
 * The per-proxy flow record (the paper's ts1', ts2', c').  The packet path
 * writes ts1, ts2, c (one atomic add a packet), warn_ts, gen and epoch; the
 * sync's baseline (base_c, base_gen) is written only by the control program
 * xpro_apply and never read per packet.  From it the sync derives the paper's
 * dc and mark: while gen == base_gen, dc = c - base_c and mark = 0; after a
 * local reset (gen moved on), mark = 1 and dc = c.
 */
struct xpro_flow {
	__u64 ts1;      /* ts1': start of the rate window (ns, TAI) */
	__u64 ts2;      /* ts2': last packet (ns, TAI) */
	__u64 c;        /* c': packets in the window, global up to the last sync */
	__u64 warn_ts;  /* last overload warning for this flow (ns) */
	__u64 base_c;   /* sync: c' right after its last update */
	__u32 gen;      /* incremented at every local reset (Algorithm 2, line 4) */
	__u32 base_gen; /* sync: gen at its last update */
	__u32 epoch;    /* the sync epoch in which this flow was last marked dirty */
	__u32 pad;
};

/*
 * The per-destination aggregate (ts1*, ts2*, c*), updated in O(1).  The
 * destination is closed (to unknown sources) while it is not idle and c*
 * is over T_F2 after T_T3.  The record also holds the destination's
 * closed-drops record (cd), so either may exist without the other: the
 * aggregate is absent while ts2 is 0, the closed-drops record while cd.ts2
 * is 0 (every field of an absent one is 0, as a new record's).
 */
struct xpro_dst {
	__u64 ts1;      /* ts1*: min ts1' of the admitted flows */
	__u64 ts2;      /* ts2*: last admitted (or closed-dropped) packet */
	__u64 c;        /* c*: packets admitted past the per-source check, plus
			 * packets dropped because the destination was closed */
	__u64 warn_ts;  /* last overload warning for this destination */
	__u64 kc;       /* packets of known clients in the window: counted per
			 * packet while closed, recomputed by the sync */
	struct xpro_flow cd; /* the closed-drops record */
};

/*
 * The filter of the known sources of the destinations of one slot (a Bloom
 * filter over the source, written only by the daemon, before the known
 * entries it covers): while a destination is closed, a source whose bits
 * are not both set in its slot's filter is unknown without a look-up in
 * the known table, whose buckets a random source would miss in the cache
 * (docs/performance.rst, "The known sources' filter").  Two bits a source,
 * from xpro_known_hash; destinations whose keys share a slot share its
 * filter (more bits set, never fewer).
 */
#define XPRO_KNOWN_FILTER_BITS 16384
#define XPRO_KNOWN_FILTER_WORDS 256 /* the bits in __u64 words: 2 KiB */

struct xpro_known_filter {
	__u64 w[XPRO_KNOWN_FILTER_WORDS];
};

/* The filter's hash of a flow key's source (its four words as the CPU
 * loads them); xpro.core.keys.known_hash is the same function. */
static __always_inline __u32 xpro_known_hash(const __u32 *src)
{
	__u32 h = src[0] * 0x9E3779B1U + src[1] * 0x85EBCA77U +
		  src[2] * 0xC2B2AE3DU + src[3] * 0x27D4EB2FU;

	h ^= h >> 16;
	h *= 0x85EBCA6BU;
	h ^= h >> 13;
	return h;
}

/* The filter slot's hash of a destination key (its five words as the CPU
 * loads them); xpro.core.keys.known_slot is the same function. */
static __always_inline __u32 xpro_known_slot(const __u32 *dst)
{
	__u32 h = dst[0] * 0x9E3779B1U + dst[1] * 0x85EBCA77U +
		  dst[2] * 0xC2B2AE3DU + dst[3] * 0x27D4EB2FU + dst[4] * 0x165667B1U;

	h ^= h >> 15;
	h *= 0x2C1B3C6DU;
	h ^= h >> 12;
	return h;
}

/* A CPU's cache of the coarse clock (maps.h: clock). */
struct xpro_clock {
	__u64 jiffies;
	__u64 ns;
};

/* Per-CPU verdict counters, one slot per enum xpro_reason. */
struct xpro_stat {
	__u64 packets;
	__u64 bytes;
};

/* LPM trie key for the allow/deny lists and the destination policy. */
struct xpro_lpm_key {
	__u32 prefixlen;  /* in bits, over the 16-byte (mapped) address */
	__u8 addr[16];
};

/* Ring-buffer overload warning. */
struct xpro_event {
	__u64 ts;                 /* when (ns, TAI) */
	__u32 kind;               /* enum xpro_event_kind */
	__u32 pad;
	struct xpro_flow_key key; /* for DST events, src is all zeros */
	__u32 pad2;
	__u64 c;                  /* count in the window */
	__u64 window;             /* window length (ns) */
};

/*
 * Run-time configuration, in the program's .data section.  Userspace changes
 * it through an mmap of the .data map: no reload, no state lost.
 */
struct xpro_config {
	__u64 t_t1;           /* idle time that resets a flow window (ns) */
	__u64 t_t2;           /* minimum window before the per-source check (ns) */
	__u64 t_t3;           /* minimum window before the per-destination check (ns) */
	__u64 warn_period;    /* at most one warning per flow per this (ns) */
	__u64 fake_now;       /* if non-zero: the clock (tests) */
	__s64 clock_offset;   /* added to the coarse monotonic clock: TAI (ns) */
	__u32 t_f1;           /* per-source rate limit (packets/s) */
	__u32 t_f2;           /* per-destination rate limit (packets/s) */
	__u32 mode;           /* XPRO_MODE_* default for every destination */
	__u32 dst_mode;       /* XPRO_DST_* */
	__u32 malformed_policy; /* XPRO_MALFORMED_* */
	__u32 n_allow;        /* entries in allow_src (0: lookup skipped) */
	__u32 n_deny;         /* entries in deny_src (0: lookup skipped) */
	__u32 n_dst_policy;   /* entries in dst_policy (0: lookup skipped) */
	__u32 events;         /* 0: no ring-buffer warnings */
	__u32 epoch;          /* sync epoch (0: no sync, nothing marked dirty) */
	/* The source prefix a flow is keyed on (docs/semantics.rst, "Source
	 * prefixes"), as masks over the key's source words, bytes in network
	 * order: all four words for an IPv6 packet (filter.source_prefix_v6),
	 * the last word (the IPv4 address of ::ffff:a.b.c.d) for an IPv4 one
	 * (filter.source_prefix_v4).  The allow and deny lists see the full
	 * address; the mask is applied after them. */
	__u32 src_mask6[4];
	__u32 src_mask4;
	/* T_F2 of an address aggregate (XPRO_DST_ADDR_PORT mode; packets/s). */
	__u32 t_f2_addr;
	/* known_slots has known_slot_mask + 1 entries (a power of two): a
	 * destination's filter of known sources is at xpro_known_slot(dst)
	 * & known_slot_mask.  0xffffffff (no slot in the array: look the
	 * known table up) until the daemon has written the filters and holds
	 * the link. */
	__u32 known_slot_mask;
	__u32 pad;
};

/*
 * One operation of the control program xpro_apply.  The daemon reads records
 * (READ), merges them with the master and hands back deltas: the kernel adds
 * them atomically, so packets counted in between are kept.
 */
#define XPRO_APPLY_FLOW 1      /* update a flow record */
#define XPRO_APPLY_DST 2       /* update a destination aggregate (c, kc, ts) */
#define XPRO_APPLY_READ 4      /* read a flow record (no change) */
#define XPRO_APPLY_CREATE 0x10 /* create the record if it does not exist */
#define XPRO_APPLY_DELETE 0x20 /* delete the record if nothing changed since */
#define XPRO_APPLY_KEEP_BASE 0x40 /* add c_delta, leave the sync baseline alone */

/* What the control program did with one operation (xpro_apply.result). */
enum xpro_apply_result {
	XPRO_APPLY_APPLIED = 0, /* done (READ: the record is in the entry) */
	XPRO_APPLY_RACED = 1,   /* a packet got there first: the record was reset
				 * (gen moved), created, or (DELETE) counted since
				 * the daemon read it; nothing changed, retry next
				 * round */
	XPRO_APPLY_MISSING = 2, /* no record (and no CREATE, or it failed) */
};

struct xpro_apply {
	__s64 c_delta;            /* in: added atomically to c' or c*; READ out: c' */
	__u64 ts1;                /* in: new ts1 (0: unchanged); READ out */
	__u64 ts2;                /* in: ts2 = max(ts2, this) (0: unchanged); READ out */
	__u64 base_c;             /* in: the flow's new baseline; DST: the delta
				   * added to kc (two's complement); READ out */
	__u32 op;                 /* XPRO_APPLY_* */
	__u32 gen;                /* in: the gen the daemon read; READ out */
	__s32 result;             /* out: enum xpro_apply_result */
	__u32 base_gen;           /* READ out */
	struct xpro_flow_key key; /* for DST operations only key.dst is used */
	__u32 pad;
};

#define XPRO_APPLY_MAX 8192 /* entries per xpro_apply run */

#endif /* XPRO_SHARED_H */
