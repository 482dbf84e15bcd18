"""``xpro lab``: build the lab, run its scenarios, clean up.

The group is wired into ``xpro`` by :mod:`xpro.cli`; it also runs on its own
as ``python -m xpro.cli.lab``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from xpro.cli._base import NumberRange, XproGroup
from xpro.lab.mesh import BACKENDS, LabError, LabOptionError, Thresholds, XproMesh
from xpro.lab.namespaces import require_root
from xpro.lab.report import Run, format_table, plot_runs, plot_sweep, to_json
from xpro.lab.scenarios import (
    FLOOD_RATE_MAX,
    SCENARIOS,
    LabOptions,
    Live,
    check_options,
    default_options,
    flood_plan,
    quiet_logs,
    rotation_plan,
    run_distributed,
    run_sweep,
    spray_plan,
)
from xpro.lab.topology import Lab, build_lab, lab_down, live_runs
from xpro.lab.traffic import ROLES

__all__ = ["lab"]

_A, _L = ROLES.index("attack"), ROLES.index("legit")
#: How the demo names each data path.
_DATA_PATH = {"native": "XDP native", "generic": "XDP generic", "afxdp": "AF_XDP",
              "offload": "offload, driver-mode emulation"}


def _lab_options(fn: Any) -> Any:
    """The options every lab command shares (sizes, rates, thresholds, store)."""
    opts = [
        click.option("--proxies", type=click.IntRange(1, 16), default=4, show_default=True,
                     help="Proxy namespaces (each runs the filter in native mode)."),
        click.option("--bots", type=click.IntRange(0, 5000), default=None,
                     help="Attacking sources  [default: 40; 10 for v6-rotation, each "
                          "attacker a /64]."),
        click.option("--clients", type=click.IntRange(1, 2000), default=10, show_default=True,
                     help="Legitimate clients."),
        click.option("--duration", type=NumberRange(3.0, 600.0), default=None,
                     help="Seconds of traffic per variant  [default: 10; 12 for "
                          "proxy-crash and store-outage; 8 for demo]."),
        click.option("--attack-start", type=NumberRange(0.0, 600.0), default=None,
                     help="Second at which the attack starts  [default: 1; 3 for "
                          "spoofed-flood and port-spray, whose victim's clients are "
                          "established first]."),
        click.option("--ipv6", is_flag=True,
                     help="Send everything over IPv6 (v6-rotation always does)."),
        click.option("--proto", type=click.Choice(["udp", "syn"]), default="udp",
                     show_default=True, help="UDP datagrams or TCP SYNs."),
        click.option("--store", default="memory://", show_default=True,
                     help="Master store: memory:// (proxies in this process); a bare "
                          "redis:// or etcd:// starts that server on loopback for the run; "
                          "a full URL is used as it is.  proxy-crash and store-outage "
                          "always start their own (redis unless etcd:// is given)."),
        click.option("--ratio", type=NumberRange(0.0, 100.0), default=1.6,
                     show_default=True,
                     help="Each bot's global rate as a multiple of T_F1 (distributed, pulse)."),
        click.option("--client-rate", type=NumberRange(0.1, 10000.0), default=20.0,
                     show_default=True, help="Packets/s of each legitimate client."),
        click.option("--flood-rate", type=NumberRange(1000.0, FLOOD_RATE_MAX), default=None,
                     help="Packets/s of the spoofed flood (spoofed-flood, port-spray), in "
                          "total  [default: 50000; with --spread chosen from T_F2]."),
        click.option("--t-f1", type=click.IntRange(1, 10**9), default=100, show_default=True,
                     help="Per-source limit T_F1, packets/s."),
        click.option("--t-f2", type=click.IntRange(1, 10**9), default=10_000,
                     show_default=True, help="Per-destination limit T_F2, packets/s."),
        click.option("--t-t4", type=NumberRange(0.01, 86400.0), default=5.0,
                     show_default=True,
                     help="T_T4: a merged window longer than this is shortened by r."),
        click.option("--sync-period", type=NumberRange(0.05, 60.0), default=0.5,
                     show_default=True, help="Seconds between sync rounds."),
        click.option("--backend", type=click.Choice(BACKENDS), default="native",
                     show_default=True,
                     help="The proxies' data path (in-process proxies; proxy-crash and "
                          "store-outage run native daemons).  afxdp sends passed frames out "
                          "of the proxy's service-side interface; offload runs the driver-"
                          "mode emulation: the reduced program on the proxy's outside "
                          "interface, the full program on the service's end of its link."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _options(p: dict[str, Any], *, duration: float = 10.0, attack_start: float = 1.0,
             spread: bool = False, bots: int = 40) -> LabOptions:
    store = p["store"]
    if not store.startswith(("memory://", "redis://", "etcd://")):
        raise LabOptionError(f"--store: memory://, redis:// or etcd://, not {store!r}")
    opts = LabOptions(
        proxies=p["proxies"], bots=bots if p["bots"] is None else p["bots"],
        clients=p["clients"],
        duration=p["duration"] or duration,
        attack_start=attack_start if p["attack_start"] is None else p["attack_start"],
        ipv6=p["ipv6"], proto=p["proto"], store=store, ratio=p["ratio"],
        client_rate=p["client_rate"], flood_rate=p["flood_rate"],
        thresholds=Thresholds(t_f1=p["t_f1"], t_f2=p["t_f2"], t_t4=p["t_t4"],
                              period=p["sync_period"]),
        backend=p["backend"], spread=spread,
    )
    check_options(opts)
    return opts


def _live_printer(err: bool = True) -> Live:
    """A live view: one line a second with the last second's rates."""
    state: dict[str, Any] = {}

    def show(name: str, t: float, sent: Any, recv: Any) -> None:
        width = 0.1
        i = int(t / width)
        a = max(0, i - 10)
        prev = state.get(name)
        if prev is None:
            click.echo(f"  {name}:", err=err)
        state[name] = i
        s_a, r_a = int(sent[_A, a:i].sum()), int(recv[_A, a:i].sum())
        s_l, r_l = int(sent[_L, a:i].sum()), int(recv[_L, a:i].sum())
        secs = max(1e-9, (i - a) * width)

        def pct(s: int, r: int) -> str:
            return f"{100.0 * max(0, s - r) / s:5.1f}%" if s else "    -"

        click.echo(f"    t={t:5.1f}s  attack {s_a / secs:8.0f}/s sent {r_a / secs:8.0f}/s "
                   f"delivered ({pct(s_a, r_a)} dropped)   legit {s_l / secs:6.0f}/s sent "
                   f"{r_l / secs:6.0f}/s delivered ({pct(s_l, r_l)} dropped)", err=err)

    return show


