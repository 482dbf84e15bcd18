// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * xpro: Algorithm 2 of the X-Pro paper (per-packet filter) at the XDP hook,
 * with the decisions of docs/semantics.rst.  xpro.model is the executable
 * specification of this file; tests/kernel checks they agree packet by
 * packet.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xpro_shared.h"
#include "parsing.h"
#include "maps.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Structures not referenced by a map's BTF: their sizes are pinned here and
 * in xpro.layout.SIZES (tests/kernel/test_layout.py checks the rest). */
_Static_assert(sizeof(struct xpro_event) == 72, "xpro_event layout");
_Static_assert(sizeof(struct xpro_apply) == 88, "xpro_apply layout");
_Static_assert(sizeof(struct xpro_dst) == 96, "xpro_dst layout");
_Static_assert(sizeof(struct xpro_known_filter) == 8 * XPRO_KNOWN_FILTER_WORDS,
	       "xpro_known_filter layout");
/* Two bit numbers from one 32-bit hash: h and h >> 16, each of log2(bits). */
_Static_assert(XPRO_KNOWN_FILTER_BITS == 64 * XPRO_KNOWN_FILTER_WORDS &&
	       XPRO_KNOWN_FILTER_BITS <= 65536 &&
	       !(XPRO_KNOWN_FILTER_BITS & (XPRO_KNOWN_FILTER_BITS - 1)), "filter size");

/* Run-time configuration.  Defaults match xpro.config; userspace rewrites the
 * whole struct through an mmap of the .data map. */
struct xpro_config cfg SEC(".data") = {
	.t_t1 = 10ULL * 1000000000ULL,
	.t_t2 = 1ULL * 1000000000ULL,
	.t_t3 = 1ULL * 1000000000ULL,
	.warn_period = 1ULL * 1000000000ULL,
	.fake_now = 0,
	.clock_offset = 0,
	.t_f1 = 100,
	.t_f2 = 10000,
	.t_f2_addr = 10000,
	.mode = XPRO_MODE_ENFORCE,
	.dst_mode = XPRO_DST_ADDR,
	.malformed_policy = XPRO_MALFORMED_DROP,
	.events = 1,
	/* source_prefix_v6 = 64, source_prefix_v4 = 32 */
	.src_mask6 = { 0xffffffff, 0xffffffff, 0, 0 },
	.src_mask4 = 0xffffffff,
	/* no filter of known sources until the daemon writes them: look up */
	.known_slot_mask = 0xffffffff,
};

/* What the program could not record, for the daemon (xpro.datapath.xdp reads
 * it through an mmap of .bss): flows that could not be marked dirty (a full
 * set: the sync then reads the whole table once), and overload warnings lost
 * to a full ring buffer.  One struct, so the offsets are fixed: the compiler
 * places separate globals of a section in an order of its own. */
struct xpro_bss {
	__u64 dirty_lost;
	__u64 events_lost;
};
struct xpro_bss counters SEC(".bss");

/*
 * a * b, as a 128-bit (hi, lo) pair, with a < 2^64 and b < 2^32: exact, no
 * division, no overflow (the BPF backend has no 128-bit multiply).
 */
static __always_inline void mul_u64_u32(__u64 a, __u32 b, __u64 *hi, __u64 *lo)
{
	__u64 pl = (a & 0xffffffffULL) * b;
	__u64 ph = (a >> 32) * b;
	__u64 mid = (pl >> 32) + (ph & 0xffffffffULL);

	*lo = (mid << 32) | (pl & 0xffffffffULL);
	*hi = (ph >> 32) + (mid >> 32);
}

/* count / (window ns) > limit packets/s, i.e. count * 1e9 > limit * window.
 * window > 0 (the callers checked window > T_T2 or T_T3 >= 0). */
static __always_inline int rate_exceeds(__u64 count, __u64 window, __u32 limit)
{
	__u64 lh, ll, rh, rl;

	mul_u64_u32(count, 1000000000U, &lh, &ll);
	mul_u64_u32(window, limit, &rh, &rl);
	return lh > rh || (lh == rh && ll > rl);
}

static __always_inline void count(__u32 reason, __u64 bytes)
{
	struct xpro_stat *s = bpf_map_lookup_elem(&stats, &reason);

	if (s) {
		s->packets += 1;
		s->bytes += bytes;
	}
}

static __always_inline void warn(__u32 kind, struct xpro_flow_key *key,
				 __u64 now, __u64 c, __u64 window)
{
	struct xpro_event *ev;

	if (!cfg.events)
		return;
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		/* the daemon is behind: drop the warning, not the state */
		__sync_fetch_and_add(&counters.events_lost, 1);
		return;
	}
	ev->ts = now;
	ev->kind = kind;
	ev->pad = 0;
	__builtin_memcpy(&ev->key, key, sizeof(*key));
	if (kind == XPRO_EV_DST_OVERLOAD)
		__builtin_memset(ev->key.src, 0, sizeof(ev->key.src));
	ev->c = c;
	ev->window = window;
	bpf_ringbuf_submit(ev, 0);
}

