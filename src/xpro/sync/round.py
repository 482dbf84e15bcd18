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

Nothing read from the store is taken on trust (docs/sync.rst, "Values from
the store"): every master record, merge reply and heartbeat is checked
against this proxy's clock and :class:`xpro.core.bounds.Bounds`; a value out
of bounds is quarantined -- dropped from the round, counted in
:attr:`SyncStats.quarantined <xpro.core.status.SyncStats>`, logged once per
key -- and the round goes on.  The share of a destination's aggregate that
only other proxies counted is cut to what their published workloads can
back.

Everything is done on whole numpy arrays (docs/sync.rst, "One round").
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from xpro.core import layout as L
from xpro.core.bounds import MAX_COUNT, MAX_PPS, MAX_SKEW, OK, REASONS, STALE, Bounds
from xpro.core.keys import index_of, unique_keys
from xpro.core.layout import LOCAL, MASTER
from xpro.core.merge import merge_arrays
from xpro.core.model import NS_PER_S, FilterParams, SyncParams
from xpro.core.params import KnownPolicy
from xpro.core.pull import DEFAULT_NEAR, PullRule, near_limit_array
from xpro.core.state import (
    APPLIED,
    OP_CREATE,
    OP_DELETE,
    OP_DST,
    OP_FLOW,
    FilterState,
    apply_entries,
)
from xpro.core.status import Closure, ProxyStatus, SyncStats
from xpro.errors import BadRecord, StoreError
from xpro.stores._common import key_hex, key_list
from xpro.stores.base import REFUSED, Store
from xpro.sync.aggregates import Partials, RecentCounts, recent_starts
from xpro.sync.known import (
    KnownClients,
    closed_now,
    exceeds,
    is_closed_record,
    limits,
    over_t_f1,
)
from xpro.sync.mirror import Mirror

__all__ = ["Syncer"]

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]

#: The share of a destination's aggregate that only other proxies counted is
#: at most this many times what the mesh's proxies say they saw (their W,
#: the highest of each over the TTL) in its window (docs/sync.rst).
BUDGET_SLACK = 2
#: Warnings a round logs about quarantined values (each value once ever);
#: the rest are summed up in one line.
LOG_PER_ROUND = 20
#: Quarantined values kept in a round's stats, as examples for an alert.
EXAMPLES = 20
#: Master records one round takes in at most (Syncer ``max_pull``): the rest
#: come the next rounds (docs/sync.rst, "Bounded work").
MAX_PULL = 250_000
#: Flows the mirror holds at most (Syncer ``max_mirror``): four times the
#: default flow table; beyond it the idlest are forgotten.
MAX_MIRROR = 1 << 22
#: What a round pulls (Syncer ``pull``): ``candidates`` (flows near or over
#: T_F1, destination partials, the known clients of closed destinations)
#: where the store serves them, else ``all`` (every changed record).
PULL_MODES = ("candidates", "all")
#: Keys of a closed address whose known clients a round asks the master for
#: (the busiest; docs/sync.rst, "What a round pulls").
ADDRESS_KEYS = 1024
#: Proxies whose heartbeats a round takes (the most recent).
MAX_PEERS = 1024
#: A proxy whose clock is off the mesh's by less than this is not corrected
#: (NTP does better; the offsets' own jitter is below it).
MIN_SKEW = 50_000_000
#: Nor by more than this (a day): a clock stepped back an hour (a time
#: daemon's late correction, a DST mistake) is corrected; a clock further off
#: is a fault to fix (and offsets that far apart may be forged): the proxy
#: says so instead and filters on its own clock (docs/sync.rst, "Clocks").
MAX_CORRECTION = 86_400 * NS_PER_S


