// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * A reference point: the simplest useful flow program.  Parse Ethernet and
 * IPv4/IPv6, key on (source, destination) in an LRU hash, read the coarse
 * clock, count with one atomic add.  No rate rule, no aggregate.
 *
 * flow_counter passes every frame (bench/packet_cost.py); flow_counter_drop
 * drops every IP frame after counting it: the least a per-flow flood filter
 * does, the floor under xpro in bench/flood.py.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct key {
	__u8 src[16];
	__u8 dst[16];
};

struct val {
	__u64 ts;
	__u64 count;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 20);
	__type(key, struct key);
	__type(value, struct val);
} counts SEC(".maps");

/* Counts the frame; returns XDP_PASS for a frame it does not count (not IP),
 * XDP_DROP for a truncated IP header, else `verdict`. */
static __always_inline int count_flow(struct xdp_md *ctx, int verdict)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct key k __attribute__((aligned(8))) = {};

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end)
			return XDP_DROP;
		/* IPv4-mapped, written as whole words (byte stores that the
		 * hash reads back as words stall store forwarding) */
		__u32 *w = (__u32 *)&k;

		w[2] = w[6] = bpf_htonl(0xffff);
		w[3] = ip->saddr;
		w[7] = ip->daddr;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return XDP_DROP;
		__builtin_memcpy(k.src, &ip6->saddr, 16);
		__builtin_memcpy(k.dst, &ip6->daddr, 16);
	} else {
		return XDP_PASS;
	}

	__u64 now = bpf_ktime_get_coarse_ns();
	struct val *v = bpf_map_lookup_elem(&counts, &k);

	if (!v) {
		struct val nv = { .ts = now, .count = 1 };

		bpf_map_update_elem(&counts, &k, &nv, BPF_NOEXIST);
		return verdict;
	}
	__sync_fetch_and_add(&v->count, 1);
	v->ts = now;
	return verdict;
}

SEC("xdp")
int flow_counter(struct xdp_md *ctx)
{
	return count_flow(ctx, XDP_PASS);
}

SEC("xdp")
int flow_counter_drop(struct xdp_md *ctx)
{
	return count_flow(ctx, XDP_DROP);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
