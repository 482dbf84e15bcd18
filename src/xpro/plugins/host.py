"""The plugin host: built-ins and third parties, through one entry-point group.

Every plugin -- xpro's own stores, backends, parsers and alert log as much as a
third-party package -- is a module named by an entry point in the ``xpro``
group::

    [project.entry-points.xpro]
    my_sink = "my_package.xpro_plugin"

:func:`xpro.plugins.plugins` loads them once.  A plugin that fails to import,
or whose hook raises, is recorded by name (:meth:`PluginHost.failed`), logged,
and skipped: it never takes xpro down.  The notification hooks are called
through the host's typed methods (:meth:`PluginHost.alert`,
:meth:`~PluginHost.sync_completed`, :meth:`~PluginHost.startup`,
:meth:`~PluginHost.shutdown`), which call each implementation separately
(pluggy itself would stop at the first exception).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

import pluggy

from xpro.errors import PluginError
from xpro.hooks import specs as hookspecs
from xpro.hooks.registry import Registry

if TYPE_CHECKING:
    import click

    from xpro.core.alert import Alert
    from xpro.core.status import SyncStats

__all__ = ["ENTRY_POINT_GROUP", "HOOKS", "PluginHost", "PluginInfo"]

log = logging.getLogger(__name__)

#: The entry-point group every plugin registers in.
ENTRY_POINT_GROUP = "xpro"

#: The hooks a plugin may implement (the ``xpro_*`` functions of :mod:`xpro.hooks.specs`).
HOOKS: tuple[str, ...] = tuple(n for n in hookspecs.__all__ if n.startswith("xpro_"))


@dataclass(frozen=True)
class PluginInfo:
    """One plugin as ``xpro plugins`` shows it."""

    name: str
    module: str
    dist: str = ""  # the distribution that declared the entry point, "name version"
    hooks: tuple[str, ...] = ()
    error: str = ""  # the last failure (loading or in a hook), "" if none

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "module": self.module, "dist": self.dist,
                "hooks": list(self.hooks), "error": self.error}


class PluginHost:
    """A plugin manager with per-plugin error isolation.

    The process uses one (:func:`plugins`); tests build their own with
    ``load_entry_points=False`` and :meth:`register` test plugins directly.
    """

    def __init__(self, *, load_entry_points: bool = True) -> None:
        #: The pluggy manager, with the specs of :mod:`xpro.hooks.specs`.
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self._failed: dict[str, str] = {}
        self._dists: dict[str, str] = {}
        self._lock = threading.Lock()
        self._cli_done: weakref.WeakSet[click.Group] = weakref.WeakSet()
        if load_entry_points:
            for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
                self._load(ep)

    # -- loading ---------------------------------------------------------------

    def _load(self, ep: EntryPoint) -> None:
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else ""
        if self.pm.has_plugin(ep.name):
            self.fail(ep.name, f"the name is also used by {self._dists.get(ep.name) or '?'}; "
                               f"{dist or ep.value} was not loaded")
            return
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not take xpro down
            self.fail(ep.name, f"failed to load {ep.value}: {type(exc).__name__}: {exc}")
            return
        self._dists[ep.name] = dist
        self.register(plugin, ep.name)

    def register(self, plugin: object, name: str) -> bool:
        """Register a plugin object (a module, a class instance) under ``name``.

        Returns ``False`` (and records the failure) if pluggy rejects it: a
        hook with unknown parameters, a name or object already registered.
        An unknown ``xpro_*`` hook (a typo) is recorded but the plugin stays.
        """
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:
            self.fail(name, f"cannot register: {type(exc).__name__}: {exc}")
            return False
        unknown = sorted(c.name for c in self.pm.get_hookcallers(plugin) or () if c.spec is None)
        if unknown:
            self.fail(name, f"implements unknown hook(s) {', '.join(unknown)} "
                            f"(known: {', '.join(HOOKS)})")
        return True

    def unregister(self, name: str) -> None:
        """Remove a plugin (and its recorded failure)."""
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin, name=name)
        with self._lock:
            self._failed.pop(name, None)

    # -- failures --------------------------------------------------------------

    def fail(self, name: str, why: str) -> None:
        """Record (and log) that plugin ``name`` failed."""
        with self._lock:
            self._failed[name] = why
        log.error("plugin %s: %s", name, why)

    def failed(self) -> dict[str, str]:
        """Plugin name -> what went wrong, for every plugin that failed so far."""
        with self._lock:
            return dict(self._failed)

    # -- calling ---------------------------------------------------------------

    def _impls(self, hook: str) -> list[pluggy.HookImpl]:
        # pluggy calls the last registered first; keep its order.
        return list(reversed(getattr(self.pm.hook, hook).get_hookimpls()))

    def call_each(self, hook: str, **kwargs: Any) -> list[str]:
        """Call every implementation of ``hook`` separately; return the plugins that raised.

        Each implementation gets the arguments it names.  An exception is
        recorded against its plugin and logged; the other plugins are still
        called.
        """
        broken = []
        for impl in self._impls(hook):
            try:
                impl.function(*(kwargs[a] for a in impl.argnames))
            except Exception as exc:
                self.fail(impl.plugin_name, f"{hook}: {type(exc).__name__}: {exc}")
                log.debug("plugin %s: %s traceback", impl.plugin_name, hook, exc_info=True)
                broken.append(impl.plugin_name)
        return broken

    def collect(self, kind: str, hook: str) -> Registry[Any]:
        """A fresh registry filled by every implementation of a ``xpro_add_*`` hook.

        A duplicate name raises :class:`~xpro.errors.PluginError` (two plugins
        claim the same thing: the operator must choose); any other exception
        in a plugin is recorded and that plugin skipped.
        """
        reg: Registry[Any] = Registry(kind)
        for impl in self._impls(hook):
            reg.current_plugin = impl.plugin_name
            try:
                impl.function(registry=reg)
            except PluginError:
                raise
            except Exception as exc:
                self.fail(impl.plugin_name, f"{hook}: {type(exc).__name__}: {exc}")
        return reg

    def stores(self) -> Registry[Any]:
        """Master-store classes by URL scheme."""
        return self.collect("store", "xpro_add_stores")

    def backends(self) -> Registry[Any]:
        """Data-path backends by name."""
        return self.collect("backend", "xpro_add_backends")

    def destination_parsers(self) -> Registry[Callable[[bytes], Any]]:
        """Destination parsers by name: ``parser(payload) -> destination | None``."""
        return self.collect("destination parser", "xpro_add_destination_parsers")

    def add_cli_commands(self, cli: click.Group) -> None:
        """Let every plugin add its commands to ``cli`` (once per group).

        A plugin that raises, or adds a command whose name is taken, is
        recorded; the commands that were there before are kept.
        """
        if cli in self._cli_done:
            return
        self._cli_done.add(cli)
        for impl in self._impls("xpro_add_cli_commands"):
            before = dict(cli.commands)
            try:
                impl.function(cli=cli)
            except Exception as exc:
                self.fail(impl.plugin_name,
                          f"xpro_add_cli_commands: {type(exc).__name__}: {exc}")
            clashes = sorted(n for n, cmd in before.items() if cli.commands.get(n) is not cmd)
            for n in clashes:
                cli.commands[n] = before[n]
            if clashes:
                self.fail(impl.plugin_name, f"command name(s) already taken: "
                                            f"{', '.join(clashes)}; not added")

    def infos(self) -> list[PluginInfo]:
        """Every plugin, loaded or failed, sorted by name."""
        failed = self.failed()
        out: dict[str, PluginInfo] = {}
        for name, plugin in self.pm.list_name_plugin():
            if name is None:
                continue
            hooks = tuple(sorted(c.name for c in self.pm.get_hookcallers(plugin) or ()))
            out[name] = PluginInfo(name, getattr(plugin, "__name__", type(plugin).__name__),
                                   self._dists.get(name, ""), hooks, failed.get(name, ""))
        for name, why in failed.items():
            out.setdefault(name, PluginInfo(name, "", "", (), why))
        return [out[n] for n in sorted(out)]


# -- the process's plugin manager -----------------------------------------------

    # -- the notification hooks, typed ---------------------------------------------

    def alert(self, alert: Alert) -> list[str]:
        """Hand ``alert`` to every sink; return the names of the sinks that raised."""
        return self.call_each("xpro_alert", alert=alert)

    def sync_completed(self, stats: SyncStats, proxy: str) -> list[str]:
        """Tell every plugin a sync round completed; return the plugins that raised."""
        return self.call_each("xpro_sync_completed", stats=stats, proxy=proxy)

    def startup(self, proxy: str) -> list[str]:
        """Tell every plugin the proxy started; return the plugins that raised."""
        return self.call_each("xpro_startup", proxy=proxy)

    def shutdown(self, proxy: str) -> list[str]:
        """Tell every plugin the proxy is stopping; return the plugins that raised."""
        return self.call_each("xpro_shutdown", proxy=proxy)
