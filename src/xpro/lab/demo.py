"""``xpro demo``: the filter against a flood, in two network namespaces.

A *peer* namespace (clients and the attacker) and a *proxy* namespace are
joined by a veth pair.  The XDP filter is attached to the proxy's end.  From
the peer side, one source floods and another sends a legitimate stream, both
as UDP to a socket on the proxy side that counts what arrives.  The result is
what each source sent, what passed and what was dropped, with the program's
verdict counters.  Everything is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from xpro.bpf import BpfObject, Map, XdpMode, object_path
from xpro.core import layout
from xpro.core.layout import Reason
from xpro.lab.frames import Stream, UdpCounter, send_in_netns, udp_frame
from xpro.lab.namespaces import NsPair, netns_pair, require_root

__all__ = ["DemoConfig", "DemoResult", "SourceRow", "format_result", "run_demo", "stat_totals"]

_NS = 1_000_000_000


@dataclass(frozen=True)
class DemoConfig:
    """What the demo sends and the thresholds it sets."""

    duration: float = 6.0
    flood_rate: int = 5000
    legit_rate: int = 50
    t_f1: int = 100
    t_t2: float = 1.0
    t_f2: int = 1_000_000
    mode: str = "native"
    port: int = 9000


@dataclass(frozen=True)
class SourceRow:
    """One source: what it sent, what reached the proxy's socket, what was dropped."""

    role: str
    address: str
    rate: int
    sent: int
    passed: int

    @property
    def dropped(self) -> int:
        return self.sent - self.passed


@dataclass(frozen=True)
class DemoResult:
    config: DemoConfig
    interface: str
    netns: str
    rows: list[SourceRow]
    reasons: dict[Reason, int] = field(default_factory=dict)


def stat_totals(stats: Map) -> dict[Reason, int]:
    """Packets per verdict reason, summed over CPUs, from the typed per-CPU ``stats`` map."""
    return {reason: int(stats.sum(int(reason))["packets"]) for reason in Reason}


def _configure(obj: BpfObject, config: DemoConfig) -> None:
    cfg = obj.global_data(".data", layout.CONFIG)
    view = cfg.view
    view["t_f1"] = config.t_f1
    view["t_t2"] = int(config.t_t2 * _NS)
    view["t_f2"] = config.t_f2
    view["mode"] = layout.MODE_ENFORCE


def _traffic(pair: NsPair, config: DemoConfig) -> list[SourceRow]:
    net = pair.subnet4
    sources = {"flood": str(net[66]), "legit": str(net[10])}
    rates = {"flood": config.flood_rate, "legit": config.legit_rate}
    streams = [
        Stream(
            role,
            udp_frame(
                src_mac=pair.peer_mac,
                dst_mac=pair.proxy_mac,
                src=addr,
                dst=pair.proxy_addr4,
                sport=40000 + i,
                dport=config.port,
            ),
            rates[role],
        )
        for i, (role, addr) in enumerate(sources.items())
    ]
    with UdpCounter(pair.proxy_ns, config.port) as rx:
        sent = send_in_netns(pair.peer_ns, pair.peer_if, streams, config.duration)
    received = rx.counts
    return [
        SourceRow(role, addr, rates[role], sent[role], received.get(addr, 0))
        for role, addr in sources.items()
    ]


def run_demo(config: DemoConfig, progress: Callable[[str], None] | None = None) -> DemoResult:
    """Build the namespaces, attach the filter, send, count, clean up; return the counts."""
    say = progress or (lambda _msg: None)
    require_root("xpro demo")
    mode = XdpMode[config.mode.upper()]
    with netns_pair() as pair:
        say(f"namespaces {pair.peer_ns} and {pair.proxy_ns}, veth {pair.peer_if}/{pair.proxy_if}")
        obj = BpfObject(
            object_path(),
            programs=["xpro_xdp"],
            max_entries={"flows": 65536},
            types=layout.MAP_TYPES,
        )
        try:
            obj.load()
            _configure(obj, config)
            link = obj.programs["xpro_xdp"].attach_xdp(pair.proxy_if, mode, netns=pair.proxy_ns)
            try:
                say(
                    f"filter attached ({config.mode}); sending for {config.duration:g} s: "
                    f"flood {config.flood_rate}/s, legitimate {config.legit_rate}/s"
                )
                rows = _traffic(pair, config)
                reasons = stat_totals(obj.maps["stats"])
            finally:
                link.detach()
                link.close()
        finally:
            obj.close()
        say("detached; removing the namespaces")
        return DemoResult(config, pair.proxy_if, pair.proxy_ns, rows, reasons)


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), *(line(r) for r in rows)]


def format_result(result: DemoResult) -> str:
    """The demo's report: per-source table, verdict counters, and what they mean."""
    c = result.config
    out = [
        f"XDP filter ({c.mode} mode) on {result.interface} in {result.netns}",
        f"limits: t_f1 = {c.t_f1} packets/s per source, judged after t_t2 = {c.t_t2:g} s; "
        f"t_f2 = {c.t_f2} packets/s per destination",
        "",
    ]
    rows = [
        [
            r.address,
            r.role,
            str(r.rate),
            str(r.sent),
            str(r.passed),
            str(r.dropped),
            f"{100.0 * r.dropped / r.sent:.1f}%" if r.sent else "-",
        ]
        for r in result.rows
    ]
    out += _table(
        ["source", "role", "rate/s", "sent", "passed", "dropped", "dropped %"],
        rows,
        right={2, 3, 4, 5, 6},
    )
    out += ["", "verdict counters of the XDP program (all CPUs, all packets it saw):"]
    shown = [
        [reason.name, str(n)]
        for reason, n in result.reasons.items()
        if n or reason in (Reason.PASS, Reason.SRC_RATE)
    ]
    out += ["  " + s for s in _table(["reason", "packets"], shown, right={1})]
    dropped = sum(r.dropped for r in result.rows)
    by_rate = result.reasons.get(Reason.SRC_RATE, 0) + result.reasons.get(Reason.DST_RATE, 0)
    out += [
        "",
        f"{dropped} packets sent but not received; the program dropped {by_rate} for their rate.",
        "PASS and NON_IP also count what the kernel itself sends (IPv6 neighbour discovery, ARP).",
    ]
    return "\n".join(out)

