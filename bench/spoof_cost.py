"""Per-packet cost of xpro under a spoofed-source flood, at the program level.

``bench/flood.py`` measured xpro native at 0.67x a bare XDP_DROP with one
source over ``t_f1`` but only 0.21x with sources spoofed over a /16 to one
destination (dropped by the per-destination limit ``t_f2``).  This script
reproduces both floods under ``BPF_PROG_TEST_RUN`` (repeat N), side by side
with the bare drop, and bisects the difference.

The spoofed case needs a new source in every run, with one frame and one
call: the bench programs (``bench/progs/spoof_*.bpf.c``) wrap the filter in a
step that rewrites the low 16 bits of the IPv4 source before every run.  The
kernel keeps the packet between the repeats of one call, so the source walks
a full-period LCG over the /16: 65 536 distinct flow keys in a scrambled
order, one destination.  The same wrapper without the rewrite is the
one-source case; the bare program with and without the rewrite is the
baseline, so the rewrite (a 2-byte load and store) is in both sides.

Programs (each loaded as its own object, with its own maps, flow table of
2^20 entries unless said otherwise, configured as ``bench/flood.py``'s
scenarios: ``t_t2`` = ``t_t3`` = 0.1 s, ``t_f1`` = 1000/s for the spoofed case
and 100/s for the one-source case, ``t_f2`` = 10000/s, events on, sync
epoch 1):

* ``spoof_xpro.bpf.c``: the real ``bpf/xpro.bpf.c``, included as it is;
* ``spoof_bisect.bpf.c``: the filter body of xpro as it was investigated,
  cut at stages (parse; + flow lookup; + flow update and per-source check;
  + destination lookup; + destination update and check) and with single
  changes switched on (see the file).

Groups, each measured in interleaved rounds (every program once a round, so a
burst of noise from elsewhere hits all alike); the figure of a program is
the minimum over the rounds (the median is printed too):

* ``main``: bare, bare + rewrite, xpro one source, xpro spoofed;
* ``bisect``: the stages, spoofed;
* ``knobs``: single changes, spoofed (including the semantic change that is
  NOT adopted: ``dst-closed``), events off, epoch 0, a smaller flow table;
* ``dirty``: the cost of the first packet of a flow in an epoch: calls of
  exactly 65 536 runs (each source once), the dirty sets emptied before each
  call as the sync does, with the epoch moved on before each call (every
  packet marks its flow dirty) or not;
* ``parallel``: two threads, one per CPU, running the same spoofed program
  at once (shared maps), so the destination record's cache line moves
  between the CPUs as under a real flood on both CPUs.

Not run by default:

* ``wide``: sources over a /8 (2^24, more than the 2^20-entry flow table:
  every packet creates a flow, evicting one, and marks it dirty), each call
  going on from where the last one left the walk, the dirty sets emptied
  before each call; with the map-flag and dirty-log experiments;
* ``flood``: the same programs attached in driver mode to a veth and
  flooded by the live-frames generator spoofing a /16, as
  ``bench/flood.py`` does (Mpps received, every variant drops nearly all).

Run as root: ``python bench/spoof_cost.py`` (about two minutes;
``--groups main,bisect,knobs,dirty,parallel,wide,flood`` for everything).
Ends with one line of JSON.
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
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xpro.bpf import BpfObject
from xpro.core.layout import CONFIG, Reason
from xpro.core.model import NS_PER_S

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from packet_cost import udp_frame  # noqa: E402  (bench/ is not a package)

STAT = np.dtype([("packets", "<u8"), ("bytes", "<u8")])
FLOWS = 1 << 20
SOURCES = 1 << 16


@dataclass
class Variant:
    label: str
    source: str  # file in bench/progs
    defines: list[str]
    spoof: bool = True
    cfg: dict[str, int] = field(default_factory=dict)
    flows: int = FLOWS
    wide: bool = False  # spoof the low 24 bits: every packet a new flow


def compile_variant(v: Variant, out: Path) -> Path:
    clang = shutil.which("clang")
    if clang is None:
        sys.exit("bench needs clang (apt-get install clang)")
    triplet = subprocess.run(
        ["gcc", "-print-multiarch"], capture_output=True, text=True, check=True
    ).stdout.strip()
    obj = out / f"{v.label}.o"
    defs = [f"-D{d}" for d in v.defines] + (["-DSPOOF_SRC"] if v.spoof else [])
    defs += ["-DSPOOF_WIDE"] if v.wide else []
    subprocess.run(
        [
            clang,
            "-O2",
            "-g",
            "-target",
            "bpf",
            f"-I/usr/include/{triplet}",
            f"-I{ROOT / 'bpf'}",
            *defs,
            "-c",
            str(HERE / "progs" / v.source),
            "-o",
            str(obj),
        ],
        check=True,
    )
    return obj


class Loaded:
    def __init__(self, v: Variant, path: Path) -> None:
        self.v = v
        sizes = {"flows": v.flows, "dirty0": v.flows, "dirty1": v.flows}
        own_flows = ("SPOOF_FLOW_VALUE_40", "SPOOF_FLOW_EPOCH_FIRST", "SPOOF_FLOWS_PERCPU_LRU")
        if any(d in own_flows for d in v.defines):
            sizes["spoof_flows"] = v.flows  # the experiment's own table
        self.dirty = ("dirty0", "dirty1")
        if "SPOOF_DIRTY_NO_PREALLOC" in v.defines:
            self.dirty = ("spoof_dirty0", "spoof_dirty1")
            sizes.update(dict.fromkeys(self.dirty, v.flows))
        self.log = "SPOOF_DIRTY_LOG" in v.defines
        bare = "SPOOF_BARE" in v.defines
        self.obj = (
            BpfObject(path, programs=["spoof_run"])
            if bare
            else BpfObject(path, programs=["spoof_run"], max_entries=sizes)
        )
        self.obj.load()
        self.prog = self.obj.programs["spoof_run"]
        self.cfg = None
        if not bare:
            self.cfg = self.obj.global_data(".data", CONFIG)
            c = self.cfg.view
            c["t_t2"] = NS_PER_S // 10
            c["t_t3"] = NS_PER_S // 10
            c["t_f1"] = 1000 if v.spoof else 100
            c["t_f2"] = 10_000
            c["events"] = 1
            c["epoch"] = 1
            if "known_slots" in self.obj.maps:  # the filters in use (empty: none known)
                c["known_slot_mask"] = self.obj.maps["known_slots"].max_entries - 1
            for k, val in v.cfg.items():
                c[k] = val

    def run(self, frame: bytes, repeat: int) -> float:
        return float(self.prog.test_run(frame, repeat=repeat, data_out=False).duration_ns)

    def reasons(self) -> dict[str, Any]:
        """Packets by verdict reason, and the share each CPU counted."""
        if self.cfg is None:
            return {}
        st = self.obj.maps["stats"].typed(np.uint32, STAT)
        out: dict[str, Any] = {}
        per_cpu: Any = 0
        for r in Reason:
            pk = np.asarray(st[np.uint32(r)])["packets"].astype(np.int64)
            per_cpu = per_cpu + pk
            if int(pk.sum()):
                out[r.name.lower()] = int(pk.sum())
        total = int(np.sum(per_cpu))
        if total:
            out["cpu_share"] = [round(int(x) / total, 3) for x in per_cpu]
        return out

    def clear_dirty(self) -> None:
        """Empty the dirty sets, as the sync does every round."""
        if self.log:  # the log: reset its per-CPU counters
            n = self.obj.maps["spoof_log_n"]
            zero = np.zeros(n.ncpus, dtype=np.uint32).tobytes()
            for par in range(2):
                n.update_elem(np.uint32(par).tobytes(), zero)
            return
        for m in self.dirty:
            self.obj.maps[m].clear()

    def marked(self) -> int:
        """Keys marked dirty in the current epoch."""
        assert self.cfg is not None
        par = int(self.cfg.view["epoch"]) & 1
        if self.log:
            raw = self.obj.maps["spoof_log_n"][np.uint32(par).tobytes()]
            return int(np.frombuffer(bytes(np.asarray(raw)), dtype=np.uint32).sum())
        return len(self.obj.maps[self.dirty[par]])

    def close(self) -> None:
        self.obj.close()


@contextmanager
def loaded(variants: list[Variant], tmp: Path) -> Iterator[list[Loaded]]:
    progs: list[Loaded] = []
    try:
        for v in variants:
            progs.append(Loaded(v, compile_variant(v, tmp)))
        yield progs
    finally:
        for p in progs:
            p.close()


def frame_for(i: int) -> bytes:
    """Frame i: the source's low 16 bits are where the LCG starts."""
    return udp_frame(f"10.200.{i >> 8 & 255}.{i & 255}", "10.9.9.9")


