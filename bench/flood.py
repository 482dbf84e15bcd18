"""Flood benchmark: packets per second dropped at one proxy's veth, per filter, in one run.

A peer namespace floods a proxy namespace over a veth pair with 60-byte UDP
frames from the live-frames generator (:mod:`xpro.lab.livegen`: one kernel call
that sends until it is stopped).  Each variant is installed on the proxy's
end of the veth in turn, and drops the flood:

* ``bare``: an XDP program that only returns XDP_DROP, native mode (the ceiling);
* ``flow-counter``: the least a per-flow flood filter does (parse, one hash
  lookup keyed on the address pair, the coarse clock, one atomic add on a
  record every CPU shares, then XDP_DROP: ``bench/progs/flow_counter.bpf.c``),
  native mode: the floor under xpro;
* ``xpro-native`` / ``xpro-generic``: the xpro filter (``xpro.datapath.xdp.XdpFilter``
  attached with a BPF link) in driver and in skb mode, with a threshold the
  flood exceeds;
* ``xdp-filter``: xdp-tools' ``xdp-filter load --mode native`` with a deny rule
  for the flood (libxdp's dispatcher cannot run on this kernel; it falls back
  to attaching the single program, which is what is measured);
* ``iptables-drop``: ``-t raw -A PREROUTING -j DROP``;
* ``iptables-hashlimit``: the same chain, ``-m hashlimit --hashlimit-above``;
* ``nft-limit``: an nftables netdev ingress chain, ``limit rate over ... drop``.

Three scenarios: ``single`` (one source far over ``t_f1`` = 100/s: xpro's
per-source check drops it, hashlimit by source), ``spoofed`` (sources drawn
at random from a /16 for every frame, each under ``t_f1``: xpro's
per-destination check drops the flood at ``t_f2`` = 10000/s, hashlimit by
destination) and ``spoof8`` (below).  ``single`` is the headline.

``spoof8``: every frame from a new source of ``10.0.0.0/8`` (the generator
walks the /8 in order, 16.7 million sources: a measurement sends a few
million frames, far more than the 2^20 records of the flow table, so every
frame misses it), to a destination that is *closed*: over ``t_f2`` =
10000/s, so that the destination limit drops the flood.  How it is closed
first: ``t_t3`` (the window a destination needs before its rate is judged)
is 0.1 s and the flood itself is the pre-flood: it passes ``t_f2`` within
its first milliseconds, so 0.1 s into the ``--warm`` period (0.6 s) the
destination is closed, and it stays closed for the whole window.  The xpro
variants record the share of the frames the veth received in the window that
the destination rule dropped (``dst_drop_share``, 1.0: closed all along).  No
sync runs and no daemon knows a client, so every source is unknown; the
program's dirty set (marked once per flow and epoch, never emptied here)
fills in the first million frames and later marks fail cheaply, which
flatters the figure a little against a mesh whose sync empties the set
every round.  The JSON's ``spoof8_to_ceiling`` (xpro native over the bare
XDP_DROP, median of paired ratios) and ``spoof8_to_hashlimit`` are the
figures of this case: the cost of a flow record per spoofed frame, which a
closed destination that drops unknown sources before the flow stage
(docs/semantics.rst) does away with.

A measurement: install the variant, start the flood, let it settle
(``--warm`` s: the thresholds need their window), read the variant's drop
counter and the interface's received-frames counter, again after
``--window`` s, stop the flood, remove the variant.  Drop counters: xpro's
per-reason verdict counters (the rate reasons), xdp-filter's XDP_DROP
statistics, the rules' packet counters for iptables and nftables; the bare
program has none, so its figure is the frames the veth received (it drops
every one).  Variants take turns in every repetition (the order rotates), so
noise from elsewhere on the machine hits them alike; the figure of each is the
median over the repetitions (min and max are printed too).

GRO is on at the proxy's veth for every variant: a veth drops frames sent to
it with XDP_TX unless its end runs a native XDP program or has GRO on, and
skb-mode XDP and netfilter run after the skb is built.

Run as root: ``python bench/flood.py`` (about 4 minutes; ``--scenario single``
takes a third of it).  ``--plot docs/figures/flood.png`` also draws the figure
(and an SVG beside it).  The last line is JSON with ``native_to_ceiling``,
``generic_to_ceiling``, ``native_to_hashlimit`` (headline scenario),
``spoof8_to_ceiling`` and ``spoof8_to_hashlimit``, the pps of every variant
and every scenario's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pyroute2 import IPRoute

from xpro.bpf import XDP_DROP, BpfObject, Map, XdpLink, XdpMode
from xpro.bpf.xdp import attach_xdp, detach_xdp
from xpro.core.layout import Reason
from xpro.core.model import NS_PER_S, FilterParams
from xpro.core.params import Sizes
from xpro.datapath.xdp import XdpFilter
from xpro.lab.frames import udp_frame
from xpro.lab.livegen import LiveGenerator
from xpro.lab.namespaces import NsPair, NsProcess, in_netns, netns_pair, run_in_netns, set_gro

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from packet_cost import compile_prog  # noqa: E402  (bench/ is not a package)

#: xdp-filter keeps its maps pinned here, for every interface of the host.
XDP_FILTER_PINS = Path("/sys/fs/bpf/xdp-filter")
NFT_TABLE = "xpro_flood"
NFPROTO_IPV4 = 2
NFPROTO_NETDEV = 5
SPOOF_PREFIX = "10.200.0.0/16"
#: ``spoof8``: every frame a new source of this /8.
SPOOF8_PREFIX = "10.0.0.0/8"
#: The issue's targets for the headline scenario (``single``).
TARGET_CEILING = 0.8
TARGET_HASHLIMIT = 2.5
#: Issue 12's targets for ``spoof8`` (docs/performance.rst).
TARGET_SPOOF8_CEILING = 0.7
TARGET_SPOOF8_HASHLIMIT = 3.0


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    spoof: str | None
    params: FilterParams
    hashlimit: list[str]
    nft_rate: int
    xdp_filter_rule: Callable[[NsPair], list[str]]
    limit: str
    spoof_order: str = "random"


SCENARIOS = {
    "single": Scenario(
        name="single",
        what="one source, over the per-source limit t_f1 = 100/s",
        spoof=None,
        # t_t2 short: the window a source needs before it can be judged
        params=FilterParams(t_t2=NS_PER_S // 10, t_f1=100, t_f2=10_000),
        hashlimit=["--hashlimit-above", "100/sec", "--hashlimit-mode", "srcip"],
        nft_rate=100,
        xdp_filter_rule=lambda p: ["ip", p.peer_addr4, "--mode", "src"],
        limit="per source 100/s",
    ),
    "spoofed": Scenario(
        name="spoofed",
        what=f"a random source from {SPOOF_PREFIX} per frame, over the per-destination "
             "limit t_f2 = 10000/s",
        spoof=SPOOF_PREFIX,
        params=FilterParams(t_t2=NS_PER_S // 10, t_t3=NS_PER_S // 10, t_f1=1000,
                            t_f2=10_000),
        hashlimit=["--hashlimit-above", "10000/sec", "--hashlimit-mode", "dstip"],
        nft_rate=10_000,
        xdp_filter_rule=lambda p: ["ip", p.proxy_addr4, "--mode", "dst"],
        limit="per destination 10000/s",
    ),
    "spoof8": Scenario(
        name="spoof8",
        what=f"a new source of {SPOOF8_PREFIX} in every frame (in order), to a destination "
             "closed by the flood itself (over t_f2 = 10000/s from t_t3 = 0.1 s on)",
        spoof=SPOOF8_PREFIX,
        spoof_order="sequential",
        params=FilterParams(t_t2=NS_PER_S // 10, t_t3=NS_PER_S // 10, t_f1=1000,
                            t_f2=10_000),
        hashlimit=["--hashlimit-above", "10000/sec", "--hashlimit-mode", "dstip"],
        nft_rate=10_000,
        xdp_filter_rule=lambda p: ["ip", p.proxy_addr4, "--mode", "dst"],
        limit="per destination 10000/s, closed",
    ),
}

#: xpro's drop reasons (the closed destination's, once the program has it).
DST_DROPS = [r for r in Reason if r.name in ("DST_RATE", "DST_CLOSED")]
DROPS = [Reason.SRC_RATE, *DST_DROPS]

VARIANTS = ["bare", "flow-counter", "xpro-native", "xpro-generic", "xdp-filter", "iptables-drop",
            "iptables-hashlimit", "nft-limit"]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _run(cmd: list[str], stdin: str | None = None) -> str:
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def sh(netns: str, *cmd: str, stdin: str | None = None) -> str:
    """Run a command with only the network namespace switched (bpffs stays visible)."""
    return run_in_netns(netns, _run, list(cmd), stdin)


class NftCounter:
    """Packets counted by the rules of one nftables table, read over netlink.

    iptables here is the nf_tables backend: its rules are nftables rules
    (family ip) with a counter each.  A read takes well under a millisecond,
    so it is timed as precisely as the interface counter.
    """

    def __init__(self, netns: str, family: int, table: str) -> None:
        from pyroute2.nftables.main import NFTables

        with in_netns(netns):
            self._nft = NFTables(nfgen_family=family)
        self._table = table

    def __call__(self) -> int:
        total = 0
        for rule in self._nft.get_rules():
            if rule.get_attr("NFTA_RULE_TABLE") != self._table:
                continue
            for expr in rule.get_attr("NFTA_RULE_EXPRESSIONS") or []:
                if expr.get_attr("NFTA_EXPR_NAME") == "counter":
                    total += int(expr.get_attr("NFTA_EXPR_DATA").get_attr("NFTA_COUNTER_PACKETS"))
        return total

    def close(self) -> None:
        self._nft.close()


class XdpFilterCounter:
    """xdp-filter's XDP_DROP statistics, from its pinned per-CPU map."""

    def __init__(self) -> None:
        self._map = Map.from_pin(XDP_FILTER_PINS / "xdp_stats_map").typed(
            np.uint32, np.dtype([("rx_packets", "<u8"), ("rx_bytes", "<u8")]))

    def __call__(self) -> int:
        return int(np.asarray(self._map[np.uint32(XDP_DROP)])["rx_packets"].sum())

    def close(self) -> None:
        self._map.close()


