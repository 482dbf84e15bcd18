"""Test traffic: prebuilt frames sent at set rates, and a UDP receiver that counts them.

The sender writes whole Ethernet frames to a raw ``AF_PACKET`` socket bound to
one interface, in a child process inside a network namespace
(:func:`send_in_netns`).  Several streams share one pacing loop, each at its
own rate, so a flood and a legitimate stream run at the same time.  Frames are
built once, with valid IPv4 header checksums (the kernel drops packets with bad
ones before any socket sees them) and transport checksums: UDP
(:func:`udp_frame`), TCP SYN (:func:`syn_frame`), ICMP and ICMPv6 echo
(:func:`icmp_frame`); also packets of a protocol without ports carrying opaque
bytes (:func:`proto_frame`) and later fragments, which carry no transport
header (:func:`fragment_frame`).

:class:`UdpCounter` listens in another namespace (on the proxy side) and counts
the datagrams that reached the stack, by source address.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from xpro.errors import XproError
from xpro.lab.namespaces import in_netns, run_in_netns

__all__ = [
    "ETH_P_ARP",
    "ETH_P_IP",
    "ETH_P_IPV6",
    "Stream",
    "UdpCounter",
    "arp_request",
    "ethernet",
    "fragment_frame",
    "icmp_frame",
    "ip_frame",
    "ipv4_checksum",
    "proto_frame",
    "send_in_netns",
    "send_streams",
    "syn_frame",
    "udp_frame",
    "with_sources",
]

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
IPPROTO_ICMPV6 = 58
IPPROTO_FRAGMENT = 44  # IPv6's Fragment header

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_ETH_MIN = 60  # shortest Ethernet frame without FCS
_SO_RCVBUFFORCE = 33  # Linux; the socket module does not export it
_MAX_BURST = 256  # frames sent back to back before the loop looks at the clock again


class TrafficError(XproError):
    """Sending or receiving test traffic failed."""


def _mac(mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise TrafficError(f"not a MAC address: {mac!r}")
    return raw


def ipv4_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(dst_mac: str, src_mac: str, ethertype: int, payload: bytes) -> bytes:
    """An Ethernet II frame, padded to the 60-byte minimum."""
    frame = _mac(dst_mac) + _mac(src_mac) + struct.pack("!H", ethertype) + payload
    return frame.ljust(_ETH_MIN, b"\0")


def ip_frame(
    *,
    src_mac: str,
    dst_mac: str,
    src: str,
    dst: str,
    proto: int,
    l4: bytes,
    csum_at: int | None,
    ttl: int = 64,
    pseudo: bool = True,
) -> bytes:
    """An Ethernet/IPv4 or Ethernet/IPv6 frame around the transport header and
    payload ``l4``, with its checksum at byte ``csum_at`` of ``l4`` (over the
    pseudo-header, unless ``pseudo`` is False: ICMP for IPv4; ``csum_at``
    None: no transport checksum) and the IPv4 header checksum filled in."""
    s, d = _addresses(src, dst)
    n = len(l4)
    if csum_at is not None:
        head = b""
        if pseudo and s.version == 4:
            head = s.packed + d.packed + struct.pack("!BBH", 0, proto, n)
        elif pseudo:
            head = s.packed + d.packed + struct.pack("!I3xB", n, proto)
        csum = ipv4_checksum(head + l4)
        if proto == socket.IPPROTO_UDP:
            csum = csum or 0xFFFF  # 0 means "no checksum" in UDP
        l4 = l4[:csum_at] + struct.pack("!H", csum) + l4[csum_at + 2 :]
    return _ip_frame(src_mac, dst_mac, s, d, proto, l4, ttl)


def _addresses(src: str, dst: str) -> tuple[IPAddress, IPAddress]:
    s = ipaddress.ip_address(src)
    d = ipaddress.ip_address(dst)
    if s.version != d.version:
        raise TrafficError(f"source {src} and destination {dst} differ in IP version")
    return s, d


def _ip_frame(src_mac: str, dst_mac: str, s: IPAddress, d: IPAddress, proto: int,
              body: bytes, ttl: int, *, frag: int = 0x4000, ident: int = 0) -> bytes:
    """The frame of an IPv4 packet (flags and fragment offset ``frag``, identification
    ``ident``; DF alone by default) or an IPv6 packet, around ``body``."""
    n = len(body)
    if s.version == 4:
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + n, ident, frag, ttl, proto, 0, s.packed, d.packed,
        )  # fmt: skip
        hdr = hdr[:10] + struct.pack("!H", ipv4_checksum(hdr)) + hdr[12:]
        return ethernet(dst_mac, src_mac, ETH_P_IP, hdr + body)
    hdr = struct.pack("!IHBB16s16s", 6 << 28, n, proto, ttl, s.packed, d.packed)
    return ethernet(dst_mac, src_mac, ETH_P_IPV6, hdr + body)


def udp_frame(
    *,
    src_mac: str,
    dst_mac: str,
    src: str,
    dst: str,
    sport: int = 40000,
    dport: int = 9000,
    payload: bytes = b"xpro",
    ttl: int = 64,
) -> bytes:
    """An Ethernet/IPv4/UDP or Ethernet/IPv6/UDP frame with correct checksums."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return ip_frame(src_mac=src_mac, dst_mac=dst_mac, src=src, dst=dst,
                    proto=socket.IPPROTO_UDP, l4=udp, csum_at=6, ttl=ttl)


