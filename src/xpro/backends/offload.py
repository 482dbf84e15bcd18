"""The ``offload`` data path: a reduced program on the NIC, the full one beside it.

A SmartNIC that offloads XDP (hardware mode, ``XDP_FLAGS_HW_MODE``) runs only
programs within its limits: hash and array maps, map lookups, atomic adds,
no clock, no ring buffer, no LPM trie, a bounded number of instructions
(``bpf/xpro_offload.bpf.c`` states the set and why).  The full algorithm does
not fit.  So the ``offload`` backend runs two programs on one device
(multi-attach):

* the full program (:class:`xpro.datapath.xdp.XdpFilter`) in driver mode, which
  counts every packet that reaches it, keeps the flow records the sync
  shares, and drops by Algorithm 2 as the ``native`` backend does;
* the reduced program ``xpro_offload`` in hardware mode, in front of it on
  the NIC, which drops the packets of a *drop set*: the destinations closed
  to unknown sources (with their known sources, which pass), the (source,
  destination) flows and the destinations the full algorithm would drop now.

A thread (:meth:`OffloadBackend.start`) recomputes the drop set from the full
program's records every ``refresh`` seconds (:func:`drop_set`) and brings the
NIC's maps to it (new keys added, gone keys deleted).  Packets the NIC drops
never reach the full program, so each drop entry counts what it dropped and
the daemon adds those packets to the records it judges: a flow's into its
record, a closed destination's into its closed-drops record and aggregate
(both through the control program, so the sync shares them), a destination
dropped whole into what the refresh judges (:class:`_Hidden`).  A source
keeps being dropped while it keeps flooding, a destination stays closed
while the flood lasts, and both are released when it slows down, as the
full algorithm would do.

Nothing here could be run on an offload NIC (none exists on the development
machine): ``options["offload_driver_mode"]`` loads the reduced program without
a device and attaches it in driver mode to an interface of its own
(``options["offload_interface"]``), in front of the full program's interface,
which is how the tests check its behaviour on veth.  docs/backends.rst says
what was and was not tested.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from xpro.backends import Attachment, Sample
from xpro.backends.xdp import XdpBackend
from xpro.bpf import BpfObject, Map, XdpLink, XdpMode, object_path
from xpro.bpf._ffi import ENOTSUPP, check, load
from xpro.bpf.xdp import (
    attach_xdp,
    in_netns,
    interface_driver,
    prog_name,
    resolve_interface,
    xdp_query,
)
from xpro.core import layout as L
from xpro.core.keys import index_of
from xpro.core.merge import rate_exceeds_array
from xpro.core.model import V4_SPACE, FilterParams, source_mask
from xpro.core.prefixset import PrefixSet
from xpro.core.state import APPLIED, OP_CREATE, OP_DST, OP_FLOW, OP_KEEP_BASE, apply_entries
from xpro.datapath.host import require_ethernet
from xpro.datapath.xdp import XdpFilter
from xpro.errors import (
    AttachError,
    BpfLoadError,
    ConfigError,
    DatapathError,
    ModeNotSupported,
)
from xpro.hooks.specs import hookimpl

log = logging.getLogger("xpro.backends.offload")

__all__ = [
    "OFFLOAD_OBJECT",
    "OFFLOAD_PROGRAM",
    "OFF_CFG",
    "OFF_HIT",
    "DropSet",
    "OffReason",
    "OffloadBackend",
    "ReducedProgram",
    "RefreshStats",
    "drop_set",
]

Array = npt.NDArray[Any]

#: The packaged object and its program (``bpf/xpro_offload.bpf.c``).
OFFLOAD_OBJECT = "xpro_offload"
OFFLOAD_PROGRAM = "xpro_offload"

#: ``struct xpro_off_cfg`` and ``struct xpro_off_hit`` of the reduced program.
OFF_CFG = np.dtype([("dst_mode", "<u4"), ("src_mask4", ">u4"), ("src_mask6", ">u4", (4,))])
OFF_HIT = np.dtype([("packets", "<u8"), ("bytes", "<u8")])
_STAT = np.dtype([("packets", "<u8"), ("bytes", "<u8")])  # struct xpro_stat

#: Default drop-set capacities (entries of drop_flows, of drop_dsts and of
#: closed_dsts each, and of known_pairs).
DROP_FLOWS_MAX = 1 << 16
DROP_DSTS_MAX = 1 << 12
DROP_KNOWN_MAX = 1 << 16

_NO_BATCH = frozenset({errno.EOPNOTSUPP, ENOTSUPP, errno.EINVAL})


class OffReason(enum.IntEnum):
    """The reduced program's verdict reasons: the index into ``off_stats``."""

    PASS = 0  # no drop entry: on to the full program
    NON_IP = 1
    MALFORMED = 2  # passed: the full program judges it
    FLOW = 3  # dropped: (source, destination) in the drop set
    DST = 4  # dropped: destination in the drop set
    CLOSED = 5  # dropped: destination closed, source not known


# --- the drop set ------------------------------------------------------------------


def _no_dsts() -> Array:
    return np.zeros(0, dtype=L.DST_KEY)