class RxCounter:
    """Frames received by an interface (IFLA_STATS64), read over one netlink socket."""

    def __init__(self, ifname: str, netns: str) -> None:
        with in_netns(netns):
            self._ipr = IPRoute()
            self._index = self._ipr.link_lookup(ifname=ifname)[0]

    def __call__(self) -> int:
        msg = self._ipr.get_links(self._index)[0]
        return int(msg.get_attr("IFLA_STATS64")["rx_packets"])

    def close(self) -> None:
        self._ipr.close()


def _flood(ifname: str, frame: bytes, spoof: str | None, batch_size: int,
           cpu: int | None, spoof_order: str = "random") -> None:
    """The generator child (already in the peer namespace): floods until terminated."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    with LiveGenerator(ifname, None, [frame], spoof=spoof, spoof_order=spoof_order,
                       batch_size=batch_size) as gen:
        gen.send((1 << 31) - 1)


# ---------------------------------------------------------------------------
# Variants: install, count drops, remove
# ---------------------------------------------------------------------------


@dataclass
class Bench:
    pair: NsPair
    scenario: Scenario
    bare_obj: BpfObject
    counter_obj: BpfObject
    filt: XdpFilter
    rx: RxCounter
    link: XdpLink | None = None
    counter: NftCounter | XdpFilterCounter | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    # -- XDP programs
    def _attach(self, prog: Any, mode: XdpMode) -> None:
        self.link = attach_xdp(prog, self.pair.proxy_if, mode, netns=self.pair.proxy_ns)

    def _detach(self) -> None:
        if self.link is not None:
            self.link.detach()
            self.link.close()
            self.link = None

    def _xpro_drops(self) -> int:
        c = self.filt.counters()
        return int(sum(c[r][0] for r in DROPS))

    def _dst_drops(self) -> int:
        """Frames the destination rule dropped (over T_F2, or closed to unknown sources)."""
        c = self.filt.counters()
        return int(sum(c[r][0] for r in DST_DROPS))

    def install(self, variant: str) -> Callable[[], int]:
        """Install ``variant`` on the proxy's veth; returns its drop counter."""
        p, s = self.pair, self.scenario
        ns, dev = p.proxy_ns, p.proxy_if
        if variant == "bare":
            self._attach(self.bare_obj.programs["bare_drop"], XdpMode.NATIVE)
            return self.rx
        if variant == "flow-counter":  # drops every frame, like bare
            self._attach(self.counter_obj.programs["flow_counter_drop"], XdpMode.NATIVE)
            return self.rx
        if variant in ("xpro-native", "xpro-generic"):
            self._attach(self.filt.program,
                         XdpMode.NATIVE if variant == "xpro-native" else XdpMode.GENERIC)
            return self._xpro_drops
        if variant == "xdp-filter":
            sh(ns, "xdp-filter", "load", "--mode", "native", dev)
            sh(ns, "xdp-filter", *s.xdp_filter_rule(p))
            xf = self.counter = XdpFilterCounter()
            return xf
        if variant == "iptables-drop":
            sh(ns, "iptables", "-w", "-t", "raw", "-A", "PREROUTING", "-j", "DROP")
            self.counter = nf = NftCounter(ns, NFPROTO_IPV4, "raw")
            return nf
        if variant == "iptables-hashlimit":
            sh(ns, "iptables", "-w", "-t", "raw", "-A", "PREROUTING", "-m", "hashlimit",
               *s.hashlimit, "--hashlimit-name", "xproflood", "-j", "DROP")
            self.counter = nf = NftCounter(ns, NFPROTO_IPV4, "raw")
            return nf
        if variant == "nft-limit":
            sh(ns, "nft", "-f", "-", stdin=(
                f"table netdev {NFT_TABLE} {{\n"
                f"  chain ingress {{\n"
                f'    type filter hook ingress device "{dev}" priority 0; policy accept;\n'
                f"    limit rate over {s.nft_rate}/second counter drop\n"
                f"  }}\n}}\n"))
            self.counter = nf = NftCounter(ns, NFPROTO_NETDEV, NFT_TABLE)
            return nf
        raise ValueError(variant)

    def remove(self, variant: str) -> None:
        ns, dev = self.pair.proxy_ns, self.pair.proxy_if
        if self.counter is not None:
            self.counter.close()
            self.counter = None
        if variant in ("bare", "flow-counter", "xpro-native", "xpro-generic"):
            self._detach()
        elif variant == "xdp-filter":
            try:
                sh(ns, "xdp-filter", "unload", dev)
            finally:
                # xdp-filter keeps its state in one place for the whole host: another
                # run of it (another user's bench) can make it lose track of ours.
                # Whatever it left on our own interface goes, or every variant after
                # it would measure xdp-filter.
                detach_xdp(dev, netns=ns)
        elif variant.startswith("iptables"):
            sh(ns, "iptables", "-w", "-t", "raw", "-F", "PREROUTING")
        elif variant == "nft-limit":
            sh(ns, "nft", "delete", "table", "netdev", NFT_TABLE)

    def measure(self, variant: str, frame: bytes, args: argparse.Namespace
                ) -> dict[str, float]:
        count = self.install(variant)
        try:
            gen: NsProcess[None] = NsProcess(self.pair.peer_ns, _flood, self.pair.peer_if,
                                             frame, self.scenario.spoof, args.batch, args.cpu,
                                             self.scenario.spoof_order)
            xpro = variant.startswith("xpro")
            with gen:
                time.sleep(args.warm)
                c1 = self._dst_drops() if xpro else 0
                d1, r1, t1 = self._sample(count)
                time.sleep(args.window)
                d2, r2, t2 = self._sample(count)
                c2 = self._dst_drops() if xpro else 0
                if not gen.is_alive():
                    gen.result(timeout=5)  # raises the child's error
                    raise RuntimeError("the generator stopped early")
        finally:
            self.remove(variant)
        dt = t2 - t1
        out = {"pps": (d2 - d1) / dt, "rx_pps": (r2 - r1) / dt}
        if xpro:  # of what the veth received, the share the destination rule dropped
            out["dst_drop_share"] = (c2 - c1) / max(1, r2 - r1)
        return out

    def _sample(self, count: Callable[[], int]) -> tuple[int, int, float]:
        t0 = time.perf_counter()
        d = count()
        r = self.rx()
        t1 = time.perf_counter()
        return d, r, (t0 + t1) / 2