def _root() -> None:
    require_root("xpro lab")
    bpffs = Path("/sys/fs/bpf")
    if not os.path.ismount(bpffs):
        raise LabError("bpffs is not mounted on /sys/fs/bpf: mount -t bpf bpf /sys/fs/bpf")


@click.group("lab", context_settings={"help_option_names": ["-h", "--help"]})
def lab() -> None:
    """A proxy mesh under attack on this host, in network namespaces (root).

    The lab builds an "internet" namespace for every bot and client, N proxy
    namespaces that run the filter (native XDP, or another --backend) and
    forward what passes, and one protected service that counts what reaches
    it.  Every scenario prints a table and writes a plot of delivered attack
    and legitimate traffic over time.

    \b
    Examples:
      sudo xpro lab demo
      sudo xpro lab list
      sudo xpro lab run distributed --json
      sudo xpro lab run distributed --sweep
      sudo xpro lab run spoofed-flood --ipv6
      sudo xpro lab run port-spray --json
      sudo xpro lab run v6-rotation --json
      sudo xpro lab down
    """


@lab.command("list")
def list_() -> None:
    """List the scenarios.

    \b
    Example:
      xpro lab list
    """
    width = max(len(n) for n in SCENARIOS)
    for s in SCENARIOS.values():
        extra = "  (daemons + a store server)" if s.server_store else ""
        click.echo(f"{s.name.ljust(width)}  {s.summary}{extra}")


