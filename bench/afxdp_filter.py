"""Microseconds per frame of the afxdp path's filter alone (``UserFilter.process``).

No sockets, no veth: batches of frames laid out in a UMEM-like buffer (one
frame per 2048-byte chunk, as the data path hands them over) and stamped with
one time per batch, as the RX loop does (:mod:`xpro.datapath.afxdp.datapath`).
``bench/afxdp.py`` measures the whole path; this isolates the numpy filter,
so a change to it can be compared side by side with an older tree.

Cases (batches of ``--batch`` frames, 1 ms of fake time apart):

* ``flood``: one source over T_F1: every frame judged and dropped by the
  per-source rule;
* ``open``: 1024 sources to 16 destinations, all under every limit: passed;
* ``spoofed``: a new source in a /16 in every frame, one destination over
  T_F2.  Since closed destinations (docs/semantics.rst) the destination is
  closed after the first batch and the flood is counted into one
  closed-drops record; before, every frame was a new flow record dropped
  by the per-destination rule;
* ``spoofed_known``: the same with 64 known clients of the destination
  mixed in (one frame in 32), written to the ``known`` table when the
  filter has one.

``--compare DIR`` runs the same cases over the tree ``DIR`` (its ``src/``)
too, in alternation with this one in child processes, ``--runs`` times each;
the last line is JSON with every run's figure and the median per case.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

S = 1_000_000_000
T0 = 1_700_000_000 * S
CHUNK = 2048
CASES = ("flood", "open", "spoofed", "spoofed_known")


def _frames(case: str, n: int, batch: int) -> tuple[list[bytes], list[bytes]]:
    """The case's frames (``n`` of them) and its known clients' frames."""
    from xpro.lab.frames import udp_frame

    def f(src: str, dst: str = "10.88.0.2") -> bytes:
        return udp_frame(src_mac="02:00:00:00:00:01", dst_mac="02:00:00:00:00:02", src=src,
                         dst=dst, dport=9000, payload=b"x" * 18)

    if case == "flood":
        return [f("10.77.0.66")] * n, []
    if case == "open":
        srcs = [f(f"10.77.{i >> 8}.{i & 255}", f"10.88.0.{i % 16 + 1}") for i in range(1024)]
        return [srcs[i % len(srcs)] for i in range(n)], []
    rng = np.random.default_rng(7)
    spoof = [f(f"10.200.{int(a)}.{int(b)}") for a, b in rng.integers(0, 256, size=(n, 2))]
    if case == "spoofed":
        return spoof, []
    clients = [f(f"192.0.2.{i + 1}") for i in range(64)]
    return [clients[(i // 32) % 64] if i % 32 == 0 else fr for i, fr in enumerate(spoof)], clients


def _params(case: str) -> Any:
    from xpro.core.model import FilterParams

    if case == "flood":
        return FilterParams(t_f1=100, t_t2=0, t_t1=10 * S, t_f2=2**32 - 1, events=False)
    if case == "open":
        return FilterParams(t_f1=2**32 - 1, t_f2=2**32 - 1, events=False)
    return FilterParams(t_f1=2**32 - 1, t_f2=1000, t_t3=0, t_t1=10 * S, events=False)


def _umem(frames: list[bytes]) -> tuple[Any, Any, Any]:
    buf = np.zeros(len(frames) * CHUNK, dtype=np.uint8)
    base = np.arange(len(frames), dtype=np.int64) * CHUNK + 256
    lens = np.array([len(fr) for fr in frames], dtype=np.int64)
    for i, fr in enumerate(frames):
        buf[base[i] : base[i] + len(fr)] = np.frombuffer(fr, dtype=np.uint8)
    return buf, base, lens


def run_case(case: str, batch: int, batches: int, warmup: int) -> dict[str, Any]:
    """One case in this process: µs per frame over ``batches`` timed batches."""
    from xpro.core import layout as L
    from xpro.core.model import parse
    from xpro.core.params import Sizes
    from xpro.datapath.afxdp.filter import UserFilter

    frames, clients = _frames(case, batch * (batches + warmup), batch)
    filt = UserFilter(_params(case), sizes=Sizes(flows=1 << 18, dsts=1024))
    if clients:
        # the clients are established before the flood
        filt.process_frames(clients * 8, T0 - 5 * S)
        filt.process_frames(clients * 8, T0 - 2 * S)
        if hasattr(filt, "set_known"):
            keys = np.frombuffer(b"".join(parse(c, 0).key for c in clients), dtype=L.FLOW_KEY)
            filt.set_known(keys, np.full(len(keys), int(L.Known.CLIENT), dtype=np.uint32))
    umems = [_umem(frames[i * batch : (i + 1) * batch]) for i in range(batches + warmup)]
    for i in range(warmup):
        filt.process(*umems[i], T0 + i * S // 1000, frame_size=CHUNK)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + batches):
        filt.process(*umems[i], T0 + i * S // 1000, frame_size=CHUNK)
    dt = time.perf_counter() - t0
    reasons = {L.Reason(r).name: int(c) for r, c in enumerate(filt.counters()[:, 0]) if c}
    return {"us_per_frame": round(dt / (batch * batches) * 1e6, 4), "reasons": reasons,
            "flows": len(filt.read_flows()[0])}


def run_child(script: str, src: Path, *args: str) -> dict[str, Any]:
    """Run ``script`` (a bench script) with ``args`` in a child process that
    imports xpro from ``src`` (a tree's ``src/``: ``--compare``); returns the
    JSON of its last line."""
    env = dict(os.environ, PYTHONPATH=str(src))
    cmd = [sys.executable, script, *args]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return res


def _child(src: Path, case: str, args: argparse.Namespace) -> dict[str, Any]:
    return run_child(str(Path(__file__).resolve()), src, "--child", case, "--batch",
                     str(args.batch), "--batches", str(args.batches), "--warmup",
                     str(args.warmup))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--compare", type=Path, help="an older tree to measure side by side")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.batch, args.batches, args.warmup)))
        return
    trees = {"this": Path(__file__).resolve().parent.parent / "src"}
    if args.compare:
        trees["compare"] = args.compare.resolve() / "src"
    samples: dict[str, dict[str, list[float]]] = {t: {} for t in trees}
    detail: dict[str, dict[str, Any]] = {t: {} for t in trees}
    for run in range(args.runs):
        for case in args.cases.split(","):
            for tree, src in trees.items():  # alternate: the machine's noise hits both
                r = _child(src, case, args)
                samples[tree].setdefault(case, []).append(r["us_per_frame"])
                detail[tree][case] = {k: v for k, v in r.items() if k != "us_per_frame"}
        print(f"run {run + 1}/{args.runs}: " + ", ".join(
            f"{t}/{c} {v[-1]:.3f}" for t, cs in samples.items() for c, v in cs.items()),
            file=sys.stderr)
    median = {t: {c: round(statistics.median(v), 4) for c, v in cs.items()}
              for t, cs in samples.items()}
    out: dict[str, Any] = {"us_per_frame_median": median, "samples": samples,
                           "detail": detail, "batch": args.batch, "runs": args.runs}
    if args.compare:
        out["this_to_compare"] = {c: round(median["this"][c] / median["compare"][c], 3)
                                  for c in median["this"]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
