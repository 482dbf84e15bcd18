"""Per-packet cost of the xpro filter, against its baselines, in one run.

Every program runs under ``BPF_PROG_TEST_RUN`` on the same frames:

* ``bare``: an XDP program that only returns XDP_DROP (the ceiling);
* ``counter``: the simplest useful flow program (parse, one LRU hash keyed on
  the address pair, coarse clock, one atomic add) -- a reference point;
* ``xdp-filter``: xdp-tools' deny filter (``xdpfilt_dny_all.o``) with a
  comparable rule set: 64 IPv4 and 64 IPv6 addresses and 16 ports denied,
  none matching the test traffic, so every lookup runs and the packet passes;
* ``xpro``: the whole of Algorithm 2 (parse, allow/deny skipped when empty,
  the flow record, the per-source check, the destination aggregate and its
  check, the verdict counter), with default thresholds.

Cases: a hot flow (one IPv4 frame, repeat N, the median of several rounds that
each run every program once, so noise from elsewhere hits all alike);
IPv6 (the same, an IPv6 frame); 100k distinct flows (100k IPv4 frames from
distinct sources, each run once, so each lookup touches a different record:
the kernel's per-run timer overhead is in every program's figure alike,
including the baseline's).

Ends with one line of JSON: ``ratio_hot``, ``ratio_100k``, ``ratio_ipv6``
(xpro / bare) and ``ratio_to_xdp_filter`` (xpro / xdp-filter, hot flow).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xpro.bpf import BpfObject, object_path
from xpro.core.layout import CONFIG, addr16
from xpro.lab import frames as traffic

HERE = Path(__file__).resolve().parent
XDP_FILTER_OBJ = Path("/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_dny_all.o")


def udp_frame(src: str, dst: str) -> bytes:
    """A 60-byte-class UDP frame (18 bytes of payload over IPv4)."""
    return traffic.udp_frame(src_mac="02:00:00:00:00:01", dst_mac="02:00:00:00:00:02",
                             src=src, dst=dst, sport=40000, dport=53, payload=b"x" * 18)


def compile_prog(name: str, out: Path) -> Path:
    clang = shutil.which("clang")
    if clang is None:
        sys.exit("bench needs clang to build its baseline programs (apt-get install clang)")
    triplet = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True,
                             check=True).stdout.strip()
    obj = out / f"{name}.o"
    subprocess.run([clang, "-O2", "-g", "-target", "bpf", f"-I/usr/include/{triplet}", "-c",
                    str(HERE / "progs" / f"{name}.bpf.c"), "-o", str(obj)], check=True)
    return obj


class Prog:
    def __init__(self, label: str, obj: BpfObject, prog: str) -> None:
        self.label = label
        self.obj = obj
        self.prog = obj.programs[prog]

    def hot(self, frame: bytes, repeat: int) -> float:
        return float(self.prog.test_run(frame, repeat=repeat, data_out=False).duration_ns)

    def spread(self, frames: list[bytes]) -> float:
        run = self.prog.test_run
        return statistics.median(run(f, data_out=False).duration_ns for f in frames)


def interleaved(progs: list[Prog], runs: int, measure: Callable[[Prog], float]
                ) -> dict[str, float]:
    """Median per program of ``runs`` rounds, each round measuring every program
    once, so a burst of noise from elsewhere hits all of them alike."""
    samples: dict[str, list[float]] = {p.label: [] for p in progs}
    for _ in range(runs):
        for p in progs:
            samples[p.label].append(measure(p))
    return {k: statistics.median(v) for k, v in samples.items()}


def setup_xdp_filter(obj: BpfObject) -> None:
    """A deny rule set comparable to an operator's: addresses and ports."""
    v4 = obj.maps["filter_ipv4"]
    v6 = obj.maps["filter_ipv6"]
    ports = obj.maps["filter_ports"]
    src_and_dst = np.uint64(3).tobytes()  # xdp-filter's FILTER_MODE src|dst bits
    for i in range(64):
        v4[bytes([192, 0, 2, i])] = src_and_dst
        v6[addr16(f"2001:db8:ffff::{i:x}")] = src_and_dst
    for p in range(16):
        ports[np.uint32(9000 + p).tobytes()] = src_and_dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--flows", type=int, default=100_000)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="xpro-bench-"))
    objs: list[BpfObject] = []
    try:
        def load(path: Path, progs: list[str], **kw: Any) -> BpfObject:
            o = BpfObject(path, programs=progs, **kw)
            o.load()
            objs.append(o)
            return o

        bare = Prog("bare", load(compile_prog("bare_drop", tmp), ["bare_drop"]), "bare_drop")
        counter = Prog("counter", load(compile_prog("flow_counter", tmp), ["flow_counter"]),
                       "flow_counter")
        xp_obj = load(object_path(), ["xpro_xdp"], max_entries={"flows": 1 << 18})
        xpro = Prog("xpro", xp_obj, "xpro_xdp")
        cfg = xp_obj.global_data(".data", CONFIG)
        cfg.view["events"] = 0
        cfg.view["epoch"] = 1  # as under a running sync: flows marked dirty once an epoch
        progs = [bare, counter, xpro]
        xf: Prog | None = None
        if XDP_FILTER_OBJ.exists():
            try:
                # Its maps are pinned by name: keep the pins in a private
                # directory, removed at the end, never in /sys/fs/bpf itself.
                pins = Path(f"/sys/fs/bpf/xpro-bench-{os.getpid()}")
                o = load(XDP_FILTER_OBJ, ["xdpfilt_dny_all"], pin_dir=pins)
                setup_xdp_filter(o)
                xf = Prog("xdp-filter", o, "xdpfilt_dny_all")
                progs.append(xf)
            except Exception as exc:  # report, and go on without the baseline
                print(f"xdp-filter baseline unavailable: {exc}", file=sys.stderr)

        v4 = udp_frame("10.0.0.1", "10.9.9.9")
        v6 = udp_frame("2001:db8::1", "2001:db8:9::9")
        spread = [udp_frame(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "10.9.9.9")
                  for i in range(1, args.flows + 1)]

        res: dict[str, dict[str, float]] = {p.label: {} for p in progs}
        cases: dict[str, Callable[[Prog], float]] = {
            "hot": lambda p: p.hot(v4, args.repeat),
            "ipv6": lambda p: p.hot(v6, args.repeat),
            "100k": lambda p: p.spread(spread),
        }
        for p in progs:  # create the 100k flows before measuring them
            p.spread(spread)
        for case, measure in cases.items():
            runs = args.runs if case != "100k" else max(3, args.runs // 3)
            for label, ns in interleaved(progs, runs, measure).items():
                res[label][case] = ns

        print(f"{'program':12} {'hot ns':>8} {'ipv6 ns':>8} {'100k ns':>8}")
        for label, r in res.items():
            print(f"{label:12} {r['hot']:8.1f} {r['ipv6']:8.1f} {r['100k']:8.1f}")
        b, x = res["bare"], res["xpro"]
        out = {
            "ratio_hot": round(x["hot"] / b["hot"], 2),
            "ratio_100k": round(x["100k"] / b["100k"], 2),
            "ratio_ipv6": round(x["ipv6"] / b["ipv6"], 2),
            "ratio_to_xdp_filter": round(x["hot"] / res["xdp-filter"]["hot"], 2) if xf else None,
            "counter_ratio_hot": round(res["counter"]["hot"] / b["hot"], 2),
            "counter_ratio_100k": round(res["counter"]["100k"] / b["100k"], 2),
            "ns": res,
            "repeat": args.repeat,
            "runs": args.runs,
            "flows": args.flows,
        }
        print(json.dumps(out))
    finally:
        for o in objs:
            if o.pin_dir is not None:
                o.unpin_maps()
            o.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
