"""The executable specification of xpro's algorithms.

This module is the reference the kernel program (``bpf/xpro.bpf.c``) and the
sync (Algorithm 1) are checked against.  It is pure Python and favours being
obviously right over being fast.  Line numbers refer to the algorithms of the
X-Pro paper (Al Atiiq and Gehrmann, SEC@SAC '21, section 5); the decisions
taken where the paper is ambiguous are in ``docs/semantics.rst`` (the filter)
and ``docs/sync.rst`` (the sync), cited here by section.

Keys are the exact bytes the kernel uses (:data:`xpro.core.layout.FLOW_KEY`):
16-byte source, 16-byte destination address, destination port in network
byte order, protocol, one pad byte.  Times are integer nanoseconds, rates are
packets per second, and every rate comparison is exact integer arithmetic
(``count * 1e9 > limit * window``), as in the kernel.

What a sync round pulls -- candidates near T_F1, the master's destination
partials, the known clients of closed destinations -- is specified beside
this module, on top of :func:`merge`, in :mod:`xpro.core.pull` (its
:class:`~xpro.core.pull.MeshModel` runs proxies sharing a master under
either pull; docs/sync.rst, "What a round pulls").
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xpro.core.layout import (
    DST_ADDR_PORT,
    DST_PAD_ADDR,
    DST_PAD_CLOSED,
    MALFORMED_PASS,
    MAX_EXTHDR,
    MAX_VLAN,
    MODE_MONITOR,
    XDP_DROP,
    XDP_PASS,
    EventKind,
    Known,
    Reason,
)

NS_PER_S = 1_000_000_000

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

IPPROTO_HOPOPTS = 0
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_AH = 51
IPPROTO_DSTOPTS = 60
IPPROTO_SCTP = 132
IPPROTO_UDPLITE = 136

_PORT_PROTOS = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_UDPLITE})
_EXT_HEADERS = frozenset(
    {IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_AH, IPPROTO_FRAGMENT}
)
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


# --------------------------------------------------------------------------
# Parsing (docs/semantics.rst, "Parsing")
# --------------------------------------------------------------------------


class ParseStatus(enum.Enum):
    OK = 0
    NON_IP = 1
    MALFORMED = 2


@dataclass(frozen=True)
class Parsed:
    """What the parser found: a status and, when OK, the 36-byte key of the
    packet with its full source address (the allow and deny lists match it;
    :func:`flow_key` masks the source for the flow) and its family."""

    status: ParseStatus
    key: bytes = b""
    ipv6: bool = False  # an IPv6 packet (by ethertype), else IPv4

    @property
    def src(self) -> bytes:
        return self.key[:16]

    @property
    def dst(self) -> bytes:
        """The 20-byte destination key."""
        return self.key[16:]


_NON_IP = Parsed(ParseStatus.NON_IP)
_MALFORMED = Parsed(ParseStatus.MALFORMED)


def _key(src: bytes, dst: bytes, port: bytes = b"\0\0", proto: int = 0) -> bytes:
    return src + dst + port + bytes((proto, 0))


def parse(frame: bytes, dst_mode: int) -> Parsed:
    """Parse an Ethernet frame as ``parse_packet()`` in ``bpf/parsing.h`` does.

    - Ethernet, then up to two 802.1Q/802.1ad tags.  A frame too short for
      its Ethernet header or a tag is not IP: it passes.  A third tag is
      malformed (the parser walks no further, and what it carries must not
      pass uncounted).  Any other ethertype (ARP, LLDP) is not IP: it passes.
    - IPv4: version 4, IHL >= 5, the header and ``tot_len`` inside the frame
      and ``tot_len >= header``; otherwise malformed.  Trailing padding
      beyond ``tot_len`` is fine.  A fragment (MF set or an offset) keys on
      addresses only.
    - IPv6: version 6, the payload inside the frame; extension headers
      (hop-by-hop, routing, destination options, AH, fragment) are walked,
      at most ``MAX_EXTHDR`` of them, each inside the payload; a deeper
      chain is malformed.  A fragment header makes it a fragment, but for an
      atomic fragment (offset 0 and M 0, RFC 6946: a whole datagram).
    - In ``addr+port`` mode the destination key adds the protocol and, for
      TCP/UDP/SCTP/UDP-Lite, the destination port (4 bytes of L4 header
      must be inside the IP payload, or the packet is malformed).
    """
    n = len(frame)
    if n < 14:
        return _NON_IP
    eth_type = int.from_bytes(frame[12:14], "big")
    off = 14
    for _ in range(MAX_VLAN):
        if eth_type not in (ETH_P_8021Q, ETH_P_8021AD):
            break
        if off + 4 > n:
            return _NON_IP
        eth_type = int.from_bytes(frame[off + 2 : off + 4], "big")
        off += 4
    if eth_type in (ETH_P_8021Q, ETH_P_8021AD):
        return _MALFORMED  # a tag beyond MAX_VLAN: what it carries is not seen

    frag = False
    if eth_type == ETH_P_IP:
        if off + 20 > n:
            return _MALFORMED
        vihl = frame[off]
        hl = (vihl & 0xF) * 4
        if vihl >> 4 != 4 or hl < 20 or off + hl > n:
            return _MALFORMED
        tot = int.from_bytes(frame[off + 2 : off + 4], "big")
        if tot < hl or off + tot > n:
            return _MALFORMED
        frag = (int.from_bytes(frame[off + 6 : off + 8], "big") & 0x3FFF) != 0
        proto = frame[off + 9]
        src = _V4_MAPPED + frame[off + 12 : off + 16]
        dst = _V4_MAPPED + frame[off + 16 : off + 20]
        l4off, l4end = off + hl, off + tot
    elif eth_type == ETH_P_IPV6:
        if off + 40 > n or frame[off] >> 4 != 6:
            return _MALFORMED
        l4end = off + 40 + int.from_bytes(frame[off + 4 : off + 6], "big")
        if l4end > n:
            return _MALFORMED
        proto = frame[off + 6]
        src = frame[off + 8 : off + 24]
        dst = frame[off + 24 : off + 40]
        l4off = off + 40
        for _ in range(MAX_EXTHDR):
            if proto in (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS):
                if l4off + 2 > l4end:
                    return _MALFORMED
                length = (frame[l4off + 1] + 1) * 8
            elif proto == IPPROTO_AH:
                if l4off + 2 > l4end:
                    return _MALFORMED
                length = (frame[l4off + 1] + 2) * 4
            elif proto == IPPROTO_FRAGMENT:
                if l4off + 8 > l4end:
                    return _MALFORMED
                length = 8
                # an atomic fragment (offset 0, M 0: RFC 6946) is a whole datagram
                frag = frag or (int.from_bytes(frame[l4off + 2 : l4off + 4], "big") & 0xFFF9) != 0
            else:
                break
            proto = frame[l4off]
            l4off += length
            if l4off > l4end:
                return _MALFORMED
        else:
            if proto in _EXT_HEADERS:
                return _MALFORMED
    else:
        return _NON_IP

    ipv6 = eth_type == ETH_P_IPV6
    if dst_mode != DST_ADDR_PORT or frag:
        return Parsed(ParseStatus.OK, _key(src, dst), ipv6)
    port = b"\0\0"
    if proto in _PORT_PROTOS:
        if l4off + 4 > l4end:
            return _MALFORMED
        port = frame[l4off + 2 : l4off + 4]
    return Parsed(ParseStatus.OK, _key(src, dst, port, proto), ipv6)


# --------------------------------------------------------------------------
# Source prefixes (docs/semantics.rst, "Source prefixes")
# --------------------------------------------------------------------------


def source_mask(ipv6: bool, prefix_v4: int, prefix_v6: int) -> bytes:
    """The 16-byte mask of a flow's source address.

    An IPv6 source keeps its first ``prefix_v6`` bits; an IPv4 source (the
    key holds ``::ffff:a.b.c.d``) keeps the mapped prefix and the first
    ``prefix_v4`` bits of its address.  The family is the packet's (its
    ethertype), not the address's: an IPv6 packet from ``::ffff:a.b.c.d`` is
    an IPv6 source.
    """
    bits = prefix_v6 if ipv6 else 96 + prefix_v4
    return ((1 << 128) - (1 << (128 - bits))).to_bytes(16, "big")


def mask_source(src: bytes, ipv6: bool, prefix_v4: int, prefix_v6: int) -> bytes:
    """``src`` (16 bytes) masked to its family's prefix length."""
    mask = int.from_bytes(source_mask(ipv6, prefix_v4, prefix_v6), "big")
    return (int.from_bytes(src, "big") & mask).to_bytes(16, "big")


