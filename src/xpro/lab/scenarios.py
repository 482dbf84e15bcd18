"""The lab's scenarios: who sends what through which proxy, and what filters it.

Every scenario runs on one :class:`~xpro.lab.topology.Lab` and returns one
:class:`~xpro.lab.report.Run` per variant (``distributed`` has three: the
mesh with sync, each proxy alone, iptables ``hashlimit``).  The timeline of a
run: legitimate clients send from 0 s, the attack from ``attack_start`` to
the end (``duration``); the sender and the service count per 0.1-s bin.
``attack_start`` defaults to 1 s, 3 s in ``spoofed-flood`` (the victim's
clients are established before the flood, as real users are).

Traffic of a bot is spread evenly over every proxy (the paper's mesh: each
proxy sees 1/N of every bot); each legitimate client reaches the service
through one proxy (client ``k`` through proxy ``k mod N``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from xpro.lab.frames import fragment_frame, icmp_frame, proto_frame, with_sources
from xpro.lab.mesh import (
    BACKENDS,
    DaemonMesh,
    HashlimitMesh,
    LabError,
    LabOptionError,
    Mesh,
    Thresholds,
    XproMesh,
)
from xpro.lab.namespaces import NsProcess
from xpro.lab.report import Run
from xpro.lab.service import Service
from xpro.lab.topology import Addressing, Lab, ProxySite, link_drops
from xpro.lab.traffic import ROLES, Bins, Flow, frame, random_sources, send_flows

__all__ = [
    "SCENARIOS",
    "FloodPlan",
    "LabOptions",
    "Live",
    "RotationPlan",
    "Scenario",
    "SprayPlan",
    "flood_plan",
    "measure",
    "quiet_logs",
    "rotation_flows",
    "rotation_plan",
    "spray_plan",
]

SERVICE_PORT = 9000
#: Every service address, both families (the service listens on each).
SERVICE_ADDRESSES = tuple(a for v6 in (False, True) for a in (
    Addressing(v6).service, Addressing(v6).other_service))
SYN_PORT = 80
_A = ROLES.index("attack")
#: Default packets/s of the spoofed flood, in total (over T_F2 at every proxy).
FLOOD_RATE = 50_000.0
#: The most a flood of the lab may ask (``--flood-rate``'s bound): more than
#: its generators can send on any machine.
FLOOD_RATE_MAX = 1e7
#: With ``--spread``: what each proxy sees of the destination (flood and its
#: clients), as a share of T_F2.
SPREAD_SHARE = 0.8
#: The groups of legitimate clients ``spoofed-flood`` reports on its own.
FLOOD_GROUPS = ("victim_clients", "other_clients", "new_clients")

#: port-spray: the IP protocols without ports its flood sends besides ICMP
#: (ICMPv6): GRE, ESP, OSPF, PIM, VRRP, L2TP and nine unassigned numbers.
SPRAY_PORTLESS = (47, 50, 89, 103, 112, 115, *range(144, 153))
#: One cycle of port-spray's flood, by kind of frame: the generators take turns
#: with these frames, one burst each, so a kind's share of the flood is its
#: share of the cycle.  UDP and TCP SYN to a random port each (16/49 of the
#: flood each), ICMP and each other portless protocol (1/49 each), later
#: fragments (1/49: they carry no port, so the program keys them on the address).
SPRAY_CYCLE = (*(k for p in ("icmp", *(f"ip{n}" for n in SPRAY_PORTLESS))
                 for k in ("udp", "syn", p)), "fragment")
#: port-spray: every (address, port, protocol) key stays under this share of T_F2.
SPRAY_KEY_SHARE = 0.25
#: v6-rotation: each attacker's rate over the mesh, in T_F1.
ROTATION_RATIO = 4.0
#: v6-rotation: the victim's rate over the mesh (attackers and clients) stays
#: under this share of T_F2, so the per-destination limit cannot act.
ROTATION_DST_SHARE = 0.8

#: Called about once a second while traffic runs: (variant, seconds, sent, received).
Live = Callable[[str, float, Any, Any], None]


@dataclass(frozen=True)
class LabOptions:
    """Sizes, rates and thresholds of a lab run (the ``xpro lab`` options)."""

    proxies: int = 4
    bots: int = 40
    clients: int = 10
    duration: float = 10.0
    attack_start: float = 1.0
    ipv6: bool = False
    proto: str = "udp"
    store: str = "memory://"
    ratio: float = 1.6
    client_rate: float = 20.0
    #: Total packets/s of the spoofed flood; None: :data:`FLOOD_RATE`, or with
    #: ``spread`` chosen from T_F2 (:func:`flood_plan`).
    flood_rate: float | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    backend: str = "native"
    #: spoofed-flood: a flood every proxy alone sees under T_F2, the mesh over it.
    spread: bool = False

    @property
    def addressing(self) -> Addressing:
        return Addressing(self.ipv6)


@dataclass
class Scenario:
    """A named scenario: ``run(lab, options, live)`` returns its variants."""

    name: str
    summary: str
    run: Callable[[Lab, LabOptions, Live | None], list[Run]]
    server_store: bool = False  # needs proxies in separate processes
    attack_start: float = 1.0  # the default of --attack-start
    bots: int = 40  # the default of --bots


@contextlib.contextmanager
def quiet_logs(path: Path | None) -> Iterator[None]:
    """Send xpro's log records (alerts: one per bot and sync round) to ``path``, not stderr."""
    logger = logging.getLogger("xpro")
    old = (logger.handlers[:], logger.propagate, logger.level)
    handler: logging.Handler
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    else:
        handler = logging.NullHandler()
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        handler.close()
        logger.handlers, logger.propagate, logger.level = old