def _stem(out: Path, name: str, backend: str) -> Path:
    """OUT/lab_NAME, or OUT/lab_NAME_BACKEND on another backend than native
    (runs on different backends do not overwrite each other's plots)."""
    return out / (f"lab_{name}" if backend == "native" else f"lab_{name}_{backend}")


def _title(title: str, backend: str) -> str:
    return title if backend == "native" else f"{title} [{backend}]"


def _write(runs: list[Run], out: Path, name: str, title: str, backend: str = "native"
           ) -> list[Path]:
    """The time plot of ``runs``: ``_stem(...)`` .png and .svg."""
    return plot_runs(runs, _stem(out, name, backend), title=_title(title, backend))


@lab.command("run")
@click.argument("name", type=click.Choice(sorted(SCENARIOS)))
@_lab_options
@click.option("--sweep", is_flag=True,
              help="distributed only: run global rates of 0.8, 1.0, 1.2, 1.6, 2.0 x T_F1 "
                   "and plot attack dropped against the ratio.")
@click.option("--spread", is_flag=True,
              help="spoofed-flood only: a flood every proxy alone sees under T_F2 and only "
                   "the mesh over it (its rate is chosen from T_F2 unless --flood-rate is "
                   "given, and printed).")
@click.option("--variant", "variants", multiple=True,
              type=click.Choice(["sync", "no-sync", "hashlimit"]),
              help="distributed only: run just these variants (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("lab-results"), show_default=True,
              help="Directory for plots (lab_NAME.png/.svg) and the log.")
@click.option("--live/--no-live", default=True, show_default=True,
              help="Show a line a second while traffic runs (on stderr).")
