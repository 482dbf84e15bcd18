// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * A reference point: the simplest useful flow program.  Parse Ethernet and
 * IPv4/IPv6, key on (source, destination) in an LRU hash, read the coarse
 * clock, count with one atomic add.  No rate rule, no aggregate.
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

SEC("xdp")
int flow_counter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct key k = {};

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end)
			return XDP_DROP;
		k.src[10] = k.src[11] = k.dst[10] = k.dst[11] = 0xff;
		__builtin_memcpy(&k.src[12], &ip->saddr, 4);
		__builtin_memcpy(&k.dst[12], &ip->daddr, 4);
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
		return XDP_PASS;
	}
	__sync_fetch_and_add(&v->count, 1);
	v->ts = now;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
