"""Every xpro hook, in one place.

Plugins implement these with ``@xpro.hooks.specs.hookimpl`` (a function of the
same name, taking any subset of the parameters, by name) and register through
the ``xpro`` entry-point group; xpro's own backends, stores and alert sinks
register exactly the same way (docs/plugins.rst).  New parameters are only ever
appended, so a plugin written against an older xpro keeps working.

Registration hooks (``xpro_add_*``) are called each time xpro builds its
registries; notification hooks (``xpro_alert``, ``xpro_sync_completed``,
``xpro_startup``, ``xpro_shutdown``) are called by :mod:`xpro.plugins` one
plugin at a time, so that a plugin that raises is reported by name and the
others are still called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from xpro.core.alert import Alert
    from xpro.core.status import SyncStats
    from xpro.hooks.registry import Registry

__all__ = [
    "hookimpl",
    "hookspec",
    "xpro_add_backends",
    "xpro_add_cli_commands",
    "xpro_add_destination_parsers",
    "xpro_add_stores",
    "xpro_alert",
    "xpro_shutdown",
    "xpro_startup",
    "xpro_sync_completed",
]

#: Marks the hook specifications below (xpro's own use).
hookspec = pluggy.HookspecMarker("xpro")
#: Marks a plugin's hook implementations: ``@hookimpl def xpro_alert(alert): ...``.
hookimpl = pluggy.HookimplMarker("xpro")


@hookspec
def xpro_add_stores(registry: Registry[Any]) -> None:
    """Register master-store classes by URL scheme.

    :param registry: call ``registry.add(scheme, cls)`` for each scheme; a
        scheme that another plugin already registered is an error.
    """


@hookspec
def xpro_add_backends(registry: Registry[Any]) -> None:
    """Register data-path backends by name (``native``, ``generic``, ...).

    :param registry: call ``registry.add(name, cls)`` for each backend.
    """


@hookspec
def xpro_add_destination_parsers(registry: Registry[Any]) -> None:
    """Register parsers that find a packet's real destination in its payload.

    Used by the AF_XDP path for application-level proxies (a CoAP
    ``Proxy-Uri`` option, an HTTP ``Host`` header): each parser is a callable
    ``parser(payload: bytes) -> destination | None`` returning ``None`` when
    the payload is not its protocol (:mod:`xpro.parsers` lists the attributes
    a parser may carry: ``udp_ports``, ``canonical``, ``names_option``).

    :param registry: call ``registry.add(name, parser)`` for each parser.
    """


@hookspec
def xpro_alert(alert: Alert) -> None:
    """Receive an alert: a store down or back, an overloaded source or destination, the workload.

    Called on a thread of this plugin, from a bounded queue, never on the
    sync or event threads; a call that takes longer than the host's limit
    (2 s) is reported and skipped past, and the plugin gets no further call
    until it returns (docs/operations.rst, "Isolation").

    :param alert: what happened, where and when (:class:`xpro.core.alert.Alert`).
    """


@hookspec
def xpro_sync_completed(stats: SyncStats, proxy: str) -> None:
    """Observe a completed sync round (metrics, logging, capacity planning).

    Queued and called as :func:`xpro_alert` is: off the sync thread, with a
    time limit.

    :param stats: what the round did (:class:`xpro.sync.SyncStats`).
    :param proxy: the name of the proxy that ran the round.
    """


@hookspec
def xpro_add_cli_commands(cli: click.Group) -> None:
    """Add commands (or groups) to the ``xpro`` command line.

    :param cli: the top-level ``xpro`` group; call ``cli.add_command(cmd)``.
        A name that is already taken is reported and the command skipped.
    """


@hookspec
def xpro_startup(proxy: str) -> None:
    """The proxy daemon has started filtering (open connections, start threads here).

    :param proxy: the name of the proxy that started.
    """


@hookspec
def xpro_shutdown(proxy: str) -> None:
    """The proxy daemon is stopping (flush and close what ``xpro_startup`` opened).

    :param proxy: the name of the proxy that is stopping.
    """