def warm(progs: list[Loaded], frame: bytes) -> None:
    """Create every flow, then wait out t_t2/t_t3 so the checks judge."""
    for p in progs:
        p.run(frame, 2 * SOURCES)
    time.sleep(0.25)
    for p in progs:
        p.run(frame, 2 * SOURCES)


def rounds(
    progs: list[Loaded], runs: int, measure: Callable[[Loaded], float]
) -> dict[str, dict[str, float]]:
    samples: dict[str, list[float]] = {p.v.label: [] for p in progs}
    for r in range(runs):
        order = progs[r % len(progs) :] + progs[: r % len(progs)]
        for p in order:
            samples[p.v.label].append(measure(p))
    return {k: {"min": min(s), "median": statistics.median(s)} for k, s in samples.items()}


def group(
    name: str, variants: list[Variant], args: argparse.Namespace, tmp: Path, out: dict[str, Any]
) -> None:
    frame = frame_for(1)
    with loaded(variants, tmp) as progs:
        warm(progs, frame)
        res = rounds(progs, args.runs, lambda p: p.run(frame, args.repeat))
        for p in progs:
            res[p.v.label]["reasons"] = p.reasons()  # type: ignore[assignment]
    print(f"-- {name} (ns/packet, min and median of {args.runs})", file=sys.stderr)
    for label, r in res.items():
        print(f"{label:24} {r['min']:7.1f} {r['median']:7.1f}  {r['reasons']}", file=sys.stderr)
    out[name] = res


