"""CPU seconds of the sync rounds of a mesh under a port spray (``Syncer.round``).

The lab's ``port-spray`` scenario closes the victim's address late because
its sync rounds fall behind: under the spray every frame is a new flow and a
new destination key, and the four proxies' rounds share one interpreter
(docs/evaluation.rst, "port-spray").  This runs the same mesh without the
lab's namespaces and clock, so a change to the round's cost can be measured
side by side with an older tree:

* four XDP programs (``test_run``, fake clock) in ``addr+port`` mode, one
  memory store, the lab's thresholds (T_F2 10 000, T_T3 1 s, period 0.5 s);
* ten clients of the victim and ten of another service from the start;
* from the 7th period on, ``--rate`` frames/s per proxy (12 500: the lab's
  50 000 over four proxies), UDP and TCP SYN from random sources of a /16 to
  random ports of the victim's address;
* after each period, each proxy's round, one after the other, timed in CPU
  seconds of this thread.

Reported: ``spray_cpu_s``, the rounds' CPU seconds summed over the spray's
periods until the address closed at every proxy (what the lab's interpreter
must find in those periods), ``cpu_per_period_s`` (the same a period: a tree
that closes sooner times fewer periods, so compare this for speed alone),
the largest single period, and
``closed_after_periods``, the first period of the spray in which every
proxy dropped the spray (``dst_closed``).  ``--compare DIR`` runs the tree
``DIR`` (its ``src/``) too, in alternation, ``--runs`` times each; the last
line is JSON with the medians and ``this_to_compare``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from afxdp_filter import run_child  # bench/ is not a package: its directory is on the path

S = 1_000_000_000
T0 = 1_000 * S
PERIOD = S // 2
PROXIES = 4
LEAD = 6  # periods of clients alone before the spray
SPRAY = 8  # periods of spray
STEPS = 10  # time steps a period
VICTIM, OTHER = "198.18.0.10", "198.18.0.11"


def _frames(rate: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """The clients' frames (one per client) and a pool of sprayed frames."""
    from xpro.lab.frames import syn_frame, udp_frame

    macs = {"src_mac": "02:00:00:00:00:01", "dst_mac": "02:00:00:00:00:02"}
    clients = [udp_frame(**macs, src=f"10.1.0.{i + 1}", dst=VICTIM, sport=40000 + i,
                         dport=9000) for i in range(10)]
    clients += [udp_frame(**macs, src=f"10.2.0.{i + 1}", dst=OTHER, sport=40000 + i,
                          dport=9000) for i in range(10)]
    rng = random.Random(seed)
    pool = []
    for _ in range(rate * PERIOD // S * 2):
        make = udp_frame if rng.random() < 0.5 else syn_frame
        pool.append(make(**macs, src=f"10.200.{rng.randrange(256)}.{rng.randrange(256)}",
                         dst=VICTIM, sport=rng.randrange(1024, 65536),
                         dport=rng.randrange(65536)))
    return clients, pool


def run_mesh(rate: int, seed: int) -> dict[str, Any]:
    from xpro.config import load_config
    from xpro.core import layout as L
    from xpro.datapath.xdp import XdpFilter
    from xpro.plugins import open_store
    from xpro.sync import Syncer

    cfg = load_config(None, env={}, overrides={
        "filter.destination": "addr+port", "thresholds.t_f1": "100",
        "thresholds.t_f2": "10000", "thresholds.t_t1": "10", "thresholds.t_t2": "1",
        "thresholds.t_t3": "1", "thresholds.t_t4": "5", "sync.period": "0.5",
        "store.url": f"memory://spray-{os.getpid()}", "store.mesh": "bench"})
    clients, pool = _frames(rate, seed)
    rng = random.Random(seed + 1)
    filts = [XdpFilter(cfg.filter_params(), sizes=cfg.sizes()) for _ in range(PROXIES)]
    syncs = [Syncer(f, open_store(cfg.store.url, mesh=cfg.store.mesh), f"p{i}",
                    cfg.sync_params(), period=cfg.period_ns, ttl=cfg.ttl_ns,
                    known=cfg.known_policy(), pull=cfg.sync.pull, near=cfg.sync.near)
             for i, f in enumerate(filts)]
    closed = L.Reason.DST_CLOSED
    per_step = rate * PERIOD // S // STEPS
    spray_cpu: list[float] = []
    closed_after = None
    try:
        for r in range(LEAD + SPRAY):
            base = T0 + r * PERIOD
            spraying = r >= LEAD
            before = [int(f.counters()[closed, 0]) for f in filts]
            for step in range(STEPS):
                for f in filts:
                    f.set_clock(base + step * PERIOD // STEPS)
                    run = f.program.test_run
                    for c in clients:  # 20 packets/s a client over the mesh
                        if rng.random() < 0.5 / PROXIES:
                            run(c, data_out=False)
                    if spraying:
                        for fr in rng.sample(pool, per_step):
                            run(fr, data_out=False)
            if spraying and closed_after is None:
                dropped = [int(f.counters()[closed, 0]) - b for f, b in zip(filts, before,
                                                                           strict=True)]
                if min(dropped) >= per_step * STEPS * 9 // 10:
                    closed_after = r - LEAD
            cpu = []
            for s in syncs:
                c0 = time.thread_time()
                s.round(base + PERIOD)
                cpu.append(time.thread_time() - c0)
            if spraying and closed_after is None:
                spray_cpu.append(sum(cpu))
    finally:
        for f in filts:
            f.close()
        for s in syncs:
            s.store.close()
    return {"spray_cpu_s": round(sum(spray_cpu), 4),
            "cpu_per_period_s": round(sum(spray_cpu) / max(len(spray_cpu), 1), 4),
            "max_period_cpu_s": round(max(spray_cpu, default=0.0), 4),
            "closed_after_periods": closed_after, "periods_timed": len(spray_cpu)}


def _child(src: Path, args: argparse.Namespace) -> dict[str, Any]:
    return run_child(str(Path(__file__).resolve()), src, "--child", "--rate", str(args.rate),
                     "--seed", str(args.seed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=12_500, help="spray frames/s per proxy")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--compare", type=Path, help="an older tree to measure side by side")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_mesh(args.rate, args.seed)))
        return
    trees = {"this": Path(__file__).resolve().parent.parent / "src"}
    if args.compare:
        trees["compare"] = args.compare.resolve() / "src"
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in trees}
    for i in range(args.runs):
        for tree, src in trees.items():  # alternate: the machine's noise hits both
            runs[tree].append(_child(src, args))
        print(f"run {i + 1}/{args.runs}: " + ", ".join(
            f"{t} {r[-1]['spray_cpu_s']:.3f} s" for t, r in runs.items()), file=sys.stderr)
    median = {t: round(statistics.median(r["spray_cpu_s"] for r in rs), 4)
              for t, rs in runs.items()}
    per_period = {t: round(statistics.median(r["cpu_per_period_s"] for r in rs), 4)
                  for t, rs in runs.items()}
    out: dict[str, Any] = {"bench": "spray_rounds", "rate_per_proxy": args.rate,
                           "proxies": PROXIES, "spray_cpu_s_median": median,
                           "cpu_per_period_s_median": per_period, "runs": runs}
    if args.compare:
        out["this_to_compare"] = round(median["this"] / median["compare"], 3)
        out["per_period_this_to_compare"] = round(per_period["this"] / per_period["compare"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
