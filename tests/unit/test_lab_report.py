"""xpro.lab.report: the figures of a run, the table, the JSON, the plots (no root)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xpro.lab.report import Run, format_table, plot_runs, plot_sweep, to_json

pytestmark = pytest.mark.unit

A, L = 0, 1


def _run(name: str = "sync", *, drop_from: float = 1.5, leak: float = 0.0,
         legit_loss: int = 0) -> Run:
    """10 s at 0.1-s bins: legit 200/s all along, attack 1000/s from 1 s, dropped from
    ``drop_from`` (all of it, except a share ``leak``)."""
    n = 101
    sent = np.zeros((2, n), dtype=np.int64)
    recv = np.zeros((2, n), dtype=np.int64)
    sent[L, :100] = 20
    recv[L, :100] = 20
    recv[L, 50] -= legit_loss
    sent[A, 10:100] = 100
    recv[A, 10:100] = 100
    k = round(drop_from * 10)
    recv[A, k:100] = round(100 * leak)
    return Run(name=name, width=0.1, sent=sent, received=recv,
               sent_by_source={"c1": 1000, "c2": 1000, "b": int(sent[A].sum())},
               received_by_source={"c1": 1000 - legit_loss, "c2": 1000,
                                   "b": int(recv[A].sum())},
               legit_sources=frozenset({"c1", "c2"}), attack_start=1.0, attack_end=10.0,
               duration=10.0, period=0.5)


def test_metrics_of_a_clean_drop() -> None:
    m = _run(drop_from=1.5).metrics()
    assert m["measured_from_s"] == 2.0
    assert m["attack_dropped_pct"] == 100.0
    # 0.5 s of 9 s passed
    assert m["attack_dropped_total_pct"] == pytest.approx(100 * (1 - 0.5 / 9), abs=0.01)
    assert m["legit_dropped_pct"] == 0.0
    assert m["time_to_first_drop_s"] == 0.5
    assert m["time_to_converge_s"] == 0.5
    assert m["attack_reached_service"] == 500
    assert m["legit_sources_hit"] == 0


def test_a_leak_below_the_convergence_share_never_converges() -> None:
    m = _run(drop_from=1.5, leak=0.1).metrics()
    assert m["attack_dropped_pct"] == pytest.approx(90.0)
    assert m["time_to_first_drop_s"] == 0.5
    assert m["time_to_converge_s"] is None


def test_no_drop_at_all() -> None:
    m = _run(drop_from=99).metrics()
    assert m["attack_dropped_pct"] == 0.0
    assert m["time_to_first_drop_s"] is None
    assert m["time_to_converge_s"] is None


def test_legit_losses_are_counted_per_source() -> None:
    m = _run(legit_loss=10).metrics()
    assert m["legit_dropped_pct"] == pytest.approx(100 * 10 / (80 * 20), abs=0.01)
    assert m["legit_sources_hit"] == 1
    assert m["legit_worst_source_dropped_pct"] == 1.0


def test_json_single_and_variants() -> None:
    one = json.loads(to_json([_run()], scenario="heavy-hitter"))
    for key in ("attack_dropped_pct", "legit_dropped_pct", "attack_dropped_total_pct",
                "legit_dropped_total_pct", "time_to_first_drop_s", "time_to_converge_s"):
        assert key in one
    many = json.loads(to_json([_run("sync"), _run("no-sync", drop_from=99),
                               _run("hashlimit", drop_from=99)], scenario="distributed"))
    assert set(many["variants"]) == {"sync", "no-sync", "hashlimit"}
    assert many["variants"]["no-sync"]["attack_dropped_pct"] == 0.0


def test_table_has_a_column_per_variant() -> None:
    text = format_table([_run("sync"), _run("no-sync", drop_from=99)], title="t")
    lines = text.splitlines()
    assert lines[0] == "t"
    assert lines[1].split() == ["sync", "no-sync"]
    assert "100.0%" in text
    assert "0.0%" in text


def test_plots_are_written(tmp_path: Path) -> None:
    paths = plot_runs([_run("sync"), _run("no-sync", drop_from=99)], tmp_path / "lab_x",
                      title="x")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert all(p.stat().st_size > 1000 for p in paths)
    paths = plot_sweep([(0.8, _run(drop_from=99)), (1.6, _run())], tmp_path / "lab_s",
                       title="s")
    assert all(p.stat().st_size > 1000 for p in paths)


def test_groups_are_reported_apart_from_the_settled_time_on() -> None:
    """A group of the legit clients lost everything from 3 s on: its figure counts
    from the end of the 2nd sync period (2 s) like legit_dropped_pct."""
    run = _run()
    g = np.zeros((1, run.sent.shape[1]), dtype=np.int64)
    g[0, :100] = 10  # half of the legit packets of each bin
    got = g.copy()
    got[0, 30:100] = 0
    run.sent = np.vstack([run.sent, g])
    run.received = np.vstack([run.received, got])
    run.received[L, 30:100] -= 10
    run.groups = ("victim_clients",)
    run.info = {"flood": {"total_pps": 1}}
    m = run.metrics()
    # from 2 s: 10 bins received, 70 lost, of 80
    assert m["victim_clients_dropped_pct"] == pytest.approx(100 * 70 / 80)
    # the attack converged 0.5 s after it started (1.5 s): 15 bins received, 70 lost
    assert m["victim_clients_dropped_converged_pct"] == pytest.approx(100 * 70 / 85, abs=0.01)
    assert m["victim_clients_sent"] == 1000
    assert m["victim_clients_received"] == 300
    assert m["legit_dropped_pct"] == pytest.approx(100 * 700 / 1600)
    assert m["flood"] == {"total_pps": 1}
    assert "victim clients dropped, after 2nd sync" in format_table([run])
    assert json.loads(to_json([run], scenario="s"))["victim_clients_dropped_pct"] > 80
