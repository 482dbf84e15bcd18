"""The lab's senders: many sources, many links, each at its own paced rate.

A :class:`Flow` is one source sending through one proxy: prebuilt frames
(UDP or TCP SYN, IPv4 or IPv6; a spoofed flood cycles through many frames
with random source addresses), a rate, a start and a stop time, and
optionally an on/off pulse.  :func:`send_flows` sends a whole scenario's
flows from one process over one ``AF_PACKET`` socket per link: a heap keeps
the flow whose next frame is due first on top, so the cost per frame does not
grow with the number of flows, and a flow that fell behind catches up in
bursts, so the count sent by any moment is ``rate * active time`` up to one
frame.  Frames handed to the device are counted per flow and, in
:class:`Bins`, per role and time bin; the service counts the same way on the
far side, which is how the lab computes what was dropped and when.  A flow
may also belong to a *group* (the victim's clients, another service's
clients...): :class:`Bins` then has one more row per group, counted on both
sides like the roles, so a scenario can report each group on its own.

Frames are built with :mod:`xpro.lab.frames` (valid IPv4 and UDP checksums: the
kernel drops packets with bad ones before any filter sees them).
"""

from __future__ import annotations

import errno
import heapq
import ipaddress
import math
import mmap
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from xpro.lab.frames import TrafficError, syn_frame, udp_frame

__all__ = [
    "ROLES",
    "Bins",
    "Flow",
    "random_sources",
    "send_flows",
]

#: The roles traffic is accounted by (index into :class:`Bins`).
ROLES = ("attack", "legit")

_MAX_BURST = 64  # frames of one flow sent back to back before the heap is looked at again

Array = npt.NDArray[Any]


class Bins:
    """Packet counts per role and time bin, in memory shared with forked children.

    The sender (one child) and the service (another) write their counts here
    while they run; the parent reads them for the live view and the report.
    Bin ``i`` covers ``[i * width, (i + 1) * width)`` seconds after ``t0``.
    Rows: the :data:`ROLES`, then one per name in ``groups`` (a packet of a
    flow in a group counts in its role's row and in its group's).
    """

    def __init__(self, duration: float, width: float = 0.1,
                 groups: Sequence[str] = ()) -> None:
        self.width = width
        self.n = math.ceil(duration / width) + 1
        self.groups = tuple(groups)
        if len(set(self.groups)) != len(self.groups) or set(self.groups) & set(ROLES):
            raise TrafficError(f"groups must be distinct and not a role: {self.groups}")
        rows = len(ROLES) + len(self.groups)
        self._mm = mmap.mmap(-1, 8 * rows * self.n)
        self.counts: Array = np.ndarray((rows, self.n), dtype=np.int64, buffer=self._mm)

    def row(self, name: str) -> int:
        """The row of a role or a group."""
        if name in ROLES:
            return ROLES.index(name)
        try:
            return len(ROLES) + self.groups.index(name)
        except ValueError:
            raise TrafficError(f"no role or group {name!r} in these bins") from None

    def index(self, t: float) -> int:
        """The bin of ``t`` seconds after ``t0`` (clamped to the first and last)."""
        return min(max(int(t / self.width), 0), self.n - 1)

    def times(self) -> Array:
        """Start of each bin, seconds."""
        return np.arange(self.n, dtype=np.float64) * self.width

    def snapshot(self) -> Array:
        return np.array(self.counts, copy=True)


@dataclass(frozen=True)
class Flow:
    """One source sending through one link (a proxy) at ``rate`` frames/s.

    ``start``/``stop`` are seconds after ``t0``.  With ``on`` and ``off``
    the flow sends only during the first ``on`` seconds of every
    ``on + off`` (a pulse); ``rate`` is the rate while on.  ``frames`` are
    sent in turn (one frame: one source; many: a spoofed flood).
    ``source`` is the key the flow is accounted under (several flows of one
    bot through several proxies share it).  ``group`` (optional) is a finer
    account than the role: a row of its own in :class:`Bins`.
    """

    source: str
    role: str
    link: int
    frames: tuple[bytes, ...]
    rate: float
    start: float = 0.0
    stop: float = math.inf
    on: float = 0.0
    off: float = 0.0
    group: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise TrafficError(f"flow {self.source}: role must be one of {ROLES}")
        if self.rate < 0 or not self.frames or self.stop < self.start:
            raise TrafficError(f"flow {self.source}: needs frames, a rate >= 0, start <= stop")
        if (self.on > 0) != (self.off > 0) or self.on < 0 or self.off < 0:
            raise TrafficError(f"flow {self.source}: a pulse needs both on > 0 and off > 0")

    def active(self, t: float) -> float:
        """Seconds this flow has been sending by ``t`` (after ``t0``)."""
        span = min(t, self.stop) - self.start
        if span <= 0:
            return 0.0
        if self.on <= 0:
            return span
        cycle = self.on + self.off
        k, rem = divmod(span, cycle)
        return k * self.on + min(rem, self.on)

    def total(self) -> int:
        """Frames the flow sends over its life (its stop time must be finite)."""
        return int(self.active(self.stop) * self.rate)

    def due(self, t: float) -> int:
        """Frames due by ``t``."""
        return int(self.active(t) * self.rate + 1e-9)

    def when(self, n: int) -> float:
        """The moment frame number ``n`` (1-based) is due."""
        need = n / self.rate
        if self.on <= 0:
            return self.start + need
        k, rem = divmod(need, self.on)
        if rem == 0 and k > 0:
            return self.start + (k - 1) * (self.on + self.off) + self.on
        return self.start + k * (self.on + self.off) + rem


