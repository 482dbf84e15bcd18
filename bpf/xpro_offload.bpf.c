// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * xpro_offload: the reduced program of the `offload` backend.
 *
 * It runs on the NIC (XDP hardware mode) in front of the full program
 * (xpro.bpf.c, driver mode on the same device), builds the full program's
 * flow keys (its parser, the source masked to the configured prefix), and
 * only enforces a drop set
 * that the daemon computes from the full program's state: the destinations
 * closed to unknown sources (with the known sources of each, which pass),
 * the (source, destination) flows over T_F1 and the destinations that drop
 * every source.  Everything else passes on to the full program, which
 * counts it and decides.
 *
 * It stays inside what NIC offload accepts (Netronome nfp, the one upstream
 * XDP offload driver; see docs/backends.rst for the source of each rule):
 *   - maps: BPF_MAP_TYPE_HASH and BPF_MAP_TYPE_ARRAY only, no map flags;
 *     no global data (.data/.bss/.rodata need direct map-value access),
 *     no LPM trie, no ring buffer, no per-CPU maps, no spin locks;
 *   - helpers: bpf_map_lookup_elem() only (the set the checker allows is
 *     lookup/update/delete); no clock, no tail call, no bpf_loop;
 *   - map values are never written with plain stores (the nfp verifier
 *     refuses them): counters use atomic adds whose result is unused
 *     (BPF_ATOMIC | BPF_ADD without BPF_FETCH, the nfp "xadd");
 *   - no backward jumps (the parser's loops are unrolled) and no
 *     bpf-to-bpf calls: everything is inlined, the instruction count is
 *     bounded (tests/kernel/test_offload.py checks all of this on the
 *     compiled object).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xpro_shared.h"
#include "parsing.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Verdict reasons: the index into off_stats (xpro.backends.offload.OffReason). */
#define XPRO_OFF_R_PASS 0      /* no drop entry matched: on to the full program */
#define XPRO_OFF_R_NON_IP 1    /* not IP: passed */
#define XPRO_OFF_R_MALFORMED 2 /* malformed IP: passed, the full program judges it */
#define XPRO_OFF_R_FLOW 3      /* (source, destination) in drop_flows: dropped */
#define XPRO_OFF_R_DST 4       /* destination in drop_dsts: dropped */
#define XPRO_OFF_R_CLOSED 5    /* destination in closed_dsts, source not known: dropped */
#define XPRO_OFF_R_MAX 6

#ifndef XPRO_OFF_FLOWS_MAX
#define XPRO_OFF_FLOWS_MAX (1 << 16)
#endif
#ifndef XPRO_OFF_DSTS_MAX
#define XPRO_OFF_DSTS_MAX (1 << 12)
#endif
#ifndef XPRO_OFF_KNOWN_MAX
#define XPRO_OFF_KNOWN_MAX (1 << 16)
#endif

/* The program's configuration: one entry, written by the daemon. */
struct xpro_off_cfg {
	__u32 dst_mode;    /* XPRO_DST_*: how the destination key is built */
	__u32 src_mask4;   /* the flow key's source prefix, as the full program's */
	__u32 src_mask6[4]; /* struct xpro_config (network order) */
};

/* What a drop entry has dropped (atomic adds only; the daemon reads it to
 * see that a dropped source is still sending, since the full program
 * behind the NIC never sees those packets). */
struct xpro_off_hit {
	__u64 packets;
	__u64 bytes;
};

_Static_assert(sizeof(struct xpro_flow_key) == 36, "xpro_flow_key layout");
_Static_assert(sizeof(struct xpro_off_hit) == 16, "xpro_off_hit layout");
_Static_assert(sizeof(struct xpro_off_cfg) == 24, "xpro_off_cfg layout");

/* (source, destination key) flows to drop: the full program's T_F1 verdict. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XPRO_OFF_FLOWS_MAX);
	__type(key, struct xpro_flow_key);
	__type(value, struct xpro_off_hit);
} drop_flows SEC(".maps");

/* Destination keys to drop: the full program's T_F2 verdict. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XPRO_OFF_DSTS_MAX);
	__type(key, struct xpro_dst_key);
	__type(value, struct xpro_off_hit);
} drop_dsts SEC(".maps");

/* Destination keys closed to unknown sources (docs/semantics.rst, "Closed
 * destinations and known clients"): the full program's closed check.  The
 * daemon counts each entry's drops back into the destination's
 * closed-drops record and aggregate, as the full program would have. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XPRO_OFF_DSTS_MAX);
	__type(key, struct xpro_dst_key);
	__type(value, struct xpro_off_hit);
} closed_dsts SEC(".maps");

/* The (source, destination key) pairs of the full program's known table
 * (clients and heavy sources; the value is 1) for the destinations in
 * closed_dsts: they pass the closed check here and are judged behind (or by
 * drop_flows), as the full program judges them. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XPRO_OFF_KNOWN_MAX);
	__type(key, struct xpro_flow_key);
	__type(value, __u32);
} known_pairs SEC(".maps");

/* Verdict counters by reason (a plain array: the NIC has no per-CPU maps). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XPRO_OFF_R_MAX);
	__type(key, __u32);
	__type(value, struct xpro_stat);
} off_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xpro_off_cfg);
} off_cfg SEC(".maps");

static __always_inline void off_count(__u32 reason, __u64 bytes)
{
	struct xpro_stat *s = bpf_map_lookup_elem(&off_stats, &reason);

	if (s) {
		__sync_fetch_and_add(&s->packets, 1);
		__sync_fetch_and_add(&s->bytes, bytes);
	}
}

static __always_inline int off_drop(struct xpro_off_hit *h, __u32 reason, __u64 bytes)
{
	__sync_fetch_and_add(&h->packets, 1);
	__sync_fetch_and_add(&h->bytes, bytes);
	off_count(reason, bytes);
	return XDP_DROP;
}

SEC("xdp")
int xpro_offload(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 pkt_len = (__u64)(data_end - data);
	struct xpro_flow_key key __attribute__((aligned(8)));
	struct xpro_off_cfg *cfg;
	struct xpro_off_hit *h;
	__u32 zero = 0;
	__u32 dst_mode;
	int ipv6 = 0;
	int rc;

	cfg = bpf_map_lookup_elem(&off_cfg, &zero);
	dst_mode = cfg ? cfg->dst_mode : XPRO_DST_ADDR;

	rc = parse_packet_af(data, data_end, pkt_len, dst_mode, &key, &ipv6);
	if (rc == PARSE_NON_IP) {
		off_count(XPRO_OFF_R_NON_IP, pkt_len);
		return XDP_PASS;
	}
	if (rc == PARSE_MALFORMED) {
		off_count(XPRO_OFF_R_MALFORMED, pkt_len);
		return XDP_PASS;
	}

	/* The full program's flow key: the source masked to its prefix (the
	 * drop set's and the known pairs' keys are its keys). */
	if (cfg)
		mask_source(&key, ipv6, cfg->src_mask6, cfg->src_mask4);

	/* Closed first, as in the full program: an unknown source's packet is
	 * a closed drop there (not its flow's), whatever its own rate. */
	h = bpf_map_lookup_elem(&closed_dsts, &key.dst);
	if (h && !bpf_map_lookup_elem(&known_pairs, &key))
		return off_drop(h, XPRO_OFF_R_CLOSED, pkt_len);
	h = bpf_map_lookup_elem(&drop_flows, &key);
	if (h)
		return off_drop(h, XPRO_OFF_R_FLOW, pkt_len);
	h = bpf_map_lookup_elem(&drop_dsts, &key.dst);
	if (h)
		return off_drop(h, XPRO_OFF_R_DST, pkt_len);

	off_count(XPRO_OFF_R_PASS, pkt_len);
	return XDP_PASS;
}
