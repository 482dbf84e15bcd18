"""What every command of the ``xpro`` CLI shares: the group, and unwinding on SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import traceback
from collections.abc import Iterator
from types import FrameType
from typing import Any, NoReturn

import click

from xpro.config.kinds import redact
from xpro.errors import XproError

__all__ = ["XproGroup", "sigterm_unwinds"]


class XproGroup(click.Group):
    """The command group; turns XproError and Ctrl-C into clean exits."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except XproError as exc:
            if ctx.params.get("debug"):
                click.echo(redact(traceback.format_exc()), err=True, nl=False)
            click.echo(redact(f"error: {exc}"), err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            if ctx.params.get("debug"):
                traceback.print_exc()
            click.echo("interrupted", err=True)
            ctx.exit(130)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While the block runs, SIGTERM unwinds like Ctrl-C (KeyboardInterrupt), so
    every ``finally`` (namespaces, XDP links, servers) runs; a forked child that
    inherited the handler exits at once instead of unwinding into the parent's code."""
    owner = os.getpid()

    def on_term(signum: int, frame: FrameType | None) -> NoReturn:
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
