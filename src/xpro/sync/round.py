"""The sync round: Algorithm 1, as the daemon runs it every period.

One round, for one proxy (:meth:`Syncer.round`):

1. publish this proxy's workload W and heartbeat; read the others' (lines 1-2);
2. move the program to the next sync epoch and read the records of the flows
   it marked dirty in the one that ended (only those: the round costs
   O(changes), not O(table)); derive the paper's ``dc`` and ``mark`` from
   each record's baseline (:func:`xpro.core.model.local_view`);
3. merge every flow this proxy counted since the last round into the master,
   atomically per record (the store's side of lines 5-33), and compute the
   same merge locally (:func:`xpro.core.merge.merge_arrays`);
4. take every master record changed since the last round (other proxies'
   flows) and merge it into the local view, creating records this proxy has
   not seen (lines 26-28);
5. write the results into the kernel as deltas, with the new baseline,
   through ``xpro_apply`` (never a userspace write of a kernel-owned field:
   docs/semantics.rst, "Record ownership");
6. recompute exactly, from the flow records, the aggregate of every
   destination whose flows changed (docs/semantics.rst, "The per-destination
   check"), and expire idle records.

The daemon keeps a mirror of the flow table (updated from what each round
reads) for the aggregates and expiry, so neither needs a pass over the
kernel's table.

Everything is done on whole numpy arrays (docs/sync.rst, "One round").
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from xpro.core import layout as L
from xpro.core.keys import index_of
from xpro.core.layout import LOCAL, MASTER
from xpro.core.merge import merge_arrays
from xpro.core.model import NS_PER_S, SyncParams
from xpro.core.params import KnownPolicy
from xpro.core.state import (
    APPLIED,
    OP_CREATE,
    OP_DELETE,
    OP_DST,
    OP_FLOW,
    FilterState,
    apply_entries,
)
from xpro.core.status import Closure, SyncStats
from xpro.errors import StoreError
from xpro.stores.base import Store
from xpro.sync.known import KnownClients, is_closed_record, over_t_f1
from xpro.sync.mirror import Mirror

__all__ = ["Syncer"]

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]


class Syncer:
    """Runs Algorithm 1 for one proxy against one store.

    ``ttl`` (ns) is how long an idle record lives in the maps and the master;
    it must exceed T_T1 (an idle record older than that resets anyway).
    """

    def __init__(self, filt: FilterState, store: Store, proxy: str, params: SyncParams, *,
                 period: int = NS_PER_S, ttl: int | None = None,
                 store_expire_every: int = 10, known: KnownPolicy | None = None) -> None:
        self.filt = filt
        self.store = store
        self.proxy = proxy
        self.params = params
        self.period = period
        self.ttl = ttl if ttl is not None else max(6 * params.t_t1, 60 * NS_PER_S)
        self.cursor: Any = None
        self.mirror = Mirror()
        #: Closed destinations and the known-client table.
        self.known = KnownClients(filt, known)
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
        st.destinations, st.closures = self._recompute_destinations(
            np.unique(np.concatenate(touched)), now)
        st.closed = len(self.known.closed)
        st.known = len(self.known.keys)
        st.known_overflow = self.known.overflow

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
            self.known.forget(mr.keys[idle])
            gone = int((res == APPLIED).sum())
        if self.rounds % self.store_expire_every == 0:
            self.store.expire(now - self.ttl)
        return gone

    def _recompute_destinations(self, dst_ids: Array, now: int) -> tuple[int, list[Closure]]:
        """Set the aggregates of ``dst_ids`` to their exact value; judge closures.

        Over each destination's records neither idle longer than T_T1 nor
        (real flows only) over T_F1, its closed-drops record included
        (:func:`xpro.core.model.recompute_dst`, docs/semantics.rst, "The
        per-destination check" and "Closed destinations and known clients"):
        ts1* = min ts1', ts2* = max ts2', c* = sum c', kc = sum c' of its
        known clients.  In ``addr+port`` mode the address aggregate of every
        destination touched is recomputed too, over the flows of all the
        address's keys and its own closed-drops record ("Address
        aggregates"; :func:`xpro.core.model.aggregates_of`).  The
        destinations closed at the last round are judged too (they reopen
        without a flow changing), and the known-client table follows
        (:class:`xpro.sync.known.KnownClients`).  Written as deltas, so
        packets admitted meanwhile stay counted.
        """
        mr = self.mirror
        p = self.filt.params
        by_port = p.dst_mode == L.DST_ADDR_PORT
        if self.known.closed:
            shut = np.frombuffer(b"".join(self.known.closed), dtype=L.DST_KEY)
            dst_ids = np.union1d(dst_ids, mr.dst_ids(shut))
        if by_port and len(dst_ids):
            dst_ids = np.union1d(dst_ids, mr.address_ids(dst_ids))
        if len(dst_ids) == 0:
            return 0, []
        sel = mr.alive & np.isin(mr.dst, dst_ids)
        if by_port:
            sel |= mr.alive & np.isin(mr.address_ids(mr.dst), dst_ids)
        keys = mr.keys[sel]
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
            f_dst = mr.dst_ids(fresh["dst"])
            mine = np.isin(f_dst, dst_ids)
            if by_port:
                mine |= np.isin(mr.address_ids(f_dst), dst_ids)
            exists, recs = self.filt.read(fresh[mine])
            recs = recs[exists]
            keys = np.concatenate([keys, fresh[mine][exists]], dtype=L.FLOW_KEY)
            ts1 = np.concatenate([ts1, recs["ts1"].astype(np.int64)])
            ts2 = np.concatenate([ts2, recs["ts2"].astype(np.int64)])
            c = np.concatenate([c, recs["c"].astype(np.int64)])
            dst = np.concatenate([dst, f_dst[mine][exists]])
        drops = is_closed_record(keys)
        if by_port:
            keys, ts1, ts2, c, dst, drops = _with_addresses(mr, keys, ts1, ts2, c, dst, drops,
                                                            dst_ids)
        live = ((now - ts2) <= p.t_t1) & (drops | ~over_t_f1(ts1, ts2, c, p))
        pos = np.searchsorted(dst_ids, dst)
        n = len(dst_ids)
        agg = np.zeros(n, dtype=L.DST)
        agg_c = np.zeros(n, dtype=np.int64)
        np.add.at(agg_c, pos[live], c[live])
        agg_t1 = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(agg_t1, pos[live], ts1[live])
        agg_t2 = np.zeros(n, dtype=np.int64)
        np.maximum.at(agg_t2, pos[live], ts2[live])
        has = agg_t2 > 0
        agg["c"], agg["ts2"] = agg_c, agg_t2
        agg["ts1"] = np.where(has, agg_t1, 0)
        dkeys = mr.dst_keys[dst_ids]
        closures = self.known.update(dkeys, agg, {"keys": keys, "ts1": ts1, "ts2": ts2, "c": c,
                                                  "dst": pos}, now, p)
        client = live & ~drops & (self.known.classes_of(keys) == L.Known.CLIENT)
        agg_kc = np.zeros(n, dtype=np.int64)
        np.add.at(agg_kc, pos[client], c[client])
        ukeys = dkeys[has]
        have, cur = self.filt.read_dsts_of(ukeys)
        fk = np.zeros(len(ukeys), dtype=L.FLOW_KEY)
        fk["dst"] = ukeys
        cur_c = cur["c"].astype(np.int64)
        cur_t1 = cur["ts1"].astype(np.int64)
        ent = apply_entries(fk, np.where(have, OP_DST, OP_DST | OP_CREATE),
                            c_delta=agg_c[has] - cur_c,
                            ts1=np.where(agg_t1[has] != cur_t1, agg_t1[has], 0), ts2=agg_t2[has],
                            kc_delta=agg_kc[has] - cur["kc"].astype(np.int64))
        self.filt.apply(ent)
        return len(ukeys), closures


def _with_addresses(mr: Mirror, keys: Array, ts1: Array, ts2: Array, c: Array, dst: Array,
                    drops: Array, dst_ids: Array) -> tuple[Array, Array, Array, Array, Array,
                                                           Array]:
    """The records of the aggregates ``dst_ids`` in ``addr+port`` mode: each real
    flow once for its key's aggregate and once more, keyed (source, address
    key), for its address's (:func:`xpro.core.model.aggregates_of`); a
    closed-drops record for its own aggregate only.  Rows of aggregates not
    in ``dst_ids`` are left out."""
    real = ~drops
    akeys = np.array(keys[real], dtype=L.FLOW_KEY)
    akeys["dst"]["port"], akeys["dst"]["proto"], akeys["dst"]["pad"] = 0, 0, L.DST_PAD_ADDR
    keys = np.concatenate([keys, akeys], dtype=L.FLOW_KEY)
    ts1, ts2, c = (np.concatenate([x, x[real]]) for x in (ts1, ts2, c))
    dst = np.concatenate([dst, mr.address_ids(dst[real])])
    drops = np.concatenate([drops, np.zeros(int(real.sum()), dtype=bool)])
    keep = np.isin(dst, dst_ids)
    return keys[keep], ts1[keep], ts2[keep], c[keep], dst[keep], drops[keep]


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
    """:func:`xpro.core.model.local_view` over FLOW records: LOCAL records with dc, mark."""
    out = np.zeros(len(recs), dtype=LOCAL)
    out["ts1"], out["ts2"], out["c"] = recs["ts1"], recs["ts2"], recs["c"]
    same = recs["gen"] == recs["base_gen"]
    c = recs["c"].astype(np.int64)
    out["dc"] = np.maximum(np.where(same, c - recs["base_c"].astype(np.int64), c), 0)
    out["mark"] = ~same
    return out