def frame(proto: str, **kw: Any) -> bytes:
    """A UDP (``proto="udp"``) or TCP SYN (``"syn"``) frame; keywords as :func:`udp_frame`."""
    if proto == "udp":
        return udp_frame(**kw)
    if proto == "syn":
        return syn_frame(**kw)
    raise TrafficError(f"unknown protocol {proto!r} (udp or syn)")


def random_sources(network: str, count: int, *, seed: int = 0) -> list[str]:
    """``count`` distinct random host addresses of ``network`` (spoofed sources)."""
    net = ipaddress.ip_network(network)
    span = net.num_addresses - 2
    if count > span:
        raise TrafficError(f"{network} has fewer than {count} host addresses")
    rng = random.Random(seed)
    base = int(net.network_address) + 1
    picked = rng.sample(range(span), count) if span < 1 << 24 else _sample_big(rng, span, count)
    # inet_ntop writes the same text as ipaddress (RFC 5952), many times faster
    fam, size = ((socket.AF_INET, 4) if net.version == 4 else (socket.AF_INET6, 16))
    return [socket.inet_ntop(fam, (base + i).to_bytes(size, "big")) for i in picked]


def _sample_big(rng: random.Random, span: int, count: int) -> list[int]:
    seen: set[int] = set()
    while len(seen) < count:
        seen.add(rng.randrange(span))
    return list(seen)


def send_flows(
    ifnames: Sequence[str],
    flows: Sequence[Flow],
    t0: float,
    bins: Bins | None = None,
) -> dict[str, int]:
    """Send ``flows`` over the links ``ifnames`` (this namespace), paced from ``t0``.

    ``t0`` is a :func:`time.monotonic` moment (the clock every process
    shares), so the sender and the service agree on times.  Every flow needs
    a finite stop.  Returns the frames handed to the devices, by source.  A
    full device queue (ENOBUFS) delays frames, it never loses them.
    """
    socks = []
    try:
        for name in ifnames:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # proto 0: send only
            socks.append(s)
            s.bind((name, 0))
        sends = [s.send for s in socks]
        totals = [f.total() for f in flows]
        end = max((f.stop for f in flows), default=0.0)
        if math.isinf(end):
            raise TrafficError("every flow needs a finite stop time")
        sent = [0] * len(flows)
        nxt = [0] * len(flows)  # index of the next frame of each flow
        roles = [ROLES.index(f.role) for f in flows]
        groups = [bins.row(f.group) if bins is not None and f.group else -1 for f in flows]
        heap = [(f.when(1), i) for i, f in enumerate(flows) if totals[i] > 0]
        heapq.heapify(heap)
        counts = bins.counts if bins is not None else None
        mono = time.monotonic
        while heap:
            due_at, i = heap[0]
            now = mono() - t0
            if due_at > now:
                time.sleep(min(due_at - now, 0.05))
                continue
            f = flows[i]
            n = min(f.due(now), totals[i]) - sent[i]
            n = min(max(n, 1), _MAX_BURST)
            send = sends[f.link]
            frames = f.frames
            k = nxt[i]
            done = 0
            for _ in range(n):
                try:
                    send(frames[k])
                except OSError as exc:
                    if exc.errno in (errno.ENOBUFS, errno.EAGAIN):
                        break  # queue full: this flow retries soon
                    raise
                done += 1
                k += 1
                if k == len(frames):
                    k = 0
            nxt[i] = k
            sent[i] += done
            if counts is not None and done:
                b = int(now / bins.width)  # type: ignore[union-attr]
                b = min(b, counts.shape[1] - 1)
                counts[roles[i], b] += done
                if groups[i] >= 0:
                    counts[groups[i], b] += done
            if sent[i] >= totals[i]:
                heapq.heappop(heap)
            elif done < n:
                heapq.heapreplace(heap, (now + 0.0005, i))
            else:
                heapq.heapreplace(heap, (f.when(sent[i] + 1), i))
            if now > end + 10:
                raise TrafficError(f"could not send in time ({sum(sent)} of {sum(totals)})")
    finally:
        for s in socks:
            s.close()
    out: dict[str, int] = {}
    for f, n in zip(flows, sent, strict=True):
        out[f.source] = out.get(f.source, 0) + n
    return out
