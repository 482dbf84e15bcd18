"""Frames for tests, crafted with scapy (docs/dependencies.rst)."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from xpro.bpf.object import Program

SRC_MAC = "02:00:00:00:00:01"
DST_MAC = "02:00:00:00:00:02"


def _l2(vlans: int) -> Packet:
    eth = Ether(src=SRC_MAC, dst=DST_MAC)
    if vlans >= 3:  # one more than the parser walks
        return eth / Dot1AD(vlan=100) / Dot1Q(vlan=200) / Dot1Q(vlan=300)
    if vlans >= 2:
        return eth / Dot1AD(vlan=100) / Dot1Q(vlan=200)
    if vlans == 1:
        return eth / Dot1Q(vlan=100)
    return eth


def frame(
    src: str,
    dst: str,
    *,
    proto: str = "udp",
    dport: int = 53,
    sport: int = 40000,
    vlans: int = 0,
    payload: int = 18,
    frag: bool = False,
    ext: tuple[str, ...] = (),
) -> bytes:
    """One Ethernet frame from ``src`` to ``dst`` (IPv4 or IPv6 by address)."""
    v6 = ipaddress.ip_address(src).version == 6
    if v6:
        ip: Packet = IPv6(src=src, dst=dst)
        for name in ext:
            ip = ip / {
                "hop": IPv6ExtHdrHopByHop,
                "route": IPv6ExtHdrRouting,
                "dest": IPv6ExtHdrDestOpt,
                "frag": IPv6ExtHdrFragment,
            }[name]()
        if frag and "frag" not in ext:
            ip = ip / IPv6ExtHdrFragment(m=1)
    else:
        ip = IP(src=src, dst=dst, flags="MF" if frag else 0)
    l4: Packet
    if proto == "udp":
        l4 = UDP(sport=sport, dport=dport)
    elif proto == "tcp":
        l4 = TCP(sport=sport, dport=dport, flags="S")
    elif proto == "icmp":
        l4 = ICMP()
    else:
        raise ValueError(proto)
    return bytes(_l2(vlans) / ip / l4 / Raw(b"x" * payload))


def arp_frame() -> bytes:
    return bytes(Ether(src=SRC_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.0.0.1"))


def run_frames(program: Program, fr: bytes, n: int) -> list[int]:
    """Run ``program`` on ``fr`` ``n``
    times; returns the verdicts.  One BPF_PROG_TEST_RUN per frame: a single
    run with ``repeat > 1`` makes the kernel install the program in the XDP
    dispatcher and remove it again, an RCU grace period each (about 30 ms a
    call on the test machines, against 0.14 ms for one frame), which is what
    the packet-level tests spent most of their time on."""
    return [program.test_run(fr, data_out=False).retval for _ in range(n)]