def _accepts_bounds(fn: Callable[..., Any]) -> bool:
    """Whether a store method takes ``bounds`` (a plugin's store may predate it)."""
    try:
        return "bounds" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class Syncer:
    """Runs Algorithm 1 for one proxy against one store.

    ``ttl`` (ns) is how long an idle record lives in the maps and the master;
    it must exceed T_T1 (an idle record older than that resets anyway).
    ``max_pps`` is the count ceiling of a master record (packets a second
    over its window, :class:`xpro.core.bounds.Bounds`).  Every
    ``store_expire_every`` rounds the proxy that holds the mesh's ``expire``
    lease expires the master.  ``pull`` says what a round pulls besides the
    merge's replies (:data:`PULL_MODES`), ``near`` from which fraction of T_F1
    a flow is a candidate (docs/sync.rst, "What a round pulls").
    """

    def __init__(self, filt: FilterState, store: Store, proxy: str, params: SyncParams, *,
                 period: int = NS_PER_S, ttl: int | None = None,
                 store_expire_every: int = 10, known: KnownPolicy | None = None,
                 max_pps: int = MAX_PPS, max_pull: int = MAX_PULL,
                 max_mirror: int = MAX_MIRROR, pull: str = "candidates",
                 near: float = DEFAULT_NEAR) -> None:
        if pull not in PULL_MODES:
            raise ValueError(f"pull {pull!r}: one of {', '.join(PULL_MODES)}")
        self.filt = filt
        self.store = store
        self.proxy = proxy
        self.params = params
        self.period = period
        self.ttl = ttl if ttl is not None else max(6 * params.t_t1, 60 * NS_PER_S)
        self.max_pps = max_pps
        self.max_pull = max_pull
        self.max_mirror = max_mirror
        #: Values from the store quarantined since the start.
        self.quarantined_total = 0
        #: Rounds in which each bound was reached, since the start: ``pull``
        #: (max_pull), ``mirror`` (max_mirror), ``peers`` (MAX_PEERS),
        #: ``workload`` (a destination's share from others cut to the mesh's
        #: workloads).
        self.caps_reached = dict.fromkeys(("pull", "mirror", "peers", "workload"), 0)
        self._logged: set[str] = set()
        self._round_logs = 0
        self._unlogged = 0
        #: Each peer's published workloads by the time it published them.
        self._w_seen: dict[str, dict[int, float]] = {}
        self._unbacked = 0
        #: The local clock of rounds run without ``now`` (None: TAI, after the
        #: program's clock is synced to it; tests set a fake one).
        self.local_clock: Callable[[], int] | None = None
        #: Correct this proxy's clock by the mesh's (docs/sync.rst, "Clocks").
        self.clock_sync = True
        #: The store's clock minus this proxy's at the last measurement (ns).
        self.offset: int | None = None
        #: What this proxy adds to its timestamps to get the mesh's time.
        self.skew = 0
        self.skew_measured: int | None = None
        self._skew_warned = False
        self._merge_bounds = _accepts_bounds(store.merge)
        self._expire_bounds = _accepts_bounds(store.expire)
        self._changes_limit = "limit" in inspect.signature(store.changes).parameters
        self._beat_offset = "offset" in inspect.signature(store.heartbeat).parameters
        #: The rule the master judges this proxy's merges by; the partials
        #: pulled (None: this round pulls every change, ``pull="all"`` or a
        #: store without candidates).
        self.rule = PullRule.of(filt.params, known, near)
        #: Settings from configure(), taken at the start of the next round.
        self._next: tuple[SyncParams, int, int, KnownPolicy, PullRule] | None = None
        self._settings_lock = threading.Lock()
        self.partials: Partials | None = None
        if pull == "candidates" and store.candidates:
            self.partials = Partials(self.rule)
        self._aggs_changed: list[Array] = []
        self._aggs_at = 0
        self.cursor: Any = None
        self.mirror = Mirror()
        #: Each aggregate's recent counts, for its recent rate (_recent_starts).
        self.recent = RecentCounts()
        #: Whether a merge into the master is in flight (SyncLoop.stop waits for it).
        self.merging = False
        self._recent = 0
        #: Closed destinations and the known-client table.
        self.known = KnownClients(filt, known)
        self.rounds = 0
        self.store_expire_every = store_expire_every
        self._full_scan = True  # the first round reads the whole table
        #: Flows whose merge the store refused (bad data): read again next round,
        #: with when the reads that their dc counts from began (_spans; -1:
        #: unknown, before the first landed round).
        self._retry = np.zeros(0, dtype=L.FLOW_KEY)
        self._retry_since = np.zeros(0, dtype=np.int64)
        #: Master records of flows this proxy merged in a round that another
        #: proxy changed after that merge: taken in the next round.
        self._carry: tuple[Array, Array] = (np.zeros(0, dtype=L.FLOW_KEY),
                                            np.zeros(0, dtype=MASTER))
        self._pending: tuple[Array, Array, Array, Array] | None = None
        #: When the last round whose merge the store took began: a flow merged
        #: then has counted its dc since (see _spans).
        self._landed: int | None = None
        self._dirty_lost = filt.dirty_lost()
        self._last_packets: int | None = None
        self._last_time: int | None = None

    # ------------------------------------------------------------------------

    def bounds(self, now: int) -> Bounds:
        """What a master record may hold at ``now``: timestamps up to two periods
        ahead, idle no longer than the TTL, at most ``max_pps`` over its window."""
        return Bounds(now=now, future=2 * self.period, max_age=self.ttl, max_pps=self.max_pps)

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
        # Failed marks counted before the move: a mark that fails after it
        # (its flow then counts as marked in the new epoch) is seen by the
        # next round, which reads the whole table.
        lost = self.filt.dirty_lost()
        ended = self.filt.next_epoch()
        if lost != self._dirty_lost:
            log.warning("sync %s: %d flows could not be marked dirty (the dirty set is "
                        "full); reading the whole table", self.proxy, lost - self._dirty_lost)
            self._dirty_lost = lost
            self._full_scan = True
        if self._full_scan:
            # The ended epoch's marks are covered by the read below.  The new
            # epoch's set is left alone: a flow counted since the flip, before
            # or after the read, is marked there once and only there (its
            # record says so), and emptying that set lost its later packets
            # for the mesh until it was counted again in another epoch.  A
            # stale key left there (an adopted table) costs one read.
            self.filt.take_dirty(ended)
            self._full_scan = False
            return self.filt.read_flows()
        keys = self.filt.take_dirty(ended)
        if len(self._retry):
            keys = np.concatenate([keys, self._retry[index_of(keys, self._retry) < 0]],
                                  dtype=L.FLOW_KEY)
            self._retry = self._retry[:0]
        exists, recs = self.filt.read(keys)
        return keys[exists], recs[exists]

    def configure(self, params: SyncParams, *, filter_params: FilterParams, period: int,
                  ttl: int, known: KnownPolicy, near: float) -> None:
        """New settings after a reload (docs/configuration.rst, "Reloading"): the
        sync's parameters, period and TTL, the known-client rule (the table's
        capacity is fixed at load), and the rule the master judges the next
        merges by (their candidates, partials and known clients: T_F1, T_T2,
        T_T1 of ``filter_params``, ``near`` and ``known``).

        Called from another thread than the rounds': the settings are taken
        at the start of the next round, never in the middle of one.  A new
        T_T1 is a new width of the partials' slots: that round reads the
        master's partials from the start instead of going on from its cursor."""
        rule = PullRule.of(filter_params, known, near)
        with self._settings_lock:
            self._next = (params, period, ttl, known, rule)

    def _take_settings(self) -> None:
        """At the start of a round: the settings :meth:`configure` left, if any."""
        with self._settings_lock:
            nxt, self._next = self._next, None
        if nxt is None:
            return
        self.params, self.period, self.ttl, known, rule = nxt
        self.known.policy = dataclasses.replace(known, capacity=self.known.policy.capacity)
        if rule == self.rule:
            return
        if self.partials is not None:
            if rule.slot_ns != self.rule.slot_ns:
                self.cursor = None
            self.partials.rule = rule
        self.rule = rule

    def round(self, now: int | None = None) -> SyncStats:
        """One sync round at time ``now`` (ns, TAI; the real clock by default)."""
        t0 = time.perf_counter()
        measure = now is None and self.clock_sync
        if now is None:
            if self.local_clock is None:
                self.filt.sync_clock()
                now = time.clock_gettime_ns(time.CLOCK_TAI)
            else:
                now = self.local_clock()
        st = SyncStats(started=now)
        self._take_settings()
        self.rounds += 1
        self._round_logs = self._unlogged = 0
        b = self.bounds(now)
        if measure:
            self._measure_offset()
        st.clock_offset = self.offset

        # Lines 1-2.
        st.workload = self.workload(now)
        if self._beat_offset:
            self.store.heartbeat(self.proxy, st.workload, now + self.skew, offset=self.offset)
        else:
            self.store.heartbeat(self.proxy, st.workload, now + self.skew)
        peers = self.store.proxies()
        self.skew = self._consensus_skew(peers, now)
        st.skew = self.skew
        st.skew_measured = self.skew_measured
        st.peers = self._check_peers(peers, st, b)
        self._raise_recent(now)

        # A merge that failed last time (the store unreachable) is repeated
        # first, with the same arrays (the store applies each batch at most
        # once), and written back before anything new is read.
        if self._pending is not None:
            pending, self._pending = self._pending, None
            # Counts merged after an outage are not a rate: the recent rate
            # starts again from this round (docs/semantics.rst, "The recent rate").
            self.recent.clear()
            self._replay(*pending, b, st, now)

        # What we counted: the dirty flows, their dc and mark (model.local_view).
        retried, since = self._retry, self._retry_since
        keys, recs = self._changed_flows()
        self._retry, self._retry_since = self._retry[:0], since[:0]
        st.flows = len(keys)
        keys, recs = self._check_local(keys, recs, b, st)
        touched = [self.mirror.update(keys, recs["ts1"], recs["ts2"], recs["c"], local=True)]
        local = _local_view(recs)
        changed = (local["dc"] != 0) | (local["mark"] == 1)
        keys, recs, local = keys[changed], recs[changed], local[changed]
        # When the counting of each one's dc began: the last landed round, or
        # for a record refused last round, the round before its refusals.
        basis = np.full(len(keys), -1 if self._landed is None else self._landed, np.int64)
        at = index_of(retried, keys)
        basis[at >= 0] = since[at[at >= 0]]

        # Merged into the master (atomic per record, in the store).
        try:
            existed, before = self._merge(keys, local, b)
        except BadRecord as exc:
            # Bad data, not an outage: nothing to replay.  The batch is not
            # written back; its counts are merged again next round.
            log.warning("sync %s: the store refused the merge of %d flows (%s); they are "
                        "merged again next round", self.proxy, len(keys), exc)
            st.error = str(exc)
            self._retry_later(keys, basis)
            keys, recs, local, basis = keys[:0], recs[:0], local[:0], basis[:0]
            existed, before = np.zeros(0, dtype=bool), np.zeros(0, dtype=MASTER)
        except StoreError:
            # Unreachable: maybe applied, maybe not; keep the arrays for the replay.
            self._pending = (keys, recs, local, basis)
            raise
        keys, recs, local, existed, before, basis = self._check_before(
            keys, recs, local, existed, before, b, st, basis)
        st.merged = len(keys)
        final, mastered = merge_arrays(local, np.ones(len(keys), bool), before, existed,
                                       self.params, self._spans(now, local, basis))
        self._landed = now

        # From here on the master holds our dc: whatever fails, the kernel must
        # be brought level with it, or the next round would count it again.
        try:
            if self.partials is not None:
                pkeys, precs, akeys, aparts, cursor = self.store.pull(self.cursor,
                                                                      limit=self.max_pull)
                if self.cursor is None:
                    self.partials.clear()
                self._take_partials(akeys, aparts, b, st)
                ck, cr = self._closed_clients(now, st)
                if len(ck):
                    add = index_of(pkeys, ck) < 0
                    pkeys = np.concatenate([pkeys, ck[add]], dtype=L.FLOW_KEY)
                    precs = np.concatenate([precs, cr[add]], dtype=MASTER)
            elif self._changes_limit:
                pkeys, precs, cursor = self.store.changes(self.cursor, limit=self.max_pull)
            else:
                pkeys, precs, cursor = self.store.changes(self.cursor)
            self.cursor = cursor
            st.pull_capped = bool(getattr(cursor, "more", False))
        except Exception as exc:  # a store's bug on hostile data too: never count twice
            if isinstance(exc, StoreError):
                log.warning("sync %s: reading the master's changes failed (%s); merged flows "
                            "are still written back, changes are read next round",
                            self.proxy, exc)
            else:
                log.error("sync %s: reading the master's changes raised; merged flows are "
                          "still written back, changes are read next round", self.proxy,
                          exc_info=exc)
            st.error = str(exc) or type(exc).__name__
            self.recent.clear()
            pkeys, precs = np.zeros(0, dtype=L.FLOW_KEY), np.zeros(0, dtype=MASTER)
        precs = _shift(precs, -self.skew)
        pkeys, precs = self._check_pulled(pkeys, precs, b, st)
        st.pulled = len(pkeys)

        # Others' changes to flows we did not merge now: taken into our view
        # where we have counted nothing new (else next round merges both).
        at = index_of(keys, pkeys)
        other = at < 0
        # A flow merged here and changed by another proxy after that merge is
        # held back for the next round: if no packet of it comes meanwhile,
        # no merge would bring the other's count here.
        ours = np.flatnonzero(~other)
        newer = (precs["c"][ours] != mastered["c"][at[ours]]) | (
            precs["ts1"][ours] != mastered["ts1"][at[ours]]) | (
            precs["ts2"][ours] != mastered["ts2"][at[ours]])
        carry = (pkeys[ours[newer]], precs[ours[newer]])
        pkeys, precs = pkeys[other], precs[other]
        ck, cr = self._carry  # held back last round: unless merged or read again now
        if len(ck):
            use = (index_of(keys, ck) < 0) & (index_of(pkeys, ck) < 0)
            pkeys = np.concatenate([pkeys, ck[use]], dtype=L.FLOW_KEY)
            precs = np.concatenate([precs, cr[use]], dtype=MASTER)
        self._carry = carry
        p_exists, p_recs = self.filt.read(pkeys)
        p_local = _local_view(p_recs)
        quiet = p_exists & (p_local["dc"] == 0) & (p_local["mark"] == 0)
        # (no dc of their own: T_T4 is their span)
        q_final, _ = merge_arrays(p_local[quiet], np.ones(int(quiet.sum()), bool),
                                  precs[quiet], np.ones(int(quiet.sum()), bool), self.params,
                                  self.params.t_t4)
        new_keys, new_recs = pkeys[~p_exists], _adopted(precs[~p_exists], self.params)
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
        self._unbacked = 0
        if self.partials is not None:
            touched.append(self._master_destinations(now, st))
        st.destinations, st.closures = self._recompute_destinations(
            np.unique(np.concatenate(touched)), now)
        st.recent = self._recent
        st.unbacked = self._unbacked
        st.closed = len(self.known.closed)
        st.known = len(self.known.keys)
        st.known_overflow = self.known.overflow
        st.mirror_capped = self._cap_mirror()

        try:
            st.expired = self._expire(now, b)
        except StoreError as exc:
            log.warning("sync %s: expiring master records failed: %s", self.proxy, exc)
            st.error = str(exc)
        self.recent.forget(self.mirror.prune_dsts())
        for what, why in self.store.take_rejected():  # logged by the store already
            self._quarantine(st, what, why, logged=True)
        for cap, hit in (("pull", st.pull_capped), ("mirror", st.mirror_capped),
                         ("peers", st.peers_capped), ("workload", st.unbacked)):
            self.caps_reached[cap] += bool(hit)
        if self._unlogged:
            log.warning("sync %s: %d more values from the store quarantined this round "
                        "(%d in all)", self.proxy, self._unlogged, st.quarantined)
        st.seconds = time.perf_counter() - t0
        return st

    def _merge(self, keys: Array, local: Array, b: Bounds) -> tuple[Array, Array]:
        """The store's merge, in the mesh's time (timestamps shifted by the skew)."""
        d = self.skew
        mesh_local = _shift(local, d)
        # A stop waits for a merge in flight before it closes the store under
        # the round (SyncLoop.stop): cut, the master may hold the counts the
        # kernel was not yet brought level with, and a next daemon adopting
        # the maps would merge them again.
        self.merging = True
        try:
            if self.partials is not None:
                existed, before = self.store.merge(keys, mesh_local, self.params,
                                                   bounds=dataclasses.replace(b, now=b.now + d),
                                                   rule=self.rule)
            elif self._merge_bounds:
                existed, before = self.store.merge(keys, mesh_local, self.params,
                                                   bounds=dataclasses.replace(b, now=b.now + d))
            else:
                existed, before = self.store.merge(keys, mesh_local, self.params)
        finally:
            self.merging = False
        return existed, _shift(before, -d, existed)

    # ---- clocks --------------------------------------------------------------

    def _measure_offset(self) -> None:
        """The store's clock minus this proxy's, read between two local readings."""
        clock = self.local_clock or (lambda: time.clock_gettime_ns(time.CLOCK_TAI))
        a = clock()
        theirs = self.store.clock()
        z = clock()
        self.offset = None if theirs is None else theirs - (a + z) // 2

    def _consensus_skew(self, peers: dict[str, ProxyStatus], now: int) -> int:
        """This proxy's offset minus the median of the live proxies' offsets: what
        its clock lags the mesh's.  The store's clock is the reference every
        offset is measured against; the median removes what they share (the
        store's own error, TAI against UTC), so a mesh of synced clocks keeps
        its timestamps and only a proxy off the others is corrected."""
        self.skew_measured = None
        if self.offset is None or not self.clock_sync:
            return 0
        others = [ps for name, ps in list(peers.items())[:MAX_PEERS]
                  if name != self.proxy and ps.offset is not None]
        # Which heartbeats are live is judged in the mesh's time as this
        # round's offset gives it (not by the last skew: a clock stepped back
        # an hour since would see every peer an hour ahead, and none live).
        m0 = int(np.median(np.array([*(ps.offset for ps in others), self.offset],
                                    dtype=np.float64)))
        mesh_now = now + self.offset - m0
        offs = [ps.offset for ps in others if abs(ps.last_seen - mesh_now) <= self.ttl]
        d = self.offset - int(np.median(np.array([*offs, self.offset], dtype=np.float64)))
        self.skew_measured = d
        if abs(d) < MIN_SKEW:
            return 0
        if abs(d) > MAX_CORRECTION:
            if not self._skew_warned:
                self._skew_warned = True
                log.error("sync %s: this proxy's clock is %.1f s off the mesh's (the median "
                          "of %d proxies' offsets to the store): more than %d s, not "
                          "corrected; fix the clocks", self.proxy, d / NS_PER_S,
                          len(offs) + 1, MAX_CORRECTION // NS_PER_S)
            return 0
        if abs(d - self.skew) >= NS_PER_S:
            log.warning("sync %s: this proxy's clock is %.3f s %s the mesh's; its "
                        "timestamps are translated", self.proxy, abs(d) / NS_PER_S,
                        "behind" if d > 0 else "ahead of")
        return d

    def _spans(self, now: int, local: Array, basis: Array) -> Array:
        """How much of the master's window each merged record takes (model.adopt;
        docs/sync.rst, "How far back a local window reaches"): T_T4, or the
        time since its dc began to count (``basis``) if that is longer.  Where
        that is unknown (-1: the first round after a start, whose records may
        come from an earlier daemon), the record's own window, which holds
        all of its dc -- never otherwise: a window the last cut left would
        grow by a period a round."""
        t_t4 = np.int64(self.params.t_t4)
        basis = np.asarray(basis, dtype=np.int64)
        own = local["ts2"].astype(np.int64) - local["ts1"].astype(np.int64)
        out: Array = np.maximum(t_t4, np.where(basis >= 0, np.int64(now) - basis, own))
        return out

    def _retry_later(self, keys: Array, basis: Array) -> None:
        """Merge ``keys`` again next round; their dc counts from ``basis``."""
        self._retry = np.concatenate([self._retry, keys], dtype=L.FLOW_KEY)
        self._retry_since = np.concatenate([self._retry_since, basis]).astype(np.int64)

    def _replay(self, keys: Array, recs: Array, local: Array, basis: Array, b: Bounds,
                st: SyncStats, now: int) -> None:
        """Repeat a failed merge and write its result into the kernel."""
        try:
            existed, before = self._merge(keys, local, b)
        except BadRecord as exc:
            log.warning("sync %s: the replay of a merge of %d flows was refused (%s); "
                        "they are merged again this round", self.proxy, len(keys), exc)
            self._retry_later(keys, basis)
            return
        keys, recs, local, existed, before, basis = self._check_before(
            keys, recs, local, existed, before, b, st, basis)
        final, _ = merge_arrays(local, np.ones(len(keys), bool), before, existed, self.params,
                                self._spans(now, local, basis))
        self.filt.apply(_flow_updates(keys, recs, final))
        log.info("sync %s: the merge of %d flows that failed earlier is done", self.proxy,
                 len(keys))

    # ---- values from the store ---------------------------------------------

    def _quarantine(self, st: SyncStats, what: str, why: str, *, logged: bool = False) -> None:
        """Count one value from the store as bad; log it once (per name, ever)."""
        st.quarantined += 1
        self.quarantined_total += 1
        if len(st.bad_values) < EXAMPLES:
            st.bad_values.append((what, why))
        if logged or what in self._logged:
            return
        if self._round_logs >= LOG_PER_ROUND:
            self._unlogged += 1
            return
        if len(self._logged) >= 100_000:
            self._logged.clear()
        self._logged.add(what)
        self._round_logs += 1
        log.warning("sync %s: quarantined %s from the store: %s", self.proxy, what, why,
                    extra={"event": "store_value_quarantined"})

    def _quarantine_records(self, st: SyncStats, keys: Array, recs: Array, why: Array,
                            prefix: str = "") -> None:
        for kb, r, w in zip(key_list(keys), recs, why.tolist(), strict=True):
            self._quarantine(st, key_hex(kb), f"{prefix}{REASONS[w]} (ts1={int(r['ts1'])} "
                             f"ts2={int(r['ts2'])} c={int(r['c'])})")

    def _check_local(self, keys: Array, recs: Array, b: Bounds, st: SyncStats
                     ) -> tuple[Array, Array]:
        """This proxy's records that no store would take (dated after now, a count
        over 2**62: left by a forged master before it was checked, or a clock that
        jumped back; a window with no start: a closed-drops record that a packet
        counted into while the sync removed it) are not merged but deleted: the
        kernel starts them again."""
        lim = np.uint64(b.limit)
        bad = ((recs["ts1"] > lim) | (recs["ts2"] > lim) | (recs["c"] > np.uint64(MAX_COUNT))
               | ((recs["ts1"] == 0) & (recs["ts2"] != 0)))
        if not bad.any():
            return keys, recs
        for kb, r in zip(key_list(keys[bad]), recs[bad], strict=True):
            self._quarantine(st, key_hex(kb), f"local record out of bounds, reset (ts1="
                             f"{int(r['ts1'])} ts2={int(r['ts2'])} c={int(r['c'])})")
        self.filt.apply(apply_entries(keys[bad], OP_FLOW | OP_DELETE, gen=recs["gen"][bad],
                                      ts2=recs["ts2"][bad]))
        self.mirror.remove(keys[bad])
        return keys[~bad], recs[~bad]

    def _check_before(self, keys: Array, recs: Array, local: Array, existed: Array,
                      before: Array, b: Bounds, st: SyncStats, basis: Array
                      ) -> tuple[Array, Array, Array, Array, Array, Array]:
        """A merge reply: a ``before`` out of bounds counts as absent (as the store's
        function treated it); a record the store refused is not written back,
        and merged again next round (``basis``: when its dc began to count)."""
        existed = np.asarray(existed, dtype=bool).copy()
        before = np.asarray(before, dtype=MASTER).copy()
        refused = ~existed & (before == REFUSED)
        why = b.check(before)
        bad = existed & (why != OK) & (why != STALE)
        if bad.any():
            self._quarantine_records(st, keys[bad], before[bad], why[bad], "merge reply ")
        gone = existed & (why != OK)
        existed[gone] = False
        before[gone] = 0
        if refused.any():
            self._retry_later(keys[refused], basis[refused])
            keep = ~refused
            return (keys[keep], recs[keep], local[keep], existed[keep], before[keep],
                    basis[keep])
        return keys, recs, local, existed, before, basis

    def _check_pulled(self, keys: Array, recs: Array, b: Bounds, st: SyncStats
                      ) -> tuple[Array, Array]:
        """Changes read from the master: the ones out of bounds are quarantined,
        the expired ones (idle longer than the TTL) dropped, and so are keys
        no proxy writes (a pad no key has; a closed-drops key with a source):
        the kernel keeps no record under them (docs/security.rst)."""
        pad = keys["dst"]["pad"]
        src = np.ascontiguousarray(keys["src"]).view("<u8").reshape(-1, 2)
        forged = (pad > L.DST_PAD_ADDR_CLOSED) | (
            ((pad & L.DST_PAD_CLOSED) != 0) & src.any(axis=1))
        for kb in key_list(keys[forged]):
            self._quarantine(st, key_hex(kb), "a key no proxy writes")
        why = b.check(recs)
        bad = (why != OK) & (why != STALE) & ~forged
        if bad.any():
            self._quarantine_records(st, keys[bad], recs[bad], why[bad])
        ok = (why == OK) & ~forged
        return keys[ok], recs[ok]

    def _check_peers(self, peers: dict[str, ProxyStatus], st: SyncStats, b: Bounds
                     ) -> dict[str, ProxyStatus]:
        """Heartbeats: a workload that is not a rate (negative, not finite, over
        ``max_pps``) or a beat dated after now is quarantined.  This proxy's own
        entry is what it measured, not what the store returns."""
        out: dict[str, ProxyStatus] = {}
        if self.skew:  # their times into this proxy's
            peers = {n: dataclasses.replace(ps, last_seen=max(0, ps.last_seen - self.skew))
                     for n, ps in peers.items()}
        if len(peers) > MAX_PEERS:
            keep = sorted(peers, key=lambda n: peers[n].last_seen, reverse=True)[:MAX_PEERS]
            st.peers_capped = len(peers) - MAX_PEERS
            peers = {n: peers[n] for n in keep}
        for name, ps in peers.items():
            if name == self.proxy:
                continue
            if not (math.isfinite(ps.workload) and 0 <= ps.workload <= self.max_pps):
                self._quarantine(st, f"heartbeat {name!r}", f"workload {ps.workload!r}")
            elif ps.last_seen > b.limit:
                self._quarantine(st, f"heartbeat {name!r}",
                                 f"dated in the future (last seen {ps.last_seen})")
            else:
                out[name] = ps
        out[self.proxy] = ProxyStatus(st.workload, b.now, self.offset)
        horizon = b.now - self.ttl
        for name, ps in out.items():
            if ps.last_seen >= horizon:
                self._w_seen.setdefault(name, {})[ps.last_seen] = ps.workload
        for name in list(self._w_seen):
            seen = {t: w for t, w in self._w_seen[name].items() if t >= horizon}
            if seen:
                self._w_seen[name] = seen
            else:
                del self._w_seen[name]
        return out

    def mesh_rate(self) -> float:
        """Packets a second the mesh can have counted: the sum over its proxies of
        the highest workload each published within the TTL (this one's measured)."""
        return float(sum(max(seen.values()) for seen in self._w_seen.values()))

    # ------------------------------------------------------------------------

    def _cap_mirror(self) -> int:
        """Hold the mirror to ``max_mirror`` flows: forget first those the kernel
        no longer has (its flow table evicts the least recently used), then
        the idlest, from the kernel too.  Returns how many were forgotten."""
        mr = self.mirror
        excess = len(mr) - self.max_mirror
        if excess <= 0:
            return 0
        slots = np.flatnonzero(mr.alive)
        idle = slots[np.argsort(mr.ts2[slots], kind="stable")[: 2 * excess]]
        keys = mr.keys[idle]
        exists, recs = self.filt.read(keys)
        gone = keys[~exists]
        left = excess - len(gone)
        if left > 0:
            old, old_recs = keys[exists][:left], recs[exists][:left]
            self.filt.apply(apply_entries(old, OP_FLOW | OP_DELETE, gen=old_recs["gen"],
                                          ts2=old_recs["ts2"]))
            gone = np.concatenate([gone, old], dtype=L.FLOW_KEY)
        mr.remove(gone)
        self.known.forget(gone)
        log.warning("sync %s: the mirror holds more than %d flows; forgot the %d idlest",
                    self.proxy, self.max_mirror, len(gone))
        return len(gone)

    def _expire(self, now: int, b: Bounds) -> int:
        """Remove records idle longer than the TTL from the maps; the master too,
        every ``store_expire_every`` rounds, if this proxy holds the mesh's lease."""
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
            lease_s = 3 * self.store_expire_every * self.period / NS_PER_S
            if self.store.lease("expire", self.proxy, lease_s):
                d = self.skew
                if self._expire_bounds:  # records dated far ahead only: MAX_SKEW
                    self.store.expire(now - self.ttl + d, bounds=dataclasses.replace(
                        b, now=b.now + d, future=max(b.future, MAX_SKEW)))
                else:
                    self.store.expire(now - self.ttl + d)
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
        self._recent = 0
        by_port = p.dst_mode == L.DST_ADDR_PORT
        if self.known.closed:
            shut = self.known.closed_keys()
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
        here = mr.local[sel]
        # Flows first counted after this round's read are not in the mirror,
        # but their packets are in the kernel's aggregate: a spoofed flood
        # creates thousands per round, and leaving them out would lower the
        # aggregate under T_F2 every round.  Take them from the kernel.
        # Only those of the destinations recomputed are read.
        fresh = self.filt.peek_dirty(self.filt.epoch)
        n_fresh = 0
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
            n_fresh = int(exists.sum())
            here = np.concatenate([here, np.ones(n_fresh, dtype=bool)])
        drops = is_closed_record(keys)
        if by_port:
            keys, ts1, ts2, c, dst, drops, here = _with_addresses(
                mr, keys, ts1, ts2, c, dst, drops, here, dst_ids)
        live = ((now - ts2) <= p.t_t1) & (drops | ~over_t_f1(ts1, ts2, c, p))
        pos = np.searchsorted(dst_ids, dst)
        n = len(dst_ids)
        agg = np.zeros(n, dtype=L.DST)
        cap = self._remote_budget(pos, ts1, live & ~here, n, now)
        agg_c, unbacked = _capped_sum(pos, c, live, here, cap, n)
        self._unbacked = int(unbacked.sum())
        agg_t1 = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(agg_t1, pos[live], ts1[live])
        agg_t2 = np.zeros(n, dtype=np.int64)
        np.maximum.at(agg_t2, pos[live], ts2[live])
        if self.partials is not None:  # from the master instead: _master_values
            agg_t1, agg_t2, agg_c = self._master_values(mr.dst_keys[dst_ids], pos, ts1, ts2, c,
                                                        live, here, n_fresh, now)
        has = agg_t2 > 0
        dkeys = mr.dst_keys[dst_ids]
        moved = self._recent_starts(dst_ids, dkeys, agg_t1, agg_c, has, now)
        self._recent = int((moved != agg_t1).sum())
        agg_t1 = moved
        agg["c"], agg["ts2"] = agg_c, agg_t2
        agg["ts1"] = np.where(has, agg_t1, 0)
        closures = self.known.update(dkeys, agg, {"keys": keys, "ts1": ts1, "ts2": ts2, "c": c,
                                                  "dst": pos}, now, p)
        client = live & ~drops & (self.known.classes_of(keys) == L.Known.CLIENT)
        agg_kc, _ = _capped_sum(pos, c, client, here, cap, n)
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

    def _raise_recent(self, now: int) -> None:
        """At the start of a round, before its merge: the program's aggregates
        whose count gained over their limit since the latest recompute more
        than T_T3 ago, their ts1* moved forward as the recompute would
        (:meth:`_recent_starts`).  Under a spray a round lasts seconds, and a
        proxy that alone carries a destination over its limit need not wait
        for the round's end, nor for the next (docs/semantics.rst, "The
        recent rate").  Not in a round that replays a merge: its history is
        about to be dropped."""
        if not len(self.recent.t) or self._pending is not None:
            return
        keys, recs = self.filt.read_dsts()
        if not len(keys):
            return
        p = self.filt.params
        lim = limits(keys, p)
        c, t1, t2 = (recs[f].astype(np.int64) for f in ("c", "ts1", "ts2"))
        sel, start, shut = self._closed_by_recent(keys, t1, t2, c, lim,
                                                  ~closed_now(t1, t2, c, now, p, lim), now)
        up = shut & (start > t1[sel])
        if not up.any():
            return
        fk = np.zeros(int(up.sum()), dtype=L.FLOW_KEY)
        fk["dst"] = keys[sel][up]
        self.filt.apply(apply_entries(fk, OP_DST, c_delta=0, ts1=start[up], ts2=0, kc_delta=0))

    def _closed_by_recent(self, dk: Array, t1: Array, t2: Array, c: Array, lim: Array,
                          among: Array, now: int) -> tuple[Array, Array, Array]:
        """Of the aggregates ``among`` (a mask over ``dk``, local time), those the
        mirror holds that could be closed by their recent rate (more than
        T_T3 x their limit counted): their indices, the start the recent rate
        gives them (:meth:`_recent_starts`, nothing recorded) and whether it
        closes them."""
        p = self.filt.params
        can = np.flatnonzero(among & exceeds(c, np.full(len(c), p.t_t3, dtype=np.int64), lim))
        ids = self.mirror.find_dst_ids(dk[can])
        sel = can[ids >= 0]
        start = self._recent_starts(ids[ids >= 0], dk[sel], t1[sel], c[sel],
                                    np.ones(len(sel), dtype=bool), now, record=False)
        return sel, start, closed_now(start, t2[sel], c[sel], now, p, lim[sel])

    def _recent_starts(self, ids: Array, dkeys: Array, ts1: Array, c: Array, has: Array,
                       now: int, *, record: bool = True) -> Array:
        """ts1* of each aggregate (mirror ids ``ids``), moved forward where its
        recent rate is over its limit and over its window's
        (:func:`xpro.core.model.recent_start`); each c* is kept for the
        next rounds (``record``: the recompute's).  The gain is held to what
        the mesh's published rates back over its span (:meth:`_budget`, no
        lag): a forged partial closes nothing through it (docs/security.rst)."""
        p = self.filt.params
        self.recent.fit(p.t_t3)
        t_h, c_h = self.recent.latest_before(ids, now - p.t_t3)
        if record:
            self.recent.record(ids[has], c[has], now)
        return recent_starts(ts1, c, has, t_h, c_h, now, limits(dkeys, p),
                             self._budget(t_h, now, lag=False))

    # ---- candidates and the master's aggregates (docs/sync.rst, "What a round pulls")

    def _take_partials(self, keys: Array, parts: Array, b: Bounds, st: SyncStats) -> None:
        """Keep the partials pulled; quarantine those no merge could have written:
        a window that ends before it starts or after the latest time in
        bounds, a count out of range, or a slot after that time's (such a
        partial would stay live until the clock reached its slot: one write
        kept its ts1 and count in a destination's aggregate for good)."""
        assert self.partials is not None
        lim = np.uint64(b.limit + self.skew)
        last_slot = lim // np.uint64(self.rule.slot_ns)
        bad = (parts["ts1"] > parts["ts2"]) | (parts["ts2"] > lim) | (
            parts["c"] > np.uint64(MAX_COUNT)) | (parts["n"] > np.uint64(MAX_COUNT)) | (
            keys["slot"].astype(np.uint64) > last_slot)
        for k, p in zip(keys[bad][:EXAMPLES], parts[bad][:EXAMPLES], strict=True):
            self._quarantine(st, f"partial {k['dst'].tobytes().hex()}/{int(k['slot'])}",
                             f"ts1={int(p['ts1'])} ts2={int(p['ts2'])} c={int(p['c'])}")
        st.quarantined += max(0, int(bad.sum()) - EXAMPLES)
        self._aggs_changed.append(self.partials.update(keys[~bad], parts[~bad]))
        st.partials = int((~bad).sum())

    def _closed_clients(self, now: int, st: SyncStats) -> tuple[Array, Array]:
        """The known-client records of every destination closed by the master's
        aggregates or closed here (in mesh time; checked with the other pulls)."""
        assert self.partials is not None
        mesh_now = now + self.skew
        dk, t1, t2, c = self.partials.live(mesh_now)
        lim = limits(dk, self.filt.params)
        master_shut = closed_now(t1, t2, c, mesh_now, self.filt.params, lim)
        self._raise_closed(dk[master_shut], t1[master_shut], t2[master_shut], c[master_shut], now)
        # Closed by its recent rate too: raised the same way, and its clients
        # are needed this round (a spray's thousands of keys, each far under
        # T_T3 x its limit, are not looked at).
        seen, start, recent = self._closed_by_recent(dk, t1 - self.skew, t2 - self.skew, c, lim,
                                                     ~master_shut & (t2 > 0), now)
        master_shut[seen] = recent
        self._raise_closed(dk[seen][recent], start[recent] + self.skew, t2[seen][recent],
                           c[seen][recent], now, recent=True)
        shut = dk[master_shut]
        if self.known.closed:
            mine = self.known.closed_keys()
            shut = np.concatenate([shut, mine[index_of(shut, mine) < 0]], dtype=L.DST_KEY)
        if not len(shut):
            return np.zeros(0, dtype=L.FLOW_KEY), np.zeros(0, dtype=MASTER)
        addr = (shut["pad"] & L.DST_PAD_ADDR) != 0
        if addr.any():
            # The master indexes clients by their flow's destination key: a
            # closed address's are those of its keys with live partials (every
            # key any proxy counted a flow of) holding enough packets for one
            # (a spray's keys hold a packet or two each: not asked for),
            # docs/sync.rst "What a round pulls".
            # Counts as far as the mesh's workloads back them: forged
            # partials of made-up keys crowd out no real key's clients.
            backed = self._backed(c, t1 - self.skew, now)
            sel = np.flatnonzero((dk["pad"] == 0) & (backed >= self.rule.min_packets)
                                 & np.isin(dk["addr"], shut["addr"][addr]))
            # A spray with enough packets a key must not make the round ask
            # for every key: the busiest ADDRESS_KEYS, where its users are.
            sel = sel[np.argsort(-backed[sel], kind="stable")[:ADDRESS_KEYS]]
            keys_of = dk[sel]
            shut = np.concatenate([shut[~addr], keys_of], dtype=L.DST_KEY)
            if not len(shut):
                return np.zeros(0, dtype=L.FLOW_KEY), np.zeros(0, dtype=MASTER)
        keys, recs = self.store.clients(shut)
        st.clients_pulled = len(keys)
        return keys, recs

    def _raise_closed(self, dk: Array, t1: Array, t2: Array, c: Array, now: int, *,
                      recent: bool = False) -> None:
        """The aggregates the master's partials close (``dk``, their ts1*, ts2*, c* in
        mesh time), raised in the program right after the pull, not only at the
        recompute at the end of the round.

        Under a spray over thousands of keys the rest of a round (the flows
        written back, the recompute) takes longer than the period, and the
        program judges the count the round read over a window that has grown
        meanwhile: an address the master had over its limit at the pull stayed
        open until rounds later (docs/sync.rst, "What a round pulls").  Only
        raised: the count to at least the master's (never above the mesh's:
        the program's own count since the read is in neither or in both),
        ts1* back to the master's where the program's starts later; the
        recompute then writes the exact value as before.  What the master
        adds to the program's count is held to the recompute's cap on the
        flows other proxies counted (:meth:`_remote_budget`): a forged
        partial closes nothing here, not even until the recompute
        (docs/security.rst).  ``recent``: ``t1`` is the start the recent rate
        gives (:meth:`_recent_starts`), later than the program's: ts1* is
        moved forward to it, as the recompute would at the end of the round.
        """
        if not len(dk):
            return
        have, cur = self.filt.read_dsts_of(dk)
        m_t1 = t1.astype(np.int64) - self.skew
        m_t2 = t2.astype(np.int64) - self.skew
        cur_c = np.where(have, cur["c"].astype(np.int64), 0)
        cur_t1 = cur["ts1"].astype(np.int64)
        c = np.minimum(c.astype(np.int64), cur_c + self._budget(m_t1, now).astype(np.int64))
        still = closed_now(m_t1, m_t2, c, now, self.filt.params, limits(dk, self.filt.params))
        dk, m_t1, m_t2, c = dk[still], m_t1[still], m_t2[still], c[still]
        have, cur_c, cur_t1 = have[still], cur_c[still], cur_t1[still]
        move = (cur_t1 > m_t1) | (recent & (cur_t1 < m_t1))
        up = ~have | (c > cur_c) | move
        if not up.any():
            return
        fk = np.zeros(int(up.sum()), dtype=L.FLOW_KEY)
        fk["dst"] = dk[up]
        created = ~have[up]
        self.filt.apply(apply_entries(
            fk, np.where(created, OP_DST | OP_CREATE, OP_DST),
            c_delta=np.where(created, c[up], np.maximum(c[up] - cur_c[up], 0)),
            ts1=np.where(created | move[up], m_t1[up], 0), ts2=m_t2[up],
            kc_delta=0))

    def _master_destinations(self, now: int, st: SyncStats) -> Array:
        """The destination ids whose master aggregate changed (partials pulled, or a
        slot that aged out of T_T1 since the last round) and that this proxy
        needs: those its program holds, and those the master's aggregate puts
        at ``near`` x their limit or more (or that are closed here).

        A spray over thousands of keys, each far under T_F2, changes the
        partials of every key any proxy counted: writing each into every
        proxy's program made each round O(the mesh's keys) and filled the
        destination table (docs/sync.rst, "What a round pulls").  A key this
        proxy does not hold gets its aggregate from its first packet here and
        the mesh's at the next round, as a flow under ``near`` x T_F1 does.
        """
        assert self.partials is not None
        mesh_now = now + self.skew
        changed = [*self._aggs_changed, self.partials.aged(self._aggs_at, mesh_now)]
        self._aggs_changed, self._aggs_at = [], mesh_now
        self.partials.prune(mesh_now)
        dk = unique_keys(np.concatenate(changed, dtype=L.DST_KEY))
        if len(dk):
            p = self.filt.params
            held, _ = self.filt.read_dsts_of(dk)
            t1, t2, c = self.partials.values(dk, mesh_now)
            window = np.maximum(mesh_now - t1, p.t_t3)
            # Judged on the count the mesh's workloads back, as the values
            # written are: forged partials of made-up destinations do not
            # fill this proxy's destination table (docs/security.rst).
            c = self._backed(c, np.where(t2 > 0, t1 - self.skew, now), now)
            near = (t2 > 0) & near_limit_array(c, window, limits(dk, p), self.rule)
            want = held | near
            if self.known.closed and not want.all():
                mine = self.known.closed_keys()
                want |= index_of(mine, dk) >= 0
            st.skipped_dsts = int((~want).sum())
            dk = dk[want]
        ids: Array = self.mirror.dst_ids(dk)
        return ids

    def _master_values(self, dkeys: Array, pos: Array, ts1: Array, ts2: Array, c: Array,
                       live: Array, here: Array, n_fresh: int, now: int
                       ) -> tuple[Array, Array, Array]:
        """(ts1*, ts2*, c*) per destination from the master's partials and what this
        proxy counted since its merge (the last ``n_fresh`` flows: new since its
        read).  The share of flows this proxy did not count is at most what the
        mesh's workloads back (:meth:`_remote_budget`), as with the mirror."""
        assert self.partials is not None
        n = len(dkeys)
        m_t1, m_t2, m_c = self.partials.values(dkeys, now + self.skew)
        has = m_t2 > 0
        m_t1 = np.where(has, m_t1 - self.skew, 0)
        m_t2 = np.where(has, m_t2 - self.skew, 0)
        fresh = np.zeros(len(ts1), dtype=bool)
        if n_fresh:
            fresh[len(ts1) - n_fresh:] = True
        own = live & here & ~fresh
        own_c = np.zeros(n, dtype=np.int64)
        np.add.at(own_c, pos[own], c[own])
        f = live & fresh
        f_c = np.zeros(n, dtype=np.int64)
        np.add.at(f_c, pos[f], c[f])
        big = np.iinfo(np.int64).max
        t1 = np.where(has, m_t1, big)
        np.minimum.at(t1, pos[f], ts1[f])
        t2 = m_t2.copy()
        np.maximum.at(t2, pos[f], ts2[f])
        t1 = np.where(t2 > 0, t1, 0)
        cap = self._budget(np.where(has, m_t1, now), now)
        other = np.maximum(m_c - own_c, 0)
        over = other > cap
        self._unbacked = int(over.sum())
        agg_c = own_c + f_c + np.where(over, cap, other).astype(np.int64)
        return t1, t2, agg_c

    def _remote_budget(self, pos: Array, ts1: Array, remote: Array, n: int, now: int) -> Array:
        """For each destination, the most packets the flows only other proxies
        counted can hold: BUDGET_SLACK x the mesh's rate x (their window + two
        periods).  The mesh's rate is what its proxies published (heartbeats);
        a count above it was not seen by any proxy that says so."""
        start = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(start, pos[remote], ts1[remote])
        return self._budget(start, now)

    def _backed(self, c: Array, start: Array, now: int) -> Array:
        """Master counts ``c`` of windows from ``start`` held to :meth:`_budget`."""
        cap = self._budget(start, now)
        out: Array = np.where(c > cap, cap, c).astype(np.int64)
        return out

    def _budget(self, start: Array, now: int, *, lag: bool = True) -> Array:
        """BUDGET_SLACK x the mesh's rate x (``now`` - ``start`` + two periods),
        in packets (float, floored): what flows counted since ``start`` by other
        proxies can hold (:meth:`_remote_budget`).  Without ``lag``, the two
        periods a count can take to reach the master are not added: what a
        count may *gain* over a span (:meth:`_recent_starts`), where two
        periods more would let a forged burst claim three times its span."""
        window = np.clip(now - start + (2 * self.period if lag else 0), 0,
                         None).astype(np.float64)
        out: Array = np.floor(BUDGET_SLACK * self.mesh_rate() * window / NS_PER_S)
        return out


def _shift(recs: Array, d: int, where: Array | None = None) -> Array:
    """``recs`` (fields ts1, ts2) with ``d`` ns added to the timestamps that are
    times (below 2**62: garbage stays garbage, for the bounds to catch), where
    ``where``; never below 0."""
    if d == 0 or not len(recs):
        return recs
    out = recs.copy()
    sel = np.ones(len(recs), dtype=bool) if where is None else np.asarray(where, dtype=bool)
    for f in ("ts1", "ts2"):
        v = out[f].astype(np.uint64)
        ok = sel & (v < np.uint64(1 << 62))
        moved = np.clip(v.astype(np.int64) + d, 0, None).astype(np.uint64)
        out[f] = np.where(ok, moved, v)
    return out


def _capped_sum(pos: Array, c: Array, sel: Array, here: Array, cap: Array, n: int
                ) -> tuple[Array, Array]:
    """Per destination: the sum of ``c`` over ``sel``, the part of flows not
    counted ``here`` at most ``cap``; and which destinations were capped."""
    local, remote = sel & here, sel & ~here
    own = np.zeros(n, dtype=np.int64)
    np.add.at(own, pos[local], c[local])
    other = np.zeros(n, dtype=np.int64)
    np.add.at(other, pos[remote], c[remote])
    over = other > cap
    out: Array = own + np.where(over, cap, other).astype(np.int64)
    return out, over


def _with_addresses(mr: Mirror, keys: Array, ts1: Array, ts2: Array, c: Array, dst: Array,
                    drops: Array, here: Array, dst_ids: Array
                    ) -> tuple[Array, Array, Array, Array, Array, Array, Array]:
    """The records of the aggregates ``dst_ids`` in ``addr+port`` mode: each real
    flow once for its key's aggregate and once more, keyed (source, address
    key), for its address's (:func:`xpro.core.model.aggregates_of`); a
    closed-drops record for its own aggregate only.  Rows of aggregates not
    in ``dst_ids`` are left out."""
    real = ~drops
    akeys = np.array(keys[real], dtype=L.FLOW_KEY)
    akeys["dst"]["port"], akeys["dst"]["proto"], akeys["dst"]["pad"] = 0, 0, L.DST_PAD_ADDR
    keys = np.concatenate([keys, akeys], dtype=L.FLOW_KEY)
    ts1, ts2, c, here = (np.concatenate([x, x[real]]) for x in (ts1, ts2, c, here))
    dst = np.concatenate([dst, mr.address_ids(dst[real])])
    drops = np.concatenate([drops, np.zeros(int(real.sum()), dtype=bool)])
    keep = np.isin(dst, dst_ids)
    return (keys[keep], ts1[keep], ts2[keep], c[keep], dst[keep], drops[keep],
            here[keep])


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


def _adopted(recs: Array, params: SyncParams) -> Array:
    """MASTER records as a proxy creates its local records from them: windows
    cut to T_T4, their rates kept (model.adopt, as merge_arrays does)."""
    n = len(recs)
    loc, _ = merge_arrays(np.zeros(n, dtype=LOCAL), np.zeros(n, bool), recs, np.ones(n, bool),
                          params, params.t_t4)
    out = recs.copy()
    out["ts1"], out["c"] = loc["ts1"], loc["c"]
    return out


def _local_view(recs: Array) -> Array:
    """:func:`xpro.core.model.local_view` over FLOW records: LOCAL records with dc, mark."""
    out = np.zeros(len(recs), dtype=LOCAL)
    out["ts1"], out["ts2"], out["c"] = recs["ts1"], recs["ts2"], recs["c"]
    same = recs["gen"] == recs["base_gen"]
    c = recs["c"].astype(np.int64)
    out["dc"] = np.maximum(np.where(same, c - recs["base_c"].astype(np.int64), c), 0)
    out["mark"] = ~same
    return out