# ---------------------------------------------------------------------------


def run_scenario(scn: Scenario, args: argparse.Namespace, bare_obj: BpfObject,
                 counter_obj: BpfObject, variants: list[str]) -> dict[str, Any]:
    with netns_pair() as pair:
        set_gro(pair.proxy_if, pair.proxy_ns, on=True)
        frame = udp_frame(src_mac=pair.peer_mac, dst_mac=pair.proxy_mac, src=pair.peer_addr4,
                          dst=pair.proxy_addr4, sport=40000, dport=9, payload=b"x" * 18)
        filt = XdpFilter(scn.params, sizes=Sizes(flows=args.flows))
        filt.next_epoch()  # as under a running sync: flows are marked dirty once an epoch
        rx = RxCounter(pair.proxy_if, pair.proxy_ns)
        bench = Bench(pair, scn, bare_obj, counter_obj, filt, rx)
        samples: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        try:
            for rep in range(args.reps):
                order = variants[rep % len(variants):] + variants[:rep % len(variants)]
                for v in order:
                    if v in bench.skipped:
                        continue
                    try:
                        samples[v].append(bench.measure(v, frame, args))
                    except Exception as exc:
                        if v == "xdp-filter":  # report, go on without this baseline
                            bench.skipped[v] = str(exc)
                            samples[v].clear()
                            print(f"{scn.name}: {v} unavailable: {exc}", file=sys.stderr)
                            continue
                        raise
                    s = samples[v][-1]
                    print(f"{scn.name} rep {rep + 1}/{args.reps} {v:20} "
                          f"{s['pps'] / 1e6:6.2f} Mpps dropped ({s['rx_pps'] / 1e6:6.2f} "
                          "received)", file=sys.stderr)
        finally:
            bench._detach()
            rx.close()
            filt.close()
    res: dict[str, Any] = {"what": scn.what, "limit": scn.limit, "variants": {},
                           "skipped": bench.skipped}
    for v, ss in samples.items():
        if not ss:
            continue
        pps = [s["pps"] for s in ss]
        rxp = [s["rx_pps"] for s in ss]
        res["variants"][v] = {"pps": statistics.median(pps), "min": min(pps), "max": max(pps),
                              "rx_pps": statistics.median(rxp),
                              "samples": [round(x) for x in pps]}
        if "dst_drop_share" in ss[0]:
            res["variants"][v]["dst_drop_share"] = [round(s["dst_drop_share"], 4) for s in ss]
    # Ratios pair the measurements of one repetition (taken within seconds of
    # each other), then take the median over repetitions: slow drifts of the
    # machine's load cancel out.
    vs = res["variants"]
    for v, r in vs.items():
        r["to_ceiling"] = paired_ratio(samples[v], samples["bare"])
    if "xpro-native" in vs and "flow-counter" in vs:
        res["native_to_flow_counter"] = paired_ratio(samples["xpro-native"],
                                                     samples["flow-counter"])
    if "xpro-native" in vs and "iptables-hashlimit" in vs:
        res["native_to_hashlimit"] = paired_ratio(samples["xpro-native"],
                                                  samples["iptables-hashlimit"])
    return res


