"""The sync round: Algorithm 1, as the daemon runs it every period.

One round, for one proxy (:meth:`Syncer.round`):

1. publish this proxy's workload W and heartbeat; read the others' (lines 1-2);
2. read the kernel's flow records and the sync's own baseline, and derive the
   paper's ``dc`` and ``mark`` for each (:func:`xpro.model.local_view`);
3. merge every flow this proxy counted since the last round into the master,
   atomically per record (the store's side of lines 5-33), and compute the
   same merge locally (:func:`xpro.merge.merge_arrays`);
4. take every master record changed since the last round (other proxies'
   flows) and merge it into the local view, creating records this proxy has
   not seen (lines 26-28);
5. write the results into the kernel as deltas through ``xpro_apply`` (never
   a userspace write of a kernel-owned field: DESIGN.md 4.3), and record the
   new baseline;
6. recompute every destination aggregate exactly from the flow records
   (DESIGN.md 3.5) and expire idle records from the maps.

Everything is done on whole numpy arrays (DESIGN.md 4.5).
"""

from __future__ import annotations

import logging
import time
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
    XdpFilter,
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


def index_of(haystack: Array, needles: Array) -> Array:
    """For each needle, its index in ``haystack`` or -1 (both arrays of one key dtype)."""
    if len(haystack) == 0 or len(needles) == 0:
        return np.full(len(needles), -1, dtype=np.int64)
    width = haystack.dtype.itemsize
    fh, fn = _fingerprint(haystack), _fingerprint(needles)
    order = np.argsort(fh, kind="stable")
    sorted_fh = fh[order]
    pos = np.minimum(np.searchsorted(sorted_fh, fn), len(order) - 1)
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


