"""The destination partials a proxy pulled from the master (docs/sync.rst, "What a round pulls").

The master keeps, per destination, shard and time slot, a partial aggregate of
the flows that count in it (:mod:`xpro.core.pull`); every round a proxy pulls
the partials that changed and keeps the latest of each here.  A destination's
aggregate is the sum over its live partials (:func:`xpro.core.pull.aggregate`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from xpro.core import layout as L
from xpro.core.keys import KeyIndex, cat_rows, group_keys, take_rows
from xpro.core.pull import AGG_KEY, PARTIAL, PullRule, aggregate_arrays
from xpro.sync.known import exceeds

__all__ = ["Partials", "RecentCounts", "recent_starts"]

Array = npt.NDArray[Any]

_PART_VD = np.dtype((np.void, PARTIAL.itemsize))



class Partials:
    """The latest value of every partial pulled, in mesh time.

    Each partial's destination is numbered once, when it first comes
    (:attr:`group`): a round's look-ups by destination are array indexing,
    not a sort of every partial (under a port spray the master holds the
    partials of tens of thousands of keys).  Partials and destinations are
    found with :class:`xpro.core.keys.KeyIndex`, in bulk: a Python loop per
    partial was the largest share of a round under a port spray
    (docs/performance.rst).
    """

    def __init__(self, rule: PullRule) -> None:
        self.rule = rule
        self.keys = np.zeros(0, dtype=AGG_KEY)
        self.parts = np.zeros(0, dtype=PARTIAL)
        #: The destinations by number, and the number of each partial's.
        self.dsts = np.zeros(0, dtype=L.DST_KEY)
        self.group = np.zeros(0, dtype=np.int64)
        self._index = KeyIndex(AGG_KEY)
        self._dst_index = KeyIndex(L.DST_KEY)

    def __len__(self) -> int:
        return len(self.keys)

    def clear(self) -> None:
        self.keys = self.keys[:0]
        self.parts = self.parts[:0]
        self.dsts = self.dsts[:0]
        self.group = self.group[:0]
        self._index = KeyIndex(AGG_KEY)
        self._dst_index = KeyIndex(L.DST_KEY)

    def update(self, keys: Array, parts: Array) -> Array:
        """Take these partials in (a key given twice: its later value); returns
        the destinations (DST_KEY) they belong to."""
        keys = np.ascontiguousarray(np.asarray(keys, dtype=AGG_KEY))
        parts = np.asarray(parts, dtype=PARTIAL)
        if not len(keys):
            return np.zeros(0, dtype=L.DST_KEY)
        first_rev, _ = group_keys(np.ascontiguousarray(keys[::-1]))
        if len(first_rev) < len(keys):
            last = np.sort(len(keys) - 1 - first_rev)
            keys, parts = take_rows(keys, last), take_rows(parts, last)
        at = self._index.find(keys, self.keys)
        old = at >= 0
        self.parts.view(_PART_VD)[at[old]] = parts.view(_PART_VD)[old]
        touched = [self.group[at[old]]]
        new = np.flatnonzero(~old)
        if len(new):
            nkeys = take_rows(keys, new)
            dst = np.ascontiguousarray(nkeys["dst"])
            first, inv = group_keys(dst)
            udst = take_rows(dst, first)
            num = self._dst_index.find(udst, self.dsts)
            fresh = np.flatnonzero(num < 0)
            if len(fresh):
                num[fresh] = len(self.dsts) + np.arange(len(fresh))
                add = take_rows(udst, fresh)
                self.dsts = cat_rows(self.dsts, add)
                self._dst_index.add(add, num[fresh])
            groups = num[inv]
            self._index.add(nkeys, len(self.keys) + np.arange(len(new)))
            self.keys = cat_rows(self.keys, nkeys)
            self.parts = cat_rows(self.parts, take_rows(parts, new))
            self.group = np.concatenate([self.group, groups])
            touched.append(groups)
        return take_rows(self.dsts, np.unique(np.concatenate(touched)))

    def prune(self, now: int) -> None:
        """Forget the partials no flow can be live in at ``now`` (mesh time), and
        the destinations none is left of, once they are half of those kept:
        until then every look-up leaves them out anyway (their slot is over,
        or they hold no flow), and rebuilding the indexes at every round was
        an eighth of a round's time under a port spray."""
        first = self.rule.live_from(now)
        keep = (self.keys["slot"] >= np.uint64(first)) & (self.parts["n"] > 0)
        if 2 * int(keep.sum()) >= len(keep):
            return
        kept = np.flatnonzero(keep)
        self.keys, self.parts = take_rows(self.keys, kept), take_rows(self.parts, kept)
        self.group = self.group[kept]
        used = np.unique(self.group)
        renumber = np.full(len(self.dsts), -1, dtype=np.int64)
        renumber[used] = np.arange(len(used))
        self.group = renumber[self.group]
        self.dsts = take_rows(self.dsts, used)
        self._index = KeyIndex(AGG_KEY)
        self._index.add(self.keys, np.arange(len(self.keys)))
        self._dst_index = KeyIndex(L.DST_KEY)
        self._dst_index.add(self.dsts, np.arange(len(self.dsts)))

    def aged(self, since: int, now: int) -> Array:
        """The destinations of partials that were live at ``since`` and are not at ``now``."""
        lo, hi = np.uint64(self.rule.live_from(since)), np.uint64(self.rule.live_from(now))
        sel = (self.keys["slot"] >= lo) & (self.keys["slot"] < hi) & (self.parts["n"] > 0)
        return take_rows(self.dsts, np.unique(self.group[sel]))

    def live(self, now: int) -> tuple[Array, Array, Array, Array]:
        """The destinations with a live partial at ``now`` (mesh time), each once,
        with their (ts1*, ts2*, c*) as :meth:`values` gives them."""
        t1, t2, c = aggregate_arrays(self.keys["slot"], self.parts, self.group,
                                     len(self.dsts), now, self.rule)
        has = np.flatnonzero(t2 > 0)
        return take_rows(self.dsts, has), t1[has], t2[has], c[has]

    def values(self, dsts: Array, now: int) -> tuple[Array, Array, Array]:
        """(ts1*, ts2*, c*) of each destination (DST_KEY, pad 0) at ``now``: over its
        live partials, every shard; zeros where it has none."""
        dsts = np.ascontiguousarray(np.asarray(dsts, dtype=L.DST_KEY))
        if not len(self.keys) or not len(dsts):
            z = np.zeros(len(dsts), dtype=np.int64)
            return z, z.copy(), z.copy()
        num = self._dst_index.find(dsts, self.dsts)
        pos = np.full(len(self.dsts), -1, dtype=np.int64)
        pos[num[num >= 0]] = np.flatnonzero(num >= 0)
        group = pos[self.group]
        mine = np.flatnonzero(group >= 0)
        return aggregate_arrays(self.keys["slot"][mine], take_rows(self.parts, mine), group[mine],
                                len(dsts), now, self.rule)


