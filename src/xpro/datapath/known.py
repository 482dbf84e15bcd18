"""The program's known clients: the ``known`` table and its destinations' filters.

The kernel program reads two maps while a destination is closed
(docs/semantics.rst, "Closed destinations and known clients"): ``known``
(flow key -> class) and ``known_dsts`` (destination key -> a filter of its
known sources, docs/performance.rst, "The known sources' filter"), and one
flag of its configuration, ``known_unfiltered``.  :class:`KnownTable` is
their one writer.  It keeps the order that never hides a known client from
a packet:

* a source's filter bits are set before its entry is written, and a filter
  loses a source's bits only after its entry is gone (a filter may hold
  more bits than its entries, never fewer);
* a destination with known sources and no room for a filter is announced
  by the flag before its entries are written, and the flag is cleared only
  once every such destination has its filter again.

The keys of the table are kept beside it to rebuild a filter; at load they
are read from the table itself, and every filter is rebuilt (a restarted
daemon adopts pinned maps that a build without filters may have left).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from xpro.bpf import Map
from xpro.core import layout as L
from xpro.core.keys import index_of, key_bytes, known_filters, unique_keys

Array = npt.NDArray[Any]

log = logging.getLogger(__name__)


class KnownTable:
    """``known``, ``known_dsts`` and the flag ``known_unfiltered`` of ``cfg``
    (the program's mmap'ed configuration), written together."""

    def __init__(self, known: Map, filters: Map, cfg: Any) -> None:
        self.known = known
        self.filters = filters
        self._cfg = cfg
        self._keys = self.read()[0]
        self._filtered: set[bytes] = set()  # destinations with a filter
        self._unfiltered: set[bytes] = set()  # with known sources, no room for one
        pinned = self._resync()  # and the flag: never a stale one
        self._write_filters(np.concatenate([self._keys["dst"], pinned]))

    def read(self) -> tuple[Array, Array]:
        """Flow keys (FLOW_KEY) and their class (``Known``, uint32)."""
        keys, vals = self.known.lookup_batch()
        return np.asarray(keys, dtype=L.FLOW_KEY), np.asarray(vals, dtype="<u4")

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
                self._write_filters(new["dst"])
            except BaseException:
                # Not written: the keys stay new, so a retry writes their
                # filters again; the kernel's filters are read back.
                self._keys = before
                self._resync()
                raise
        self.known.update_batch(keys, np.ascontiguousarray(cls))

    def drop(self, keys: Array) -> int:
        """Remove these flow keys (absent ones are skipped); returns how many went."""
        keys = np.asarray(keys, dtype=L.FLOW_KEY)
        if not len(keys):
            return 0
        gone = self.known.delete_batch(keys)
        # Then the filters, without the entries that went.
        self._keys = self._keys[index_of(keys, self._keys) < 0]
        try:
            self._write_filters(keys["dst"])
        except BaseException:
            self._resync()  # the filters left hold more bits: safe
            raise
        return gone

    def clear(self) -> None:
        """Empty the table, then the filters, then the flag."""
        self.known.clear()
        self.filters.clear()
        self._keys = self._keys[:0]
        self._filtered.clear()
        self._unfiltered.clear()
        self._set_flag()

    def missing(self) -> int:
        """Destination keys with known sources and no filter of them (the
        filter map was full): their closed path looks every source up."""
        return len(self._unfiltered)

    # --- the filters ---------------------------------------------------------

    def _set_flag(self) -> None:
        self._cfg.view["known_unfiltered"] = int(bool(self._unfiltered))

    def _resync(self) -> Array:
        """Which filters exist, and the flag, from the kernel's filter map (at
        load, and after a write failed part way); returns their keys."""
        pinned = np.asarray(self.filters.lookup_batch()[0], dtype=L.DST_KEY)
        self._filtered = set(key_bytes(pinned))
        self._unfiltered = set(key_bytes(self._keys["dst"])) - self._filtered
        self._set_flag()
        return pinned

    def _write_filters(self, dsts: Array) -> None:
        """Rewrite the filter of each of ``dsts`` (DST_KEY) from the known keys,
        and remove the filter of one with none left.

        A destination that has no filter yet gets one while the map has room
        (``Sizes.known_filters``); past that it is announced by the flag
        before the caller writes its entries."""
        if not len(dsts):
            return
        dsts = unique_keys(np.asarray(dsts, dtype=L.DST_KEY))
        rows = self._keys[index_of(dsts, np.ascontiguousarray(self._keys["dst"])) >= 0]
        have, filters = known_filters(rows, L.KNOWN_FILTER_WORDS)
        fits = self._place(key_bytes(have))
        if fits.any():
            self.filters.update_batch(have[fits], np.ascontiguousarray(
                filters[fits]).view(np.uint8).reshape(int(fits.sum()), -1))
            written = key_bytes(have[fits])
            self._filtered.update(written)
            self._unfiltered.difference_update(written)
        self._remove_filters(dsts[index_of(have, dsts) < 0])
        if not self._unfiltered:
            self._set_flag()

    def _place(self, names: list[bytes]) -> Array:
        """Which of these destinations (with known sources) get a filter: those
        that have one, and new ones while the map has room.  The others are
        announced (the flag, a warning) before anything is written."""
        room = self.filters.max_entries - len(self._filtered)
        fits = np.array([n in self._filtered for n in names], dtype=bool)
        fits[np.flatnonzero(~fits)[:max(room, 0)]] = True
        missing = {n for n, f in zip(names, fits, strict=True) if not f} - self._unfiltered
        if missing:
            log.warning("the filter map of known sources is full (%d destination keys): "
                        "%d more closed destination(s) look every source up in the known "
                        "table, correct but slower under a spoofed flood "
                        "(docs/performance.rst, \"The known sources' filter\")",
                        self.filters.max_entries, len(missing))
        self._unfiltered.update(missing)
        if self._unfiltered:
            self._set_flag()
        return fits

    def _remove_filters(self, empty: Array) -> None:
        """Remove the filters of destinations with no known source left; the
        room freed goes to the first destinations that had none."""
        if not len(empty):
            return
        self.filters.delete_batch(empty)
        gone = key_bytes(empty)
        self._filtered.difference_update(gone)
        self._unfiltered.difference_update(gone)
        room = self.filters.max_entries - len(self._filtered)
        if self._unfiltered and room > 0:
            retry = sorted(self._unfiltered)[:room]
            self._write_filters(np.frombuffer(b"".join(retry), dtype=L.DST_KEY))