def _no_flows() -> Array:
    return np.zeros(0, dtype=L.FLOW_KEY)


@dataclass(frozen=True)
class DropSet:
    """What the NIC should drop: flow keys (``FLOW_KEY``), destination keys
    (``DST_KEY``) whose every packet is dropped, destination keys closed to
    unknown sources (``closed``) and the flow keys of their known sources
    (``known``), which pass the closed check."""

    flows: Array
    dsts: Array
    closed: Array = dataclasses.field(default_factory=_no_dsts)
    known: Array = dataclasses.field(default_factory=_no_flows)


def _enforced(dst_addrs: Array, params: FilterParams) -> Array:
    """Which destinations are in ``enforce`` mode (monitor mode passes everything)."""
    if not params.dst_policy:
        return np.full(len(dst_addrs), params.mode == L.MODE_ENFORCE, dtype=bool)
    modes = PrefixSet.build(dict(params.dst_policy)).lookup(dst_addrs, params.mode)
    out: Array = modes == L.MODE_ENFORCE
    return out


def _allowed(srcs: Array, params: FilterParams) -> Array:
    """Which flows' sources hold an address the allow list passes.

    A flow's source is a prefix (``filter.source_prefix_v4``/``_v6``) and
    the allow list matches full addresses: an allowed /128 inside a /64
    flow shares that flow's record, and the NIC, which matches the record's
    key, would drop it with the rest.  So a flow is allowed here when any
    allow prefix overlaps its source prefix (contains it, or lies in it)."""
    if not params.allow or not len(srcs):
        return np.zeros(len(srcs), dtype=bool)
    v4 = PrefixSet.build({V4_SPACE: 1}).contains(srcs)
    length = np.where(v4, 96 + params.source_prefix_v4, params.source_prefix_v6)
    # An IPv4 entry allows IPv4 packets only (an IPv6 packet from a mapped
    # address is never allowed): not an IPv6 flow's, though ::/64 holds the
    # mapped space.
    entries4 = PrefixSet.build({p: 1 for p in params.allow if p.is_v4})
    entries6 = PrefixSet.build({p: 1 for p in params.allow if not p.is_v4})
    out: Array = (v4 & entries4.overlaps(srcs, length)) | entries6.overlaps(srcs, length)
    return out


def _over(c: Array, ts1: Array, ts2: Array, now: int, t_t1: int, t_min: int,
          limit: int) -> Array:
    """The kernel's rate check for the next packet arriving at ``now``.

    That packet resets a record idle for longer than T_T1 (then nothing is
    over); else the record counts it (``c + 1``) and is over when its window
    ``now - ts1`` is longer than ``t_min`` and ``(c + 1) / window > limit``.
    """
    idle = now - ts2.astype(np.int64)
    window = now - ts1.astype(np.int64)
    live = (idle <= t_t1) & (window > t_min)
    out = np.zeros(len(c), dtype=bool)
    if live.any():
        out[live] = rate_exceeds_array(c[live].astype(np.int64) + 1, window[live], limit)
    return out


def _closed(c: Array, ts1: Array, ts2: Array, now: int, params: FilterParams,
            limit: int | None = None) -> Array:
    """The full program's closed check for the next packet arriving at ``now``,
    judged on the record before it: not idle past T_T1, the window longer than
    T_T3 and ``c* / window > T_F2`` (``limit``: an address aggregate's)."""
    idle = now - ts2.astype(np.int64)
    window = now - ts1.astype(np.int64)
    live = (idle <= params.t_t1) & (window > params.t_t3)
    out = np.zeros(len(c), dtype=bool)
    if live.any():
        out[live] = rate_exceeds_array(c[live].astype(np.int64), window[live],
                                       params.t_f2 if limit is None else limit)
    return out


