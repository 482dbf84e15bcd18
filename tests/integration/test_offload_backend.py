"""The ``offload`` backend on veth: what can be tested without an offload NIC.

There is no SmartNIC here, so hardware mode itself is only tested for its
failure: on veth it must raise ModeNotSupported naming the interface and its
driver, and leave nothing attached.  The behaviour is tested with the reduced
program in driver mode on an interface of its own, *in front of* the full
program, as the NIC would be (what it drops, the full program never sees)::

    peer ns                router ns                          svc ns
    sender  a0 ──veth── b0 [xpro_offload, driver mode]  a1 ──veth── b1 [xpro_xdp] → UDP socket
                           └── IP forwarding ──────────┘

Every namespace and interface is removed at the end, also on failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from xpro.backends.offload import OffloadBackend, OffReason
from xpro.backends.xdp import NativeBackend
from xpro.bpf import XdpMode, xdp_query
from xpro.core import layout as L
from xpro.core import model
from xpro.core.params import Sizes
from xpro.errors import InterfaceBusy, ModeNotSupported
from xpro.hooks.registry import Registry
from xpro.lab.frames import Stream, UdpCounter, send_in_netns, udp_frame
from xpro.lab.namespaces import Topology, add_address, link_info, sysctl

pytestmark = pytest.mark.integration

S = model.NS_PER_S
PORT = 9000
SVC = "10.78.0.2"
FLOOD, LEGIT = "10.77.0.50", "10.77.0.60"
SIZES = Sizes(flows=4096, dsts=256, prefixes=16)


@dataclass(frozen=True)
class Chain:
    topo: Topology
    peer_ns: str
    router_ns: str
    svc_ns: str
    a0: str  # peer end, the sender's interface
    b0: str  # router end: the reduced program
    a1: str  # router end towards the service
    b1: str  # service end: the full program
    a0_mac: str
    b0_mac: str

    def frame(self, src: str) -> bytes:
        return udp_frame(src_mac=self.a0_mac, dst_mac=self.b0_mac, src=src, dst=SVC,
                         dport=PORT)


@pytest.fixture
def chain() -> Iterator[Chain]:
    with Topology() as topo:
        peer, router, svc = topo.namespace("peer"), topo.namespace("rtr"), topo.namespace("svc")
        a0, b0 = topo.veth(peer, router)
        a1, b1 = topo.veth(router, svc)
        add_address(a0, "10.77.0.2/24", peer)
        add_address(b0, "10.77.0.1/24", router)
        add_address(a1, "10.78.0.1/24", router)
        add_address(b1, f"{SVC}/24", svc)
        sysctl(router, "net.ipv4.ip_forward", 1)
        yield Chain(topo, peer, router, svc, a0, b0, a1, b1,
                    link_info(a0, peer).mac, link_info(b0, router).mac)


def _backend(chain: Chain, params: model.FilterParams, **options: Any) -> OffloadBackend:
    opts = {"offload_driver_mode": True, "offload_interface": chain.b0,
            "offload_netns": chain.router_ns, "drop_flows": 64, "drop_dsts": 16, **options}
    return OffloadBackend(params=params, sizes=SIZES, netns=chain.svc_ns, options=opts)


def _attached(ifname: str, netns: str) -> dict[str, int]:
    q = xdp_query(ifname, netns)
    return {m.label: q[m.label] for m in XdpMode if q[m.label]}


def _settle(rx: UdpCounter, want: int, timeout: float = 5.0) -> dict[str, int]:
    """Wait until ``want`` datagrams arrived in total (or nothing more comes)."""
    end = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < end:
        snap = rx.snapshot()
        total = sum(snap.values())
        if total >= want:
            return snap
        if total != last:
            last, since = total, time.monotonic()
        elif time.monotonic() - since > 0.5:
            break
        time.sleep(0.02)
    return rx.snapshot()


def test_registers_as_the_offload_backend() -> None:
    from xpro.backends import offload

    reg: Registry[Any] = Registry("backend")
    offload.xpro_add_backends(registry=reg)
    assert reg.get("offload") is OffloadBackend


def test_hardware_mode_on_veth_says_which_interface_and_driver(chain: Chain) -> None:
    backend = OffloadBackend(params=model.FilterParams(), sizes=SIZES, netns=chain.svc_ns)
    try:
        with pytest.raises(ModeNotSupported) as err:
            backend.attach(chain.b1)
        text = str(err.value)
        assert chain.b1 in text
        assert "driver veth" in text
        assert "--backend native" in text
        assert "offload" in text
    finally:
        backend.close()
    # Nothing was left behind: the full program was not attached either.
    assert _attached(chain.b1, chain.svc_ns) == {}


def test_an_interface_held_by_another_program_is_never_replaced(chain: Chain) -> None:
    params = model.FilterParams()
    holder = NativeBackend(params=params, sizes=SIZES, netns=chain.svc_ns)
    try:
        held = holder.attach(chain.b1).prog_id
        backend = _backend(chain, params)
        try:
            with pytest.raises(InterfaceBusy) as err:
                backend.attach(chain.b1)
        finally:
            backend.close()
        text = str(err.value)
        assert f"XDP program id {held} 'xpro_xdp' (native mode)" in text
        assert chain.b1 in text
        assert "xpro detach" in text
        assert _attached(chain.b1, chain.svc_ns) == {"native": held}
        assert _attached(chain.b0, chain.router_ns) == {}
    finally:
        holder.close()


def test_a_busy_reduced_interface_rolls_the_full_program_back(chain: Chain) -> None:
    params = model.FilterParams()
    holder = NativeBackend(params=params, sizes=SIZES, netns=chain.router_ns)
    try:
        held = holder.attach(chain.b0).prog_id
        backend = _backend(chain, params)
        try:
            with pytest.raises(InterfaceBusy) as err:
                backend.attach(chain.b1)
        finally:
            backend.close()
        assert f"XDP program id {held} 'xpro_xdp'" in str(err.value)
        assert chain.b0 in str(err.value)
        assert _attached(chain.b1, chain.svc_ns) == {}  # the full program went again
        assert _attached(chain.b0, chain.router_ns) == {"native": held}  # untouched
    finally:
        holder.close()


def test_a_flood_is_dropped_in_front_and_the_legitimate_stream_passes(chain: Chain) -> None:
    params = model.FilterParams(t_t1=10 * S, t_t2=S // 2, t_f1=100, t_f2=10**6, events=False)
    backend = _backend(chain, params, refresh=0.05)
    try:
        backend.load()
        att = backend.attach(chain.b1)
        assert att.mode == "offload"
        assert "driver mode on " + chain.b0 in att.why
        assert set(_attached(chain.b0, chain.router_ns)) == {"native"}
        assert set(_attached(chain.b1, chain.svc_ns)) == {"native"}
        backend.start()
        streams = [Stream("flood", chain.frame(FLOOD), 2000),
                   Stream("legit", chain.frame(LEGIT), 20)]
        with UdpCounter(chain.svc_ns, PORT) as rx:
            sent = send_in_netns(chain.peer_ns, chain.a0, streams, 3.0)
            got = rx.stop()
        stats = backend.last_refresh
        nic = backend.counters()[chain.b1]
        full = backend.load().counters()
        samples = {(m.name, m.labels["reason"]): m.value for m in backend.metrics()}
    finally:
        backend.close()
    # The metrics endpoint exports the offloaded program's verdicts.
    assert samples[("offload_packets", "flow")] == int(nic[OffReason.FLOW, 0])
    assert got.get(LEGIT, 0) == sent["legit"] == 60
    # The flood is judged after t_t2 (0.5 s, ~1000 packets) and then dropped in front;
    # the full program drops only what came between its verdict and the next refresh.
    nic_drops = int(nic[OffReason.FLOW, 0])
    full_drops = int(full[L.Reason.SRC_RATE, 0])
    assert nic_drops + full_drops + got.get(FLOOD, 0) == sent["flood"] == 6000
    assert nic_drops > sent["flood"] // 2
    assert full_drops < nic_drops
    assert got.get(FLOOD, 0) < 2000
    assert stats is not None
    assert stats.flows == 1  # still in the drop set at the end: it kept flooding
    assert _attached(chain.b0, chain.router_ns) == {}
    assert _attached(chain.b1, chain.svc_ns) == {}


def test_packets_dropped_in_front_keep_counting_until_the_source_slows(chain: Chain) -> None:
    """With the fake clock: the NIC's drops count as the full algorithm would count them."""
    params = model.FilterParams(t_t1=10 * S, t_t2=S // 2, t_f1=100, t_f2=10**6, events=False)
    backend = _backend(chain, params)
    t0 = 1_700_000_000 * S
    flood = [Stream("flood", chain.frame(FLOOD), 2000)]
    try:
        filt = backend.load()
        backend.attach(chain.b1)
        filt.set_clock(t0)
        with UdpCounter(chain.svc_ns, PORT) as rx:
            send_in_netns(chain.peer_ns, chain.a0, flood, 0.1)  # 200 at t0: passed
            assert _settle(rx, 200).get(FLOOD) == 200
            filt.set_clock(t0 + S)  # 200 more one second later: over t_f1, dropped
            send_in_netns(chain.peer_ns, chain.a0, flood, 0.1)
            time.sleep(0.3)
            assert backend.refresh().flows == 1
            send_in_netns(chain.peer_ns, chain.a0, flood, 0.15)  # 300 dropped on the "NIC"
            time.sleep(0.3)
            got = rx.stop()
        assert got == {FLOOD: 200}
        keys, recs = filt.read_flows()
        mine = keys["src"] == L.addr16(FLOOD)  # (IPv6 neighbour discovery has records too)
        assert recs["c"][mine].tolist() == [400]  # the full program saw 400 of 700
        assert int(backend.counters()[chain.b1][OffReason.FLOW, 0]) == 300
        # At t0+5 s the full program alone would release the source (401 / 5 s < 100/s),
        # but with the 300 dropped in front it has 701 in 5 s: still over.
        stats = backend.refresh(t0 + 5 * S)
        assert stats.flows == 1
        assert len(backend.reduced[chain.b1].prog.drop_flows) == 1
        # At t0+8 s: 701 / 8 s < 100/s: released, the full program judges it again.
        stats = backend.refresh(t0 + 8 * S)
        assert (stats.flows, stats.removed) == (0, 1)
        assert len(backend.reduced[chain.b1].prog.drop_flows) == 0
    finally:
        backend.close()


def test_a_full_drop_set_keeps_the_fastest_and_says_so(chain: Chain,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    params = model.FilterParams(t_t1=10 * S, t_t2=S // 2, t_f1=100, t_f2=10**6, events=False)
    backend = _backend(chain, params, drop_flows=2)
    t0 = 1_700_000_000 * S
    srcs = {f"10.77.0.{70 + i}": rate for i, rate in enumerate((1500, 3000, 2000, 2500))}
    streams = [Stream(s, chain.frame(s), rate) for s, rate in srcs.items()]
    try:
        filt = backend.load()
        backend.attach(chain.b1)
        filt.set_clock(t0)
        with UdpCounter(chain.svc_ns, PORT) as rx:
            sent = send_in_netns(chain.peer_ns, chain.a0, streams, 0.1)
            assert _settle(rx, sum(sent.values())) == sent  # all at t0: nothing judged yet
        with caplog.at_level(logging.WARNING, logger="xpro.backends.offload"):
            stats = backend.refresh(t0 + S)  # every one of them is over 100/s now
            backend.refresh(t0 + S)
        assert (stats.flows, stats.truncated) == (2, 2)
        full = [r for r in caplog.records if "drop set is full" in r.getMessage()]
        assert len(full) == 1  # once, not at every refresh
        assert "4 flows" in full[0].getMessage()
        keys, _ = backend.reduced[chain.b1].prog.entries(backend.reduced[chain.b1].prog.drop_flows)
        assert {bytes(k) for k in keys["src"]} == {L.addr16("10.77.0.71"), L.addr16("10.77.0.73")}
    finally:
        backend.close()


def test_a_spoofed_flood_to_a_closed_destination_is_dropped_in_front(chain: Chain) -> None:
    """A flood from 100 sources, each far under T_F1, closes the service's address
    (over T_F2 after T_T3); the NIC then drops every source that is not a known
    client of it, and counts those drops back into the full program's
    closed-drops record, while the known client's stream passes whole."""
    params = model.FilterParams(t_t1=10 * S, t_t2=S // 2, t_f1=10**6, t_f2=300, t_t3=S // 4,
                                events=False)
    backend = _backend(chain, params, refresh=0.05)
    spoofed = [f"10.77.0.{100 + i}" for i in range(100)]
    try:
        filt = backend.load()
        backend.attach(chain.b1)
        client = np.zeros(1, dtype=L.FLOW_KEY)
        client["src"], client["dst"]["addr"] = L.addr16(LEGIT), L.addr16(SVC)
        filt.set_known(client, L.Known.CLIENT)  # what the sync writes for an established client
        backend.start()
        streams = [Stream(s, chain.frame(s), 30) for s in spoofed]  # 3000 a second in all
        streams.append(Stream("legit", chain.frame(LEGIT), 20))
        with UdpCounter(chain.svc_ns, PORT) as rx:
            sent = send_in_netns(chain.peer_ns, chain.a0, streams, 3.0)
            got = rx.stop()
        backend.stop()
        last = backend.refresh()  # counts back what the NIC dropped since the last one
        nic = backend.counters()[chain.b1]
        full = filt.counters()
        keys, recs = filt.read_flows()
        exists, agg = filt.read_dsts_of(np.frombuffer(L.addr16(SVC) + bytes(4), dtype=L.DST_KEY))
    finally:
        backend.close()
    flood = sum(n for s, n in sent.items() if s != "legit")
    assert flood == 9000
    assert got.get(LEGIT, 0) == sent["legit"] == 60  # served while the address is closed
    nic_closed = int(nic[OffReason.CLOSED, 0])
    full_closed = int(full[L.Reason.DST_CLOSED, 0])
    passed = sum(got.get(s, 0) for s in spoofed)
    assert nic_closed > flood // 2  # most of the flood never reached the full program
    assert full_closed < nic_closed
    assert passed < flood // 4  # what came before the closure (T_T3) and the first refresh
    assert nic_closed + full_closed + passed == flood
    assert int(nic[OffReason.FLOW, 0]) == int(nic[OffReason.DST, 0]) == 0
    assert (last.closed, last.known) == (1, 1)  # still closed: the flood lasted to the end
    # The full program's closed-drops record holds every closed drop, the NIC's too.
    drops = [int(r["c"]) for k, r in zip(keys, recs, strict=True)
             if model.is_closed_key(k.tobytes())]
    assert drops == [nic_closed + full_closed]
    assert exists[0]  # and so does the aggregate: c* judges the offered load
    assert int(agg[0]["c"]) >= nic_closed + full_closed
    # No spoofed source got a record once the address was closed: only those
    # that passed before (each under T_F1).
    srcs = {bytes(k["src"]).ljust(16, b"\0") for k in keys}
    assert len(srcs & {L.addr16(s) for s in spoofed}) <= 100