# ---- traffic ----------------------------------------------------------------------


def _frame(site: ProxySite, opts: LabOptions, src: str, dst: str, sport: int) -> bytes:
    port = SYN_PORT if opts.proto == "syn" else SERVICE_PORT
    return frame(opts.proto, src_mac=site.net_mac, dst_mac=site.outside_mac, src=src, dst=dst,
                 sport=sport, dport=port)


def bot_flows(lab: Lab, opts: LabOptions, *, bots: int, rate: float, start: float,
              stop: float, network: str | None = None, sites: Sequence[ProxySite] | None = None,
              on: float = 0.0, off: float = 0.0, role: str = "attack") -> list[Flow]:
    """``bots`` sources, each at ``rate`` packets/s in total, spread evenly over ``sites``."""
    a = opts.addressing
    sites = list(sites or lab.proxies)
    out = []
    for k in range(bots):
        src = a.host(network or a.bots, k)
        for site in sites:
            fr = _frame(site, opts, src, a.service, 20000 + k % 40000)
            out.append(Flow(src, role, site.index, (fr,), rate / len(sites), start, stop,
                            on, off))
    return out


def client_flows(lab: Lab, opts: LabOptions, *, clients: int, start: float, stop: float,
                 network: str | None = None, dst: str | None = None,
                 first: int = 0, group: str = "") -> list[Flow]:
    """``clients`` legitimate sources, client ``k`` through proxy ``k mod N``."""
    a = opts.addressing
    out = []
    for k in range(first, first + clients):
        src = a.host(network or a.clients, k)
        site = lab.proxies[k % len(lab.proxies)]
        fr = _frame(site, opts, src, dst or a.service, 30000 + k % 30000)
        out.append(Flow(src, "legit", site.index, (fr,), opts.client_rate, start, stop,
                        group=group))
    return out


@dataclass(frozen=True)
class LiveFlood:
    """A flood from random sources of ``spoof`` through every proxy, by live frames.

    ``kinds``: the frames the generators take turns with, by kind (see
    :func:`spray_frame`; empty: one frame of the scenario's ``--proto``);
    ``random_dport``: each UDP or TCP frame to a random port.
    """

    spoof: str
    rate: float
    start: float
    stop: float
    kinds: tuple[str, ...] = ()
    random_dport: bool = False


@dataclass(frozen=True)
class FloodPart:
    """What one generator of a live flood sent, in seconds after ``t0``: its
    frames, when it started and ended, and its kernel calls (the end of each,
    frames)."""

    sent: int
    begin: float
    end: float
    calls: tuple[tuple[float, int], ...]


def _live_flood(lab: Lab, opts: LabOptions, flood: LiveFlood, t0: float) -> list[FloodPart]:
    """In the ``net`` namespace: one live-frames generator per proxy link, in threads.

    The proxies forward what they pass, so the generators run ``forwarded``
    (:mod:`xpro.lab.livegen`: otherwise frames that come back changed are lost).
    """
    from xpro.lab.livegen import LiveGenerator

    a = opts.addressing
    src = a.host(flood.spoof, 0)
    gens = []
    try:
        for site in lab.proxies:
            frames = ([spray_frame(k, site, src, a.service) for k in flood.kinds]
                      or [_frame(site, opts, src, a.service, 12345)])
            gens.append(LiveGenerator(site.net_if, None, frames,
                                      rate=flood.rate / len(lab.proxies), spoof=flood.spoof,
                                      random_dport=flood.random_dport, forwarded=True))
        out = [FloodPart(0, 0.0, 0.0, ())] * len(gens)

        def go(i: int) -> None:
            time.sleep(max(0.0, t0 + flood.start - time.monotonic()))
            begin = time.monotonic() - t0
            n = gens[i].run(flood.stop - flood.start)
            out[i] = FloodPart(n, begin, time.monotonic() - t0,
                               tuple((t - t0, k) for t, k in gens[i].calls))

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(gens))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out
    finally:
        for g in gens:
            g.close()


# ---- one measured run ---------------------------------------------------------------