def drop_set(flow_keys: Array, flows: Array, dst_keys: Array, dsts: Array,
             params: FilterParams, now: int, known_keys: Array | None = None,
             known_cls: Array | None = None) -> DropSet:
    """What the full program would drop at ``now``, as the NIC can match it.

    Exactly the rules of ``bpf/xpro.bpf.c`` (and :class:`xpro.core.model.Filter`)
    for the next packet of each flow or to each destination, given the
    records and the known table (``known_keys``, ``known_cls``):

    * ``closed``: the destinations closed to unknown sources (not idle past
      T_T1, over T_F2 after T_T3; docs/semantics.rst), with ``known`` the
      pairs of the known table to them, which pass the closed check;
    * ``flows``: the flows dropped by the per-source rule (over T_F1 after
      T_T2, not idle past T_T1, no allowed address in their source
      prefix: :func:`_allowed`), but for an unknown
      source of a closed destination, which the closed check drops first
      (counted into the destination's closed-drops record, not its own);
      closed-drops records are no source's and never in it.  The heavy
      sources of a closed destination are in it too: there every packet of
      theirs is dropped, through their own record;
    * ``dsts``: the destinations that drop every source: one open but over
      T_F2 with the next packet counted, or one closed whose known clients
      are over T_F2 together (``kc``).

    Only destinations in enforce mode.  Sources in the allow list pass before
    every rule; the NIC cannot match prefixes, so with a non-empty allow list
    ``dsts`` and ``closed`` stay empty (the full program still drops those
    packets).

    In ``addr+port`` mode the addresses' own aggregates (docs/semantics.rst,
    "Address aggregates") are not offloaded: the reduced program does not
    judge them, so the NIC drops nothing the full program would drop (or
    count) under an address's rule instead: ``dsts`` stays empty (a packet
    past the per-source check counts in its address too) and ``flows`` leaves
    out the flows whose address is closed to their source.  Those packets
    reach the full program, which drops them.
    """
    fk = np.asarray(flow_keys, dtype=L.FLOW_KEY)
    fv = np.asarray(flows)
    dk = np.asarray(dst_keys, dtype=L.DST_KEY)
    dv = np.asarray(dsts)
    kk = _no_flows() if known_keys is None else np.asarray(known_keys, dtype=L.FLOW_KEY)
    kc = (np.ones(len(kk), dtype=np.int64) if known_cls is None
          else np.asarray(known_cls).astype(np.int64))
    kk, kc = kk[kc != 0], kc[kc != 0]

    # destinations (an address aggregate is not the NIC's: see above)
    by_port = params.dst_mode == L.DST_ADDR_PORT
    address = (dk["pad"] & L.DST_PAD_ADDR) != 0
    a_closed = address & _closed(dv["c"], dv["ts1"], dv["ts2"], now, params, params.t_f2_addr)
    closed = ~address & _closed(dv["c"], dv["ts1"], dv["ts2"], now, params)
    every = ~closed & _over(dv["c"], dv["ts1"], dv["ts2"], now, params.t_t1, params.t_t3,
                            params.t_f2)
    if closed.any():  # closed to its known clients too once they are over (kc + 1)
        c = np.flatnonzero(closed)
        window = now - dv["ts1"][c].astype(np.int64)
        every[c] = rate_exceeds_array(dv["kc"][c].astype(np.int64) + 1, window, params.t_f2)
    shut = closed & ~every
    judged = np.flatnonzero(every | shut)
    if len(judged):
        enforced = np.zeros(len(dk), dtype=bool)
        enforced[judged] = _enforced(dk["addr"][judged], params)
        every &= enforced
        shut &= enforced
    if params.allow:
        every[:] = False
        shut[:] = False
    if by_port:
        every[:] = False

    # flows: over T_F1, not the closed check's
    real = (fk["dst"]["pad"] & L.DST_PAD_CLOSED) == 0
    over = real & _over(fv["c"], fv["ts1"], fv["ts2"], now, params.t_t1, params.t_t2,
                        params.t_f1)
    cand = np.flatnonzero(over)
    if len(cand) and closed.any():
        di = index_of(dk, np.ascontiguousarray(fk["dst"][cand]))
        to_closed = (di >= 0) & closed[np.maximum(di, 0)]
        if to_closed.any():
            unknown = index_of(kk, fk[cand]) < 0
            cand = cand[~(to_closed & unknown)]
    if len(cand) and a_closed.any():  # an address closed to the source: its rule first
        ak = np.array(fk[cand], dtype=L.FLOW_KEY)
        ak["dst"]["port"], ak["dst"]["proto"], ak["dst"]["pad"] = 0, 0, L.DST_PAD_ADDR
        ai = index_of(dk, np.ascontiguousarray(ak["dst"]))
        to_closed = (ai >= 0) & a_closed[np.maximum(ai, 0)]
        if to_closed.any():
            cand = cand[~(to_closed & (index_of(kk, ak) < 0))]
    if len(cand):
        keep = _enforced(fk["dst"]["addr"][cand], params) & ~_allowed(fk["src"][cand], params)
        cand = cand[keep]
    out_flows = fk[cand]
    out_known = _no_flows()
    if shut.any() and len(kk):
        di = index_of(dk[shut], np.ascontiguousarray(kk["dst"]))
        out_known = kk[di >= 0]
        heavy = out_known[kc[di >= 0] != L.Known.CLIENT]
        if len(heavy):  # never served while closed: dropped through their own record
            heavy = heavy[index_of(out_flows, heavy) < 0]
            out_flows = np.concatenate([out_flows, heavy], dtype=L.FLOW_KEY)
    return DropSet(flows=out_flows.copy(), dsts=dk[every].copy(), closed=dk[shut].copy(),
                   known=out_known.copy())


# --- the reduced program ---------------------------------------------------------