/* The mode for this destination: the dst_policy trie overrides cfg.mode.
 * Only looked up when a rate check fires, so it costs nothing otherwise. */
static __always_inline __u32 mode_for(struct xpro_flow_key *key)
{
	if (cfg.n_dst_policy) {
		struct xpro_lpm_key lk = { .prefixlen = 128 };
		__u32 *m;

		__builtin_memcpy(lk.addr, key->dst.addr, 16);
		m = bpf_map_lookup_elem(&dst_policy, &lk);
		if (m)
			return *m;
	}
	return cfg.mode;
}

/* Returns 1 when a warning is due, and records that it was given. */
static __always_inline int warn_due(__u64 *warn_ts, __u64 now)
{
	if (*warn_ts && (__s64)(now - *warn_ts) < (__s64)cfg.warn_period)
		return 0;
	*warn_ts = now;
	return 1;
}

/* Once per flow per sync epoch: note the key for the next sync round. */
static __always_inline void mark_dirty(struct xpro_flow_key *key, __u32 epoch)
{
	__u32 one = 1;
	void *set = (epoch & 1) ? (void *)&dirty1 : (void *)&dirty0;

	if (bpf_map_update_elem(set, key, &one, BPF_ANY))
		__sync_fetch_and_add(&counters.dirty_lost, 1);
}

/* A stage's answer when the packet goes on to the next stage (XDP_* are >= 0). */
#define XPRO_NEXT -1

static __always_inline int verdict(__u32 reason, int action, __u64 pkt_len)
{
	count(reason, pkt_len);
	return action;
}

/*
 * The verdict of a rate rule that fired: the overload warning if one is due
 * on the record (warn_ts; NULL: no warning), then drop, or pass in monitor
 * mode, counted under the reason of the mode.
 */
static __always_inline int limit_verdict(struct xpro_flow_key *key, __u64 now,
					 __u64 pkt_len, __u64 *warn_ts, __u32 kind,
					 __u64 c, __u64 window, __u32 reason,
					 __u32 mon_reason)
{
	if (warn_ts && warn_due(warn_ts, now))
		warn(kind, key, now, c, window);
	if (mode_for(key) == XPRO_MODE_MONITOR)
		return verdict(mon_reason, XDP_PASS, pkt_len);
	return verdict(reason, XDP_DROP, pkt_len);
}

/* Parse the frame into key (with the full source; *ipv6: its family);
 * non-IP and malformed frames get their verdict. */
static __always_inline int parse_stage(struct xdp_md *ctx, __u64 pkt_len,
				       struct xpro_flow_key *key, int *ipv6)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int rc = parse_packet_af(data, data_end, pkt_len, cfg.dst_mode, key, ipv6);

	if (rc == PARSE_NON_IP)
		return verdict(XPRO_R_NON_IP, XDP_PASS, pkt_len);
	if (rc == PARSE_MALFORMED)
		return verdict(XPRO_R_MALFORMED,
			       cfg.malformed_policy == XPRO_MALFORMED_PASS ? XDP_PASS : XDP_DROP,
			       pkt_len);
	return XPRO_NEXT;
}

/* The allow and deny lists, before any rate rule (docs/semantics.rst);
 * skipped when empty.  An IPv6 packet from an IPv4-mapped address is not
 * looked up in the allow list: its IPv4 entries are for IPv4 packets, and
 * no host has such a source (RFC 4291 2.5.5.2). */
static __always_inline int lists_stage(struct xpro_flow_key *key, int ipv6, __u64 pkt_len)
{
	if (cfg.n_allow || cfg.n_deny) {
		struct xpro_lpm_key lk = { .prefixlen = 128 };
		__u32 w[4];

		__builtin_memcpy(lk.addr, key->src, 16);
		__builtin_memcpy(w, key->src, 16);
		int mapped = ipv6 && !w[0] && !w[1] && w[2] == bpf_htonl(0xffff);

		if (cfg.n_allow && !mapped && bpf_map_lookup_elem(&allow_src, &lk))
			return verdict(XPRO_R_ALLOW, XDP_PASS, pkt_len);
		if (cfg.n_deny && bpf_map_lookup_elem(&deny_src, &lk))
			return verdict(XPRO_R_DENY, XDP_DROP, pkt_len);
	}
	return XPRO_NEXT;
}

/*
 * Whether a record's window is over at now: idle for longer than T_T1
 * (line 4), or its last packet more than T_T1 ahead of now -- the clock was
 * stepped back, and judging that window would wait, unfiltered, for the
 * clock to catch up (docs/semantics.rst, "Clock and time").
 */
static __always_inline int window_over(__u64 now, __u64 ts2)
{
	__s64 idle = (__s64)(now - ts2);

	return idle > (__s64)cfg.t_t1 || idle < -(__s64)cfg.t_t1;
}

