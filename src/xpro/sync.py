"""The sync round: Algorithm 1, as the daemon runs it every period.

One round, for one proxy (:meth:`Syncer.round`):

1. publish this proxy's workload W and heartbeat; read the others' (lines 1-2);
2. move the program to the next sync epoch and read the records of the flows
   it marked dirty in the one that ended (only those: the round costs
   O(changes), not O(table)); derive the paper's ``dc`` and ``mark`` from
   each record's baseline (:func:`xpro.model.local_view`);
3. merge every flow this proxy counted since the last round into the master,
   atomically per record (the store's side of lines 5-33), and compute the
   same merge locally (:func:`xpro.merge.merge_arrays`);
4. take every master record changed since the last round (other proxies'
   flows) and merge it into the local view, creating records this proxy has
   not seen (lines 26-28);
5. write the results into the kernel as deltas, with the new baseline,
   through ``xpro_apply`` (never a userspace write of a kernel-owned field:
   DESIGN.md 4.3);
6. recompute exactly, from the flow records, the aggregate of every
   destination whose flows changed (DESIGN.md 3.5), and expire idle records.

The daemon keeps a mirror of the flow table (updated from what each round
reads) for the aggregates and expiry, so neither needs a pass over the
kernel's table.

Everything is done on whole numpy arrays (DESIGN.md 4.5).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from xpro import layout as L
from xpro.errors import StoreError
from xpro.kernel import (
    APPLIED,
    OP_CREATE,
    OP_DELETE,
    OP_DST,
    OP_FLOW,
    FilterState,
    apply_entries,
)
from xpro.merge import merge_arrays, rate_exceeds_array
from xpro.model import NS_PER_S, SyncParams
from xpro.store import LOCAL, MASTER, ProxyStatus, Store

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]

_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD], dtype=np.uint64)


def _fingerprint(keys: Array) -> Array:
    """A 64-bit mix of each key's bytes (to sort and search keys as integers)."""
    width = keys.dtype.itemsize
    n = len(keys)
    raw = np.zeros((n, (width + 7) // 8 * 8), dtype=np.uint8)
    raw[:, :width] = np.ascontiguousarray(keys).view(np.uint8).reshape(n, width)
    words = raw.view("<u8")
    h: Array = (words * _MIX[: words.shape[1]]).sum(axis=1, dtype=np.uint64)
    out: Array = h ^ (h >> np.uint64(29))
    return out


def _search(sorted_hay: Array, needles: Array) -> Array:
    """``np.searchsorted(sorted_hay, needles)``, with the needles searched in
    sorted order (a random-order search over a large array misses the cache
    at every step: 0.7 s against 0.1 s for 1M in 1M)."""
    order = np.argsort(needles, kind="stable")
    pos = np.empty(len(needles), dtype=np.int64)
    pos[order] = np.searchsorted(sorted_hay, needles[order])
    return pos


def index_of(haystack: Array, needles: Array) -> Array:
    """For each needle, its index in ``haystack`` or -1 (both arrays of one key dtype)."""
    if len(haystack) == 0 or len(needles) == 0:
        return np.full(len(needles), -1, dtype=np.int64)
    width = haystack.dtype.itemsize
    fh, fn = _fingerprint(haystack), _fingerprint(needles)
    order = np.argsort(fh, kind="stable")
    sorted_fh = fh[order]
    pos = np.minimum(_search(sorted_fh, fn), len(order) - 1)
    cand = order[pos]
    vd = np.dtype((np.void, width))
    same = (sorted_fh[pos] == fn) & (
        np.ascontiguousarray(haystack).view(vd)[cand] == np.ascontiguousarray(needles).view(vd))
    return np.where(same, cand, -1)


def gather(values: Array, idx: Array) -> Array:
    """``values[idx]`` where ``idx >= 0``, zero where ``idx`` is -1 (no match)."""
    out = np.zeros(len(idx), dtype=values.dtype)
    hit = idx >= 0
    out[hit] = values[idx[hit]]
    return out


@dataclass
class SyncStats:
    """What one round did (passed to ``xpro_sync_completed``)."""

    started: int = 0  # ns
    seconds: float = 0.0
    flows: int = 0  # local records read
    merged: int = 0  # sent to the master
    pulled: int = 0  # master changes taken in
    created: int = 0  # local records created from the master
    applied: int = 0  # kernel updates applied
    raced: int = 0  # updates skipped: reset in the kernel meanwhile
    expired: int = 0
    destinations: int = 0
    workload: float = 0.0
    peers: dict[str, ProxyStatus] = field(default_factory=dict)
    error: str = ""  # a store error after the merge (the round still completed)


class _KeyIndex:
    """Fixed-size keys -> slots, found and grown in bulk (no Python loop per key).

    Keys are kept sorted by a 64-bit fingerprint; a lookup is one
    ``searchsorted`` and a byte comparison with the stored key.  Two different
    keys with one fingerprint (about 1 in 10^7 at a million keys) are kept in
    a small dict instead.
    """

    def __init__(self, dtype: np.dtype[Any]) -> None:
        self.void = np.dtype((np.void, dtype.itemsize))
        self.fp = np.zeros(0, dtype=np.uint64)
        self.slot = np.zeros(0, dtype=np.int64)
        self.clash: dict[bytes, int] = {}

    def _probe(self, keys: Array) -> tuple[Array, Array, Array]:
        fp = _fingerprint(keys)
        if len(self.fp) == 0:
            none = np.zeros(len(keys), dtype=bool)
            return fp, np.zeros(len(keys), dtype=np.int64), none
        pos = np.minimum(_search(self.fp, fp), len(self.fp) - 1)
        same_fp = self.fp[pos] == fp
        return fp, pos, same_fp

    def find(self, keys: Array, stored: Array) -> Array:
        """The slot of each key, or -1; ``stored`` holds the key of each slot."""
        _, pos, same_fp = self._probe(keys)
        out = np.full(len(keys), -1, dtype=np.int64)
        if not same_fp.any():
            return out
        cand = self.slot[pos]
        kv = np.ascontiguousarray(keys).view(self.void)
        hit = same_fp & (np.ascontiguousarray(stored).view(self.void)[cand] == kv)
        out[hit] = cand[hit]
        if self.clash:
            for i in np.flatnonzero(same_fp & ~hit).tolist():
                out[i] = self.clash.get(kv[i].tobytes(), -1)
        return out

    def add(self, keys: Array, slots: Array) -> None:
        """Index keys that :meth:`find` did not find."""
        fp, _, same_fp = self._probe(keys)
        _, first = np.unique(fp, return_index=True)
        dup = np.ones(len(keys), dtype=bool)
        dup[first] = False
        clash = same_fp | dup
        if clash.any():
            kv = np.ascontiguousarray(keys).view(self.void)
            for i in np.flatnonzero(clash).tolist():
                self.clash[kv[i].tobytes()] = int(slots[i])
        keep = ~clash
        order = np.argsort(fp[keep], kind="stable")
        new_fp, new_slot = fp[keep][order], slots[keep][order]
        at = np.searchsorted(self.fp, new_fp)
        self.fp = np.insert(self.fp, at, new_fp)
        self.slot = np.insert(self.slot, at, new_slot)

    def remove(self, keys: Array, slots: Array) -> None:
        """Forget keys found at ``slots``."""
        fp = _fingerprint(keys)
        pos = np.searchsorted(self.fp, fp)
        ok = (pos < len(self.fp)) & (self.fp[np.minimum(pos, len(self.fp) - 1)] == fp)
        ok &= self.slot[np.minimum(pos, len(self.fp) - 1)] == slots
        self.fp = np.delete(self.fp, pos[ok])
        self.slot = np.delete(self.slot, pos[ok])
        if self.clash:
            kv = np.ascontiguousarray(keys).view(self.void)
            for i in np.flatnonzero(~ok).tolist():
                self.clash.pop(kv[i].tobytes(), None)


class _Mirror:
    """The sync's copy of the local flow table: what each round read or wrote.

    Updated only for the records a round touches; used to recompute the
    aggregates of the destinations those records belong to and to find idle
    records, without reading the kernel's whole table.
    """

    def __init__(self) -> None:
        self.index = _KeyIndex(L.FLOW_KEY)
        self.free = np.zeros(0, dtype=np.int64)
        self.keys = np.zeros(0, dtype=L.FLOW_KEY)
        self.ts1 = np.zeros(0, dtype=np.int64)
        self.ts2 = np.zeros(0, dtype=np.int64)
        self.c = np.zeros(0, dtype=np.int64)
        self.dst = np.zeros(0, dtype=np.int64)
        self.alive = np.zeros(0, dtype=bool)
        self.dst_index: dict[bytes, int] = {}
        self.dst_keys = np.zeros(0, dtype=L.DST_KEY)

    def _grow(self, need: int) -> None:
        cap = len(self.alive)
        if need <= len(self.free):
            return
        new = max(cap + need, 2 * cap, 1024)
        for name in ("keys", "ts1", "ts2", "c", "dst", "alive"):
            old = getattr(self, name)
            arr = np.zeros(new, dtype=old.dtype)
            arr[:cap] = old
            setattr(self, name, arr)
        self.free = np.concatenate([np.arange(new - 1, cap - 1, -1, dtype=np.int64), self.free])

    def _dst_ids(self, dkeys: Array) -> Array:
        """Destination ids (a dict over the few distinct destinations of a batch)."""
        vd = np.dtype((np.void, L.DST_KEY.itemsize))
        uniq, inv = np.unique(np.ascontiguousarray(dkeys).view(vd), return_inverse=True)
        ids = np.empty(len(uniq), dtype=np.int64)
        for j, u in enumerate(uniq):
            k = u.tobytes()
            d = self.dst_index.get(k)
            if d is None:
                d = self.dst_index[k] = len(self.dst_index)
                if d >= len(self.dst_keys):
                    grown = np.zeros(max(1024, 2 * len(self.dst_keys)), dtype=L.DST_KEY)
                    grown[: len(self.dst_keys)] = self.dst_keys
                    self.dst_keys = grown
                self.dst_keys[d] = np.frombuffer(k, dtype=L.DST_KEY)[0]
            ids[j] = d
        out: Array = ids[inv.reshape(-1)]
        return out

    def update(self, keys: Array, ts1: Array, ts2: Array, c: Array) -> Array:
        """Record these flows (no duplicate keys); returns their destination ids."""
        keys = np.asarray(keys, dtype=L.FLOW_KEY)
        slots = self.index.find(keys, self.keys)
        fresh = np.flatnonzero(slots < 0)
        if len(fresh):
            self._grow(len(fresh))
            new_slots = self.free[len(self.free) - len(fresh):][::-1].copy()
            self.free = self.free[: len(self.free) - len(fresh)]
            slots[fresh] = new_slots
            self.keys[new_slots] = keys[fresh]
            self.dst[new_slots] = self._dst_ids(keys["dst"][fresh])
            self.alive[new_slots] = True
            self.index.add(keys[fresh], new_slots)
        self.ts1[slots], self.ts2[slots], self.c[slots] = ts1, ts2, c
        return self.dst[slots]

    def remove(self, keys: Array) -> None:
        keys = np.asarray(keys, dtype=L.FLOW_KEY)
        slots = self.index.find(keys, self.keys)
        hit = slots >= 0
        self.index.remove(keys[hit], slots[hit])
        self.alive[slots[hit]] = False
        self.free = np.concatenate([self.free, slots[hit]])


class Syncer:
    """Runs Algorithm 1 for one proxy against one store.

    ``ttl`` (ns) is how long an idle record lives in the maps and the master;
    it must exceed T_T1 (an idle record older than that resets anyway).
    """

    def __init__(self, filt: FilterState, store: Store, proxy: str, params: SyncParams, *,
                 period: int = NS_PER_S, ttl: int | None = None,
                 store_expire_every: int = 10) -> None:
        self.filt = filt
        self.store = store
        self.proxy = proxy
        self.params = params
        self.period = period
        self.ttl = ttl if ttl is not None else max(6 * params.t_t1, 60 * NS_PER_S)
        self.cursor: Any = None
        self.mirror = _Mirror()
        self.rounds = 0
        self.store_expire_every = store_expire_every
        self._full_scan = True  # the first round reads the whole table
        self._pending: tuple[Array, Array, Array] | None = None
        self._dirty_lost = filt.dirty_lost()
        self._last_packets: int | None = None
        self._last_time: int | None = None

    # ------------------------------------------------------------------------

    def workload(self, now: int) -> float:
        """Packets per second the program saw since the last round (drops included)."""
        packets = int(self.filt.counters()[:, 0].sum())
        w = 0.0
        if self._last_packets is not None and self._last_time is not None and now > self._last_time:
            w = (packets - self._last_packets) * NS_PER_S / (now - self._last_time)
        self._last_packets, self._last_time = packets, now
        return w

    def _changed_flows(self) -> tuple[Array, Array]:
        """The keys and records of every flow counted since the last round."""
        ended = self.filt.next_epoch()
        lost = self.filt.dirty_lost()
        if lost != self._dirty_lost:
            log.warning("sync %s: %d flows could not be marked dirty (the dirty set is "
                        "full); reading the whole table", self.proxy, lost - self._dirty_lost)
            self._dirty_lost = lost
            self._full_scan = True
        if self._full_scan:
            self.filt.take_dirty(ended)
            self.filt.take_dirty(ended + 1)
            self._full_scan = False
            return self.filt.read_flows()
        keys = self.filt.take_dirty(ended)
        exists, recs = self.filt.read(keys)
        return keys[exists], recs[exists]

    def round(self, now: int | None = None) -> SyncStats:
        """One sync round at time ``now`` (ns, TAI; the real clock by default)."""
        t0 = time.perf_counter()
        if now is None:
            self.filt.sync_clock()
            now = time.clock_gettime_ns(time.CLOCK_TAI)
        st = SyncStats(started=now)
        self.rounds += 1

        # Lines 1-2.
        st.workload = self.workload(now)
        self.store.heartbeat(self.proxy, st.workload, now)
        st.peers = self.store.proxies()

        # A merge that failed last time is repeated first, with the same
        # arrays (the store applies each batch at most once), and written
        # back before anything new is read.
        if self._pending is not None:
            self._replay(*self._pending)
            self._pending = None

        # What we counted: the dirty flows, their dc and mark (model.local_view).
        keys, recs = self._changed_flows()
        st.flows = len(keys)
        touched = [self.mirror.update(keys, recs["ts1"], recs["ts2"], recs["c"])]
        local = _local_view(recs)
        changed = (local["dc"] != 0) | (local["mark"] == 1)
        keys, recs, local = keys[changed], recs[changed], local[changed]

        # Merged into the master (atomic per record, in the store).
        try:
            existed, before = self.store.merge(keys, local, self.params)
        except StoreError:
            # Maybe applied, maybe not: keep the arrays for the replay.
            self._pending = (keys, recs, local)
            raise
        st.merged = len(keys)
        final, _ = merge_arrays(local, np.ones(len(keys), bool), before, existed, self.params)

        # From here on the master holds our dc: whatever fails, the kernel must
        # be brought level with it, or the next round would count it again.
        try:
            pkeys, precs, cursor = self.store.changes(self.cursor)
            self.cursor = cursor
        except StoreError as exc:
            log.warning("sync %s: reading the master's changes failed (%s); merged flows "
                        "are still written back, changes are read next round", self.proxy, exc)
            st.error = str(exc)
            pkeys, precs = np.zeros(0, dtype=L.FLOW_KEY), np.zeros(0, dtype=MASTER)
        st.pulled = len(pkeys)

        # Others' changes to flows we did not merge now: taken into our view
        # where we have counted nothing new (else next round merges both).
        other = index_of(keys, pkeys) < 0
        pkeys, precs = pkeys[other], precs[other]
        p_exists, p_recs = self.filt.read(pkeys)
        p_local = _local_view(p_recs)
        quiet = p_exists & (p_local["dc"] == 0) & (p_local["mark"] == 0)
        q_final, _ = merge_arrays(p_local[quiet], np.ones(int(quiet.sum()), bool),
                                  precs[quiet], np.ones(int(quiet.sum()), bool), self.params)
        new_keys, new_recs = pkeys[~p_exists], precs[~p_exists]
        st.created = len(new_keys)

        # Into the kernel: deltas and the new baseline; created records.
        all_keys = np.concatenate([keys, pkeys[quiet]], dtype=L.FLOW_KEY)
        all_recs = np.concatenate([recs, p_recs[quiet]], dtype=L.FLOW)
        all_final = np.concatenate([final, q_final], dtype=LOCAL)
        upd = _flow_updates(all_keys, all_recs, all_final)
        ts1_new = upd["ts1"]
        add = apply_entries(new_keys, OP_FLOW | OP_CREATE, c_delta=new_recs["c"].astype(np.int64),
                            ts1=new_recs["ts1"], ts2=new_recs["ts2"], base_c=new_recs["c"])
        res = self.filt.apply(np.concatenate([upd, add], dtype=L.APPLY))
        ok = res == APPLIED
        st.applied = int(ok.sum())
        st.raced = int((~ok).sum())

        # The mirror, then the aggregates of the destinations touched.
        m_keys = np.concatenate([all_keys, new_keys[ok[len(upd):]]], dtype=L.FLOW_KEY)
        m_ts1 = np.concatenate([np.where(ts1_new != 0, ts1_new, all_recs["ts1"]),
                                new_recs["ts1"][ok[len(upd):]]]).astype(np.int64)
        m_ts2 = np.concatenate([np.maximum(all_final["ts2"], all_recs["ts2"]),
                                new_recs["ts2"][ok[len(upd):]]]).astype(np.int64)
        m_c = np.concatenate([all_final["c"], new_recs["c"][ok[len(upd):]]]).astype(np.int64)
        touched.append(self.mirror.update(m_keys, m_ts1, m_ts2, m_c))
        st.destinations = self._recompute_destinations(np.unique(np.concatenate(touched)), now)

        try:
            st.expired = self._expire(now)
        except StoreError as exc:
            log.warning("sync %s: expiring master records failed: %s", self.proxy, exc)
            st.error = str(exc)
        st.seconds = time.perf_counter() - t0
        return st

    def _replay(self, keys: Array, recs: Array, local: Array) -> None:
        """Repeat a failed merge and write its result into the kernel."""
        existed, before = self.store.merge(keys, local, self.params)
        final, _ = merge_arrays(local, np.ones(len(keys), bool), before, existed, self.params)
        self.filt.apply(_flow_updates(keys, recs, final))
        log.info("sync %s: the merge of %d flows that failed earlier is done", self.proxy,
                 len(keys))

    # ------------------------------------------------------------------------

    def _expire(self, now: int) -> int:
        """Remove records idle longer than the TTL from the maps (and the master)."""
        mr = self.mirror
        idle = mr.alive & ((now - mr.ts2) > self.ttl)
        gone = 0
        if idle.any():
            keys = mr.keys[idle]
            exists, recs = self.filt.read(keys)
            keys, recs = keys[exists], recs[exists]
            res = self.filt.apply(apply_entries(keys, OP_FLOW | OP_DELETE, gen=recs["gen"],
                                                ts2=recs["ts2"]))
            mr.remove(keys[res == APPLIED])
            mr.remove(mr.keys[idle][~exists])
            gone = int((res == APPLIED).sum())
        if self.rounds % self.store_expire_every == 0:
            self.store.expire(now - self.ttl)
        return gone

    def _recompute_destinations(self, dst_ids: Array, now: int) -> int:
        """Set the aggregates of ``dst_ids`` to their exact value (DESIGN.md 3.5).

        Over each destination's flows neither idle longer than T_T1 nor over
        T_F1 (:func:`xpro.model.recompute_dst`): ts1* = min ts1', ts2* = max
        ts2', c* = sum c'.  Written as deltas, so packets admitted meanwhile
        stay counted.
        """
        if len(dst_ids) == 0:
            return 0
        p = self.filt.params
        mr = self.mirror
        sel = mr.alive & np.isin(mr.dst, dst_ids)
        ts1, ts2, c, dst = mr.ts1[sel], mr.ts2[sel], mr.c[sel], mr.dst[sel]
        # Flows first counted after this round's read are not in the mirror,
        # but their packets are in the kernel's aggregate: a spoofed flood
        # creates thousands per round, and leaving them out would lower the
        # aggregate under T_F2 every round.  Take them from the kernel.
        # Only those of the destinations recomputed are read.
        fresh = self.filt.peek_dirty(self.filt.epoch)
        if len(fresh):
            fresh = fresh[mr.index.find(fresh, mr.keys) < 0]
        if len(fresh):
            f_dst = mr._dst_ids(fresh["dst"])
            mine = np.isin(f_dst, dst_ids)
            exists, recs = self.filt.read(fresh[mine])
            recs = recs[exists]
            ts1 = np.concatenate([ts1, recs["ts1"].astype(np.int64)])
            ts2 = np.concatenate([ts2, recs["ts2"].astype(np.int64)])
            c = np.concatenate([c, recs["c"].astype(np.int64)])
            dst = np.concatenate([dst, f_dst[mine][exists]])
        window = ts2 - ts1
        over = (window > p.t_t2) & rate_exceeds_array(c, window, p.t_f1)
        live = ((now - ts2) <= p.t_t1) & ~over
        pos = np.searchsorted(dst_ids, dst[live])
        n = len(dst_ids)
        agg_c = np.zeros(n, dtype=np.int64)
        np.add.at(agg_c, pos, c[live])
        agg_t1 = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(agg_t1, pos, ts1[live])
        agg_t2 = np.zeros(n, dtype=np.int64)
        np.maximum.at(agg_t2, pos, ts2[live])
        has = agg_t2 > 0
        ukeys = mr.dst_keys[dst_ids[has]]
        have, cur = self.filt.read_dsts_of(ukeys)
        fk = np.zeros(len(ukeys), dtype=L.FLOW_KEY)
        fk["dst"] = ukeys
        cur_c = cur["c"].astype(np.int64)
        cur_t1 = cur["ts1"].astype(np.int64)
        ent = apply_entries(fk, np.where(have, OP_DST, OP_DST | OP_CREATE),
                            c_delta=agg_c[has] - cur_c,
                            ts1=np.where(agg_t1[has] != cur_t1, agg_t1[has], 0), ts2=agg_t2[has])
        self.filt.apply(ent)
        return len(ukeys)


def _flow_updates(keys: Array, recs: Array, final: Array) -> Array:
    """The control-program updates that take records read as ``recs`` to ``final``.

    ``c' += final.c - c_read`` (packets counted since the read stay counted),
    the new ts1 where it moved, ts2 forward, and the new baseline; applied
    only if the record's gen is still the one read.
    """
    return apply_entries(keys, OP_FLOW, gen=recs["gen"],
                         c_delta=final["c"].astype(np.int64) - recs["c"].astype(np.int64),
                         ts1=np.where(final["ts1"] != recs["ts1"], final["ts1"], 0),
                         ts2=final["ts2"], base_c=final["c"])


def _local_view(recs: Array) -> Array:
    """:func:`xpro.model.local_view` over FLOW records: LOCAL records with dc, mark."""
    out = np.zeros(len(recs), dtype=LOCAL)
    out["ts1"], out["ts2"], out["c"] = recs["ts1"], recs["ts2"], recs["c"]
    same = recs["gen"] == recs["base_gen"]
    c = recs["c"].astype(np.int64)
    out["dc"] = np.maximum(np.where(same, c - recs["base_c"].astype(np.int64), c), 0)
    out["mark"] = ~same
    return out




@dataclass
class SyncStatus:
    """The sync loop's health, as ``xpro status`` and the metrics show it."""

    healthy: bool = True
    last_ok: int = 0  # ns, when the last round completed
    last_error: str = ""
    failures: int = 0  # consecutive failed rounds
    failed_total: int = 0  # every failed attempt since start (store or bug)
    rounds: int = 0
    last: SyncStats | None = None


class SyncLoop:
    """Runs :meth:`Syncer.round` every period, and keeps going when the master fails.

    ``syncer`` is a :class:`Syncer`, or a function that connects to the
    master and returns one: it is called again until it succeeds, so a
    daemon starts filtering while the store is still unreachable.  While the
    master is unreachable the program keeps filtering on local state; rounds
    (and connections) are retried with exponential backoff (up to
    ``max_backoff`` seconds) and the first failure and the recovery are
    reported through ``on_alert(kind, message)`` (``"store_down"`` /
    ``"store_up"``); every completed round goes to ``on_round(stats)``.  Any
    other exception in a round is logged with its traceback and retried the
    same way: a bug must not stop the sync.  The retry policy lives here and
    only here (STYLE.md: the sync loop owns it).
    """

    def __init__(self, syncer: Syncer | Callable[[], Syncer], period: float, *,
                 name: str = "", max_backoff: float = 30.0, on_alert: Any = None,
                 on_round: Any = None) -> None:
        if isinstance(syncer, Syncer):
            self.syncer: Syncer | None = syncer
            self._connect: Callable[[], Syncer] | None = None
            self.name = name or syncer.proxy
        else:
            self.syncer, self._connect = None, syncer
            self.name = name or "proxy"
        self.period = period
        self.max_backoff = max_backoff
        self.on_alert = on_alert
        self.on_round = on_round
        self.status = SyncStatus()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _failed(self, error: str) -> float:
        self.status.failures += 1
        self.status.failed_total += 1
        self.status.last_error = error
        return float(min(self.max_backoff, self.period * 2 ** min(self.status.failures, 10)))

    def step(self) -> float:
        """One round (or one failed attempt); returns the seconds to wait before the next."""
        try:
            if self.syncer is None:
                assert self._connect is not None
                self.syncer = self._connect()
            st = self.syncer.round()
        except StoreError as exc:
            if self.status.healthy:
                self.status.healthy = False
                log.error("sync %s: master store unreachable, filtering on local state: %s",
                          self.name, exc)
                self._alert("store_down", f"master store unreachable: {exc}")
            return self._failed(str(exc))
        except Exception as exc:
            log.exception("sync %s: the round failed; retrying", self.name)
            return self._failed(f"{type(exc).__name__}: {exc}")
        if not self.status.healthy:
            log.warning("sync %s: master store back after %d failed rounds", self.name,
                        self.status.failures)
            self._alert("store_up", f"master store reachable again after "
                                    f"{self.status.failures} failed rounds")
        self.status.healthy = True
        self.status.failures = 0
        self.status.rounds += 1
        self.status.last_ok = st.started
        self.status.last = st
        if self.on_round is not None:
            self.on_round(st)
        return max(0.0, self.period - st.seconds)

    def _alert(self, kind: str, message: str) -> None:
        if self.on_alert is not None:
            try:
                self.on_alert(kind, message)
            except Exception:  # an alert sink must not stop the sync
                log.exception("sync %s: alert sink failed", self.name)

    def run(self) -> None:
        """Run until :meth:`stop`."""
        while not self._stop.is_set():
            wait = self.step()
            self._stop.wait(wait)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"xpro-sync-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


__all__ = ["SyncLoop", "SyncStats", "SyncStatus", "Syncer", "index_of"]