def syn_frame(
    *,
    src_mac: str,
    dst_mac: str,
    src: str,
    dst: str,
    sport: int = 40000,
    dport: int = 80,
    seq: int = 1,
    ttl: int = 64,
) -> bytes:
    """An Ethernet/IPv4/TCP or Ethernet/IPv6/TCP SYN frame with correct checksums."""
    # 20-byte TCP header: data offset 5, SYN, window 64240, no options.
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    return ip_frame(src_mac=src_mac, dst_mac=dst_mac, src=src, dst=dst,
                    proto=socket.IPPROTO_TCP, l4=tcp, csum_at=16, ttl=ttl)


def icmp_frame(
    *,
    src_mac: str,
    dst_mac: str,
    src: str,
    dst: str,
    ident: int = 1,
    seq: int = 1,
    payload: bytes = b"xpro",
    ttl: int = 64,
) -> bytes:
    """An ICMP echo request (IPv4) or ICMPv6 echo request (IPv6) with correct
    checksums (ICMPv6's covers the pseudo-header, ICMP's does not)."""
    v6 = ipaddress.ip_address(src).version == 6
    icmp = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, ident, seq) + payload
    return ip_frame(src_mac=src_mac, dst_mac=dst_mac, src=src, dst=dst,
                    proto=IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP, l4=icmp, csum_at=2,
                    ttl=ttl, pseudo=v6)


#: IP protocols :func:`proto_frame` refuses: those with ports (the program reads
#: them), ICMP and ICMPv6 (:func:`icmp_frame`), and IPv6's extension headers.
KNOWN_HEADERS = frozenset({0, 1, 6, 17, 43, 44, 51, 58, 60, 132, 136})


def proto_frame(
    *,
    src_mac: str,
    dst_mac: str,
    src: str,
    dst: str,
    proto: int,
    payload: bytes = bytes(range(16)),
    ttl: int = 64,
) -> bytes:
    """A packet of IP protocol ``proto`` carrying ``payload`` as opaque bytes: a
    protocol without ports and without a header this module builds (GRE, ESP,
    OSPF, an unassigned number...).  Only the IPv4 header has a checksum."""
    if not 0 <= proto <= 255 or proto in KNOWN_HEADERS:
        raise TrafficError(f"proto_frame: protocol {proto} has a header of its own "
                           f"(not one of {sorted(KNOWN_HEADERS)})")
    return ip_frame(src_mac=src_mac, dst_mac=dst_mac, src=src, dst=dst, proto=proto,
                    l4=payload, csum_at=None, ttl=ttl)


