"""The lab's scenarios end to end, asserting the targets of the issue.

* ``distributed`` (short form): with sync at least 95 % of the attack is
  dropped from the end of the second sync period on and at most 1 % of the
  legitimate packets; each proxy alone and iptables ``hashlimit`` let the
  attack pass almost untouched (the paper's claim).
* ``spoofed-flood``: the flood is dropped, clients of another destination
  are unaffected; the victim's own clients (established before the flood),
  its new clients (started during it) and the other service's clients are
  reported apart.  Their figures are only checked to be percentages here:
  the targets for the victim's clients come with the kernel's closed
  destinations (docs/semantics.rst).  ``--spread`` (IPv6, SYN) puts each
  proxy under T_F2 and the mesh over it, checked from the options.
* ``proxy-crash``: one daemon SIGKILLed mid-attack and restarted; its filter
  keeps running from the pins, the mesh keeps the attack out.
* ``port-spray`` and ``v6-rotation`` (short forms): the evasions of the issue
  "Close the evasions", each with its own invariant, from its options: every
  (address, port, protocol) key of the spray far under T_F2 while the
  address is over it; every /64 of the rotation at 4 x T_F1, each packet
  from an address of its own.  The rotation is dropped (its /64 is one
  source); the spray's figure is only checked to be a percentage.

Each run leaves no namespace, link or pinned object behind (``clean_lab``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

Runner = Callable[..., dict[str, Any]]


def test_distributed_sync_vs_alone_vs_hashlimit(run_lab: Runner) -> None:
    out = run_lab("run", "distributed", "--duration", "8")
    v = out["variants"]
    assert set(v) == {"sync", "no-sync", "hashlimit"}
    sync = v["sync"]
    assert sync["attack_dropped_pct"] >= 95.0, sync
    assert sync["legit_dropped_pct"] <= 1.0, sync
    assert sync["time_to_first_drop_s"] is not None
    assert sync["attack_sent"] > 40 * 150 * 6  # 40 bots at 160/s for 7 s, give or take
    for name in ("no-sync", "hashlimit"):
        assert v[name]["attack_dropped_pct"] <= 5.0, (name, v[name])
        assert v[name]["legit_dropped_pct"] <= 1.0, (name, v[name])
    for m in v.values():
        for key in ("attack_dropped_total_pct", "legit_dropped_total_pct",
                    "time_to_converge_s"):
            assert key in m


def test_distributed_ipv6_syn(run_lab: Runner) -> None:
    """The same over IPv6 with TCP SYNs (the service counts SYNs on a raw socket)."""
    out = run_lab("run", "distributed", "--variant", "sync", "--ipv6", "--proto", "syn",
                  "--duration", "6", "--proxies", "2", "--bots", "20")
    assert out["variant"] == "sync"
    assert out["attack_dropped_pct"] >= 95.0, out
    assert out["legit_dropped_pct"] <= 1.0, out
    assert out["legit_received"] > 0


FLOOD_KEYS = ("attack_dropped_pct", "victim_clients_dropped_pct",
              "other_clients_dropped_pct", "new_clients_dropped_pct")


def _percentages(out: dict[str, Any]) -> None:
    for key in FLOOD_KEYS:
        assert isinstance(out[key], float), (key, out)
        assert 0.0 <= out[key] <= 100.0, (key, out)
    for group in ("victim_clients", "other_clients", "new_clients"):
        # None when the flood was never kept out (a short run on a busy machine)
        x = out[f"{group}_dropped_converged_pct"]
        assert x is None or 0.0 <= x <= 100.0, (group, out)


def test_spoofed_flood(run_lab: Runner) -> None:
    out = run_lab("run", "spoofed-flood", "--duration", "6")
    # the victim's clients are established 3 s before the flood
    assert out["victim_clients_lead_s"] == 3.0
    assert out["attack_start_s"] == pytest.approx(3.0, abs=0.2)
    assert out["attack_sent"] >= 50_000 * 2.5
    # measured from attack start + 2 sync periods; the new clients start then
    assert out["measured_from_s"] == pytest.approx(3.0 + 1.0, abs=0.2)
    assert out["new_clients_start_s"] == 4.0
    _percentages(out)
    for group in ("victim_clients", "other_clients", "new_clients"):
        assert out[f"{group}_sent"] > 0, group
    assert out["other_clients_dropped_pct"] <= 1.0, (out["notes"], out["verdicts"], out)
    # the destination rule dropped the flood: closed to unknown sources
    assert out["verdicts"].get("dst_closed", 0) > 0, out["verdicts"]
    # ... and the victim's own clients, established before it closed, kept
    # being served (docs/semantics.rst, "Closed destinations and known clients")
    assert out["victim_clients_dropped_pct"] <= 1.0, (out["notes"], out["verdicts"])
    assert out["flood"]["per_proxy_pps"] == 50_000 / 4 > out["flood"]["t_f2"]


def test_spoofed_flood_spread_ipv6_syn(run_lab: Runner) -> None:
    """--spread: each proxy alone sees the victim under T_F2, only the mesh over it."""
    proxies, clients, client_rate, t_f2 = 2, 10, 20.0, 10_000
    out = run_lab("run", "spoofed-flood", "--spread", "--ipv6", "--proto", "syn",
                  "--proxies", str(proxies), "--duration", "6")
    _percentages(out)
    flood = out["flood"]
    assert flood["spread"] is True
    assert flood["t_f2"] == t_f2
    assert flood["per_proxy_pps"] == pytest.approx(flood["total_pps"] / proxies, abs=1)
    # from the options: the flood through one proxy plus the victim's clients
    # (established and new) that go through it stays under T_F2 ...
    per_proxy_clients = 2 * -(-clients // proxies) * client_rate
    assert flood["total_pps"] / proxies + per_proxy_clients < t_f2
    # ... and the mesh sees the flood and all of them over it
    assert flood["total_pps"] + 2 * clients * client_rate > t_f2
    assert len(flood["sent_per_proxy_pps"]) == proxies
    assert out["other_clients_dropped_pct"] <= 1.0, out


def _are_percentages(out: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert isinstance(out[key], float), (key, out)
        assert 0.0 <= out[key] <= 100.0, (key, out)


def test_port_spray(run_lab: Runner) -> None:
    proxies, clients, client_rate, t_f2, rate = 2, 10, 20.0, 10_000, 20_000
    out = run_lab("run", "port-spray", "--proxies", str(proxies), "--flood-rate", str(rate),
                  "--attack-start", "1.5", "--duration", "4")
    _are_percentages(out, "attack_dropped_pct", "victim_clients_dropped_pct",
                     "other_clients_dropped_pct", "legit_dropped_pct")
    flood = out["flood"]
    assert flood["destination"] == "addr+port"
    assert (flood["total_pps"], flood["t_f2"]) == (rate, t_f2)
    assert flood["per_proxy_pps"] == rate / proxies
    assert out["attack_sent"] == rate * 2.5  # exact: the generators' count
    assert len(flood["sent_per_proxy_pps"]) == proxies
    # from the options: the victim's address is over T_F2 ...
    assert rate + clients * client_rate > t_f2
    # ... and each key far under it: of 49 frames a cycle, 16 UDP and 16 TCP to
    # a random port each (the clients' UDP port with them on it), one each of
    # 16 portless protocols and one of fragments
    port_key = rate * 16 / 49 / 65536 + clients * client_rate
    keys = max(port_key, rate / 49)
    assert keys < t_f2 / 4
    assert flood["key_max_pps"] == pytest.approx(keys, abs=0.01)
    assert sum(flood["shares"].values()) == pytest.approx(1.0, abs=1e-3)
    assert out["victim_clients_lead_s"] == 1.5


def test_v6_rotation(run_lab: Runner) -> None:
    proxies, bots, t_f1, t_f2 = 2, 5, 100, 10_000
    out = run_lab("run", "v6-rotation", "--proxies", str(proxies), "--bots", str(bots),
                  "--duration", "4")
    _are_percentages(out, "attack_dropped_pct", "legit_dropped_pct")
    rot = out["rotation"]
    assert (rot["attackers"], rot["prefix_len"], rot["t_f1"]) == (bots, 64, t_f1)
    # every /64 sends 4 x T_F1 over the mesh, split over the proxies
    assert rot["per_attacker_pps"] == 4 * t_f1
    assert rot["per_attacker_per_proxy_pps"] == 4 * t_f1 / proxies
    assert rot["sent_per_attacker_pps"] == pytest.approx([4 * t_f1] * bots, rel=0.01)
    assert out["attack_sent"] == pytest.approx(bots * 4 * t_f1 * 3, rel=0.01)
    # each packet that arrived came from an address no other packet had
    assert rot["addresses_seen_per_attacker"] == rot["reached_per_attacker"]
    assert sum(rot["reached_per_attacker"]) == out["attack_reached_service"]
    # the per-destination limit is not what is tested
    assert rot["victim_pps"] < t_f2
    # each /64 is one source (filter.source_prefix_v6 = 64), judged as one
    # address at 4 x T_F1 is: 99.8-99.9 % in 10-s runs (docs/evaluation.rst);
    # before the /64 keys, 0 %.  The bound leaves room for a short, loaded run.
    assert out["attack_dropped_pct"] >= 90.0, out
    assert out["legit_dropped_pct"] <= 1.0, out


def test_proxy_crash(run_lab: Runner) -> None:
    out = run_lab("run", "proxy-crash")
    assert [e["what"] for e in out["events"]] == ["SIGKILL p0", "restart p0"]
    # 98.3 % in an earlier release, 91.7-94.8 % on a loaded machine since: the
    # killed proxy passes its share between the decay of its last round's
    # counts and the restarted daemon's first round, which a slow start-up
    # lengthens (docs/evaluation.rst, "proxy-crash").  The bound keeps a crash
    # from costing the mesh its detection.
    assert out["attack_dropped_pct"] >= 90.0, out
    assert out["legit_dropped_pct"] <= 1.0, out


@pytest.mark.usefixtures("clean_lab")
def test_demo(tmp_path: Any) -> None:
    """``xpro lab demo``: a live view, then sync and no-sync side by side, and the plot."""
    from click.testing import CliRunner

    from xpro.cli.lab import lab

    result = CliRunner().invoke(lab, ["demo", "--duration", "4", "--proxies", "2",
                                      "--bots", "10", "--out", str(tmp_path)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "t=  1.0s" in out or "t=  1.1s" in out  # the live view
    header = [ln for ln in out.splitlines() if ln.split() == ["sync", "no-sync"]]
    assert header, out
    assert (tmp_path / "lab_demo.png").stat().st_size > 1000
    assert "plot: " in out
