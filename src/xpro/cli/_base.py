"""What every command of the ``xpro`` CLI shares: the group, and unwinding on SIGTERM."""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import signal
import traceback
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import Any, NoReturn

import click

from xpro.core.text import terminal_safe
from xpro.errors import XproError

__all__ = ["XproGroup", "sigterm_unwinds"]


class XproGroup(click.Group):
    """The command group; turns XproError and Ctrl-C into clean exits.

    ``lazy`` maps a command's name to ``"module:attribute"``: the module is
    imported when the command is looked up, not when ``xpro`` starts, so
    ``xpro status`` does not pay for the lab's or the data paths' imports
    (docs/cli.rst, "Start-up").  A lazy name is taken: a command added under
    it (by a plugin) never replaces it.
    """

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy.get(cmd_name)
        if target is None:
            return self.commands.get(cmd_name)
        module, _, attr = target.partition(":")
        cmd = getattr(importlib.import_module(module), attr)
        if not isinstance(cmd, click.Command):
            raise TypeError(f"{target} is not a click command")
        return cmd

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        no_such: type[click.UsageError] | None = getattr(click, "NoSuchCommand", None)
        if no_such is None:  # click < 8.4 suggests nothing
            return super().resolve_command(ctx, args)
        try:
            return super().resolve_command(ctx, args)
        except no_such as exc:
            # click suggests from the loaded commands only: offer every name
            raise no_such(exc.command_name,  # type: ignore[attr-defined,call-arg]
                          possibilities=self.list_commands(ctx), ctx=ctx) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except XproError as exc:
            from xpro.config.kinds import redact

            if ctx.params.get("debug"):
                click.echo(redact(traceback.format_exc()), err=True, nl=False)
            click.echo(terminal_safe(redact(f"error: {exc}")), err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            if ctx.params.get("debug"):
                traceback.print_exc()
            click.echo("interrupted", err=True)
            ctx.exit(130)


class NumberRange(click.FloatRange):
    """A float in ``[min, max]``: click's range with NaN refused (it compares
    false with both bounds, so ``FloatRange`` lets it through)."""

    name = "float range"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        out = super().convert(value, param, ctx)
        if isinstance(out, float) and math.isnan(out):
            self.fail(f"{value!r} is not a number in the range {self._describe_range()}.",
                      param, ctx)
        return out


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