def flow_key(parsed: Parsed, params: FilterParams) -> bytes:
    """The flow key of a parsed packet: its source masked to the configured
    prefix (``params.source_prefix_v4`` / ``source_prefix_v6``), the
    destination key as parsed.  The allow and deny lists match the full
    source, before this."""
    src = mask_source(parsed.src, parsed.ipv6, params.source_prefix_v4,
                      params.source_prefix_v6)
    return src + parsed.key[16:]


def source_text(src: bytes, params: FilterParams) -> str:
    """A flow key's source as an operator reads it: the prefix it stands for
    (``2001:db8:1:2::/64``, ``192.0.2.0/24``), or the address when the
    prefix is a whole address (``/128``, ``/32``).

    The family is read from the address: a key in ``::ffff:0:0/96`` is an
    IPv4 source (an IPv6 packet's mapped source masked to ``/96`` or longer
    reads as IPv4 too; nothing else looks so).
    """
    ip = ipaddress.IPv6Address(src.ljust(16, b"\0"))
    mapped = ip.ipv4_mapped
    if mapped is not None:
        if params.source_prefix_v4 >= 32:
            return str(mapped)
        return str(ipaddress.IPv4Network((mapped, params.source_prefix_v4), strict=False))
    if params.source_prefix_v6 >= 128:
        return str(ip)
    return str(ipaddress.IPv6Network((ip, params.source_prefix_v6), strict=False))


