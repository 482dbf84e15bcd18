"""xpro.lab.scenarios.flood_plan: the rates of spoofed-flood, and --spread (no root).

With ``--spread`` every proxy alone must see the victim under T_F2 and the
mesh over it: checked here from the options, for the sizes the lab allows,
not from a timing.
"""

from __future__ import annotations

import pytest

from xpro.lab.mesh import LabError, Thresholds
from xpro.lab.scenarios import FLOOD_RATE, SCENARIOS, LabOptions, flood_plan

pytestmark = pytest.mark.unit


def test_the_default_flood_is_over_t_f2_at_every_proxy() -> None:
    plan = flood_plan(LabOptions(attack_start=3.0))
    assert not plan.spread
    assert plan.total == FLOOD_RATE
    assert plan.per_proxy == FLOOD_RATE / 4 > plan.t_f2


@pytest.mark.parametrize("proxies", [2, 3, 4, 8, 16])
@pytest.mark.parametrize(("clients", "client_rate", "t_f2"), [
    (10, 20.0, 10_000), (100, 20.0, 10_000), (10, 200.0, 5_000), (1, 1.0, 1_000),
])
@pytest.mark.parametrize("ipv6", [False, True])
def test_spread_puts_each_proxy_under_t_f2_and_the_mesh_over(
        proxies: int, clients: int, client_rate: float, t_f2: int, ipv6: bool) -> None:
    opts = LabOptions(proxies=proxies, clients=clients, client_rate=client_rate,
                      attack_start=3.0, spread=True, ipv6=ipv6,
                      thresholds=Thresholds(t_f2=t_f2))
    plan = flood_plan(opts)
    # the most any proxy carries to the victim: its share of the flood and the
    # victim's clients (established and new) that go through it
    per_proxy_clients = 2 * -(-clients // proxies)
    assert plan.per_proxy == pytest.approx(plan.total / proxies)
    assert plan.per_proxy + per_proxy_clients * client_rate < t_f2
    assert plan.total + 2 * clients * client_rate > t_f2
    assert plan.as_dict()["victim_per_proxy_max_pps"] < t_f2 < plan.as_dict()["victim_mesh_pps"]


def test_spread_needs_two_proxies() -> None:
    with pytest.raises(LabError, match="2 proxies"):
        flood_plan(LabOptions(proxies=1, attack_start=3.0, spread=True))


@pytest.mark.parametrize("rate", [50_000.0, 5_000.0])
def test_spread_refuses_a_given_rate_that_does_not_hold(rate: float) -> None:
    """50 000/s: each proxy alone over T_F2; 5 000/s: the mesh under it."""
    with pytest.raises(LabError, match="under T_F2"):
        flood_plan(LabOptions(attack_start=3.0, spread=True, flood_rate=rate))
    assert flood_plan(LabOptions(attack_start=3.0, spread=True, flood_rate=20_000.0)).total \
        == 20_000.0


def test_the_victims_clients_start_seconds_before_the_flood() -> None:
    assert SCENARIOS["spoofed-flood"].attack_start >= 3.0
    assert SCENARIOS["distributed"].attack_start == 1.0


def test_the_mesh_passes_t_f2_later_the_longer_the_window_before() -> None:
    plan = flood_plan(LabOptions(attack_start=3.0, spread=True))
    a = plan.over_t_f2_after(3.0, 200.0)
    b = plan.over_t_f2_after(6.0, 200.0)
    assert a is not None
    assert b is not None
    assert 0 < a < b
