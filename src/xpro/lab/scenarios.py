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
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from xpro.lab.mesh import (
    BACKENDS,
    DaemonMesh,
    HashlimitMesh,
    LabError,
    Mesh,
    Thresholds,
    XproMesh,
)
from xpro.lab.namespaces import NsProcess
from xpro.lab.report import Run
from xpro.lab.service import Service
from xpro.lab.topology import Addressing, Lab, ProxySite, link_drops
from xpro.lab.traffic import ROLES, Bins, Flow, frame, send_flows

__all__ = [
    "SCENARIOS",
    "FloodPlan",
    "LabOptions",
    "Live",
    "Scenario",
    "flood_plan",
    "measure",
    "quiet_logs",
]

SERVICE_PORT = 9000
#: Every service address, both families (the service listens on each).
SERVICE_ADDRESSES = tuple(a for v6 in (False, True) for a in (
    Addressing(v6).service, Addressing(v6).other_service))
SYN_PORT = 80
_A = ROLES.index("attack")
#: Default packets/s of the spoofed flood, in total (over T_F2 at every proxy).
FLOOD_RATE = 50_000.0
#: With ``--spread``: what each proxy sees of the destination (flood and its
#: clients), as a share of T_F2.
SPREAD_SHARE = 0.8
#: The groups of legitimate clients ``spoofed-flood`` reports on its own.
FLOOD_GROUPS = ("victim_clients", "other_clients", "new_clients")

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
    """A flood from random sources of ``spoof`` through every proxy, by live frames."""

    spoof: str
    rate: float
    start: float
    stop: float


def _live_flood(lab: Lab, opts: LabOptions, flood: LiveFlood, t0: float
                ) -> list[tuple[int, float, float]]:
    """In the ``net`` namespace: one live-frames generator per proxy link, in threads.

    Returns, per generator, (frames sent, start, end) in seconds after ``t0``.
    """
    from xpro.lab.livegen import LiveGenerator

    a = opts.addressing
    src = a.host(flood.spoof, 0)
    gens = []
    try:
        for site in lab.proxies:
            fr = _frame(site, opts, src, a.service, 12345)
            gens.append(LiveGenerator(site.net_if, None, [fr],
                                      rate=flood.rate / len(lab.proxies), spoof=flood.spoof))
        out = [(0, 0.0, 0.0)] * len(gens)

        def go(i: int) -> None:
            time.sleep(max(0.0, t0 + flood.start - time.monotonic()))
            begin = time.monotonic() - t0
            n = gens[i].run(flood.stop - flood.start)
            out[i] = (n, begin, time.monotonic() - t0)

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
            live: Live | None = None) -> Run:
    """Start ``mesh``, send ``flows`` (and ``flood``), count at the service, stop ``mesh``.

    ``events`` are ``(seconds, label, action)``: the action runs in this
    process at that moment of the run (kill a daemon, stop the store...).
    ``attack_from_flood``: the attack starts when the flood generators really
    started (they are the whole attack).
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
                          recv_bins, {f.source: f.group for f in flows if f.group}).start()
        stack.callback(service.stop)
        sender: NsProcess[dict[str, int]] = NsProcess(
            lab.net_ns, send_flows, [s.net_if for s in lab.proxies], list(flows), t0,
            sent_bins).start()
        stack.callback(sender.stop)
        flooder: NsProcess[list[tuple[int, float, float]]] | None = None
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
                attack_start = min(begin for _, begin, _ in parts)
            for n, begin, end in parts:
                # The live-frames generator paces in bursts of about a millisecond
                # and its count is exact: spread it evenly over the time it ran.
                _spread(sent_bins, n, begin, end)
                total += n
            info["flood_sent_per_proxy_pps"] = [round(n / max(end - begin, 1e-9))
                                                for n, begin, end in parts]
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


def _spread(bins: Bins, n: int, begin: float, end: float) -> None:
    """Add ``n`` attack frames sent evenly over ``[begin, end)`` to ``bins``."""
    a, b = bins.index(begin), bins.index(end)
    w = bins.width
    edges = [max(begin, min(end, i * w)) for i in range(a, b + 2)]
    span = max(end - begin, 1e-9)
    shares = [(edges[k + 1] - edges[k]) / span for k in range(b - a + 1)]
    counts = [int(n * x) for x in shares]
    counts[-1] += n - sum(counts)
    for k, c in enumerate(counts):
        bins.counts[_A, a + k] += c


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
    A rate that does not make it so is refused (:class:`LabError`).
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
        raise LabError("--spread needs at least 2 proxies: the mesh must see more than "
                       "any proxy alone")
    total = (opts.flood_rate if opts.flood_rate is not None
             else n * (SPREAD_SHARE * t_f2 - legit_max))
    plan = FloodPlan(True, n, t_f2, total, legit_total, legit_max)
    if total <= 0 or plan.per_proxy_max >= t_f2 or plan.mesh <= t_f2:
        raise LabError(
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
    return base


def check_options(opts: LabOptions) -> None:
    if opts.proxies < 1 or opts.bots < 0 or opts.clients < 1:
        raise LabError("need at least one proxy and one client")
    if not opts.attack_start < opts.duration or not math.isfinite(opts.duration):
        raise LabError("the attack must start before the end of the run")
    if opts.backend not in BACKENDS:
        raise LabError(f"backend: one of {', '.join(BACKENDS)}, not {opts.backend!r}")