# --------------------------------------------------------------------------
# Records, parameters
# --------------------------------------------------------------------------


def window_over(now: Any, ts2: Any, t_t1: int) -> Any:
    """Whether a record's window is over at ``now`` (ints or int64 arrays):
    idle for longer than T_T1 (Algorithm 2, line 4), or its last packet more
    than T_T1 *ahead* of ``now``: the clock was stepped back, and judging that
    window would wait, unfiltered, for the clock to catch up
    (docs/semantics.rst, "Clock and time").  Either way a packet starts a new
    window."""
    return abs(now - ts2) > t_t1


def rate_exceeds(count: int, window: int, limit: int) -> bool:
    """``count / window > limit`` with window in ns and limit in packets/s.

    Division-free and exact: ``count * 1e9 > limit * window`` (the kernel
    does the same products in 128 bits).
    """
    return count * NS_PER_S > limit * window


@dataclass
class FlowRecord:
    """A proxy's local record of one (source, destination key) flow.

    ``ts1``/``ts2``/``c`` are the paper's ts1', ts2', c'; ``gen`` counts the
    local window resets (Algorithm 2, line 4); ``warn_ts`` is the last
    overload warning.  The paper's ``dc`` and ``mark`` are not stored in the
    kernel record: the sync derives them from its baseline (:class:`Synced`,
    :func:`local_view`), so the packet path makes one atomic add and the sync
    never writes a field the packet path writes (docs/semantics.rst, "Record ownership").
    """

    ts1: int
    ts2: int
    c: int
    gen: int = 0
    warn_ts: int = 0


@dataclass(frozen=True)
class Synced:
    """The sync's baseline for a flow: c' and gen right after its last update."""

    c: int
    gen: int


@dataclass
class DstRecord:
    """The per-destination aggregate (ts1*, ts2*, c*) (docs/semantics.rst, "The
    per-destination check").

    ``c`` counts the packets admitted past the per-source check and those
    dropped because the destination was closed; ``kc`` the packets of known
    clients (counted per packet while closed, recomputed by the sync).
    """

    ts1: int
    ts2: int
    c: int
    warn_ts: int = 0
    kc: int = 0


def closed_key(dst: bytes) -> bytes:
    """The flow key of a destination's closed-drops record: src = 16 zero bytes,
    the 20-byte destination key ``dst`` with the ``DST_PAD_CLOSED`` bit set in
    its pad (``DST_PAD_CLOSED`` for a packet's key, ``DST_PAD_ADDR_CLOSED``
    for an address aggregate's)."""
    return bytes(16) + dst[:19] + bytes((dst[19] | DST_PAD_CLOSED,))


def is_closed_key(key: bytes) -> bool:
    """Whether a 36-byte flow key is a closed-drops record's (no packet's key is)."""
    return bool(key[35] & DST_PAD_CLOSED)


def address_key(dst: bytes) -> bytes:
    """The key of the address aggregate of a 20-byte destination key (``addr+port``
    mode): its address, port 0, protocol 0, ``pad = DST_PAD_ADDR``.  Closed-drops
    records of the address's keys map to it too (the pad is replaced)."""
    return dst[:16] + bytes((0, 0, 0, DST_PAD_ADDR))


def is_address_key(dst: bytes) -> bool:
    """Whether a 20-byte destination key is an address aggregate's (or its
    closed-drops record's): no packet's key is."""
    return bool(dst[19] & DST_PAD_ADDR)


