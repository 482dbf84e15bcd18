"""The plugin manager: built-ins and third parties, through one entry-point group.

Every plugin -- xpro's own stores and alert log as much as a third-party
package -- is a module named by an entry point in the ``xpro`` group::

    [project.entry-points.xpro]
    my_sink = "my_package.xpro_plugin"

:func:`plugin_manager` loads them once.  A plugin that fails to import, or
whose hook raises, is recorded by name (:func:`failed_plugins`), logged, and
skipped: it never takes xpro down.  The notification hooks are called through
:func:`call_alert`, :func:`call_sync_completed`, :func:`call_startup` and
:func:`call_shutdown`, which call each implementation separately (pluggy
itself would stop at the first exception).  This module is also a plugin
(entry point ``plugins_cli``): it adds ``xpro plugins``.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import pluggy

from xpro import hookspecs
from xpro.errors import PluginError
from xpro.hookspecs import hookimpl

if TYPE_CHECKING:
    import click

    from xpro.alerts import Alert, AlertKind
    from xpro.sync import SyncStats

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginHost",
    "PluginInfo",
    "Registry",
    "add_cli_commands",
    "backends",
    "call_alert",
    "call_shutdown",
    "call_startup",
    "call_sync_completed",
    "destination_parsers",
    "failed_plugins",
    "plugin_manager",
    "plugins",
    "stores",
    "sync_callbacks",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The entry-point group every plugin registers in.
ENTRY_POINT_GROUP = "xpro"

#: The hooks a plugin may implement (the ``xpro_*`` functions of :mod:`xpro.hookspecs`).
HOOKS: tuple[str, ...] = tuple(n for n in hookspecs.__all__ if n.startswith("xpro_"))


class Registry(Generic[T]):
    """Named implementations of one kind (stores by scheme, backends by name, parsers).

    Rejects duplicate names, so two plugins cannot silently shadow each other.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}
        #: The plugin whose hook is registering now (for error messages).
        self.current_plugin = "?"

    def add(self, name: str, item: T) -> None:
        """Register ``item`` as ``name``; :class:`~xpro.errors.PluginError` if taken."""
        if name in self._items:
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by {self._owners[name]} and by "
                f"{self.current_plugin}; uninstall one of them"
            )
        self._items[name] = item
        self._owners[name] = self.current_plugin

    def get(self, name: str) -> T:
        """The item registered as ``name``; :class:`~xpro.errors.PluginError` if none."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise PluginError(f"no {self.kind} named {name!r} (known: {known})") from None

    def owner(self, name: str) -> str:
        """The plugin that registered ``name``."""
        self.get(name)
        return self._owners[name]

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)


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
        #: The pluggy manager, with the specs of :mod:`xpro.hookspecs`.
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


@functools.cache
def plugins() -> PluginHost:
    """The process's single :class:`PluginHost`, loading the ``xpro`` entry points once."""
    return PluginHost()


def plugin_manager() -> pluggy.PluginManager:
    """The single pluggy manager (of :func:`plugins`)."""
    return plugins().pm


def failed_plugins() -> dict[str, str]:
    """Plugin name -> what went wrong, for every plugin that failed to load or raised."""
    return plugins().failed()


def stores() -> Registry[Any]:
    """Master-store classes by URL scheme."""
    return plugins().collect("store", "xpro_add_stores")


def backends() -> Registry[Any]:
    """Data-path backends by name."""
    return plugins().collect("backend", "xpro_add_backends")


def destination_parsers() -> Registry[Callable[[bytes], Any]]:
    """Destination parsers by name: ``parser(payload) -> destination | None``."""
    return plugins().collect("destination parser", "xpro_add_destination_parsers")


def call_alert(alert: Alert) -> list[str]:
    """Hand ``alert`` to every sink; return the names of the sinks that raised."""
    return plugins().call_each("xpro_alert", alert=alert)


def call_sync_completed(stats: SyncStats, proxy: str) -> list[str]:
    """Tell every plugin a sync round completed; return the plugins that raised."""
    return plugins().call_each("xpro_sync_completed", stats=stats, proxy=proxy)


def call_startup(proxy: str) -> list[str]:
    """Tell every plugin the proxy started; return the plugins that raised."""
    return plugins().call_each("xpro_startup", proxy=proxy)


def call_shutdown(proxy: str) -> list[str]:
    """Tell every plugin the proxy is stopping; return the plugins that raised."""
    return plugins().call_each("xpro_shutdown", proxy=proxy)


def add_cli_commands(cli: click.Group) -> None:
    """Let every plugin add its commands to ``cli`` (idempotent)."""
    plugins().add_cli_commands(cli)


def sync_callbacks(proxy: str) -> tuple[Callable[[str, str], None],
                                        Callable[[SyncStats], None]]:
    """``(on_alert, on_round)`` for :class:`xpro.sync.SyncLoop`, wired to the hooks.

    ``on_alert(kind, message)`` becomes an :class:`~xpro.alerts.Alert` for
    ``xpro_alert``; ``on_round(stats)`` calls ``xpro_sync_completed``.
    """
    from xpro.alerts import Alert

    def on_alert(kind: str, message: str) -> None:
        call_alert(Alert.make(cast("AlertKind", kind), message, proxy))

    def on_round(stats: SyncStats) -> None:
        call_sync_completed(stats, proxy)

    return on_alert, on_round


# -- the built-in `xpro plugins` command ----------------------------------------


@hookimpl
def xpro_add_cli_commands(cli: click.Group) -> None:
    import click

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
        import json

        host = plugins()
        # Fill the registries once, so a plugin that breaks there shows up too.
        for collect in (stores, backends, destination_parsers):
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
                click.echo(f"    {info.error}")
        if check and any(i.error for i in infos):
            click.get_current_context().exit(1)
