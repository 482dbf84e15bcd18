/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Packet parsing for xpro: Ethernet, up to two VLAN tags (a third is
 * malformed), IPv4, IPv6 with a bounded extension-header walk, and (in
 * addr+port mode) the L4 port; the source prefix mask of the flow key.
 *
 * The rules here are mirrored exactly by xpro.core.model.parse(); the
 * differential tests hold the two together.  Offsets are tracked as scalars
 * (for the length rules) beside a bounds-checked cursor (for the verifier).
 */
#ifndef XPRO_PARSING_H
#define XPRO_PARSING_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include "xpro_shared.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the key words are built for a little-endian target (bpfel)"
#endif

#define PARSE_OK 0
#define PARSE_NON_IP 1
#define PARSE_MALFORMED 2

#ifndef IPPROTO_HOPOPTS
#define IPPROTO_HOPOPTS 0
#endif
#ifndef IPPROTO_ROUTING
#define IPPROTO_ROUTING 43
#endif
#ifndef IPPROTO_FRAGMENT
#define IPPROTO_FRAGMENT 44
#endif
#ifndef IPPROTO_DSTOPTS
#define IPPROTO_DSTOPTS 60
#endif
#ifndef IPPROTO_UDPLITE
#define IPPROTO_UDPLITE 136
#endif
#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8

static __always_inline int proto_has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP ||
	       proto == IPPROTO_SCTP || proto == IPPROTO_UDPLITE;
}

/*
 * Parse the packet into key, with the full source address.  pkt_len is the
 * length the IP length fields are checked against (the whole frame).  Sets
 * *ipv6 to the family (by ethertype) when it returns PARSE_OK.  Returns
 * PARSE_*.
 */
static __always_inline int parse_packet_af(void *data, void *data_end,
					   __u64 pkt_len, __u32 dst_mode,
					   struct xpro_flow_key *key, int *ipv6)
{
	__u8 *p = data;
	__u16 eth_type;
	__u64 off;

	if (p + ETH_HLEN > (__u8 *)data_end)
		return PARSE_NON_IP;
	eth_type = *(__u16 *)(p + 12);
	off = ETH_HLEN;

#pragma unroll
	for (int i = 0; i < XPRO_MAX_VLAN; i++) {
		if (eth_type != bpf_htons(ETH_P_8021Q_) &&
		    eth_type != bpf_htons(ETH_P_8021AD_))
			break;
		if (p + off + 4 > (__u8 *)data_end)
			return PARSE_NON_IP;
		eth_type = *(__u16 *)(p + off + 2);
		off += 4;
	}
	/* A tag beyond XPRO_MAX_VLAN: what it carries is not seen, and it must
	 * not pass uncounted as "not IP" (docs/semantics.rst, "Parsing"). */
	if (eth_type == bpf_htons(ETH_P_8021Q_) || eth_type == bpf_htons(ETH_P_8021AD_))
		return PARSE_MALFORMED;

	__u8 proto;
	__u64 l4off, l4end;
	int frag = 0;