def measure(lab: Lab, opts: LabOptions, name: str, mesh: Mesh | None, flows: Sequence[Flow],
            *, legit: Sequence[str], attack_start: float, attack_end: float | None = None,
            flood: LiveFlood | None = None, attack_from_flood: bool = False,
            events: Sequence[tuple[float, str, Callable[[], object]]] = (),
            count_frames: bool = False, live: Live | None = None) -> Run:
    """Start ``mesh``, send ``flows`` (and ``flood``), count at the service, stop ``mesh``.

    ``events`` are ``(seconds, label, action)``: the action runs in this
    process at that moment of the run (kill a daemon, stop the store...).
    ``attack_from_flood``: the attack starts when the flood generators really
    started (they are the whole attack).  ``count_frames``: the service
    counts every IP frame to a service address on its links, not what its
    sockets receive (a flood to any port and protocol, fragments).
    """
    duration = max([f.stop for f in flows] + ([flood.stop] if flood else []))
    groups = tuple(dict.fromkeys(f.group for f in flows if f.group))
    sent_bins = Bins(duration + 2.0, groups=groups)
    recv_bins = Bins(duration + 2.0, groups=groups)
    info: dict[str, Any] = {}
    notes: list[str] = []
    drops_before = link_drops(lab)
    with contextlib.ExitStack() as stack:
        if mesh is not None:
            mesh.start()
            stack.callback(mesh.stop)
        t0 = time.monotonic() + 0.5
        service = Service(lab.svc_ns, SERVICE_PORT, SERVICE_ADDRESSES, legit, t0, duration,
                          recv_bins, {f.source: f.group for f in flows if f.group},
                          links=[s.svc_if for s in lab.proxies] if count_frames else ()
                          ).start()
        stack.callback(service.stop)
        sender: NsProcess[dict[str, int]] = NsProcess(
            lab.net_ns, send_flows, [s.net_if for s in lab.proxies], list(flows), t0,
            sent_bins).start()
        stack.callback(sender.stop)
        flooder: NsProcess[list[FloodPart]] | None = None
        if flood is not None:
            flooder = NsProcess(lab.net_ns, _live_flood, lab, opts, flood, t0).start()
            stack.callback(flooder.stop)
        done: list[tuple[float, str]] = []
        pending = sorted(events, key=lambda e: e[0])
        last_live = 0.0
        first_filter_drop: float | None = None
        while True:
            now = time.monotonic() - t0
            if first_filter_drop is None and mesh is not None and now > 0:
                c = mesh.counters()
                if c.get("src_rate", 0) + c.get("dst_rate", 0) > 0:
                    first_filter_drop = now
            while pending and pending[0][0] <= now:
                at, label, action = pending.pop(0)
                action()
                done.append((at, label))
            if live is not None and now - last_live >= 1.0 and now > 0:
                last_live = now
                live(name, now, sent_bins.snapshot(), recv_bins.snapshot())
            if now > duration + 0.2 and not pending:
                break
            time.sleep(0.05)
        sent = sender.result(60)
        if flooder is not None and flood is not None:
            total = 0
            parts = flooder.result(60)
            if parts and attack_from_flood:
                # The generators start a few ms late: the attack starts when they did.
                attack_start = min(part.begin for part in parts)
            for part in parts:
                # Each kernel call's frames in the bin of its end (a call takes
                # microseconds); the count is exact.
                _add_calls(sent_bins, part.calls)
                total += part.sent
            info["flood_sent_per_proxy_pps"] = [round(part.sent / max(part.end - part.begin,
                                                                      1e-9))
                                                for part in parts]
            sent["spoofed flood"] = total
            notes.append(f"spoofed flood: {total} frames by live-frames test runs, "
                         f"{flood.rate:.0f}/s over {len(lab.proxies)} proxies")
        received = service.result(30)
        counters = mesh.counters() if mesh is not None else {}
    lost = link_drops(lab) - drops_before
    if lost:
        notes.append(f"{lost} frames were dropped by the lab's own veths (a full queue: "
                     "the cores were saturated), not by a filter; they count as dropped")
    return Run(name=name, width=sent_bins.width, sent=sent_bins.snapshot(),
               received=recv_bins.snapshot(), sent_by_source=sent,
               received_by_source=received, legit_sources=frozenset(legit),
               attack_start=attack_start,
               attack_end=duration if attack_end is None else attack_end,
               duration=duration, period=opts.thresholds.period, events=done,
               counters=counters, notes=notes,
               first_filter_drop=None if first_filter_drop is None
               else round(first_filter_drop - attack_start, 2),
               groups=groups, info=info)


def _add_calls(bins: Bins, calls: Sequence[tuple[float, int]]) -> None:
    """Add the attack frames of ``calls`` ((seconds after ``t0``, frames)) to ``bins``."""
    if calls:
        at = np.array([bins.index(t) for t, _ in calls], dtype=np.intp)
        np.add.at(bins.counts[_A], at, np.array([n for _, n in calls], dtype=np.int64))


def _legit(flows: Sequence[Flow]) -> list[str]:
    return sorted({f.source for f in flows if f.role == "legit"})


# ---- the scenarios ----------------------------------------------------------------


def distributed_flows(lab: Lab, opts: LabOptions, ratio: float) -> list[Flow]:
    t_f1 = opts.thresholds.t_f1
    return [
        *client_flows(lab, opts, clients=opts.clients, start=0.0, stop=opts.duration),
        *bot_flows(lab, opts, bots=opts.bots, rate=ratio * t_f1, start=opts.attack_start,
                   stop=opts.duration),
    ]


def run_distributed(lab: Lab, opts: LabOptions, live: Live | None,
                    variants: Sequence[str] = ("sync", "no-sync", "hashlimit")) -> list[Run]:
    """Bots under T_F1 at every proxy, over it globally: sync, each proxy alone, hashlimit."""
    flows = distributed_flows(lab, opts, opts.ratio)
    runs = []
    for v in variants:
        mesh: Mesh
        if v == "hashlimit":
            mesh = HashlimitMesh(lab, opts.thresholds)
        else:
            mesh = XproMesh(lab, opts.thresholds, store=_store(opts), backend=opts.backend,
                            sync=v == "sync")
        runs.append(measure(lab, opts, v, mesh, flows, legit=_legit(flows),
                            attack_start=opts.attack_start, live=live))
    return runs


SWEEP = (0.8, 1.0, 1.2, 1.6, 2.0)