class Syncer:
    """Runs Algorithm 1 for one proxy against one store.

    ``ttl`` (ns) is how long an idle record lives in the maps and the master;
    it must exceed T_T1 (an idle record older than that resets anyway).
    """

    def __init__(self, filt: XdpFilter, store: Store, proxy: str, params: SyncParams, *,
                 period: int = NS_PER_S, ttl: int | None = None) -> None:
        self.filt = filt
        self.store = store
        self.proxy = proxy
        self.params = params
        self.period = period
        self.ttl = ttl if ttl is not None else max(6 * params.t_t1, 60 * NS_PER_S)
        self.cursor: Any = None
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

    def round(self, now: int | None = None) -> SyncStats:
        """One sync round at time ``now`` (ns, TAI; the real clock by default)."""
        t0 = time.perf_counter()
        now = time.clock_gettime_ns(time.CLOCK_TAI) if now is None else now
        st = SyncStats(started=now)

        # Lines 1-2.
        st.workload = self.workload(now)
        self.store.heartbeat(self.proxy, st.workload, now)
        st.peers = self.store.proxies()

        # The kernel's records and our baseline: dc and mark (model.local_view).
        keys, flows = self.filt.read_flows()
        bkeys, base = self.filt.read_synced()
        st.flows = len(keys)
        bi = index_of(bkeys, keys)
        has_base = bi >= 0
        base_c = gather(base["c"], bi).astype(np.int64)
        base_gen = gather(base["gen"], bi)
        same_gen = has_base & (base_gen == flows["gen"])
        c = flows["c"].astype(np.int64)
        dc = np.where(same_gen, c - base_c, c)
        mark = has_base & ~same_gen
        local = np.zeros(len(keys), dtype=LOCAL)
        local["ts1"], local["ts2"], local["c"] = flows["ts1"], flows["ts2"], flows["c"]
        local["dc"] = np.maximum(dc, 0)
        local["mark"] = mark

        # Line 3 onwards for what we counted: merged into the master.
        changed = ~has_base | (dc != 0) | mark
        ck = keys[changed]
        existed, before = self.store.merge(ck, local[changed], self.params)
        st.merged = len(ck)
        merged_local, _ = merge_arrays(local[changed], np.ones(len(ck), bool), before,
                                       existed, self.params)
        final = local.copy()
        final["dc"], final["mark"] = 0, 0
        final[changed] = merged_local

        # From here on the master holds our dc: whatever fails, the kernel and
        # the baseline must be brought level with it, or the next round would
        # count those packets again.
        try:
            pkeys, precs, cursor = self.store.changes(self.cursor)
            self.cursor = cursor
        except StoreError as exc:
            log.warning("sync %s: reading the master's changes failed (%s); merged flows "
                        "are still written back, changes are read next round", self.proxy, exc)
            st.error = str(exc)
            pkeys, precs = np.zeros(0, dtype=L.FLOW_KEY), np.zeros(0, dtype=MASTER)
        st.pulled = len(pkeys)
        pi = index_of(keys, pkeys)
        known = pi >= 0
        if known.any():
            idx = pi[known]
            lo, _ = merge_arrays(final[idx], np.ones(len(idx), bool), precs[known],
                                 np.ones(len(idx), bool), self.params)
            final[idx] = lo
        new_keys = pkeys[~known]
        new_recs = precs[~known]
        st.created = len(new_keys)

        # Into the kernel, as deltas, only where something changed.
        delta = final["c"].astype(np.int64) - c
        touch = changed.copy()
        if known.any():
            touch[pi[known]] = True
        touch &= (delta != 0) | (final["ts1"] != flows["ts1"]) | (final["ts2"] > flows["ts2"])
        upd = apply_entries(keys[touch], OP_FLOW, gen=flows["gen"][touch],
                            c_delta=delta[touch], ts1=np.where(
                                final["ts1"][touch] != flows["ts1"][touch],
                                final["ts1"][touch], 0),
                            ts2=final["ts2"][touch])
        add = apply_entries(new_keys, OP_FLOW | OP_CREATE, c_delta=new_recs["c"].astype(
            np.int64), ts1=new_recs["ts1"], ts2=new_recs["ts2"])
        res = self.filt.apply(np.concatenate([upd, add]) if len(add) else upd)
        ok = res == APPLIED
        st.applied = int(ok.sum())
        st.raced = int((~ok).sum())

        # The new baseline: c' as the kernel holds it minus what arrived since
        # our read, and the gen we read.  Raced records keep the old baseline,
        # so the packets of the new window count at the next round.
        base_keys = keys.copy()
        base_vals = np.zeros(len(keys), dtype=L.SYNCED)
        base_vals["c"] = np.where(has_base, base_c, 0)
        base_vals["gen"] = np.where(has_base, base_gen, 0)
        refreshed = changed.copy()
        if known.any():
            refreshed[pi[known]] = True
        n_upd = int(touch.sum())
        tidx = np.flatnonzero(touch)
        refreshed[tidx[~ok[:n_upd]]] = False
        base_vals["c"][refreshed] = final["c"][refreshed]
        base_vals["gen"][refreshed] = flows["gen"][refreshed]
        self.filt.write_synced(base_keys[refreshed], base_vals[refreshed])
        created_ok = ok[n_upd:]
        if len(new_keys):
            nb = np.zeros(int(created_ok.sum()), dtype=L.SYNCED)
            nb["c"] = new_recs["c"][created_ok]
            self.filt.write_synced(new_keys[created_ok], nb)

        try:
            st.expired = self._expire(keys, flows, now)
        except StoreError as exc:
            log.warning("sync %s: expiring master records failed: %s", self.proxy, exc)
            st.error = str(exc)
        st.destinations = self._recompute_destinations(now)
        st.seconds = time.perf_counter() - t0
        return st

    # ------------------------------------------------------------------------

    def _expire(self, keys: Array, flows: Array, now: int) -> int:
        """Remove records idle longer than the TTL from the maps and the master."""
        idle = (now - flows["ts2"].astype(np.int64)) > self.ttl
        if not idle.any():
            return 0
        res = self.filt.apply(apply_entries(keys[idle], OP_FLOW | OP_DELETE,
                                            gen=flows["gen"][idle], ts2=flows["ts2"][idle]))
        gone = keys[idle][res == APPLIED]
        self.filt.delete_synced(gone)
        self.store.expire(now - self.ttl)
        return len(gone)

    def _recompute_destinations(self, now: int) -> int:
        """Set every aggregate to the exact value over its flows (DESIGN.md 3.5).

        Over the destination's flows neither idle longer than T_T1 nor over
        T_F1 (:func:`xpro.model.recompute_dst`): ts1* = min ts1', ts2* = max
        ts2', c* = sum c'.  Written as deltas, so packets admitted meanwhile
        stay counted.
        """
        p = self.filt.params
        keys, flows = self.filt.read_flows()
        if len(keys) == 0:
            return 0
        ts1 = flows["ts1"].astype(np.int64)
        ts2 = flows["ts2"].astype(np.int64)
        c = flows["c"].astype(np.int64)
        window = ts2 - ts1
        over = (window > p.t_t2) & rate_exceeds_array(c, window, p.t_f1)
        live = ((now - ts2) <= p.t_t1) & ~over
        cur_keys, cur = self.filt.read_dsts()
        self._expire_destinations(cur_keys, cur, now)
        if not live.any():
            return 0
        dkeys = np.ascontiguousarray(keys["dst"][live])
        vd = np.dtype((np.void, L.DST_KEY.itemsize))
        uniq, inv = np.unique(dkeys.view(vd), return_inverse=True)
        n = len(uniq)
        agg_c = np.zeros(n, dtype=np.int64)
        np.add.at(agg_c, inv, c[live])
        agg_t1 = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(agg_t1, inv, ts1[live])
        agg_t2 = np.zeros(n, dtype=np.int64)
        np.maximum.at(agg_t2, inv, ts2[live])
        ukeys = uniq.view(L.DST_KEY)
        ci = index_of(cur_keys, ukeys)
        have = ci >= 0
        cur_c = gather(cur["c"], ci).astype(np.int64)
        cur_t1 = gather(cur["ts1"], ci).astype(np.int64)
        fk = np.zeros(n, dtype=L.FLOW_KEY)
        fk["dst"] = ukeys
        ent = apply_entries(fk, np.where(have, OP_DST, OP_DST | OP_CREATE),
                            c_delta=agg_c - cur_c,
                            ts1=np.where(agg_t1 != cur_t1, agg_t1, 0), ts2=agg_t2)
        self.filt.apply(ent)
        return n

    def _expire_destinations(self, keys: Array, dsts: Array, now: int) -> None:
        idle = (now - dsts["ts2"].astype(np.int64)) > self.ttl
        if idle.any():
            fk = np.zeros(int(idle.sum()), dtype=L.FLOW_KEY)
            fk["dst"] = keys[idle]
            self.filt.apply(apply_entries(fk, OP_DST | OP_DELETE, ts2=dsts["ts2"][idle]))


__all__ = ["SyncStats", "Syncer", "index_of"]