	if (eth_type == bpf_htons(ETH_P_IP)) {
		__u8 *ip = p + off;

		if (ip + 20 > (__u8 *)data_end)
			return PARSE_MALFORMED;
		__u8 vihl = ip[0];
		__u64 hl = (vihl & 0xf) * 4;

		if ((vihl >> 4) != 4 || hl < 20)
			return PARSE_MALFORMED;
		if (off + hl > pkt_len)
			return PARSE_MALFORMED;
		__u64 tot = bpf_ntohs(*(__u16 *)(ip + 2));

		if (tot < hl || off + tot > pkt_len)
			return PARSE_MALFORMED;
		__u16 fragoff = bpf_ntohs(*(__u16 *)(ip + 6));

		frag = (fragoff & 0x3fff) != 0; /* MF or offset */
		*ipv6 = 0;
		proto = ip[9];
		/* The key is written in aligned 32-bit words: narrower stores
		 * that the hash then reads as words stall store forwarding
		 * (measured: +15 ns a packet). */
		__u32 *w = (__u32 *)key;

		w[0] = 0;
		w[1] = 0;
		w[2] = bpf_htonl(0xffff);
		w[3] = *(__u32 *)(ip + 12);
		w[4] = 0;
		w[5] = 0;
		w[6] = bpf_htonl(0xffff);
		w[7] = *(__u32 *)(ip + 16);
		l4off = off + hl;
		l4end = off + tot;
	} else if (eth_type == bpf_htons(ETH_P_IPV6)) {
		__u8 *ip6 = p + off;

		if (ip6 + 40 > (__u8 *)data_end)
			return PARSE_MALFORMED;
		if ((ip6[0] >> 4) != 6)
			return PARSE_MALFORMED;
		__u64 plen = bpf_ntohs(*(__u16 *)(ip6 + 4));

		l4end = off + 40 + plen;
		if (l4end > pkt_len)
			return PARSE_MALFORMED;
		/* Word loads and stores (see the IPv4 case); x86 and the
		 * verifier allow unaligned packet loads. */
		const __u32 *a = (const __u32 *)(ip6 + 8);
		__u32 *w = (__u32 *)key;

#pragma unroll
		for (int i = 0; i < 8; i++)
			w[i] = a[i];
		proto = ip6[6];
		l4off = off + 40;
		*ipv6 = 1;

		/* The caller needs no L4 in addr mode, but the walk also
		 * decides what is malformed, so it runs in both modes. */
		__u8 *cur = ip6 + 40;
		int done = 0;

#pragma unroll
		for (int i = 0; i < XPRO_MAX_EXTHDR; i++) {
			__u64 len;

			if (proto == IPPROTO_HOPOPTS ||
			    proto == IPPROTO_ROUTING ||
			    proto == IPPROTO_DSTOPTS) {
				if (l4off + 2 > l4end || cur + 2 > (__u8 *)data_end)
					return PARSE_MALFORMED;
				len = ((__u64)cur[1] + 1) * 8;
			} else if (proto == IPPROTO_AH) {
				if (l4off + 2 > l4end || cur + 2 > (__u8 *)data_end)
					return PARSE_MALFORMED;
				len = ((__u64)cur[1] + 2) * 4;
			} else if (proto == IPPROTO_FRAGMENT) {
				if (l4off + 8 > l4end || cur + 8 > (__u8 *)data_end)
					return PARSE_MALFORMED;
				len = 8;
				/* An atomic fragment (offset 0, M 0: RFC 6946) is a
				 * whole datagram, delivered to its port: keyed so. */
				if (bpf_ntohs(*(__u16 *)(cur + 2)) & 0xfff9)
					frag = 1;
			} else {
				done = 1;
				break;
			}
			proto = cur[0];
			l4off += len;
			if (l4off > l4end)
				return PARSE_MALFORMED;
			cur += len;
		}
		if (!done) {
			/* The bound is reached: only a transport header
			 * may follow, or the chain is too deep to judge. */
			if (proto == IPPROTO_HOPOPTS || proto == IPPROTO_ROUTING ||
			    proto == IPPROTO_DSTOPTS || proto == IPPROTO_AH ||
			    proto == IPPROTO_FRAGMENT)
				return PARSE_MALFORMED;
		}
	} else {
		return PARSE_NON_IP;
	}

	/* port, proto and pad as one word, for the same reason */
	__u32 *tail = (__u32 *)key + 8;

	*tail = 0;
	if (dst_mode != XPRO_DST_ADDR_PORT || frag)
		return PARSE_OK; /* fragments key on addresses only */

	__u16 port = 0;

	if (proto_has_ports(proto)) {
		if (l4off + 4 > l4end)
			return PARSE_MALFORMED;
		/* l4off <= pkt_len < 64k: bound it for the verifier */
		__u8 *l4 = p + (l4off & 0xffff);

		if (l4 + 4 > (__u8 *)data_end)
			return PARSE_MALFORMED;
		port = *(__u16 *)(l4 + 2);
	}
	/* bytes: port (network order), proto, pad; little-endian word */
	*tail = (__u32)port | ((__u32)proto << 16);
	return PARSE_OK;
}

/* parse_packet_af() for callers that do not need the family. */
static __always_inline int parse_packet(void *data, void *data_end,
					__u64 pkt_len, __u32 dst_mode,
					struct xpro_flow_key *key)
{
	int ipv6;

	return parse_packet_af(data, data_end, pkt_len, dst_mode, key, &ipv6);
}

/*
 * Key the flow on its source prefix (docs/semantics.rst, "Source
 * prefixes"): AND the source words with mask6 (an IPv6 packet) or its last
 * word with mask4 (IPv4: the address of ::ffff:a.b.c.d).  Masks are bytes
 * in network order, as the key's words are.  Word loads and stores, as the
 * parser writes the key.
 */
static __always_inline void mask_source(struct xpro_flow_key *key, int ipv6,
					const __u32 *mask6, __u32 mask4)
{
	__u32 *w = (__u32 *)key;

	if (ipv6) {
		w[0] &= mask6[0];
		w[1] &= mask6[1];
		w[2] &= mask6[2];
		w[3] &= mask6[3];
	} else {
		w[3] &= mask4;
	}
}

#endif /* XPRO_PARSING_H */
