"""Algorithm 2 in userspace, over batches of frames: the ``afxdp`` data path's filter.

:class:`UserFilter` keeps the same records as the kernel program (the
``FLOW`` and ``DST`` dtypes of :mod:`xpro.core.layout`) and offers the interface
:class:`xpro.sync.Syncer` uses on :class:`xpro.datapath.xdp.XdpFilter`
(``configure``, ``read_flows``, ``read``, ``apply`` with the ``xpro_apply``
operations, ``next_epoch``, ``take_dirty``, ...), so the sync runs unchanged
over it.  It agrees with :class:`xpro.core.model.Filter` packet by packet,
including the order of packets inside a batch (tests/unit/test_afxdp_filter.py).

How a batch is vectorised (:meth:`UserFilter.process`):

1. :func:`xpro.datapath.afxdp.parse.parse_batch` parses every frame; allow and deny
   prefixes are checked as vectorised masks.
2. Packets are grouped by flow key (a stable sort keeps arrival order inside
   each group).  A flow's window resets when the gap to its previous packet
   exceeds T_T1; the previous packet's time is known for every packet (it is
   the previous packet of the group, or the stored ``ts2``), so every reset
   is found at once.  Between resets the count is a group-wise cumulative
   count, so ``c'``, ``ts1'`` and ``gen`` of every packet come from cumulative
   sums, and the per-source check is one vectorised comparison.
3. The packets admitted past it are grouped by destination key the same way:
   gaps over T_T1 restart the aggregate, ``c*`` is a cumulative count, and
   ``ts1*`` is the minimum of its start and the start of the first flow that
   started inside the window (flows that start take the current time, which
   never decreases inside a batch).
4. Warnings (at most one per record per ``warn_period``) are the only
   sequential rule: they are chosen by a short loop over the records that
   warn in this batch, and nothing else.

Time: the batch's packets carry non-decreasing timestamps (the data path
stamps a whole batch with one reading of CLOCK_TAI, or the fake clock).

All state is guarded by one lock.  A packet batch holds it throughout; a sync
round's ``read``/``apply`` take it per :data:`APPLY_CHUNK` records, so a round
of a million records does not stop the data path for its whole length.  Each
record's update stays atomic with respect to batches, which is what the
kernel's atomic adds guarantee (and all that ``xpro_apply`` guarantees there).
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from xpro.core import layout as L
from xpro.core.merge import rate_exceeds_array
from xpro.core.model import NS_PER_S, FilterParams, window_over
from xpro.core.params import Sizes
from xpro.core.prefixset import PrefixSet
from xpro.core.state import (
    APPLIED,
    GEN_MISMATCH,
    NO_RECORD,
    OP_CREATE,
    OP_DELETE,
    OP_DST,
    OP_FLOW,
    OP_KEEP_BASE,
    OP_READ,
)
from xpro.datapath.afxdp.parse import (
    MALFORMED,
    NON_IP,
    OK,
    Batch,
    mapped_sources,
    mask_sources,
    pack_frames,
    parse_batch,
)
from xpro.datapath.afxdp.table import Table
from xpro.datapath.xdp import CLOCK_MONOTONIC_COARSE
from xpro.errors import DatapathError

__all__ = ["APPLY_CHUNK", "DestinationParser", "EventQueue", "UserFilter",
           "parsed_destination_addr"]

Array = npt.NDArray[Any]

#: A destination parser: UDP payload -> destination ("host" or "host:port") or None.
DestinationParser = Callable[[bytes], Any]

_I64_MAX = np.iinfo(np.int64).max
#: Entries :meth:`UserFilter.apply` (and keys :meth:`UserFilter.read`) handles per
#: taking of the lock: about a millisecond of the data path's time.
APPLY_CHUNK = 4096
#: Destination texts whose address :class:`UserFilter` remembers.
_DEST_CACHE = 4096
_U32 = 0xFFFFFFFF


def parsed_destination_addr(dest: str) -> bytes:
    """The 16-byte destination address a parsed destination is keyed on.

    ``fd`` (an IPv6 unique-local prefix, never a real proxy address here)
    followed by the first 15 bytes of BLAKE2b of the lower-cased destination
    text: the same destination always gets the same key, on every proxy, so
    its records sync like any other.
    """
    h = hashlib.blake2b(dest.strip().lower().encode(), digest_size=15,
                        person=b"xpro-destination")
    return b"\xfd" + h.digest()


class _ConfigView:
    """``XdpFilter.cfg`` for readers: ``view`` is the configuration as the kernel
    program's ``struct xpro_config`` (a copy; change it with ``configure``)."""

    def __init__(self, owner: UserFilter) -> None:
        self._owner = owner

    @property
    def view(self) -> Array:
        f = self._owner
        p = f.params
        v = np.zeros((), dtype=L.CONFIG)
        v["t_t1"], v["t_t2"], v["t_t3"] = p.t_t1, p.t_t2, p.t_t3
        v["warn_period"], v["fake_now"] = p.warn_period, f._fake_now
        v["t_f1"], v["t_f2"], v["mode"], v["dst_mode"] = p.t_f1, p.t_f2, p.mode, p.dst_mode
        v["malformed_policy"], v["events"], v["epoch"] = p.malformed_policy, p.events, f.epoch
        v["n_allow"], v["n_deny"] = len(p.allow), len(p.deny)
        v["n_dst_policy"] = len(p.dst_policy)
        return v


class EventQueue:
    """Overload warnings of a :class:`UserFilter`, handed to ``callback`` by :meth:`poll`.

    The userspace counterpart of the kernel's ring buffer (and, like it,
    bounded: when the daemon falls behind, new warnings are dropped, never
    the filter's state).
    """

    def __init__(self, owner: UserFilter, callback: Callable[[Any], object],
                 capacity: int = 4096) -> None:
        self._owner = owner
        self._callback = callback
        self._items: collections.deque[Any] = collections.deque()
        self._capacity = capacity
        self._cond = threading.Condition()
        self.dropped = 0

    def _push(self, events: Array) -> None:
        with self._cond:
            room = max(0, self._capacity - len(self._items))
            for ev in events[:room]:
                self._items.append(ev.copy())
            lost = len(events) - min(room, len(events))
            self.dropped += lost
            self._owner._events_lost += lost
            self._cond.notify_all()

    def consume(self) -> int:
        with self._cond:
            items = list(self._items)
            self._items.clear()
        for ev in items:
            self._callback(ev)
        return len(items)

    def poll(self, timeout_ms: int = 0) -> int:
        """Wait up to ``timeout_ms`` for warnings, hand them over; returns how many."""
        with self._cond:
            if not self._items and timeout_ms:
                self._cond.wait(timeout_ms / 1000)
        return self.consume()

    def close(self) -> None:
        self._owner._queues.discard(self)


