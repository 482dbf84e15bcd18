"""The plugin manager: built-ins and third parties, through one entry-point group."""

from __future__ import annotations

import functools
import logging
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

import pluggy

from xpro import hookspecs
from xpro.errors import PluginError

log = logging.getLogger(__name__)

T = TypeVar("T")

ENTRY_POINT_GROUP = "xpro"


class Registry(Generic[T]):
    """Named implementations of one kind (stores by scheme, backends by name).

    Rejects duplicate names, so two plugins cannot silently shadow each other.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, type[T]] = {}
        self._owners: dict[str, str] = {}
        self.current_plugin = "?"

    def add(self, name: str, cls: type[T]) -> None:
        if name in self._items:
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by {self._owners[name]} and by "
                f"{self.current_plugin}; uninstall one of them"
            )
        self._items[name] = cls
        self._owners[name] = self.current_plugin

    def get(self, name: str) -> type[T]:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise PluginError(f"no {self.kind} named {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._items)


_failed: dict[str, str] = {}


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    """The single plugin manager, loading the ``xpro`` entry points once.

    A plugin that fails to import is reported (``failed_plugins()``) and
    skipped; it never takes xpro down.
    """
    pm = pluggy.PluginManager("xpro")
    pm.add_hookspecs(hookspecs)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not take xpro down
            _failed[ep.name] = f"{type(exc).__name__}: {exc}"
            log.error("plugin %s failed to load: %s", ep.name, _failed[ep.name])
            continue
        if pm.get_plugin(ep.name) is None and not pm.is_registered(plugin):
            pm.register(plugin, name=ep.name)
    return pm


def failed_plugins() -> dict[str, str]:
    plugin_manager()
    return dict(_failed)


def _collect(kind: str, hook: str) -> Registry[Any]:
    pm = plugin_manager()
    reg: Registry[Any] = Registry(kind)
    for impl in getattr(pm.hook, hook).get_hookimpls():
        reg.current_plugin = impl.plugin_name
        try:
            impl.function(registry=reg)
        except PluginError:
            raise
        except Exception as exc:
            _failed[impl.plugin_name] = f"{hook}: {type(exc).__name__}: {exc}"
            log.error("plugin %s failed in %s: %s", impl.plugin_name, hook, exc)
    return reg


def stores() -> Registry[Any]:
    """Master-store classes by URL scheme."""
    return _collect("store", "xpro_add_stores")


def backends() -> Registry[Any]:
    """Data-path backends by name."""
    return _collect("backend", "xpro_add_backends")