/*
 * A record of key created in epoch: marked in that epoch, and in the one
 * after it if a round moved on meanwhile (the insert may land after that
 * round read; the record keeps the older epoch, so its next packet marks
 * once more: one read more, never a count lost).
 */
static __always_inline void mark_created(struct xpro_flow_key *key, __u32 epoch)
{
	__u32 after = *(volatile __u32 *)&cfg.epoch;

	if (epoch)
		mark_dirty(key, epoch);
	if (after && after != epoch)
		mark_dirty(key, after);
}

/*
 * Algorithm 2, lines 4-11 on the existing record f of key: a new window
 * after T_T1 idle, then the count.  Sets *c, *ts1 and *started as
 * flow_count does.
 */
static __always_inline void flow_tick(struct xpro_flow *f, struct xpro_flow_key *key,
				      __u64 now, __u64 *c, __u64 *ts1, int *started)
{
	__u32 epoch;

	if (window_over(now, f->ts2)) {
		/* Line 4: idle longer than T_T1, a new window.  The new gen
		 * is the paper's mark (and dc = c) for the sync. */
		f->gen += 1;
		f->ts1 = now;
		f->c = 0;
		*started = 1;
	}
	/* Line 11, with an atomic add: CPUs share records, and the sync's
	 * deltas (xpro_apply) must never be lost against a packet. */
	*c = __sync_fetch_and_add(&f->c, 1) + 1;
	f->ts2 = now;
	*ts1 = f->ts1;
	/* The epoch as it is after the add: a round that moved to a new epoch
	 * and read this record before the add landed finds the flow marked in
	 * the new epoch, not taken for marked already in the one it ended
	 * (docs/semantics.rst, "Record ownership").  The add's result is used,
	 * so it is a fetch-add, fully ordered (lock xadd on x86, ldaddal or
	 * LL/SC with dmb on arm64): the load below cannot pass it. */
	epoch = *(volatile __u32 *)&cfg.epoch;
	if (f->epoch != epoch && epoch) {
		f->epoch = epoch;
		mark_dirty(key, epoch);
	}
}

/*
 * Algorithm 2, lines 1-11: count one packet into the flow record of key,
 * creating it, or starting a new window after T_T1 idle.  Sets *c (the count
 * with this packet), *ts1 (the window start) and *started (the window
 * started with this packet).  Returns the record, or NULL when this packet
 * created it (or it could not be kept): its window is empty, under any limit.
 */
static __always_inline struct xpro_flow *flow_count(struct xpro_flow_key *key, __u64 now,
						     __u64 *c, __u64 *ts1, int *started)
{
	struct xpro_flow *f = bpf_map_lookup_elem(&flows, key);
	__u32 epoch = cfg.epoch;

	if (!f) {
		struct xpro_flow nf = { .ts1 = now, .ts2 = now, .c = 1, .epoch = epoch };

		/* BPF_NOEXIST: if another CPU created it meanwhile, count
		 * into that record instead of overwriting it. */
		if (bpf_map_update_elem(&flows, key, &nf, BPF_NOEXIST) == 0) {
			mark_created(key, epoch);
		} else {
			/* NULL if evicted at once: the table is far too small */
			f = bpf_map_lookup_elem(&flows, key);
		}
		if (!f) {
			*c = 1;
			*ts1 = now;
			*started = 1;
			return NULL;
		}
	}
	flow_tick(f, key, now, c, ts1, started);
	return f;
}

/* The per-source stage: the flow record, then lines 12-16 (over T_F1 after
 * at least T_T2).  Hands the flow's window to the destination stage. */
static __always_inline int flow_stage(struct xpro_flow_key *key, __u64 now, __u64 pkt_len,
				      __u64 *ts1, int *started)
{
	struct xpro_flow *f;
	__u64 c;

	f = flow_count(key, now, &c, ts1, started);
	if (f && (__s64)(now - *ts1) > (__s64)cfg.t_t2 &&
	    rate_exceeds(c, now - *ts1, cfg.t_f1))
		return limit_verdict(key, now, pkt_len, &f->warn_ts, XPRO_EV_SRC_OVERLOAD,
				     c, now - *ts1, XPRO_R_SRC_RATE, XPRO_R_MON_SRC_RATE);
	return XPRO_NEXT;
}

/*
 * The class of key in the known table (0: an unknown source).  The filter
 * of the known sources of the destination's slot answers most unknown
 * sources before the look-up; it never hides a known one (the daemon sets
 * a source's bits before it writes its entry).  A slot out of the array
 * (a mask not set yet) has no filter: the table is looked up.
 */
