// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * xpro's AF_XDP data path (the `afxdp` backend): every frame of an RX queue
 * goes to the AF_XDP socket registered for that queue in `xsks`, where the
 * daemon runs Algorithm 2 in userspace (xpro.afxdp).  A queue without a
 * socket passes its frames to the stack (fail open, as the full program does
 * when it cannot track a destination).
 *
 * Loaded by xpro's own loader and attached with a BPF link: libxdp's
 * dispatcher cannot run on kernels that refuse `ext` programs, so the AF_XDP
 * sockets are created with XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#ifndef XPRO_XSK_MAX
#define XPRO_XSK_MAX 64
#endif

/* RX queue index -> AF_XDP socket. */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, XPRO_XSK_MAX);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

SEC("xdp")
int xpro_redirect(struct xdp_md *ctx)
{
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}