@dataclass(frozen=True)
class Prefix:
    """An address prefix over the 16-byte (IPv4-mapped) address space."""

    network: int
    length: int

    @classmethod
    def parse(cls, text: str) -> Prefix:
        net = ipaddress.ip_network(text, strict=False)
        if isinstance(net, ipaddress.IPv4Network):
            base = int.from_bytes(_V4_MAPPED + net.network_address.packed, "big")
            return cls(base, 96 + net.prefixlen)
        return cls(int(net.network_address), net.prefixlen)

    def contains(self, addr16: bytes) -> bool:
        shift = 128 - self.length
        return (int.from_bytes(addr16, "big") >> shift) == (self.network >> shift)

    def holds(self, other: Prefix) -> bool:
        """Whether every address of ``other`` lies in this prefix."""
        return self.length <= other.length and self.contains(other.network.to_bytes(16, "big"))

    @property
    def is_v4(self) -> bool:
        """Whether it is an IPv4 prefix (it lies in :data:`V4_SPACE`)."""
        return self.length >= 96 and self.network >> 32 == 0xFFFF


#: The IPv4-mapped space ``::ffff:0:0/96``, where the 16-byte form holds IPv4.
V4_SPACE = Prefix(0xFFFF << 32, 96)


def longest_match(prefixes: Mapping[Prefix, int], addr16: bytes) -> int | None:
    """The value of the longest prefix containing ``addr16`` (an LPM trie)."""
    best: tuple[int, int] | None = None
    for p, value in prefixes.items():
        if p.contains(addr16) and (best is None or p.length > best[0]):
            best = (p.length, value)
    return None if best is None else best[1]


@dataclass(frozen=True)
class FilterParams:
    """What the kernel program reads from its configuration (``struct xpro_config``).

    Times in ns, rates in packets/s.  ``allow``/``deny`` are source prefixes;
    ``dst_policy`` maps destination prefixes to a mode.  ``source_prefix_v4``
    (0-32) and ``source_prefix_v6`` (0-128) are the bits of a source address
    its flows are keyed on (:func:`flow_key`).
    """

    t_t1: int = 10 * NS_PER_S
    t_t2: int = 1 * NS_PER_S
    t_t3: int = 1 * NS_PER_S
    t_f1: int = 100
    t_f2: int = 10_000
    warn_period: int = 1 * NS_PER_S
    mode: int = 0
    dst_mode: int = 0
    malformed_policy: int = 0
    events: bool = True
    allow: frozenset[Prefix] = frozenset()
    deny: frozenset[Prefix] = frozenset()
    dst_policy: Mapping[Prefix, int] = field(default_factory=dict)
    source_prefix_v4: int = 32
    source_prefix_v6: int = 64
    #: T_F2 of an address aggregate (``addr+port`` mode); None: ``t_f2``.
    t_f2_address: int | None = None

    @property
    def t_f2_addr(self) -> int:
        """The limit of an address aggregate (docs/semantics.rst, "Address aggregates")."""
        return self.t_f2 if self.t_f2_address is None else self.t_f2_address

    def __post_init__(self) -> None:
        if not 0 <= self.source_prefix_v4 <= 32:
            raise ValueError(f"source_prefix_v4 {self.source_prefix_v4}: 0 to 32")
        if not 0 <= self.source_prefix_v6 <= 128:
            raise ValueError(f"source_prefix_v6 {self.source_prefix_v6}: 0 to 128")


@dataclass(frozen=True)
class Event:
    """An overload warning (the ring buffer's ``struct xpro_event``)."""

    kind: EventKind
    key: bytes  # for DST_OVERLOAD the source bytes are zero
    ts: int
    c: int
    window: int


@dataclass(frozen=True)
class Verdict:
    action: int  # XDP_PASS or XDP_DROP
    reason: Reason


def flow_mode(p: FilterParams, key: bytes) -> int:
    """The enforcement mode of a flow (its 36-byte key): the destination prefix
    policy, else the global mode."""
    if p.dst_policy:
        m = longest_match(p.dst_policy, key[16:32])
        if m is not None:
            return m
    return p.mode