static __always_inline __u32 known_class(struct xpro_flow_key *key)
{
	__u32 slot = xpro_known_slot((const __u32 *)&key->dst) & cfg.known_slot_mask;
	struct xpro_known_filter *kf = bpf_map_lookup_elem(&known_slots, &slot);
	__u32 h, b1, b2, *kn;

	if (kf) {
		h = xpro_known_hash((const __u32 *)key->src);
		b1 = h & (XPRO_KNOWN_FILTER_BITS - 1);
		b2 = (h >> 16) & (XPRO_KNOWN_FILTER_BITS - 1);
		if (!((kf->w[b1 >> 6] >> (b1 & 63)) & 1) ||
		    !((kf->w[b2 >> 6] >> (b2 & 63)) & 1))
			return 0;
	}
	kn = bpf_map_lookup_elem(&known, key);
	return kn ? *kn : 0;
}

/*
 * Whether the destination is closed to unknown sources: not idle, and its
 * aggregate over T_F2 after T_T3 (docs/semantics.rst).  Judged once per
 * packet, on the record as it was before the packet.
 */
static __always_inline int dst_closed(struct xpro_dst *d, __u64 now, __u32 limit)
{
	__u64 ts1s = d->ts1;

	return !window_over(now, d->ts2) &&
	       (__s64)(now - ts1s) > (__s64)cfg.t_t3 &&
	       rate_exceeds(d->c, now - ts1s, limit);
}

/* The key of the closed-drops record of key's destination: src 0, the
 * destination key with XPRO_DST_PAD_CLOSED in its pad.  Word stores, as
 * the parser builds keys (store forwarding). */
static __always_inline void closed_key(struct xpro_flow_key *ck, struct xpro_flow_key *key)
{
	const __u32 *k = (const __u32 *)key;
	__u32 *w = (__u32 *)ck;

	w[0] = 0;
	w[1] = 0;
	w[2] = 0;
	w[3] = 0;
	w[4] = k[4];
	w[5] = k[5];
	w[6] = k[6];
	w[7] = k[7];
	/* pad (byte 35): PAD_CLOSED, or PAD_ADDR_CLOSED for an address's key */
	w[8] = k[8] | ((__u32)XPRO_DST_PAD_CLOSED << 24);
}

/*
 * A packet of an unknown source to a closed destination (key: the packet's
 * flow key, or its address aggregate's): counted into the destination's
 * closed-drops record (d->cd, as flow_count counts a flow's, with no
 * per-source check) and into c*, then dropped as DST_CLOSED, with the
 * destination's overload warning.  No record of its own source is touched,
 * so a spoofed flood costs one hot record, not one per source.
 */
static __always_inline int closed_stage(struct xpro_flow_key *key, struct xpro_dst *d,
					__u64 now, __u64 pkt_len)
{
	struct xpro_flow_key ck __attribute__((aligned(8)));
	struct xpro_flow *f = &d->cd;
	__u64 c, ts1;
	int started;

	closed_key(&ck, key);
	/* No record yet (ts2 0): this packet creates it, its window's start
	 * set before ts2 publishes it.  Another CPU or the sync that did
	 * meanwhile wins, and this packet counts into theirs, as flow_count's
	 * insert does. */
	if (!f->ts2 && (__sync_val_compare_and_swap(&f->ts1, 0, now),
			__sync_val_compare_and_swap(&f->ts2, 0, now) == 0)) {
		__u32 epoch = cfg.epoch;

		__sync_fetch_and_add(&f->c, 1);
		f->epoch = epoch;
		mark_created(&ck, epoch);
	} else {
		flow_tick(f, &ck, now, &c, &ts1, &started);
		/* The sync removed the record in place (closed_remove) while
		 * this packet counted into it: a window with no start.  It
		 * starts with this packet; its baseline went with the rest, so
		 * the sync takes its whole count as new drops. */
		if (!f->ts1)
			__sync_val_compare_and_swap(&f->ts1, 0, now);
	}

	c = __sync_fetch_and_add(&d->c, 1) + 1;
	d->ts2 = now;
	return limit_verdict(key, now, pkt_len, &d->warn_ts, XPRO_EV_DST_OVERLOAD,
			     c, now - d->ts1, XPRO_R_DST_CLOSED, XPRO_R_MON_DST_CLOSED);
}

/*
 * Lines 18-25 in O(1), the count: one packet admitted past the per-source
 * check into the aggregate dk (docs/semantics.rst); d is its record at the
 * top of the packet (NULL if there was none: created here), ts1 and started
 * come from the flow stage.  Returns the record, NULL if it cannot be kept;
 * *cs: c* with this packet.
 */
