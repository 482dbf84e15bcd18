"""The ``xpro`` command line.

This module is the one place where an :class:`~xpro.errors.XproError` becomes
a message and an exit code; ``--debug`` (or ``XPRO_DEBUG=1``) shows the
traceback as well.  Every option can also be given as an ``XPRO_*``
environment variable (``XPRO_DEMO_DURATION=3``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Sequence

# Before numpy loads: its BLAS would start a thread pool at import, and those
# threads would keep every capability `xpro run` drops (capabilities belong to
# a thread; only the threads started after the drop inherit it).  xpro does no
# BLAS work.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click

from xpro import __version__
from xpro.cli._base import XproGroup
from xpro.errors import XproError

__all__ = ["BUILTIN_COMMANDS", "cli", "main", "version"]


#: The built-in commands, imported when they are looked up (XproGroup).
BUILTIN_COMMANDS = {
    **{name: f"xpro.cli.operator:{name}"
       for name in ("run", "status", "top", "flows", "explain", "detach", "config")},
    "store": "xpro.cli.store:store",
    "doctor": "xpro.cli.doctor:doctor_command",
    "demo": "xpro.cli.demo:demo",
    "lab": "xpro.cli.lab:lab",
    "version": "xpro.cli:version",
}


@click.group(cls=XproGroup, lazy=BUILTIN_COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
def cli(debug: bool) -> None:
    """xpro: distributed XDP proxies against DDoS.

    Each proxy drops floods at the driver hook with an XDP program; the
    proxies share their per-flow rate records through a master store.
    """


@click.command()
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


def main(argv: Sequence[str] | None = None) -> None:
    """The console script ``xpro``."""
    args = list(argv) if argv is not None else sys.argv[1:]
    at = next((i for i, a in enumerate(args) if not a.startswith("-")), len(args))
    name = args[at] if at < len(args) else None
    if (name is None or name not in {*cli.commands, *BUILTIN_COMMANDS} or name == "run"
            or {"-h", "--help"} & set(args[:at])):
        # Plugins' commands (xpro_add_cli_commands).  Loading the plugins
        # imports every data path and store, so the other built-in commands
        # skip it; the top-level help lists them, and `run` loads the
        # plugins anyway (its status reports a plugin whose hook failed).
        from xpro.plugins import add_cli_commands

        add_cli_commands(cli)
    try:
        cli.main(
            args=args,
            prog_name="xpro",
            auto_envvar_prefix="XPRO",
        )
    except OSError as exc:
        # Writing the output failed (a full disk, a closed terminal; a closed
        # pipe is click's and silent): one line where it can still go.
        if exc.errno not in (errno.ENOSPC, errno.EIO, errno.EDQUOT):
            raise
        with contextlib.suppress(OSError):
            sys.stderr.write(f"error: cannot write the output: {exc.strerror}\n")
        sys.exit(1)