class Filter:
    """The state of one proxy's kernel program, and Algorithm 2 over it.

    ``packet(frame, now)`` is the per-packet procedure; ``flows``, ``dsts``,
    ``stats`` and ``events`` mirror the program's maps; ``known`` the map the
    daemon writes (flow key -> :class:`~xpro.core.layout.Known`).
    """

    def __init__(self, params: FilterParams) -> None:
        self.params = params
        self.flows: dict[bytes, FlowRecord] = {}
        self.dsts: dict[bytes, DstRecord] = {}
        self.known: dict[bytes, int] = {}
        self.stats: list[list[int]] = [[0, 0] for _ in Reason]
        self.events: list[Event] = []

    def _count(self, reason: Reason, nbytes: int) -> None:
        self.stats[reason][0] += 1
        self.stats[reason][1] += nbytes

    def _verdict(self, action: int, reason: Reason, nbytes: int) -> Verdict:
        self._count(reason, nbytes)
        return Verdict(action, reason)

    def _warn_due(self, rec: FlowRecord | DstRecord, now: int) -> bool:
        """At most one warning per record per ``warn_period`` (docs/semantics.rst,
        "Counters and warnings")."""
        if rec.warn_ts and now - rec.warn_ts < self.params.warn_period:
            return False
        rec.warn_ts = now
        return True

    def _mode(self, key: bytes) -> int:
        return flow_mode(self.params, key)

    def packet(self, frame: bytes, now: int) -> Verdict:
        """Algorithm 2 for one frame arriving at time ``now`` (ns)."""
        p = self.params
        size = len(frame)
        parsed = parse(frame, p.dst_mode)
        if parsed.status is ParseStatus.NON_IP:
            return self._verdict(XDP_PASS, Reason.NON_IP, size)
        if parsed.status is ParseStatus.MALFORMED:
            action = XDP_PASS if p.malformed_policy == MALFORMED_PASS else XDP_DROP
            return self._verdict(action, Reason.MALFORMED, size)

        # Allow, then deny, before any rate rule, on the full source; then
        # the flow's source is its prefix (docs/semantics.rst).
        if p.allow and not (parsed.ipv6 and parsed.src[:12] == _V4_MAPPED) and any(
                q.contains(parsed.src) for q in p.allow):  # a mapped IPv6 source: not allowed
            return self._verdict(XDP_PASS, Reason.ALLOW, size)
        if p.deny and any(q.contains(parsed.src) for q in p.deny):
            return self._verdict(XDP_DROP, Reason.DENY, size)
        key = flow_key(parsed, p)

        # A closed destination first (judged on its record before this
        # packet): unknown sources go no further (docs/semantics.rst).  In
        # addr+port mode the address's own aggregate is judged the same way
        # right after its key's ("Address aggregates"): one more lookup.
        dkey = parsed.dst
        d = self.dsts.get(dkey)
        closed = d is not None and self.dst_closed(d, now)
        cls = self.known.get(key, 0) if closed else 0
        if d is not None and closed and cls == 0:
            return self._closed_drop(key, d, now, size)
        akey = b""
        a: DstRecord | None = None
        a_closed = False
        a_cls = 0
        if p.dst_mode == DST_ADDR_PORT:
            akey = key[:16] + address_key(dkey)
            a = self.dsts.get(akey[16:])
            a_closed = a is not None and self.dst_closed(a, now, p.t_f2_addr)
            a_cls = self.known.get(akey, 0) if a_closed else 0
            if a is not None and a_closed and a_cls == 0:
                return self._closed_drop(akey, a, now, size)

        # Lines 1-10: find the record, reset it after T_T1 idle, or create it.
        f, started = self._count_flow(key, now)
        # Lines 12-16: the per-source check.
        window = now - f.ts1
        if window > p.t_t2 and rate_exceeds(f.c, window, p.t_f1):
            return self._limit(key, f, now, size, EventKind.SRC_OVERLOAD, f.c, window,
                               Reason.SRC_RATE, Reason.MON_SRC_RATE)

        # Lines 18-25 in O(1): the aggregates count packets admitted past
        # the per-source check (docs/semantics.rst, "The per-destination
        # check"); the address's first, so its count holds the packet whatever
        # its key's verdict.
        if akey:
            a = self._count_dst(akey[16:], a, f, started, now)
            if a_closed and a_cls == Known.CLIENT:
                a.kc += 1
        d = self._count_dst(dkey, d, f, started, now)
        verdict = self._judge_dst(key, d, now, size, closed, cls, p.t_f2)
        if verdict is None and a is not None:
            verdict = self._judge_dst(akey, a, now, size, a_closed, a_cls, p.t_f2_addr,
                                      counted=True)
        return verdict or self._verdict(XDP_PASS, Reason.PASS, size)

    def _count_dst(self, dkey: bytes, d: DstRecord | None, f: FlowRecord, started: bool,
                   now: int) -> DstRecord:
        """Count one admitted packet into the aggregate ``dkey`` (``d``: its record
        at the top of the packet, None if it had none): created from the flow's
        window, a new window after T_T1 idle, ts1* moved back to a flow's
        window that started with this packet."""
        if d is None:
            d = self.dsts.get(dkey)
        if d is None:
            d = DstRecord(ts1=f.ts1, ts2=now, c=0)
            self.dsts[dkey] = d
        elif window_over(now, d.ts2, self.params.t_t1):
            d.ts1, d.c, d.kc = now, 0, 0  # the destination was idle: a new window
        elif started and f.ts1 < d.ts1:
            d.ts1 = f.ts1
        d.c += 1
        d.ts2 = now
        return d

    def _judge_dst(self, key: bytes, d: DstRecord, now: int, size: int, closed: bool,
                   cls: int, limit: int, *, counted: bool = False) -> Verdict | None:
        """The check of an aggregate that counted the packet (``key``: the flow
        key whose destination part is the aggregate's); None: it passes.
        ``closed``/``cls`` were judged at the top of the packet; ``counted``:
        a known client's packet is already in ``kc``."""
        count = d.c
        if closed:
            if cls != Known.CLIENT:  # heavy: never served while closed
                return self._limit(key, None, now, size, EventKind.DST_OVERLOAD, 0, 0,
                                   Reason.DST_CLOSED, Reason.MON_DST_CLOSED)
            if not counted:
                d.kc += 1  # a known client: closed to it too once their total is over
            count = d.kc
        window = now - d.ts1
        if window > self.params.t_t3 and rate_exceeds(count, window, limit):
            return self._limit(key, d, now, size, EventKind.DST_OVERLOAD, count, window,
                               Reason.DST_RATE, Reason.MON_DST_RATE)
        return None

    def dst_closed(self, d: DstRecord, now: int, limit: int | None = None) -> bool:
        """Whether a destination is closed to unknown sources: not idle, and its
        aggregate over ``limit`` (T_F2 by default) after T_T3."""
        p = self.params
        window = now - d.ts1
        return (not window_over(now, d.ts2, p.t_t1) and window > p.t_t3
                and rate_exceeds(d.c, window, p.t_f2 if limit is None else limit))

    def _count_flow(self, key: bytes, now: int) -> tuple[FlowRecord, bool]:
        """Lines 1-11: count one packet into the record of ``key`` (created, or
        a new window after T_T1 idle); returns it and whether its window
        started with this packet."""
        f = self.flows.get(key)
        started = False
        if f is None:
            f = FlowRecord(ts1=now, ts2=now, c=0)
            self.flows[key] = f
            started = True
        elif window_over(now, f.ts2, self.params.t_t1):
            # Line 4: ts1' = t, c' = 0; dc = 0 and mark = 1 are the new gen.
            f.gen = (f.gen + 1) & 0xFFFFFFFF
            f.ts1, f.c = now, 0
            started = True
        # Line 11 (dc is derived: see local_view).
        f.c += 1
        f.ts2 = now
        return f, started

    def _closed_drop(self, key: bytes, d: DstRecord, now: int, size: int) -> Verdict:
        """An unknown source's packet to a closed destination: counted into the
        destination's closed-drops record (no per-source check) and into c*,
        then dropped as DST_CLOSED with the destination's warning."""
        self._count_flow(closed_key(key[16:]), now)
        d.c += 1
        d.ts2 = now
        return self._limit(key, d, now, size, EventKind.DST_OVERLOAD, d.c, now - d.ts1,
                           Reason.DST_CLOSED, Reason.MON_DST_CLOSED)

    def _limit(self, key: bytes, rec: FlowRecord | DstRecord | None, now: int, size: int,
               kind: EventKind, count: int, window: int, reason: Reason,
               mon_reason: Reason) -> Verdict:
        """The verdict of a rate rule that fired: the warning if due on ``rec``
        (``None``: no warning), then drop, or pass in monitor mode."""
        if rec is not None and self._warn_due(rec, now) and self.params.events:
            wkey = key if kind is EventKind.SRC_OVERLOAD else bytes(16) + key[16:]
            self.events.append(Event(kind, wkey, now, count, window))
        if self._mode(key) == MODE_MONITOR:
            return self._verdict(XDP_PASS, mon_reason, size)
        return self._verdict(XDP_DROP, reason, size)