static __always_inline struct xpro_dst *dst_count(struct xpro_dst_key *dk, struct xpro_dst *d,
						  __u64 now, __u64 ts1, int started,
						  __u64 *cs)
{
	if (!d) {
		/* A new destination is rare: create it, then take the common
		 * path so warnings have a record to rate-limit on. */
		struct xpro_dst nd = { .ts1 = ts1, .ts2 = now };

		bpf_map_update_elem(&dsts, dk, &nd, BPF_NOEXIST);
		d = bpf_map_lookup_elem(&dsts, dk);
		if (!d) /* cannot track it: fail open */
			return NULL;
	}
	if (!d->ts2) {
		/* A record with only its closed-drops record: the aggregate
		 * starts here, as a new record's, unless the sync created it
		 * meanwhile (as BPF_NOEXIST decides above). */
		if (__sync_val_compare_and_swap(&d->ts2, 0, now) == 0) {
			d->ts1 = ts1;
			d->c = 0;
			d->kc = 0;
		}
	} else if (window_over(now, d->ts2)) {
		/* the destination was idle: a new aggregate window */
		d->ts1 = now;
		d->c = 0;
		d->kc = 0;
	} else if (started && (__s64)(ts1 - d->ts1) < 0) {
		d->ts1 = ts1;
	}
	*cs = __sync_fetch_and_add(&d->c, 1) + 1;
	d->ts2 = now;
	return d;
}

/*
 * The check of an aggregate that counted the packet (key: the flow key
 * whose destination part is the aggregate's; limit: T_F2, or T_F2 of an
 * address); closed and cls come from the top of the packet.  An open
 * destination drops over the limit; a closed one serves its known clients
 * until their own total is over it, and drops a heavy source's packets
 * that got past its flow record.  cs: c* with this packet; kcs: kc with
 * it when the count already added it (0: added here).
 */
static __always_inline int dst_judge(struct xpro_flow_key *key, struct xpro_dst *d,
				     __u64 now, __u64 pkt_len, int closed, __u32 cls,
				     __u32 limit, __u64 cs, __u64 kcs)
{
	__u64 ts1s = d->ts1;

	if (closed) {
		if (cls != XPRO_KNOWN_CLIENT) /* heavy: never served while closed */
			return limit_verdict(key, now, pkt_len, NULL, 0, 0, 0,
					     XPRO_R_DST_CLOSED, XPRO_R_MON_DST_CLOSED);
		/* a known client: closed to it too once their total is over */
		cs = kcs ? kcs : __sync_fetch_and_add(&d->kc, 1) + 1;
	}
	if ((__s64)(now - ts1s) > (__s64)cfg.t_t3 && rate_exceeds(cs, now - ts1s, limit))
		return limit_verdict(key, now, pkt_len, &d->warn_ts, XPRO_EV_DST_OVERLOAD,
				     cs, now - ts1s, XPRO_R_DST_RATE, XPRO_R_MON_DST_RATE);
	return XPRO_NEXT;
}

/* The key of the address aggregate of key (addr+port mode): the source and
 * address, port 0, proto 0, pad XPRO_DST_PAD_ADDR.  Word stores. */
static __always_inline void address_key(struct xpro_flow_key *ak, struct xpro_flow_key *key)
{
	const __u32 *k = (const __u32 *)key;
	__u32 *w = (__u32 *)ak;

	w[0] = k[0];
	w[1] = k[1];
	w[2] = k[2];
	w[3] = k[3];
	w[4] = k[4];
	w[5] = k[5];
	w[6] = k[6];
	w[7] = k[7];
	w[8] = (__u32)XPRO_DST_PAD_ADDR << 24; /* port 0, proto 0, pad: byte 35 */
}

/*
 * bpf_ktime_get_coarse_ns(), called once per jiffy on each CPU: the coarse
 * clock moves only at the tick that moves jiffies on, and bpf_jiffies64()
 * is one load (the verifier inlines it) where the clock is a helper call,
 * about a tenth of a closed destination's drop (docs/performance.rst).
 * The tick moves jiffies first and the clock just after: a read in between
 * that finds the clock where this CPU last saw it is not kept for the
 * jiffy, and the next packet reads again.  (A CPU that saw no packet for
 * more than a tick and reads in that gap keeps the clock of the tick before
 * for one jiffy: one tick behind, as coarse as the clock is anyway.  Runs
 * on one CPU do not interleave: XDP, generic mode and test runs included,
 * runs with bottom halves off.  Only on PREEMPT_RT could a run preempted
 * between its read and its stores leave the value it read under a later
 * jiffy's number: behind by that preemption, until the next jiffy.)
 */
static __always_inline __u64 coarse_now(void)
{
	__u32 zero = 0;
	struct xpro_clock *k = bpf_map_lookup_elem(&clock, &zero);
	__u64 j = bpf_jiffies64(), ns;

	if (!k)
		return bpf_ktime_get_coarse_ns();
	if (k->jiffies != j) {
		ns = bpf_ktime_get_coarse_ns();
		if (ns != k->ns) {
			k->ns = ns;
			k->jiffies = j;
		}
		return ns;
	}
	return k->ns;
}

