"""The built-in ``xpro plugins`` command (entry point ``plugins_cli``)."""

from __future__ import annotations

import json

import click

from xpro import plugins as process
from xpro.core.text import printable
from xpro.errors import PluginError
from xpro.hooks import hookimpl

__all__ = ["xpro_add_cli_commands"]


@hookimpl
def xpro_add_cli_commands(cli: click.Group) -> None:
    @cli.command(name="plugins")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
    @click.option("--check", is_flag=True,
                  help="Exit with status 1 if a plugin failed to load or raised.")
    def plugins_command(as_json: bool, check: bool) -> None:
        """List the installed plugins, their hooks and their failures.

        \b
        Examples:
          xpro plugins
          xpro plugins --json
          xpro plugins --check   # in a health check
        """
        host = process.plugins()
        # Fill the registries once, so a plugin that breaks there shows up too.
        for collect in (host.stores, host.backends, host.destination_parsers):
            try:
                collect()
            except PluginError as exc:
                click.echo(f"error: {exc}", err=True)
        infos = host.infos()
        for info in infos:
            if as_json:
                click.echo(json.dumps(info.to_dict(), sort_keys=True))
                continue
            state = "FAILED" if info.error else "ok"
            click.echo(f"{info.name:<20} {state:<6} {info.dist or '-':<28} "
                       f"{','.join(h.removeprefix('xpro_') for h in info.hooks) or '-'}")
            if info.error:
                click.echo(f"    {printable(info.error)}")
        if check and any(i.error for i in infos):
            click.get_current_context().exit(1)
