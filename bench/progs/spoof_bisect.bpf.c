// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Bench only (bench/spoof_cost.py): xpro's per-packet filter as it was when
 * the spoofed flood was investigated (bpf/xpro.bpf.c, Algorithm 2), cut at
 * compile-time stages and with single changes switched on, to bisect where
 * the time goes.  The maps, the config and the helpers are the real ones
 * (bpf/maps.h, bpf/xpro_shared.h); only the body of filter() is copied.
 *
 *   SPOOF_STAGE 0  parse, then drop
 *               1  + clock, flow lookup (read only), then drop
 *               2  + the flow update (atomic add, ts2, epoch/dirty), the
 *                    per-source check, then drop
 *               3  + the destination lookup (read only), then drop
 *               4  + the destination update and check: the whole program
 *
 *   SPOOF_DST_PLAIN    c* += 1 without the atomic (not safe: a measurement)
 *   SPOOF_FLOW_PLAIN   c' += 1 without the atomic (the same)
 *   SPOOF_DST_NO_TS2   no store of ts2* per packet (a measurement)
 *   SPOOF_DST_CLOSED   the semantic change measured, NOT adopted: a packet
 *                      the destination limit drops writes nothing to the
 *                      destination record (c*, ts2* unchanged)
 *   SPOOF_DST_TS2_IF_NEWER  ts2* stored only when it changes
 *   SPOOF_DST_ADD_FIRST  the atomic add on c* before the reads of the
 *                      destination record (same results in sequence)
 *   SPOOF_DST_FIRST    the other semantic change measured, NOT adopted: a
 *                      destination already over T_F2 drops before the flow
 *                      record is touched
 *   SPOOF_NO_EPOCH     no dirty marking at all (f->epoch never read)
 *   SPOOF_FLOW_VALUE_40, SPOOF_FLOW_EPOCH_FIRST  layouts of the flow record
 *   SPOOF_DIRTY_NO_PREALLOC  the dirty sets with BPF_F_NO_PREALLOC
 *   SPOOF_FLOWS_PERCPU_LRU   the flow table with BPF_F_NO_COMMON_LRU
 *   SPOOF_DIRTY_LOG    the dirty set as a per-CPU append-only log
 *
 * With -DSPOOF_SRC the wrapper (as in spoof_xpro.bpf.c) walks the source
 * over a /16 between runs, with -DSPOOF_WIDE over a /8.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xpro_shared.h"
#include "parsing.h"
#include "maps.h"

/* Layout experiments (change xpro_shared.h if adopted; NOT done): a flow
 * record without the sync's baseline (40 bytes: the element is then exactly
 * two cache lines), or the same 56 bytes with epoch next to c. */
#if defined(SPOOF_FLOW_VALUE_40) || defined(SPOOF_FLOW_EPOCH_FIRST)
struct spoof_flow {
	__u64 ts1;
	__u64 ts2;
	__u64 c;
#ifdef SPOOF_FLOW_EPOCH_FIRST
	__u32 epoch;
	__u32 gen;
	__u64 warn_ts;
	__u64 base_c;
	__u32 base_gen;
	__u32 pad;
#else
	__u64 warn_ts;
	__u32 gen;
	__u32 epoch;
#endif
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XPRO_FLOWS_MAX);
	__type(key, struct xpro_flow_key);
	__type(value, struct spoof_flow);
} spoof_flows SEC(".maps");
#define flows spoof_flows
#define xpro_flow spoof_flow
#endif

/* Map-flag experiments: the dirty sets allocated on insert
 * (BPF_F_NO_PREALLOC), or the flow table with per-CPU LRU lists. */
#ifdef SPOOF_DIRTY_NO_PREALLOC
struct spoof_dirty_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XPRO_FLOWS_MAX);
	__type(key, struct xpro_flow_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
};

struct spoof_dirty_map spoof_dirty0 SEC(".maps");
struct spoof_dirty_map spoof_dirty1 SEC(".maps");
#define dirty0 spoof_dirty0
#define dirty1 spoof_dirty1
#endif

#ifdef SPOOF_DIRTY_LOG
/* The dirty set as an append-only log per CPU and epoch parity: a slot
 * index from a per-CPU counter, the key copied into the slot.  Duplicates
 * cannot arise from one packet path (f->epoch marks a flow once an epoch);
 * the reader would deduplicate races.  Full: dirty_lost, as now. */