static __always_inline int filter(struct xdp_md *ctx, __u64 pkt_len)
{
	struct xpro_flow_key key __attribute__((aligned(8)));
	struct xpro_flow_key ak __attribute__((aligned(8)));
	struct xpro_dst *d, *a = NULL;
	__u64 now, ts1, cs = 0, a_cs = 0, a_kcs = 0;
	int started = 0;
	int closed = 0, a_closed = 0;
	__u32 cls = 0, a_cls = 0;
	int by_port = cfg.dst_mode == XPRO_DST_ADDR_PORT;
	int ipv6 = 0;
	int rc;

	rc = parse_stage(ctx, pkt_len, &key, &ipv6);
	if (rc != XPRO_NEXT)
		return rc;
	rc = lists_stage(&key, ipv6, pkt_len);
	if (rc != XPRO_NEXT)
		return rc;
	/* The lists judged the full address; the flow is the source's prefix. */
	mask_source(&key, ipv6, cfg.src_mask6, cfg.src_mask4);
	now = cfg.fake_now ? cfg.fake_now : coarse_now() + cfg.clock_offset;

	/* A closed destination first: unknown sources go no further. */
	d = bpf_map_lookup_elem(&dsts, &key.dst);
	if (d && dst_closed(d, now, cfg.t_f2)) {
		cls = known_class(&key);
		if (!cls) /* an unknown source */
			return closed_stage(&key, d, now, pkt_len);
		closed = 1;
	}
	/* addr+port: the address's own aggregate, judged the same way
	 * (docs/semantics.rst, "Address aggregates"). */
	if (by_port) {
		address_key(&ak, &key);
		a = bpf_map_lookup_elem(&dsts, &ak.dst);
		if (a && dst_closed(a, now, cfg.t_f2_addr)) {
			a_cls = known_class(&ak);
			if (!a_cls)
				return closed_stage(&ak, a, now, pkt_len);
			a_closed = 1;
		}
	}
	rc = flow_stage(&key, now, pkt_len, &ts1, &started);
	if (rc != XPRO_NEXT)
		return rc;
	/* The address's count first: it holds the packet whatever its key's
	 * verdict. */
	if (by_port) {
		a = dst_count(&ak.dst, a, now, ts1, started, &a_cs);
		if (a && a_closed && a_cls == XPRO_KNOWN_CLIENT)
			a_kcs = __sync_fetch_and_add(&a->kc, 1) + 1;
	}
	d = dst_count(&key.dst, d, now, ts1, started, &cs);
	if (!d) /* cannot track it: fail open */
		return verdict(XPRO_R_PASS, XDP_PASS, pkt_len);
	rc = dst_judge(&key, d, now, pkt_len, closed, cls, cfg.t_f2, cs, 0);
	if (rc != XPRO_NEXT)
		return rc;
	if (by_port && a) {
		rc = dst_judge(&ak, a, now, pkt_len, a_closed, a_cls, cfg.t_f2_addr, a_cs,
			       a_kcs);
		if (rc != XPRO_NEXT)
			return rc;
	}
	return verdict(XPRO_R_PASS, XDP_PASS, pkt_len);
}

SEC("xdp")
int xpro_xdp(struct xdp_md *ctx)
{
	return filter(ctx, (__u64)(ctx->data_end - ctx->data));
}

/* For interfaces with an MTU above one page (jumbo frames on veth/virtio):
 * headers are in the linear part, lengths are checked against the whole
 * multi-buffer frame. */
SEC("xdp.frags")
int xpro_xdp_frags(struct xdp_md *ctx)
{
	return filter(ctx, bpf_xdp_get_buff_len(ctx));
}

/*
 * The control program: applies the sync's batch (apply_buf[0..n), n in the
 * first four bytes of the test-run packet) in kernel context, with atomic
 * adds and a generation check, so no packet counted meanwhile is lost
 * (docs/semantics.rst, "Record ownership").  Run by the daemon with
 * BPF_PROG_TEST_RUN; returns the number of entries it looked at.  Never
 * attached to an interface.  Each operation returns its
 * enum xpro_apply_result.
 */
static __always_inline void max_store(__u64 *dst, __u64 v)
{
	if (v && (__s64)(v - *dst) > 0)
		*dst = v;
}

/*
 * The record the entry's key names, NULL if there is none: a flow's in the
 * flow table, a closed-drops record inside its destination's record (*d:
 * that record, NULL if there is none; *dk: its key).  An absent
 * closed-drops record (ts2 0) is returned too: the caller tells.
 */
static __always_inline struct xpro_flow *apply_record(struct xpro_apply *a,
						      struct xpro_dst_key *dk,
						      struct xpro_dst **d)
{
	struct xpro_dst *dd;

	*d = NULL;
	if (!(a->key.dst.pad & XPRO_DST_PAD_CLOSED))
		return bpf_map_lookup_elem(&flows, &a->key);
	__builtin_memcpy(dk, &a->key.dst, sizeof(*dk));
	dk->pad &= ~XPRO_DST_PAD_CLOSED;
	dd = bpf_map_lookup_elem(&dsts, dk);
	*d = dd;
	if (!dd)
		return NULL;
	return &dd->cd;
}

