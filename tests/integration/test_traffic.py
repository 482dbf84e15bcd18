"""xpro.lab.frames: frames the kernel accepts, paced at the asked rates, counted on arrival."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from xpro.lab.frames import Stream, UdpCounter, arp_request, send_in_netns, send_streams, udp_frame
from xpro.lab.namespaces import NsPair, netns_pair

pytestmark = pytest.mark.integration

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"


@pytest.fixture
def pair() -> Iterator[NsPair]:
    with netns_pair() as p:
        yield p


def test_ipv4_frame_is_valid() -> None:
    raw = udp_frame(src_mac=MAC_A, dst_mac=MAC_B, src="10.0.0.1", dst="10.0.0.2",
                    sport=1234, dport=9000, payload=b"hello")  # fmt: skip
    assert len(raw) == 60
    pkt = Ether(raw)
    assert pkt.src == MAC_A
    assert pkt.dst == MAC_B
    ip = pkt[IP]
    assert (ip.src, ip.dst, ip.ttl, ip.len) == ("10.0.0.1", "10.0.0.2", 64, 33)
    assert (pkt[UDP].sport, pkt[UDP].dport, bytes(pkt[UDP].payload)[:5]) == (1234, 9000, b"hello")
    # scapy recomputes both checksums when they are deleted
    again = Ether(raw)
    del again[IP].chksum
    del again[UDP].chksum
    rebuilt = Ether(bytes(again))
    assert rebuilt[IP].chksum == ip.chksum
    assert rebuilt[UDP].chksum == pkt[UDP].chksum


def test_ipv6_frame_is_valid() -> None:
    raw = udp_frame(src_mac=MAC_A, dst_mac=MAC_B, src="fd00::1", dst="fd00::2")
    pkt = Ether(raw)
    assert (pkt[IPv6].src, pkt[IPv6].dst, pkt[IPv6].nh) == ("fd00::1", "fd00::2", 17)
    again = Ether(raw)
    del again[UDP].chksum
    assert Ether(bytes(again))[UDP].chksum == pkt[UDP].chksum


def test_arp_request() -> None:
    pkt = Ether(arp_request(src_mac=MAC_A, src="10.0.0.1", target="10.0.0.2"))
    assert pkt.dst == "ff:ff:ff:ff:ff:ff"
    assert (pkt[ARP].op, pkt[ARP].psrc, pkt[ARP].pdst, pkt[ARP].hwsrc) == (
        1, "10.0.0.1", "10.0.0.2", MAC_A,
    )  # fmt: skip


def test_streams_arrive_at_their_rates(pair: NsPair) -> None:
    def frame(src: str, dst: str, sport: int) -> bytes:
        return udp_frame(src_mac=pair.peer_mac, dst_mac=pair.proxy_mac, src=src, dst=dst,
                         sport=sport, dport=9000)  # fmt: skip

    streams = [
        Stream("flood", frame("10.77.0.66", pair.proxy_addr4, 40000), 15000),
        Stream("legit", frame("10.77.0.10", pair.proxy_addr4, 40001), 100),
        Stream("v6", frame("fd00:77::10", pair.proxy_addr6, 40002), 500),
    ]
    duration = 2.0
    with UdpCounter(pair.proxy_ns, 9000) as rx:
        t0 = time.perf_counter()
        sent = send_in_netns(pair.peer_ns, pair.peer_if, streams, duration)
        elapsed = time.perf_counter() - t0
    assert sent == {"flood": 30000, "legit": 200, "v6": 1000}
    # a few percent: the child's start and the last sleep are in `elapsed`
    assert duration <= elapsed < duration * 1.15
    # valid checksums: the kernel delivered every frame to the socket
    assert rx.counts == {"10.77.0.66": 30000, "10.77.0.10": 200, "fd00:77::10": 1000}


def test_rate_is_even_over_time(pair: NsPair) -> None:
    frame = udp_frame(src_mac=pair.peer_mac, dst_mac=pair.proxy_mac, src="10.77.0.5",
                      dst=pair.proxy_addr4)  # fmt: skip
    with UdpCounter(pair.proxy_ns, 9000) as rx:
        child = pair.topology.spawn(
            pair.peer_ns, send_streams, pair.peer_if, [Stream("s", frame, 2000)], 3.0
        )
        time.sleep(1.5)
        halfway = sum(rx.snapshot().values())
        assert child.result(timeout=30) == {"s": 6000}
    # about half of the frames by half-time (the child needs a moment to start)
    assert 2400 <= halfway <= 3300
    assert rx.counts["10.77.0.5"] == 6000
