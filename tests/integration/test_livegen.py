"""xpro.lab.livegen on a real veth pair: frames leave the peer namespace and arrive at the proxy.

Arrival is checked where it happens: in the XDP program on the proxy's end
(the xpro filter's flow record of the generator's source) and, with GRO on
instead of a program, at a UDP socket in the proxy namespace, which only sees
frames whose IPv4 header and UDP checksums are valid.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import time
from collections.abc import Iterator

import numpy as np
import pytest

from xpro.bpf import XdpMode, xdp_query
from xpro.bpf.xdp import attach_xdp
from xpro.core.layout import addr16
from xpro.core.model import FilterParams
from xpro.core.params import Sizes
from xpro.datapath.xdp import XdpFilter
from xpro.lab.frames import Stream, UdpCounter, send_streams, udp_frame
from xpro.lab.livegen import LiveGenerator, LiveGenError, send_live
from xpro.lab.namespaces import NsPair, add_route, driver_stats, netns_pair, run_in_netns, set_gro

pytestmark = pytest.mark.integration

PORT = 9000


@pytest.fixture
def pair() -> Iterator[NsPair]:
    with netns_pair() as p:
        yield p


@pytest.fixture
def gro_pair(pair: NsPair) -> NsPair:
    """The pair with GRO on at the proxy end (it takes XDP_TX'ed frames without a program)
    and a default route there (spoofed sources pass reverse-path checks)."""
    set_gro(pair.proxy_if, pair.proxy_ns, on=True)
    add_route("default", pair.proxy_ns, ifname=pair.proxy_if)
    return pair


def frame4(p: NsPair, src: str | None = None) -> bytes:
    return udp_frame(src_mac=p.peer_mac, dst_mac=p.proxy_mac, src=src or p.peer_addr4,
                     dst=p.proxy_addr4, dport=PORT)


def count_of(filt: XdpFilter, src: str) -> int:
    """Packets the filter counted from ``src`` (the kernel also sends a few of its own,
    IPv6 router solicitations and MLD reports, from other sources)."""
    keys, vals = filt.read_flows()
    mine = keys["src"] == np.frombuffer(addr16(src), dtype="S16")[0]
    assert mine.sum() == 1
    return int(vals[mine]["c"][0])


def xmit_stat(stats: dict[str, int], name: str) -> int:
    """A veth's ``tx_queue_N_<name>`` counter, summed over its queues."""
    found = [v for k, v in stats.items() if re.fullmatch(rf"tx_queue_\d+_{name}", k)]
    assert found, f"no tx_queue_N_{name} in {sorted(stats)}"
    return sum(found)


def test_frames_reach_the_xdp_program_of_the_peer(pair: NsPair) -> None:
    # Thresholds no test reaches: the filter counts every frame and passes it.
    params = FilterParams(t_f1=1 << 30, t_f2=1 << 30, events=False)
    with XdpFilter(params, sizes=Sizes(flows=1024, dsts=64)) as filt:
        link = attach_xdp(filt.program, pair.proxy_if, XdpMode.NATIVE, netns=pair.proxy_ns)
        try:
            with LiveGenerator(pair.peer_if, pair.peer_ns, [frame4(pair)]) as gen:
                sent = gen.send(50_000)
            time.sleep(0.2)
            received = count_of(filt, pair.peer_addr4)
        finally:
            link.detach()
            link.close()
    assert sent == 50_000
    assert received == 50_000


def test_paced_rate_is_exact_and_even(gro_pair: NsPair) -> None:
    p = gro_pair
    rate, duration = 20_000.0, 1.5
    with UdpCounter(p.proxy_ns, PORT) as rx:
        child = p.topology.spawn(p.peer_ns, send_live, p.peer_if, None, [frame4(p)], duration,
                                 rate=rate)
        time.sleep(0.2 + duration / 2)  # the child needs a moment to start
        halfway = sum(rx.snapshot().values())
        sent, elapsed = child.result(timeout=30)
    assert sent == int(rate * duration)
    # the last burst ends late by a kernel call's fixed cost (~25 ms here, more when busy)
    assert duration <= elapsed < duration + 0.5  # loose: a loaded CI machine
    assert rx.counts == {p.peer_addr4: sent}
    assert 0.3 * sent <= halfway <= 0.75 * sent


def test_high_paced_rate_is_exact(pair: NsPair) -> None:
    # Counted by the XDP program: a UDP socket read by Python falls behind at this rate.
    rate, duration = 200_000.0, 1.0
    params = FilterParams(t_f1=1 << 30, t_f2=1 << 30, events=False)
    with XdpFilter(params, sizes=Sizes(flows=1024, dsts=64)) as filt:
        link = attach_xdp(filt.program, pair.proxy_if, XdpMode.NATIVE, netns=pair.proxy_ns)
        try:
            before = driver_stats(pair.peer_if, pair.peer_ns)
            sent, elapsed = run_in_netns(pair.peer_ns, send_live, pair.peer_if, None,
                                         [frame4(pair)], duration, rate=rate)
            time.sleep(0.2)
            after = driver_stats(pair.peer_if, pair.peer_ns)
            received = count_of(filt, pair.peer_addr4)
        finally:
            link.detach()
            link.close()
    assert sent == 200_000
    # the last kernel call ends late by its fixed cost (an RCU grace period:
    # ~25 ms, more on a busy machine)
    assert duration <= elapsed < duration + 0.5  # loose: a loaded CI machine
    # The ledger is exact: every frame was taken by the veth's ring and counted
    # by the program, or counted by the driver as a drop.  Paced, almost none
    # is dropped; on a loaded machine the receiving softirq can still fall
    # behind one batch now and then (CI once saw 129 of 200 000).
    taken = xmit_stat(after, "xdp_xmit") - xmit_stat(before, "xdp_xmit")
    lost = xmit_stat(after, "xdp_xmit_errors") - xmit_stat(before, "xdp_xmit_errors")
    assert taken + lost == sent
    assert received == taken
    assert lost <= 0.01 * sent, lost


def test_unpaced_run_floods(pair: NsPair) -> None:
    params = FilterParams(t_f1=1 << 30, t_f2=1 << 30, events=False)
    with XdpFilter(params, sizes=Sizes(flows=1024, dsts=64)) as filt:
        link = attach_xdp(filt.program, pair.proxy_if, XdpMode.NATIVE, netns=pair.proxy_ns)
        try:
            before = driver_stats(pair.peer_if, pair.peer_ns)
            with LiveGenerator(pair.peer_if, pair.peer_ns, [frame4(pair)]) as gen:
                sent = gen.run(1.0)
                elapsed = gen.elapsed
            time.sleep(0.2)
            after = driver_stats(pair.peer_if, pair.peer_ns)
            received = count_of(filt, pair.peer_addr4)
        finally:
            link.detach()
            link.close()
    assert 0.9 <= elapsed < 2.5  # stops near its duration (loose for a loaded machine)
    # Millions of frames/s on a quiet machine; the bound leaves room for a busy one
    # (other floods' softirqs run inside the generator's kernel loop), and still
    # fails when the calls stay small and their fixed cost dominates.
    assert sent / elapsed > 300_000
    # The veth's ring (256 frames) overflows when the receiving softirq falls
    # behind, which on a fast sender can be most frames: how many arrive
    # depends on how the two share the cores (CI saw 30 %, then 5.7 %), so
    # it is no assertion.  The ledger is exact all the same: every frame sent
    # was either taken by the ring and counted by the program, or counted by
    # the driver as a drop.
    taken = xmit_stat(after, "xdp_xmit") - xmit_stat(before, "xdp_xmit")
    lost = xmit_stat(after, "xdp_xmit_errors") - xmit_stat(before, "xdp_xmit_errors")
    assert taken + lost == sent
    assert received == taken
    assert received > 0


def test_several_frames_take_turns(gro_pair: NsPair) -> None:
    p = gro_pair
    srcs = ["10.77.0.10", "10.77.0.11", "10.77.0.12"]
    with UdpCounter(p.proxy_ns, PORT) as rx:
        sent, _ = run_in_netns(p.peer_ns, send_live, p.peer_if, None,
                               [frame4(p, s) for s in srcs], 1.0, rate=30_000)
    assert sent == 30_000
    counts = [rx.counts[s] for s in srcs]
    assert sum(counts) == sent
    assert all(8_000 <= c <= 12_000 for c in counts), counts


def test_spoofed_sources_arrive_valid_and_varied(gro_pair: NsPair) -> None:
    p = gro_pair
    net = ipaddress.ip_network("10.200.0.0/24")
    with UdpCounter(p.proxy_ns, PORT) as rx:
        sent, _ = run_in_netns(p.peer_ns, send_live, p.peer_if, None, [frame4(p)], 0.5,
                               rate=10_240, spoof=str(net), spoof_order="sequential")
    assert sent == 5120
    # every frame reached the socket: the IPv4 and UDP checksums were valid;
    # sequential sources cycle through the /24, twenty times each
    assert rx.counts == {str(a): 20 for a in net}


def test_spoofed_ipv6_sources_arrive_valid(gro_pair: NsPair) -> None:
    p = gro_pair
    frame = udp_frame(src_mac=p.peer_mac, dst_mac=p.proxy_mac, src=p.peer_addr6,
                      dst=p.proxy_addr6, dport=PORT)
    net = ipaddress.ip_network("fd00:66::/112")
    with UdpCounter(p.proxy_ns, PORT) as rx:
        sent, _ = run_in_netns(p.peer_ns, send_live, p.peer_if, None, [frame], 0.5,
                               rate=4000, spoof=str(net))
    assert sent == 2000
    # IPv6 UDP checksums are mandatory: a wrong one never reaches the socket
    assert sum(rx.counts.values()) == sent
    assert all(ipaddress.ip_address(a) in net for a in rx.counts)
    assert len(rx.counts) >= 1900  # random over 65536 addresses: few repeats


def test_program_is_held_on_the_sender_and_passes_what_it_receives(pair: NsPair) -> None:
    p = pair
    # Frames the proxy side sends to the peer meet the held program there.
    back = udp_frame(src_mac=p.proxy_mac, dst_mac=p.peer_mac, src=p.proxy_addr4,
                     dst=p.peer_addr4, dport=PORT)
    params = FilterParams(t_f1=1 << 30, t_f2=1 << 30, events=False)
    with XdpFilter(params, sizes=Sizes(flows=1024, dsts=64)) as filt:
        link = attach_xdp(filt.program, p.proxy_if, XdpMode.NATIVE, netns=p.proxy_ns)
        try:
            gen = LiveGenerator(p.peer_if, p.peer_ns, [frame4(p)])
            try:
                assert gen.send(1000) == 1000
                assert gen.held, gen.hold_error
                assert xdp_query(p.peer_if, p.peer_ns)["generic"] == gen._prog.id
                with UdpCounter(p.peer_ns, PORT) as rx:
                    run_in_netns(p.proxy_ns, send_streams, p.proxy_if,
                                 [Stream("back", back, 2000)], 0.5)
                assert rx.counts == {p.proxy_addr4: 1000}
            finally:
                gen.close()
            assert xdp_query(p.peer_if, p.peer_ns)["prog_id"] == 0
            time.sleep(0.2)
            assert count_of(filt, p.peer_addr4) == 1000
        finally:
            link.detach()
            link.close()


def test_second_generator_on_an_interface_runs_without_the_hold(gro_pair: NsPair) -> None:
    p = gro_pair
    with LiveGenerator(p.peer_if, p.peer_ns, [frame4(p, "10.77.0.20")]) as first, \
            LiveGenerator(p.peer_if, p.peer_ns, [frame4(p, "10.77.0.21")], rate=2000) as second:
        first.send(100)
        with UdpCounter(p.proxy_ns, PORT) as rx:
            assert second.run(0.5) == 1000
        assert first.held
        assert not second.held
        assert second.hold_error is not None
        assert "10.77.0.20" not in rx.counts
        assert rx.counts == {"10.77.0.21": 1000}


def _forward(forwarded: bool) -> tuple[int, int, int, list[tuple[float, int]]]:
    """Send into the lab's topology (net -> p0, which routes on -> svc) at a rate whose
    bursts are several batches long: (sent, taken by the veth, its errors, the calls)."""
    from xpro.lab.topology import build_lab

    with build_lab(1) as lab:
        site = lab.proxies[0]
        fr = udp_frame(src_mac=site.net_mac, dst_mac=site.outside_mac, src="10.128.0.1",
                       dst="10.200.0.1", dport=PORT)
        before = driver_stats(site.net_if, lab.net_ns)
        with LiveGenerator(site.net_if, lab.net_ns, [fr], rate=300_000,
                           forwarded=forwarded) as gen:
            sent = gen.run(1.0)
            calls = gen.calls
        time.sleep(0.2)
        after = driver_stats(site.net_if, lab.net_ns)
    return (sent, xmit_stat(after, "xdp_xmit") - xmit_stat(before, "xdp_xmit"),
            xmit_stat(after, "xdp_xmit_errors") - xmit_stat(before, "xdp_xmit_errors"), calls)


def test_forwarded_frames_are_each_sent_or_counted() -> None:
    """A routed frame comes back to its call's page pool changed, its mark overwritten:
    ``forwarded`` sends one batch a call, so every frame is taken by the veth or
    counted as its error, and the calls log says when each went.  (Without it,
    84-87 % of these frames vanished, counted nowhere, in two runs here.)"""
    sent, taken, lost, calls = _forward(True)
    assert sent == 300_000
    assert taken + lost == sent
    assert sum(n for _, n in calls) == sent
    assert max(n for _, n in calls) <= 64
    assert all(a <= b for (a, _), (b, _) in itertools.pairwise(calls))
    assert calls[-1][0] - calls[0][0] < 3.0


def test_forwarded_needs_a_paced_run() -> None:
    fr = udp_frame(src_mac="02:00:00:00:00:0a", dst_mac="02:00:00:00:00:0b", src="10.0.0.1",
                   dst="10.0.0.2")
    with pytest.raises(LiveGenError, match="forwarded needs a rate"):
        LiveGenerator("lo", None, [fr], forwarded=True)
    with LiveGenerator("lo", None, [fr], rate=1000.0, forwarded=True) as gen, \
            pytest.raises(LiveGenError, match="not for forwarded"):
        gen.send(10)
