"""Every script of ``bench/`` runs to its end, at a tiny size, and prints its JSON.

The benchmarks are run by hand (their figures are in ``docs/``), so nothing
else would notice when one stops working: a renamed API, a program that no
longer loads, a baseline that cannot be installed.  These runs are far too
short for their figures to mean anything; the tests check only that every
variant was measured and that the keys the docs and the issues name are
there, with values of the right kind.  No figure is compared to a bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_bench(script: str, *args: str, timeout: float = 240) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-3000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    doc: dict[str, Any] = json.loads(last)
    return doc


def positive(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x > 0


def test_flood() -> None:
    doc = run_bench("flood.py", "--reps", "1", "--warm", "0.2", "--window", "0.3")
    for key in ("native_to_ceiling", "generic_to_ceiling", "native_to_hashlimit",
                "flow_counter_to_ceiling", "native_to_flow_counter",
                "spoof8_to_ceiling", "spoof8_to_hashlimit"):
        assert positive(doc[key]), key
    assert set(doc["scenarios"]) == {"single", "spoofed", "spoof8"}
    # the xpro variants say how much of the flood the destination rule dropped
    shares = doc["scenarios"]["spoof8"]["variants"]["xpro-native"]["dst_drop_share"]
    assert all(isinstance(x, float) and x >= 0 for x in shares), shares
    for name, scn in doc["scenarios"].items():
        want = {"bare", "flow-counter", "xpro-native", "xpro-generic", "iptables-drop",
                "iptables-hashlimit", "nft-limit", "xdp-filter"} - set(scn["skipped"])
        assert set(scn["variants"]) == want, name
        assert all(positive(v["pps"]) for v in scn["variants"].values()), name


def test_packet_cost() -> None:
    doc = run_bench("packet_cost.py", "--repeat", "1000", "--runs", "1", "--flows", "1000")
    for key in ("ratio_hot", "ratio_100k", "ratio_ipv6", "ratio_src_rate", "ratio_closed_new",
                "ratio_closed_hot", "ratio_to_xdp_filter"):
        assert positive(doc[key]), key
    assert set(doc["ns"]) == {"bare", "counter", "xpro", "xdp-filter"}


def test_afxdp() -> None:
    doc = run_bench("afxdp.py", "--runs", "1", "--window", "0.3", "--warmup", "0.2")
    assert positive(doc["afxdp_to_native"])
    assert all(positive(v) for v in doc["pps"].values()), doc["pps"]


def test_spoof_cost() -> None:
    doc = run_bench("spoof_cost.py", "--repeat", "10000", "--runs", "1",
                    "--groups", "main,bisect")
    assert positive(doc["ratio_single"])
    assert positive(doc["ratio_spoof"])
    assert doc["bisect"]
    assert all(positive(v) for v in doc["bisect"].values())


def test_etcd_layout_bench() -> None:
    # the etcd member is started by the bench itself, on free loopback ports
    doc = run_bench("etcd_layout.py", "--scale", "100", "--packs", "128")
    assert set(doc["layouts"]) == {"keys", "R=128"}
    for name, lay in doc["layouts"].items():
        assert set(lay) == {"create", "update", "small", "round", "serial"}, name
        for step in lay.values():
            assert positive(step["wall_s"]), (name, step)
            assert positive(step["db_mb"]), (name, step)
        for step in ("small", "round", "serial"):
            assert lay[step]["keys"] > 0, (name, step)
            assert positive(lay[step]["mb_written"]), (name, step)
        assert lay["serial"]["lost"] == 0, name  # one writer at a time loses no compare
    assert set(doc["ratios"]) == {"R=128"}
    assert set(doc["ratios"]["R=128"]) == {"update", "round", "serial", "small"}


def test_sync_store_bench() -> None:
    # redis-server is started by the bench itself, on a free loopback port
    doc = run_bench("sync_store.py", "--quick", "--stores", "memory,redis")
    assert set(doc["stores"]) == {"memory", "redis"}
    for store, res in doc["stores"].items():
        assert positive(res["round_4x100k_s"]), store


def test_sync_cost_bench() -> None:
    # Every part on the memory store, its table by proxies at 2 and 16 only;
    # Redis without that table: each proxy loads the program, and the 30
    # forked proxies of the whole table were most of this test's time.
    mem = run_bench("sync_cost.py", "--scale", "100", "--stores", "memory",
                    "--proxies", "2,16")["stores"]
    red = run_bench("sync_cost.py", "--scale", "100", "--stores", "redis",
                    "--parts", "full,tables")["stores"]
    assert set(mem) == {"memory"}
    assert set(red) == {"redis"}
    for res in (mem["memory"], red["redis"]):
        assert "error" not in res, res
        assert positive(res["round_4x100k_s"])
        assert positive(res["full_pull"]["round_4x100k_s"])
        assert positive(res["idle_round_1m_s"])
    # the CPU the round took: the servers' only where they are processes
    assert mem["memory"]["round_4x100k_server_cpu_s"] is None
    assert red["redis"]["round_4x100k_server_cpu_s"] >= 0
    assert positive(red["redis"]["round_4x100k_cpu_total_s"])
    assert positive(red["redis"]["round_4x100k_cpu_bound_s"])
    assert sorted(mem["memory"]["by_proxies"], key=int) == ["2", "16"]
    assert positive(mem["memory"]["round_16x25k_s"])


def test_spray_rounds_bench() -> None:
    doc = run_bench("spray_rounds.py", "--rate", "6000", "--runs", "1")
    run = doc["runs"]["this"][0]
    assert positive(doc["spray_cpu_s_median"]["this"])
    # 24 000 frames/s over the mesh, T_F2 10 000: the address closes
    assert isinstance(run["closed_after_periods"], int), run