class RecentCounts:
    """The ``(time, c*)`` of each aggregate's recent recomputes, by the mirror's
    destination id: what :func:`xpro.core.model.recent_start` judges the
    recent rate from (docs/semantics.rst, "The recent rate").

    A ring of :data:`DEPTH` entries an id, one kept at most every T_T3 /
    (DEPTH - 2) (:meth:`fit`), so the latest entry older than T_T3 is always
    in it, whatever the period: at most 64 bytes an id a round.  An id the
    mirror frees is forgotten (:meth:`forget`) before it is given to another
    destination.
    """

    #: Entries kept an id.
    DEPTH = 8

    def __init__(self) -> None:
        self.t = np.zeros((0, self.DEPTH), dtype=np.int64)
        self.c = np.zeros((0, self.DEPTH), dtype=np.int64)
        self.at = np.zeros(0, dtype=np.int64)
        #: The least time between two entries of an id (ns).
        self.spacing = 0

    def clear(self) -> None:
        self.t[:] = 0
        self.c[:] = 0

    def fit(self, t_t3: int) -> None:
        """Space the entries for this T_T3 (the history is dropped when it changes)."""
        spacing = t_t3 // (self.DEPTH - 2)
        if spacing != self.spacing:
            self.spacing = spacing
            self.clear()

    def forget(self, ids: Array) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[ids < len(self.t)]
        self.t[ids] = 0
        self.c[ids] = 0

    def _grow(self, need: int) -> None:
        if need <= len(self.t):
            return
        size = max(need, 2 * len(self.t), 1024)
        for name in ("t", "c"):
            old = getattr(self, name)
            arr = np.zeros((size, old.shape[1]), dtype=np.int64)
            arr[: len(old)] = old
            setattr(self, name, arr)
        at = np.zeros(size, dtype=np.int64)
        at[: len(self.at)] = self.at
        self.at = at

    def latest_before(self, ids: Array, before: int) -> tuple[Array, Array]:
        """For each id, its latest entry older than ``before`` (time 0: none)."""
        ids = np.asarray(ids, dtype=np.int64)
        self._grow(int(ids.max()) + 1 if len(ids) else 0)
        t, c = self.t[ids], self.c[ids]
        t = np.where((t > 0) & (t < before), t, 0)
        pick = np.argmax(t, axis=1)
        rows = np.arange(len(ids))
        return t[rows, pick], c[rows, pick]

    def record(self, ids: Array, c: Array, now: int) -> None:
        """Each id's ``c*`` at ``now`` (ids distinct), where its latest entry is
        at least :attr:`spacing` old."""
        ids = np.asarray(ids, dtype=np.int64)
        c = np.asarray(c, dtype=np.int64)
        if not len(ids):
            return
        self._grow(int(ids.max()) + 1)
        last = self.t[ids, (self.at[ids] - 1) % self.DEPTH]
        due = (last == 0) | (now - last >= self.spacing)
        ids, c = ids[due], c[due]
        slot = self.at[ids] % self.DEPTH
        self.t[ids, slot] = now
        self.c[ids, slot] = c
        self.at[ids] += 1


def recent_starts(ts1: Array, c: Array, has: Array, t_h: Array, c_h: Array, now: int,
                  limit: Array, budget: Array) -> Array:
    """:func:`xpro.core.model.recent_start` over arrays, given each aggregate's
    latest entry older than T_T3 (:meth:`RecentCounts.latest_before`: ``t_h``,
    ``c_h``; time 0, none) and its ``budget`` (packets, float or int)."""
    ts1 = np.asarray(ts1, dtype=np.int64)
    c = np.asarray(c, dtype=np.int64)
    span = now - t_h
    gain = np.minimum(c - c_h, np.floor(budget)).astype(np.int64)
    fire = has & (t_h > 0) & (gain > 0)
    fire[fire] = exceeds(gain[fire], span[fire], limit[fire])
    out = ts1.copy()
    for i in np.flatnonzero(fire).tolist():  # few: the aggregates over their limit
        out[i] = max(int(ts1[i]), now - int(span[i]) * int(c[i]) // int(gain[i]))
    return out
