// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Test-only: every packet sends one sample to a ring buffer and counts in a
 * hash map; the verdict comes from global data (tests/kernel/test_loader.py). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct sample {
	__u64 seq;
	__u32 len;
	__u8 head[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} samples SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} by_len SEC(".maps");

struct {
	__u64 seq;
	__u32 verdict;
	__u32 pad;
} state SEC(".data") = { .verdict = XDP_PASS };

SEC("xdp")
int sampler(struct xdp_md *ctx)
{
	unsigned char *data = (unsigned char *)(long)ctx->data;
	unsigned char *end = (unsigned char *)(long)ctx->data_end;
	__u32 len = end - data;
	struct sample *s;
	__u64 one = 1, *n;

	n = bpf_map_lookup_elem(&by_len, &len);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&by_len, &len, &one, BPF_NOEXIST);
	s = bpf_ringbuf_reserve(&samples, sizeof(*s), 0);
	if (s) {
		s->seq = __sync_fetch_and_add(&state.seq, 1);
		s->len = len;
		if (data + 4 <= end)
			__builtin_memcpy(s->head, data, 4);
		else
			__builtin_memset(s->head, 0, 4);
		bpf_ringbuf_submit(s, 0);
	}
	return state.verdict;
}
