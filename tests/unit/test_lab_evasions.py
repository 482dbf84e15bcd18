"""The evasion scenarios' plans, from the options (no root).

* ``port-spray``: the flood is over T_F2 for the victim's address while every
  (address, port, protocol) key, its clients' included, stays far under it;
  its frames are what the program keys that way.
* ``v6-rotation``: each attacker's /64 sends 4 x T_F1 over the mesh, split
  evenly over the proxies, every packet from an address of that /64 that no
  other packet has; the victim stays under T_F2.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from xpro.core.layout import DST_ADDR_PORT, addr16
from xpro.core.model import ParseStatus, parse
from xpro.lab.mesh import LabError, Thresholds
from xpro.lab.scenarios import (
    SCENARIOS,
    SPRAY_CYCLE,
    SPRAY_KEY_SHARE,
    SPRAY_PORTLESS,
    LabOptions,
    default_options,
    rotation_flows,
    rotation_plan,
    spray_frame,
    spray_plan,
)
from xpro.lab.topology import Addressing, ProxySite

pytestmark = pytest.mark.unit


def sites(n: int) -> list[ProxySite]:
    return [ProxySite(i, f"p{i}", f"o{i}", f"02:00:00:00:01:{i:02x}", f"n{i}",
                      f"02:00:00:00:02:{i:02x}", f"i{i}", Path("/nonexistent"))
            for i in range(n)]


# ---- port-spray ----------------------------------------------------------------------


@pytest.mark.parametrize("proxies", [1, 2, 4, 8])
@pytest.mark.parametrize(("clients", "client_rate", "proto"), [
    (10, 20.0, "udp"), (10, 20.0, "syn"), (50, 40.0, "udp"),
])
@pytest.mark.parametrize("t_f2", [10_000, 20_000])
def test_spray_is_over_t_f2_for_the_address_and_far_under_it_per_key(
        proxies: int, clients: int, client_rate: float, proto: str, t_f2: int) -> None:
    opts = LabOptions(proxies=proxies, clients=clients, client_rate=client_rate, proto=proto,
                      attack_start=3.0, thresholds=Thresholds(t_f2=t_f2))
    plan = spray_plan(opts)
    assert plan.total + clients * client_rate == plan.address > t_f2
    # every key from the options: a port of UDP or TCP gets 1/65536 of its
    # protocol's share (the clients' port gets them too), a portless protocol
    # its share, the fragments theirs
    n = len(SPRAY_CYCLE)
    port_key = plan.total * 16 / n / 65536
    keys = {"udp": port_key, "syn": port_key, "fragment": plan.total / n, "icmp": plan.total / n,
            **{f"ip{p}": plan.total / n for p in SPRAY_PORTLESS}}
    keys[proto] += clients * client_rate
    assert plan.keys() == pytest.approx(keys)
    assert max(keys.values()) == pytest.approx(plan.key_max)
    assert plan.key_max < SPRAY_KEY_SHARE * t_f2
    d = plan.as_dict()
    assert d["key_max_pps"] < d["t_f2"] < d["victim_address_pps"]


def test_spray_cycle_shares() -> None:
    kinds = Counter(SPRAY_CYCLE)
    assert kinds["udp"] == kinds["syn"] == 16
    assert kinds["fragment"] == kinds["icmp"] == 1
    assert len(SPRAY_PORTLESS) == 15
    assert all(kinds[f"ip{p}"] == 1 for p in SPRAY_PORTLESS)
    # taking turns: no two bursts of one protocol with ports in a row
    assert all(not (a == b and a in ("udp", "syn")) for a, b in pairwise(SPRAY_CYCLE))


@pytest.mark.parametrize(("rate", "why"), [(9_000.0, "must go over T_F2"),
                                           (200_000.0, "every key stay under")])
def test_spray_refuses_a_rate_that_does_not_hold(rate: float, why: str) -> None:
    with pytest.raises(LabError, match=why):
        spray_plan(LabOptions(attack_start=3.0, flood_rate=rate))


@pytest.mark.parametrize("ipv6", [False, True])
def test_spray_frames_key_as_the_plan_says(ipv6: bool) -> None:
    """The program's parser (the model's copy) in addr+port mode: UDP and TCP on
    their port, each portless protocol on port 0, fragments on the address alone."""
    a = Addressing(ipv6)
    site = sites(1)[0]
    src = a.host(a.spoofed, 0)
    keys = {}
    for kind in dict.fromkeys(SPRAY_CYCLE):
        parsed = parse(spray_frame(kind, site, src, a.service), DST_ADDR_PORT)
        assert parsed.status == ParseStatus.OK, kind
        assert parsed.dst[:16] == addr16(a.service)
        keys[kind] = (int.from_bytes(parsed.dst[16:18], "big"), parsed.dst[18])
    assert keys["udp"] == (9000, 17)
    assert keys["syn"] == (80, 6)
    assert keys["icmp"] == (0, 58 if ipv6 else 1)
    assert keys["fragment"] == (0, 0)
    assert {keys[f"ip{p}"] for p in SPRAY_PORTLESS} == {(0, p) for p in SPRAY_PORTLESS}


def test_spray_and_rotation_defaults() -> None:
    assert SCENARIOS["port-spray"].attack_start >= 3.0  # the clients are established first
    assert SCENARIOS["v6-rotation"].bots == 10
    assert default_options("v6-rotation", LabOptions()).ipv6


# ---- v6-rotation ---------------------------------------------------------------------


@pytest.mark.parametrize("proxies", [1, 2, 4])
@pytest.mark.parametrize(("bots", "t_f1", "proto"), [(10, 100, "udp"), (3, 250, "syn"),
                                                      (1, 100, "udp")])
def test_each_64_sends_4_t_f1_every_packet_from_a_new_address(
        proxies: int, bots: int, t_f1: int, proto: str) -> None:
    opts = LabOptions(proxies=proxies, bots=bots, ipv6=True, proto=proto,
                      thresholds=Thresholds(t_f1=t_f1))
    plan = rotation_plan(opts)
    assert plan.per_attacker == 4 * t_f1
    assert plan.victim < 0.8 * opts.thresholds.t_f2
    flows = rotation_flows(sites(proxies), opts, plan, start=1.0, stop=3.5)
    a = Addressing(True)
    for k in range(bots):
        net = ipaddress.ip_network(a.rotation_net(k))
        assert net.prefixlen == 64
        mine = [f for f in flows if f.source == str(net)]
        assert sorted(f.link for f in mine) == list(range(proxies))
        assert sum(f.rate for f in mine) == pytest.approx(4 * t_f1)
        srcs = []
        for f in mine:
            assert f.role == "attack"
            assert len(f.frames) >= f.total()  # it never comes back to a frame
            p = Ether(f.frames[0])
            assert p[IPv6].dst == a.service
            assert p[UDP if proto == "udp" else TCP].dport == (9000 if proto == "udp" else 80)
            assert all(raw[:22] == f.frames[0][:22] and raw[38:54] == f.frames[0][38:54]
                       for raw in f.frames)  # the same but for the source
            srcs += [ipaddress.IPv6Address(raw[22:38]) for raw in f.frames]
        assert all(s in net for s in srcs)
        assert len(set(srcs)) == len(srcs)
    assert not any(IP in Ether(f.frames[0]) for f in flows)


@pytest.mark.parametrize(("bots", "why"), [(0, "at least one attacker"),
                                           (20, "under 0.8 x T_F2")])
def test_rotation_refuses_what_the_destination_limit_would_see(bots: int, why: str) -> None:
    with pytest.raises(LabError, match=why):
        rotation_plan(LabOptions(bots=bots, ipv6=True))
