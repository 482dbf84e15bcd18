"""The in-process store: ``memory://`` and ``memory://NAME``.

The embedded default: several proxies in one process (the lab, tests) share a
master by opening the same URL with the same mesh.  State lives in numpy
arrays behind one lock per (name, mesh), so a merge is atomic per record (per
batch, in fact) and costs a few vectorised passes, not a Python loop per
record -- except the key lookup, one dict access per record.  Reads are
incremental through a version counter: every merge stamps the records it
writes with the next version, and ``changes(cursor)`` returns the records
stamped after the cursor.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from xpro.config.kinds import check_memory_url, mask_url, split_url
from xpro.core.bounds import FUTURE, REASONS, Bounds
from xpro.core.keys import key_bytes
from xpro.core.layout import DST_KEY, FLOW_KEY, MASTER
from xpro.core.merge import merge_arrays
from xpro.core.model import SyncParams
from xpro.core.pull import (
    AGG_KEY,
    PARTIAL,
    PullRule,
    apply_partials,
    candidates_array,
    eligible_array,
    partial_deltas,
)
from xpro.core.status import ProxyStatus
from xpro.core.text import printable
from xpro.errors import ConfigError
from xpro.hooks.specs import hookimpl
from xpro.stores._common import (
    DEFAULT_MAX_FUTURE_S,
    KEY_SIZE,
    check_merge_input,
    check_mesh,
    default_bounds,
    key_hex,
    key_list,
    max_ts,
    merged_options,
    opt_num,
    unknown_options,
    valid_master,
)
from xpro.stores.base import REFUSED, Store

if TYPE_CHECKING:
    from xpro.hooks.registry import Registry

__all__ = ["MemoryCursor", "MemoryPullCursor", "MemoryStore", "xpro_add_stores"]

#: Merges whose touched partials the memory store remembers for readers
#: (a reader further behind reads every partial).
PARTIAL_LOG = 4096

log = logging.getLogger("xpro.stores.memory")


@dataclass(frozen=True)
class MemoryCursor:
    """A reader's position: the state's identity and the last (version, slot) it saw.

    ``more``: records changed before this read were left for the next one
    (the read's ``limit`` was reached).
    """

    state: str
    version: int
    slot: int = 1 << 62
    more: bool = False


@dataclass(frozen=True)
class MemoryPullCursor:
    """A pull reader's position: candidates as :class:`MemoryCursor`, and the
    version of the last partial change seen."""

    state: str
    version: int
    slot: int = 1 << 62
    more: bool = False
    partials: int = 0


@dataclass
class _State:
    """One mesh's master: records in slots of growable arrays."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    ident: str = field(default_factory=lambda: uuid.uuid4().hex)
    index: dict[bytes, int] = field(default_factory=dict)
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=FLOW_KEY))
    recs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=MASTER))
    ver: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    #: The version of the last merge that judged each record a candidate.
    cver: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    alive: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    free: list[int] = field(default_factory=list)
    used: int = 0
    version: int = 0
    heartbeats: dict[str, ProxyStatus] = field(default_factory=dict)
    leases: dict[str, tuple[str, float]] = field(default_factory=dict)  # holder, until
    clock: Callable[[], int] = time.time_ns  # the store's clock (tests set a fake one)
    #: Destination partials: AGG_KEY bytes -> PARTIAL row; the log of the
    #: versions that changed them; the known-client index (dst -> keys).
    partials: dict[bytes, np.void] = field(default_factory=dict)
    plog: list[tuple[int, list[bytes]]] = field(default_factory=list)
    plog_head: int = 0  # the version before the oldest entry kept
    clients: dict[bytes, set[bytes]] = field(default_factory=dict)
    rule: PullRule | None = None

    def judge(self, rule: PullRule, k: np.ndarray, before: np.ndarray, had: np.ndarray,
              after: np.ndarray, has: np.ndarray, slots: np.ndarray) -> None:
        """A merge's (or deletion's) candidates, partials and known-client index."""
        self.rule = rule
        cand = (had & candidates_array(k, before, rule)) | (has & candidates_array(k, after,
                                                                                  rule))
        self.cver[slots[cand]] = self.version
        ak, t1, t2, dc, dn = partial_deltas(k, before, had, after, has, rule)
        if len(ak):
            vk = key_bytes(ak)
            cur = np.zeros(len(vk), dtype=PARTIAL)
            for i, x in enumerate(vk):
                v = self.partials.get(x)
                if v is not None:
                    cur[i] = v
            new = apply_partials(cur, t1, t2, dc, dn)
            for x, v in zip(vk, new, strict=True):
                self.partials[x] = v
            self.plog.append((self.version, vk))
            if len(self.plog) > PARTIAL_LOG:
                self.plog_head = self.plog.pop(0)[0]
        elig = has & eligible_array(k, after, rule) & ~(had & eligible_array(k, before, rule))
        gone = had & ~has
        for sel, add in ((elig, True), (gone, False)):
            if not sel.any():
                continue
            dk = np.array(k["dst"][sel], dtype=DST_KEY)
            dk["pad"] = 0
            raw, w = dk.tobytes(), DST_KEY.itemsize
            for d, kb in zip([raw[i : i + w] for i in range(0, len(raw), w)],
                             key_list(k[sel]), strict=True):
                if add:
                    self.clients.setdefault(d, set()).add(kb)
                else:
                    members = self.clients.get(d)
                    if members is not None:
                        members.discard(kb)
                        if not members:
                            del self.clients[d]

    def grow(self, need: int) -> None:
        cap = len(self.recs)
        if need <= cap:
            return
        new = max(need, 2 * cap, 1024)
        for name in ("keys", "recs", "ver", "cver", "alive"):
            old = getattr(self, name)
            arr = np.zeros(new, dtype=old.dtype)
            arr[:cap] = old
            setattr(self, name, arr)

    def slots_for(self, keys: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Existing slots (or -1) for each key."""
        get = self.index.get
        slots = np.fromiter((get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        return slots, slots >= 0

    def allocate(self, keys: list[bytes], karr: np.ndarray) -> np.ndarray:
        n = len(keys)
        reuse = min(n, len(self.free))
        slots = np.empty(n, dtype=np.int64)
        if reuse:
            slots[:reuse] = [self.free.pop() for _ in range(reuse)]
        fresh = n - reuse
        if fresh:
            self.grow(self.used + fresh)
            slots[reuse:] = np.arange(self.used, self.used + fresh)
            self.used += fresh
        self.index.update(zip(keys, slots.tolist(), strict=True))
        self.keys[slots] = karr
        self.alive[slots] = True
        return slots


#: Every memory store state in this process, by (name, mesh), kept until
#: :meth:`MemoryStore.forget`.
_STATES: dict[tuple[str, str], _State] = {}
_STATES_LOCK = threading.Lock()


class MemoryStore(Store):
    """A master kept in this process; stores with the same URL and mesh share it."""

    schemes: ClassVar[tuple[str, ...]] = ("memory",)

    def __init__(self, name: str, mesh: str, max_future: float = DEFAULT_MAX_FUTURE_S) -> None:
        self.name = name
        self.mesh = check_mesh(mesh)
        self.max_future = max_future
        with _STATES_LOCK:
            self._state = _STATES.setdefault((name, mesh), _State())

    @classmethod
    def from_url(cls, url: str, *, mesh: str = "xpro", options: Mapping[str, Any] | None = None
                 ) -> MemoryStore:
        try:
            parts = split_url(url)
        except ValueError:
            parts = None
        if parts is None or parts.scheme != "memory":
            raise ConfigError(f"{printable(mask_url(url), 200)!r} is not a memory:// URL")
        try:
            check_memory_url(parts)
        except ValueError as exc:
            raise ConfigError(f"store URL {printable(mask_url(url), 200)!r}: {exc}") from None
        opts = merged_options(parts.query, options)
        unknown_options(opts, ("max_future",), "memory")
        return cls(parts.hosts or "default", mesh,
                   opt_num(opts, "max_future", DEFAULT_MAX_FUTURE_S, 1, 10**8))

    @classmethod
    def forget(cls, name: str, mesh: str = "xpro") -> None:
        """Drop a shared state (tests); stores still holding it keep their copy."""
        with _STATES_LOCK:
            _STATES.pop((name, mesh), None)

    def __repr__(self) -> str:
        return f"MemoryStore('memory://{self.name}', mesh={self.mesh!r})"

    candidates = True

    def merge(self, keys: np.ndarray, local: np.ndarray, params: SyncParams,
              bounds: Bounds | None = None, rule: PullRule | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        limit = max_ts(self.max_future)
        b = bounds or default_bounds(self.max_future)
        k, loc = check_merge_input(keys, local, params, limit)
        n = len(k)
        kl = key_list(k)
        st = self._state
        with st.lock:
            slots, existed = st.slots_for(kl)
            before = np.zeros(n, dtype=MASTER)
            refused = np.zeros(n, dtype=bool)
            if existed.any():
                before[existed] = st.recs[slots[existed]]
                why = b.check(before)
                # Dated in the future: left as it is (docs/sync.rst).
                refused = existed & (why == FUTURE)
                for kb in key_list(k[refused]):
                    self.reject(key_hex(kb), "merge refused: the record is dated in the future")
                existed &= ~refused
                bad = existed & (why != 0)
                if bad.any():
                    for i, (kb, w) in enumerate(zip(key_list(k[bad]), why[bad].tolist(),
                                                    strict=True)):
                        if i < 100:
                            log.warning("memory mesh %s: record %s was out of bounds (%s); "
                                        "replaced by this proxy's record", self.mesh,
                                        key_hex(kb), REASONS[w])
                        self.reject(key_hex(kb), f"merged into: {REASONS[w]}")
                    existed &= ~bad
                    before[bad] = 0
            _, new = merge_arrays(loc, np.ones(len(loc), dtype=bool), before, existed, params)
            missing = slots < 0
            if missing.any():
                idx = np.flatnonzero(missing)
                slots[idx] = st.allocate([kl[i] for i in idx], k[idx])
            st.version += 1
            st.recs[slots[~refused]] = new[~refused]
            st.ver[slots[~refused]] = st.version
            if rule is not None:
                st.judge(rule, k, before, existed, new, ~refused, slots)
        before[refused] = REFUSED
        return existed, before

    def changes(self, cursor: Any | None, limit: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, MemoryCursor]:
        """Records stamped after the cursor, in (version, slot) order; at most
        ``limit`` of them, the rest at the next call."""
        st = self._state
        if isinstance(cursor, MemoryCursor) and cursor.state == st.ident:
            since, after = cursor.version, cursor.slot
        else:
            since, after = 0, 1 << 62
        lim_ts = max_ts(self.max_future)
        with st.lock:
            sel, version, last, more = _stamped_after(st, st.ver, since, after, limit)
            keys = st.keys[sel].copy()
            recs = st.recs[sel].copy()
        ok = valid_master(recs, lim_ts)
        if not ok.all():
            for i, kb in enumerate(key_list(keys[~ok])):
                if i < 100:
                    log.warning("memory mesh %s: skipping record %s: out of bounds", self.mesh,
                                key_hex(kb))
                self.reject(key_hex(kb), "out of bounds")
            keys, recs = keys[ok], recs[ok]
        return keys, recs, MemoryCursor(st.ident, version, last, more)

    def pull(self, cursor: Any | None, limit: int | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, MemoryPullCursor]:
        """Candidates judged after the cursor (as :meth:`changes`), and the partials
        changed since (every partial if the cursor is older than the log)."""
        st = self._state
        if isinstance(cursor, MemoryPullCursor) and cursor.state == st.ident:
            since, after, pver = cursor.version, cursor.slot, cursor.partials
        else:
            since, after, pver = 0, 1 << 62, -1
        lim_ts = max_ts(self.max_future)
        with st.lock:
            sel, version, last, more = _stamped_after(st, st.cver, since, after, limit)
            keys = st.keys[sel].copy()
            recs = st.recs[sel].copy()
            if pver < st.plog_head:
                touched = list(st.partials)
            else:
                seen: set[bytes] = set()
                for v, lst in reversed(st.plog):
                    if v <= pver:
                        break
                    seen.update(lst)
                touched = list(seen)
            ak = np.frombuffer(b"".join(touched), dtype=AGG_KEY).copy()
            parts = np.array([st.partials[x] for x in touched], dtype=PARTIAL).reshape(-1)
            pnow = st.version
        ok = valid_master(recs, lim_ts)
        if not ok.all():
            for kb in key_list(keys[~ok])[:100]:
                self.reject(key_hex(kb), "out of bounds")
            keys, recs = keys[ok], recs[ok]
        return keys, recs, ak, parts, MemoryPullCursor(st.ident, version, last, more, pnow)

    def clients(self, dsts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dk = np.array(dsts, dtype=DST_KEY).reshape(-1)
        dk["pad"] = 0
        w = DST_KEY.itemsize
        raw = dk.tobytes()
        st = self._state
        with st.lock:
            found = [kb for i in range(0, len(raw), w) for kb in st.clients.get(raw[i : i + w], ())]
            slots, ok = st.slots_for(found)
            keys = st.keys[slots[ok]].copy()
            recs = st.recs[slots[ok]].copy()
        good = valid_master(recs, max_ts(self.max_future))
        return keys[good], recs[good]

    def heartbeat(self, proxy: str, workload: float, now: int, offset: int | None = None
                  ) -> None:
        if not math.isfinite(workload) or workload < 0:
            raise ValueError(f"workload {workload!r} must be a finite number >= 0")
        with self._state.lock:
            self._state.heartbeats[proxy] = ProxyStatus(float(workload), int(now), offset)

    def clock(self) -> int | None:
        """This process's clock (``time.time_ns``), or the fake one of :meth:`use_clock`."""
        return int(self._state.clock())

    def use_clock(self, clock: Callable[[], int]) -> None:
        """Give this store (every proxy on it) a clock of its own (tests)."""
        self._state.clock = clock

    def proxies(self) -> dict[str, ProxyStatus]:
        with self._state.lock:
            return dict(self._state.heartbeats)

    def expire(self, before: int, bounds: Bounds | None = None) -> int:
        st = self._state
        b = bounds or default_bounds(self.max_future)
        with st.lock:
            u = st.used
            live = st.alive[:u]
            recs = st.recs[:u]
            gone = live & ((recs["ts2"] < np.uint64(before)) | (b.check(recs) != 0))
            idx = np.flatnonzero(gone)
            if st.rule is not None:
                rule = st.rule
                st.version += 1
                n = len(idx)
                st.judge(rule, st.keys[idx], st.recs[idx], np.ones(n, bool),
                         np.zeros(n, dtype=MASTER), np.zeros(n, bool), idx)
                # slots over, and slots after the latest time in bounds (a forgery)
                first, last = rule.live_from(max(0, before)), b.limit // rule.slot_ns
                dead = [x for x in st.partials
                        if not first <= int(np.frombuffer(x, dtype=AGG_KEY)["slot"][0]) <= last]
                for x in dead:
                    del st.partials[x]
            for kb in key_list(st.keys[idx]):
                del st.index[kb]
            st.alive[idx] = False
            st.recs[idx] = 0
            st.free.extend(idx.tolist())
        return len(idx)

    def lease(self, name: str, holder: str, seconds: float) -> bool:
        now = time.monotonic()
        with self._state.lock:
            cur = self._state.leases.get(name)
            if cur is not None and cur[0] != holder and cur[1] > now:
                return False
            self._state.leases[name] = (holder, now + seconds)
            return True

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

    # For tests: write a raw record, as bad data would arrive in a real server.
    def poke(self, key: bytes, ts1: int, ts2: int, c: int) -> None:
        """Store a raw record (unchecked), as if written by a broken peer (tests)."""
        if len(key) != KEY_SIZE:
            raise ValueError("a flow key has 36 bytes")
        st = self._state
        karr = np.frombuffer(key, dtype=FLOW_KEY)
        with st.lock:
            slots, existed = st.slots_for([key])
            slot = int(slots[0]) if existed[0] else int(st.allocate([key], karr)[0])
            st.version += 1
            st.recs[slot] = (ts1, ts2, c)
            st.ver[slot] = st.version


@hookimpl
def xpro_add_stores(registry: Registry[Any]) -> None:
    registry.add("memory", MemoryStore)


def _stamped_after(st: Any, stamps: np.ndarray, since: int, after: int, limit: int | None
                   ) -> tuple[np.ndarray, int, int, bool]:
    """The live slots whose stamp (``st.ver`` for changes, ``st.cver`` for
    candidates) is after (``since``, ``after``) in (stamp, slot) order: at
    most ``limit`` of them; returns them, the cursor's new (version, slot) and
    whether more are left.  Called with ``st.lock`` held."""
    u = st.used
    ver = stamps[:u]
    slots = np.arange(u)
    sel = np.flatnonzero(st.alive[:u] & ((ver > np.uint64(since)) | (
        (ver == np.uint64(since)) & (slots > after))))
    if limit is None or len(sel) <= limit:
        return sel, st.version, 1 << 62, False
    sel = sel[np.lexsort((sel, ver[sel]))[:limit]]
    return sel, int(ver[sel[-1]]), int(sel[-1]), True
