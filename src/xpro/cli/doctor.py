"""``xpro doctor``: is this host ready to run a proxy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from xpro.config import load_config
from xpro.doctor import exit_code, format_findings, run_checks, to_json
from xpro.errors import XproError

__all__ = ["doctor_command"]


@contextlib.contextmanager
def _user_errors(ctx: click.Context) -> Iterator[None]:
    """A user error (bad config, missing file) is a message and exit code 2, no traceback."""
    try:
        yield
    except XproError as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(exc.exit_code)


@click.command("doctor")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              metavar="FILE", help="The config file (default: $XPRO_CONFIG, else none).")
@click.option("--interface", "interfaces", multiple=True, metavar="IF",
              help="Interface to check (repeatable; default: [proxy] interfaces).")
@click.option("--netns", default=None, metavar="NS",
              help="Network namespace of the interfaces (a name or a path).")
@click.option("--store", "store_url", default=None, metavar="URL",
              help="Store URL to ping (default: [store] url).")
@click.option("--attach-probe", is_flag=True,
              help="Test native XDP by attaching a trivial program for an instant (may reset "
              "a physical NIC's link) instead of reading the driver's xdp-features.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.pass_context
def doctor_command(ctx: click.Context, *, config_path: str | None,
                   interfaces: tuple[str, ...], netns: str | None, store_url: str | None,
                   attach_probe: bool, as_json: bool) -> None:
    """Check that this host is ready to run an xpro proxy.

    Probes the kernel's BPF features, loads the packaged program, checks
    bpffs, each interface (native XDP, MTU, LRO, a program already
    attached), the store, clock synchronisation and the memory the
    configured tables take.  Every finding that is not ok says what to do.

    Exit status: 0 when no check failed (warnings alone give 0), 1 when one
    did, 2 for a usage or configuration error.

    \b
    Examples:
      sudo xpro doctor --config /etc/xpro/xpro.toml
      sudo xpro doctor --interface eth0 --store redis://10.0.0.5:6379
      sudo xpro doctor --json | jq '.findings[] | select(.status != "ok")'
    """
    with _user_errors(ctx):
        overrides = {"store.url": store_url} if store_url else {}
        config = load_config(config_path, overrides=overrides)
        findings = run_checks(config, interfaces=list(interfaces) or None, netns=netns,
                              attach_probe=attach_probe)
    click.echo(to_json(findings) if as_json else format_findings(findings))
    ctx.exit(exit_code(findings))
