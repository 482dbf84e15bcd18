"""``xpro demo``: the single-proxy filter demo (the lab's mesh demo is ``xpro lab demo``)."""

from __future__ import annotations

import click

from xpro.cli._base import NumberRange, sigterm_unwinds
from xpro.datapath.host import require_root
from xpro.lab.demo import DemoConfig, format_result, run_demo

__all__ = ["demo"]


@click.command()
@click.option(
    "--duration",
    type=NumberRange(1.0, 60.0),
    default=6.0,
    show_default=True,
    help="Seconds of traffic.",
)
@click.option(
    "--flood-rate",
    type=click.IntRange(1, 20000),
    default=5000,
    show_default=True,
    help="Packets/s of the flooding source.",
)
@click.option(
    "--legit-rate",
    type=click.IntRange(1, 20000),
    default=50,
    show_default=True,
    help="Packets/s of the legitimate source.",
)
@click.option(
    "--t-f1",
    type=click.IntRange(1, 2**32 - 1),
    default=100,
    show_default=True,
    help="Per-source limit, packets/s.",
)
@click.option(
    "--t-t2",
    type=NumberRange(0.0, 30.0),
    default=1.0,
    show_default=True,
    help="Seconds a source is watched before its rate is judged.",
)
@click.option(
    "--t-f2",
    type=click.IntRange(1, 2**32 - 1),
    default=1_000_000,
    show_default=True,
    help="Per-destination limit, packets/s.",
)
@click.option(
    "--mode",
    type=click.Choice(["native", "generic"]),
    default="native",
    show_default=True,
    help="XDP attach mode.",
)
def demo(
    *,
    duration: float,
    flood_rate: int,
    legit_rate: int,
    t_f1: int,
    t_t2: float,
    t_f2: int,
    mode: str,
) -> None:
    """Show the filter drop a flood and pass a legitimate stream (root).

    Builds two network namespaces joined by a veth pair, attaches the XDP
    filter to the proxy's end, sends a flood from one source and a
    legitimate stream from another, and prints per source what was sent,
    passed and dropped, and the verdict counters.  Everything it creates is
    removed at the end, also on Ctrl-C.

    \b
    Examples:
      sudo xpro demo
      sudo xpro demo --mode generic --flood-rate 10000 --duration 3
    """
    if legit_rate + flood_rate > 20000:
        raise click.BadParameter(
            "flood and legitimate rates together must stay at or under 20000 packets/s",
            param_hint="'--flood-rate' / '--legit-rate'",
        )
    require_root("xpro demo")
    config = DemoConfig(
        duration=duration,
        flood_rate=flood_rate,
        legit_rate=legit_rate,
        t_f1=t_f1,
        t_t2=t_t2,
        t_f2=t_f2,
        mode=mode,
    )
    with sigterm_unwinds():
        result = run_demo(config, progress=lambda msg: click.echo(msg, err=True))
    click.echo(format_result(result))
