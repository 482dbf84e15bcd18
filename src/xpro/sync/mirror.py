"""The sync's mirror of the local flow table (what each round read or wrote)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from xpro.core import layout as L
from xpro.core.keys import KeyIndex

__all__ = ["Mirror"]

Array = npt.NDArray[Any]


class Mirror:
    """The sync's copy of the local flow table: what each round read or wrote.

    Updated only for the records a round touches; used to recompute the
    aggregates of the destinations those records belong to and to find idle
    records, without reading the kernel's whole table.  ``local`` says which
    flows this proxy counted packets of itself (the others it knows only from
    the master: docs/sync.rst, "Values from the store").
    """

    def __init__(self) -> None:
        self.index = KeyIndex(L.FLOW_KEY)
        self.free = np.zeros(0, dtype=np.int64)
        self.keys = np.zeros(0, dtype=L.FLOW_KEY)
        self.ts1 = np.zeros(0, dtype=np.int64)
        self.ts2 = np.zeros(0, dtype=np.int64)
        self.c = np.zeros(0, dtype=np.int64)
        self.dst = np.zeros(0, dtype=np.int64)
        self.alive = np.zeros(0, dtype=bool)
        self.local = np.zeros(0, dtype=bool)
        self.dst_index: dict[bytes, int] = {}
        self.dst_keys = np.zeros(0, dtype=L.DST_KEY)
        #: Flows of each destination id; ids of destinations without any are
        #: freed by :meth:`prune_dsts` and reused.
        self.dst_refs = np.zeros(0, dtype=np.int64)
        self.dst_free: list[int] = []
        #: Destination id -> its address aggregate's id (-1: not yet known).
        self.addr_of = np.zeros(0, dtype=np.int64)

    def _grow(self, need: int) -> None:
        cap = len(self.alive)
        if need <= len(self.free):
            return
        new = max(cap + need, 2 * cap, 1024)
        for name in ("keys", "ts1", "ts2", "c", "dst", "alive", "local"):
            old = getattr(self, name)
            arr = np.zeros(new, dtype=old.dtype)
            arr[:cap] = old
            setattr(self, name, arr)
        self.free = np.concatenate([np.arange(new - 1, cap - 1, -1, dtype=np.int64), self.free])

    def dst_ids(self, dkeys: Array) -> Array:
        """Destination ids (a dict over the few distinct destinations of a batch).

        A closed-drops record's key (the ``DST_PAD_CLOSED`` bit of its pad) has
        the id of its aggregate -- a destination key's, or an address
        aggregate's (``DST_PAD_ADDR_CLOSED``): the recompute sums it with the
        aggregate's flows.
        """
        vd = np.dtype((np.void, L.DST_KEY.itemsize))
        dkeys = np.array(dkeys, dtype=L.DST_KEY)
        dkeys["pad"] &= ~np.uint8(L.DST_PAD_CLOSED)
        uniq, inv = np.unique(np.ascontiguousarray(dkeys).view(vd), return_inverse=True)
        raw = uniq.tobytes()
        w = L.DST_KEY.itemsize
        names = [raw[i : i + w] for i in range(0, len(raw), w)]
        get = self.dst_index.get
        ids = np.fromiter((get(k, -1) for k in names), dtype=np.int64, count=len(names))
        new = np.flatnonzero(ids < 0)
        if len(new):
            # Freed ids first (the last freed first), then new ones past the
            # highest ever given: one batch, no per-key numpy work (a spoofed
            # or port-sprayed flood brings thousands of destinations a round).
            high = len(self.dst_index) + len(self.dst_free)
            reuse = min(len(new), len(self.dst_free))
            taken = self.dst_free[len(self.dst_free) - reuse:][::-1]
            del self.dst_free[len(self.dst_free) - reuse:]
            got = np.concatenate([np.array(taken, dtype=np.int64),
                                  np.arange(high, high + len(new) - reuse, dtype=np.int64)])
            need = int(got.max()) + 1
            if need > len(self.dst_keys):
                size = max(1024, 2 * len(self.dst_keys), need)
                grown = np.zeros(size, dtype=L.DST_KEY)
                grown[: len(self.dst_keys)] = self.dst_keys
                self.dst_keys = grown
                refs = np.zeros(size, dtype=np.int64)
                refs[: len(self.dst_refs)] = self.dst_refs
                self.dst_refs = refs
            self.dst_keys[got] = uniq[new].view(L.DST_KEY).reshape(-1)
            self.dst_index.update(zip([names[j] for j in new.tolist()], got.tolist(),
                                      strict=True))
            ids[new] = got
        out: Array = ids[inv.reshape(-1)]
        return out

    def find_dst_ids(self, dkeys: Array) -> Array:
        """The ids of destinations the mirror has (-1 for the others; none given)."""
        vd = np.dtype((np.void, L.DST_KEY.itemsize))
        raw = np.ascontiguousarray(np.asarray(dkeys, dtype=L.DST_KEY)).view(vd)
        get = self.dst_index.get
        out: Array = np.fromiter((get(bytes(k), -1) for k in raw), dtype=np.int64,
                                 count=len(raw))
        return out

    def address_ids(self, ids: Array) -> Array:
        """The id of the address aggregate of each destination id (``addr+port``
        mode: the key's address, port 0, protocol 0, ``DST_PAD_ADDR``); an
        address aggregate's id is its own.  Remembered per id."""
        ids = np.asarray(ids, dtype=np.int64)
        self._grow_addr_of()
        todo = np.unique(ids[self.addr_of[ids] < 0])
        if len(todo):
            ak = np.array(self.dst_keys[todo], dtype=L.DST_KEY)
            ak["port"], ak["proto"], ak["pad"] = 0, 0, L.DST_PAD_ADDR
            found = self.dst_ids(ak)
            self._grow_addr_of()
            self.addr_of[todo] = found
            self.addr_of[found] = found
        out: Array = self.addr_of[ids]
        return out

    def _grow_addr_of(self) -> None:
        if len(self.addr_of) < len(self.dst_keys):
            grown = np.full(len(self.dst_keys), -1, dtype=np.int64)
            grown[: len(self.addr_of)] = self.addr_of
            self.addr_of = grown

    def update(self, keys: Array, ts1: Array, ts2: Array, c: Array, *, local: bool = False
               ) -> Array:
        """Record these flows (no duplicate keys); returns their destination ids.

        ``local``: this proxy counted packets of them (the flag stays set).
        """
        keys = np.asarray(keys, dtype=L.FLOW_KEY)
        slots = self.index.find(keys, self.keys)
        fresh = np.flatnonzero(slots < 0)
        if len(fresh):
            self._grow(len(fresh))
            new_slots = self.free[len(self.free) - len(fresh):][::-1].copy()
            self.free = self.free[: len(self.free) - len(fresh)]
            slots[fresh] = new_slots
            self.keys[new_slots] = keys[fresh]
            self.dst[new_slots] = self.dst_ids(keys["dst"][fresh])
            np.add.at(self.dst_refs, self.dst[new_slots], 1)
            self.alive[new_slots] = True
            self.local[new_slots] = False
            self.index.add(keys[fresh], new_slots)
        self.ts1[slots], self.ts2[slots], self.c[slots] = ts1, ts2, c
        if local:
            self.local[slots] = True
        return self.dst[slots]

    def remove(self, keys: Array) -> None:
        keys = np.asarray(keys, dtype=L.FLOW_KEY)
        slots = self.index.find(keys, self.keys)
        hit = slots >= 0
        self.index.remove(keys[hit], slots[hit])
        self.alive[slots[hit]] = False
        np.add.at(self.dst_refs, self.dst[slots[hit]], -1)
        self.free = np.concatenate([self.free, slots[hit]])

    def prune_dsts(self) -> Array:
        """Forget the destinations no flow refers to any more (their ids are
        reused); returns their ids.  Call it when no destination id of this
        round is still in use."""
        used = np.zeros(len(self.dst_refs), dtype=bool)
        used[: len(self.dst_index) + len(self.dst_free)] = True
        used[self.dst_free] = False
        held = used & (self.dst_refs > 0)
        if len(self.addr_of):
            # An address aggregate has no flow of its own until it closes (its
            # closed-drops record): it is held by its keys' flows.  Freed each
            # round, it lost the history its recent rate is judged from
            # (docs/semantics.rst, "The recent rate").
            self._grow_addr_of()
            of = self.addr_of[np.flatnonzero(held)]
            held[of[of >= 0]] = True
        gone = np.flatnonzero(used & ~held)
        for d in gone.tolist():
            del self.dst_index[self.dst_keys[d].tobytes()]
        self.dst_refs[gone] = 0
        self.dst_free.extend(gone.tolist())
        if len(gone) and len(self.addr_of):  # the address ids to and of them go too
            self._grow_addr_of()
            self.addr_of[np.isin(self.addr_of, gone)] = -1
            self.addr_of[gone] = -1
        return gone

    def __len__(self) -> int:
        return int(self.alive.sum())

    def record(self, key: Array) -> dict[str, int] | None:
        """The mirrored ts1, ts2 and c of one flow (``key``: one FLOW_KEY), or None."""
        keys = np.asarray(key, dtype=L.FLOW_KEY).reshape(1)
        slot = int(self.index.find(keys, self.keys)[0])
        if slot < 0:
            return None
        return {"ts1": int(self.ts1[slot]), "ts2": int(self.ts2[slot]), "c": int(self.c[slot])}
