// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Bench only (bench/spoof_cost.py): the real xpro program (bpf/xpro.bpf.c,
 * included as it is) behind a wrapper that, with -DSPOOF_SRC, replaces the
 * low 16 bits of the IPv4 source before every run.  BPF_PROG_TEST_RUN keeps
 * the packet between the repeats of one call, so the source steps through a
 * full-period LCG over the /16: every one of the 65536 sources in turn, in a
 * scrambled order, as a spoofed flood draws them.  Without -DSPOOF_SRC the
 * same wrapper leaves the frame alone (one source).  -DSPOOF_BARE drops
 * right after the rewrite: the baseline with the same per-run work.
 * -DSPOOF_WIDE walks the low 24 bits instead (a spoofed /8).
 */
#ifdef SPOOF_BARE
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "Dual BSD/GPL";
#else
#include "xpro.bpf.c"
#endif

/* Offset of the low half of the IPv4 source in an untagged frame. */
#define SPOOF_SRC_LO (14 + 12 + 2)

static __always_inline int spoof_step(struct xdp_md *ctx)
{
#ifdef SPOOF_WIDE
	/* the low 24 bits instead: 2^24 sources, more than the flow table
	 * holds, so every packet creates a flow and evicts one */
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *p = (__u8 *)data + SPOOF_SRC_LO - 1;
	__u32 v;

	if (p + 3 > (__u8 *)data_end)
		return -1;
	v = ((__u32)p[0] << 16) | ((__u32)p[1] << 8) | p[2];
	v = (v * 1664525U + 1013904223U) & 0xffffff; /* period 2^24 */
	p[0] = v >> 16;
	p[1] = (v >> 8) & 0xff;
	p[2] = v & 0xff;
#elif defined(SPOOF_SRC)
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *p = (__u8 *)data + SPOOF_SRC_LO;
	__u16 v;

	if (p + 2 > (__u8 *)data_end)
		return -1;
	v = ((__u16)p[0] << 8) | p[1];
	v = (__u16)(v * 25173U + 13849U); /* a = 1 mod 4, c odd: period 2^16 */
	p[0] = v >> 8;
	p[1] = v & 0xff;
#endif
	return 0;
}

SEC("xdp")
int spoof_run(struct xdp_md *ctx)
{
	if (spoof_step(ctx))
		return XDP_ABORTED;
#ifdef SPOOF_BARE
	return XDP_DROP;
#else
	return filter(ctx, (__u64)(ctx->data_end - ctx->data));
#endif
}
