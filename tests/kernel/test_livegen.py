"""The live-frames generator's program: spoofed sources, random ports and checksums,
through BPF_PROG_TEST_RUN.

:meth:`LiveGenerator.preview` runs the real program without live frames and
returns what it would send; every output is compared, byte for byte, with
the same frame built by scapy from scratch with the new source address (and
destination port), so the incremental checksum updates must match a full
recomputation.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from xpro.bpf import XDP_PASS, BpfObject, object_path
from xpro.lab.livegen import CONFIG, LiveGenerator, LiveGenError

pytestmark = pytest.mark.kernel



def eth() -> Packet:
    return Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b")


def v4(l4: Packet, **ip: Any) -> Packet:
    return eth() / IP(src="192.0.2.1", dst="10.77.0.1", **ip) / l4


def v6(l4: Packet) -> Packet:
    return eth() / IPv6(src="2001:db8::1", dst="fd00:77::1") / l4


def rebuilt(pkt: Packet, src: str, dport: int | None = None) -> bytes:
    """``pkt`` with source ``src`` (and destination port ``dport``) and every checksum
    computed afresh by scapy."""
    p = pkt.copy()
    ip = p[IP] if IP in p else p[IPv6]
    ip.src = src
    if dport is not None:
        (p[UDP] if UDP in p else p[TCP]).dport = dport
    for layer, fname in ((IP, "chksum"), (UDP, "chksum"), (TCP, "chksum"),
                         (ICMPv6EchoRequest, "cksum")):
        if layer in p and not (layer is UDP and p[UDP].chksum == 0):  # UDP 0: none, stays
            setattr(p[layer], fname, None)
    return bytes(p)


def source_of(frame: bytes) -> str:
    p = Ether(frame)
    return str(p[IP].src if IP in p else p[IPv6].src)


CASES: dict[str, tuple[Callable[[], Packet], str]] = {
    "ipv4-udp": (lambda: v4(UDP(sport=40000, dport=9000) / Raw(b"x" * 18)), "10.200.0.0/16"),
    "ipv4-tcp": (lambda: v4(TCP(sport=40000, dport=80, flags="S")), "10.200.0.0/16"),
    "ipv4-udp-options": (
        lambda: v4(UDP(sport=1, dport=2) / Raw(b"abc"), options=b"\x01\x01\x01\x00"),
        "10.200.0.0/16",
    ),
    "ipv6-udp": (lambda: v6(UDP(sport=40000, dport=9000) / Raw(b"y" * 10)), "fd00:66::/112"),
    "ipv6-tcp": (lambda: v6(TCP(sport=40000, dport=443, flags="S")), "fd00:66::/112"),
    "ipv6-icmpv6": (lambda: v6(ICMPv6EchoRequest(id=7, seq=1)), "fd00:66::/112"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sequential_sources_with_valid_checksums(case: str) -> None:
    make, prefix = CASES[case]
    pkt = Ether(bytes(make()))  # checksums as scapy computes them
    net = ipaddress.ip_network(prefix)
    with LiveGenerator("lo", None, [bytes(pkt)], spoof=prefix,
                       spoof_order="sequential") as gen:
        out = gen.preview(300)
    for i, frame in enumerate(out):
        src = str(net[i])
        assert source_of(frame) == src
        assert frame == rebuilt(pkt, src), f"frame {i}: checksums differ from scapy's"


def test_sequential_sources_wrap_around_the_prefix() -> None:
    pkt = Ether(bytes(CASES["ipv4-udp"][0]()))
    with LiveGenerator("lo", None, [bytes(pkt)], spoof="10.200.7.0/30",
                       spoof_order="sequential") as gen:
        sources = [source_of(f) for f in gen.preview(10)]
    assert sources == [f"10.200.7.{i % 4}" for i in range(10)]


@pytest.mark.parametrize(("case", "draws", "min_distinct"),
                         [("ipv4-udp", 2000, 1900), ("ipv6-udp", 1000, 950)])
def test_random_sources_vary_within_the_prefix(case: str, draws: int, min_distinct: int) -> None:
    make, prefix = CASES[case]
    pkt = Ether(bytes(make()))
    net = ipaddress.ip_network(prefix)
    with LiveGenerator("lo", None, [bytes(pkt)], spoof=prefix) as gen:
        out = gen.preview(draws)
    sources = [source_of(f) for f in out]
    assert all(ipaddress.ip_address(s) in net for s in sources)
    # 2000 draws from 65536 addresses repeat about 30 of them
    assert len(set(sources)) >= min_distinct
    for frame, src in zip(out[:200], sources, strict=False):
        assert frame == rebuilt(pkt, src)


def dport_of(frame: bytes) -> int:
    p = Ether(frame)
    return int(p[UDP].dport if UDP in p else p[TCP].dport)


@pytest.mark.parametrize("case", ["ipv4-udp", "ipv4-tcp", "ipv4-udp-options", "ipv6-udp",
                                  "ipv6-tcp"])
@pytest.mark.parametrize("spoof", [True, False])
def test_random_ports_with_valid_checksums(case: str, spoof: bool) -> None:
    make, prefix = CASES[case]
    pkt = Ether(bytes(make()))
    with LiveGenerator("lo", None, [bytes(pkt)], spoof=prefix if spoof else None,
                       random_dport=True) as gen:
        out = gen.preview(1000)
    ports = [dport_of(f) for f in out]
    # 1000 draws from 65536 ports repeat about 8 of them
    assert len(set(ports)) >= 950
    original = source_of(bytes(pkt))
    for frame, port in zip(out[:300], ports, strict=False):
        src = source_of(frame)
        assert (src != original) if spoof else (src == original)
        assert frame == rebuilt(pkt, src, port), f"port {port}: checksums differ from scapy's"


@pytest.mark.parametrize("make", [
    lambda: v4(ICMP(type=8, id=7, seq=1) / Raw(b"ping")),
    lambda: v4(Raw(bytes(range(16))), proto=47),
    lambda: v4(Raw(b"\x11" * 24), frag=185, proto=17),  # a later fragment: no UDP header
    lambda: v6(ICMPv6EchoRequest(id=7, seq=1)),
    lambda: v6(Raw(bytes(range(16)))),  # next header 59: none
    lambda: v6(IPv6ExtHdrFragment(nh=17, offset=185, id=3) / Raw(b"\x11" * 16)),
], ids=["icmp", "gre", "ipv4-fragment", "icmpv6", "ipv6-none", "ipv6-fragment"])
def test_random_ports_leave_portless_frames_alone(make: Callable[[], Packet]) -> None:
    pkt = Ether(bytes(make()))
    prefix = "10.9.0.0/16" if IP in pkt else "fd00:66::/112"
    with LiveGenerator("lo", None, [bytes(pkt)], spoof=prefix, random_dport=True) as gen:
        out = gen.preview(50)
    for frame in out:
        assert frame == rebuilt(pkt, source_of(frame))


def test_random_ports_leave_udp_without_a_checksum_without_one() -> None:
    pkt = Ether(bytes(v4(UDP(sport=1, dport=2, chksum=0) / Raw(b"z" * 8))))
    with LiveGenerator("lo", None, [bytes(pkt)], random_dport=True) as gen:
        out = gen.preview(50)
    assert len({dport_of(f) for f in out}) > 40
    for frame in out:
        assert Ether(frame)[UDP].chksum == 0


def test_udp_without_checksum_keeps_none() -> None:
    pkt = Ether(bytes(v4(UDP(sport=1, dport=2, chksum=0) / Raw(b"z" * 8))))
    assert pkt[UDP].chksum == 0
    with LiveGenerator("lo", None, [bytes(pkt)], spoof="10.9.0.0/16") as gen:
        out = gen.preview(50)
    for frame in out:
        p = Ether(frame)
        assert p[UDP].chksum == 0
        assert frame == rebuilt(pkt, p[IP].src)


def test_later_fragment_changes_only_the_ip_header() -> None:
    # Not the first fragment: what follows the IP header is payload, not UDP.
    pkt = Ether(bytes(v4(Raw(b"\x11" * 24), frag=100, proto=17)))
    with LiveGenerator("lo", None, [bytes(pkt)], spoof="10.9.0.0/16") as gen:
        (frame,) = gen.preview(1)
    p = Ether(frame)
    assert bytes(p[IP].payload) == b"\x11" * 24
    assert frame == rebuilt(pkt, p[IP].src)


def test_without_spoof_frames_go_out_unchanged() -> None:
    raw = bytes(CASES["ipv4-udp"][0]())
    arp = bytes(eth() / ARP(psrc="10.0.0.1", pdst="10.0.0.2"))
    with LiveGenerator("lo", None, [raw, arp]) as gen:
        assert gen.preview(3) == [raw] * 3
        assert gen.preview(1, frame=1) == [arp]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frames": []}, "no frames"),
        ({"frames": [b"\0" * 10]}, "14 to"),
        ({"rate": 0.0}, "positive"),
        ({"rate": float("inf")}, "positive"),
        ({"batch_size": 257}, "batch_size"),
        ({"spoof": "fd00::/64"}, "last 32"),
        ({"spoof": "not-a-prefix"}, "not a prefix"),
        ({"spoof": "fd00::/112"}, "not an untagged IPv6"),
        ({"spoof": "10.0.0.0/8", "spoof_order": "backwards"}, "spoof_order"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"frames": [bytes(CASES["ipv4-udp"][0]())], **kwargs}
    frames = args.pop("frames")
    with pytest.raises(LiveGenError, match=message):
        LiveGenerator("lo", None, frames, **args)  # type: ignore[arg-type]


def test_closed_generator_refuses_to_run() -> None:
    gen = LiveGenerator("lo", None, [bytes(CASES["ipv4-udp"][0]())])
    gen.close()
    gen.close()
    with pytest.raises(LiveGenError, match="closed"):
        gen.run(0.1)


def test_frames_without_the_mark_pass_untouched() -> None:
    # What the interface really receives, where the generator holds its program:
    # no metadata, so XDP_PASS and no rewrite, even with a spoof configured.
    raw = bytes(CASES["ipv4-udp"][0]())
    with BpfObject(object_path("xpro_livegen")) as obj:
        cfg = obj.global_data(".data", CONFIG)
        cfg.view[()] = (2, 0xFFFF, bytes([10, 200]).ljust(16, b"\0"), 0, 1, 0)  # random /16,
        # random ports
        res = obj.programs["xpro_livegen"].test_run(raw)
    assert res.retval == XDP_PASS
    assert res.data == raw
