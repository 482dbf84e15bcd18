"""xpro.lab.traffic: flow schedules, SYN, ICMP, other-protocol and fragment frames,
spoofed sources (no root)."""

from __future__ import annotations

import ipaddress
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether

from xpro.lab.frames import (
    KNOWN_HEADERS,
    TrafficError,
    fragment_frame,
    icmp_frame,
    proto_frame,
    syn_frame,
    udp_frame,
    with_sources,
)
from xpro.lab.traffic import Bins, Flow, random_sources

pytestmark = pytest.mark.unit

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"


def test_syn_frame_ipv4_is_valid() -> None:
    raw = syn_frame(src_mac=MAC_A, dst_mac=MAC_B, src="10.0.0.1", dst="10.0.0.2", sport=1234,
                    dport=80)
    pkt = Ether(raw)
    assert (pkt[IP].src, pkt[IP].dst, pkt[TCP].sport, pkt[TCP].dport) == (
        "10.0.0.1", "10.0.0.2", 1234, 80)
    assert pkt[TCP].flags == "S"
    again = Ether(raw)
    del again[IP].chksum
    del again[TCP].chksum
    rebuilt = Ether(bytes(again))
    assert rebuilt[IP].chksum == pkt[IP].chksum
    assert rebuilt[TCP].chksum == pkt[TCP].chksum


def test_syn_frame_ipv6_is_valid() -> None:
    raw = syn_frame(src_mac=MAC_A, dst_mac=MAC_B, src="fd00::1", dst="fd00::2")
    pkt = Ether(raw)
    assert (pkt[IPv6].src, pkt[IPv6].nh, pkt[TCP].flags) == ("fd00::1", 6, "S")
    again = Ether(raw)
    del again[TCP].chksum
    assert Ether(bytes(again))[TCP].chksum == pkt[TCP].chksum


def test_syn_frame_refuses_mixed_families() -> None:
    with pytest.raises(TrafficError):
        syn_frame(src_mac=MAC_A, dst_mac=MAC_B, src="10.0.0.1", dst="fd00::2")


def test_icmp_echo_ipv4_is_valid() -> None:
    raw = icmp_frame(src_mac=MAC_A, dst_mac=MAC_B, src="10.0.0.1", dst="10.0.0.2", ident=7,
                     seq=9)
    pkt = Ether(raw)
    assert (pkt[IP].proto, pkt[ICMP].type, pkt[ICMP].id, pkt[ICMP].seq) == (1, 8, 7, 9)
    again = Ether(raw)
    del again[IP].chksum
    del again[ICMP].chksum
    rebuilt = Ether(bytes(again))
    assert rebuilt[IP].chksum == pkt[IP].chksum
    assert rebuilt[ICMP].chksum == pkt[ICMP].chksum


def test_icmpv6_echo_is_valid() -> None:
    raw = icmp_frame(src_mac=MAC_A, dst_mac=MAC_B, src="fd00::1", dst="fd00::2", ident=3)
    pkt = Ether(raw)
    assert (pkt[IPv6].nh, pkt[ICMPv6EchoRequest].id) == (58, 3)
    again = Ether(raw)
    del again[ICMPv6EchoRequest].cksum  # over the pseudo-header
    assert Ether(bytes(again))[ICMPv6EchoRequest].cksum == pkt[ICMPv6EchoRequest].cksum


@pytest.mark.parametrize("proto", [47, 50, 89, 144, 252])
def test_other_protocols_carry_opaque_bytes(proto: int) -> None:
    raw = proto_frame(src_mac=MAC_A, dst_mac=MAC_B, src="10.0.0.1", dst="10.0.0.2",
                      proto=proto, payload=b"abcdefgh")
    pkt = Ether(raw)
    assert pkt[IP].proto == proto
    assert bytes(pkt[IP].payload)[:8] == b"abcdefgh"
    assert pkt[IP].len == 28
    again = Ether(raw)
    del again[IP].chksum
    assert Ether(bytes(again))[IP].chksum == pkt[IP].chksum
    v6 = Ether(proto_frame(src_mac=MAC_A, dst_mac=MAC_B, src="fd00::1", dst="fd00::2",
                           proto=proto, payload=b"abcdefgh"))
    assert (v6[IPv6].nh, v6[IPv6].plen) == (proto, 8)