def run_sweep(lab: Lab, opts: LabOptions, live: Live | None,
              ratios: Sequence[float] = SWEEP) -> list[tuple[float, Run]]:
    """``distributed`` with sync at global rates of ``ratios`` x T_F1 per bot."""
    out = []
    for ratio in ratios:
        flows = distributed_flows(lab, opts, ratio)
        mesh = XproMesh(lab, opts.thresholds, store=_store(opts), backend=opts.backend, sync=True)
        run = measure(lab, opts, f"{ratio:g}x", mesh, flows, legit=_legit(flows),
                      attack_start=opts.attack_start, live=live)
        out.append((ratio, run))
    return out


def _store(opts: LabOptions) -> str:
    return "" if opts.store.startswith("memory://") else opts.store


def _spoof_prefix(opts: LabOptions) -> str:
    # 65536 random sources: each sends far below T_F1, the destination limit must act.
    return "fd00:5::/112" if opts.ipv6 else "10.160.0.0/16"


@dataclass(frozen=True)
class FloodPlan:
    """The rates of ``spoofed-flood`` at the victim, in packets/s (see :func:`flood_plan`)."""

    spread: bool
    proxies: int
    t_f2: int
    total: float  # the flood, over every proxy
    legit_total: float  # the victim's clients during the flood (old and new)
    legit_per_proxy_max: float  # of those, the most any one proxy carries

    @property
    def per_proxy(self) -> float:
        """The flood through each proxy (it is split evenly)."""
        return self.total / self.proxies

    @property
    def per_proxy_max(self) -> float:
        """The most any one proxy sees sent to the victim: its share of the flood and
        of the victim's clients."""
        return self.per_proxy + self.legit_per_proxy_max

    @property
    def mesh(self) -> float:
        """What the mesh as a whole sees sent to the victim."""
        return self.total + self.legit_total

    def over_t_f2_after(self, lead: float, legit_before: float) -> float | None:
        """Seconds of flood after which the victim's mesh-wide rate, averaged over a
        window that started ``lead`` s before the flood with ``legit_before``
        packets/s, passes T_F2 (None: never).  An estimate: it ignores T_T4."""
        if self.mesh <= self.t_f2:
            return None
        return max(0.0, (self.t_f2 - legit_before) * lead / (self.mesh - self.t_f2))

    def as_dict(self) -> dict[str, Any]:
        return {"spread": self.spread, "total_pps": round(self.total),
                "per_proxy_pps": round(self.per_proxy),
                "victim_per_proxy_max_pps": round(self.per_proxy_max),
                "victim_mesh_pps": round(self.mesh), "t_f2": self.t_f2}


def _victim_clients(opts: LabOptions) -> tuple[int, int]:
    """(the victim's clients established before the flood, new ones during it)."""
    return opts.clients, opts.clients


def new_clients_start(opts: LabOptions) -> float:
    """When the victim's new clients start: the end of the 2nd sync period of the flood."""
    return opts.attack_start + 2 * opts.thresholds.period


def flood_plan(opts: LabOptions) -> FloodPlan:
    """The flood rate of ``spoofed-flood`` and what each proxy and the mesh see of it.

    Without ``spread``: ``opts.flood_rate`` (default :data:`FLOOD_RATE`),
    split evenly over the proxies as always.  With ``spread`` the flood is
    just as split, at a rate that every proxy alone sees under T_F2 and only
    the mesh over it: unless given, each proxy carries :data:`SPREAD_SHARE`
    x T_F2 to the victim (its share of the flood plus the victim's clients
    that go through it), so the mesh sees about ``N x SPREAD_SHARE`` x T_F2.
    A rate that does not make it so is refused (:class:`LabOptionError`).
    """
    n = opts.proxies
    t_f2 = opts.thresholds.t_f2
    old, new = _victim_clients(opts)
    during = new_clients_start(opts) < opts.duration
    per_proxy_clients = math.ceil(old / n) + (math.ceil(new / n) if during else 0)
    legit_max = per_proxy_clients * opts.client_rate
    legit_total = (old + (new if during else 0)) * opts.client_rate
    if not opts.spread:
        total = FLOOD_RATE if opts.flood_rate is None else opts.flood_rate
        return FloodPlan(False, n, t_f2, total, legit_total, legit_max)
    if n < 2:
        raise LabOptionError("--spread needs at least 2 proxies: the mesh must see more than "
                       "any proxy alone")
    total = (opts.flood_rate if opts.flood_rate is not None
             else n * (SPREAD_SHARE * t_f2 - legit_max))
    plan = FloodPlan(True, n, t_f2, total, legit_total, legit_max)
    if total > FLOOD_RATE_MAX:
        raise LabOptionError(f"--spread: T_F2 = {t_f2} over {n} proxies needs a flood of "
                          f"{total:.0f} packets/s, more than the lab sends (at most "
                          f"{FLOOD_RATE_MAX:.0f}/s): lower --t-f2")
    if total <= 0 or plan.per_proxy_max >= t_f2 or plan.mesh <= t_f2:
        raise LabOptionError(
            f"--spread: a flood of {total:.0f}/s over {n} proxies puts "
            f"{plan.per_proxy_max:.0f}/s on a proxy and {plan.mesh:.0f}/s on the mesh (with "
            f"the victim's clients at {opts.client_rate:g}/s each); each proxy must stay "
            f"under T_F2 = {t_f2} and the mesh go over it: change --flood-rate, --proxies, "
            "--clients or --t-f2")
    return plan


