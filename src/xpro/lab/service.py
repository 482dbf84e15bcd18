"""The protected service: counts, per source and per time bin, what reaches it.

It runs in the service namespace behind every proxy: one UDP socket per
service address (a flood that fills the queue of the service it attacks does
not spill into another service's), and one raw TCP socket per family that
sees every TCP segment delivered locally (the SYNs of a SYN flood are counted
there; the kernel answers them with resets, which do not matter).  A packet
counts when the service's stack delivered it, that is after a proxy's filter
passed it and the proxy forwarded it.

With ``links`` it counts frames instead: one ``AF_PACKET`` socket per link of
the service host (its ends of the proxies' inside veths), and every IP frame
that arrives there addressed to a service address counts, whatever its
protocol, port or fragment offset.  That is for floods no socket receives
(random ports, protocols without a socket, fragments that never complete a
datagram): a frame counts when a proxy passed and forwarded it.

:func:`serve` is the body of a child process (see :class:`Service`): it counts
into shared :class:`~xpro.lab.traffic.Bins` while it runs, so the live view
sees delivered traffic as it happens, and returns the per-source totals.
"""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import socket
import struct
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence

from xpro.lab.namespaces import NsProcess
from xpro.lab.traffic import ROLES, Bins

__all__ = ["Service", "serve"]

_SO_RCVBUFFORCE = 33
#: Receive queue of each socket: a second of an unfiltered flood fits.
RCVBUF = 256 << 20
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS is the same
_CMSG_SPACE = socket.CMSG_SPACE(16)  # struct timespec
_TCP_SYN = 0x02
_TCP_ACK = 0x10
_ATTACK, _LEGIT = ROLES.index("attack"), ROLES.index("legit")
_ETH_P_ALL = 0x0003
_PACKET_OUTGOING = 4
#: (ethertype, offset of the source address, its length) of an untagged IP frame;
#: the destination follows the source.
_IP_FRAMES = {b"\x08\x00": (26, 4, socket.AF_INET), b"\x86\xdd": (22, 16, socket.AF_INET6)}


def _canonical(addr: str) -> str:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _socket(family: int, kind: int, proto: int, rcvbuf: int) -> socket.socket:
    s = socket.socket(family, kind, proto)
    try:
        s.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
    except PermissionError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    s.setblocking(False)
    return s


def serve(
    port: int,
    addresses: Collection[str],
    legit: Collection[str],
    t0: float,
    until: float,
    bins: Bins,
    *,
    groups: Mapping[str, str] | None = None,
    settle: float = 0.3,
    rcvbuf: int = RCVBUF,
    links: Sequence[str] = (),
) -> dict[str, int]:
    """Count arrivals from ``t0`` until ``until`` s after it, then until quiet for ``settle`` s.

    One UDP socket per service address in ``addresses``: a flood that fills
    the queue of the service it attacks does not spill into another's.
    With ``links``, frames on those links instead (see the module's notes).
    Sources in ``legit`` are counted as legitimate, all others as attack;
    a source in ``groups`` also counts in the row of its group (``bins``
    must have it).  Returns the packets received by source address.
    """
    socks_udp = []
    raw4 = raw6 = None
    frame_socks = []
    if links:
        for link in links:
            s = _socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL), rcvbuf)
            frame_socks.append(s)
            s.bind((link, 0))
    else:
        for addr in addresses:
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            s = _socket(fam, socket.SOCK_DGRAM, 0, rcvbuf)
            socks_udp.append(s)
            s.bind((addr, port))
        raw4 = _socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP, rcvbuf)
        raw6 = _socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP, rcvbuf)
    frame_set = frozenset(frame_socks)
    targets = frozenset(ipaddress.ip_address(a).packed for a in addresses)
    socks = (*socks_udp, *(r for r in (raw4, raw6) if r is not None), *frame_socks)
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ, s)
    legit_set = frozenset(legit)
    group_row = {src: bins.row(g) for src, g in (groups or {}).items()}
    counts: Counter[str] = Counter()
    arr = bins.counts
    last_bin = arr.shape[1] - 1
    width = bins.width
    mono = time.monotonic
    # Packets are binned by the kernel's receive timestamp (CLOCK_REALTIME),
    # not by when this loop gets to them: under a flood the loop lags.
    t0_real = time.time() - (mono() - t0)
    last_rx = mono()
    try:
        while True:
            now = mono()
            if now - t0 > until and now - last_rx > settle:
                break
            for key, _ in sel.select(0.05):
                s = key.data
                while True:
                    try:
                        data, anc, _, addr = s.recvmsg(2048, _CMSG_SPACE)
                    except (BlockingIOError, InterruptedError):
                        break
                    if s in frame_set:
                        ip = _IP_FRAMES.get(data[12:14])
                        if ip is None or addr[2] == _PACKET_OUTGOING:
                            continue
                        at, n, fam = ip
                        if data[at + n:at + 2 * n] not in targets:
                            continue
                        src = socket.inet_ntop(fam, data[at:at + n])
                    elif s is raw4:
                        off = (data[0] & 0x0F) * 4 + 13
                        if len(data) <= off or data[off] & (_TCP_SYN | _TCP_ACK) != _TCP_SYN:
                            continue
                        src = _canonical(addr[0])
                    elif s is raw6 and (len(data) <= 13 or
                                        data[13] & (_TCP_SYN | _TCP_ACK) != _TCP_SYN):
                        continue
                    else:
                        src = _canonical(addr[0])
                    counts[src] += 1
                    if anc:
                        sec, nsec = struct.unpack_from("qq", anc[0][2])
                        b = int((sec + nsec * 1e-9 - t0_real) / width)
                    else:
                        b = int((mono() - t0) / width)
                    b = min(max(b, 0), last_bin)
                    arr[_LEGIT if src in legit_set else _ATTACK, b] += 1
                    g = group_row.get(src)
                    if g is not None:
                        arr[g, b] += 1
                    last_rx = mono()
    finally:
        sel.close()
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
    return dict(counts)


class Service:
    """The counting service, running as a child process in ``netns``."""

    def __init__(self, netns: str, port: int, addresses: Collection[str],
                 legit: Collection[str], t0: float, until: float, bins: Bins,
                 groups: Mapping[str, str] | None = None, links: Sequence[str] = ()) -> None:
        self._proc: NsProcess[dict[str, int]] = NsProcess(
            netns, serve, port, list(addresses), list(legit), t0, until, bins,
            groups=dict(groups or {}), links=list(links))

    def start(self) -> Service:
        self._proc.start()
        return self

    def result(self, timeout: float) -> dict[str, int]:
        return self._proc.result(timeout)

    def stop(self) -> None:
        self._proc.stop()