def run(name: str, sweep: bool, spread: bool, variants: tuple[str, ...], as_json: bool,
        out: Path, live: bool, **params: Any) -> None:
    """Run scenario NAME and print its figures (root).

    Prints a table (or with --json one JSON object: attack_dropped_pct,
    legit_dropped_pct -- counted from the end of the second sync period after
    the attack starts --, the same over the whole run, time_to_first_drop_s,
    time_to_converge_s; several variants as {"variants": {NAME: ...}}) and
    writes OUT/lab_NAME.png and .svg.  spoofed-flood adds
    victim_clients_dropped_pct, other_clients_dropped_pct and
    new_clients_dropped_pct, and the flood's rates per proxy and in total;
    port-spray adds victim_clients_dropped_pct and other_clients_dropped_pct,
    and the flood's rates on the victim's address and its busiest key;
    v6-rotation the attackers' rates ("rotation").

    \b
    Examples:
      sudo xpro lab run distributed
      sudo xpro lab run distributed --variant sync --duration 6 --json
      sudo xpro lab run distributed --sweep
      sudo xpro lab run spoofed-flood --spread --json
      sudo xpro lab run port-spray --json
      sudo xpro lab run v6-rotation --bots 10 --json
      sudo xpro lab run distributed --variant sync --backend afxdp
      sudo xpro lab run proxy-crash --store redis://
    """
    scenario = SCENARIOS[name]
    if spread and name != "spoofed-flood":
        raise LabOptionError("--spread is for the spoofed-flood scenario")
    opts = default_options(name, _options(params, attack_start=scenario.attack_start,
                                          spread=spread, bots=scenario.bots))
    # the plans refuse options that cannot hold, before anything is built
    if name == "spoofed-flood":
        plan = flood_plan(opts)
        click.echo(f"flood: {plan.total:.0f} packets/s in total, {plan.per_proxy:.0f}/s per "
                   f"proxy; to the victim at most {plan.per_proxy_max:.0f}/s per proxy, "
                   f"{plan.mesh:.0f}/s over the mesh (T_F2 = {plan.t_f2})", err=True)
    elif name == "port-spray":
        spray = spray_plan(opts)
        click.echo(f"flood: {spray.total:.0f} packets/s in total, {spray.per_proxy:.0f}/s "
                   f"per proxy; {spray.address:.0f}/s on the victim's address, at most "
                   f"{spray.key_max:.0f}/s on any (address, port, protocol) key "
                   f"(T_F2 = {spray.t_f2})", err=True)
    elif name == "v6-rotation":
        rot = rotation_plan(opts)
        click.echo(f"rotation: {rot.attackers} attackers at {rot.per_attacker:g} packets/s "
                   f"each ({rot.per_attacker_per_proxy:g}/s per proxy), a new address of "
                   f"its /64 per packet; {rot.victim:.0f}/s on the victim (T_F1 = {rot.t_f1}, "
                   f"T_F2 = {rot.t_f2})", err=True)
    _root()
    if scenario.server_store and opts.backend != "native":
        raise LabOptionError(f"{name} runs xpro daemons with pinned native filters: "
                             f"--backend {opts.backend} is for the in-process scenarios")
    if scenario.server_store and opts.store.startswith("memory://"):
        opts = replace(opts, store="redis://")
    if sweep and name != "distributed":
        raise LabOptionError("--sweep is for the distributed scenario")
    show = _live_printer() if live else None
    out.mkdir(parents=True, exist_ok=True)
    with (quiet_logs(out / "lab.log"), _store_for(opts, scenario.server_store) as opts,
          _built(opts) as the_lab):
        click.echo(f"lab {the_lab.tag}: {opts.proxies} proxies ({opts.backend}), "
                   f"{opts.bots} bots, {opts.clients} clients, {opts.duration:g} s per "
                   "variant", err=True)
        if sweep:
            points = run_sweep(the_lab, opts, show)
            paths = plot_sweep(points, _stem(out, "distributed_sweep", opts.backend),
                               title=_title("distributed with sync: attack dropped vs "
                                            "rate / T_F1", opts.backend))
            runs = [r for _, r in points]
            _write(runs, out, "distributed_sweep_time",
                   "distributed with sync, by global rate / T_F1", opts.backend)
        elif name == "distributed" and variants:
            runs = run_distributed(the_lab, opts, show, variants)
            paths = _write(runs, out, name, f"{name}: {scenario.summary}", opts.backend)
        else:
            runs = scenario.run(the_lab, opts, show)
            paths = _write(runs, out, name, f"{name}: {scenario.summary}", opts.backend)
    if as_json:
        extra: dict[str, Any] = {"plot": [str(p) for p in paths], "backend": opts.backend}
        if sweep:
            extra["sweep"] = {r.name: r.metrics()["attack_dropped_pct"] for r in runs}
        click.echo(to_json(runs, scenario=name, extra=extra))
    else:
        click.echo(format_table(runs, title=f"{name}: {scenario.summary}"))
        for r in runs:
            for note in r.metrics()["notes"]:
                click.echo(f"  note ({r.name}): {note}")
        click.echo(f"plot: {', '.join(str(p) for p in paths)}")


@contextlib.contextmanager
def _store_for(opts: LabOptions, scenario_starts_own: bool = False) -> Iterator[LabOptions]:
    """A bare ``redis://`` or ``etcd://``: start that server for the run, on loopback."""
    bare = opts.store in ("redis://", "etcd://")
    if not bare or scenario_starts_own:
        yield opts
        return
    from xpro.lab.servers import ServerSet

    with ServerSet() as servers:
        url = servers.etcd(1).url if opts.store == "etcd://" else servers.redis().url
        click.echo(f"started {url.split('://')[0]} for the run: {url}", err=True)
        yield replace(opts, store=url)


class _built:
    """Build the lab for ``opts``; remove it at the end (also on Ctrl-C or SIGTERM)."""

    def __init__(self, opts: LabOptions) -> None:
        self.opts = opts
        self.lab: Lab | None = None

    def __enter__(self) -> Lab:
        self.lab = build_lab(self.opts.proxies)
        return self.lab

    def __exit__(self, *exc: object) -> None:
        if self.lab is not None:
            self.lab.close()


@lab.command()
@_lab_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("lab-results"), show_default=True,
              help="Directory for the plot and the log.")