def run_spoofed_flood(lab: Lab, opts: LabOptions, live: Live | None) -> list[Run]:
    """Random spoofed sources at a high rate to the victim, while three groups of
    legitimate clients are counted apart: the victim's own clients (from 0 s,
    established before the flood), another service's clients (from 0 s), and
    new clients of the victim that start during the flood."""
    a = opts.addressing
    plan = flood_plan(opts)
    old, new = _victim_clients(opts)
    new_start = new_clients_start(opts)
    flows = [
        *client_flows(lab, opts, clients=old, start=0.0, stop=opts.duration,
                      group="victim_clients"),
        *client_flows(lab, opts, clients=opts.clients, start=0.0, stop=opts.duration,
                      dst=a.other_service, first=old, group="other_clients"),
    ]
    if new_start < opts.duration:
        flows += client_flows(lab, opts, clients=new, start=new_start, stop=opts.duration,
                              network=a.new_clients, group="new_clients")
    flood = LiveFlood(_spoof_prefix(opts), plan.total, opts.attack_start, opts.duration)
    mesh = XproMesh(lab, opts.thresholds, store=_store(opts), backend=opts.backend, sync=True)
    run = measure(lab, opts, "sync", mesh, flows, legit=_legit(flows),
                  attack_start=opts.attack_start, flood=flood, attack_from_flood=True,
                  live=live)
    over = plan.over_t_f2_after(opts.attack_start, old * opts.client_rate)
    run.info["flood"] = {**plan.as_dict(),
                         "sent_per_proxy_pps": run.info.pop("flood_sent_per_proxy_pps", []),
                         "mesh_over_t_f2_after_s": None if over is None else round(over, 2)}
    run.info["victim_clients_lead_s"] = opts.attack_start
    run.info["new_clients_start_s"] = new_start if new_start < opts.duration else None
    run.notes.append(
        f"{old} clients of the victim {a.service} from 0 s ({opts.attack_start:g} s before "
        f"the flood), {opts.clients} clients of {a.other_service} from 0 s, "
        + (f"{new} new clients of the victim from {new_start:g} s (during the flood)"
           if new_start < opts.duration else "no new clients (the run ends first)"))
    where = ("spread: each proxy alone sees it under T_F2, the mesh over it"
             if plan.spread else "split evenly over the proxies")
    run.notes.append(
        f"flood {plan.total:.0f}/s in total, {plan.per_proxy:.0f}/s per proxy ({where}); "
        f"to the victim at most {plan.per_proxy_max:.0f}/s per proxy, {plan.mesh:.0f}/s "
        f"over the mesh, T_F2 = {plan.t_f2}"
        + ("" if over is None else
           f"; the mesh-wide rate passes T_F2 about {over:.1f} s into the flood"))
    return [run]


def spray_frame(kind: str, site: ProxySite, src: str, dst: str) -> bytes:
    """A frame of port-spray's flood of ``kind`` (see :data:`SPRAY_CYCLE`)."""
    smac, dmac = site.net_mac, site.outside_mac
    if kind in ("udp", "syn"):
        return frame(kind, src_mac=smac, dst_mac=dmac, src=src, dst=dst, sport=12345,
                     dport=SERVICE_PORT if kind == "udp" else SYN_PORT)
    if kind == "icmp":
        return icmp_frame(src_mac=smac, dst_mac=dmac, src=src, dst=dst)
    if kind == "fragment":
        return fragment_frame(src_mac=smac, dst_mac=dmac, src=src, dst=dst)
    if kind.startswith("ip") and kind[2:].isdigit():
        return proto_frame(src_mac=smac, dst_mac=dmac, src=src, dst=dst, proto=int(kind[2:]))
    raise LabError(f"port-spray: no frame of kind {kind!r}")


@dataclass(frozen=True)
class SprayPlan:
    """The rates of ``port-spray`` at the victim, in packets/s over the mesh
    (see :func:`spray_plan`)."""

    proxies: int
    t_f2: int
    total: float  # the flood, over every proxy
    clients: float  # the victim's clients, all on one key
    client_kind: str  # their protocol: "udp" or "syn"
    cycle: tuple[str, ...] = SPRAY_CYCLE

    def share(self, kind: str) -> float:
        """The share of the flood that is of ``kind``."""
        return self.cycle.count(kind) / len(self.cycle)

    @property
    def per_proxy(self) -> float:
        """The flood through each proxy (it is split evenly)."""
        return self.total / self.proxies

    @property
    def address(self) -> float:
        """What the mesh sees sent to the victim's address: the flood and its clients."""
        return self.total + self.clients

    def keys(self) -> dict[str, float]:
        """The busiest (address, port, protocol) key of each kind, packets/s over
        the mesh: a port of UDP or TCP (the clients' port, with them on it), a
        portless protocol, the fragments (keyed on the address alone, port and
        protocol 0)."""
        out: dict[str, float] = {}
        for kind in dict.fromkeys(self.cycle):
            rate = self.total * self.share(kind)
            if kind in ("udp", "syn"):
                rate = rate / 65536 + (self.clients if kind == self.client_kind else 0.0)
            out[kind] = rate
        return out

    @property
    def key_max(self) -> float:
        return max(self.keys().values())

    def as_dict(self) -> dict[str, Any]:
        keys = self.keys()
        busiest = max(keys, key=lambda k: keys[k])
        return {"destination": "addr+port", "total_pps": round(self.total),
                "per_proxy_pps": round(self.per_proxy),
                "victim_address_pps": round(self.address),
                "key_max_pps": round(self.key_max, 2), "key_max_kind": busiest,
                "shares": {k: round(self.share(k), 4) for k in dict.fromkeys(self.cycle)},
                "t_f2": self.t_f2}


