// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The ceiling: an XDP program that drops everything and does nothing else. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int bare_drop(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