# --------------------------------------------------------------------------
# Algorithm 1: the merge of one flow (docs/sync.rst, "Deviations from the paper")
# --------------------------------------------------------------------------

#: r is kept as a fixed-point number with this denominator, so the merge is
#: exact integer arithmetic everywhere it runs (Python, the Redis function).
R_DEN = 1024


@dataclass(frozen=True)
class SyncParams:
    """The thresholds the sync uses: T_T1 and T_T4 in ns, r > 1 as r_q/R_DEN."""

    t_t1: int = 10 * NS_PER_S
    t_t4: int = 5 * NS_PER_S
    r_q: int = 2 * R_DEN

    @classmethod
    def from_factor(cls, t_t1: int, t_t4: int, r: float) -> SyncParams:
        return cls(t_t1=t_t1, t_t4=t_t4, r_q=round(r * R_DEN))


@dataclass(frozen=True)
class Local:
    """The local side of a merge: ts1', ts2', c', dc, mark."""

    ts1: int
    ts2: int
    c: int
    dc: int
    mark: int


@dataclass(frozen=True)
class Master:
    """The master store's record of a flow: ts1, ts2, c."""

    ts1: int
    ts2: int
    c: int


def local_view(rec: FlowRecord, base: Synced | None) -> Local:
    """The paper's (ts1', ts2', c', dc, mark) of a kernel record.

    ``dc`` is what this proxy counted since the sync last updated the record:
    ``c' - base.c``.  If the window was reset here since then (``gen``
    moved), ``mark`` is 1 and every packet in the window is local: ``dc = c'``.
    A record the sync never saw has no baseline: all of it is local.
    """
    if base is None or base.gen != rec.gen:
        return Local(rec.ts1, rec.ts2, rec.c, rec.c, 0 if base is None else 1)
    return Local(rec.ts1, rec.ts2, rec.c, rec.c - base.c, 0)


