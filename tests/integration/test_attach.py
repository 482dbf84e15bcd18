"""The real filter attached to a veth, in native and in generic mode, with real packets.

Each test builds its own pair of network namespaces (a peer side that sends,
a proxy side where the filter runs), sends from the peer side only, and
removes everything afterwards.  No mocks: the compiled program, the kernel's
XDP hook, and UDP sockets that count what passes.

Every backend refuses, at attach, an interface whose frames have no Ethernet
header (a tun, an ipip or gre tunnel, made in the test's namespace), and
takes veth and loopback.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.links import LINK_TYPES, add_link
from xpro.backends import Backend
from xpro.backends.afxdp import AfxdpBackend
from xpro.backends.offload import OffloadBackend
from xpro.backends.xdp import AutoBackend, GenericBackend, NativeBackend
from xpro.bpf import BpfObject, XdpLink, XdpMode, object_path, xdp_query
from xpro.core import layout
from xpro.core.layout import Reason, addr16
from xpro.core.model import FilterParams, mask_source
from xpro.core.params import Sizes
from xpro.datapath.host import link_info
from xpro.errors import LinkTypeNotSupported
from xpro.lab.frames import (
    ETH_P_ARP,
    Stream,
    UdpCounter,
    arp_request,
    send_in_netns,
    udp_frame,
)
from xpro.lab.namespaces import NsPair, Topology, in_netns, netns_pair

pytestmark = pytest.mark.integration

NS = 1_000_000_000
T_F1 = 100  # packets/s per source
T_T2 = 0.5  # s before a source is judged
PORT = 9000
MODES = [pytest.param(XdpMode.NATIVE, id="native"), pytest.param(XdpMode.GENERIC, id="generic")]


@pytest.fixture
def pair() -> Iterator[NsPair]:
    with netns_pair() as p:
        yield p


@pytest.fixture
def filt() -> Iterator[BpfObject]:
    obj = BpfObject(
        object_path(),
        programs=["xpro_xdp"],
        max_entries={"flows": 4096, "dsts": 1024},
        types=layout.MAP_TYPES,
    )
    try:
        obj.load()
        view = obj.global_data(".data", layout.CONFIG).view
        view["t_f1"] = T_F1
        view["t_t2"] = int(T_T2 * NS)
        view["t_f2"] = 10**9  # the per-destination check stays out of these tests
        yield obj
    finally:
        obj.close()


@pytest.fixture(params=MODES)
def attached(
    request: pytest.FixtureRequest, pair: NsPair, filt: BpfObject
) -> Iterator[tuple[NsPair, BpfObject, XdpLink]]:
    mode: XdpMode = request.param
    link = filt.programs["xpro_xdp"].attach_xdp(pair.proxy_if, mode, netns=pair.proxy_ns)
    try:
        yield pair, filt, link
    finally:
        link.detach()
        link.close()


def stats(obj: BpfObject) -> dict[Reason, int]:
    m = obj.maps["stats"]
    return {r: int(m.sum(int(r))["packets"]) for r in Reason}


def flow_count(obj: BpfObject, src: str, dst: str) -> int:
    # The flow is keyed on the source's prefix (/64 and /32 by default).
    p = FilterParams()
    masked = mask_source(addr16(src), ":" in src, p.source_prefix_v4, p.source_prefix_v6)
    key = masked + addr16(dst) + b"\0" * 4  # dst_mode addr: no port, no proto
    return int(obj.maps["flows"][key]["c"])


def udp(pair: NsPair, src: str, sport: int) -> bytes:
    dst = pair.proxy_addr6 if ":" in src else pair.proxy_addr4
    return udp_frame(src_mac=pair.peer_mac, dst_mac=pair.proxy_mac, src=src, dst=dst,
                     sport=sport, dport=PORT)  # fmt: skip


def test_flood_is_dropped_and_legitimate_traffic_passes(
    attached: tuple[NsPair, BpfObject, XdpLink],
) -> None:
    pair, obj, link = attached
    flood, legit, legit6 = "10.77.0.66", "10.77.0.10", "fd00:77::10"
    flood_rate, duration = 4000, 2.5
    streams = [
        Stream("flood", udp(pair, flood, 40000), flood_rate),
        Stream("legit", udp(pair, legit, 40001), 40),
        Stream("legit6", udp(pair, legit6, 40002), 40),
    ]
    with UdpCounter(pair.proxy_ns, PORT) as rx:
        sent = send_in_netns(pair.peer_ns, pair.peer_if, streams, duration)
    got = rx.counts
    st = stats(obj)
    assert sent == {"flood": 10000, "legit": 100, "legit6": 100}

    # the legitimate streams pass whole, IPv4 and IPv6
    assert got[legit] == sent["legit"]
    assert got[legit6] == sent["legit6"]
    # the flood passes until its window is longer than T_T2, then it is dropped
    assert 0.5 * flood_rate * T_T2 <= got[flood] <= flood_rate * (T_T2 + 0.5)
    # every flood packet either reached the socket or was dropped for its rate
    assert got[flood] + st[Reason.SRC_RATE] == sent["flood"]
    # the program counted every packet of each flow
    assert flow_count(obj, flood, pair.proxy_addr4) == sent["flood"]
    assert flow_count(obj, legit, pair.proxy_addr4) == sent["legit"]
    assert flow_count(obj, legit6, pair.proxy_addr6) == sent["legit6"]
    # nothing else was dropped; PASS also holds the kernel's own IPv6 chatter
    assert st[Reason.DST_RATE] == st[Reason.MALFORMED] == st[Reason.DENY] == 0
    assert st[Reason.MON_SRC_RATE] == st[Reason.MON_DST_RATE] == 0
    assert st[Reason.PASS] >= got[flood] + got[legit] + got[legit6]
    assert st[Reason.PASS] <= got[flood] + got[legit] + got[legit6] + 50
    assert xdp_query(pair.proxy_if, netns=pair.proxy_ns)[link.mode.label] == link.prog_id


def _arp_replies(peer_ns: str, peer_if: str, proxy_addr: str, frames: list[bytes]) -> int:
    """Send ARP requests on the peer side, count the replies from ``proxy_addr``."""
    with in_netns(peer_ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    with sock:
        sock.bind((peer_if, ETH_P_ARP))
        for f in frames:
            sock.send(f)
        sock.settimeout(0.5)
        replies = 0
        target = socket.inet_aton(proxy_addr)
        try:
            while True:
                data, addr = sock.recvfrom(2048)
                outgoing = addr[2] == socket.PACKET_OUTGOING
                if not outgoing and data[20:22] == b"\0\x02" and data[28:32] == target:
                    replies += 1
        except TimeoutError:
            pass
    return replies


def test_arp_passes(attached: tuple[NsPair, BpfObject, XdpLink]) -> None:
    pair, obj, _ = attached
    frame = arp_request(src_mac=pair.peer_mac, src=pair.peer_addr4, target=pair.proxy_addr4)
    before = stats(obj)[Reason.NON_IP]
    replies = _arp_replies(pair.peer_ns, pair.peer_if, pair.proxy_addr4, [frame] * 20)
    assert replies == 20
    assert stats(obj)[Reason.NON_IP] - before >= 20


def test_thresholds_change_while_running(attached: tuple[NsPair, BpfObject, XdpLink]) -> None:
    pair, obj, _ = attached
    flood = "10.77.0.77"
    streams = [Stream("flood", udp(pair, flood, 40000), 2000)]
    with UdpCounter(pair.proxy_ns, PORT) as rx:
        first = send_in_netns(pair.peer_ns, pair.peer_if, streams, 1.5)["flood"]
    assert rx.counts[flood] < first  # over T_F1: mostly dropped
    dropped = stats(obj)[Reason.SRC_RATE]
    assert dropped > 0

    obj.global_data(".data", layout.CONFIG).view["t_f1"] = 10**6  # no reload
    with UdpCounter(pair.proxy_ns, PORT) as rx:
        second = send_in_netns(pair.peer_ns, pair.peer_if, streams, 1.0)["flood"]
    assert rx.counts[flood] == second  # now under the limit: all pass
    assert stats(obj)[Reason.SRC_RATE] == dropped
    # the flow kept its state across the change
    assert flow_count(obj, flood, pair.proxy_addr4) == first + second


@pytest.mark.parametrize("mode", MODES)
def test_detach_leaves_the_interface_clean(
    pair: NsPair, filt: BpfObject, mode: XdpMode
) -> None:
    link = filt.programs["xpro_xdp"].attach_xdp(pair.proxy_if, mode, netns=pair.proxy_ns)
    try:
        q = xdp_query(pair.proxy_if, netns=pair.proxy_ns)
        assert q[mode.label] == link.prog_id != 0
        assert all(q[m.label] == 0 for m in XdpMode if m is not mode)
    finally:
        link.detach()
        link.close()
    q = xdp_query(pair.proxy_if, netns=pair.proxy_ns)
    assert q["native"] == q["generic"] == q["offload"] == q["prog_id"] == 0

    # without the filter the same flood passes whole
    streams = [Stream("flood", udp(pair, "10.77.0.66", 40000), 3000)]
    before = stats(filt)
    with UdpCounter(pair.proxy_ns, PORT) as rx:
        sent = send_in_netns(pair.peer_ns, pair.peer_if, streams, 1.0)
    assert rx.counts["10.77.0.66"] == sent["flood"] == 3000
    assert stats(filt) == before


# --- interfaces whose frames have no Ethernet header ---------------------------------


@pytest.fixture
def topo() -> Iterator[Topology]:
    with Topology() as t:
        yield t


def _backend(name: str, netns: str, **options: Any) -> Backend:
    cls: type[Backend] = {"native": NativeBackend, "generic": GenericBackend,
                          "auto": AutoBackend, "offload": OffloadBackend,
                          "afxdp": AfxdpBackend}[name]
    return cls(params=FilterParams(), sizes=Sizes(flows=1024, dsts=64, prefixes=16),
               netns=netns, options=options)


BACKENDS = ["native", "generic", "auto", "offload", "afxdp"]


@pytest.mark.parametrize("kind", ["tun", "ipip", "gre"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_refuses_a_link_without_ethernet_headers(
        topo: Topology, kind: str, backend: str) -> None:
    """tun (ARPHRD_NONE), ipip (ARPHRD_TUNNEL) and gre (ARPHRD_IPGRE) frames start
    with an IP header: the parser would read it as MAC addresses and an ethertype.
    Every backend refuses them at attach, naming the interface, its link type and
    what to do, and leaves nothing attached."""
    proxy, svc = topo.namespace("proxy"), topo.namespace("svc")
    ifname = add_link(topo, proxy, kind)
    assert link_info(ifname, proxy).link_type_name == LINK_TYPES[kind]
    egress, _ = topo.veth(proxy, svc)
    options: dict[str, Any] = {"egress": egress} if backend == "afxdp" else {}
    b = _backend(backend, proxy, **options)
    try:
        with pytest.raises(LinkTypeNotSupported) as exc:
            b.attach(ifname)
    finally:
        b.close()
    msg = str(exc.value)
    assert f"cannot attach to {ifname} in network namespace {proxy!r}" in msg
    assert LINK_TYPES[kind] in msg
    assert "no Ethernet header" in msg
    assert "Instead, attach xpro to the Ethernet interface the traffic arrives on" in msg
    q = xdp_query(ifname, netns=proxy)
    assert q["native"] == q["generic"] == q["offload"] == 0


def test_afxdp_refuses_an_egress_without_ethernet_headers(topo: Topology) -> None:
    """Passed frames leave by the egress as Ethernet frames: a tun there is refused too."""
    peer, proxy = topo.namespace("peer"), topo.namespace("proxy")
    _, ingress = topo.veth(peer, proxy)
    egress = add_link(topo, proxy, "tun")
    b = _backend("afxdp", proxy, egress=egress)
    try:
        with pytest.raises(LinkTypeNotSupported,
                           match=f"cannot send passed frames out of {egress} .*ARPHRD_NONE"):
            b.attach(ingress)
    finally:
        b.close()
    assert xdp_query(ingress, netns=proxy)["native"] == 0


@pytest.mark.parametrize("backend", ["native", "generic", "auto", "afxdp"])
def test_ethernet_links_are_taken(topo: Topology, backend: str) -> None:
    """The positive case: a veth (ARPHRD_ETHER) attaches with every backend."""
    peer, proxy, svc = (topo.namespace(r) for r in ("peer", "proxy", "svc"))
    _, ifname = topo.veth(peer, proxy)
    assert link_info(ifname, proxy).link_type_name == "ARPHRD_ETHER"
    egress, _ = topo.veth(proxy, svc)
    options: dict[str, Any] = {"egress": egress} if backend == "afxdp" else {}
    b = _backend(backend, proxy, **options)
    try:
        att = b.attach(ifname)
        assert att.prog_id != 0
    finally:
        b.close()


def test_loopback_is_taken(topo: Topology) -> None:
    """ARPHRD_LOOPBACK frames carry an Ethernet header (zero MACs) in XDP too:
    loopback is not refused, and the program sees IP there (not "not IP")."""
    proxy = topo.namespace("proxy")
    assert link_info("lo", proxy).link_type_name == "ARPHRD_LOOPBACK"
    b = _backend("generic", proxy)
    try:
        assert b.attach("lo").mode == "generic"
        filt = b.load()
        with in_netns(proxy):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            for _ in range(5):
                sock.sendto(b"x", ("127.0.0.1", PORT))
        st = filt.counters()
        assert int(st[Reason.PASS, 0]) >= 5
    finally:
        b.close()
