"""Closed destinations and their known clients, as the sync keeps them.

Each round, after the aggregates of the touched destinations are recomputed,
:meth:`KnownClients.update` decides which destinations are closed (over T_F2
after T_T3, not idle) and which sources the program must keep serving while
they are, and writes the difference into the program's ``known`` table
(docs/semantics.rst, "Closed destinations and known clients"):

- the known clients of an open destination are refreshed every round: its
  flows, in the mesh-wide records, whose window spans ``min_age``, holds
  ``min_packets`` packets, is not idle and is not over T_F1;
- the set of a closed destination is frozen at its closing (a source leaves
  it only when its record expires), and its sources over T_F1 are written as
  *heavy*, so their packets are judged by their own record and do not keep
  the destination closed;
- closings and reopenings are reported (the daemon turns them into alerts).

The table is bounded (``tables.known``): when it is full, the clients beyond
it are not written and :attr:`KnownClients.overflow` counts them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from xpro.core import layout as L
from xpro.core.keys import index_of, key_bytes
from xpro.core.merge import rate_exceeds_array
from xpro.core.model import FilterParams, window_over
from xpro.core.params import KnownPolicy
from xpro.core.state import FilterState
from xpro.core.status import Closure

__all__ = ["KnownClients", "closed_now", "exceeds", "is_address", "is_closed_record", "limits",
           "over_t_f1"]

Array = npt.NDArray[Any]


def is_closed_record(keys: Array) -> Array:
    """Which flow keys are closed-drops records (the ``DST_PAD_CLOSED`` bit of the
    pad: a destination key's, or an address aggregate's)."""
    out: Array = (keys["dst"]["pad"] & L.DST_PAD_CLOSED) != 0
    return out


def is_address(dst_keys: Array) -> Array:
    """Which destination keys are address aggregates' (``DST_PAD_ADDR``)."""
    out: Array = (dst_keys["pad"] & L.DST_PAD_ADDR) != 0
    return out


def limits(dst_keys: Array, p: FilterParams) -> Array:
    """The limit each aggregate is judged by: T_F2, or an address's own."""
    out: Array = np.where(is_address(dst_keys), p.t_f2_addr, p.t_f2).astype(np.int64)
    return out


def over_t_f1(ts1: Array, ts2: Array, c: Array, p: FilterParams) -> Array:
    """Which records are over T_F1 (the per-source rule, judged at their last packet)."""
    window = ts2 - ts1
    out: Array = (window > p.t_t2) & rate_exceeds_array(c, window, p.t_f1)
    return out


def closed_now(ts1: Array, ts2: Array, c: Array, now: int, p: FilterParams,
               limit: Array | int | None = None) -> Array:
    """Which aggregates are closed at ``now``: not idle, window over T_T3, c* over
    ``limit`` (T_F2 by default; per aggregate: :func:`limits`)."""
    window = now - ts1
    over = exceeds(c, window, p.t_f2 if limit is None else limit)
    out: Array = ~window_over(now, ts2, p.t_t1) & (window > p.t_t3) & over
    return out


def exceeds(c: Array, window: Array, limit: Array | int) -> Array:
    """``c / window > limit`` per aggregate (window in ns), with one limit for all
    or one each (:func:`limits`: a few distinct values, T_F2 and an address's)."""
    if isinstance(limit, int):
        return rate_exceeds_array(c, window, limit)
    out = np.zeros(len(c), dtype=bool)
    for lim in np.unique(limit):
        m = limit == lim
        out[m] = rate_exceeds_array(c[m], window[m], int(lim))
    return out