def spray_plan(opts: LabOptions) -> SprayPlan:
    """The flood of ``port-spray``: ``opts.flood_rate`` (default
    :data:`FLOOD_RATE`) split evenly over the proxies, over T_F2 for the
    victim's address while every (address, port, protocol) key, its clients'
    included, stays under :data:`SPRAY_KEY_SHARE` x T_F2.  A rate (or
    thresholds) that does not make it so is refused (:class:`LabOptionError`)."""
    t_f2 = opts.thresholds.t_f2
    total = FLOOD_RATE if opts.flood_rate is None else opts.flood_rate
    plan = SprayPlan(opts.proxies, t_f2, total, opts.clients * opts.client_rate, opts.proto)
    if plan.address <= t_f2 or plan.key_max >= SPRAY_KEY_SHARE * t_f2:
        raise LabOptionError(
            f"port-spray: a flood of {total:.0f}/s puts {plan.address:.0f}/s on the victim's "
            f"address and {plan.key_max:.0f}/s on its busiest key; the address must go over "
            f"T_F2 = {t_f2} and every key stay under {SPRAY_KEY_SHARE:g} x T_F2: change "
            "--flood-rate, --clients, --client-rate or --t-f2")
    return plan


def run_port_spray(lab: Lab, opts: LabOptions, live: Live | None) -> list[Run]:
    """The filter keys destinations on (address, port, protocol); a spoofed flood
    to the victim's address spreads over every port and protocol, so no key
    sees much, while the victim's clients (established first) talk to their
    usual port and another service's clients to theirs."""
    a = opts.addressing
    plan = spray_plan(opts)
    flows = [
        *client_flows(lab, opts, clients=opts.clients, start=0.0, stop=opts.duration,
                      group="victim_clients"),
        *client_flows(lab, opts, clients=opts.clients, start=0.0, stop=opts.duration,
                      dst=a.other_service, first=opts.clients, group="other_clients"),
    ]
    flood = LiveFlood(_spoof_prefix(opts), plan.total, opts.attack_start, opts.duration,
                      kinds=plan.cycle, random_dport=True)
    mesh = XproMesh(lab, opts.thresholds, store=_store(opts), backend=opts.backend, sync=True,
                    extra={"filter.destination": "addr+port"})
    run = measure(lab, opts, "sync", mesh, flows, legit=_legit(flows),
                  attack_start=opts.attack_start, flood=flood, attack_from_flood=True,
                  count_frames=True, live=live)
    run.info["flood"] = {**plan.as_dict(),
                         "sent_per_proxy_pps": run.info.pop("flood_sent_per_proxy_pps", [])}
    run.info["victim_clients_lead_s"] = opts.attack_start
    port = f"{SYN_PORT}/tcp" if opts.proto == "syn" else f"{SERVICE_PORT}/udp"
    run.notes.append(
        f"destination keys: addr+port; {opts.clients} clients of the victim {a.service} on "
        f"{port} from 0 s ({opts.attack_start:g} s before the flood), {opts.clients} clients "
        f"of {a.other_service} from 0 s")
    run.notes.append(
        f"flood {plan.total:.0f}/s in total ({plan.per_proxy:.0f}/s per proxy) to "
        f"{a.service}: UDP and TCP SYN to a random port each, ICMP and "
        f"{len(SPRAY_PORTLESS)} other portless protocols, later fragments; "
        f"{plan.address:.0f}/s on the address, at most {plan.key_max:.0f}/s on any key, "
        f"T_F2 = {plan.t_f2}")
    run.notes.append("counted in frames on the service host's links (no socket receives "
                     "every port, protocol and fragment)")
    return [run]


@dataclass(frozen=True)
class RotationPlan:
    """The rates of ``v6-rotation``, in packets/s (see :func:`rotation_plan`)."""

    attackers: int
    proxies: int
    t_f1: int
    t_f2: int
    per_attacker: float  # over the mesh
    clients: float  # the legitimate clients, in total

    @property
    def per_attacker_per_proxy(self) -> float:
        return self.per_attacker / self.proxies

    @property
    def victim(self) -> float:
        """What the mesh sees sent to the victim: every attacker and client."""
        return self.attackers * self.per_attacker + self.clients

    def as_dict(self) -> dict[str, Any]:
        return {"attackers": self.attackers, "prefix_len": 64,
                "per_attacker_pps": round(self.per_attacker, 2),
                "per_attacker_per_proxy_pps": round(self.per_attacker_per_proxy, 2),
                "victim_pps": round(self.victim), "t_f1": self.t_f1, "t_f2": self.t_f2}


def rotation_plan(opts: LabOptions) -> RotationPlan:
    """``v6-rotation``: ``opts.bots`` attackers, each at :data:`ROTATION_RATIO`
    x T_F1 over the mesh.  The victim must stay under
    :data:`ROTATION_DST_SHARE` x T_F2 (the per-destination limit is not what
    is tested): more is refused (:class:`LabOptionError`)."""
    t = opts.thresholds
    plan = RotationPlan(opts.bots, opts.proxies, t.t_f1, t.t_f2, ROTATION_RATIO * t.t_f1,
                        opts.clients * opts.client_rate)
    if plan.attackers < 1 or plan.victim >= ROTATION_DST_SHARE * t.t_f2:
        raise LabOptionError(
            f"v6-rotation: {plan.attackers} attackers at {plan.per_attacker:g}/s each and the "
            f"clients put {plan.victim:.0f}/s on the victim; it needs at least one attacker "
            f"and must stay under {ROTATION_DST_SHARE:g} x T_F2 = "
            f"{ROTATION_DST_SHARE * t.t_f2:.0f}: change --bots, --clients, --t-f1 or --t-f2")
    return plan