class UserFilter:
    """The state of one proxy's filter in userspace, and Algorithm 2 over batches.

    ``parsers`` are destination parsers (``xpro_add_destination_parsers``):
    a UDP packet whose payload one of them recognises is keyed on the
    destination it names (:func:`parsed_destination_addr`) instead of its
    IP destination.  A parser may carry a ``udp_ports`` attribute (a set of
    destination ports) so that only those packets are handed to it.

    ``names`` lists, per parser, the destinations that get keys of their
    own (the operator's list, e.g. ``afxdp.coap_names``): a packet naming
    any other destination keys on its IP destination, so a flood that
    invents a name per packet is one destination, not thousands.  A parser
    with a ``canonical`` attribute (a function putting a name in the form
    the parser returns, or None if it is not a name) must be given its list,
    which is put through it; a parser without one keys every destination it
    names unless it is given a list (see :meth:`set_names`).
    """

    def __init__(self, params: FilterParams, *, sizes: Sizes | None = None,
                 parsers: Sequence[DestinationParser] = (),
                 names: Mapping[DestinationParser, Iterable[str]] | None = None) -> None:
        self.sizes = sizes or Sizes()
        self.flows = Table(L.FLOW_KEY, L.FLOW, self.sizes.flows)
        self.dsts = Table(L.DST_KEY, L.DST, self.sizes.dsts)
        #: (source, destination key) -> class (``Known``): the daemon writes it, the
        #: packets read it while their destination is closed.  A plain table, not
        #: LRU: at most ``sizes.known`` entries, nothing is evicted to make room.
        self.known = Table(L.FLOW_KEY, np.dtype("<u4"), self.sizes.known)
        self.stats = np.zeros((L.N_REASONS, 2), dtype=np.uint64)
        self.lock = threading.RLock()
        self._queues: set[EventQueue] = set()
        self._events_lost = 0
        self.parsers = list(parsers)
        self._dest_addrs: dict[str, bytes] = {}
        self._names: list[dict[str, bytes] | None] = []
        self.set_names(names or {})
        self._fake_now = 0
        self._epoch = 0
        self.cfg = _ConfigView(self)
        self.params = params
        self.configure(params)

    # --- configuration ---------------------------------------------------------

    def configure(self, params: FilterParams, *, clock_offset: int | None = None) -> None:
        """Install thresholds, modes and prefix lists (no state is lost)."""
        with self.lock:
            self.params = params
            self._allow = PrefixSet.build(dict.fromkeys(params.allow, 1))
            self._deny = PrefixSet.build(dict.fromkeys(params.deny, 1))
            self._policy = PrefixSet.build(dict(params.dst_policy))
        del clock_offset  # the userspace clock reads CLOCK_TAI directly

    def set_names(self, names: Mapping[DestinationParser, Iterable[str]]) -> None:
        """Install the destinations each parser may key on (live: no state is lost).

        ``names[parser]`` is that parser's list; a parser absent from
        ``names`` keys every destination it names, unless it has a
        ``canonical`` attribute, which makes the list required.  Raises
        ValueError (and changes nothing) for a missing list or a name the
        parser's ``canonical`` refuses.
        """
        table: list[dict[str, bytes] | None] = []
        for parser in self.parsers:
            canonical = getattr(parser, "canonical", None)
            what = getattr(parser, "__name__", repr(parser))
            listed = names.get(parser)
            if listed is None:
                if canonical is not None:
                    raise ValueError(
                        f"the destination parser {what} keys only the destinations it is "
                        "given (names=): without a list every packet keeps its IP destination")
                table.append(None)
                continue
            keyed: dict[str, bytes] = {}
            for name in listed:
                canon = canonical(name) if canonical is not None else name
                if not canon:
                    raise ValueError(f"{name!r} is not a destination {what} can name")
                keyed[str(canon)] = parsed_destination_addr(str(canon))
            table.append(keyed)
        with self.lock:
            self._names = table

    def sync_clock(self) -> int:
        """The TAI offset of the coarse monotonic clock (the userspace path reads TAI itself)."""
        return time.clock_gettime_ns(time.CLOCK_TAI) - time.clock_gettime_ns(
            CLOCK_MONOTONIC_COARSE)

    def set_clock(self, fake_now: int) -> None:
        """Use a fake clock (tests); 0 goes back to the real one."""
        self._fake_now = fake_now

    def now(self) -> int:
        return self._fake_now or time.clock_gettime_ns(time.CLOCK_TAI)

    # --- the data path ---------------------------------------------------------

    def process_frames(self, frames: Sequence[bytes], now: int | Array | None = None
                       ) -> tuple[Array, Array]:
        """:meth:`process` over a list of frames."""
        buf, base, lens = pack_frames(list(frames))
        return self.process(buf, base, lens, now)

    def process(self, buf: Array, base: Array, lens: Array, now: int | Array | None = None,
                *, frame_size: int = 0) -> tuple[Array, Array]:
        """Algorithm 2 for a batch of frames (``buf[base[i] : base[i] + lens[i]]``).

        ``now`` is one time for the batch or one per frame (non-decreasing);
        by default the filter's clock.  Returns each frame's XDP action and
        reason (:class:`xpro.core.layout.Reason`).  ``frame_size``: ``buf`` is a
        UMEM of chunks of this size (headers are then gathered faster).
        """
        n = len(base)
        lens = np.asarray(lens, dtype=np.int64)
        with self.lock:
            t = np.broadcast_to(np.asarray(self.now() if now is None else now,
                                           dtype=np.int64), (n,))
            batch = parse_batch(buf, base, lens, self.params.dst_mode, frame_size)
            if self.parsers:
                self._parsed_destinations(batch, buf, np.asarray(base, dtype=np.int64))
            action, reason = self._run(batch, t, lens)
        return action, reason

    def _parsed_destinations(self, b: Batch, buf: Array, base: Array) -> None:
        """Key UDP packets a destination parser recognises on the destination it names.

        Only destinations in the parser's list (:meth:`set_names`) are keyed
        so; a packet naming another one goes on to the next parser and, if
        none keys it, keeps its IP destination.  The parser itself runs once
        per packet (it is the inspection the kernel cannot do); everything
        around it is done once per batch: the payload bounds, the keys written
        back, and the destination's address, which is computed when the list
        is installed (or, for a parser without a list, remembered per
        destination text: :meth:`_destination_addr`).
        """
        udp = (b.status == OK) & (b.proto == 17) & ~b.frag & (b.l4off + 8 <= b.l4end)
        if not udp.any():
            return
        dport = np.zeros(len(base), dtype=np.int64)
        rows = np.flatnonzero(udp)
        dport[rows] = (buf[base[rows] + b.l4off[rows] + 2].astype(np.int64) << 8) | buf[
            base[rows] + b.l4off[rows] + 3]
        mem = np.ascontiguousarray(buf, dtype=np.uint8).data  # no copy: the UMEM is contiguous
        for parser, listed in zip(self.parsers, self._names, strict=True):
            ports = getattr(parser, "udp_ports", None)
            sel = np.flatnonzero(udp if ports is None else udp & np.isin(dport, sorted(ports)))
            if not len(sel):
                continue
            los = (base[sel] + b.l4off[sel] + 8).tolist()
            his = (base[sel] + b.l4end[sel]).tolist()
            hits: list[int] = []
            addrs: list[bytes] = []
            for i, lo, hi in zip(sel.tolist(), los, his, strict=True):
                try:
                    dest = parser(bytes(mem[lo:hi]))
                except Exception:  # a parser must never stop the data path
                    dest = None
                if not dest:
                    continue
                addr = (self._destination_addr(str(dest)) if listed is None
                        else listed.get(str(dest)))
                if addr is None:  # a name the operator did not list: the IP destination
                    continue
                hits.append(i)
                addrs.append(addr)
            if hits:
                b.keys["dst"]["addr"][hits] = addrs
                udp[hits] = False  # the first parser that recognises it wins

    def _destination_addr(self, dest: str) -> bytes:
        """:func:`parsed_destination_addr`, remembered for the last destinations seen
        (a flood names the same few again and again; a bounded memory, since a
        flood can also name a new one in every packet)."""
        addr = self._dest_addrs.get(dest)
        if addr is None:
            if len(self._dest_addrs) >= _DEST_CACHE:
                self._dest_addrs.clear()
            addr = self._dest_addrs[dest] = parsed_destination_addr(dest)
        return addr

    def _run(self, b: Batch, t: Array, lens: Array) -> tuple[Array, Array]:
        p = self.params
        n = len(lens)
        action = np.full(n, L.XDP_PASS, dtype=np.int64)
        reason = np.full(n, int(L.Reason.PASS), dtype=np.int64)
        reason[b.status == NON_IP] = L.Reason.NON_IP
        malf = b.status == MALFORMED
        reason[malf] = L.Reason.MALFORMED
        if p.malformed_policy != L.MALFORMED_PASS:
            action[malf] = L.XDP_DROP
        ok = b.status == OK
        if ok.any() and len(self._allow):
            a = ok & ~mapped_sources(b) & self._allow.contains(b.keys["src"])
            reason[a] = L.Reason.ALLOW
            ok &= ~a
        if ok.any() and len(self._deny):
            d = ok & self._deny.contains(b.keys["src"])
            reason[d] = L.Reason.DENY
            action[d] = L.XDP_DROP
            ok &= ~d
        # The flow key's source is its prefix; the lists above matched the full address.
        mask_sources(b, ok, p.source_prefix_v4, p.source_prefix_v6)
        events: list[tuple[Array, Array]] = []
        idx = np.flatnonzero(ok)
        if len(idx):
            keys = b.keys if len(idx) == n else _take(b.keys, idx)
            self._rate(idx, keys, t[idx], action, reason, events)
        self.stats[:, 0] += np.bincount(reason, minlength=L.N_REASONS).astype(np.uint64)
        self.stats[:, 1] += np.bincount(reason, weights=lens, minlength=L.N_REASONS
                                        ).astype(np.uint64)
        if events and self._queues and p.events:
            pos = np.concatenate([e[0] for e in events])
            evs = np.concatenate([e[1] for e in events], dtype=L.EVENT)
            evs = evs[np.argsort(pos, kind="stable")]
            for q in list(self._queues):
                q._push(evs)
        return action, reason

    def _modes(self, keys: Array, sel: Array) -> Array:
        """The mode of the destinations of ``keys[sel]`` (``dst_policy``, else the default)."""
        if len(self._policy):
            return self._policy.lookup(_take(keys, sel)["dst"]["addr"], self.params.mode)
        return np.full(len(sel), self.params.mode, dtype=np.int64)

    def _rate(self, idx: Array, keys: Array, t: Array, action: Array, reason: Array,
              events: list[tuple[Array, Array]]) -> None:
        """Lines 1-25 of Algorithm 2, with closed destinations, for the packets ``idx``
        (keys ``keys``, times ``t``).

        Whether a packet's destination is closed depends on the packets before
        it, and what they did depends on it in turn (an unknown source of a
        closed destination skips its flow record).  Each pass *guesses* it for
        every packet from the destination's record as it was before the pass,
        runs the whole batch vectorised on the guess, and checks the guess
        against the record each packet really found.  Destinations are
        independent (a flow belongs to one), so the packets of a destination
        before its first wrong guess are right: they are applied, and the
        rest goes round again, guessed from the records they left.  A
        destination changes state at most a couple of times in a batch
        stamped with one time (the data path's), so it takes one or two
        passes; one when nothing is closed or closes.
        """
        bad = self._pass(idx, keys, t, action, reason, events, verify=True)
        pending, sub = np.arange(len(idx)), keys
        while bad is not None:  # (never empty: it holds a wrong guess)
            good = np.flatnonzero(~bad)
            if len(good):  # right up to each destination's first wrong guess
                self._pass(idx[pending[good]], _take(sub, good), t[pending[good]], action,
                           reason, events, verify=False)
            pending, sub = pending[bad], _take(sub, np.flatnonzero(bad))
            bad = self._pass(idx[pending], sub, t[pending], action, reason, events,
                             verify=True)

    def _pass(self, idx: Array, keys: Array, t: Array, action: Array, reason: Array,
              events: list[tuple[Array, Array]], *, verify: bool) -> Array | None:
        """One pass of :meth:`_rate` over the packets ``idx`` (keys ``keys``, times ``t``,
        in arrival order).  With ``verify``, returns the packets from each
        destination's first wrong guess on (a bool mask) and changes nothing if
        there is one; otherwise applies the pass and returns None.

        In ``addr+port`` mode each address's own aggregate is guessed, counted
        and judged beside its keys' (docs/semantics.rst, "Address
        aggregates"); a wrong guess then invalidates the rest of its whole
        address, the unit the packets' records depend on."""
        p = self.params
        m = len(idx)
        by_port = p.dst_mode == L.DST_ADDR_PORT
        # --- the groups: flows, and destinations from the flows' keys ------------
        fg = _Grouping.of(self.flows, keys)
        dg0 = _Grouping.of(self.dsts, np.ascontiguousarray(fg.ukeys["dst"]))
        dinv = dg0.inv[fg.inv]  # each packet's destination
        dkeys = dg0.ukeys
        ag: _Grouping | None = None
        if by_port:  # the addresses of the destinations, and each packet's
            ag = _Grouping.of(self.dsts, _address_keys(dkeys))
        self.dsts.reserve(len(dkeys) + (len(ag.ukeys) if ag is not None else 0))
        # (before find: the store below inserts without moving)
        dh = dg0.uh if self.dsts.key == dg0.key else self.dsts._hash(dkeys)
        dslots = self.dsts.find(dkeys, dh)
        dexists = dslots >= 0
        drec = np.zeros(len(dkeys), dtype=L.DST)
        drec[dexists] = self.dsts.get(dslots[dexists])
        d_ts1, d_ts2 = drec["ts1"].astype(np.int64), drec["ts2"].astype(np.int64)
        d_c = drec["c"].astype(np.int64)

        # --- the guess: closed as the destination's record was before the pass --
        cmin = p.t_f2 * p.t_t3 // NS_PER_S  # closed needs c* above this
        cl = self._guess(dexists, d_ts1, d_ts2, d_c, dinv, t, cmin, p.t_f2)
        closing = bool(cl.any())  # (when not, the closed rule is skipped throughout)
        cls = cd = cl
        anycd = False
        if closing:
            cls = self._classes(keys, cl)
            cd = cl & (cls == 0)  # unknown sources of a closed destination: closed drops
            anycd = bool(cd.any())
            if anycd:
                fg = fg.with_closed(self.flows, cd, dinv, dkeys)
        ad: _AddrPass | None = None
        if ag is not None:
            ad = _AddrPass.of(self, ag, dinv, keys, t, cd)
            if ad.anycd:
                fg = fg.with_closed(self.flows, ad.cd, ad.inv, ad.keys)
        nocount = cd if ad is None else cd | ad.cd  # no per-source check, no window start

        # --- per source (lines 1-16); closed drops count into their closed-drops
        # record, with no per-source check ------------------------------------------
        r = _Runs.of(self.flows, fg, t, L.FLOW, p.t_t1)
        rec, g, ts = r.rec, r.g, r.ts
        started = r.created | r.reset
        c = r.count()
        ts1 = np.where(r.cont, rec["ts1"].astype(np.int64)[g], ts[r.start])
        cumres = np.cumsum(r.reset)
        gbase: Array = cumres[r.gstart] - r.reset[r.gstart]
        gen = (rec["gen"].astype(np.int64)[g] + cumres - gbase[g]) & _U32
        window = ts - ts1
        over = (window > p.t_t2) & rate_exceeds_array(c, window, p.t_f1)
        anync = anycd or (ad is not None and ad.anycd)
        if anync:
            over &= ~nocount[r.order]
        warned, warn_ts = _warnings(over, g, ts, rec["warn_ts"].astype(np.int64),
                                    p.warn_period)
        if over.all():  # a flood the per-source rule drops whole: no destination moves,
            # so every guess read the record its packet found
            self._flows_back(r, c, ts1, gen, warn_ts)
            self._judge(keys, r.order, idx[r.order], ts, over, warned, c, window,
                        L.EventKind.SRC_OVERLOAD, action, reason, events)
            return None
        over_a = np.empty(m, dtype=bool)  # in arrival order
        over_a[r.order] = over
        f_ts1 = np.empty(m, dtype=np.int64)
        f_ts1[r.order] = ts1
        f_started = np.zeros(m, dtype=bool)
        f_started[r.order] = started
        if anync:
            f_started &= ~nocount  # a closed drop starts no window of an aggregate

        # --- per destination (lines 18-25): the packets admitted, and the closed
        # drops, in arrival order per destination ---------------------------------------
        counted = ~over_a  # a closed drop is never over
        if ad is not None and ad.anycd:
            counted &= ~ad.cd  # the address's closed drops count in the address only
        dorder = np.argsort(dinv, kind="stable")
        s = dorder[counted[dorder]]
        da = _aggregate(s, dinv, t, f_ts1, f_started, dexists, d_ts1, d_ts2, d_c,
                        drec["kc"].astype(np.int64), p.t_t1)
        gs, tss, n, ts1s, cs, kc, dwin = da.gs, da.tss, da.n, da.ts1s, da.cs, da.kc, da.dwin
        first = da.first
        over_d = (dwin > p.t_t3) & rate_exceeds_array(cs, dwin, p.t_f2)
        cd_s = heavy = np.zeros(n, dtype=bool)
        cnt = cs
        if closing:
            cls_s, cl_s, cd_s = cls[s], cl[s], cd[s]
            client = cl_s & (cls_s == L.Known.CLIENT)
            heavy = cl_s & ~cd_s & ~client  # never served while closed
            if client.any():
                cum = np.cumsum(client)
                kc = kc + cum - (cum[da.start] - client[da.start])
                cnt = np.where(client, kc, cs)
                over_d = (dwin > p.t_t3) & rate_exceeds_array(cnt, dwin, p.t_f2)
            over_d &= ~cd_s & ~heavy
        if ad is not None:
            ad.count(over_a, f_ts1, f_started, t, p)

        if verify:
            bad = self._wrong_guesses(cl, t, dorder, dinv, counted, gs, ts1s, tss, cs, cmin)
            if ad is not None:
                bad = ad.wrong_guesses(self, bad, t)
            if bad is not None:
                return bad

        # --- apply: records, verdicts, warnings ----------------------------------------
        self._flows_back(r, c, ts1, gen, warn_ts)
        pk = idx[r.order]  # original positions in sorted order
        if over.any():
            self._judge(keys, r.order, pk, ts, over, warned, c, window,
                        L.EventKind.SRC_OVERLOAD, action, reason, events)
        if n == 0 and (ad is None or ad.n == 0):
            return None
        dwarn, dwarn_ts = _warnings(over_d | cd_s, gs, tss, drec["warn_ts"].astype(np.int64),
                                    p.warn_period)
        last = (np.append(np.flatnonzero(first)[1:], n) - 1 if n
                else np.zeros(0, dtype=np.int64))
        gl = gs[last]  # the destinations with packets counted, and their last one
        dnew = drec[gl]
        dnew["ts1"], dnew["ts2"], dnew["c"], dnew["kc"] = ts1s[last], tss[last], cs[last], kc[last]
        dnew["warn_ts"] = dwarn_ts[gl]
        have = dexists[gl]
        judged = over_d | cd_s | heavy
        if ad is None:
            self.dsts.put(dslots[gl[have]], dnew[have])
            fresh = gl[~have]
            if len(fresh):
                self.dsts.make_room(len(fresh), dslots[dexists])
                self.dsts.insert(dkeys[fresh], dnew[~have], dh[fresh])
        else:
            d_fired = np.zeros(m, dtype=bool)
            d_fired[s[judged]] = True
            ad.store(self, dslots[gl[have]], dnew[have], dkeys[gl[~have]], dnew[~have],
                     dh[gl[~have]], dslots[dexists], d_fired)
        if judged.any():
            self._judge(keys, s, idx[s], tss, judged, dwarn, cnt, dwin,
                        L.EventKind.DST_OVERLOAD, action, reason, events,
                        closed=~over_d)
        if ad is not None:
            ad.judge(self, idx, action, reason, events)
        return None

    def _guess(self, exists: Array, ts1: Array, ts2: Array, c: Array, inv: Array, t: Array,
               cmin: int, limit: int) -> Array:
        """Each packet's guess: its aggregate (``inv``) closed as its record was
        before the pass (records as int64 columns; ``cmin``: c* needed)."""
        cl = np.zeros(len(inv), dtype=bool)
        maybe = exists & (c > cmin)
        if maybe.any():
            rows = np.flatnonzero(maybe[inv])
            g = inv[rows]
            cl[rows] = self._closed(ts1[g], ts2[g], c[g], t[rows], limit)
        return cl

    def _classes(self, keys: Array, sel: Array) -> Array:
        """The known class of the flow keys ``keys[sel]`` (0 elsewhere)."""
        cls = np.zeros(len(keys), dtype=np.int64)
        if len(self.known):
            rows = np.flatnonzero(sel)
            ks = self.known.find(_take(keys, rows))
            hit = ks >= 0
            cls[rows[hit]] = self.known.vals[ks[hit]]
        return cls

    def _flows_back(self, r: _Runs, c: Array, ts1: Array, gen: Array, warn_ts: Array) -> None:
        """Write a pass's flow records back (each group's state after its last
        packet), marking the flows dirty in the running epoch."""
        rec = r.rec
        new = rec.copy()
        new["ts1"], new["ts2"], new["c"] = ts1[r.last], r.ts[r.last], c[r.last]
        new["gen"], new["warn_ts"] = gen[r.last], warn_ts
        epoch = self._epoch
        mark = np.zeros(len(rec), dtype=bool)
        if epoch:
            mark = ~r.exists | (rec["epoch"] != epoch)
            new["epoch"][mark] = epoch
        new["epoch"][~r.exists] = epoch
        all_slots = r.store(self.flows, new)
        if epoch:
            bit = np.uint8(1 << (epoch & 1))
            self.flows.aux[all_slots[mark]] |= bit

    def _closed(self, ts1: Array, ts2: Array, c: Array, t: Array,
                limit: int | None = None) -> Array:
        """``model.Filter.dst_closed`` over arrays (records as int64 columns)."""
        p = self.params
        window = t - ts1
        out: Array = ~window_over(t, ts2, p.t_t1) & (window > p.t_t3)
        if out.any():
            w = np.flatnonzero(out)
            out[w] = rate_exceeds_array(c[w], window[w], p.t_f2 if limit is None else limit)
        return out

    def _wrong_guesses(self, cl: Array, t: Array, dorder: Array, dinv: Array,
                       counted: Array, gs: Array, ts1s: Array, tss: Array, cs: Array,
                       cmin: int, limit: int | None = None) -> Array | None:
        """Check a pass's guess ``cl`` (closed or not, per packet) against the record
        each packet found: the stored one, or the one the last counted packet of
        its destination left (``gs``, ``ts1s``, ``tss``, ``cs``: the counted
        packets, sorted by destination).  Returns the packets from each
        destination's first wrong guess on, or None if every guess was right."""
        if not cl.any() and (len(cs) == 0 or int(cs.max()) <= cmin):
            return None  # nothing was closed, nothing could have become closed
        m = len(cl)
        c_o = counted[dorder]
        kprev = np.cumsum(c_o) - 1 - c_o  # the last counted packet before each, in s
        g_o = dinv[dorder]
        valid = kprev >= 0
        kp = np.maximum(kprev, 0)
        if len(gs):
            valid &= gs[kp] == g_o
        else:
            valid[:] = False
        # where no packet of the destination was counted before, the guess read
        # the same record: right by construction
        actual = cl[dorder].copy()
        v = np.flatnonzero(valid)
        actual[v] = False
        v = v[cs[kp[v]] > cmin]
        if len(v):
            actual[v] = self._closed(ts1s[kp[v]], tss[kp[v]], cs[kp[v]], t[dorder[v]], limit)
        wrong = actual != cl[dorder]
        if not wrong.any():
            return None
        firstbad = np.full(int(g_o.max()) + 1, m, dtype=np.int64)
        np.minimum.at(firstbad, g_o[wrong], np.flatnonzero(wrong))
        bad = np.empty(m, dtype=bool)
        bad[dorder] = np.arange(m) >= firstbad[g_o]
        return bad

    def _judge(self, keys: Array, order: Array, pos: Array, ts: Array, over: Array,
               warned: Array, c: Array, window: Array, kind: L.EventKind, action: Array,
               reason: Array, events: list[tuple[Array, Array]],
               closed: Array | None = None) -> None:
        """The verdicts of a rate check.  The checked packets are ``keys`` sorted by
        ``order``; ``pos`` are their places in the batch, ``ts`` their times, ``c``
        and ``window`` the count and window checked.  Those ``over`` are dropped, or
        passed in monitor mode; the ``warned`` ones become events of ``kind``.
        ``closed`` marks (for a destination's check) those dropped because the
        destination was closed (DST_CLOSED) rather than over T_F2."""
        src = kind == L.EventKind.SRC_OVERLOAD
        ov = np.flatnonzero(over)
        mon = self._modes(keys, order[ov]) == L.MODE_MONITOR
        action[pos[ov]] = np.where(mon, L.XDP_PASS, L.XDP_DROP)
        if src:
            reason[pos[ov]] = np.where(mon, L.Reason.MON_SRC_RATE, L.Reason.SRC_RATE)
        else:
            shut = np.zeros(len(ov), dtype=bool) if closed is None else closed[ov]
            reason[pos[ov]] = np.where(
                mon, np.where(shut, L.Reason.MON_DST_CLOSED, L.Reason.MON_DST_RATE),
                np.where(shut, L.Reason.DST_CLOSED, L.Reason.DST_RATE))
        w = np.flatnonzero(warned)
        if len(w) and self.params.events:
            ev = np.zeros(len(w), dtype=L.EVENT)
            ev["ts"], ev["kind"] = ts[w], kind
            if src:
                ev["key"] = keys[order[w]]
            else:  # a destination's event carries no source
                ev["key"]["dst"] = keys[order[w]]["dst"]
            ev["c"], ev["window"] = c[w], window[w]
            events.append((pos[w], ev))

    # --- reading ---------------------------------------------------------------

    def read_flows(self) -> tuple[Array, Array]:
        with self.lock:
            s = self.flows.slots()
            return self.flows.keys[s].copy(), self.flows.vals[s].copy()

    def read_dsts(self) -> tuple[Array, Array]:
        with self.lock:
            s = self.dsts.slots()
            return self.dsts.keys[s].copy(), self.dsts.vals[s].copy()

    def read_dsts_of(self, keys: Array) -> tuple[Array, Array]:
        """The aggregates of ``keys`` (DST_KEY): ``(exists, records)``."""
        with self.lock:
            slots = self.dsts.find(np.asarray(keys, dtype=L.DST_KEY))
            out = np.zeros(len(keys), dtype=L.DST)
            exists = slots >= 0
            out[exists] = self.dsts.vals[slots[exists]]
            return exists, out

    def read(self, keys: Array) -> tuple[Array, Array]:
        """The records of ``keys``: ``(exists, FLOW records)`` (zero where absent).

        Read :data:`APPLY_CHUNK` keys per taking of the lock, as :meth:`apply`."""
        keys = np.asarray(keys, dtype=L.FLOW_KEY)
        out = np.zeros(len(keys), dtype=L.FLOW)
        exists = np.zeros(len(keys), dtype=bool)
        for lo in range(0, len(keys), APPLY_CHUNK):
            hi = lo + APPLY_CHUNK
            with self.lock:
                slots = self.flows.find(keys[lo:hi])
                hit = slots >= 0
                exists[lo:hi] = hit
                out[lo:hi][hit] = self.flows.vals[slots[hit]]
        return exists, out

    def counters(self) -> Array:
        """Packets and bytes by reason: shape (N_REASONS, 2)."""
        with self.lock:
            return self.stats.copy()

    def events(self, callback: Callable[[Any], object], *, capacity: int = 4096
               ) -> EventQueue:
        """A reader handing each warning (an ``EVENT`` record) to ``callback``;
        at most ``capacity`` wait, further ones are dropped (:meth:`events_lost`)."""
        q = EventQueue(self, callback, capacity)
        self._queues.add(q)
        return q

    def events_lost(self) -> int:
        """Warnings dropped since the filter was made: a reader's queue was full."""
        return self._events_lost

    # --- writing: the semantics of xpro_apply ------------------------------------

    def apply(self, entries: Array, out: Array | None = None) -> Array:
        """Apply a batch of ``APPLY`` operations exactly as ``xpro_apply`` does.

        In order, one after another: a key that occurs twice sees the first
        operation's effect.  Runs of distinct keys are applied vectorised.
        The lock is taken per :data:`APPLY_CHUNK` entries, not for the whole
        batch, so a large sync round does not stall the data path: like the
        kernel's ``xpro_apply`` beside the XDP program, each record's update
        is atomic, not the batch (the generation check catches a packet that
        reset a record meanwhile).
        """
        entries = np.array(entries, dtype=L.APPLY, copy=True)
        for start in range(0, len(entries), APPLY_CHUNK):
            chunk = entries[start : start + APPLY_CHUNK]  # a view: results land in entries
            with self.lock:  # per chunk: packet batches run in between (the kernel alike)
                for lo, hi in _distinct_runs(chunk):
                    self._apply_run(chunk[lo:hi])
        if out is not None:
            out[: len(entries)] = entries
        return entries["result"].astype(np.int32)

    def _apply_run(self, e: Array) -> None:
        op = e["op"].astype(np.int64)
        # A key no record is kept under (the kernel's apply_key_bad): a pad no
        # key has, or the closed-drops bit with a source.
        pad = e["key"]["dst"]["pad"]
        bad = ((op & OP_DST) == 0) & (
            (pad > L.DST_PAD_ADDR_CLOSED) | (((pad & L.DST_PAD_CLOSED) != 0)
                                             & (e["key"]["src"] != bytes(16))))
        e["result"][bad] = NO_RECORD
        read = ~bad & ((op & OP_READ) != 0)
        flow = ~bad & ~read & ((op & OP_FLOW) != 0)
        dst = ~bad & ~read & ~flow & ((op & OP_DST) != 0)
        if read.any():
            r = np.flatnonzero(read)
            slots = self.flows.find(e["key"][r])
            ok = slots >= 0
            v = self.flows.vals[slots[ok]]
            ro = r[ok]
            e["c_delta"][ro] = v["c"].astype(np.int64)
            for f in ("ts1", "ts2", "base_c", "gen", "base_gen"):
                e[f][ro] = v[f]
            e["result"][ro] = APPLIED
            e["result"][r[~ok]] = NO_RECORD
        if flow.any():
            self._apply_flows(e, np.flatnonzero(flow), op)
        if dst.any():
            self._apply_dsts(e, np.flatnonzero(dst), op)

    def _apply_flows(self, e: Array, r: Array, op: Array) -> None:
        self._apply_records(self.flows, e["key"][r], e, r, op, flows=True)

    def _apply_dsts(self, e: Array, r: Array, op: Array) -> None:
        self._apply_records(self.dsts, np.ascontiguousarray(e["key"]["dst"][r]), e, r, op,
                            flows=False)

    def _apply_records(self, t: Table, keys: Array, e: Array, r: Array, op: Array, *,
                       flows: bool) -> None:
        """``xpro_apply`` on the entries ``r`` of ``e`` whose records (``keys``) are in ``t``:
        flow records (generation checked, baseline written) or destination aggregates."""
        t.reserve(len(keys))  # before find: the creations below must not move the slots
        slots = t.find(keys)
        absent = slots < 0
        # no record: create it (CREATE) or report it.  A record with no last
        # packet is none (the kernel keeps an aggregate, and a closed-drops
        # record, absent while its ts2 is 0): not created.
        cr = absent & ((op[r] & OP_CREATE) != 0)
        if flows:
            cr &= (e["ts2"][r] != 0) | ((keys["dst"]["pad"] & L.DST_PAD_CLOSED) == 0)
        else:
            cr &= e["ts2"][r] != 0
        e["result"][r[absent & ~cr]] = NO_RECORD
        if cr.any():
            rc = r[cr]
            nv = np.zeros(len(rc), dtype=L.FLOW if flows else L.DST)
            nv["ts1"], nv["ts2"] = e["ts1"][rc], e["ts2"][rc]
            nv["c"] = e["c_delta"][rc].astype(np.uint64)
            if flows:
                nv["base_c"] = e["base_c"][rc]
            else:  # the kc delta travels in base_c
                nv["kc"] = e["base_c"][rc]
            t.make_room(len(rc), slots[~absent])
            t.insert(keys[cr], nv)
            e["result"][rc] = APPLIED
        have = np.flatnonzero(~absent)
        if len(have) == 0:
            return
        rh, sh = r[have], slots[have]
        if flows:  # reset here meanwhile: the sync retries next round
            same = t.vals["gen"][sh] == e["gen"][rh]
            e["result"][rh[~same]] = GEN_MISMATCH
            rh, sh = rh[same], sh[same]
        dele = (op[rh] & OP_DELETE) != 0
        if dele.any():
            rd, sd = rh[dele], sh[dele]
            gone = t.vals["ts2"][sd] == e["ts2"][rd]
            t.delete(sd[gone])
            e["result"][rd] = np.where(gone, APPLIED, GEN_MISMATCH)
        ru, su = rh[~dele], sh[~dele]
        # A negative delta larger than the count (the kc delta's too) is not
        # for this record: read before an eviction or a reset (the kernel's
        # apply_flow and apply_dst).
        under = _under(t.vals["c"][su], e["c_delta"][ru].view(np.uint64))
        if not flows:
            under |= _under(t.vals["kc"][su], e["base_c"][ru])
        e["result"][ru[under]] = GEN_MISMATCH
        ru, su = ru[~under], su[~under]
        if len(ru):
            vals = t.vals[su]
            vals["c"] = (vals["c"].astype(np.int64) + e["c_delta"][ru]).astype(np.uint64)
            ts1 = e["ts1"][ru]
            vals["ts1"] = np.where(ts1 != 0, ts1, vals["ts1"])
            vals["ts2"] = _max_store(vals["ts2"], e["ts2"][ru])
            if flows:
                keep = (op[ru] & OP_KEEP_BASE) != 0
                vals["base_c"] = np.where(keep, vals["base_c"], e["base_c"][ru])
                vals["base_gen"] = np.where(keep, vals["base_gen"], e["gen"][ru])
            else:  # kc += the delta in base_c, two's complement (wraps as in the kernel)
                vals["kc"] = vals["kc"] + e["base_c"][ru]
            t.vals[su] = vals
            e["result"][ru] = APPLIED

    # --- known clients (written by the daemon, read by the packets) -------------

    def set_known(self, keys: Array, classes: Any) -> None:
        """Write (or overwrite) the class (``Known``) of these flow keys.

        ``classes`` is one class for all keys or one per key; a key given twice
        takes its last class.  Like the kernel's batch update of its plain hash,
        a full table takes the keys that fit, in order, and then raises
        :class:`~xpro.errors.DatapathError` (nothing is evicted to make room).
        """
        keys = np.ascontiguousarray(keys, dtype=L.FLOW_KEY)
        n = len(keys)
        if n == 0:
            return
        cls = np.ascontiguousarray(np.broadcast_to(np.asarray(classes, dtype="<u4"), (n,)))
        kv = keys.view(self.known.void)
        _, last = np.unique(kv[::-1], return_index=True)
        if len(last) != n:  # repeated keys: the last one wins
            keep = np.sort(n - 1 - last)
            keys, cls = keys[keep], cls[keep]
        with self.lock:
            t = self.known
            t.reserve(len(keys))
            slots = t.find(keys)
            have = slots >= 0
            t.put(slots[have], cls[have])
            new = np.flatnonzero(~have)
            room = max(0, t.max_entries - len(t))
            t.insert(keys[new[:room]], cls[new[:room]])
        if len(new) > room:
            raise DatapathError(f"the known-client table is full ({t.max_entries} entries): "
                                f"{len(new) - room} of {n} not written")

    def drop_known(self, keys: Array) -> int:
        """Remove these flow keys from the known table (absent ones are skipped);
        returns how many went."""
        keys = np.ascontiguousarray(keys, dtype=L.FLOW_KEY)
        if len(keys) == 0:
            return 0
        with self.lock:
            slots = self.known.find(keys)
            gone = np.unique(slots[slots >= 0])
            self.known.delete(gone)
            return len(gone)

    def read_known(self) -> tuple[Array, Array]:
        """The known table: flow keys (FLOW_KEY) and their class (``Known``, uint32)."""
        with self.lock:
            s = self.known.slots()
            return self.known.keys[s].copy(), self.known.vals[s].copy()

    # --- sync epochs -------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._epoch

    def next_epoch(self) -> int:
        """Move to the next epoch; returns the one that ended."""
        with self.lock:
            ended = self._epoch
            # after 2**32 - 1 comes 2: two epochs in a row use two dirty sets
            self._epoch = ended + 1 if ended < _U32 else 2
            return ended

    def take_dirty(self, epoch: int) -> Array:
        """The keys marked dirty in ``epoch``, removed from its set."""
        with self.lock:
            bit = np.uint8(1 << (epoch & 1))
            s = np.flatnonzero((self.flows.aux & bit) != 0)
            self.flows.aux[s] &= ~bit
            return self.flows.keys[s].copy()

    def peek_dirty(self, epoch: int) -> Array:
        """The keys marked dirty in ``epoch`` so far, left marked."""
        with self.lock:
            bit = np.uint8(1 << (epoch & 1))
            s = np.flatnonzero((self.flows.aux & bit) != 0)
            return self.flows.keys[s].copy()

    def dirty_lost(self) -> int:
        """Always 0: the userspace dirty marks live in the records, they cannot overflow."""
        return 0

    def clear(self) -> None:
        """Forget every record, known client and counter (tests)."""
        with self.lock:
            self.flows.clear()
            self.dsts.clear()
            self.known.clear()
            self.stats[:] = 0

    def close(self) -> None:
        self._queues.clear()

    def __enter__(self) -> UserFilter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bytes(keys: Array) -> Array:
    """Fixed-size records as an (n, itemsize) uint8 matrix (a view when contiguous)."""
    c = np.ascontiguousarray(keys)
    out: Array = c.view(np.uint8).reshape(len(c), c.dtype.itemsize)
    return out