def merge(
    local: Local | None, master: Master | None, params: SyncParams, span: int | None = None
) -> tuple[Local | None, Master | None]:
    """Algorithm 1, lines 5-33, for one flow key: returns (local', master').

    - Both exist (lines 6-25).  If this proxy reset the window
      (``mark``) and its window starts more than T_T1 after the master's,
      the local window replaces the master's (lines 6-8).  Otherwise the
      windows are joined: the later ts2 wins (11-12); a window longer than
      T_T4 is shortened by the factor r and the master count divided by r
      (13-15, ``floor(c / r)``); the local window then starts where the
      master's does (19-22, changed from the paper: see docs/sync.rst).
      The master count gains this proxy's packets since the last sync and
      the local count becomes the global one (24).
    - Only in the master (27-28): the local record is created from it.
    - Only local (31-33): the master record is created from it, and -- a fix
      to the paper, docs/sync.rst "Deviations from the paper" -- ``dc`` and
      ``mark`` are cleared, or those packets would be added again at the next
      sync.

    ``mark`` is cleared and ``dc`` consumed in every case that writes the
    master; ``r`` divides with ``R_DEN`` fixed point (docs/sync.rst, "Deviations from the paper").

    Where the local record takes the master's window (both exist, or only
    the master), it takes at most ``span`` ns of it (:func:`adopt`; None:
    all of it).
    """
    if master is None:
        if local is None:
            return None, None
        return (
            Local(local.ts1, local.ts2, local.c, 0, 0),
            Master(local.ts1, local.ts2, local.c),
        )
    if local is None:
        return adopt(master.ts1, master.ts2, master.c, 0, span), master

    ts1p, ts2p, cp, dcp = local.ts1, local.ts2, local.c, local.dc
    ts1, ts2, c = master.ts1, master.ts2, master.c
    if local.mark == 1 and ts1p - ts1 > params.t_t1:  # line 6
        return Local(ts1p, ts2p, cp, 0, 0), Master(ts1p, ts2p, cp)  # lines 7-8
    if ts2p < ts2:  # line 11
        ts2p = ts2  # line 12
    elif ts2p - ts1 > params.t_t4:  # line 13
        ts1p = ts2p - (ts2p - ts1) * R_DEN // params.r_q  # line 14
        c = c * R_DEN // params.r_q  # line 15
        ts1, ts2 = ts1p, ts2p
    else:
        ts2 = ts2p  # line 17
    # Lines 19-22, changed: the local window starts where the master's does.
    # The paper's line 22 (ts1 <- ts1' when the local window is longer than
    # T_T4) undoes another proxy's shortening (line 14) while keeping its
    # c / r, so every round halves the count over the full window and a
    # steady distributed attack falls under T_F1 (docs/evaluation.rst).
    ts1p = ts1  # line 20, in both directions
    cp = c + dcp  # line 24
    return adopt(ts1p, ts2p, c, dcp, span), Master(ts1, ts2, cp)


def adopt(ts1: int, ts2: int, c: int, dc: int, span: int | None) -> Local:
    """The local record a merge leaves: the master's window ``[ts1, ts2]``
    and count ``c``, plus this proxy's ``dc``, the window cut to ``span`` ns
    at most (docs/sync.rst, "How far back a local window reaches"; None:
    not cut).

    The sync's span is T_T4, or the time since the record's ``dc`` began to
    count if that is longer (every packet in it was counted since).  A
    longer master window keeps its rate: its count is scaled by the ratio of
    the windows (a float64 product, floored) and ``dc`` is added whole, so
    the proxy's own packets are never spread over more than the span.  The
    master record is not changed.  Without the cut, one master record whose
    window starts long ago -- anyone who can write the store can write it --
    made a proxy's own packets count over years, and a flow at 10 x T_F1
    passed it.
    """
    if span is not None and ts2 - ts1 > span:
        c = min(c, math.floor(float(c) * float(span) / float(ts2 - ts1)))
        ts1 = ts2 - span
    return Local(ts1, ts2, c + dc, 0, 0)