@pytest.mark.parametrize("proto", sorted(KNOWN_HEADERS))
def test_other_protocols_refuse_known_headers(proto: int) -> None:
    with pytest.raises(TrafficError, match="header of its own"):
        proto_frame(src_mac=MAC_A, dst_mac=MAC_B, src="10.0.0.1", dst="10.0.0.2", proto=proto)


@pytest.mark.parametrize("more", [False, True])
def test_ipv4_later_fragment_is_valid(more: bool) -> None:
    raw = fragment_frame(src_mac=MAC_A, dst_mac=MAC_B, src="10.0.0.1", dst="10.0.0.2",
                         offset=1480, more=more, ident=0x1234, payload=b"z" * 16)
    pkt = Ether(raw)
    ip = pkt[IP]
    assert (ip.proto, ip.frag * 8, ip.id, ip.len) == (17, 1480, 0x1234, 36)
    assert ip.flags == ("MF" if more else 0)
    assert bytes(ip.payload)[:16] == b"z" * 16  # no UDP header: the datagram's middle
    again = Ether(raw)
    del again[IP].chksum
    assert Ether(bytes(again))[IP].chksum == ip.chksum


def test_ipv6_later_fragment_is_valid() -> None:
    raw = fragment_frame(src_mac=MAC_A, dst_mac=MAC_B, src="fd00::1", dst="fd00::2",
                         proto=6, offset=2048, more=True, ident=77, payload=b"q" * 16)
    pkt = Ether(raw)
    assert (pkt[IPv6].nh, pkt[IPv6].plen) == (44, 24)
    frag = pkt[IPv6ExtHdrFragment]
    assert (frag.nh, frag.offset * 8, frag.m, frag.id) == (6, 2048, 1, 77)
    assert bytes(frag.payload) == b"q" * 16


@pytest.mark.parametrize("offset", [0, 12, 1 << 16])
def test_fragment_offset_must_be_a_positive_multiple_of_8(offset: int) -> None:
    with pytest.raises(TrafficError, match="multiple of 8"):
        fragment_frame(src_mac=MAC_A, dst_mac=MAC_B, src="10.0.0.1", dst="10.0.0.2",
                       offset=offset)


@pytest.mark.parametrize(("build", "src", "network"), [
    (udp_frame, "10.0.0.1", "10.160.0.0/16"),
    (syn_frame, "10.0.0.1", "10.160.0.0/16"),
    (udp_frame, "fd00::1", "fd00:a:0:7::/64"),
    (syn_frame, "fd00::1", "fd00:a:0:7::/64"),
    (icmp_frame, "fd00::1", "fd00:a:0:7::/64"),
])
def test_with_sources_equals_building_each_frame(build: Any, src: str, network: str) -> None:
    dst = "10.0.0.2" if "." in src else "fd00::2"
    template = build(src_mac=MAC_A, dst_mac=MAC_B, src=src, dst=dst)
    sources = random_sources(network, 500, seed=1)
    fast = with_sources(template, sources)
    for s, raw in zip(sources, fast, strict=True):
        assert raw == build(src_mac=MAC_A, dst_mac=MAC_B, src=s, dst=dst), s


@pytest.mark.parametrize("raw", [
    icmp_frame(src_mac=MAC_A, dst_mac=MAC_B, src="10.0.0.1", dst="10.0.0.2"),
    proto_frame(src_mac=MAC_A, dst_mac=MAC_B, src="fd00::1", dst="fd00::2", proto=47),
    fragment_frame(src_mac=MAC_A, dst_mac=MAC_B, src="10.0.0.1", dst="10.0.0.2"),
    udp_frame(src_mac=MAC_A, dst_mac=MAC_B, src="10.0.0.1", dst="10.0.0.2")[:12] + b"\x08\x06",
])
def test_with_sources_refuses_what_it_cannot_update(raw: bytes) -> None:
    with pytest.raises(TrafficError, match="with_sources"):
        with_sources(raw, ["10.0.0.9"])