/* Whether the entry's key is a closed-drops record's. */
static __always_inline int apply_closed(struct xpro_apply *a)
{
	return a->key.dst.pad & XPRO_DST_PAD_CLOSED;
}

/* READ: copy a flow record into the entry. */
static __always_inline int apply_read(struct xpro_apply *a)
{
	struct xpro_dst_key dk;
	struct xpro_dst *d;
	struct xpro_flow *f = apply_record(a, &dk, &d);

	if (!f || (apply_closed(a) && !f->ts2))
		return XPRO_APPLY_MISSING;
	a->c_delta = (__s64)f->c;
	a->ts1 = f->ts1;
	a->ts2 = f->ts2;
	a->base_c = f->base_c;
	a->gen = f->gen;
	a->base_gen = f->base_gen;
	return XPRO_APPLY_APPLIED;
}

/* Create the closed-drops record of the entry (absent: d NULL, or its cd.ts2
 * 0), inside its destination's record, which is created without an
 * aggregate if there is none. */
static __always_inline int apply_closed_create(struct xpro_apply *a, struct xpro_dst_key *dk,
					       struct xpro_dst *d)
{
	struct xpro_flow *f;

	if (!(a->op & XPRO_APPLY_CREATE) || !a->ts2)
		return XPRO_APPLY_MISSING;
	if (!d) {
		struct xpro_dst nd = {
			.cd = { .ts1 = a->ts1, .ts2 = a->ts2, .c = (__u64)a->c_delta,
				.base_c = a->base_c },
		};

		if (bpf_map_update_elem(&dsts, dk, &nd, BPF_NOEXIST) == 0)
			return XPRO_APPLY_APPLIED;
		return XPRO_APPLY_RACED;
	}
	f = &d->cd;
	/* Filled first and published by ts2: a packet that comes meanwhile
	 * sees no record and creates its own, which wins the swap; the count
	 * added here is then taken back (merged next round), never counted
	 * twice nor into a window a packet reset. */
	f->ts1 = a->ts1;
	__sync_fetch_and_add(&f->c, a->c_delta);
	if (__sync_val_compare_and_swap(&f->ts2, 0, a->ts2) != 0) {
		__sync_fetch_and_sub(&f->c, a->c_delta);
		return XPRO_APPLY_RACED;
	}
	f->base_c = a->base_c;
	return XPRO_APPLY_APPLIED;
}

/* Remove the closed-drops record f of d: every field back to 0, ts2 last;
 * the whole record if its aggregate is absent too. */
static __always_inline void closed_remove(struct xpro_dst_key *dk, struct xpro_dst *d,
					  struct xpro_flow *f)
{
	if (!d->ts2 && bpf_map_delete_elem(&dsts, dk) == 0)
		return;
	f->ts1 = 0;
	f->c = 0;
	f->warn_ts = 0;
	f->base_c = 0;
	f->gen = 0;
	f->base_gen = 0;
	f->epoch = 0;
	f->ts2 = 0;
}

/* FLOW: add the delta to a flow record and set the sync's baseline, if its
 * gen is still the one the daemon read; or create, or delete it. */
static __always_inline int apply_flow(struct xpro_apply *a)
{
	struct xpro_dst_key dk;
	struct xpro_dst *d;
	struct xpro_flow *f = apply_record(a, &dk, &d);

	if (apply_closed(a) && (!f || !f->ts2))
		return apply_closed_create(a, &dk, d);
	if (!f) {
		struct xpro_flow nf = {
			.ts1 = a->ts1, .ts2 = a->ts2, .c = (__u64)a->c_delta,
			.base_c = a->base_c,
		};

		if (!(a->op & XPRO_APPLY_CREATE))
			return XPRO_APPLY_MISSING;
		/* NOEXIST: a packet may have created it meanwhile (then
		 * merge next round). */
		if (bpf_map_update_elem(&flows, &a->key, &nf, BPF_NOEXIST) == 0)
			return XPRO_APPLY_APPLIED;
		return XPRO_APPLY_RACED;
	}
	if (f->gen != a->gen)
		return XPRO_APPLY_RACED; /* reset here meanwhile: next round */
	if (a->op & XPRO_APPLY_DELETE) {
		/* only if no packet arrived since the daemon read it */
		if (f->ts2 != a->ts2)
			return XPRO_APPLY_RACED;
		if (d) {
			closed_remove(&dk, d, f);
			return XPRO_APPLY_APPLIED;
		}
		if (bpf_map_delete_elem(&flows, &a->key) == 0)
			return XPRO_APPLY_APPLIED;
		return XPRO_APPLY_RACED;
	}
	/* A cut (the merge's divide by r) is a negative delta.  One larger than
	 * the count is not for this record: the round read another, which the
	 * LRU evicted and a packet created again since (gen 0 again).  Next
	 * round, not a wrapped count (docs/semantics.rst, "Record ownership"). */
	if (a->c_delta < 0 && f->c < (__u64)0 - (__u64)a->c_delta)
		return XPRO_APPLY_RACED;
	__sync_fetch_and_add(&f->c, a->c_delta);
	if (a->ts1)
		f->ts1 = a->ts1;
	max_store(&f->ts2, a->ts2);
	if (!(a->op & XPRO_APPLY_KEEP_BASE)) {
		f->base_c = a->base_c;
		f->base_gen = a->gen;
	}
	return XPRO_APPLY_APPLIED;
}