#define SPOOF_LOG_MAX (1 << 20)
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} spoof_log_n SEC(".maps");

struct spoof_log_map {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SPOOF_LOG_MAX);
	__type(key, __u32);
	__type(value, struct xpro_flow_key);
};

struct spoof_log_map spoof_log0 SEC(".maps");
struct spoof_log_map spoof_log1 SEC(".maps");
#endif

#ifdef SPOOF_FLOWS_PERCPU_LRU
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XPRO_FLOWS_MAX);
	__type(key, struct xpro_flow_key);
	__type(value, struct xpro_flow);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
} spoof_flows SEC(".maps");
#define flows spoof_flows
#endif

#ifndef SPOOF_STAGE
#define SPOOF_STAGE 4
#endif

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct xpro_config cfg SEC(".data") = {
	.t_t1 = 10ULL * 1000000000ULL,
	.t_t2 = 1ULL * 1000000000ULL,
	.t_t3 = 1ULL * 1000000000ULL,
	.warn_period = 1ULL * 1000000000ULL,
	.t_f1 = 100,
	.t_f2 = 10000,
	.mode = XPRO_MODE_ENFORCE,
	.dst_mode = XPRO_DST_ADDR,
	.malformed_policy = XPRO_MALFORMED_DROP,
	.events = 1,
};

__u64 dirty_lost SEC(".bss");

static __always_inline void mul_u64_u32(__u64 a, __u32 b, __u64 *hi, __u64 *lo)
{
	__u64 pl = (a & 0xffffffffULL) * b;
	__u64 ph = (a >> 32) * b;
	__u64 mid = (pl >> 32) + (ph & 0xffffffffULL);

	*lo = (mid << 32) | (pl & 0xffffffffULL);
	*hi = (ph >> 32) + (mid >> 32);
}

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
	if (!ev)
		return;
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

static __always_inline int warn_due(__u64 *warn_ts, __u64 now)
{
	if (*warn_ts && (__s64)(now - *warn_ts) < (__s64)cfg.warn_period)
		return 0;
	*warn_ts = now;
	return 1;
}

static __always_inline void mark_dirty(struct xpro_flow_key *key, __u32 epoch)
{
#ifdef SPOOF_DIRTY_LOG
	__u32 par = epoch & 1;
	__u32 *n = bpf_map_lookup_elem(&spoof_log_n, &par);
	struct xpro_flow_key *slot;
	__u32 i;

	if (!n)
		return;
	i = *n;
	slot = bpf_map_lookup_elem(par ? (void *)&spoof_log1 : (void *)&spoof_log0, &i);
	if (!slot) {
		__sync_fetch_and_add(&dirty_lost, 1);
		return;
	}
	__builtin_memcpy(slot, key, sizeof(*key));
	*n = i + 1;
	return;
#endif
	__u32 one = 1;
	void *set = (epoch & 1) ? (void *)&dirty1 : (void *)&dirty0;

	if (bpf_map_update_elem(set, key, &one, BPF_ANY))
		__sync_fetch_and_add(&dirty_lost, 1);
}