class KnownClients:
    """The ``known`` table of one proxy's program, and the closed destinations."""

    def __init__(self, filt: FilterState, policy: KnownPolicy | None = None) -> None:
        self.filt = filt
        self.policy = policy or KnownPolicy()
        #: What the program's table holds: flow keys, their class, their destination key.
        self.keys = np.zeros(0, dtype=L.FLOW_KEY)
        self.cls = np.zeros(0, dtype=np.uint32)
        #: Closed destinations: 20-byte key -> when the sync first saw it closed (ns).
        self.closed: dict[bytes, int] = {}
        #: Clients (or heavy sources) that did not fit in the table at the last round.
        self.overflow = 0

    def closed_keys(self) -> Array:
        """The closed destinations' keys (DST_KEY)."""
        out: Array = np.frombuffer(b"".join(self.closed), dtype=L.DST_KEY)
        return out

    # ------------------------------------------------------------------------

    def classes_of(self, keys: Array) -> Array:
        """The class of each flow key in the table (0 where it has none)."""
        idx = index_of(self.keys, np.asarray(keys, dtype=L.FLOW_KEY))
        out = np.zeros(len(idx), dtype=np.uint32)
        out[idx >= 0] = self.cls[idx[idx >= 0]]
        return out

    def count_of(self, dst: bytes) -> int:
        """Known clients of one destination key in the table."""
        if not len(self.keys):
            return 0
        one = np.frombuffer(dst, dtype=L.DST_KEY)
        mine = index_of(one, np.ascontiguousarray(self.keys["dst"])) >= 0
        return int((mine & (self.cls == L.Known.CLIENT)).sum())

    def update(self, dst_keys: Array, agg: Array, flows: dict[str, Array], now: int,
               params: FilterParams) -> list[Closure]:
        """One round: closed state of ``dst_keys`` and the known table of their flows.

        ``dst_keys`` (DST_KEY) are the destinations judged this round, with
        their aggregates ``agg`` (fields ts1, ts2, c); an address aggregate
        (``addr+port`` mode) is judged by its own limit.  ``flows`` are the
        mesh-wide records of the flows of those destinations: ``keys``
        (FLOW_KEY), ``ts1``, ``ts2``, ``c`` and ``dst`` (the index of each
        flow's destination in ``dst_keys``); a flow counted in an address
        aggregate comes once more, keyed (source, address key): the known
        clients of an address are the sources with an established flow to
        any of its ports (docs/semantics.rst, "Address aggregates").  Writes
        the table's changes into the program; returns the closings and
        reopenings.
        """
        dk = key_bytes(dst_keys)
        shut = closed_now(agg["ts1"].astype(np.int64), agg["ts2"].astype(np.int64),
                          agg["c"].astype(np.int64), now, params,
                          limits(np.asarray(dst_keys, dtype=L.DST_KEY), params))
        events: list[Closure] = []
        just_closed = np.zeros(len(dk), dtype=bool)
        for i, k in enumerate(dk):
            was = k in self.closed
            if shut[i] and not was:
                self.closed[k] = now
                just_closed[i] = True
            elif was and not shut[i]:
                since = self.closed.pop(k)
                events.append(Closure(k, False, int(agg["c"][i]),
                                      int(now - int(agg["ts1"][i])), 0, since))

        keys = np.asarray(flows["keys"], dtype=L.FLOW_KEY)
        ts1, ts2 = flows["ts1"].astype(np.int64), flows["ts2"].astype(np.int64)
        c, fdst = flows["c"].astype(np.int64), flows["dst"]
        p = self.policy
        real = ~is_closed_record(keys)
        alive = ~window_over(now, ts2, params.t_t1)
        over = over_t_f1(ts1, ts2, c, params)
        client = real & alive & ~over & ((ts2 - ts1) >= p.min_age) & (c >= p.min_packets)
        heavy = real & over & alive

        # Rows of the table whose destination is judged this round.
        t_dst = np.ascontiguousarray(self.keys["dst"])
        judged = index_of(dst_keys, t_dst) >= 0
        row_closed = index_of(dst_keys[shut], t_dst) >= 0
        f_closed = shut[fdst]
        f_new_closure = just_closed[fdst]

        # Keep: rows of destinations not judged; CLIENT rows of closed ones.
        keep = ~judged | (row_closed & (self.cls == L.Known.CLIENT))
        kept_keys, kept_cls = self.keys[keep], self.cls[keep]
        # Add: clients of open destinations (refreshed) and of those closing now.
        add_client = client & (~f_closed | f_new_closure)
        # Heavy sources of closed destinations (refreshed every round).
        add_heavy = heavy & f_closed
        cand_keys = np.concatenate([keys[add_client], keys[add_heavy]], dtype=L.FLOW_KEY)
        cand_cls = np.concatenate([np.full(int(add_client.sum()), L.Known.CLIENT, np.uint32),
                                   np.full(int(add_heavy.sum()), L.Known.HEAVY, np.uint32)])
        cand_c = np.concatenate([c[add_client], c[add_heavy]])
        # An address aggregate's rows carry (source, address key): one source
        # with flows to several ports appears once, a client first (a source
        # heavy on one port and a client on another is a client of the
        # address; its heavy port's packets meet their own flow record).
        fv = np.dtype((np.void, L.FLOW_KEY.itemsize))
        _, first = np.unique(np.ascontiguousarray(cand_keys).view(fv), return_index=True)
        first = np.sort(first)
        cand_keys, cand_cls, cand_c = cand_keys[first], cand_cls[first], cand_c[first]
        fresh = index_of(kept_keys, cand_keys) < 0
        cand_keys, cand_cls, cand_c = cand_keys[fresh], cand_cls[fresh], cand_c[fresh]
        room = max(0, p.capacity - len(kept_keys))
        overflow = 0
        if len(cand_keys) > room:
            order = np.argsort(-cand_c, kind="stable")[:room]
            overflow = len(cand_keys) - room
            cand_keys, cand_cls = cand_keys[order], cand_cls[order]
        want_keys = np.concatenate([kept_keys, cand_keys], dtype=L.FLOW_KEY)
        want_cls = np.concatenate([kept_cls, cand_cls])
        self._write(want_keys, want_cls)
        self.overflow = overflow

        for i, k in enumerate(dk):
            if just_closed[i]:
                events.append(Closure(k, True, int(agg["c"][i]),
                                      int(now - int(agg["ts1"][i])), self.count_of(k), now))
        return events

    def forget(self, keys: Array) -> None:
        """Drop these flow keys from the table (their records expired)."""
        keys = np.asarray(keys, dtype=L.FLOW_KEY)
        gone = index_of(self.keys, keys)
        gone = gone[gone >= 0]
        if not len(gone):
            return
        self.filt.drop_known(self.keys[gone])
        keep = np.ones(len(self.keys), dtype=bool)
        keep[gone] = False
        self.keys, self.cls = self.keys[keep], self.cls[keep]

    def _write(self, keys: Array, cls: Array) -> None:
        """Bring the program's table to ``keys``/``cls`` with the fewest writes."""
        old = index_of(keys, self.keys)
        gone = self.keys[old < 0]
        if len(gone):
            self.filt.drop_known(gone)
        prev = index_of(self.keys, keys)
        changed = (prev < 0) | (self.cls[np.maximum(prev, 0)] != cls) if len(self.keys) \
            else np.ones(len(keys), dtype=bool)
        if changed.any():
            self.filt.set_known(keys[changed], cls[changed])
        self.keys, self.cls = keys, cls