/* DST: add the deltas to a destination aggregate (c_delta to c*, base_c to
 * kc); or create, or delete it.  An aggregate is absent from a record that
 * holds only a closed-drops record (ts2 0). */
static __always_inline int apply_dst(struct xpro_apply *a)
{
	struct xpro_dst *d = bpf_map_lookup_elem(&dsts, &a->key.dst);

	if (!d) {
		struct xpro_dst nd = {
			.ts1 = a->ts1, .ts2 = a->ts2, .c = (__u64)a->c_delta,
			.kc = a->base_c,
		};

		if (a->op & XPRO_APPLY_CREATE && a->ts2 &&
		    bpf_map_update_elem(&dsts, &a->key.dst, &nd, BPF_NOEXIST) == 0)
			return XPRO_APPLY_APPLIED;
		return XPRO_APPLY_MISSING;
	}
	if (!d->ts2) {
		/* Only its closed-drops record: the aggregate is created here,
		 * unless a packet started it meanwhile (its count then stands,
		 * and the next recompute writes the rest). */
		if (!(a->op & XPRO_APPLY_CREATE) || !a->ts2)
			return XPRO_APPLY_MISSING;
		if (__sync_val_compare_and_swap(&d->ts2, 0, a->ts2) != 0)
			return XPRO_APPLY_RACED;
		d->ts1 = a->ts1;
		__sync_fetch_and_add(&d->c, a->c_delta);
		__sync_fetch_and_add(&d->kc, a->base_c);
		return XPRO_APPLY_APPLIED;
	}
	if (a->op & XPRO_APPLY_DELETE) {
		if (d->ts2 != a->ts2)
			return XPRO_APPLY_RACED;
		if (!d->cd.ts2 && bpf_map_delete_elem(&dsts, &a->key.dst) == 0)
			return XPRO_APPLY_APPLIED;
		/* its closed-drops record stays: the aggregate only goes */
		d->ts1 = 0;
		d->c = 0;
		d->kc = 0;
		d->warn_ts = 0;
		d->ts2 = 0;
		return XPRO_APPLY_APPLIED;
	}
	/* The same for an aggregate a packet reset since the round read it
	 * (idle over T_T1): its c* and kc are not what the deltas were taken
	 * from.  The next recompute writes it. */
	if ((a->c_delta < 0 && d->c < (__u64)0 - (__u64)a->c_delta) ||
	    ((__s64)a->base_c < 0 && d->kc < (__u64)0 - a->base_c))
		return XPRO_APPLY_RACED;
	__sync_fetch_and_add(&d->c, a->c_delta);
	__sync_fetch_and_add(&d->kc, a->base_c); /* the kc delta, two's complement */
	if (a->ts1)
		d->ts1 = a->ts1;
	max_store(&d->ts2, a->ts2);
	return XPRO_APPLY_APPLIED;
}

/* A key with the closed-drops bit and a source, or a pad no key has: no
 * record is kept under it (a forged store record must not reach the
 * destination's closed-drops record through it). */
static __always_inline int apply_key_bad(struct xpro_apply *a)
{
	const __u32 *s = (const __u32 *)a->key.src;

	return a->key.dst.pad > XPRO_DST_PAD_ADDR_CLOSED ||
	       ((a->key.dst.pad & XPRO_DST_PAD_CLOSED) && (s[0] | s[1] | s[2] | s[3]));
}

static long apply_one(__u32 i, void *unused)
{
	struct xpro_apply *a = bpf_map_lookup_elem(&apply_buf, &i);

	if (!a)
		return 1;
	if (!(a->op & XPRO_APPLY_DST) && apply_key_bad(a))
		a->result = XPRO_APPLY_MISSING;
	else if (a->op & XPRO_APPLY_READ)
		a->result = apply_read(a);
	else if (a->op & XPRO_APPLY_FLOW)
		a->result = apply_flow(a);
	else if (a->op & XPRO_APPLY_DST)
		a->result = apply_dst(a);
	return 0;
}

SEC("xdp")
int xpro_apply(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 n;

	if (data + sizeof(n) > data_end)
		return 0;
	n = *(__u32 *)data;
	if (n > XPRO_APPLY_MAX)
		n = XPRO_APPLY_MAX;
	return bpf_loop(n, apply_one, NULL, 0);
}