def aggregates_of(key: bytes, dst_mode: int) -> list[bytes]:
    """The 20-byte keys of the aggregates a flow record counts in (the sync's
    recompute): a real flow, in its destination key's and, in ``addr+port``
    mode, its address's (:func:`address_key`); a closed-drops record, in the
    aggregate whose drops it holds only."""
    dst = key[16:]
    if is_closed_key(key):
        return [dst[:19] + bytes((dst[19] & ~DST_PAD_CLOSED,))]
    if dst_mode == DST_ADDR_PORT:
        return [dst, address_key(dst)]
    return [dst]


def recent_start(rec: DstRecord, history: Iterable[tuple[int, int]], now: int,
                 params: FilterParams, limit: int, budget: int | None = None) -> int:
    """The window start the sync writes for the aggregate ``rec`` (what
    :func:`recompute_dst` gives at ``now``), given ``history``: the
    ``(time, c*)`` it kept at the aggregate's earlier recomputes, at most one
    every T_T3 / 6 (docs/semantics.rst, "The recent rate").

    ``ts1*`` is the start of the oldest live flow, so a flood that starts
    while the destination has long-established clients is judged over a
    window that opened before it.  The count the aggregate gained since the
    latest recompute more than T_T3 ago, over the time since, is its recent
    rate.  When that is over ``limit`` and over the rate of the whole window,
    the start is moved forward so that ``c* / (now - ts1*)`` is the recent
    rate; otherwise it stays.  The gain is held to ``budget`` packets (the
    most the mesh's published rates back since then) where one is given.
    The window stays longer than T_T3, and the count is unchanged.
    """
    past = [(t, c) for t, c in history if now - t > params.t_t3]
    if not past:
        return rec.ts1
    t_h, c_h = max(past)
    span = now - t_h
    gain = rec.c - c_h if budget is None else min(rec.c - c_h, budget)
    if gain <= 0 or not rate_exceeds(gain, span, limit):
        return rec.ts1
    return max(rec.ts1, now - span * rec.c // gain)


def recompute_dst(
    records: Iterable[tuple[bytes, FlowRecord]], now: int, params: FilterParams,
    known: Mapping[bytes, int] | None = None, *, address: bool = False,
) -> DstRecord | None:
    """The exact per-destination aggregate the sync writes (docs/semantics.rst,
    "The per-destination check").

    ``records`` are one aggregate's (flow key, record) pairs
    (:func:`aggregates_of`), its closed-drops record (:func:`closed_key`)
    among them if it has one.  Over those not idle for longer than T_T1 (the
    kernel would reset them): the real flows not over T_F1 (their packets are
    dropped by the per-source rule) and the closed-drops record, which is
    never left out for T_F1.  ts1* = min ts1', ts2* = max ts2', c* = sum c';
    kc = sum c' of the included real flows that ``known`` classes as
    :attr:`Known.CLIENT` -- for an address aggregate (``address``), under the
    flow's source and the address's key (docs/semantics.rst, "Address
    aggregates").
    """
    known = known or {}
    live = [
        (k, f)
        for k, f in records
        if now - f.ts2 <= params.t_t1
        and (is_closed_key(k) or not (f.ts2 - f.ts1 > params.t_t2
                                      and rate_exceeds(f.c, f.ts2 - f.ts1, params.t_f1)))
    ]
    if not live:
        return None

    def known_as(k: bytes) -> bytes:
        return k[:16] + address_key(k[16:]) if address else k

    return DstRecord(
        ts1=min(f.ts1 for _, f in live),
        ts2=max(f.ts2 for _, f in live),
        c=sum(f.c for _, f in live),
        kc=sum(f.c for k, f in live
               if not is_closed_key(k) and known.get(known_as(k)) == Known.CLIENT),
    )


def replace(rec: FlowRecord, **changes: int) -> FlowRecord:
    """A copy of ``rec`` with fields changed (for tests and the sync)."""
    return dataclasses.replace(rec, **changes)


def port_bytes(port: int) -> bytes:
    """A port as the key stores it (network byte order)."""
    return struct.pack(">H", port)
