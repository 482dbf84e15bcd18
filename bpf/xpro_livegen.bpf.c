// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * xpro_livegen: the flood generator (xpro.livegen).
 *
 * Userspace runs this program with BPF_PROG_TEST_RUN and
 * BPF_F_TEST_XDP_LIVE_FRAMES on a crafted frame, with the sender's interface
 * as ingress_ifindex: every repetition is a real frame, and XDP_TX sends it
 * out of that interface (to the veth peer).  Optionally the IPv4 or IPv6
 * source address is rewritten per frame, sequentially or at random within a
 * prefix (a spoofed-source flood); the IPv4 header checksum and the UDP, TCP
 * or ICMPv6 checksum are updated incrementally (RFC 1624), so the frames stay
 * valid for the receiving stack.  Optionally (dport) the destination port of
 * every UDP or TCP frame that carries its header is drawn at random, with the
 * same incremental checksum update: a flood over every port.
 *
 * Userspace passes every frame with 4 bytes of XDP metadata in front of it,
 * LIVEGEN_MAGIC: the program sends only frames that carry it and passes any
 * other.  That lets userspace attach the program in skb mode to the sending
 * interface itself while it runs, which keeps the program in the kernel's XDP
 * dispatcher: otherwise every test run adds and removes it there, and each
 * change waits for an RCU grace period (~25 ms per call).  Frames the
 * interface really receives have no metadata and pass untouched.
 *
 * In live-frames mode the kernel keeps the frame's page between runs without
 * copying the original frame in again, so each run sees what the previous run
 * on that page left: the update is relative to the bytes in the frame, never
 * to the frame userspace passed in.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define LIVEGEN_SPOOF_OFF 0
#define LIVEGEN_SPOOF_SEQUENTIAL 1
#define LIVEGEN_SPOOF_RANDOM 2

#define LIVEGEN_DPORT_KEEP 0
#define LIVEGEN_DPORT_RANDOM 1

/* "lgen": the metadata of a frame to send. */
#define LIVEGEN_MAGIC 0x6e65676cU

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif

/* Written by userspace through an mmap of .data (xpro.livegen.CONFIG). */
struct livegen_cfg {
	__u32 spoof; /* LIVEGEN_SPOOF_* */
	__u32 mask; /* the varied low bits of the source address, host order */
	__u8 base[16]; /* the prefix: IPv4 in base[0..3], IPv6 all 16 bytes */
	__u64 seq; /* the next sequential index (one generator thread at a time) */
	__u32 dport; /* LIVEGEN_DPORT_* */
	__u32 pad;
};

struct livegen_cfg gen SEC(".data") = {
	.spoof = LIVEGEN_SPOOF_OFF,
	.dport = LIVEGEN_DPORT_KEEP,
};

