// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Deliberately wrong: reads the packet without a bounds check, so the
 * verifier must reject it (tests/kernel/test_loader.py). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("xdp")
int bad_oob(struct xdp_md *ctx)
{
	unsigned char *data = (unsigned char *)(long)ctx->data;

	return data[40] == 0x11 ? XDP_DROP : XDP_PASS; /* no data_end check */
}
