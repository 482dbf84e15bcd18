"""Malformed and hostile frames: never a verifier problem, never a crash, and
the verdict the model gives.

A corpus (every truncation of several frame shapes, bad IHL, bad lengths, deep
IPv6 extension chains, QinQ, a third VLAN tag) plus hypothesis mutations of
valid frames, each
run through the kernel and the model under both destination modes and both
malformed policies.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from tests.kernel.harness import KernelFilter, run_differential
from tests.packets import frame
from xpro.core import model
from xpro.core.layout import XDP_DROP, XDP_PASS, Reason

pytestmark = pytest.mark.kernel

S = model.NS_PER_S
T0 = 1_700_000_000 * S

BASES = [
    frame("10.0.0.1", "10.0.0.2"),
    frame("10.0.0.1", "10.0.0.2", proto="tcp", dport=443, vlans=2),
    frame("2001:db8::1", "2001:db8::2"),
    frame("2001:db8::1", "2001:db8::2", vlans=2, ext=("hop", "route", "dest")),
    frame("2001:db8::1", "2001:db8::2", ext=("frag",)),
    bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x01" * 8) / UDP(dport=7)
          / Raw(b"y" * 8)),
    bytes(Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / AH(nh=17) / UDP(dport=9)),
    # One tag more than the parser walks (XPRO_MAX_VLAN): malformed.
    frame("10.0.0.1", "10.0.0.2", vlans=3),
    frame("2001:db8::1", "2001:db8::2", proto="tcp", dport=443, vlans=3),
]


def _set(f: bytes, off: int, data: bytes) -> bytes:
    b = bytearray(f)
    b[off : off + len(data)] = data
    return bytes(b)


def corpus() -> list[bytes]:
    out: list[bytes] = []
    for base in BASES:
        out += [base[:n] for n in range(14, len(base) + 1)]
    v4 = BASES[0]
    for ihl in range(16):
        out.append(_set(v4, 14, bytes([0x40 | ihl])))
    for version in (0, 5, 6, 15):
        out.append(_set(v4, 14, bytes([version << 4 | 5])))
    for tot in (0, 1, 19, 20, 27, 28, len(v4) - 14, len(v4) - 13, 0xFFFF):
        out.append(_set(v4, 16, struct.pack(">H", tot)))
    out.append(_set(v4, 20, b"\x20\x00"))  # MF
    out.append(_set(v4, 20, b"\x00\x01"))  # an offset
    v6 = BASES[2]
    for plen in (0, 1, 7, 8, len(v6) - 54, len(v6) - 53, 0xFFFF):
        out.append(_set(v6, 18, struct.pack(">H", plen)))
    out.append(_set(v6, 14, b"\x40"))  # IPv4 version in an IPv6 ethertype
    for depth in (6, 7, 8, 9, 12):
        pkt = IPv6(src="2001:db8::1", dst="2001:db8::2")
        for _ in range(depth):
            pkt = pkt / IPv6ExtHdrDestOpt()
        out.append(bytes(Ether() / pkt / UDP(dport=5)))
    # An extension header claiming more than the payload holds.
    hop = bytes(Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop()
                / UDP(dport=5))
    out.append(_set(hop, 54 + 1, b"\x20"))
    # QinQ with an 802.1Q outer tag, and a frame cut inside its second tag
    # (not IP, passes).
    out.append(_set(frame("10.0.0.1", "10.0.0.2", vlans=2), 12, b"\x81\x00"))
    out.append(frame("10.0.0.1", "10.0.0.2", vlans=2)[:14 + 6])
    # A third tag, whatever it carries (IP, ARP) and whatever its TPID, is
    # malformed: the parser does not see past it, and it must not pass
    # uncounted.  Cut anywhere after the second tag's type, it still is.
    q3 = frame("10.0.0.1", "10.0.0.2", vlans=3)
    for tpid in (b"\x81\x00", b"\x88\xa8"):
        for at in (12, 16, 20):
            out.append(_set(q3, at, tpid))
    out.append(bytes(Ether() / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3)
                     / ARP(pdst="10.0.0.1")))
    out.append(bytes(Ether() / Dot1Q(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / Dot1Q(vlan=4)
                     / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(dport=7)))
    return out


CORPUS = corpus()
CONFIGS = [
    model.FilterParams(dst_mode=dm, malformed_policy=mp, t_f1=50, t_t2=0, t_f2=100, t_t3=0)
    for dm in (0, 1) for mp in (0, 1)
]


@pytest.fixture(scope="module")
def kernel() -> Iterator[KernelFilter]:
    k = KernelFilter()
    yield k
    k.close()


@pytest.mark.parametrize("params", CONFIGS,
                         ids=lambda p: f"dst{p.dst_mode}-mal{p.malformed_policy}")
def test_corpus(kernel: KernelFilter, params: model.FilterParams) -> None:
    assert len(CORPUS) > 500
    trace = [(f, T0 + i * S // 1000) for i, f in enumerate(CORPUS)]
    run_differential(kernel, params, trace)


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(base=st.sampled_from(BASES), edits=st.lists(
    st.tuples(st.integers(0, 120), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.integers(14, 200), p=st.sampled_from(CONFIGS))
def test_mutations(kernel: KernelFilter, base: bytes, edits: list[tuple[int, int]], cut: int,
                   p: model.FilterParams) -> None:
    b = bytearray(base)
    for off, val in edits:
        if off < len(b):
            b[off] = val
    run_differential(kernel, p, [(bytes(b[:cut]), T0)])


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=14, max_size=300), p=st.sampled_from(CONFIGS))
def test_random_bytes(kernel: KernelFilter, data: bytes, p: model.FilterParams) -> None:
    run_differential(kernel, p, [(data, T0)])


@pytest.mark.parametrize("policy", [0, 1], ids=["drop", "pass"])
def test_a_third_tag_is_malformed(kernel: KernelFilter, policy: int) -> None:
    """Frames with more tags than the parser walks follow ``filter.malformed``:
    counted as MALFORMED and dropped (or passed), never NON_IP; two tags parse."""
    p = model.FilterParams(malformed_policy=policy)
    three = [frame("10.0.0.1", "10.0.0.2", vlans=3),
             frame("2001:db8::1", "2001:db8::2", vlans=3),
             frame("10.0.0.1", "10.0.0.2", vlans=3)[:14 + 8],  # cut after the second tag
             bytes(Ether() / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3)
                   / ARP(pdst="10.0.0.1"))]
    two = frame("10.0.0.1", "10.0.0.2", vlans=2)
    m = run_differential(kernel, p, [(f, T0 + i) for i, f in enumerate([*three, two])])
    assert m.stats[Reason.MALFORMED][0] == len(three)
    assert m.stats[Reason.NON_IP][0] == 0
    assert m.stats[Reason.PASS][0] == 1
    want = XDP_PASS if policy else XDP_DROP
    assert {model.Filter(p).packet(f, T0).action for f in three} == {want}