class ReducedProgram:
    """``xpro_offload`` loaded for one interface: its drop maps, counters and config.

    ``ifindex`` binds program and maps to that device at load (hardware
    mode); ``None`` loads it for the host (driver or generic mode, tests).
    Load inside the interface's network namespace (the kernel resolves
    ``ifindex`` there).
    """

    def __init__(self, *, ifindex: int | None, flows_max: int = DROP_FLOWS_MAX,
                 dsts_max: int = DROP_DSTS_MAX, known_max: int = DROP_KNOWN_MAX,
                 dst_mode: int = L.DST_ADDR, source_prefix_v4: int = 32,
                 source_prefix_v6: int = 128) -> None:
        self.ifindex = ifindex
        self.obj = BpfObject(
            object_path(OFFLOAD_OBJECT), programs=[OFFLOAD_PROGRAM],
            max_entries={"drop_flows": flows_max, "drop_dsts": dsts_max,
                         "closed_dsts": dsts_max, "known_pairs": known_max},
            types={"drop_flows": (L.FLOW_KEY, OFF_HIT), "drop_dsts": (L.DST_KEY, OFF_HIT),
                   "closed_dsts": (L.DST_KEY, OFF_HIT),
                   "known_pairs": (L.FLOW_KEY, np.dtype("<u4")),
                   "off_stats": (np.dtype("<u4"), _STAT), "off_cfg": (np.dtype("<u4"), OFF_CFG)})
        #: packets each drop entry had dropped at the last read, by key bytes
        self._seen: dict[str, dict[bytes, int]] = {"drop_flows": {}, "drop_dsts": {},
                                                   "closed_dsts": {}}
        try:
            if ifindex is not None:
                self._bind(ifindex)
            self.obj.load()
            self.program = self.obj.programs[OFFLOAD_PROGRAM]
            self.drop_flows = self.obj.maps["drop_flows"]
            self.drop_dsts = self.obj.maps["drop_dsts"]
            self.closed_dsts = self.obj.maps["closed_dsts"]
            self.known_pairs = self.obj.maps["known_pairs"]
            self.stats = self.obj.maps["off_stats"]
            self.cfg = self.obj.maps["off_cfg"]
            self.keying: tuple[int, int, int] | None = None
            self.configure(dst_mode, source_prefix_v4, source_prefix_v6)
        except BaseException:
            self.obj.close()
            raise

    def _bind(self, ifindex: int) -> None:
        """Offload program and maps to device ``ifindex`` (before load)."""
        lib = load()
        lib.bpf_program__set_ifindex(self.obj.programs[OFFLOAD_PROGRAM]._ptr, ifindex)
        set_map = getattr(lib, "bpf_map__set_ifindex", None)
        if set_map is None:
            log.warning("this xpro's libbpf binding lacks bpf_map__set_ifindex: the drop "
                        "maps are created on the host and an offload NIC will refuse them")
            return
        for name in ("drop_flows", "drop_dsts", "closed_dsts", "known_pairs", "off_stats",
                     "off_cfg"):
            check(set_map(self.obj.maps[name]._ptr, ifindex),
                  f"bind map {name!r} to interface index {ifindex}")

    @property
    def dst_mode(self) -> int:
        return -1 if self.keying is None else self.keying[0]

    def configure(self, dst_mode: int, source_prefix_v4: int = 32,
                  source_prefix_v6: int = 128) -> None:
        """Build keys as the full program does: the destination key mode and the
        flow key's source prefixes (docs/semantics.rst).  A change empties the
        drop set (its keys have the other layout)."""
        keying = (dst_mode, source_prefix_v4, source_prefix_v6)
        if keying == self.keying:
            return
        rec = np.zeros(1, dtype=OFF_CFG)
        rec["dst_mode"] = dst_mode
        rec["src_mask6"] = np.frombuffer(
            source_mask(True, source_prefix_v4, source_prefix_v6), dtype=">u4")
        rec["src_mask4"] = int.from_bytes(
            source_mask(False, source_prefix_v4, source_prefix_v6)[12:], "big")
        self.cfg[np.uint32(0)] = rec[0]
        if self.keying is not None:
            self._replace(self.drop_flows, _no_flows())
            self._replace(self.drop_dsts, _no_dsts())
            self._replace(self.closed_dsts, _no_dsts())
            self._replace(self.known_pairs, _no_flows())
        self.keying = keying

    def set_dst_mode(self, dst_mode: int) -> None:
        """:meth:`configure` with the destination key mode only (prefixes kept)."""
        _, v4, v6 = self.keying or (dst_mode, 32, 128)
        self.configure(dst_mode, v4, v6)

    def entries(self, m: Map) -> tuple[Array, Array]:
        """A map's keys and values (``OFF_HIT``; uint32 for ``known_pairs``)."""
        keys, vals = m.lookup_batch()
        return np.asarray(keys), np.asarray(
            vals, dtype=np.dtype("<u4") if m.name == "known_pairs" else OFF_HIT)

    def hits(self, name: str) -> dict[bytes, int]:
        """Packets dropped by each entry of ``name`` since the last call (key bytes -> n)."""
        keys, vals = self.entries(self.obj.maps[name])
        seen = self._seen[name]
        now = {k.tobytes(): int(v) for k, v in zip(keys, vals["packets"], strict=True)}
        out = {k: n - seen.get(k, 0) for k, n in now.items() if n > seen.get(k, 0)}
        self._seen[name] = now
        return out

    def set_drops(self, want: DropSet) -> tuple[int, int]:
        """Bring the drop maps to ``want``; returns (added, removed).

        A destination's known sources are in place before it is closed and
        leave after it is opened, so no refresh drops a known client."""
        k_new, k_gone = self._diff(self.known_pairs, want.known)
        self._add(self.known_pairs, k_new)
        a0, r0 = self._replace(self.closed_dsts, want.closed)
        self._delete(self.known_pairs, k_gone)
        a1, r1 = self._replace(self.drop_flows, want.flows)
        a2, r2 = self._replace(self.drop_dsts, want.dsts)
        return a0 + a1 + a2 + len(k_new), r0 + r1 + r2 + len(k_gone)

    def _diff(self, m: Map, want: Array) -> tuple[Array, Array]:
        """The keys of ``want`` not in ``m``, and those of ``m`` not in ``want``."""
        have, _ = self.entries(m)
        gone = have[index_of(want, have) < 0] if len(have) else have
        new = want[index_of(have, want) < 0] if len(want) else want
        return new, gone

    def _replace(self, m: Map, want: Array) -> tuple[int, int]:
        new, gone = self._diff(m, want)
        self._delete(m, gone)
        self._add(m, new)
        return len(new), len(gone)

    def _delete(self, m: Map, gone: Array) -> None:
        if len(gone):
            m.delete_batch(gone)
            seen = self._seen.get(m.name)
            if seen is not None:
                for k in gone:
                    seen.pop(k.tobytes(), None)

    def _add(self, m: Map, new: Array) -> None:
        if not len(new):
            return
        vals = (np.ones(len(new), dtype="<u4") if m.name == "known_pairs"
                else np.zeros(len(new), dtype=OFF_HIT))
        try:
            m.update_batch(new, vals)
        except DatapathError as exc:
            cause = exc.__cause__
            if not isinstance(cause, OSError) or cause.errno not in _NO_BATCH:
                raise
            # offloaded maps have no batch operations: one by one
            for k, v in zip(new, vals, strict=True):
                m[k] = v

    def counters(self) -> Array:
        """Packets and bytes by :class:`OffReason`: shape (len(OffReason), 2)."""
        out = np.zeros((len(OffReason), 2), dtype=np.uint64)
        for r in OffReason:
            v = self.stats[np.uint32(r)]
            out[r] = int(v["packets"]), int(v["bytes"])
        return out

    def close(self) -> None:
        self.obj.close()


