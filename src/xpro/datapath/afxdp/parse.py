"""``bpf/parsing.h`` over a batch of frames, in numpy.

Frames lie anywhere in one byte buffer (the UMEM, or frames packed one after
another by tests): frame ``i`` is ``buf[base[i] : base[i] + lens[i]]``.  Every
rule of :func:`xpro.core.model.parse` is applied to all frames at once; the
bounded walks (VLAN tags, IPv6 extension headers) are a fixed number of
vectorised steps.  No byte outside a frame is ever used: reads past its end
yield 0 and the length checks decide, exactly as in the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from xpro.core import layout as L
from xpro.core import model as M

Array = npt.NDArray[Any]

OK, NON_IP, MALFORMED = 0, 1, 2

_V4_MAPPED = np.frombuffer(b"\0" * 10 + b"\xff\xff", dtype=np.uint8)
_AR16 = np.arange(16, dtype=np.int64)


@dataclass
class Batch:
    """What the parser found for each frame.

    ``status`` is OK / NON_IP / MALFORMED; for OK frames ``keys`` holds the
    key (``FLOW_KEY``) with the full source address (:func:`mask_sources`
    makes it the flow's, after the allow and deny lists), ``proto`` the
    transport protocol, ``l4off`` and ``l4end`` the transport header's
    offset and the IP payload's end (frame offsets), ``frag`` whether it is a
    fragment, ``ipv6`` whether it is IPv6 (by ethertype; else IPv4).
    """

    status: Array
    keys: Array
    proto: Array
    l4off: Array
    l4end: Array
    frag: Array
    ipv6: Array


#: Header bytes gathered per frame for the fast path: Ethernet, two VLAN tags,
#: IPv6 and a transport header fit; frames that need more take the slow path.
WINDOW = 96


def parse_batch(buf: Array, base: Array, lens: Array, dst_mode: int,
                frame_size: int = 0) -> Batch:
    """Parse every frame (see the module docstring) as ``parse_packet()`` does.

    The first :data:`WINDOW` bytes of every frame are gathered once into an
    (n, WINDOW) matrix and parsed from there; the few frames whose headers
    reach beyond it (long IPv6 extension chains) are parsed again straight
    from ``buf``.  ``frame_size`` (the UMEM's) lets frames that all sit at
    one offset in their chunk be gathered as rows of a 2-D view.
    """
    base = np.asarray(base, dtype=np.int64)
    lens = np.asarray(lens, dtype=np.int64)
    hdr = _gather(buf, base, WINDOW, frame_size)
    # Untagged IPv4 without options, the bulk of any flood, has one layout:
    # parsed with constant offsets; everything else takes the general walk.
    simple = ((hdr[:, 12] == 0x08) & (hdr[:, 13] == 0x00) & (hdr[:, 14] == 0x45)
              & (lens >= 34))
    if simple.all():
        return _parse_simple_v4(hdr, lens, dst_mode)
    if not simple.any():
        return _parse_general(buf, base, lens, dst_mode, hdr)
    # a mix: each frame is parsed once, by the walk that fits it
    fast, rest = np.flatnonzero(simple), np.flatnonzero(~simple)
    quick = _parse_simple_v4(hdr[fast], lens[fast], dst_mode)
    out = Batch(*(np.empty(len(lens), dtype=getattr(quick, f.name).dtype)
                  for f in fields(Batch)))
    _put(out, fast, quick)
    _put(out, rest, _parse_general(buf, base[rest], lens[rest], dst_mode, hdr[rest]))
    return out


def _put(into: Batch, rows: Array, part: Batch) -> None:
    """Write the frames of ``part`` into ``into`` at ``rows``."""
    for f in fields(Batch):
        getattr(into, f.name)[rows] = getattr(part, f.name)


def _parse_simple_v4(hdr: Array, lens: Array, dst_mode: int) -> Batch:
    """Frames that are Ethernet + IPv4 with a 20-byte header (at least 34 bytes)."""
    n = len(lens)
    tot = (hdr[:, 16].astype(np.int64) << 8) | hdr[:, 17]
    l4end = 14 + tot
    malformed = (tot < 20) | (l4end > lens)
    frag = ((hdr[:, 20] & 0x3F) | hdr[:, 21]) != 0
    proto = hdr[:, 23].astype(np.int64)
    raw = np.zeros((n, L.FLOW_KEY.itemsize), dtype=np.uint8)
    raw[:, 10:12] = 0xFF
    raw[:, 12:16] = hdr[:, 26:30]
    raw[:, 26:28] = 0xFF
    raw[:, 28:32] = hdr[:, 30:34]
    if dst_mode == L.DST_ADDR_PORT:
        keyed = ~malformed & ~frag
        has_port = keyed & ((proto == M.IPPROTO_UDP) | (proto == M.IPPROTO_TCP)
                            | (proto == M.IPPROTO_SCTP) | (proto == M.IPPROTO_UDPLITE))
        short = has_port & (l4end < 38)
        malformed |= short
        has_port &= ~short
        keyed &= ~short
        raw[has_port, 32:34] = hdr[has_port, 36:38]
        raw[keyed, 34] = proto[keyed]
    raw[malformed] = 0
    status = np.where(malformed, MALFORMED, OK).astype(np.int8)
    keys = raw.view(L.FLOW_KEY).reshape(n)
    return Batch(status, keys, proto, np.full(n, 34, dtype=np.int64), l4end, frag,
                 np.zeros(n, dtype=bool))


def _parse_general(buf: Array, base: Array, lens: Array, dst_mode: int, hdr: Array) -> Batch:
    n = len(base)
    flat = hdr.reshape(-1)
    row0 = np.arange(n, dtype=np.int64) * WINDOW
    beyond = np.zeros(n, dtype=bool)

    def win(off: Array) -> Array:
        ok = off < lens
        inside = off < WINDOW
        np.logical_or(beyond, ok & ~inside, out=beyond)
        v = np.take(flat, row0 + np.minimum(off, WINDOW - 1)).astype(np.int64)
        v[~(ok & inside)] = 0
        return v

    def win16(off: Array) -> Array:
        """16 bytes from ``off`` (the caller checked they lie inside the frame)."""
        lo, hi = int(off.min()), int(off.max())
        if lo == hi and hi + 16 <= WINDOW:  # the common case: one layout for the batch
            same: Array = hdr[:, lo : lo + 16]
            return same
        np.logical_or(beyond, off + 16 > WINDOW, out=beyond)
        idx = (row0 + np.minimum(off, WINDOW - 16))[:, None] + _AR16
        out: Array = np.take(flat, idx)
        return out

    out = _parse(win, win16, n, lens, dst_mode)
    slow = np.flatnonzero(beyond & (out.status != NON_IP))
    if len(slow):
        b2, l2 = base[slow], lens[slow]

        def raw(off: Array) -> Array:
            ok = (off < l2) & (off >= 0)
            v = buf[np.where(ok, b2 + off, 0)].astype(np.int64)
            o: Array = np.where(ok, v, 0)
            return o

        def raw16(off: Array) -> Array:
            o: Array = buf[np.clip(b2[:, None] + off[:, None] + _AR16, 0, len(buf) - 1)]
            return o

        _put(out, slow, _parse(raw, raw16, len(slow), l2, dst_mode))
    return out


def _gather(buf: Array, base: Array, width: int, frame_size: int) -> Array:
    """The first ``width`` bytes at each ``base`` as an (n, width) matrix."""
    n = len(base)
    if n and frame_size and len(buf) % frame_size == 0:
        off = base % frame_size
        o = int(off[0])
        if o + width <= frame_size and bool((off == o).all()):
            chunks = buf.reshape(-1, frame_size)
            out: Array = chunks[base // frame_size, o : o + width]
            return out
    idx = base[:, None] + np.arange(width, dtype=np.int64)
    np.minimum(idx, len(buf) - 1, out=idx)
    gathered: Array = buf[idx]
    return gathered


Reader = Callable[[Array], Array]


def _parse(u8: Reader, addr16: Reader, n: int, lens: Array, dst_mode: int) -> Batch:
    """The rules of ``parse_packet()``, reading bytes through ``u8``/``addr16``."""

    def be16(off: Array) -> Array:
        return (u8(off) << 8) | u8(off + 1)

    status = np.full(n, NON_IP, dtype=np.int8)
    done = lens < 14
    off = np.full(n, 14, dtype=np.int64)
    eth = be16(np.full(n, 12, dtype=np.int64))
    for _ in range(L.MAX_VLAN):
        vlan = ~done & ((eth == M.ETH_P_8021Q) | (eth == M.ETH_P_8021AD))
        if not vlan.any():
            break
        trunc = vlan & (off + 4 > lens)
        done |= trunc  # NON_IP
        step = vlan & ~trunc
        eth = np.where(step, be16(off + 2), eth)
        off = np.where(step, off + 4, off)

    v4 = ~done & (eth == M.ETH_P_IP)
    v6 = ~done & (eth == M.ETH_P_IPV6)
    # a tag beyond MAX_VLAN: what it carries is not seen, and it must not pass as not IP
    malformed = ~done & ((eth == M.ETH_P_8021Q) | (eth == M.ETH_P_8021AD))
    frag = np.zeros(n, dtype=bool)
    proto = np.zeros(n, dtype=np.int64)
    l4off = np.zeros(n, dtype=np.int64)
    l4end = np.zeros(n, dtype=np.int64)
    src_off = np.zeros(n, dtype=np.int64)  # where the 16 (v6) or 4 (v4) source bytes are
    dst_off = np.zeros(n, dtype=np.int64)

    if v4.any():
        vihl = u8(off)
        hl = (vihl & 0xF) * 4
        tot = be16(off + 2)
        bad = ((off + 20 > lens) | (vihl >> 4 != 4) | (hl < 20) | (off + hl > lens)
               | (tot < hl) | (off + tot > lens))
        malformed |= v4 & bad
        ok4 = v4 & ~bad
        frag |= ok4 & ((be16(off + 6) & 0x3FFF) != 0)
        proto = np.where(ok4, u8(off + 9), proto)
        src_off = np.where(ok4, off + 12, src_off)
        dst_off = np.where(ok4, off + 16, dst_off)
        l4off = np.where(ok4, off + hl, l4off)
        l4end = np.where(ok4, off + tot, l4end)
        v4 = ok4

    if v6.any():
        end6 = off + 40 + be16(off + 4)
        bad = (off + 40 > lens) | (u8(off) >> 4 != 6) | (end6 > lens)
        malformed |= v6 & bad
        v6 &= ~bad
        proto = np.where(v6, u8(off + 6), proto)
        src_off = np.where(v6, off + 8, src_off)
        dst_off = np.where(v6, off + 24, dst_off)
        l4off = np.where(v6, off + 40, l4off)
        l4end = np.where(v6, end6, l4end)
        walking = v6.copy()
        for _ in range(L.MAX_EXTHDR):
            opt = walking & ((proto == M.IPPROTO_HOPOPTS) | (proto == M.IPPROTO_ROUTING)
                             | (proto == M.IPPROTO_DSTOPTS))
            ah = walking & (proto == M.IPPROTO_AH)
            fr = walking & (proto == M.IPPROTO_FRAGMENT)
            walking = opt | ah | fr
            if not walking.any():
                break
            short = ((opt | ah) & (l4off + 2 > l4end)) | (fr & (l4off + 8 > l4end))
            malformed |= short
            walking &= ~short
            at = np.where(walking, l4off, 0)
            hlen = u8(at + 1)
            length = np.where(opt, (hlen + 1) * 8, np.where(ah, (hlen + 2) * 4, 8))
            # an atomic fragment (offset 0, M 0: RFC 6946) is a whole datagram
            frag |= fr & walking & ((be16(at + 2) & 0xFFF9) != 0)
            proto = np.where(walking, u8(at), proto)
            l4off = np.where(walking, l4off + length, l4off)
            past = walking & (l4off > l4end)
            malformed |= past
            walking &= ~past
        else:
            # the bound is reached: only a transport header may follow
            malformed |= walking & _is_ext(proto)
        v6 &= ~malformed

    ip = (v4 | v6) & ~malformed
    raw = np.zeros((n, L.FLOW_KEY.itemsize), dtype=np.uint8)
    if ip.any():
        rows = np.flatnonzero(ip)
        six = v6[rows]
        src = addr16(np.where(ip, np.where(v6, src_off, src_off - 12), 0))[rows]
        dst = addr16(np.where(ip, np.where(v6, dst_off, dst_off - 12), 0))[rows]
        src[~six, :12] = _V4_MAPPED
        dst[~six, :12] = _V4_MAPPED
        raw[rows, 0:16] = src
        raw[rows, 16:32] = dst
        if dst_mode == L.DST_ADDR_PORT:
            keyed = ip & ~frag
            has_port = keyed & ((proto == M.IPPROTO_UDP) | (proto == M.IPPROTO_TCP)
                                | (proto == M.IPPROTO_SCTP) | (proto == M.IPPROTO_UDPLITE))
            short = has_port & (l4off + 4 > l4end)
            malformed |= short
            has_port &= ~short
            keyed &= ~short
            kr = np.flatnonzero(keyed)
            pr = np.flatnonzero(has_port)
            port_off = np.where(has_port, l4off, 0)
            raw[pr, 32] = u8(port_off + 2)[pr]
            raw[pr, 33] = u8(port_off + 3)[pr]
            raw[kr, 34] = proto[kr]
            ip &= ~short
            raw[~ip] = 0
    status[ip] = OK
    status[malformed] = MALFORMED
    keys = raw.view(L.FLOW_KEY).reshape(n)
    return Batch(status, keys, proto, l4off, l4end, frag, v6 & ip)


def mapped_sources(b: Batch) -> Array:
    """The IPv6 frames whose source is IPv4-mapped (``::ffff:a.b.c.d``): never
    allowed (the kernel's ``lists_stage``)."""
    src = np.ascontiguousarray(b.keys["src"]).view(np.uint8).reshape(-1, 16)
    out: Array = b.ipv6 & (src[:, :12] == _V4_MAPPED).all(axis=1)
    return out


def mask_sources(b: Batch, rows: Array, prefix_v4: int, prefix_v6: int) -> None:
    """Key the frames ``rows`` (a boolean mask of OK frames) on their source
    prefix, in place: ``mask_source()`` of ``bpf/parsing.h``,
    :func:`xpro.core.model.flow_key`.  An IPv6 frame's source keeps its first
    ``prefix_v6`` bits, an IPv4 frame's (``::ffff:a.b.c.d``) the first
    ``prefix_v4`` bits of its address.  Run after the allow and deny lists,
    which match the full address.
    """
    raw = b.keys.view(np.uint8).reshape(len(b.keys), L.FLOW_KEY.itemsize)
    if prefix_v6 < 128:
        six = rows & b.ipv6
        if six.any():
            m6 = np.frombuffer(M.source_mask(True, prefix_v4, prefix_v6), dtype=np.uint8)
            raw[six, :16] &= m6
    if prefix_v4 < 32:
        four = rows & ~b.ipv6
        if four.any():
            m4 = np.frombuffer(M.source_mask(False, prefix_v4, prefix_v6), dtype=np.uint8)
            raw[four, 12:16] &= m4[12:]


def _is_ext(proto: Array) -> Array:
    out: Array = ((proto == M.IPPROTO_HOPOPTS) | (proto == M.IPPROTO_ROUTING)
                  | (proto == M.IPPROTO_DSTOPTS) | (proto == M.IPPROTO_AH)
                  | (proto == M.IPPROTO_FRAGMENT))
    return out


def pack_frames(frames: list[bytes]) -> tuple[Array, Array, Array]:
    """Frames one after another in one buffer: ``(buf, base, lens)`` for :func:`parse_batch`."""
    lens = np.array([len(f) for f in frames], dtype=np.int64)
    base = np.zeros(len(frames), dtype=np.int64)
    if len(frames) > 1:
        base[1:] = np.cumsum(lens)[:-1]
    buf = np.frombuffer(b"".join(frames) + b"\0", dtype=np.uint8)
    return buf, base, lens
