"""Per-packet cost of the xpro filter, against its baselines, in one run.

Every program runs under ``BPF_PROG_TEST_RUN`` on the same frames:

* ``bare``: an XDP program that only returns XDP_DROP (the ceiling);
* ``counter``: the simplest useful flow program (parse, one LRU hash keyed on
  the address pair, coarse clock, one atomic add) -- a reference point;
* ``xdp-filter``: xdp-tools' deny filter (``xdpfilt_dny_all.o``) with a
  comparable rule set: 64 IPv4 and 64 IPv6 addresses and 16 ports denied,
  none matching the test traffic, so every lookup runs and the packet passes;
* ``xpro``: the whole of Algorithm 2 on the open path (parse, allow/deny
  skipped when empty, the destination's closed check, the flow record, the
  per-source check, the destination aggregate and its check, the verdict
  counter), with both rate limits out of reach so every packet passes every
  check: the most expensive path;
* ``xpro-ref`` (with ``--compare OBJ``): another build of ``xpro.bpf.o``
  (the one before a change), measured in the same rounds.

Cases: a hot flow (one IPv4 frame, repeat N, the median of several rounds that
each run every program once, so noise from elsewhere hits all alike);
IPv6 (the same, an IPv6 frame); 100k distinct flows (100k IPv4 frames from
distinct sources, each run once, so each lookup touches a different record:
the kernel's per-run timer overhead is in every program's figure alike,
including the baseline's); src_rate (the hot IPv4 flow over T_F1 to an open
destination: the per-source drop); closed_new (as many frames, each from a
source never seen, to a destination closed to unknown sources that has
``--known`` known clients: xpro drops them with one hot closed-drops record and
no record of their own, and looks the known table up only for the sources the
destination's filter of known sources cannot tell from its clients); closed_hot
(one of those frames, repeat N: the closed path with its lines in cache, as a
flood to one destination keeps them -- a source with no record costs the same
work every time, so repeating one is the same path as new ones, bar which two
bits of the filter it reads).

Ends with one line of JSON: ``ratio_hot``, ``ratio_100k``, ``ratio_ipv6``,
``ratio_src_rate``, ``ratio_closed_new``, ``ratio_closed_hot`` (xpro / bare),
``ratio_to_xdp_filter`` (xpro / xdp-filter, hot flow) and, with
``--compare``, ``ref`` (the same ratios for the other build).  With
``--destination addr+port`` the programs key destinations on (address, port,
protocol) and xpro also judges each address's own aggregate (its limit out of
reach too; in ``closed_new`` the key is closed, not the address).
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xpro.bpf import BpfObject, object_path
from xpro.core.keys import known_filters
from xpro.core.layout import CONFIG, FLOW_KEY, KNOWN_FILTER_WORDS, addr16
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


def config_dtype(obj: BpfObject) -> np.dtype:
    """``CONFIG`` cut to the fields an object's ``.data`` holds: an older build
    (``--compare``) may lack fields added at the end of ``struct xpro_config``,
    which it then runs without (their defaults are the program's own)."""
    size = obj.maps[".data"].value_size
    fields, names = CONFIG.fields, CONFIG.names
    assert fields is not None
    assert names is not None
    kept = [(n, fields[n][0], fields[n][1]) for n in names
            if fields[n][1] + fields[n][0].itemsize <= size]
    return np.dtype({"names": [n for n, _, _ in kept], "formats": [f for _, f, _ in kept],
                     "offsets": [o for _, _, o in kept], "itemsize": size})


#: Rate limits out of reach: every packet takes the open path to its end.
NO_LIMIT = 2**32 - 1
CLOSED_DST = "10.9.8.8"


def open_path(cfg: Any) -> None:
    cfg.view["events"] = 0
    cfg.view["epoch"] = 1  # as under a running sync: flows marked dirty once an epoch
    cfg.view["t_f1"] = cfg.view["t_f2"] = NO_LIMIT
    if "t_f2_addr" in (cfg.view.dtype.names or ()):
        cfg.view["t_f2_addr"] = NO_LIMIT


def over_t_f1(cfg: Any, prog: Prog, frame: bytes) -> None:
    """Put the flow of ``frame`` over T_F1 (1 packet/s after T_T2 = 0)."""
    cfg.view["t_f1"] = 1
    cfg.view["t_t2"] = 0
    for _ in range(3):  # the coarse clock must move on past the flow's start
        prog.hot(frame, 1000)
        time.sleep(0.01)


def know_clients(obj: BpfObject, cfg: Any, n: int) -> None:
    """``n`` known clients of CLOSED_DST, written as the daemon writes them: the
    filter of known sources first (of its slot, or of the destination in
    builds before the slots; none in builds before the filters), then the
    known table."""
    from xpro.core.model import FilterParams, flow_key, parse

    if n == 0:
        return
    params = FilterParams()
    keys = np.frombuffer(b"".join(
        flow_key(parse(udp_frame(f"12.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", CLOSED_DST),
                       params.dst_mode), params) for i in range(1, n + 1)), dtype=FLOW_KEY)
    if "known_slots" in obj.maps:
        mask = obj.maps["known_slots"].max_entries - 1
        slots, filters = known_filters(keys, KNOWN_FILTER_WORDS, mask)
        obj.maps["known_slots"].update_batch(
            slots, filters.view(np.uint8).reshape(len(slots), -1))
    elif "known_dsts" in obj.maps:
        dsts, filters = known_filters(keys, KNOWN_FILTER_WORDS)
        obj.maps["known_dsts"].update_batch(dsts, filters.view(np.uint8).reshape(len(dsts), -1))
    obj.maps["known"].update_batch(keys, np.full(n, 1, dtype="<u4"))


def close_destination(cfg: Any, prog: Prog, frames: list[bytes]) -> None:
    """Close CLOSED_DST: T_F2 of 1 packet/s after T_T3 = 0, and packets to it."""
    cfg.view["t_f1"] = NO_LIMIT
    cfg.view["t_f2"] = 1
    if "t_f2_addr" in (cfg.view.dtype.names or ()):
        cfg.view["t_f2_addr"] = NO_LIMIT  # the key closes, not its address
    cfg.view["t_t3"] = 0
    for _ in range(3):  # the coarse clock must move on past the aggregate's start
        prog.spread(frames[:1000])
        time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--compare", type=Path, metavar="OBJ",
                    help="another build of xpro.bpf.o to measure beside this one")
    ap.add_argument("--known", type=int, default=1000,
                    help="known clients of the closed destination (closed_new): "
                         "its filter of known sources then has about 2N bits set")
    ap.add_argument("--destination", choices=("addr", "addr+port"), default="addr",
                    help="the destination key (filter.destination): addr+port also "
                         "judges each address's own aggregate, one more lookup a packet")
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
        xpros: list[tuple[Prog, Any]] = []
        for label, path in [("xpro", object_path()), ("xpro-ref", args.compare)]:
            if path is None:
                continue
            xp_obj = load(path, ["xpro_xdp"], max_entries={"flows": 1 << 18})
            cfg = xp_obj.global_data(".data", config_dtype(xp_obj))
            open_path(cfg)
            cfg.view["dst_mode"] = int(args.destination == "addr+port")
            if "known_slots" in xp_obj.maps:  # the filters in use (empty: none known)
                cfg.view["known_slot_mask"] = xp_obj.maps["known_slots"].max_entries - 1
            if args.destination == "addr":
                know_clients(xp_obj, cfg, args.known)
            xpros.append((Prog(label, xp_obj, "xpro_xdp"), cfg))
        progs = [bare, counter, *(x for x, _ in xpros)]
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
        # Sources no packet came from before (and none of them gets a record).
        spoofed = [udp_frame(f"11.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", CLOSED_DST)
                   for i in range(1, args.flows + 1)]

        res: dict[str, dict[str, float]] = {p.label: {} for p in progs}
        cases: dict[str, Callable[[Prog], float]] = {
            "hot": lambda p: p.hot(v4, args.repeat),
            "ipv6": lambda p: p.hot(v6, args.repeat),
            "100k": lambda p: p.spread(spread),
            "src_rate": lambda p: p.hot(v4, args.repeat),
            "closed_new": lambda p: p.spread(spoofed),
            "closed_hot": lambda p: p.hot(spoofed[0], args.repeat),
        }
        for p in progs:  # create the 100k flows before measuring them
            p.spread(spread)
        for case, measure in cases.items():
            # The open path first; then the configurations that drop.
            for x, cfg in xpros:
                if case == "src_rate":
                    over_t_f1(cfg, x, v4)
                elif case == "closed_new":
                    close_destination(cfg, x, spoofed)
            hot = case in ("hot", "ipv6", "src_rate", "closed_hot")
            runs = args.runs if hot else max(3, args.runs // 3)
            for label, ns in interleaved(progs, runs, measure).items():
                res[label][case] = ns

        print(f"{'program':12} " + " ".join(f"{c + ' ns':>13}" for c in cases))
        for label, r in res.items():
            print(f"{label:12} " + " ".join(f"{r[c]:13.1f}" for c in cases))
        b = res["bare"]

        def ratios(label: str) -> dict[str, float | None]:
            x = res[label]
            return {
                "ratio_hot": round(x["hot"] / b["hot"], 2),
                "ratio_100k": round(x["100k"] / b["100k"], 2),
                "ratio_ipv6": round(x["ipv6"] / b["ipv6"], 2),
                "ratio_src_rate": round(x["src_rate"] / b["src_rate"], 2),
                "ratio_closed_new": round(x["closed_new"] / b["closed_new"], 2),
                "ratio_closed_hot": round(x["closed_hot"] / b["closed_hot"], 2),
                "ratio_to_xdp_filter": round(x["hot"] / res["xdp-filter"]["hot"], 2)
                if xf else None,
            }

        out: dict[str, Any] = {
            **ratios("xpro"),
            "counter_ratio_hot": round(res["counter"]["hot"] / b["hot"], 2),
            "counter_ratio_100k": round(res["counter"]["100k"] / b["100k"], 2),
            "ns": res,
            "repeat": args.repeat,
            "runs": args.runs,
            "flows": args.flows,
            "known": args.known if args.destination == "addr" else 0,
            "destination": args.destination,
        }
        if args.compare is not None:
            out["ref"] = {"obj": str(args.compare), **ratios("xpro-ref")}
        print(json.dumps(out))
    finally:
        for o in objs:
            if o.pin_dir is not None:
                o.unpin_maps()
            o.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
