"""One loaded xpro filter: the XDP program, its maps, its configuration.

This is what a data-path backend attaches and what the sync reads and writes.
Configuration goes through an mmap of the program's ``.data`` section (no
reload, no state lost).  Records are changed only through the control program
``xpro_apply`` (docs/semantics.rst, "Record ownership"): :meth:`XdpFilter.apply`
writes a batch into the mmap'ed ``apply_buf`` array and runs the program once per batch.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from xpro.bpf import BpfObject, Map, RingBuffer, object_path
from xpro.core import layout as L
from xpro.core.keys import cat_rows, index_of
from xpro.core.model import FilterParams, Prefix, source_mask
from xpro.core.params import Sizes
from xpro.core.state import (
    APPLIED,
    APPLY_MAX,
    OP_CREATE,
    OP_FLOW,
    OP_KEEP_BASE,
    OP_READ,
    apply_entries,
)
from xpro.datapath.known import KnownTable
from xpro.errors import ConfigError, DatapathError

Array = npt.NDArray[Any]

log = logging.getLogger(__name__)

#: The size of ``struct xpro_dst`` before the closed-drops record moved into
#: it (2026-12-07): pins in that layout are replaced (:meth:`XdpFilter._retire_pins`).
OLD_DST_SIZE = 40


#: What bpf_ktime_get_coarse_ns() reads (not exported by the time module).
CLOCK_MONOTONIC_COARSE = 6

def _bss_dtype(maps: Mapping[str, Map]) -> np.dtype[Any]:
    """The program's ``.bss``: ``dirty_lost``, then ``events_lost`` if the program
    counts the warnings it could not put in the ring buffer.

    Both must be members of one struct in C: the compiler places separate
    globals of a section in an order of its own (clang: the reverse of the
    source), so only a struct fixes the offsets."""
    fields = [("dirty_lost", "<u8")]
    if maps[".bss"].value_size >= 16:
        fields.append(("events_lost", "<u8"))
    return np.dtype(fields)


def lpm_key(p: Prefix) -> bytes:
    """The LPM-trie key of a prefix (``struct xpro_lpm_key``)."""
    return p.length.to_bytes(4, "little") + p.network.to_bytes(16, "big")


class _ArrayMmap:
    """An mmapable BPF array map seen as a numpy array of its value dtype."""

    def __init__(self, m: Map, dtype: np.dtype[Any]) -> None:
        if dtype.itemsize != m.value_size or dtype.itemsize % 8:
            raise DatapathError(f"map {m.name!r}: value is {m.value_size} bytes, dtype "
                                f"{dtype.itemsize}")
        size = m.max_entries * m.value_size
        self._mm = mmap.mmap(m.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.array: Array = np.ndarray((m.max_entries,), dtype=dtype, buffer=self._mm)

    def close(self) -> None:
        del self.array
        # If a caller still holds a view, the mapping goes with that view.
        with contextlib.suppress(BufferError):
            self._mm.close()


class XdpFilter:
    """The xpro XDP program loaded into the kernel, with typed access to its state.

    ``pin_dir`` pins the maps there and adopts them at the next load (a
    restarted daemon keeps every record).  ``program`` is ``xpro_xdp``, or
    ``xpro_xdp_frags`` for interfaces with an MTU above a page.
    """

    def __init__(self, params: FilterParams, *, sizes: Sizes | None = None,
                 pin_dir: str | Path | None = None, program: str = "xpro_xdp",
                 obj_path: Path | None = None) -> None:
        self.sizes = sizes or Sizes()
        if self.sizes.dsts & (self.sizes.dsts - 1):
            raise ConfigError(f"the destination table size must be a power of two, "
                              f"not {self.sizes.dsts}")
        progs = [program, "xpro_apply"]
        if program == "xpro_xdp":
            progs.append("xpro_xdp_frags")  # for interfaces whose MTU needs it (attach)
        self.obj = BpfObject(obj_path or object_path(), programs=progs,
                             max_entries=self.sizes.max_entries(), pin_dir=pin_dir,
                             types=L.MAP_TYPES)
        #: Pinned maps: an older program may still hold a link and read the
        #: shared configuration with maps of its own, so the filters' mask
        #: waits for :meth:`handed_over`; and an adopted flow table may hold
        #: closed-drops records an older build kept there.
        self._handover = pin_dir is not None
        self._adopted_flows = pin_dir is not None and (Path(pin_dir) / "flows").exists()
        if pin_dir is not None:
            self._retire_pins(Path(pin_dir))
        self.obj.load()
        try:
            self.program = self.obj.programs[program]
            #: The multi-buffer variant, over the same maps (jumbo MTUs, veth peers).
            self.program_frags = self.obj.programs["xpro_xdp_frags" if program == "xpro_xdp"
                                                   else program]
            self._apply_prog = self.obj.programs["xpro_apply"]
            self.cfg = self.obj.global_data(".data", L.CONFIG)
            self.flows = self.obj.maps["flows"]
            self._dirty = (self.obj.maps["dirty0"], self.obj.maps["dirty1"])
            self._bss = self.obj.global_data(".bss", _bss_dtype(self.obj.maps))
            self.dsts = self.obj.maps["dsts"]
            self.known = self.obj.maps["known"]
            self.known_slots = self.obj.maps["known_slots"]
            #: The one writer of the known table and its filters.
            self._known = KnownTable(self.known, self.known_slots, self.cfg,
                                     armed=not self._handover)
            self.stats = self.obj.maps["stats"]
            self._apply = _ArrayMmap(self.obj.maps["apply_buf"], L.APPLY)
            self.params = params
            self.configure(params)
            self.sync_clock()
        except BaseException:
            self.obj.close()
            raise

    def _retire_pins(self, pin_dir: Path) -> None:
        """Unpin the maps of an older build or size that hold nothing the
        daemon cannot rebuild, so that it adopts the rest instead of refusing
        to start (docs/operations.rst, "Pins, restarts and upgrades"):

        * ``known_dsts``, the per-destination filters of builds before the
          slots, and ``known_slots`` of another size: the filters are
          rewritten from the known table;
        * ``dsts`` in the layout before the closed-drops record moved into
          it: its aggregates are recomputed by the next round, and the
          closed-drops records are in the pinned flow table, from which
          :meth:`handed_over` moves them.

        The program still attached reads the old maps until the link holds
        this one; until then the filters' mask sends every closed
        destination's source to the known table (a wider mask would read
        the wrong slots of the old array)."""
        from xpro.bpf import Map

        for name in ("known_dsts", "known_slots", "dsts"):
            path = pin_dir / name
            if not path.exists():
                continue
            if name == "known_dsts":
                why = "no longer read"
            else:
                with Map.from_pin(path) as m:
                    if name == "known_slots":
                        if m.max_entries == self.sizes.known_filters:
                            continue
                        why = f"{m.max_entries} slots, now {self.sizes.known_filters}"
                    else:  # only the one older layout: a newer one is refused
                        if m.value_size != OLD_DST_SIZE:
                            continue
                        why = f"{OLD_DST_SIZE}-byte records, now {L.DST_REC.itemsize}"
            log.warning("unpinned %s of an older build or size (%s): rebuilt from the "
                        "pinned tables", path, why)
            path.unlink()

    def handed_over(self) -> None:
        """Every link holds this program (the backend calls it once attached):
        arm the filters' mask and move the closed-drops records an older
        build left in the flow table into their destinations' records."""
        if self._adopted_flows:  # read from the table itself: idempotent
            self._migrate_closed()
            self._adopted_flows = False
        if self._handover:
            self._known.arm()
            self._handover = False

    def _migrate_closed(self) -> None:
        keys, vals = self.flows.lookup_batch()
        keys = np.asarray(keys, dtype=L.FLOW_KEY)
        old = (keys["dst"]["pad"] & L.DST_PAD_CLOSED) != 0
        if not old.any():
            return
        keys, vals = keys[old], np.asarray(vals, dtype=L.FLOW)[old]
        ok = keys["src"] == bytes(16)
        k, v = keys[ok], vals[ok]
        # What the old record had not pushed yet stays unpushed (its
        # baseline, while its window is the one last pushed).
        base = np.where(v["gen"] == v["base_gen"], v["base_c"], 0).astype(np.uint64)
        there, cur = self.read(k)
        # None yet (the usual case): created whole.  One the new program
        # started meanwhile: the old one's unpushed drops added to it.
        res = np.full(len(k), APPLIED, dtype=np.int32)
        new = ~there
        if new.any():
            res[new] = self.apply(apply_entries(
                k[new], OP_FLOW | OP_CREATE, gen=0, c_delta=v["c"][new], ts1=v["ts1"][new],
                ts2=v["ts2"][new], base_c=base[new]))
        if there.any():
            res[there] = self.apply(apply_entries(
                k[there], OP_FLOW | OP_KEEP_BASE, gen=cur["gen"][there],
                c_delta=(v["c"][there] - base[there]).astype(np.int64), ts1=0,
                ts2=v["ts2"][there]))
        self.flows.delete_batch(keys)
        log.info("moved %d closed-drops records of an older build into their "
                 "destinations' records (%d could not be, a packet raced them)",
                 int((res == APPLIED).sum()), int((res != APPLIED).sum()))

    # --- configuration -------------------------------------------------------

    def configure(self, params: FilterParams, *, clock_offset: int | None = None) -> None:
        """Install thresholds, modes and prefix lists in the running program.

        Counters are written before the lists they describe are filled and
        after they are emptied, so the program never skips a non-empty list.
        """
        v = self.cfg.view
        self._set_prefixes("allow_src", "n_allow", dict.fromkeys(params.allow, 1))
        self._set_prefixes("deny_src", "n_deny", dict.fromkeys(params.deny, 1))
        self._set_prefixes("dst_policy", "n_dst_policy", dict(params.dst_policy))
        v["t_t1"], v["t_t2"], v["t_t3"] = params.t_t1, params.t_t2, params.t_t3
        v["t_f1"], v["t_f2"], v["t_f2_addr"] = params.t_f1, params.t_f2, params.t_f2_addr
        v["warn_period"] = params.warn_period
        v["mode"], v["dst_mode"] = params.mode, params.dst_mode
        v["malformed_policy"] = params.malformed_policy
        v["events"] = int(params.events)
        v["src_mask6"] = np.frombuffer(
            source_mask(True, params.source_prefix_v4, params.source_prefix_v6), dtype=">u4")
        v["src_mask4"] = int.from_bytes(
            source_mask(False, params.source_prefix_v4, params.source_prefix_v6)[12:], "big")
        if clock_offset is not None:
            v["clock_offset"] = clock_offset
        self.params = params

    def _set_prefixes(self, name: str, counter: str, entries: Mapping[Prefix, int]) -> None:
        m = self.obj.maps[name]
        want = {lpm_key(p): np.uint32(v).tobytes() for p, v in entries.items()}
        have = {bytes(k) for k in m}
        if want:
            self.cfg.view[counter] = max(len(want), len(have))
        for k, v in want.items():
            m[k] = v
        for k in have - want.keys():
            del m[k]
        self.cfg.view[counter] = len(want)

    def sync_clock(self) -> int:
        """Point the program's clock at TAI; returns the offset it set (ns).

        The program reads the coarse monotonic clock (cheap) and adds this
        offset (docs/semantics.rst, "Clock and time"); the daemon refreshes it every round.
        """
        offset = time.clock_gettime_ns(time.CLOCK_TAI) - time.clock_gettime_ns(
            CLOCK_MONOTONIC_COARSE)
        self.cfg.view["clock_offset"] = offset
        return offset

    def set_clock(self, fake_now: int) -> None:
        """Use a fake clock (tests); 0 goes back to the real one."""
        self.cfg.view["fake_now"] = fake_now

    def now(self) -> int:
        """The program's clock as it reads it: the fake clock if set, else the
        coarse monotonic clock plus the offset :meth:`sync_clock` set."""
        fake = int(self.cfg.view["fake_now"])
        if fake:
            return fake
        return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE) + int(self.cfg.view["clock_offset"])

    # --- reading -------------------------------------------------------------

    def read_flows(self) -> tuple[Array, Array]:
        """Every flow record: the flow table's, and the closed-drops records
        kept in the destinations' records (under their own keys)."""
        keys, vals = self.flows.lookup_batch()
        keys = np.asarray(keys, dtype=L.FLOW_KEY)
        # closed-drops records an older build left there: moved by
        # handed_over(), never read from there
        real = (keys["dst"]["pad"] & L.DST_PAD_CLOSED) == 0
        if not real.all():
            keys, vals = keys[real], np.asarray(vals)[real]
        dkeys, dvals = self._read_dst_recs()
        held = dvals["cd"]["ts2"] != 0
        ckeys = np.zeros(int(held.sum()), dtype=L.FLOW_KEY)
        ckeys["dst"] = dkeys[held]
        ckeys["dst"]["pad"] |= np.uint8(L.DST_PAD_CLOSED)
        return (cat_rows(np.asarray(keys, dtype=L.FLOW_KEY), ckeys),
                cat_rows(np.asarray(vals, dtype=L.FLOW), dvals["cd"][held]))

    def _read_dst_recs(self) -> tuple[Array, Array]:
        keys, vals = self.dsts.lookup_batch()
        return np.asarray(keys, dtype=L.DST_KEY), np.asarray(vals, dtype=L.DST_REC)

    @staticmethod
    def _aggregates(vals: Array) -> Array:
        """The aggregate part of ``struct xpro_dst`` records (DST_REC)."""
        out = np.empty(len(vals), dtype=L.DST)
        for n in L.DST.names or ():
            out[n] = vals[n]
        return out

    def read_dsts(self) -> tuple[Array, Array]:
        """Every destination aggregate (records that hold only a closed-drops
        record have none)."""
        keys, vals = self._read_dst_recs()
        there = vals["ts2"] != 0
        return keys[there], self._aggregates(vals[there])

    def read_dsts_of(self, keys: Array) -> tuple[Array, Array]:
        """The aggregates of ``keys`` (DST_KEY): ``(exists, records)``."""
        out = np.zeros(len(keys), dtype=L.DST)
        exists = np.zeros(len(keys), dtype=bool)
        if len(keys) > 64:  # many: one batch read of the (small) table
            all_keys, all_vals = self.read_dsts()
            idx = index_of(all_keys, np.asarray(keys, dtype=L.DST_KEY))
            exists = idx >= 0
            out[exists] = all_vals[idx[exists]]
            return exists, out
        for i, k in enumerate(np.asarray(keys, dtype=L.DST_KEY)):
            v = self.dsts.get(k.tobytes())
            if v is not None and int(v["ts2"]):
                exists[i] = True
                out[i] = self._aggregates(np.asarray(v, dtype=L.DST_REC).reshape(1))[0]
        return exists, out

    def read_known(self) -> tuple[Array, Array]:
        """The ``known`` map: flow keys (FLOW_KEY) and their class (``Known``, uint32)."""
        return self._known.read()

    def events(self, callback: Callable[[Any], object]) -> RingBuffer:
        """A ring-buffer reader handing each warning (an ``EVENT`` record) to ``callback``."""
        return self.obj.ring_buffer("events", callback, L.EVENT)

    def counters(self) -> Array:
        """Packets and bytes by reason, summed over CPUs: shape (N_REASONS, 2)."""
        out = np.zeros((L.N_REASONS, 2), dtype=np.uint64)
        for r in range(L.N_REASONS):
            per_cpu = np.asarray(self.stats[np.uint32(r)])
            out[r] = per_cpu["packets"].sum(), per_cpu["bytes"].sum()
        return out

    # --- writing (kernel context only) ---------------------------------------

    def apply(self, entries: Array, out: Array | None = None) -> Array:
        """Run ``entries`` (APPLY records) through ``xpro_apply``; returns their results.

        ``out``, if given, receives the entries as the program left them (READ).
        """
        results = np.empty(len(entries), dtype=np.int32)
        buf = self._apply.array
        for lo in range(0, len(entries), APPLY_MAX):
            chunk = entries[lo : lo + APPLY_MAX]
            n = len(chunk)
            buf[:n] = chunk
            ran = self._apply_prog.test_run(np.uint32(n).tobytes() + bytes(60),
                                            data_out=False).retval
            if ran != n:
                raise DatapathError(f"xpro_apply ran {ran} of {n} updates")
            results[lo : lo + n] = buf["result"][:n]
            if out is not None:
                out[lo : lo + n] = buf[:n]
        return results

    def read(self, keys: Array) -> tuple[Array, Array]:
        """The records of ``keys`` (READ through ``xpro_apply``, 8192 a run).

        Returns ``(exists, records)``: a bool array and FLOW records (zero
        where the key has no record).
        """
        res = np.zeros(len(keys), dtype=L.APPLY)
        out = np.zeros(len(keys), dtype=L.FLOW)
        if len(keys) == 0:
            return np.zeros(0, dtype=bool), out
        ent = apply_entries(keys, OP_READ)
        results = self.apply(ent, out=res)
        exists = results == APPLIED
        out["c"] = res["c_delta"]
        for f in ("ts1", "ts2", "base_c", "gen", "base_gen"):
            out[f] = res[f]
        out[~exists] = 0
        return exists, out

    # --- known clients (a userspace map: the packet path only reads it) ------

    def set_known(self, keys: Array, classes: Any) -> None:
        """Write (or overwrite) the class (``Known``) of these flow keys, in batches,
        with their destinations' filters (:class:`~xpro.datapath.known.KnownTable`).

        ``classes`` is one class for all keys or one per key.  A full map
        raises :class:`~xpro.errors.DatapathError` (a plain hash: nothing
        is evicted to make room).
        """
        self._known.set(keys, classes)

    def drop_known(self, keys: Array) -> int:
        """Remove these flow keys from the ``known`` map (absent ones are skipped);
        returns how many went."""
        return self._known.drop(keys)

    def clear_known(self) -> None:
        """Empty the ``known`` map and the destinations' filters (in that order)."""
        self._known.clear()

    # --- sync epochs: which flows changed since the last round ----------------

    @property
    def epoch(self) -> int:
        return int(self.cfg.view["epoch"])

    def next_epoch(self) -> int:
        """Move the program to the next epoch; returns the one that ended.

        From now on packets mark flows in the other dirty set, so the ended
        epoch's set only shrinks (:meth:`take_dirty`).
        """
        ended = self.epoch
        # 0 means no epoch; after 2**32 - 1 comes 2, not 1: both are odd, and
        # two epochs in a row must use the two dirty sets.
        nxt = ended + 1 if ended < 0xFFFFFFFF else 2
        self.cfg.view["epoch"] = nxt
        return ended

    def take_dirty(self, epoch: int) -> Array:
        """The keys marked dirty in ``epoch``, removed from its set (one pass)."""
        keys, _ = self._dirty[epoch & 1].take_batch()
        return np.asarray(keys, dtype=L.FLOW_KEY)

    def peek_dirty(self, epoch: int) -> Array:
        """The keys marked dirty in ``epoch`` so far, left in its set."""
        keys, _ = self._dirty[epoch & 1].lookup_batch()
        return np.asarray(keys, dtype=L.FLOW_KEY)

    def mark_dirty(self, keys: Array) -> None:
        """Mark ``keys`` dirty in the running epoch, as their next packet would,
        so the next sync round reads them (counts added with OP_KEEP_BASE)."""
        if len(keys):
            self._dirty[self.epoch & 1].update_batch(
                np.asarray(keys, dtype=L.FLOW_KEY), np.ones(len(keys), dtype=np.uint32))

    def dirty_lost(self) -> int:
        """Flows that could not be marked dirty since load (a full dirty set)."""
        return int(self._bss.view["dirty_lost"])

    def events_lost(self) -> int | None:
        """Warnings the program dropped since load (the ring buffer was full), or
        None if the program does not count them (a ``.bss`` of one counter)."""
        if "events_lost" not in (self._bss.dtype.names or ()):
            return None
        return int(self._bss.view["events_lost"])

    def close(self) -> None:
        self._apply.close()
        self.obj.close()

    def __enter__(self) -> XdpFilter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