def demo(out: Path, **params: Any) -> None:
    """The paper's claim in under two minutes: distributed, sync on vs off (root).

    Forty bots each send 1.6 x T_F1 in total, split over four proxies, so
    every proxy sees each bot at 0.4 x T_F1: alone, no proxy can tell.  With
    the sync the proxies add up what they see and drop the bots; without it
    the attack passes.  Shows a line a second while it runs, then the table
    side by side and where the plot is.

    \b
    Example:
      sudo xpro lab demo
    """
    _root()
    opts = _options(params, duration=8.0)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with (quiet_logs(out / "lab.log"), _store_for(opts) as opts,
          _built(opts) as the_lab):
        click.echo(
            f"lab {the_lab.tag}: {opts.proxies} proxies ({_DATA_PATH[opts.backend]}), "
            f"{opts.bots} bots at "
            f"{opts.ratio:g} x T_F1 = {opts.ratio * opts.thresholds.t_f1:g} packets/s each "
            f"(each proxy sees {opts.ratio * opts.thresholds.t_f1 / opts.proxies:g}/s), "
            f"{opts.clients} clients at {opts.client_rate:g}/s; attack from "
            f"{opts.attack_start:g} s, {opts.duration:g} s per run")
        runs = run_distributed(the_lab, opts, _live_printer(err=False), ("sync", "no-sync"))
        paths = plot_runs(runs, out / "lab_demo", title="distributed: sync on vs off")
    click.echo("")
    click.echo(format_table(runs, title="distributed: the mesh with sync vs each proxy alone"))
    click.echo(f"plot: {', '.join(str(p) for p in paths)}")
    click.echo(f"({time.monotonic() - start:.0f} s)")


@lab.command()
@_lab_options
def up(**params: Any) -> None:
    """Build the lab with the mesh running and keep it up until Ctrl-C (root).

    Prints the namespaces and interfaces; send your own traffic from the
    ``net`` namespace (for example with ``ip netns exec``).  Ctrl-C or
    ``xpro lab down --stop`` removes everything.

    \b
    Example:
      sudo xpro lab up --proxies 2
    """
    _root()
    opts = _options(params)
    stopping = {"now": False}

    def on_term(signum: int, frame: Any) -> None:
        stopping["now"] = True

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        with quiet_logs(None), _store_for(opts) as opts, _built(opts) as the_lab:
            mesh = XproMesh(the_lab, opts.thresholds, backend=opts.backend,
                            store="" if opts.store.startswith("memory://") else opts.store)
            with mesh:
                a = opts.addressing
                click.echo(json.dumps({
                    "lab": the_lab.tag, "net": the_lab.net_ns, "service": the_lab.svc_ns,
                    "service_address": a.service, "other_service_address": a.other_service,
                    "proxies": [{"name": s.name, "netns": s.netns, "interface": s.outside,
                                 "mac": s.outside_mac, "net_interface": s.net_if}
                                for s in the_lab.proxies],
                }, indent=2))
                click.echo("up; Ctrl-C (or xpro lab down --stop) tears it down", err=True)
                while not stopping["now"]:
                    time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
    click.echo("down", err=True)


@lab.command()
@click.option("--stop", "stop_live", is_flag=True,
              help="Also stop lab runs that are still alive (SIGTERM to their owner).")
def down(stop_live: bool) -> None:
    """Remove what lab runs left behind: namespaces, links, pinned filters (root).

    Runs that are still alive are left alone unless --stop.

    \b
    Examples:
      sudo xpro lab down
      sudo xpro lab down --stop
    """
    require_root("xpro lab down")
    done = lab_down(stop_live=stop_live)
    for line in done:
        click.echo(line)
    alive = live_runs()
    if alive and not stop_live:
        click.echo(f"still running: {', '.join(sorted(alive))} (use --stop)", err=True)
    if not done:
        click.echo("nothing to remove", err=True)


def main() -> None:
    group = XproGroup("xpro", commands={"lab": lab})
    group(prog_name="xpro", args=["lab", *sys.argv[1:]])


if __name__ == "__main__":
    main()
