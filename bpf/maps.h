/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The maps of the xpro XDP program, BTF-defined.  The loader pins them per
 * instance (xpro.bpf), so a restarted daemon adopts them
 * (docs/operations.rst).  Sizes are defaults that the loader overrides from
 * config before load.
 */
#ifndef XPRO_MAPS_H
#define XPRO_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xpro_shared.h"

#ifndef XPRO_FLOWS_MAX
#define XPRO_FLOWS_MAX (1 << 20)
#endif
#ifndef XPRO_DSTS_MAX
#define XPRO_DSTS_MAX (1 << 16)
#endif
#ifndef XPRO_LPM_MAX
#define XPRO_LPM_MAX 16384
#endif
#ifndef XPRO_KNOWN_MAX
#define XPRO_KNOWN_MAX (1 << 18)
#endif
#ifndef XPRO_KNOWN_FILTERS_MAX
#define XPRO_KNOWN_FILTERS_MAX 4096
#endif

/* (source, destination key) -> flow record.  LRU: a spoofed flood evicts
 * old flows, it never blocks the program (docs/semantics.rst). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XPRO_FLOWS_MAX);
	__type(key, struct xpro_flow_key);
	__type(value, struct xpro_flow);
} flows SEC(".maps");

/* Flows counted since the last sync, one set per epoch parity: a packet of a
 * flow not yet marked in the current epoch (cfg.epoch) adds its key to
 * dirty[epoch & 1]; the sync moves to the next epoch and then reads and
 * empties the other set, so a round costs O(flows that changed). */
struct xpro_dirty_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XPRO_FLOWS_MAX);
	__type(key, struct xpro_flow_key);
	__type(value, __u32);
};

struct xpro_dirty_map dirty0 SEC(".maps");
struct xpro_dirty_map dirty1 SEC(".maps");

/* destination key -> aggregate (ts1*, ts2*, c*). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XPRO_DSTS_MAX);
	__type(key, struct xpro_dst_key);
	__type(value, struct xpro_dst);
} dsts SEC(".maps");

/* (source, destination key) -> enum xpro_known_class, written only by the
 * daemon; read per packet only while the destination is closed.  A plain
 * hash, not LRU: a flood must not evict the known clients. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XPRO_KNOWN_MAX);
	__type(key, struct xpro_flow_key);
	__type(value, __u32);
} known SEC(".maps");

/* slot (xpro_known_slot of a destination key & cfg.known_slot_mask) -> the
 * filter of the known sources of the destinations in that slot
 * (xpro_known_filter), written only by the daemon.  An array: found
 * without a hash look-up, one slot for every destination key. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XPRO_KNOWN_FILTERS_MAX);
	__type(key, __u32);
	__type(value, struct xpro_known_filter);
} known_slots SEC(".maps");

/* Verdict counters by reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XPRO_R_MAX);
	__type(key, __u32);
	__type(value, struct xpro_stat);
} stats SEC(".maps");

/* The coarse clock as this CPU last read it, and the jiffy it read it in
 * (coarse_now in xpro.bpf.c): one entry, per CPU, so no other CPU writes it. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xpro_clock);
} clock SEC(".maps");

/* An address prefix -> a value (LPM trie over the 16-byte mapped address). */
struct xpro_lpm_map {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, XPRO_LPM_MAX);
	__type(key, struct xpro_lpm_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
};

/* Source prefixes always passed / always dropped (checked first). */
struct xpro_lpm_map allow_src SEC(".maps");
struct xpro_lpm_map deny_src SEC(".maps");

/* Destination prefix -> XPRO_MODE_* (overrides config.mode). */
struct xpro_lpm_map dst_policy SEC(".maps");

/* The sync's batch of updates for xpro_apply, written by the daemon through
 * an mmap; the control program applies it in kernel context. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XPRO_APPLY_MAX);
	__type(key, __u32);
	__type(value, struct xpro_apply);
	__uint(map_flags, BPF_F_MMAPABLE);
} apply_buf SEC(".maps");

/* Overload warnings for the daemon. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

#endif /* XPRO_MAPS_H */