def rotation_flows(sites: Sequence[ProxySite], opts: LabOptions, plan: RotationPlan, *,
                   start: float, stop: float) -> list[Flow]:
    """Every attacker of ``v6-rotation`` through every site, each packet from an
    address of its /64 that no other packet of the run has.

    Attacker ``k`` owns ``Addressing.rotation_net(k)`` and sends
    ``plan.per_attacker`` packets/s, split evenly over ``sites``; its flows
    are accounted under its /64.  Each flow gets a distinct random address
    for every frame it sends (``Flow.total``), so it never cycles.
    """
    a = Addressing(True)
    rate = plan.per_attacker / len(sites)
    port = SYN_PORT if opts.proto == "syn" else SERVICE_PORT
    out = []
    for k in range(plan.attackers):
        net = a.rotation_net(k)
        n = math.ceil(rate * (stop - start)) + 1
        srcs = random_sources(net, n * len(sites), seed=k)
        for j, site in enumerate(sites):
            template = frame(opts.proto, src_mac=site.net_mac, dst_mac=site.outside_mac,
                             src=srcs[j], dst=a.service, sport=20000 + k % 40000, dport=port)
            frames = tuple(with_sources(template, srcs[j::len(sites)]))
            out.append(Flow(net, "attack", site.index, frames, rate, start, stop))
    return out


def _rotation_index(src: str, nets: Sequence[ipaddress.IPv6Network | ipaddress.IPv4Network]
                    ) -> int | None:
    """Which of ``nets`` (consecutive /64s) ``src`` is in, if any."""
    ip = ipaddress.ip_address(src)
    if ip.version != 6 or not nets:
        return None
    k = (int(ip) >> 64) - (int(nets[0].network_address) >> 64)
    return k if 0 <= k < len(nets) else None


def run_v6_rotation(lab: Lab, opts: LabOptions, live: Live | None) -> list[Run]:
    """IPv6 attackers, each sending every packet from a new random address of
    its own /64, at 4 x T_F1 each over the mesh, spread over every proxy; IPv6
    clients from single addresses at the usual rate."""
    opts = replace(opts, ipv6=True)
    plan = rotation_plan(opts)
    flows = [
        *client_flows(lab, opts, clients=opts.clients, start=0.0, stop=opts.duration),
        *rotation_flows(lab.proxies, opts, plan, start=opts.attack_start, stop=opts.duration),
    ]
    mesh = XproMesh(lab, opts.thresholds, store=_store(opts), backend=opts.backend, sync=True)
    run = measure(lab, opts, "sync", mesh, flows, legit=_legit(flows),
                  attack_start=opts.attack_start, live=live)
    span = opts.duration - opts.attack_start
    nets = [ipaddress.ip_network(Addressing(True).rotation_net(k))
            for k in range(plan.attackers)]
    reached, seen = [0] * len(nets), [0] * len(nets)
    for src, n in run.received_by_source.items():
        k = _rotation_index(src, nets)
        if k is not None:
            reached[k] += n
            seen[k] += 1
    run.info["rotation"] = {
        **plan.as_dict(),
        "sent_per_attacker_pps": [round(run.sent_by_source.get(str(net), 0) / span, 2)
                                  for net in nets],
        "reached_per_attacker": reached, "addresses_seen_per_attacker": seen}
    run.notes.append(
        f"{plan.attackers} attackers, each a /64 of {Addressing(True).rotation} sending every "
        f"packet from a new random address of it, at {plan.per_attacker:g}/s over the mesh "
        f"({plan.per_attacker_per_proxy:g}/s through each proxy); {plan.victim:.0f}/s on the "
        f"victim with the clients, T_F1 = {plan.t_f1}, T_F2 = {plan.t_f2}")
    return [run]


def run_heavy_hitter(lab: Lab, opts: LabOptions, live: Live | None) -> list[Run]:
    """One source far above T_F1 (20x), through one proxy."""
    t_f1 = opts.thresholds.t_f1
    flows = [
        *client_flows(lab, opts, clients=opts.clients, start=0.0, stop=opts.duration),
        *bot_flows(lab, opts, bots=1, rate=20 * t_f1, start=opts.attack_start,
                   stop=opts.duration, sites=lab.proxies[:1]),
    ]
    mesh = XproMesh(lab, opts.thresholds, store=_store(opts), backend=opts.backend, sync=True)
    return [measure(lab, opts, "sync", mesh, flows, legit=_legit(flows),
                    attack_start=opts.attack_start, live=live)]


def run_pulse(lab: Lab, opts: LabOptions, live: Live | None) -> list[Run]:
    """Bots in on/off bursts one sync period long, at twice the ratio while on."""
    period = opts.thresholds.period
    flows = [
        *client_flows(lab, opts, clients=opts.clients, start=0.0, stop=opts.duration),
        *bot_flows(lab, opts, bots=opts.bots, rate=2 * opts.ratio * opts.thresholds.t_f1,
                   start=opts.attack_start, stop=opts.duration, on=period, off=period),
    ]
    runs = []
    for v in ("sync", "no-sync"):
        mesh = XproMesh(lab, opts.thresholds, store=_store(opts), backend=opts.backend,
                        sync=v == "sync")
        runs.append(measure(lab, opts, v, mesh, flows, legit=_legit(flows),
                            attack_start=opts.attack_start, live=live))
    return runs