def group_dirty(args: argparse.Namespace, tmp: Path, out: dict[str, Any]) -> None:
    """First packet of a flow in an epoch (mark_dirty) against the steady state."""
    frame = frame_for(1)
    vs = [
        Variant("xpro-spoof-new-epoch", "spoof_xpro.bpf.c", []),
        Variant("xpro-spoof-same-epoch", "spoof_xpro.bpf.c", []),
    ]
    with loaded(vs, tmp) as progs:
        warm(progs, frame)
        new, _same = progs

        def measure(p: Loaded) -> float:
            p.clear_dirty()  # as the sync empties the ended epoch's set
            if p is new:
                assert p.cfg is not None
                ep = int(p.cfg.view["epoch"]) + 1
                p.cfg.view["epoch"] = ep if ep < (1 << 32) else 1
            return p.run(frame, SOURCES)  # each of the 65 536 sources once

        res = rounds(progs, args.runs * 3, measure)
    print("-- dirty (ns/packet, one call = each source once)", file=sys.stderr)
    for label, r in res.items():
        print(f"{label:24} {r['min']:7.1f} {r['median']:7.1f}", file=sys.stderr)
    out["dirty"] = res


def group_flood(args: argparse.Namespace, tmp: Path, out: dict[str, Any]) -> None:
    """The same programs under bench/flood.py's live spoofed flood (native XDP, veth).

    Without the rewrite: the generator spoofs (a random source from a /16 per
    frame).  The figure is the frames the proxy's veth received per second
    (every variant drops nearly all of them), the maximum over the
    repetitions (the variants take turns, the order rotating).
    """
    from flood import RxCounter, _flood

    from xpro.bpf import XdpMode
    from xpro.bpf.xdp import attach_xdp
    from xpro.lab.frames import udp_frame as mk_frame
    from xpro.lab.namespaces import NsProcess, netns_pair, set_gro

    vs = [
        Variant("bare", "spoof_xpro.bpf.c", ["SPOOF_BARE"], spoof=False),
        Variant("xpro", "spoof_xpro.bpf.c", [], spoof=False),
        *[
            Variant(f"stage{s}", "spoof_bisect.bpf.c", [f"SPOOF_STAGE={s}"], spoof=False)
            for s in range(5)
        ],
        *[
            Variant(k.lower().replace("_", "-"), "spoof_bisect.bpf.c", [f"SPOOF_{k}"], spoof=False)
            for k in ("DST_CLOSED", "DST_FIRST", "DST_ADD_FIRST", "NO_EPOCH")
        ],
        Variant("flows-128k", "spoof_bisect.bpf.c", [], spoof=False, flows=1 << 17),
        Variant("epoch-0", "spoof_bisect.bpf.c", [], spoof=False, cfg={"epoch": 0}),
        Variant("flows-percpu-lru", "spoof_bisect.bpf.c", ["SPOOF_FLOWS_PERCPU_LRU"], spoof=False),
        Variant("dirty-log", "spoof_bisect.bpf.c", ["SPOOF_DIRTY_LOG"], spoof=False),
        *[
            Variant(k.lower().replace("_", "-"), "spoof_bisect.bpf.c", [f"SPOOF_{k}"], spoof=False)
            for k in ("FLOW_VALUE_40", "FLOW_EPOCH_FIRST")
        ],
    ]
    wanted = (
        [v for v in vs if v.label in args.flood_variants.split(",")] if args.flood_variants else vs
    )
    samples: dict[str, list[float]] = {v.label: [] for v in wanted}
    with loaded(wanted, tmp) as progs, netns_pair() as pair:
        set_gro(pair.proxy_if, pair.proxy_ns, on=True)
        frame = mk_frame(
            src_mac=pair.peer_mac,
            dst_mac=pair.proxy_mac,
            src=pair.peer_addr4,
            dst=pair.proxy_addr4,
            sport=40000,
            dport=9,
            payload=b"x" * 18,
        )
        rx = RxCounter(pair.proxy_if, pair.proxy_ns)
        try:
            for rep in range(args.flood_reps):
                order = progs[rep % len(progs) :] + progs[: rep % len(progs)]
                for p in order:
                    link = attach_xdp(p.prog, pair.proxy_if, XdpMode.NATIVE, netns=pair.proxy_ns)
                    try:
                        gen: NsProcess[None] = NsProcess(
                            pair.peer_ns, _flood, pair.peer_if, frame, args.flood_spoof, 0, None
                        )
                        with gen:
                            time.sleep(0.6)
                            r1, t1 = rx(), time.perf_counter()
                            time.sleep(args.flood_window)
                            r2, t2 = rx(), time.perf_counter()
                    finally:
                        link.detach()
                        link.close()
                    samples[p.v.label].append((r2 - r1) / (t2 - t1))
                    print(
                        f"flood rep {rep + 1} {p.v.label:20} {samples[p.v.label][-1] / 1e6:6.2f}"
                        " Mpps",
                        file=sys.stderr,
                    )
            reasons = {p.v.label: p.reasons() for p in progs}
        finally:
            rx.close()
    res = {
        k: {
            "max_mpps": max(s) / 1e6,
            "median_mpps": statistics.median(s) / 1e6,
            "reasons": reasons[k],
        }
        for k, s in samples.items()
    }
    print("-- flood (Mpps received and dropped, max and median)", file=sys.stderr)
    for label, r in res.items():
        print(
            f"{label:24} {r['max_mpps']:6.2f} {r['median_mpps']:6.2f}  {r['reasons']}",
            file=sys.stderr,
        )
    out["flood"] = res