def paired_ratio(a: list[dict[str, float]], b: list[dict[str, float]]) -> float:
    """Median over repetitions of a's pps / b's pps in the same repetition."""
    return statistics.median(x["pps"] / y["pps"] for x, y in zip(a, b, strict=True))


def print_table(name: str, res: dict[str, Any]) -> None:
    print(f"\nscenario {name}: {res['what']}")
    print(f"{'variant':20} {'Mpps dropped':>12} {'min':>7} {'max':>7} {'received':>9} "
          f"{'/ceiling':>9}")
    for v, r in res["variants"].items():
        share = (f"  (dropped by the destination rule: "
                 f"{min(r['dst_drop_share']):.3f}-{max(r['dst_drop_share']):.3f})"
                 if r.get("dst_drop_share") else "")
        print(f"{v:20} {r['pps'] / 1e6:12.2f} {r['min'] / 1e6:7.2f} {r['max'] / 1e6:7.2f} "
              f"{r['rx_pps'] / 1e6:9.2f} {r['to_ceiling']:9.2f}{share}")
    if "native_to_flow_counter" in res:
        print(f"xpro native / flow counter: {res['native_to_flow_counter']:.2f}x")
    if "native_to_hashlimit" in res:
        print(f"xpro native / iptables hashlimit: {res['native_to_hashlimit']:.2f}x")
    for v, why in res["skipped"].items():
        print(f"{v}: not measured: {why}")


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scns = doc["scenarios"]
    fig, axes = plt.subplots(1, len(scns), figsize=(6.5 * len(scns), 4.6), squeeze=False)
    colors = {"bare": "tab:gray", "flow-counter": "tab:cyan", "xpro-native": "tab:green",
              "xpro-generic": "tab:olive", "xdp-filter": "tab:blue", "iptables-drop": "tab:red",
              "iptables-hashlimit": "tab:orange", "nft-limit": "tab:purple"}
    for ax, (name, res) in zip(axes[0], scns.items(), strict=True):
        vs = res["variants"]
        names = list(vs)
        med = [vs[n]["pps"] / 1e6 for n in names]
        lo = [(vs[n]["pps"] - vs[n]["min"]) / 1e6 for n in names]
        hi = [(vs[n]["max"] - vs[n]["pps"]) / 1e6 for n in names]
        xs = range(len(names))
        ax.bar(xs, med, yerr=[lo, hi], capsize=3, color=[colors.get(n, "gray") for n in names])
        for x, n in zip(xs, names, strict=True):
            ax.text(x, vs[n]["max"] / 1e6, f"{vs[n]['to_ceiling']:.2f}", ha="center",
                    va="bottom", fontsize=8)
        ax.set_ylim(0, max(vs[n]["max"] for n in names) / 1e6 * 1.1)
        ax.set_xticks(list(xs), [n.replace("-", "\n", 1) for n in names], fontsize=8)
        ax.set_ylabel("frames dropped (Mpps)")
        ax.set_title(f"{name}: {res['limit']}\n(bar: median of {doc['reps']}, whiskers: "
                     "min-max;\nlabel: median of the ratios to bare XDP_DROP, repetition by "
                     "repetition)", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    m = doc["machine"]
    fig.suptitle(f"Flood on a veth, 60-byte UDP frames, generator and receiver on "
                 f"{m['cpus']} cores (kernel {m['kernel']})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    fig.savefig(path.with_suffix(".svg"))
    print(f"plot written to {path} and {path.with_suffix('.svg')}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all",
                    help="one scenario, or all of them")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated subset (bare is always measured)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of every variant")
    ap.add_argument("--warm", type=float, default=0.6,
                    help="seconds of flood before the window (thresholds need their window)")
    ap.add_argument("--window", type=float, default=1.5, help="seconds measured")
    ap.add_argument("--batch", type=int, default=0,
                    help="generator batch size (frames per page-pool round; 0: the kernel's 64)")
    ap.add_argument("--cpu", type=int, default=None,
                    help="pin the generator to this CPU (default: the scheduler decides)")
    ap.add_argument("--flows", type=int, default=Sizes().flows,
                    help="xpro's flow-table size (default: the daemon's)")
    ap.add_argument("--plot", type=Path, metavar="PNG", help="write the figure here (and .svg)")
    ap.add_argument("--replot", type=Path, metavar="FILE",
                    help="only draw the figure (--plot) from the JSON line of an earlier run")
    args = ap.parse_args()
    if args.replot is not None:
        if args.plot is None:
            ap.error("--replot needs --plot PNG")
        last = args.replot.read_text().strip().splitlines()[-1]
        plot(json.loads(last), args.plot)
        return
    if os.geteuid() != 0:
        sys.exit("the flood benchmark needs root (namespaces, XDP, netfilter)")
    variants = ["bare", *[v for v in args.variants.split(",") if v and v != "bare"]]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; known: {VARIANTS}")
    host_skips: dict[str, str] = {}
    if "xdp-filter" in variants and XDP_FILTER_PINS.exists():
        host_skips["xdp-filter"] = (f"in use on this host ({XDP_FILTER_PINS} exists; its "
                                    "state is global)")
        print(f"xdp-filter {host_skips['xdp-filter']}: measuring without it", file=sys.stderr)
        variants.remove("xdp-filter")

    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    tmp = Path(tempfile.mkdtemp(prefix="xpro-flood-"))
    t0 = time.monotonic()
    try:
        bare_obj = BpfObject(compile_prog("bare_drop", tmp), programs=["bare_drop"])
        counter_obj = BpfObject(compile_prog("flow_counter", tmp),
                                programs=["flow_counter_drop"])
        try:
            bare_obj.load()
            counter_obj.load()
            scns = {n: run_scenario(SCENARIOS[n], args, bare_obj, counter_obj, variants)
                    for n in names}
        finally:
            bare_obj.close()
            counter_obj.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for n, res in scns.items():
        res["skipped"].update(host_skips)
        print_table(n, res)

    head = scns["single"] if "single" in scns else scns[names[0]]
    hv = head["variants"]

    def ratio(v: str) -> float | None:
        return round(hv[v]["to_ceiling"], 3) if v in hv else None

    doc: dict[str, Any] = {
        "headline": "single" if "single" in scns else names[0],
        "native_to_ceiling": ratio("xpro-native"),
        "generic_to_ceiling": ratio("xpro-generic"),
        "native_to_hashlimit": (round(head["native_to_hashlimit"], 3)
                                if "native_to_hashlimit" in head else None),
        "flow_counter_to_ceiling": ratio("flow-counter"),
        "native_to_flow_counter": (round(head["native_to_flow_counter"], 3)
                                   if "native_to_flow_counter" in head else None),
        "pps": {v: round(r["pps"]) for v, r in hv.items()},
        "scenarios": scns,
        "reps": args.reps,
        "window_s": args.window,
        "warm_s": args.warm,
        "seconds": round(time.monotonic() - t0, 1),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
    }
    s8 = scns.get("spoof8", {})
    s8v = s8.get("variants", {})
    doc["spoof8_to_ceiling"] = (round(s8v["xpro-native"]["to_ceiling"], 3)
                                if "xpro-native" in s8v else None)
    doc["spoof8_to_hashlimit"] = (round(s8["native_to_hashlimit"], 3)
                                  if "native_to_hashlimit" in s8 else None)
    nc, nh = doc["native_to_ceiling"], doc["native_to_hashlimit"]
    s8c, s8h = doc["spoof8_to_ceiling"], doc["spoof8_to_hashlimit"]
    def met(figure: float | None, target: float) -> bool | None:
        return None if figure is None else figure >= target

    doc["targets"] = {}
    if doc["headline"] == "single":
        doc["targets"]["native_to_ceiling>=0.8"] = met(nc, TARGET_CEILING)
        doc["targets"]["native_to_hashlimit>=2.5"] = met(nh, TARGET_HASHLIMIT)
        print(f"\nheadline (single): xpro native {nc} x the bare XDP_DROP ceiling "
              f"(target {TARGET_CEILING}), {nh} x iptables hashlimit "
              f"(target {TARGET_HASHLIMIT})")
    if "spoof8" in scns:
        doc["targets"]["spoof8_to_ceiling>=0.7"] = met(s8c, TARGET_SPOOF8_CEILING)
        doc["targets"]["spoof8_to_hashlimit>=3"] = met(s8h, TARGET_SPOOF8_HASHLIMIT)
        print(f"spoof8 (a new source of a /8 per frame, destination closed): xpro native "
              f"{s8c} x the ceiling (target {TARGET_SPOOF8_CEILING}), {s8h} x iptables "
              f"hashlimit (target {TARGET_SPOOF8_HASHLIMIT})")
    if args.plot is not None:
        plot(doc, args.plot)
    print(json.dumps(doc, default=lambda x: round(x, 4) if isinstance(x, float) else x))


if __name__ == "__main__":
    main()
