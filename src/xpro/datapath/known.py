"""The program's known clients: the ``known`` table and the filters of its sources.

The kernel program reads two maps while a destination is closed
(docs/semantics.rst, "Closed destinations and known clients"): ``known``
(flow key -> class) and ``known_slots`` (an array: slot -> the filter of the
known sources of the destinations whose key hashes to that slot,
docs/performance.rst, "The known sources' filter"), at the slot that the
field ``known_slot_mask`` of its configuration selects.
:class:`KnownTable` is their one writer.  It keeps the order that never
hides a known client from a packet:

* the mask is set before any filter is written, and every slot's filter is
  rewritten from the table at load (a restarted daemon adopts pinned maps);
* a source's filter bits are set before its entry is written, and a filter
  loses a source's bits only after its entry is gone (a filter may hold
  more bits than its entries, never fewer).

The keys of the table are kept beside it to rebuild a slot's filter.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from xpro.bpf import Map
from xpro.core import layout as L
from xpro.core.keys import index_of, known_filters, known_slot
from xpro.errors import DatapathError

Array = npt.NDArray[Any]

#: The mask of a program whose filters are not in use yet: no slot is in the
#: array, so the known table is looked up.
UNARMED = 0xFFFFFFFF


class KnownTable:
    """``known``, ``known_slots`` and the field ``known_slot_mask`` of ``cfg``
    (the program's mmap'ed configuration), written together."""

    def __init__(self, known: Map, slots: Map, cfg: Any, *, armed: bool = True) -> None:
        n = slots.max_entries
        if n & (n - 1):
            raise DatapathError(f"the filter slots of known sources must be a power of two, "
                                f"not {n} (tables.known_filters)")
        self.known = known
        self.slots = slots
        self.mask = n - 1
        self._cfg = cfg
        # Unarmed, the mask is wider than any array: every closed
        # destination's source is looked up in the table (an older program
        # still attached reads this mask with its own array).
        cfg.view["known_slot_mask"] = self.mask if armed else UNARMED
        self._keys = self.read()[0]
        self._write_slots(np.arange(n, dtype=np.uint32))

    def arm(self) -> None:
        """Let the program use the filters (their slots are written)."""
        self._cfg.view["known_slot_mask"] = self.mask

    def read(self) -> tuple[Array, Array]:
        """Flow keys (FLOW_KEY) and their class (``Known``, uint32)."""
        keys, vals = self.known.lookup_batch()
        return np.asarray(keys, dtype=L.FLOW_KEY), np.asarray(vals, dtype="<u4")

    def slot_of(self, dsts: Array) -> Array:
        """The slot of each destination key (DST_KEY) in ``known_slots``."""
        out: Array = known_slot(np.asarray(dsts, dtype=L.DST_KEY)) & np.uint32(self.mask)
        return out

    def set(self, keys: Array, classes: Any) -> None:
        """Write (or overwrite) the class of these flow keys: one class for all
        or one per key.  A full map raises :class:`~xpro.errors.DatapathError`
        (a plain hash: nothing is evicted to make room)."""
        keys = np.asarray(keys, dtype=L.FLOW_KEY)
        if not len(keys):
            return
        cls = np.broadcast_to(np.asarray(classes, dtype="<u4"), (len(keys),))
        new = keys[index_of(self._keys, keys) < 0]
        if len(new):
            # The filters first: a packet never meets an entry whose bits
            # are not set yet.
            before = self._keys
            self._keys = np.concatenate([before, new], dtype=L.FLOW_KEY)
            try:
                self._write_slots(self.slot_of(new["dst"]))
            except BaseException:
                # Not written: the keys stay new, so a retry writes their
                # filters again.
                self._keys = before
                raise
        self.known.update_batch(keys, np.ascontiguousarray(cls))

    def drop(self, keys: Array) -> int:
        """Remove these flow keys (absent ones are skipped); returns how many went."""
        keys = np.asarray(keys, dtype=L.FLOW_KEY)
        if not len(keys):
            return 0
        gone = self.known.delete_batch(keys)
        # Then the filters, without the entries that went (if this fails,
        # the filters left hold more bits than the table: safe).
        self._keys = self._keys[index_of(keys, self._keys) < 0]
        self._write_slots(self.slot_of(keys["dst"]))
        return gone

    def clear(self) -> None:
        """Empty the table, then the filters."""
        self.known.clear()
        self._keys = self._keys[:0]
        self._write_slots(np.arange(self.mask + 1, dtype=np.uint32))

    def _write_slots(self, slots: Array) -> None:
        """Rewrite the filter of each of ``slots`` from the known keys of the
        destinations in it (all zero for a slot with none)."""
        slots = np.unique(np.asarray(slots, dtype=np.uint32))
        if not len(slots):
            return
        mine = self.slot_of(np.ascontiguousarray(self._keys["dst"]))
        rows = self._keys[np.isin(mine, slots)]
        have, filters = known_filters(rows, L.KNOWN_FILTER_WORDS, self.mask)
        out = np.zeros((len(slots), L.KNOWN_FILTER_WORDS), dtype=np.uint64)
        out[np.searchsorted(slots, have)] = filters
        self.slots.update_batch(slots, out.view(np.uint8).reshape(len(slots), -1))