def run_flash_crowd(lab: Lab, opts: LabOptions, live: Live | None) -> list[Run]:
    """A legitimate surge: 30x the clients start at once; no attack at all."""
    a = opts.addressing
    crowd = 30 * opts.clients
    flows = [
        *client_flows(lab, opts, clients=opts.clients, start=0.0, stop=opts.duration),
        *client_flows(lab, opts, clients=crowd, start=opts.attack_start, stop=opts.duration,
                      network=a.crowd),
    ]
    mesh = XproMesh(lab, opts.thresholds, store=_store(opts), backend=opts.backend, sync=True)
    run = measure(lab, opts, "sync", mesh, flows, legit=_legit(flows),
                  attack_start=opts.attack_start, live=live)
    run.notes.append(f"{crowd} new clients at {opts.client_rate:g} packets/s each from "
                     f"{opts.attack_start:g} s; every packet is legitimate")
    return [run]


def _server_store(opts: LabOptions) -> tuple[Any, Any, str]:
    """(server set, server, URL): the store server the lab starts for its daemons."""
    from xpro.lab.servers import ServerSet

    servers = ServerSet()
    try:
        if opts.store.startswith("etcd"):
            etcd = servers.etcd(1)
            return servers, etcd[0], etcd.url
        redis = servers.redis()
        return servers, redis, redis.url
    except BaseException:
        servers.close()
        raise


#: The events of a scenario on daemons: (mesh, the store server, when) -> events.
DaemonEvents = Callable[[DaemonMesh, Any, float], list[tuple[float, str, Callable[[], object]]]]


def _on_daemons(lab: Lab, opts: LabOptions, live: Live | None, events: DaemonEvents
                ) -> list[Run]:
    """``distributed`` with ``xpro run`` daemons against a store server the lab
    starts, and ``events`` a third of the way into the attack."""
    flows = distributed_flows(lab, opts, opts.ratio)
    servers, server, url = _server_store(opts)
    try:
        mesh = DaemonMesh(lab, opts.thresholds, url)
        at = opts.attack_start + (opts.duration - opts.attack_start) / 3
        run = measure(lab, opts, "sync", mesh, flows, legit=_legit(flows),
                      attack_start=opts.attack_start, events=events(mesh, server, at),
                      live=live)
        run.notes.append(f"daemons: xpro run per proxy against {url.split('://')[0]}")
        return [run]
    finally:
        servers.close()


def run_proxy_crash(lab: Lab, opts: LabOptions, live: Live | None) -> list[Run]:
    """``distributed`` on daemons: SIGKILL one mid-attack, restart it 2 s later."""
    site = lab.proxies[0]
    return _on_daemons(lab, opts, live, lambda mesh, _server, at: [
        (at, f"SIGKILL {site.name}", lambda: mesh.kill(site)),
        (at + 2.0, f"restart {site.name}", lambda: mesh.restart(site)),
    ])


def run_store_outage(lab: Lab, opts: LabOptions, live: Live | None) -> list[Run]:
    """``distributed`` on daemons: stop the master mid-attack, start it again 3 s later."""
    return _on_daemons(lab, opts, live, lambda _mesh, server, at: [
        (at, "store down", server.kill),
        (at + 3.0, "store up", server.start),
    ])


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("distributed", "bots under T_F1 at each proxy, over it globally: sync vs "
             "no sync vs hashlimit", run_distributed),
    Scenario("spoofed-flood", "random spoofed sources flood one destination; its own, new "
             "and another's clients counted apart", run_spoofed_flood, attack_start=3.0),
    Scenario("port-spray", "addr+port keys: a spoofed flood to the victim's address over "
             "every port and protocol, each key far under T_F2", run_port_spray,
             attack_start=3.0),
    Scenario("v6-rotation", "IPv6 attackers sending each packet from a new address of "
             "their own /64", run_v6_rotation, bots=10),
    Scenario("heavy-hitter", "one source far above T_F1", run_heavy_hitter),
    Scenario("pulse", "on-off bursts timed against the sync period", run_pulse),
    Scenario("flash-crowd", "a legitimate surge of new clients (false drops)",
             run_flash_crowd),
    Scenario("proxy-crash", "SIGKILL one daemon mid-attack, restart it",
             run_proxy_crash, server_store=True),
    Scenario("store-outage", "stop the master store mid-attack, bring it back",
             run_store_outage, server_store=True),
)}


def default_options(name: str, base: LabOptions) -> LabOptions:
    """Per-scenario adjustments of the options (longer runs where events need time)."""
    if name in ("proxy-crash", "store-outage") and base.duration < 12:
        return replace(base, duration=12.0)
    if name == "v6-rotation":
        return replace(base, ipv6=True)
    return base


def check_options(opts: LabOptions) -> None:
    if opts.proxies < 1 or opts.bots < 0 or opts.clients < 1:
        raise LabOptionError("need at least one proxy and one client")
    if not opts.attack_start < opts.duration or not math.isfinite(opts.duration):
        raise LabOptionError(f"--attack-start ({opts.attack_start:g} s) must be before the end "
                          f"of the run (--duration {opts.duration:g} s)")
    if opts.backend not in BACKENDS:
        raise LabOptionError(f"backend: one of {', '.join(BACKENDS)}, not {opts.backend!r}")
