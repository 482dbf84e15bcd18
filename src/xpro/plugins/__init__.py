"""The process's plugins: the host, and the registries its hooks fill.

Backends, stores and destination parsers are found here by name, never by
import (docs/plugins.rst).  :func:`plugins` loads the ``xpro`` entry points
once per process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from xpro.config.kinds import mask_url, split_url
from xpro.core.text import printable
from xpro.errors import ConfigError
from xpro.hooks.registry import Registry
from xpro.plugins.host import ENTRY_POINT_GROUP, PluginHost, PluginInfo

if TYPE_CHECKING:
    import click

    from xpro.stores.base import Store

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginHost",
    "PluginInfo",
    "add_cli_commands",
    "backends",
    "destination_parsers",
    "open_store",
    "plugins",
    "stores",
]


@functools.cache
def plugins() -> PluginHost:
    """The process's single :class:`PluginHost`, loading the ``xpro`` entry points once."""
    return PluginHost()


def stores() -> Registry[Any]:
    """Master-store classes by URL scheme (of the process's host)."""
    return plugins().stores()


def backends() -> Registry[Any]:
    """Data-path backends by name (of the process's host)."""
    return plugins().backends()


def destination_parsers() -> Registry[Callable[[bytes], Any]]:
    """Destination parsers by name (of the process's host)."""
    return plugins().destination_parsers()


def add_cli_commands(cli: click.Group) -> None:
    """Let every plugin add its commands to ``cli`` (idempotent)."""
    plugins().add_cli_commands(cli)


def open_store(url: str, *, mesh: str = "xpro", options: Mapping[str, Any] | None = None
               ) -> Store:
    """The store for ``url``, found by its scheme among the registered plugins."""
    try:
        scheme = split_url(url).scheme
    except ValueError:
        raise ConfigError(f"store URL {printable(mask_url(url), 200)!r} has no scheme: use "
                          "memory://, redis://HOST:PORT, redis+cluster://HOST:PORT or "
                          "etcd://HOST:PORT") from None
    cls = stores().get(scheme)
    store: Store = cls.from_url(url, mesh=mesh, options=options)
    return store