def fragment_frame(
    *,
    src_mac: str,
    dst_mac: str,
    src: str,
    dst: str,
    proto: int = socket.IPPROTO_UDP,
    offset: int = 1480,
    more: bool = False,
    ident: int = 0x7870,
    payload: bytes = b"xpro" * 4,
    ttl: int = 64,
) -> bytes:
    """A later fragment (``offset`` bytes into a datagram of protocol ``proto``,
    so no transport header: ``payload`` is the datagram's middle or end) of an
    IPv4 packet, or of an IPv6 packet with a Fragment header.  ``more``: more
    fragments follow.  It never completes a datagram at the receiver."""
    if not 0 < offset < 1 << 16 or offset % 8:
        raise TrafficError(f"fragment offset {offset}: a positive multiple of 8 under 65536")
    s, d = _addresses(src, dst)
    if s.version == 4:
        return _ip_frame(src_mac, dst_mac, s, d, proto, payload, ttl,
                         frag=(0x2000 if more else 0) | offset // 8, ident=ident & 0xFFFF)
    frag = struct.pack("!BBHI", proto, 0, offset | int(more), ident)
    return _ip_frame(src_mac, dst_mac, s, d, IPPROTO_FRAGMENT, frag + payload, ttl)


def with_sources(frame: bytes, sources: Iterable[str]) -> list[bytes]:
    """``frame`` once per address of ``sources`` put in as its source, with its
    checksums updated (RFC 1624, as the live-frames generator does): an
    untagged IPv4 or IPv6 frame of UDP or TCP, or ICMPv6, as built here.  Many
    times faster than building each frame."""
    if frame[12:14] == struct.pack("!H", ETH_P_IP):
        fam, at, n, proto, l4 = socket.AF_INET, 26, 4, frame[23], 14 + (frame[14] & 0xF) * 4
        if struct.unpack_from("!H", frame, 20)[0] & 0x3FFF:
            raise TrafficError("with_sources: not for fragments")
    elif frame[12:14] == struct.pack("!H", ETH_P_IPV6):
        fam, at, n, proto, l4 = socket.AF_INET6, 22, 16, frame[20], 54
    else:
        raise TrafficError("with_sources: not an untagged IP frame")
    where = {socket.IPPROTO_UDP: 6, socket.IPPROTO_TCP: 16}
    if fam == socket.AF_INET6:
        where[IPPROTO_ICMPV6] = 2
    if proto not in where:
        raise TrafficError(f"with_sources: protocol {proto} is not UDP, TCP or ICMPv6")
    words = f"!{n // 2}H"
    gone: int = sum(0xFFFF ^ w for w in struct.unpack_from(words, frame, at))

    def base(pos: int) -> int:  # ~HC + ~m: what every new source adds its words to
        (check,) = struct.unpack_from("!H", frame, pos)
        return (0xFFFF ^ int(check)) + gone

    l4_at = l4 + where[proto]
    if fam == socket.AF_INET and proto == socket.IPPROTO_UDP and frame[l4_at:l4_at + 2] == (
            b"\0\0"):
        raise TrafficError("with_sources: an IPv4 UDP frame without a checksum")
    l4_base = base(l4_at)
    ip_base = base(24) if fam == socket.AF_INET else 0
    udp = proto == socket.IPPROTO_UDP
    head, mid, tail = frame[:at], frame[at + n:l4_at], frame[l4_at + 2:]
    out = []
    for src in sources:
        packed = socket.inet_pton(fam, src)
        add = sum(struct.unpack(words, packed))
        c = _fold(l4_base + add) ^ 0xFFFF
        if udp and not c:
            c = 0xFFFF  # 0 means "no checksum" in UDP
        if fam == socket.AF_INET:
            ip = struct.pack("!H", _fold(ip_base + add) ^ 0xFFFF)
            out.append(head[:24] + ip + packed + mid + struct.pack("!H", c) + tail)
        else:
            out.append(head + packed + mid + struct.pack("!H", c) + tail)
    return out


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def arp_request(*, src_mac: str, src: str, target: str) -> bytes:
    """A broadcast ARP who-has ``target`` from ``src``/``src_mac``."""
    body = struct.pack(
        "!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, 1, _mac(src_mac),
        ipaddress.IPv4Address(src).packed, b"\0" * 6, ipaddress.IPv4Address(target).packed,
    )  # fmt: skip
    return ethernet("ff:ff:ff:ff:ff:ff", src_mac, ETH_P_ARP, body)


@dataclass(frozen=True)
class Stream:
    """One prebuilt frame sent ``rate`` times per second (``rate=0``: not at all)."""

    name: str
    frame: bytes
    rate: float

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise TrafficError(f"stream {self.name}: negative rate {self.rate}")
        if len(self.frame) < 14:
            raise TrafficError(f"stream {self.name}: a frame needs at least an Ethernet header")


def send_streams(ifname: str, streams: Sequence[Stream], duration: float) -> dict[str, int]:
    """Send every stream at its rate on ``ifname`` for ``duration`` seconds (this namespace).

    Each stream gets ``int(rate * duration)`` frames, spread evenly: the loop
    sends what is due by the clock, then sleeps until the next frame is due.
    A full device queue (ENOBUFS) delays frames, it never loses them, so the
    returned counts (frames handed to the device, by stream name) are exact.
    """
    names = [s.name for s in streams]
    if len(set(names)) != len(names):
        raise TrafficError(f"stream names must be unique: {names}")
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # proto 0: send only
    try:
        sock.bind((ifname, 0))
        sent = [0] * len(streams)
        totals = [int(s.rate * duration) for s in streams]
        frames = [s.frame for s in streams]
        rates = [s.rate for s in streams]
        send = sock.send
        start = time.perf_counter()
        while True:
            now = time.perf_counter()
            elapsed = min(now - start, duration)
            for i, rate in enumerate(rates):
                due = min(int(elapsed * rate), totals[i]) - sent[i]
                frame = frames[i]
                for _ in range(min(due, _MAX_BURST)):
                    try:
                        send(frame)
                    except OSError as exc:
                        if exc.errno in (errno.ENOBUFS, errno.EAGAIN):
                            break  # queue full: retry on the next turn
                        raise
                    sent[i] += 1
            if sent == totals:
                break
            waits = [(sent[i] + 1) / r for i, r in enumerate(rates) if sent[i] < totals[i]]
            delay = start + min(waits) - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif now - start > duration + 5:
                raise TrafficError(f"could not send on {ifname} (sent {sent} of {totals})")
    finally:
        sock.close()
    return dict(zip(names, sent, strict=True))


def send_in_netns(
    netns: str | None, ifname: str, streams: Sequence[Stream], duration: float
) -> dict[str, int]:
    """:func:`send_streams` in a forked child inside ``netns``; returns the counts."""
    return run_in_netns(netns, send_streams, ifname, list(streams), duration)


def _canonical(addr: str) -> str:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class UdpCounter:
    """Count UDP datagrams arriving on ``port`` in ``netns``, by source address.

    One dual-stack socket (IPv4 sources appear as dotted quads), a large
    receive buffer, and a thread that reads until :meth:`stop`::

        with UdpCounter(pair.proxy_ns, 9000) as rx:
            send_in_netns(...)
        rx.counts  # {"10.77.0.66": 5000, ...}
    """

    def __init__(self, netns: str | None, port: int, *, rcvbuf: int = 32 << 20) -> None:
        self.netns = netns
        self.port = port
        self.counts: Counter[str] = Counter()
        with in_netns(netns):
            self._sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._sock.bind(("::", port))
        self._sock.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"udp-counter:{port}", daemon=True)
        self._lock = threading.Lock()

    def _run(self) -> None:
        recv = self._sock.recvfrom
        while not self._stop.is_set():
            try:
                _, addr = recv(2048)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            with self._lock:
                self.counts[_canonical(addr[0])] += 1

    def start(self) -> Self:
        self._thread.start()
        return self

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def stop(self, *, settle: float = 0.3) -> dict[str, int]:
        """Wait until nothing arrived for ``settle`` seconds, stop and return the counts."""
        if self._thread.is_alive():
            last = -1
            while (total := sum(self.snapshot().values())) != last:
                last = total
                time.sleep(settle)
            self._stop.set()
            self._thread.join()
        with contextlib.suppress(OSError):
            self._sock.close()
        return self.snapshot()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(settle=0.3 if exc is None else 0.0)