static __always_inline int filter(struct xdp_md *ctx, __u64 pkt_len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct xpro_flow_key key __attribute__((aligned(8)));
	__u64 now;
	int rc;

	rc = parse_packet(data, data_end, pkt_len, cfg.dst_mode, &key);
	if (rc == PARSE_NON_IP) {
		count(XPRO_R_NON_IP, pkt_len);
		return XDP_PASS;
	}
	if (rc == PARSE_MALFORMED) {
		count(XPRO_R_MALFORMED, pkt_len);
		return cfg.malformed_policy == XPRO_MALFORMED_PASS ? XDP_PASS : XDP_DROP;
	}
#if SPOOF_STAGE == 0
	count(XPRO_R_DST_RATE, pkt_len);
	return XDP_DROP;
#endif
	if (cfg.n_allow || cfg.n_deny) {
		struct xpro_lpm_key lk = { .prefixlen = 128 };

		__builtin_memcpy(lk.addr, key.src, 16);
		if (cfg.n_allow && bpf_map_lookup_elem(&allow_src, &lk)) {
			count(XPRO_R_ALLOW, pkt_len);
			return XDP_PASS;
		}
		if (cfg.n_deny && bpf_map_lookup_elem(&deny_src, &lk)) {
			count(XPRO_R_DENY, pkt_len);
			return XDP_DROP;
		}
	}

	now = cfg.fake_now ? cfg.fake_now :
			     bpf_ktime_get_coarse_ns() + cfg.clock_offset;

#ifdef SPOOF_DST_FIRST
	/* NOT the semantics: a destination already over T_F2 drops the packet
	 * before its flow record is looked up (the packet counts in c* as now,
	 * but not in its flow's c'). */
	{
		struct xpro_dst *d0 = bpf_map_lookup_elem(&dsts, &key.dst);

		if (d0 && (__s64)(now - d0->ts2) <= (__s64)cfg.t_t1 &&
		    (__s64)(now - d0->ts1) > (__s64)cfg.t_t3 &&
		    rate_exceeds(d0->c + 1, now - d0->ts1, cfg.t_f2)) {
			__u64 c0 = __sync_fetch_and_add(&d0->c, 1) + 1;

			d0->ts2 = now;
			if (warn_due(&d0->warn_ts, now))
				warn(XPRO_EV_DST_OVERLOAD, &key, now, c0, now - d0->ts1);
			count(XPRO_R_DST_RATE, pkt_len);
			return XDP_DROP;
		}
	}
#endif
	struct xpro_flow *f = bpf_map_lookup_elem(&flows, &key);
	__u64 c, ts1;
	int started = 0;

#if SPOOF_STAGE == 1
	if (f)
		count(XPRO_R_DST_RATE, pkt_len + (f->ts2 & 1));
	else
		count(XPRO_R_DST_RATE, pkt_len);
	return XDP_DROP;
#endif
	if (!f) {
		__u32 epoch = cfg.epoch;
		struct xpro_flow nf = { .ts1 = now, .ts2 = now, .c = 1, .epoch = epoch };

		if (bpf_map_update_elem(&flows, &key, &nf, BPF_NOEXIST) == 0) {
			if (epoch)
				mark_dirty(&key, epoch);
			c = 1;
			ts1 = now;
			started = 1;
			goto checked_new;
		}
		f = bpf_map_lookup_elem(&flows, &key);
		if (!f) {
			c = 1;
			ts1 = now;
			started = 1;
			goto checked_new;
		}
	}
	if ((__s64)(now - f->ts2) > (__s64)cfg.t_t1) {
		f->gen += 1;
		f->ts1 = now;
		f->c = 0;
		started = 1;
	}
#ifdef SPOOF_FLOW_PLAIN
	c = f->c + 1;
	f->c = c;
#else
	c = __sync_fetch_and_add(&f->c, 1) + 1;
#endif
	f->ts2 = now;
	ts1 = f->ts1;
	__u32 epoch = cfg.epoch;

#ifndef SPOOF_NO_EPOCH
	if (f->epoch != epoch && epoch) {
		f->epoch = epoch;
		mark_dirty(&key, epoch);
	}
#endif

	if ((__s64)(now - ts1) > (__s64)cfg.t_t2 &&
	    rate_exceeds(c, now - ts1, cfg.t_f1)) {
		if (warn_due(&f->warn_ts, now))
			warn(XPRO_EV_SRC_OVERLOAD, &key, now, c, now - ts1);
		if (mode_for(&key) == XPRO_MODE_MONITOR) {
			count(XPRO_R_MON_SRC_RATE, pkt_len);
			return XDP_PASS;
		}
		count(XPRO_R_SRC_RATE, pkt_len);
		return XDP_DROP;
	}

checked_new:;
#if SPOOF_STAGE == 2
	count(XPRO_R_DST_RATE, pkt_len + (started & 1));
	return XDP_DROP;
#endif
	struct xpro_dst *d = bpf_map_lookup_elem(&dsts, &key.dst);
	__u64 cs, ts1s;

	if (!d) {
		struct xpro_dst nd = { .ts1 = ts1, .ts2 = now };

		bpf_map_update_elem(&dsts, &key.dst, &nd, BPF_NOEXIST);
		d = bpf_map_lookup_elem(&dsts, &key.dst);
		if (!d) {
			count(XPRO_R_PASS, pkt_len);
			return XDP_PASS;
		}
	}
#if SPOOF_STAGE == 3
	count(XPRO_R_DST_RATE, pkt_len + (d->ts2 & 1));
	return XDP_DROP;
#endif
#ifdef SPOOF_DST_ADD_FIRST
	/* The same results in sequence; the shared line is taken for writing
	 * at once instead of read first and upgraded. */
	cs = __sync_fetch_and_add(&d->c, 1) + 1;
	if ((__s64)(now - d->ts2) > (__s64)cfg.t_t1) {
		d->ts1 = now;
		d->c = 1;
		cs = 1;
	} else if (started && (__s64)(ts1 - d->ts1) < 0) {
		d->ts1 = ts1;
	}
	d->ts2 = now;
	ts1s = d->ts1;
	if ((__s64)(now - ts1s) > (__s64)cfg.t_t3 &&
	    rate_exceeds(cs, now - ts1s, cfg.t_f2)) {
		if (warn_due(&d->warn_ts, now))
			warn(XPRO_EV_DST_OVERLOAD, &key, now, cs, now - ts1s);
		if (mode_for(&key) == XPRO_MODE_MONITOR) {
			count(XPRO_R_MON_DST_RATE, pkt_len);
			return XDP_PASS;
		}
		count(XPRO_R_DST_RATE, pkt_len);
		return XDP_DROP;
	}
	count(XPRO_R_PASS, pkt_len);
	return XDP_PASS;
#endif
	if ((__s64)(now - d->ts2) > (__s64)cfg.t_t1) {
		d->ts1 = now;
		d->c = 0;
	} else if (started && (__s64)(ts1 - d->ts1) < 0) {
		d->ts1 = ts1;
	}
#ifdef SPOOF_DST_CLOSED
	/* NOT the semantics: a dropped packet leaves the record alone. */
	cs = d->c + 1;
	ts1s = d->ts1;
	if ((__s64)(now - ts1s) > (__s64)cfg.t_t3 &&
	    rate_exceeds(cs, now - ts1s, cfg.t_f2)) {
		if (warn_due(&d->warn_ts, now))
			warn(XPRO_EV_DST_OVERLOAD, &key, now, cs, now - ts1s);
		count(XPRO_R_DST_RATE, pkt_len);
		return XDP_DROP;
	}
	__sync_fetch_and_add(&d->c, 1);
	d->ts2 = now;
	count(XPRO_R_PASS, pkt_len);
	return XDP_PASS;
#else
#ifdef SPOOF_DST_PLAIN
	cs = d->c + 1;
	d->c = cs;
#else
	cs = __sync_fetch_and_add(&d->c, 1) + 1;
#endif
#if defined(SPOOF_DST_TS2_IF_NEWER)
	if (d->ts2 != now)
		d->ts2 = now;
#elif !defined(SPOOF_DST_NO_TS2)
	d->ts2 = now;
#endif
	ts1s = d->ts1;

	if ((__s64)(now - ts1s) > (__s64)cfg.t_t3 &&
	    rate_exceeds(cs, now - ts1s, cfg.t_f2)) {
		if (warn_due(&d->warn_ts, now))
			warn(XPRO_EV_DST_OVERLOAD, &key, now, cs, now - ts1s);
		if (mode_for(&key) == XPRO_MODE_MONITOR) {
			count(XPRO_R_MON_DST_RATE, pkt_len);
			return XDP_PASS;
		}
		count(XPRO_R_DST_RATE, pkt_len);
		return XDP_DROP;
	}
	count(XPRO_R_PASS, pkt_len);
	return XDP_PASS;
#endif
}

#define SPOOF_SRC_LO (14 + 12 + 2)

SEC("xdp")
int spoof_run(struct xdp_md *ctx)
{
#ifdef SPOOF_WIDE
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *p = (__u8 *)data + SPOOF_SRC_LO - 1;
	__u32 v;

	if (p + 3 > (__u8 *)data_end)
		return XDP_ABORTED;
	v = ((__u32)p[0] << 16) | ((__u32)p[1] << 8) | p[2];
	v = (v * 1664525U + 1013904223U) & 0xffffff;
	p[0] = v >> 16;
	p[1] = (v >> 8) & 0xff;
	p[2] = v & 0xff;
#elif defined(SPOOF_SRC)
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *p = (__u8 *)data + SPOOF_SRC_LO;
	__u16 v;

	if (p + 2 > (__u8 *)data_end)
		return XDP_ABORTED;
	v = ((__u16)p[0] << 8) | p[1];
	v = (__u16)(v * 25173U + 13849U);
	p[0] = v >> 8;
	p[1] = v & 0xff;
#endif
	return filter(ctx, (__u64)(ctx->data_end - ctx->data));
}