@dataclass
class _Hidden:
    """Packets a drop entry dropped on the NIC, which the full program never saw."""

    extra: int = 0
    last: int = 0  # when the last of them was seen (the refresh's clock, ns)


@dataclass(frozen=True)
class RefreshStats:
    """One refresh of the drop set."""

    flows: int  # flows in the drop set
    dsts: int  # destinations in the drop set
    added: int  # entries added, over all interfaces
    removed: int
    truncated: int  # wanted but over the maps' capacity (left to the full program)
    seconds: float
    closed: int = 0  # destinations closed to unknown sources
    known: int = 0  # their known sources (pairs), which pass


@dataclass
class _Reduced:
    ifname: str
    netns: str | None
    prog: ReducedProgram
    link: XdpLink
    mode: XdpMode


# --- the backend -----------------------------------------------------------------


class OffloadBackend(XdpBackend):
    """The full program in driver mode, the reduced one in hardware mode on the same device.

    Options: ``refresh`` (seconds between drop-set refreshes, 0.1),
    ``drop_flows`` / ``drop_dsts`` (capacities of the NIC's drop maps; the
    map of closed destinations holds ``drop_dsts`` too), ``drop_known``
    (the known sources of the closed destinations the NIC holds),
    ``offload_driver_mode`` (tests: the reduced program in driver mode on
    ``offload_interface``, a str or a mapping from the full program's
    interface, in ``offload_netns``, default the backend's namespace).
    """

    name = "offload"
    summary = ("SmartNIC: a reduced program in hardware mode drops what the full "
               "program (driver mode, same device) finds over the limits")
    mode: ClassVar[XdpMode] = XdpMode.NATIVE  # the full program's mode

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.refresh_period = float(self.options.get("refresh", 0.1))
        if not self.refresh_period > 0:
            raise ConfigError(f"offload refresh must be > 0 seconds, not {self.refresh_period}")
        self.flows_max = int(self.options.get("drop_flows", DROP_FLOWS_MAX))
        self.dsts_max = int(self.options.get("drop_dsts", DROP_DSTS_MAX))
        self.known_max = int(self.options.get("drop_known", DROP_KNOWN_MAX))
        self.driver_mode = bool(self.options.get("offload_driver_mode", False))
        self.reduced: dict[str, _Reduced] = {}
        self.last_refresh: RefreshStats | None = None
        self._hidden_dsts: dict[bytes, _Hidden] = {}
        self._full_warned = False
        self._lock = threading.Lock()
        self._stop_evt = threading.Event()
        self._thread: threading.Thread | None = None

    # --- attach ----------------------------------------------------------------

    def _offload_target(self, ifname: str) -> tuple[str, str | None]:
        """Where the reduced program goes for ``ifname``: (interface, namespace)."""
        if not self.driver_mode:
            return ifname, self.netns
        target = self.options.get("offload_interface")
        if isinstance(target, Mapping):
            target = target.get(ifname)
        if not target:
            raise ConfigError(
                "offload_driver_mode needs offload_interface: the interface the reduced "
                f"program is attached to in driver mode, in front of {ifname!r} (a driver-"
                "mode program cannot share its device with the full program)")
        return str(target), self.options.get("offload_netns", self.netns)

    def _load_reduced(self, ifname: str, netns: str | None) -> ReducedProgram:
        params = self.load().params
        kw = {"flows_max": self.flows_max, "dsts_max": self.dsts_max,
              "known_max": self.known_max, "dst_mode": params.dst_mode,
              "source_prefix_v4": params.source_prefix_v4,
              "source_prefix_v6": params.source_prefix_v6}
        if self.driver_mode:
            return ReducedProgram(ifindex=None, **kw)
        with in_netns(netns):
            ifindex, _ = resolve_interface(ifname, netns)
            driver = interface_driver(ifname)
            try:
                return ReducedProgram(ifindex=ifindex, **kw)
            except DatapathError as exc:
                code = getattr(exc.__cause__, "errno", None)
                if isinstance(exc, BpfLoadError) or code not in (
                        errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP, errno.ENODEV):
                    raise  # e.g. an offload NIC's verifier refused it: its log says why
                try:
                    check(-code, f"load the offload program {OFFLOAD_PROGRAM!r} for {ifname}",
                          ifname=ifname, netns=netns, mode="offload", driver=driver)
                except ModeNotSupported as ms:
                    raise ModeNotSupported(
                        f"{ms}. Run `--backend native` on {ifname} instead (the same full "
                        "program in driver mode, without the NIC in front)") from exc
                raise  # pragma: no cover - check() raised

    def _attach_reduced(self, prog: ReducedProgram, ifname: str,
                        netns: str | None) -> tuple[XdpLink, XdpMode]:
        if self.driver_mode:
            return attach_xdp(prog.program, ifname, XdpMode.NATIVE, netns=netns), XdpMode.NATIVE
        q = xdp_query(ifname, netns)
        held = q["offload"]
        if held:
            name = prog_name(held)
            if name != OFFLOAD_PROGRAM:
                with in_netns(netns):
                    check(-errno.EBUSY,
                          f"attach XDP program {OFFLOAD_PROGRAM!r} to {ifname} in offload mode",
                          ifname=ifname, netns=netns, mode="offload",
                          holder=f"XDP program id {held} {name!r} (offload mode)")
            log.warning("%s: replacing the reduced program %d a previous daemon left on the "
                        "NIC", ifname, held)
        # The hardware slot is free or holds our own program; the driver slot holds the
        # full program, which attach_xdp's own holder check would count as busy.
        return attach_xdp(prog.program, ifname, XdpMode.OFFLOAD, netns=netns,
                          replace=True), XdpMode.OFFLOAD

    def attach(self, ifname: str) -> Attachment:
        if ifname in self.reduced:
            return self.attachments[ifname]
        off_if, off_ns = self._offload_target(ifname)
        with in_netns(self.netns):
            resolve_interface(ifname, self.netns)
        # Both programs parse an Ethernet header: refuse before loading anything.
        require_ethernet(ifname, self.netns)
        if (off_if, off_ns) != (ifname, self.netns):
            require_ethernet(off_if, off_ns)
        # Load the reduced program first: an interface that cannot offload fails here,
        # before the full program is attached.
        prog = self._load_reduced(off_if, off_ns)
        try:
            full = super().attach(ifname)
            try:
                link, mode = self._attach_reduced(prog, off_if, off_ns)
            except BaseException:
                self._detach_full(ifname)
                raise
        except BaseException:
            prog.close()
            raise
        self.reduced[ifname] = _Reduced(off_if, off_ns, prog, link, mode)
        where = "on the NIC" if mode is XdpMode.OFFLOAD else f"in driver mode on {off_if}"
        att = Attachment(ifname, "offload", link.prog_id, full.adopted,
                         f"reduced program {where}; the full program (id {full.prog_id}) in "
                         f"{full.mode} mode on {ifname}"
                         + (f" ({full.why})" if full.adopted else ""))
        self.attachments[ifname] = att
        log.info("offload on %s: %s", ifname, att.why)
        return att

    def _detach_full(self, ifname: str) -> None:
        link = self._links.pop(ifname, None)
        self.attachments.pop(ifname, None)
        if link is not None:
            with contextlib.suppress(AttachError):
                link.detach()
            link.unpin()
            link.close()

    # --- the drop set ---------------------------------------------------------------

    @staticmethod
    def _gather_hidden(hidden: dict[bytes, _Hidden], hits: dict[bytes, int], now: int) -> None:
        for k, n in hits.items():
            h = hidden.setdefault(k, _Hidden())
            h.extra += n
            h.last = now

    @staticmethod
    def _count_in(filt: XdpFilter, hits: dict[bytes, int], now: int) -> None:
        """Count the packets the NIC dropped per flow into the full program's records.

        They are part of the flow's rate, and the records are what the sync
        shares: left out, a bot dropped in front at every proxy stops growing
        in the mesh's count, falls under T_F1 and is released.  Added as a
        delta (``base_c`` kept, so the next round sends them as ``dc``) and
        marked dirty in the running epoch.
        """
        if not hits:
            return
        keys = np.frombuffer(b"".join(hits), dtype=L.FLOW_KEY)
        n = np.fromiter(hits.values(), dtype=np.int64, count=len(hits))
        exists, recs = filt.read(keys)
        if not exists.any():
            return  # expired meanwhile: the next packet starts a new record
        keys, n, recs = keys[exists], n[exists], recs[exists]
        # OP_KEEP_BASE: the sync's baseline is left as it is, whatever round
        # ran since the read, so the packets go out as this proxy's dc.
        filt.apply(apply_entries(keys, OP_FLOW | OP_KEEP_BASE, gen=recs["gen"], c_delta=n,
                                 ts1=0, ts2=now))
        filt.mark_dirty(keys)

    @staticmethod
    def _count_closed(filt: XdpFilter, hits: dict[bytes, int], now: int) -> None:
        """Count the packets the NIC dropped to a closed destination as the full
        program counts a closed drop: into the destination's closed-drops record
        (created if it has none) and its aggregate (``c*``, ``ts2*``).

        The record is what the sync shares, so the mesh keeps the destination
        closed while the flood lasts although no proxy's full program sees
        it; added as :meth:`_count_in` adds a flow's (``base_c`` kept: this
        proxy's ``dc`` at the next round) and marked dirty.  The aggregate gets
        them at once, or it would look open here until the next round.
        """
        if not hits:
            return
        dkeys = np.frombuffer(b"".join(hits), dtype=L.DST_KEY)
        n = np.fromiter(hits.values(), dtype=np.int64, count=len(hits))
        agg = np.zeros(len(dkeys), dtype=L.FLOW_KEY)  # DST operations read key.dst only
        agg["dst"] = dkeys
        keys = agg.copy()  # the closed-drops records
        keys["dst"]["pad"] = L.DST_PAD_CLOSED
        exists, recs = filt.read(keys)
        have = np.flatnonzero(exists)
        new = np.flatnonzero(~exists)
        ent = np.concatenate([
            apply_entries(keys[have], OP_FLOW | OP_KEEP_BASE, gen=recs["gen"][have],
                          c_delta=n[have], ts1=0, ts2=now),
            apply_entries(keys[new], OP_FLOW | OP_CREATE, c_delta=n[new], ts1=now, ts2=now),
            apply_entries(agg, OP_DST, c_delta=n, ts1=0, ts2=now),
        ], dtype=L.APPLY)  # (a plain concatenate would make the port little-endian)
        res = filt.apply(ent)
        counted = keys[res[: len(keys)][np.argsort(np.concatenate([have, new]))] == APPLIED]
        if len(counted):
            filt.mark_dirty(counted)

    @staticmethod
    def _add_hidden(keys: Array, vals: Array, hidden: dict[bytes, _Hidden]) -> Array:
        """The records with the packets dropped on the NIC counted in (a copy)."""
        if not hidden or not len(keys):
            return vals
        hk = np.frombuffer(b"".join(hidden), dtype=keys.dtype)
        idx = index_of(keys, hk)
        vals = vals.copy()
        for i, h in zip(idx, hidden.values(), strict=True):
            if i >= 0:
                vals["c"][i] += h.extra
                vals["ts2"][i] = max(int(vals["ts2"][i]), h.last)
        return vals

    def refresh(self, now: int | None = None) -> RefreshStats:
        """Recompute the drop set from the full program and install it on every interface."""
        with self._lock:
            return self._refresh(now)

    def _refresh(self, now: int | None) -> RefreshStats:
        t0 = time.perf_counter()
        filt = self.load()
        params = filt.params
        when = filt.now() if now is None else now
        for r in self.reduced.values():
            r.prog.configure(params.dst_mode, params.source_prefix_v4, params.source_prefix_v6)
            self._count_in(filt, r.prog.hits("drop_flows"), when)
            self._count_closed(filt, r.prog.hits("closed_dsts"), when)
            self._gather_hidden(self._hidden_dsts, r.prog.hits("drop_dsts"), when)
        fkeys, fvals = filt.read_flows()
        dkeys, dvals = filt.read_dsts()
        dvals = self._add_hidden(dkeys, dvals, self._hidden_dsts)
        known_keys = known_cls = None
        if _closed(dvals["c"], dvals["ts1"], dvals["ts2"], when, params).any():
            known_keys, known_cls = filt.read_known()  # only needed then: it can be large
        want = drop_set(fkeys, fvals, dkeys, dvals, params, when, known_keys, known_cls)
        truncated = 0
        flows, dsts = want.flows, want.dsts
        closed, known = self._fit_closed(want, dkeys, dvals, when)
        if (len(flows) > self.flows_max or len(dsts) > self.dsts_max
                or len(closed) < len(want.closed)):
            truncated = (max(len(flows) - self.flows_max, 0) + max(len(dsts) - self.dsts_max, 0)
                         + len(want.closed) - len(closed))
            flows = self._top(flows, fkeys, fvals, self.flows_max, when)
            dsts = self._top(dsts, dkeys, dvals, self.dsts_max, when)
            if not self._full_warned:
                log.warning(
                    "the offload drop set is full: %d flows, %d destinations and %d closed "
                    "ones (%d known sources) are over the limits, the NIC holds %d, %d, %d "
                    "(%d) (options drop_flows, drop_dsts, drop_known); the fastest are "
                    "dropped on the NIC, the rest by the full program",
                    len(want.flows), len(want.dsts), len(want.closed), len(want.known),
                    self.flows_max, self.dsts_max, self.dsts_max, self.known_max)
                self._full_warned = True
        elif self._full_warned:
            log.info("the offload drop set fits the NIC's maps again")
            self._full_warned = False
        final = DropSet(flows, dsts, closed, known)
        added = removed = 0
        for r in self.reduced.values():
            a, d = r.prog.set_drops(final)
            added += a
            removed += d
        self._forget(self._hidden_dsts, dsts)
        stats = RefreshStats(len(flows), len(dsts), added, removed, truncated,
                             time.perf_counter() - t0, len(closed), len(known))
        self.last_refresh = stats
        return stats

    @staticmethod
    def _top(want: Array, keys: Array, vals: Array, n: int, now: int) -> Array:
        """The ``n`` keys of ``want`` with the highest rates."""
        if len(want) <= n:
            return want
        return OffloadBackend._ranked(want, keys, vals, now)[:n]

    @staticmethod
    def _ranked(want: Array, keys: Array, vals: Array, now: int) -> Array:
        """The keys of ``want``, highest rate first (a key without a record, a
        heavy source not seen yet, comes last)."""
        idx = index_of(keys, want)
        v = vals[np.maximum(idx, 0)]
        window = np.maximum(now - v["ts1"].astype(np.int64), 1)
        rate = np.where(idx >= 0, v["c"].astype(np.float64) / window, -1.0)
        return want[np.argsort(-rate, kind="stable")]

    def _fit_closed(self, want: DropSet, keys: Array, vals: Array, now: int
                    ) -> tuple[Array, Array]:
        """The closed destinations and known pairs the NIC's maps hold: the
        fastest destinations first, each with all of its known sources or not
        at all (one left out is judged by the full program alone; one whose
        known clients did not fit would drop them)."""
        closed, known = want.closed, want.known
        if len(closed) <= self.dsts_max and len(known) <= self.known_max:
            return closed, known
        ranked = self._ranked(closed, keys, vals, now)
        per = np.zeros(len(ranked), dtype=np.int64)
        if len(known):
            di = index_of(ranked, np.ascontiguousarray(known["dst"]))
            per = np.bincount(di[di >= 0], minlength=len(ranked))
        fits = (np.cumsum(per) <= self.known_max) & (np.arange(len(ranked)) < self.dsts_max)
        fits &= np.cumprod(fits).astype(bool)  # in rank order, up to the first that does not
        kept = ranked[fits]
        if not len(known):
            return kept, known
        return kept, known[index_of(kept, np.ascontiguousarray(known["dst"])) >= 0]

    @staticmethod
    def _forget(hidden: dict[bytes, _Hidden], kept: Array) -> None:
        """Hidden counts of keys no longer in the drop set go: the full program sees them again."""
        if hidden:
            keep = {k.tobytes() for k in kept}
            for k in [k for k in hidden if k not in keep]:
                del hidden[k]

    def counters(self) -> dict[str, Array]:
        """The reduced programs' verdict counters, by interface (see :class:`OffReason`)."""
        return {ifname: r.prog.counters() for ifname, r in self.reduced.items()}

    def metrics(self) -> list[Sample]:
        """The reduced programs' verdicts, per interface and reason."""
        out = []
        for ifname, arr in self.counters().items():
            for r in OffReason:
                out.append(Sample("offload_packets", "Packets by the offloaded program's verdict",
                                  {"interface": ifname, "reason": r.name.lower()},
                                  float(arr[r][0])))
        return out

    # --- life cycle -------------------------------------------------------------

    def _wait(self) -> float:
        """The pause before the next refresh: ``refresh``, or longer when a refresh
        is slow (it reads the whole flow table), so it takes at most ~10% of a core."""
        last = self.last_refresh
        return max(self.refresh_period, 9 * last.seconds) if last else self.refresh_period

    def _run(self) -> None:
        while not self._stop_evt.wait(self._wait()):
            try:
                self.refresh()
            except Exception:  # keep refreshing: the full program still filters
                log.exception("refreshing the offload drop set failed")

    def start(self) -> None:
        super().start()
        if self._thread is not None:
            return
        self.refresh()
        self._stop_evt.clear()
        self._thread = threading.Thread(target=self._run, name="xpro-offload-refresh",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop_evt.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self, *, keep: bool = False) -> None:
        """Detach the reduced programs (always: nobody would keep their drop set
        current), then the full program as :class:`XdpBackend` does."""
        self.stop()
        for ifname, r in list(self.reduced.items()):
            try:
                r.link.detach()
            except AttachError as exc:  # the interface may be gone already
                log.warning("detaching the reduced program from %s: %s", r.ifname, exc)
            finally:
                r.link.close()
                r.prog.close()
            del self.reduced[ifname]
        self._hidden_dsts.clear()
        super().close(keep=keep)


@hookimpl
def xpro_add_backends(registry: Any) -> None:
    registry.add(OffloadBackend.name, OffloadBackend)
