"""What a proxy pulls from the master: candidates and destination aggregates.

A proxy's merge already returns the mesh-wide values of the flows it counted
(docs/sync.rst, "One round").  Beyond those, a round pulls only what can
change one of its verdicts before the next round (docs/sync.rst, "What a
round pulls"):

* **candidates**: flows whose mesh-wide rate is near or over T_F1
  (:func:`is_candidate`: at least ``near`` x T_F1 over their window, at
  least T_T2 long), the flows that were candidates before a merge (so a
  proxy learns that one fell), and every closed-drops record;
* **destination aggregates**, kept by the master as *partials*: per
  destination and per time slot of its flows' last packet (``ts2 //
  slot_ns``), the sum of the counts of the flows that count in the
  aggregate (:func:`contributes`), their number, the earliest ts1 and the
  latest ts2 of those that entered the slot.  A merge moves each flow's
  contribution from the slot of its record before to the slot of its record
  after (:func:`partial_deltas`); a reader sums the live slots
  (:func:`aggregate`): a slot is live while it can hold a flow not idle for
  longer than T_T1;
* **known clients** of a closed destination: the master indexes, per
  destination, the flows that became eligible as known clients
  (:func:`client_eligible`); a proxy reads that index for each destination
  it sees closed.

This module is the executable specification (scalar functions, as
:mod:`xpro.core.model`) and its numpy form, which the memory and etcd
stores run and the Redis function mirrors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from xpro.core import layout as L
from xpro.core.keys import fingerprint
from xpro.core.merge import products_exceed, rate_exceeds_array
from xpro.core.model import (
    NS_PER_S,
    FilterParams,
    Local,
    Master,
    SyncParams,
    aggregates_of,
    is_closed_key,
    merge,
    rate_exceeds,
)
from xpro.core.params import KnownPolicy

__all__ = [
    "AGG_KEY",
    "DEFAULT_NEAR",
    "PARTIAL",
    "MeshModel",
    "Partial",
    "PullRule",
    "aggregate",
    "aggregate_arrays",
    "apply_partials",
    "client_eligible",
    "contributes",
    "is_candidate",
    "near_limit_array",
    "partial_deltas",
]

Array = npt.NDArray[Any]

#: The default fraction of T_F1 from which a flow is a candidate (docs/sync.rst).
DEFAULT_NEAR = 0.5
#: Slots per T_T1 of the master's destination partials.
SLOTS = 4

#: A partial's key: the store's shard (a Redis bucket; 0 elsewhere), the
#: destination (pad 0: a closed-drops record counts in its destination) and
#: the slot of its flows' last packets.
AGG_KEY = np.dtype([("shard", "<u4"), ("dst", L.DST_KEY), ("slot", "<u8")])
#: A partial: earliest ts1, latest ts2, sum of counts, number of flows.
PARTIAL = np.dtype([("ts1", "<u8"), ("ts2", "<u8"), ("c", "<u8"), ("n", "<u8")])


@dataclass(frozen=True)
class PullRule:
    """The thresholds the master judges a merge by (ns, packets/s).

    ``near_pm``: a flow is a candidate from ``near_pm / 1000`` x T_F1.
    ``slot_ns``: the width of a partial's slot (T_T1 / 4).  ``addresses``
    (``addr+port`` mode): a flow counts in its address's partials too, as in
    its address aggregate (docs/semantics.rst, "Address aggregates").
    """

    t_f1: int = 100
    t_t2: int = NS_PER_S
    t_t1: int = 10 * NS_PER_S
    near_pm: int = 500
    min_age: int = 2 * NS_PER_S
    min_packets: int = 8
    addresses: bool = False

    @classmethod
    def of(cls, p: FilterParams, known: KnownPolicy | None = None,
           near: float = DEFAULT_NEAR) -> PullRule:
        k = known or KnownPolicy()
        if not 0.0 < near <= 1.0:
            raise ValueError(f"near {near!r}: a fraction of T_F1 in (0, 1]")
        return cls(t_f1=p.t_f1, t_t2=p.t_t2, t_t1=p.t_t1, near_pm=max(1, round(near * 1000)),
                   min_age=k.min_age, min_packets=k.min_packets,
                   addresses=p.dst_mode == L.DST_ADDR_PORT)

    @property
    def slot_ns(self) -> int:
        """T_T1 / SLOTS rounded up to a multiple of 2**20 ns (so the Redis function
        computes a slot exactly: ``(ts2 >> 20) // (slot_ns >> 20)``)."""
        return max(1, -(-self.t_t1 // (SLOTS << 20))) << 20

    def live_from(self, now: int) -> int:
        """The first slot that can hold a flow not idle for longer than T_T1 at ``now``."""
        return max(0, now - self.t_t1) // self.slot_ns


@dataclass(frozen=True)
class Partial:
    """One destination's flows in one slot, as the master keeps them."""

    ts1: int
    ts2: int
    c: int
    n: int


# ---------------------------------------------------------------------------
# The specification, one record at a time
# ---------------------------------------------------------------------------


def is_candidate(key: bytes, rec: Master, rule: PullRule) -> bool:
    """A closed-drops record, or ``c >= near x T_F1 x max(ts2 - ts1, T_T2)``."""
    if is_closed_key(key):
        return True
    w = max(rec.ts2 - rec.ts1, rule.t_t2)
    return rec.c * NS_PER_S * 1000 >= rule.near_pm * rule.t_f1 * w


def contributes(key: bytes, rec: Master, rule: PullRule) -> bool:
    """Whether a record counts in its destination's aggregate: a closed-drops
    record always, a flow while it is not over T_F1 (docs/semantics.rst)."""
    w = rec.ts2 - rec.ts1
    return is_closed_key(key) or not (w > rule.t_t2 and rate_exceeds(rec.c, w, rule.t_f1))


def client_eligible(key: bytes, rec: Master, rule: PullRule) -> bool:
    """A flow that could be a known client (idleness aside: the reader judges it)."""
    return (not is_closed_key(key) and contributes(key, rec, rule)
            and rec.ts2 - rec.ts1 >= rule.min_age and rec.c >= rule.min_packets)


def _dsts_of(key: bytes, rule: PullRule) -> list[bytes]:
    """The aggregates whose partials a flow key counts in
    (:func:`xpro.core.model.aggregates_of`): its destination key, and in
    ``addr+port`` mode its address's; a closed-drops record, only the
    aggregate whose drops it holds."""
    return aggregates_of(key, L.DST_ADDR_PORT if rule.addresses else L.DST_ADDR)


def apply_flow(partials: dict[tuple[bytes, int], Partial], key: bytes, before: Master | None,
               after: Master | None, rule: PullRule) -> None:
    """Move one flow's contribution from its record ``before`` to ``after``."""
    for dst in _dsts_of(key, rule):
        _apply_flow(partials, dst, key, before, after, rule)


def _apply_flow(partials: dict[tuple[bytes, int], Partial], dst: bytes, key: bytes,
                before: Master | None, after: Master | None, rule: PullRule) -> None:
    if before is not None and contributes(key, before, rule):
        at = (dst, before.ts2 // rule.slot_ns)
        p = partials.get(at)
        if p is not None:
            n = p.n - 1
            partials[at] = Partial(p.ts1, p.ts2, max(0, p.c - before.c), n) if n > 0 \
                else Partial(0, 0, 0, 0)
    if after is not None and contributes(key, after, rule):
        at = (dst, after.ts2 // rule.slot_ns)
        p = partials.get(at)
        if p is None or p.n == 0:
            partials[at] = Partial(after.ts1, after.ts2, after.c, 1)
        else:
            partials[at] = Partial(min(p.ts1, after.ts1), max(p.ts2, after.ts2), p.c + after.c,
                                   p.n + 1)


def aggregate(partials: Iterable[tuple[int, Partial]], now: int, rule: PullRule
              ) -> tuple[int, int, int] | None:
    """A destination's aggregate (ts1*, ts2*, c*) from its (slot, partial) pairs at
    ``now``: over the live slots holding flows; None if there are none."""
    first = rule.live_from(now)
    live = [p for s, p in partials if s >= first and p.n > 0]
    if not live:
        return None
    return min(p.ts1 for p in live), max(p.ts2 for p in live), sum(p.c for p in live)


def partials_of(records: Mapping[bytes, Master], rule: PullRule
                ) -> dict[tuple[bytes, int], Partial]:
    """The partials the master holds after every record was merged once, from nothing."""
    out: dict[tuple[bytes, int], Partial] = {}
    for k, r in records.items():
        apply_flow(out, k, None, r, rule)
    return out


# ---------------------------------------------------------------------------
# The same over arrays (the memory and etcd stores, the sync)
# ---------------------------------------------------------------------------


def _is_closed(keys: Array) -> Array:
    out: Array = (keys["dst"]["pad"] & L.DST_PAD_CLOSED) != 0  # an address's too
    return out


def _rate_at_least(c: Array, w: Array, limit_pm: int) -> Array:
    """``c * 1e9 * 1000 >= limit_pm * w``, exactly."""
    return products_exceed(c.astype(np.int64), NS_PER_S * 1000, w.astype(np.int64), limit_pm,
                           strict=False)


def near_limit_array(c: Array, w: Array, limit: Array, rule: PullRule) -> Array:
    """Whether each aggregate (count ``c`` over a window of ``w`` ns) is at least
    ``near`` x its ``limit`` (packets/s, one per aggregate: T_F2 or an
    address's): the aggregates a proxy takes from the master's partials
    without holding them (docs/sync.rst, "What a round pulls")."""
    c = np.asarray(c, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    limit = np.asarray(limit, dtype=np.int64)
    out = np.zeros(len(c), dtype=bool)
    for lim in np.unique(limit):
        m = limit == lim
        out[m] = _rate_at_least(c[m], w[m], rule.near_pm * int(lim))
    return out


def candidates_array(keys: Array, recs: Array, rule: PullRule) -> Array:
    """:func:`is_candidate` over FLOW_KEY and MASTER arrays."""
    t1, t2 = recs["ts1"].astype(np.int64), recs["ts2"].astype(np.int64)
    w = np.maximum(t2 - t1, rule.t_t2)
    out: Array = _is_closed(keys) | _rate_at_least(recs["c"], w, rule.near_pm * rule.t_f1)
    return out


def contributes_array(keys: Array, recs: Array, rule: PullRule) -> Array:
    """:func:`contributes` over arrays."""
    t1, t2 = recs["ts1"].astype(np.int64), recs["ts2"].astype(np.int64)
    w = t2 - t1
    over = (w > rule.t_t2) & rate_exceeds_array(recs["c"].astype(np.int64), w, rule.t_f1)
    out: Array = _is_closed(keys) | ~over
    return out


def eligible_array(keys: Array, recs: Array, rule: PullRule) -> Array:
    """:func:`client_eligible` over arrays."""
    t1, t2 = recs["ts1"].astype(np.int64), recs["ts2"].astype(np.int64)
    out: Array = (~_is_closed(keys) & contributes_array(keys, recs, rule)
                  & (t2 - t1 >= rule.min_age) & (recs["c"] >= np.uint64(rule.min_packets)))
    return out


def partial_deltas(keys: Array, before: Array, had: Array, after: Array, has: Array,
                   rule: PullRule, shard: Array | None = None
                   ) -> tuple[Array, Array, Array, Array, Array]:
    """What a merge (or a deletion) does to the partials, grouped by (destination, slot).

    ``before`` where ``had``: the master records as they were; ``after``
    where ``has``: as they are now (a deleted record has none).  Returns
    ``(agg_keys, ts1_min, ts2_max, dc, dn)``: per partial touched, the
    earliest ts1 and latest ts2 of the contributions added (``ts1_min``
    2**64 - 1 where none), and the signed change of its count and of its
    number of flows.  ``shard``: each record's shard (a Redis bucket).
    """
    had, has = np.asarray(had, dtype=bool), np.asarray(has, dtype=bool)
    dst = np.array(keys["dst"], dtype=L.DST_KEY)
    # A closed-drops record counts in the aggregate whose drops it holds
    # (its pad without the closed bit); in addr+port mode a real flow also
    # counts in its address's (_dsts_of, one row more each).
    dst["pad"] &= np.uint8(0xFF & ~L.DST_PAD_CLOSED)
    if rule.addresses:
        real = np.flatnonzero(~_is_closed(keys))
        idx = np.concatenate([np.arange(len(keys)), real])
        keys, before, after, had, has = keys[idx], before[idx], after[idx], had[idx], has[idx]
        if shard is not None:
            shard = np.asarray(shard)[idx]
        dst = dst[idx]
        tail = dst[len(idx) - len(real):]
        tail["port"], tail["proto"], tail["pad"] = 0, 0, L.DST_PAD_ADDR
        dst[len(idx) - len(real):] = tail
    out_b = had & contributes_array(keys, before, rule)
    in_a = has & contributes_array(keys, after, rule)
    sl = np.uint64(rule.slot_ns)
    n_b, n_a = int(out_b.sum()), int(in_a.sum())
    ak = np.zeros(n_b + n_a, dtype=AGG_KEY)
    ak["dst"][:n_b], ak["dst"][n_b:] = dst[out_b], dst[in_a]
    if shard is not None:
        ak["shard"][:n_b], ak["shard"][n_b:] = shard[out_b], shard[in_a]
    ak["slot"][:n_b] = before["ts2"][out_b] // sl
    ak["slot"][n_b:] = after["ts2"][in_a] // sl
    c = np.concatenate([-before["c"][out_b].astype(np.int64), after["c"][in_a].astype(np.int64)])
    n = np.concatenate([np.full(n_b, -1, np.int64), np.ones(n_a, np.int64)])
    big = np.iinfo(np.uint64).max
    t1 = np.concatenate([np.full(n_b, big, np.uint64), after["ts1"][in_a].astype(np.uint64)])
    t2 = np.concatenate([np.zeros(n_b, np.uint64), after["ts2"][in_a].astype(np.uint64)])
    if not len(ak):
        z = np.zeros(0, dtype=np.int64)
        return ak, np.zeros(0, np.uint64), np.zeros(0, np.uint64), z, z
    # Grouped by a 64-bit fingerprint (a tenth of the cost of sorting the
    # 32-byte keys), checked: a collision falls back to the keys themselves.
    vk = np.ascontiguousarray(ak).view(np.dtype((np.void, AGG_KEY.itemsize)))
    _, first, inv = np.unique(fingerprint(ak), return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    uniq = vk[first]
    if (uniq[inv] != vk).any():
        uniq, inv = np.unique(vk, return_inverse=True)
        inv = inv.reshape(-1)
    m = len(uniq)
    g_c = np.zeros(m, np.int64)
    np.add.at(g_c, inv, c)
    g_n = np.zeros(m, np.int64)
    np.add.at(g_n, inv, n)
    g_t1 = np.full(m, big, np.uint64)
    np.minimum.at(g_t1, inv, t1)
    g_t2 = np.zeros(m, np.uint64)
    np.maximum.at(g_t2, inv, t2)
    return uniq.view(AGG_KEY).reshape(-1), g_t1, g_t2, g_c, g_n


def judge_arrays(keys: Array, before: Array, had: Array, after: Array, has: Array,
                 rule: PullRule) -> tuple[Array, Array, Array, Array]:
    """What a merge (or deletion) publishes, per record: (candidate judged,
    candidate now, candidate no more, newly eligible as a known client)."""
    had = np.asarray(had, dtype=bool)
    has = np.asarray(has, dtype=bool)
    cb = had & candidates_array(keys, before, rule)
    ca = has & candidates_array(keys, after, rule)
    eb = had & eligible_array(keys, before, rule)
    ea = has & eligible_array(keys, after, rule)
    return cb | ca, ca & ~cb, cb & ~ca, ea & ~eb


def apply_partials(cur: Array, t1: Array, t2: Array, dc: Array, dn: Array) -> Array:
    """Partials ``cur`` (PARTIAL, zeros where absent) after :func:`partial_deltas`."""
    big = np.iinfo(np.uint64).max
    n = cur["n"].astype(np.int64) + dn
    fresh = cur["n"] == 0
    out = np.zeros(len(cur), dtype=PARTIAL)
    keep = n > 0
    c = np.maximum(np.where(fresh, 0, cur["c"].astype(np.int64)) + dc, 0)
    o1 = np.where(fresh, big, cur["ts1"]).astype(np.uint64)
    o1 = np.minimum(o1, t1)
    o2 = np.maximum(np.where(fresh, 0, cur["ts2"]).astype(np.uint64), t2)
    out["n"] = np.where(keep, n, 0)
    out["c"] = np.where(keep, c, 0)
    out["ts1"] = np.where(keep & (o1 != big), o1, 0)
    out["ts2"] = np.where(keep, o2, 0)
    return out


def aggregate_arrays(slots: Array, parts: Array, group: Array, groups: int, now: int,
                     rule: PullRule) -> tuple[Array, Array, Array]:
    """:func:`aggregate` per group: ``slots``, ``parts`` (PARTIAL) and the group
    (destination) of each partial.  Returns (ts1*, ts2*, c*), zeros where a
    destination has no live partial."""
    live = (slots.astype(np.uint64) >= np.uint64(rule.live_from(now))) & (parts["n"] > 0)
    c = np.zeros(groups, dtype=np.int64)
    np.add.at(c, group[live], parts["c"][live].astype(np.int64))
    t1 = np.full(groups, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(t1, group[live], parts["ts1"][live].astype(np.int64))
    t2 = np.zeros(groups, dtype=np.int64)
    np.maximum.at(t2, group[live], parts["ts2"][live].astype(np.int64))
    t1 = np.where(t2 > 0, t1, 0)
    return t1, t2, c


# ---------------------------------------------------------------------------
# A mesh of proxies under the pull rule (the specification of a round's pull)
# ---------------------------------------------------------------------------


class MeshModel:
    """Proxies sharing one master, one record at a time (no window resets).

    Each proxy counts packets into its local records (``dc``); a round
    (:meth:`round`) merges its counted flows into the master with
    :func:`xpro.core.model.merge`, which publishes candidates and moves
    partials as the stores do, then takes in what the pull gives: with
    ``pull="candidates"`` the flows judged candidates since its last round,
    with ``pull="all"`` every flow any proxy merged since.  A flow it counted
    packets of since its merge is left for its next merge, as the sync does.
    """

    def __init__(self, proxies: int, params: SyncParams, rule: PullRule,
                 pull: str = "candidates") -> None:
        self.params = params
        self.rule = rule
        self.pull = pull
        self.master: dict[bytes, Master] = {}
        self.partials: dict[tuple[bytes, int], Partial] = {}
        self.candidate_log: list[bytes] = []
        self.change_log: list[bytes] = []
        self.local: list[dict[bytes, list[int]]] = [{} for _ in range(proxies)]  # ts1 ts2 c dc
        self.seen = [0] * proxies
        self.pulled = [0] * proxies

    def count(self, p: int, key: bytes, t: int, n: int = 1) -> None:
        """``n`` packets of ``key`` at proxy ``p`` at time ``t``."""
        rec = self.local[p].setdefault(key, [t, t, 0, 0])
        rec[1] = max(rec[1], t)
        rec[2] += n
        rec[3] += n

    def round(self, p: int) -> None:
        """One sync round of proxy ``p``: merge, then pull."""
        for key, rec in self.local[p].items():
            if rec[3] == 0:
                continue
            before = self.master.get(key)
            loc, after = merge(Local(rec[0], rec[1], rec[2], rec[3], 0), before, self.params)
            assert loc is not None
            assert after is not None
            self.master[key] = after
            rec[:] = [loc.ts1, loc.ts2, loc.c, 0]
            apply_flow(self.partials, key, before, after, self.rule)
            self.change_log.append(key)
            if (before is not None and is_candidate(key, before, self.rule)) or is_candidate(
                    key, after, self.rule):
                self.candidate_log.append(key)
        log = self.candidate_log if self.pull == "candidates" else self.change_log
        keys = dict.fromkeys(log[self.seen[p]:])
        self.seen[p] = len(log)
        self.pulled[p] += len(keys)
        for key in keys:
            m = self.master[key]
            mine = self.local[p].get(key)
            if mine is not None and mine[3]:
                continue  # counted here since: merged next round
            self.local[p][key] = [m.ts1, m.ts2, m.c, 0]

    def view(self, p: int, key: bytes) -> Master | None:
        """What proxy ``p`` holds of ``key`` (its kernel's record)."""
        rec = self.local[p].get(key)
        return None if rec is None else Master(rec[0], rec[1], rec[2])

    def drops(self, p: int, key: bytes, p_filter: FilterParams) -> bool:
        """Whether proxy ``p`` drops the next packet of ``key`` (the per-source rule)."""
        v = self.view(p, key)
        if v is None:
            return False
        w = v.ts2 - v.ts1
        return w > p_filter.t_t2 and rate_exceeds(v.c, w, p_filter.t_f1)