def _take(keys: Array, idx: Array) -> Array:
    """``keys[idx]`` for a structured array, as a row gather of raw bytes (faster)."""
    out: Array = _bytes(keys)[idx].view(keys.dtype).reshape(len(idx))
    return out


def _group(table: Table, keys: Array) -> tuple[Array, Array, Array, Array]:
    """Group equal keys, keeping arrival order inside each group.

    Returns the index of each group's first key, the group of each key, each
    group's hash and the stable order that lists the keys group by group.
    Keys are grouped by their 64-bit hash (one integer sort); if two
    different keys of the batch ever share a hash, by their bytes instead.
    """
    h = table._hash(keys)
    order = np.argsort(h, kind="stable")
    hs = h[order]
    starts = np.ones(len(h), dtype=bool)
    starts[1:] = hs[1:] != hs[:-1]
    inv = np.empty(len(h), dtype=np.int64)
    inv[order] = np.cumsum(starts) - 1
    first = order[starts]
    raw = _bytes(keys)
    if len(first) == len(h) or bool((raw == raw[first][inv]).all()):
        return first, inv, hs[starts], order
    kv = np.ascontiguousarray(keys).view(table.void)
    _, first, inv = np.unique(kv, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    return first, inv, h[first], np.argsort(inv, kind="stable")


@dataclass
class _Grouping:
    """A batch's packets grouped by key (:func:`_group`): the groups' keys and
    their hashes under the table's hash key ``key``, each packet's group
    (``inv``) and the packets group by group (``order``, arrival order inside
    each; the groups in the order of their numbers)."""

    ukeys: Array
    uh: Array
    key: int
    inv: Array
    order: Array

    @classmethod
    def of(cls, table: Table, keys: Array) -> _Grouping:
        if len(keys) == 1:  # one flow's destination (a flood from one source): no sort
            one = np.zeros(1, dtype=np.int64)
            return cls(np.ascontiguousarray(keys), table._hash(keys), table.key, one, one)
        first, inv, uh, order = _group(table, keys)
        return cls(_take(keys, first), uh, table.key, inv, order)

    def with_closed(self, table: Table, cd: Array, dinv: Array, dkeys: Array) -> _Grouping:
        """The packets ``cd`` moved to their destination's closed-drops record
        (``dinv``: each packet's destination, ``dkeys`` the destinations' keys);
        groups left with no packet go."""
        u = len(self.ukeys)
        dd = np.unique(dinv[cd])
        ck = np.zeros(len(dd), dtype=L.FLOW_KEY)
        ck["dst"] = dkeys[dd]
        ck["dst"]["pad"] |= L.DST_PAD_CLOSED  # (an address's: DST_PAD_ADDR_CLOSED)
        gid = self.inv.copy()
        gid[cd] = u + np.searchsorted(dd, dinv[cd])
        used = np.zeros(u + len(dd), dtype=bool)
        used[gid] = True
        inv = (np.cumsum(used) - 1)[gid]
        ukeys = np.concatenate([self.ukeys, ck], dtype=L.FLOW_KEY)[used]
        uh = (np.concatenate([self.uh, table._hash(ck)])[used] if table.key == self.key
              else table._hash(ukeys))
        return _Grouping(ukeys, uh, table.key, inv, np.argsort(inv, kind="stable"))


@dataclass
class _Runs:
    """A batch's packets grouped by record, and cut where a record starts.

    ``order`` sorts the packets group by group (arrival order inside each);
    every array indexed by packet is in that order.  A record starts where it
    is created (its first packet, no stored record) or reset (a gap over T_T1
    after the previous packet, or after the stored ``ts2``); a *run* is the
    packets from one start to the next.  Within a run the count is a
    cumulative count; a run that starts at the group's first packet without a
    start continues the stored record (``cont``).
    """

    ukeys: Array    # the groups' keys
    uh: Array       # their hashes
    slots: Array    # their slots in the table (-1: none)
    exists: Array   # whether they have a record
    rec: Array      # their records (zeros where none)
    order: Array    # packets, sorted group by group
    g: Array        # each packet's group
    ts: Array       # each packet's time
    created: Array  # the packet creates its record
    reset: Array    # the packet resets its record
    start: Array    # the position of the first packet of each packet's run
    cont: Array     # the packet's run continues the stored record
    gstart: Array   # the position of each group's first packet
    last: Array     # the position of each group's last packet

    @classmethod
    def of(cls, table: Table, grouping: _Grouping, t: Array, dtype: Any, t_t1: int) -> _Runs:
        m = len(grouping.inv)
        ukeys, uh, inv, order = grouping.ukeys, grouping.uh, grouping.inv, grouping.order
        table.reserve(len(ukeys))  # before find: store() inserts without moving slots
        if table.key != grouping.key:  # rekeyed (by reserve() or since): the hashes are stale
            uh = table._hash(ukeys)
        slots = table.find(ukeys, uh)
        exists = slots >= 0
        rec = np.zeros(len(ukeys), dtype=dtype)
        rec[exists] = table.get(slots[exists])
        g = inv[order]
        ts = t[order]
        firstpos = np.ones(m, dtype=bool)
        firstpos[1:] = g[1:] != g[:-1]
        prev = np.empty(m, dtype=np.int64)
        prev[1:] = ts[:-1]
        prev[firstpos] = rec["ts2"].astype(np.int64)[g[firstpos]]
        created = firstpos & ~exists[g]
        reset = ~created & window_over(ts, prev, t_t1)
        segstart = firstpos | reset  # a creation is always a group's first packet
        start = np.flatnonzero(segstart)[np.cumsum(segstart) - 1]
        gstart = np.flatnonzero(firstpos)
        return cls(ukeys=ukeys, uh=uh, slots=slots, exists=exists, rec=rec, order=order, g=g,
                   ts=ts, created=created, reset=reset, start=start,
                   cont=~(created | reset)[start], gstart=gstart,
                   last=np.append(gstart[1:], m) - 1)

    def count(self) -> Array:
        """Each packet's count: its place in its run, plus the stored count if
        the run continues the stored record."""
        pos_in = np.arange(len(self.g)) - self.start
        out: Array = pos_in + 1 + np.where(self.cont, self.rec["c"].astype(np.int64)[self.g], 0)
        return out

    def store(self, table: Table, new: Array) -> Array:
        """Write the groups' records ``new`` back (inserting the new ones, making
        room first); returns every group's slot."""
        slots = self.slots.copy()
        table.put(slots[self.exists], new[self.exists])
        fresh = np.flatnonzero(~self.exists)
        if len(fresh):
            table.make_room(len(fresh), slots[self.exists])
            slots[fresh] = table.insert(self.ukeys[fresh], new[fresh], self.uh[fresh])
        return slots


def _address_keys(dkeys: Array) -> Array:
    """The address aggregate's key of each destination key (``addr+port`` mode)."""
    out = np.array(dkeys, dtype=L.DST_KEY)
    out["port"], out["proto"], out["pad"] = 0, 0, L.DST_PAD_ADDR
    return out


@dataclass
class _Agg:
    """The packets counted into aggregates in one pass, sorted by aggregate
    (arrival order inside each): ``s`` their places in the pass, ``gs`` their
    aggregate, ``tss`` their times; each one's window start ``ts1s``, count
    ``cs`` and stored ``kc`` (where its run continues the stored record), the
    window ``dwin``; ``first`` marks each aggregate's first packet, ``start``
    the first packet of each one's run."""

    s: Array
    gs: Array
    tss: Array
    n: int
    first: Array
    start: Array
    ts1s: Array
    cs: Array
    kc: Array
    dwin: Array


def _aggregate(s: Array, inv: Array, t: Array, f_ts1: Array, f_started: Array, exists: Array,
               d_ts1: Array, d_ts2: Array, d_c: Array, d_kc: Array, t_t1: int) -> _Agg:
    """Lines 18-25 for the packets ``s`` (sorted by aggregate ``inv``): created,
    reset after T_T1 idle, ts1* moved back to a flow's window that started
    with the packet, one more in c*."""
    gs, tss = inv[s], t[s]
    n = len(s)
    first = np.ones(n, dtype=bool)
    first[1:] = gs[1:] != gs[:-1]
    prev = np.empty(n, dtype=np.int64)
    prev[1:] = tss[:-1]
    prev[first] = d_ts2[gs[first]]
    created = first & ~exists[gs]
    reset = ~created & window_over(tss, prev, t_t1)
    segstart = first | reset
    start = np.flatnonzero(segstart)[np.cumsum(segstart) - 1]
    cont = ~(created | reset)[start]
    fts1, fst = f_ts1[s], f_started[s]
    startval = np.where(created[start], fts1[start],
                        np.where(reset[start], tss[start], d_ts1[gs]))
    # ts1* = min(start, ts1' of the first flow that started since); later
    # starters started later (time never decreases inside a batch).
    ts1s = startval
    cand = np.flatnonzero(fst & ~created & ~reset)
    if len(cand):
        k = np.searchsorted(cand, start)
        kk = np.minimum(k, len(cand) - 1)
        valid = (k < len(cand)) & (cand[kk] <= np.arange(n))
        ts1s = np.where(valid, np.minimum(startval, fts1[cand[kk]]), startval)
    pos_in = np.arange(n) - start
    cs = pos_in + 1 + np.where(cont, d_c[gs], 0)
    kc = np.where(cont, d_kc[gs], 0)
    return _Agg(s=s, gs=gs, tss=tss, n=n, first=first, start=start, ts1s=ts1s, cs=cs, kc=kc,
                dwin=tss - ts1s)


@dataclass
class _AddrPass:
    """One pass's address aggregates (``addr+port`` mode, docs/semantics.rst,
    "Address aggregates"): the addresses (``keys``, hashes ``h``, slots,
    records), each packet's address (``inv``), the guess that it was closed
    (``cl``), the packets' classes for it (``cls``) and its closed drops
    (``cd``: unknown sources of a closed address that got past their key)."""

    keys: Array
    h: Array
    slots: Array
    exists: Array
    rec: Array
    inv: Array
    cl: Array
    cls: Array
    cd: Array
    anycd: bool
    fkeys: Array  # each packet's flow key with its address's key as destination
    cmin: int
    kcd: Array  # the closed drops of the packets' keys: never in their address
    n: int = 0
    agg: _Agg | None = None
    order: Array | None = None
    counted: Array | None = None
    cnt: Array | None = None
    over: Array | None = None
    heavy: Array | None = None
    cd_s: Array | None = None
    warn: Array | None = None

    @classmethod
    def of(cls, f: UserFilter, ag: _Grouping, dinv: Array, keys: Array, t: Array,
           cd: Array) -> _AddrPass:
        p = f.params
        akeys = ag.ukeys
        h = ag.uh if f.dsts.key == ag.key else f.dsts._hash(akeys)
        slots = f.dsts.find(akeys, h)
        exists = slots >= 0
        rec = np.zeros(len(akeys), dtype=L.DST)
        rec[exists] = f.dsts.get(slots[exists])
        inv = ag.inv[dinv]
        cmin = p.t_f2_addr * p.t_t3 // NS_PER_S
        cl = f._guess(exists, rec["ts1"].astype(np.int64), rec["ts2"].astype(np.int64),
                      rec["c"].astype(np.int64), inv, t, cmin, p.t_f2_addr)
        # (the guess stays whole, as the check of guesses sees it: a closed
        # drop of its key never reaches its address, whatever the guess)
        reach = cl & ~cd
        fkeys = np.array(keys, dtype=L.FLOW_KEY)
        fkeys["dst"] = akeys[inv]
        acls = np.zeros(len(cl), dtype=np.int64)
        acd = reach
        if reach.any():
            acls = f._classes(fkeys, reach)
            acd = reach & (acls == 0)
        return cls(keys=akeys, h=h, slots=slots, exists=exists, rec=rec, inv=inv, cl=cl,
                   cls=acls, cd=acd, anycd=bool(acd.any()), fkeys=fkeys, cmin=cmin, kcd=cd)

    def count(self, over_a: Array, f_ts1: Array, f_started: Array, t: Array,
              p: FilterParams) -> None:
        """Count the packets into their address: those past the per-source check
        (not a closed drop of their key) and the address's closed drops."""
        counted = ~over_a & ~self.kcd  # (the address's closed drops are never over)
        self.counted = counted
        self.order = np.argsort(self.inv, kind="stable")
        s = self.order[counted[self.order]]
        a = _aggregate(s, self.inv, t, f_ts1, f_started, self.exists,
                       self.rec["ts1"].astype(np.int64), self.rec["ts2"].astype(np.int64),
                       self.rec["c"].astype(np.int64), self.rec["kc"].astype(np.int64),
                       p.t_t1)
        self.agg, self.n = a, a.n
        cl_s, cd_s = self.cl[s], self.cd[s]
        client = cl_s & (self.cls[s] == L.Known.CLIENT)
        self.heavy = cl_s & ~cd_s & ~client
        cnt = a.cs
        if client.any():
            cum = np.cumsum(client)
            a.kc = a.kc + cum - (cum[a.start] - client[a.start])
            cnt = np.where(client, a.kc, a.cs)
        self.cnt, self.cd_s = cnt, cd_s
        self.over = ((a.dwin > p.t_t3) & rate_exceeds_array(cnt, a.dwin, p.t_f2_addr)
                     & ~cd_s & ~self.heavy)

    def wrong_guesses(self, f: UserFilter, bad: Array | None, t: Array) -> Array | None:
        """The packets from each address's first wrong guess (of its own closure,
        or of one of its keys': ``bad``) on."""
        a = self.agg
        assert a is not None
        assert self.order is not None
        assert self.counted is not None
        abad = f._wrong_guesses(self.cl, t, self.order, self.inv, self.counted, a.gs, a.ts1s,
                                a.tss, a.cs, self.cmin, f.params.t_f2_addr)
        if bad is None and abad is None:
            return None
        wrong = np.zeros(len(self.inv), dtype=bool)
        for b in (bad, abad):
            if b is not None:
                wrong |= b
        pos = np.arange(len(self.inv))
        firstbad = np.full(len(self.keys), len(self.inv), dtype=np.int64)
        np.minimum.at(firstbad, self.inv[wrong], pos[wrong])
        out: Array = pos >= firstbad[self.inv]
        return out

    def store(self, f: UserFilter, d_slots: Array, d_new: Array, d_fresh_keys: Array,
              d_fresh: Array, d_fresh_h: Array, d_keep: Array, d_fired: Array) -> None:
        """Write the keys' records (``d_*``) and the addresses' back in one go;
        ``d_fired``: the packets their key's check judged (their address's
        check is not reached, nor its warning)."""
        a = self.agg
        assert a is not None
        assert self.over is not None
        assert self.heavy is not None
        assert self.cd_s is not None
        p = f.params
        fired_s = d_fired[a.s]
        self.over &= ~fired_s
        self.heavy &= ~fired_s
        warn, warn_ts = _warnings(self.over | self.cd_s, a.gs, a.tss,
                                  self.rec["warn_ts"].astype(np.int64), p.warn_period)
        self.warn = warn
        f.dsts.put(d_slots, d_new)
        keys, vals, hs = [d_fresh_keys], [d_fresh], [d_fresh_h]
        if a.n:
            last = np.append(np.flatnonzero(a.first)[1:], a.n) - 1
            gl = a.gs[last]
            new = self.rec[gl]
            new["ts1"], new["ts2"], new["c"] = a.ts1s[last], a.tss[last], a.cs[last]
            new["kc"], new["warn_ts"] = a.kc[last], warn_ts[gl]
            have = self.exists[gl]
            f.dsts.put(self.slots[gl[have]], new[have])
            keys.append(self.keys[gl[~have]])
            vals.append(new[~have])
            hs.append(self.h[gl[~have]])
        fk = np.concatenate(keys, dtype=L.DST_KEY)
        if len(fk):
            f.dsts.make_room(len(fk), np.concatenate([d_keep, self.slots[self.exists]]))
            f.dsts.insert(fk, np.concatenate(vals, dtype=L.DST), np.concatenate(hs))

    def judge(self, f: UserFilter, idx: Array, action: Array, reason: Array,
              events: list[tuple[Array, Array]]) -> None:
        """The address's verdicts: its closed drops, and the packets its own
        check drops (a known client over its limit, a heavy source)."""
        a = self.agg
        assert a is not None
        assert self.over is not None
        assert self.heavy is not None
        assert self.cd_s is not None
        assert self.cnt is not None
        judged = self.over | self.cd_s | self.heavy
        if judged.any():
            assert self.warn is not None
            f._judge(self.fkeys, a.s, idx[a.s], a.tss, judged, self.warn, self.cnt, a.dwin,
                     L.EventKind.DST_OVERLOAD, action, reason, events, closed=~self.over)



def _under(count: Array, delta: Array) -> Array:
    """Where ``delta`` (signed, in two's complement in a u64) would take the
    unsigned ``count`` below zero: the control program's ``c < 0 - delta``
    for a negative delta."""
    negative = (delta >> np.uint64(63)) == 1
    out: Array = negative & (count < np.uint64(0) - delta)
    return out


def _max_store(cur: Array, v: Array) -> Array:
    """``max_store`` of the control program: ``v`` if set and later (wrapping compare)."""
    later = (v != 0) & ((v.astype(np.uint64) - cur.astype(np.uint64)).view(np.int64) > 0)
    out: Array = np.where(later, v, cur)
    return out


def _warnings(over: Array, g: Array, ts: Array, w0: Array, period: int
              ) -> tuple[Array, Array]:
    """Which over-limit packets warn (one per record per ``period``), and each
    group's last warning time.  ``g`` groups the packets (sorted), ``ts`` their
    times (non-decreasing inside a group), ``w0`` each group's stored ``warn_ts``."""
    warned = np.zeros(len(g), dtype=bool)
    w_final = w0.copy()
    ov = np.flatnonzero(over)
    if len(ov) == 0:
        return warned, w_final
    og = g[ov]
    ug, gs = np.unique(og, return_index=True)
    ge = np.append(gs[1:], len(og))
    w = w0[ug]
    lastt = ts[ov[ge - 1]]
    due = (w == 0) | (lastt - w >= period)
    for k in np.flatnonzero(due).tolist():  # only records that warn in this batch
        tt = ts[ov[gs[k] : ge[k]]]
        cur = int(w[k])
        j = 0
        while j < len(tt):
            if cur != 0:
                j += int(np.searchsorted(tt[j:], cur + period, side="left"))
                if j >= len(tt):
                    break
            warned[ov[gs[k] + j]] = True
            cur = int(tt[j])
            j += 1
        w_final[ug[k]] = cur
    return warned, w_final


def _distinct_runs(entries: Array) -> Iterable[tuple[int, int]]:
    """Split a batch into consecutive runs in which no key repeats (per kind)."""
    n = len(entries)
    if n == 0:
        return []
    op = entries["op"].astype(np.int64)
    kind = np.where((op & OP_READ) != 0, 0, np.where((op & OP_FLOW) != 0, 0, 1))
    raw = np.zeros((n, L.FLOW_KEY.itemsize + 1), dtype=np.uint8)
    raw[:, :-1] = np.ascontiguousarray(entries["key"]).view(np.uint8).reshape(n, -1)
    raw[kind == 1, :16] = 0  # destination operations use key.dst only
    raw[:, -1] = kind
    v = raw.view(np.dtype((np.void, raw.shape[1]))).reshape(n)
    _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
    if counts.max() == 1:
        return [(0, n)]
    runs = []
    lo = 0
    seen: set[int] = set()
    for i, k in enumerate(inv.reshape(-1).tolist()):
        if k in seen:
            runs.append((lo, i))
            lo = i
            seen = set()
        seen.add(k)
    runs.append((lo, n))
    return runs