/* Fold a one's-complement sum to 16 bits. */
static __always_inline __u16 fold(__u64 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/* The sum of ~old + new over the two 16-bit words of a 32-bit field. */
static __always_inline __u64 delta32(__u32 old, __u32 new)
{
	old = ~old;
	return (old & 0xffff) + (old >> 16) + (new & 0xffff) + (new >> 16);
}

/* The same for a 16-bit field. */
static __always_inline __u64 delta16(__u16 old, __u16 new)
{
	return (__u16)~old + (__u64)new;
}

/* RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m'), with delta the sum of ~m + m'.
 * Words are summed as they lie in memory: the one's-complement sum does not
 * depend on byte order as long as every word is read the same way. */
static __always_inline __u16 csum_update(__u16 check, __u64 delta)
{
	return (__u16)~fold((__u64)(__u16)~check + delta);
}

/* Update the L4 checksum (UDP, TCP; ICMPv6 for IPv6) for a change of the words
 * it covers that adds up to delta (the source address, the destination port). */
static __always_inline void l4_update(__u8 *l4, void *end, __u8 proto, __u64 delta, int v6)
{
	__u16 *check;

	if (proto == IPPROTO_UDP) {
		if (l4 + 8 > (__u8 *)end)
			return;
		check = (__u16 *)(l4 + 6);
		if (*check == 0 && !v6)
			return; /* IPv4 UDP without a checksum stays without one */
		*check = csum_update(*check, delta);
		if (*check == 0)
			*check = 0xffff; /* 0 means "no checksum" in UDP */
	} else if (proto == IPPROTO_TCP) {
		if (l4 + 20 > (__u8 *)end)
			return;
		check = (__u16 *)(l4 + 16);
		*check = csum_update(*check, delta);
	} else if (proto == IPPROTO_ICMPV6 && v6) {
		if (l4 + 4 > (__u8 *)end)
			return;
		check = (__u16 *)(l4 + 2);
		*check = csum_update(*check, delta);
	}
}

static __always_inline __u32 next_host(void)
{
	__u32 n;

	if (gen.spoof == LIVEGEN_SPOOF_SEQUENTIAL) {
		n = (__u32)gen.seq;
		gen.seq = gen.seq + 1;
	} else {
		n = bpf_get_prandom_u32();
	}
	return bpf_htonl(n & gen.mask);
}

/* With LIVEGEN_DPORT_RANDOM, a random destination port for a UDP or TCP
 * header at l4 (the caller checked that the frame carries it). */
static __always_inline void new_dport(__u8 *l4, void *end, __u8 proto, int v6)
{
	__u16 *port, new;

	if (gen.dport != LIVEGEN_DPORT_RANDOM ||
	    (proto != IPPROTO_UDP && proto != IPPROTO_TCP) || l4 + 4 > (__u8 *)end)
		return;
	port = (__u16 *)(l4 + 2);
	new = (__u16)bpf_get_prandom_u32();
	l4_update(l4, end, proto, delta16(*port, new), v6);
	*port = new;
}

SEC("xdp")
int xpro_livegen(struct xdp_md *ctx)
{
	__u8 *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 *meta = (void *)(long)ctx->data_meta;
	__u16 eth_type;
	__u64 delta;
	__u8 *l4;
	__u8 proto;

	if ((void *)(meta + 1) > (void *)data || *meta != LIVEGEN_MAGIC)
		return XDP_PASS; /* received by the interface, not a frame to send */
	if ((gen.spoof == LIVEGEN_SPOOF_OFF && gen.dport == LIVEGEN_DPORT_KEEP) ||
	    data + ETH_HLEN > (__u8 *)end)
		return XDP_TX;
	eth_type = *(__u16 *)(data + 12);

	if (eth_type == bpf_htons(ETH_P_IP)) {
		__u8 *ip = data + ETH_HLEN;
		__u32 *saddr = (__u32 *)(ip + 12);
		__u32 new, ihl;

		if (ip + 20 > (__u8 *)end)
			return XDP_TX;
		delta = 0;
		if (gen.spoof != LIVEGEN_SPOOF_OFF) {
			new = *(__u32 *)&gen.base[0] | next_host();
			delta = delta32(*saddr, new);
			*(__u16 *)(ip + 10) = csum_update(*(__u16 *)(ip + 10), delta);
			*saddr = new;
		}
		/* Only the first fragment carries the L4 header. */
		if (*(__u16 *)(ip + 6) & bpf_htons(0x1fff))
			return XDP_TX;
		ihl = (ip[0] & 0xf) * 4;
		if (ihl < 20)
			return XDP_TX;
		proto = ip[9];
		l4 = ip + ihl;
		if (gen.spoof != LIVEGEN_SPOOF_OFF)
			l4_update(l4, end, proto, delta, 0);
		new_dport(l4, end, proto, 0);
	} else if (eth_type == bpf_htons(ETH_P_IPV6)) {
		__u8 *ip6 = data + ETH_HLEN;
		__u32 *saddr = (__u32 *)(ip6 + 8);

		if (ip6 + 40 > (__u8 *)end)
			return XDP_TX;
		proto = ip6[6];
		l4 = ip6 + 40;
		if (gen.spoof != LIVEGEN_SPOOF_OFF) {
			delta = 0;
#pragma unroll
			for (int i = 0; i < 4; i++) {
				__u32 new = *(__u32 *)&gen.base[4 * i];

				if (i == 3)
					new |= next_host();
				delta += delta32(saddr[i], new);
				saddr[i] = new;
			}
			l4_update(l4, end, proto, delta, 1);
		}
		/* a transport header right after the fixed header only (a
		 * fragment's next header is 44) */
		new_dport(l4, end, proto, 1);
	}
	return XDP_TX;
}