def test_random_sources_are_distinct_hosts_of_the_network() -> None:
    srcs = random_sources("10.160.0.0/16", 5000, seed=3)
    assert len(set(srcs)) == 5000
    net = ipaddress.ip_network("10.160.0.0/16")
    assert all(ipaddress.ip_address(s) in net for s in srcs)
    assert random_sources("10.160.0.0/16", 10, seed=3) == random_sources(
        "10.160.0.0/16", 10, seed=3)
    assert len(set(random_sources("fd00:5::/64", 100))) == 100
    # written as ipaddress writes them (sources are matched as text)
    for s in random_sources("fd00:5::/64", 300) + random_sources("fd00::/120", 200):
        assert s == str(ipaddress.ip_address(s))
    with pytest.raises(TrafficError):
        random_sources("10.0.0.0/30", 3)


def _flow(**kw: float) -> Flow:
    args: dict[str, float] = {"rate": 100.0, "start": 1.0, "stop": 5.0}
    args.update(kw)
    return Flow("s", "attack", 0, (b"\0" * 60,), args["rate"], args["start"], args["stop"],
                args.get("on", 0.0), args.get("off", 0.0))


def test_continuous_flow_schedule() -> None:
    f = _flow()
    assert f.total() == 400
    assert f.due(0.5) == 0
    assert f.due(1.5) == 50
    assert f.due(99) == 400
    assert f.when(1) == pytest.approx(1.01)
    assert f.when(400) == pytest.approx(5.0)


def test_pulse_sends_only_while_on() -> None:
    f = _flow(on=0.5, off=0.5)  # from 1 s: on [1, 1.5), off [1.5, 2), on [2, 2.5) ...
    assert f.total() == 200
    assert f.due(1.5) == 50
    assert f.due(1.9) == 50
    assert f.due(2.25) == 75
    assert f.when(51) == pytest.approx(2.01)
    assert f.when(50) == pytest.approx(1.5)


@given(rate=st.floats(1, 1e5), on=st.floats(0.05, 2), off=st.floats(0.05, 2),
       n=st.integers(1, 10_000))
def test_when_inverts_due(rate: float, on: float, off: float, n: int) -> None:
    f = _flow(rate=rate, start=0.0, stop=1e6, on=on, off=off)
    t = f.when(n)
    assert f.due(t + 1e-7) >= n
    assert f.due(t - 1e-6 * max(1.0, t)) <= n


@pytest.mark.parametrize("bad", [
    {"rate": -1.0}, {"start": 3.0, "stop": 2.0}, {"on": 1.0}, {"off": 1.0},
])
def test_bad_flows_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(TrafficError):
        _flow(**bad)


def test_role_must_be_known() -> None:
    with pytest.raises(TrafficError):
        Flow("s", "friend", 0, (b"\0" * 60,), 1.0, 0.0, 1.0)


def test_bins_are_shared_memory_indexed_by_time() -> None:
    b = Bins(2.0, width=0.1)
    assert b.n == 21
    assert b.index(-1) == 0
    assert b.index(0.35) == 3
    assert b.index(100) == 20
    b.counts[1, 3] += 5
    assert b.snapshot()[1, 3] == 5
    assert math.isclose(b.times()[3], 0.3)


def test_groups_have_rows_after_the_roles() -> None:
    b = Bins(1.0, width=0.1, groups=("victim_clients", "new_clients"))
    assert b.counts.shape == (4, 11)
    assert [b.row(n) for n in ("attack", "legit", "victim_clients", "new_clients")] == [
        0, 1, 2, 3]
    with pytest.raises(TrafficError):
        b.row("nobody")
    with pytest.raises(TrafficError):
        Bins(1.0, groups=("legit",))
    with pytest.raises(TrafficError):
        Bins(1.0, groups=("a", "a"))
