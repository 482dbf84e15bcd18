"""The ``xpro`` command line.

This module is the one place where an :class:`~xpro.errors.XproError` becomes
a message and an exit code; ``--debug`` (or ``XPRO_DEBUG=1``) shows the
traceback as well.  Every option can also be given as an ``XPRO_*``
environment variable (``XPRO_DEMO_DURATION=3``).
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Sequence
from types import FrameType
from typing import Any, NoReturn

import click

from xpro import __version__
from xpro.errors import XproError
from xpro.netns import require_root

__all__ = ["cli", "main"]


class XproGroup(click.Group):
    """The command group; turns XproError and Ctrl-C into clean exits."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except XproError as exc:
            if ctx.params.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            if ctx.params.get("debug"):
                traceback.print_exc()
            click.echo("interrupted", err=True)
            ctx.exit(130)


_OWNER = os.getpid()


def _sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    # Unwind like Ctrl-C does, so every `finally` (namespaces, XDP links) runs.
    if os.getpid() != _OWNER:
        # A forked child that inherited this handler must die here, never
        # unwind into the parent's code (and clean up the parent's namespaces).
        os._exit(128 + signum)
    raise KeyboardInterrupt


@click.group(cls=XproGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
def cli(debug: bool) -> None:
    """xpro: distributed XDP proxies against DDoS.

    Each proxy drops floods at the driver hook with an XDP program; the
    proxies share their per-flow rate records through a master store.
    """


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON: xpro, Python, kernel, libbpf.")
def version(as_json: bool) -> None:
    """Print the version of xpro (and, with --json, of what it runs on).

    \b
    Examples:
      xpro version
      xpro version --json
    """
    if not as_json:
        click.echo(f"xpro {__version__}")
        return
    import json
    import platform

    info = {"xpro": __version__, "python": platform.python_version(),
            "kernel": platform.release()}
    try:
        from xpro.bpf._ffi import libbpf_version

        info["libbpf"] = libbpf_version()
    except XproError as exc:
        info["libbpf"] = f"unavailable: {exc}"
    click.echo(json.dumps(info, indent=2))


@cli.command()
@click.option(
    "--duration",
    type=click.FloatRange(1.0, 60.0),
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
    type=click.FloatRange(0.0, 30.0),
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
    from xpro.demo import (
        DemoConfig,
        format_result,
        run_demo,
    )

    config = DemoConfig(
        duration=duration,
        flood_rate=flood_rate,
        legit_rate=legit_rate,
        t_f1=t_f1,
        t_t2=t_t2,
        t_f2=t_f2,
        mode=mode,
    )
    global _OWNER  # noqa: PLW0603  (the process that installed the handler)
    _OWNER = os.getpid()
    old = signal.signal(signal.SIGTERM, _sigterm)
    try:
        result = run_demo(config, progress=lambda msg: click.echo(msg, err=True))
    finally:
        signal.signal(signal.SIGTERM, old)
    click.echo(format_result(result))


def _add_builtin_commands() -> None:
    from xpro.commands import COMMANDS
    from xpro.doctor import doctor_command
    from xpro.lab.cli import lab

    for cmd in [*COMMANDS, doctor_command, lab]:
        cli.add_command(cmd)


_add_builtin_commands()


def main(argv: Sequence[str] | None = None) -> None:
    """The console script ``xpro``."""
    from xpro.plugins import add_cli_commands

    add_cli_commands(cli)  # plugins' commands (xpro_add_cli_commands)
    cli.main(
        args=list(argv) if argv is not None else sys.argv[1:],
        prog_name="xpro",
        auto_envvar_prefix="XPRO",
    )