def group_wide(args: argparse.Namespace, tmp: Path, out: dict[str, Any]) -> None:
    """Sources over a /8 (2^24, beyond the 2^20-entry table): every packet creates a
    flow, evicting the least recently used one, and marks it dirty.

    The dirty sets are emptied before every call, as the sync does every
    round (a full set fails every insertion); calls of ``--wide-repeat`` runs.
    """
    frame = frame_for(1)
    vs = [
        Variant("bare-wide", "spoof_xpro.bpf.c", ["SPOOF_BARE"], wide=True),
        Variant("xpro-wide", "spoof_xpro.bpf.c", [], wide=True),
        Variant("xpro-wide-epoch-0", "spoof_xpro.bpf.c", [], wide=True, cfg={"epoch": 0}),
        Variant("xpro-spoof-16", "spoof_xpro.bpf.c", []),
        Variant("bisect-wide", "spoof_bisect.bpf.c", [], wide=True),
        Variant("dirty-no-prealloc", "spoof_bisect.bpf.c", ["SPOOF_DIRTY_NO_PREALLOC"], wide=True),
        Variant("flows-percpu-lru", "spoof_bisect.bpf.c", ["SPOOF_FLOWS_PERCPU_LRU"], wide=True),
        Variant("dirty-log", "spoof_bisect.bpf.c", ["SPOOF_DIRTY_LOG"], wide=True),
        Variant(
            "percpu-lru-dirty-log",
            "spoof_bisect.bpf.c",
            ["SPOOF_FLOWS_PERCPU_LRU", "SPOOF_DIRTY_LOG"],
            wide=True,
        ),
    ]
    # The walk goes on from call to call: each call starts from the frame the
    # last one left (the kernel hands the rewritten packet back), so every
    # source is new until the 2^24 walk wraps.
    frames: dict[str, bytes] = {}

    def walk(p: Loaded, repeat: int) -> float:
        r = p.prog.test_run(frames.get(p.v.label, frame), repeat=repeat)
        assert r.data is not None
        frames[p.v.label] = r.data
        return float(r.duration_ns)

    with loaded(vs, tmp) as progs:
        for p in progs:  # fill the table: from here on every new flow evicts one
            walk(p, FLOWS + FLOWS // 4)
        time.sleep(0.25)

        def measure(p: Loaded) -> float:
            if p.cfg is not None:
                p.clear_dirty()
            return walk(p, args.wide_repeat)

        res = rounds(progs, args.runs, measure)
        for p in progs:
            res[p.v.label]["reasons"] = p.reasons()  # type: ignore[assignment]
            if p.cfg is not None:  # flows marked dirty by the last call: all new?
                res[p.v.label]["dirty_last"] = p.marked()
    print("-- wide: sources over a /8 (ns/packet, min and median)", file=sys.stderr)
    for label, r in res.items():
        print(
            f"{label:24} {r['min']:7.1f} {r['median']:7.1f}  {r['reasons']} "
            f"dirty={r.get('dirty_last')}",
            file=sys.stderr,
        )
    out["wide"] = res


def group_parallel(args: argparse.Namespace, tmp: Path, out: dict[str, Any]) -> None:
    """Two threads, one per CPU, on one program and its maps at once."""
    ncpu = len(os.sched_getaffinity(0))
    if ncpu < 2:
        return
    vs = [
        Variant("xpro-spoof", "spoof_xpro.bpf.c", []),
        Variant("bisect-dst-plain", "spoof_bisect.bpf.c", ["SPOOF_DST_PLAIN"]),
        Variant("bisect-dst-closed", "spoof_bisect.bpf.c", ["SPOOF_DST_CLOSED"]),
        Variant("bisect-dst-add-first", "spoof_bisect.bpf.c", ["SPOOF_DST_ADD_FIRST"]),
        Variant("bisect-dst-first", "spoof_bisect.bpf.c", ["SPOOF_DST_FIRST"]),
        Variant("bisect-stage4", "spoof_bisect.bpf.c", []),
        Variant("bare-spoof", "spoof_xpro.bpf.c", ["SPOOF_BARE"]),
    ]
    frames = [frame_for(1), frame_for(30000)]  # two threads, far apart in the walk
    with loaded(vs, tmp) as progs:
        warm(progs, frames[0])

        def both(p: Loaded) -> float:
            res: list[float] = [0.0, 0.0]

            def worker(i: int) -> None:
                os.sched_setaffinity(0, {i})
                res[i] = p.run(frames[i], args.repeat)

            ts = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            return max(res)

        res = rounds(progs, args.runs, both)
    print("-- parallel, two CPUs (ns/packet per CPU, the slower thread)", file=sys.stderr)
    for label, r in res.items():
        print(f"{label:24} {r['min']:7.1f} {r['median']:7.1f}", file=sys.stderr)
    out["parallel"] = res


GROUPS: dict[str, list[Variant]] = {
    "main": [
        Variant("bare", "spoof_xpro.bpf.c", ["SPOOF_BARE"], spoof=False),
        Variant("bare-spoof", "spoof_xpro.bpf.c", ["SPOOF_BARE"]),
        Variant("xpro-single", "spoof_xpro.bpf.c", [], spoof=False),
        Variant("xpro-spoof", "spoof_xpro.bpf.c", []),
    ],
    "bisect": [
        Variant("bare-spoof", "spoof_xpro.bpf.c", ["SPOOF_BARE"]),
        *[Variant(f"stage{s}", "spoof_bisect.bpf.c", [f"SPOOF_STAGE={s}"]) for s in range(5)],
        Variant("xpro-spoof", "spoof_xpro.bpf.c", []),
    ],
    "knobs": [
        Variant("stage4", "spoof_bisect.bpf.c", []),
        Variant("dst-plain", "spoof_bisect.bpf.c", ["SPOOF_DST_PLAIN"]),
        Variant("flow-plain", "spoof_bisect.bpf.c", ["SPOOF_FLOW_PLAIN"]),
        Variant("dst-no-ts2", "spoof_bisect.bpf.c", ["SPOOF_DST_NO_TS2"]),
        Variant("dst-ts2-if-newer", "spoof_bisect.bpf.c", ["SPOOF_DST_TS2_IF_NEWER"]),
        Variant("dst-closed", "spoof_bisect.bpf.c", ["SPOOF_DST_CLOSED"]),
        Variant("dst-add-first", "spoof_bisect.bpf.c", ["SPOOF_DST_ADD_FIRST"]),
        Variant("dst-first", "spoof_bisect.bpf.c", ["SPOOF_DST_FIRST"]),
        Variant("no-epoch", "spoof_bisect.bpf.c", ["SPOOF_NO_EPOCH"]),
        Variant("flow-value-40", "spoof_bisect.bpf.c", ["SPOOF_FLOW_VALUE_40"]),
        Variant("flow-epoch-first", "spoof_bisect.bpf.c", ["SPOOF_FLOW_EPOCH_FIRST"]),
        Variant("events-off", "spoof_bisect.bpf.c", [], cfg={"events": 0}),
        Variant("epoch-0", "spoof_bisect.bpf.c", [], cfg={"epoch": 0}),
        Variant("flows-128k", "spoof_bisect.bpf.c", [], flows=1 << 17),
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument(
        "--groups",
        default="main,bisect,knobs,dirty,parallel",
        help="also: flood (a live spoofed flood over a veth, as bench/flood.py), "
        "wide (sources over a /8: every packet a new flow)",
    )
    ap.add_argument("--flood-reps", type=int, default=3)
    ap.add_argument("--wide-repeat", type=int, default=200_000)
    ap.add_argument(
        "--flood-spoof",
        default="10.200.0.0/16",
        help="the prefix the live flood draws sources from (bench/flood.py: a /16)",
    )
    ap.add_argument("--flood-window", type=float, default=1.5)
    ap.add_argument("--flood-variants", default="", help="comma-separated labels (default: all)")
    args = ap.parse_args()
    want = args.groups.split(",")

    tmp = Path(tempfile.mkdtemp(prefix="xpro-spoof-"))
    out: dict[str, Any] = {}
    try:
        for name, variants in GROUPS.items():
            if name in want:
                group(name, variants, args, tmp, out)
        if "dirty" in want:
            group_dirty(args, tmp, out)
        if "parallel" in want:
            group_parallel(args, tmp, out)
        if "flood" in want:
            group_flood(args, tmp, out)
        if "wide" in want:
            group_wide(args, tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary: dict[str, Any] = {"repeat": args.repeat, "runs": args.runs}
    if "main" in out:
        m = out["main"]
        summary["ns"] = {k: round(v["min"], 1) for k, v in m.items()}
        summary["ratio_single"] = round(m["xpro-single"]["min"] / m["bare"]["min"], 2)
        summary["ratio_spoof"] = round(m["xpro-spoof"]["min"] / m["bare-spoof"]["min"], 2)
        summary["spoof_minus_single_ns"] = round(
            m["xpro-spoof"]["min"] - m["xpro-single"]["min"], 1
        )
    for g in ("bisect", "knobs", "dirty", "parallel", "wide"):
        if g in out:
            summary[g] = {k: round(v["min"], 1) for k, v in out[g].items()}
    if "flood" in out:
        fl = out["flood"]
        summary["flood_mpps"] = {k: round(v["max_mpps"], 2) for k, v in fl.items()}
        if "bare" in fl and "xpro" in fl:
            summary["flood_ratio"] = round(fl["xpro"]["max_mpps"] / fl["bare"]["max_mpps"], 2)
    summary["reasons"] = {
        g: {k: v.get("reasons") for k, v in out[g].items()} for g in ("main",) if g in out
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
