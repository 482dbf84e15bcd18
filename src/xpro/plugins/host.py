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

Nor may a plugin stall xpro.  :meth:`~PluginHost.alert` and
:meth:`~PluginHost.sync_completed` only put the notification on a bounded
queue (:data:`QUEUE_SIZE`; when it is full the notification is dropped and
counted) and return: a worker thread of the host delivers it.  Every call of
a plugin's hook runs on a thread of that plugin and is given
:data:`HOOK_TIMEOUT` seconds; a call that takes longer is recorded against
the plugin (``xpro status``, the metrics) and left behind, and the plugin
gets no further calls until it returns.  :meth:`~PluginHost.startup` and
:meth:`~PluginHost.shutdown` wait for each plugin, up to the same limit
(docs/operations.rst, "Isolation").
"""

from __future__ import annotations

import collections
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
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

__all__ = ["ENTRY_POINT_GROUP", "HOOKS", "HOOK_TIMEOUT", "QUEUE_SIZE", "HookStats", "PluginHost",
           "PluginInfo"]

log = logging.getLogger(__name__)

#: The entry-point group every plugin registers in.
ENTRY_POINT_GROUP = "xpro"

#: The hooks a plugin may implement (the ``xpro_*`` functions of :mod:`xpro.hooks.specs`).
HOOKS: tuple[str, ...] = tuple(n for n in hookspecs.__all__ if n.startswith("xpro_"))

#: Seconds one call of a plugin's notification hook may take.
HOOK_TIMEOUT = 2.0
#: Notifications waiting for delivery before further ones are dropped.
QUEUE_SIZE = 1000


@dataclass
class HookStats:
    """How the notification hooks fared (``xpro status``, the metrics)."""

    queued: int = 0  # waiting for delivery now
    delivered: int = 0  # notifications handed to every plugin (or given up on)
    #: notifications dropped because the queue was full, by hook
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    #: calls that took longer than the limit, by plugin
    timeouts: collections.Counter[str] = field(default_factory=collections.Counter)
    #: calls not made because the plugin was still in a call that timed out, by plugin
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    #: calls that raised, by plugin
    errors: collections.Counter[str] = field(default_factory=collections.Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"queued": self.queued, "delivered": self.delivered,
                "dropped": dict(self.dropped), "timeouts": dict(self.timeouts),
                "skipped": dict(self.skipped), "errors": dict(self.errors)}


class _Busy(Exception):
    """The plugin's thread is still in an earlier call."""


class _Timeout(Exception):
    """The call did not return within the limit."""


class _Runner:
    """The thread a plugin's hooks run on, one call at a time."""

    def __init__(self, name: str) -> None:
        self._caller = threading.Lock()  # one caller at a time (the worker, start, stop)
        self._work = threading.Semaphore(0)
        self._idle = threading.Event()
        self._idle.set()
        self._job: Callable[[], object] = lambda: None
        self._error: BaseException | None = None
        threading.Thread(target=self._main, name=f"xpro-plugin-{name}", daemon=True).start()

    def _main(self) -> None:
        while True:
            self._work.acquire()
            try:
                self._job()
            except BaseException as exc:  # handed to the caller
                self._error = exc
            finally:
                self._idle.set()

    def call(self, fn: Callable[[], object], timeout: float) -> None:
        """Run ``fn`` on this thread; raise what it raised, :class:`_Timeout` if it
        takes longer than ``timeout`` (it goes on running), :class:`_Busy` if an
        earlier call still runs."""
        with self._caller:
            if not self._idle.is_set():
                raise _Busy
            self._idle.clear()
            self._error = None
            self._job = fn
            self._work.release()
            if not self._idle.wait(timeout):
                raise _Timeout
            if self._error is not None:
                exc, self._error = self._error, None
                raise exc


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
    ``hook_timeout`` and ``queue_size``: see :data:`HOOK_TIMEOUT` and
    :data:`QUEUE_SIZE`.
    """

    def __init__(self, *, load_entry_points: bool = True, hook_timeout: float = HOOK_TIMEOUT,
                 queue_size: int = QUEUE_SIZE) -> None:
        #: The pluggy manager, with the specs of :mod:`xpro.hooks.specs`.
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.hook_timeout = hook_timeout
        self.queue_size = queue_size
        self._failed: dict[str, str] = {}
        self._dists: dict[str, str] = {}
        self._lock = threading.Lock()
        self._cli_done: weakref.WeakSet[click.Group] = weakref.WeakSet()
        self._runners: dict[str, _Runner] = {}
        self._queue: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self._cond = threading.Condition(self._lock)
        self._inflight = 0
        self._worker: threading.Thread | None = None
        self._stats = HookStats()
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
        """Record (and log) that plugin ``name`` failed.

        The same failure again is recorded but not logged again (a sink that
        fails on every alert of a flood must not flood the log); the metrics
        count each (:meth:`hook_stats`)."""
        with self._lock:
            again = self._failed.get(name) == why
            self._failed[name] = why
        if not again:
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
        """Call every implementation of ``hook`` separately; return the plugins that
        raised, took longer than :attr:`hook_timeout` or were still in such a call.

        Each implementation gets the arguments it names, on its plugin's
        thread.  An exception or a timeout is recorded against its plugin and
        logged; the other plugins are still called.
        """
        return [impl.plugin_name for impl in self._impls(hook)
                if not self._call(impl, hook, kwargs)]

    def _runner(self, name: str) -> _Runner:
        with self._lock:
            r = self._runners.get(name)
            if r is None:
                r = self._runners[name] = _Runner(name)
            return r

    def _call(self, impl: pluggy.HookImpl, hook: str, kwargs: dict[str, Any]) -> bool:
        """One implementation, on its plugin's thread, within the time limit."""
        name = impl.plugin_name
        args = [kwargs[a] for a in impl.argnames]
        try:
            self._runner(name).call(lambda: impl.function(*args), self.hook_timeout)
        except _Busy:
            with self._lock:
                self._stats.skipped[name] += 1
            return False
        except _Timeout:
            with self._lock:
                self._stats.timeouts[name] += 1
            self.fail(name, f"{hook}: no answer within {self.hook_timeout:g} s; its calls are "
                            "skipped until it returns")
            return False
        except BaseException as exc:  # SystemExit in a plugin's thread stops nothing
            with self._lock:
                self._stats.errors[name] += 1
            self.fail(name, f"{hook}: {type(exc).__name__}: {exc}")
            log.debug("plugin %s: %s traceback", name, hook, exc_info=True)
            return False
        return True

    # -- the notification queue ---------------------------------------------------

    def notify(self, hook: str, **kwargs: Any) -> bool:
        """Queue ``hook`` for every implementation, delivered by the host's worker thread.

        Returns at once: ``False`` if the queue was full and the notification
        is dropped (counted in :meth:`hook_stats`), ``True`` otherwise.
        """
        if not self._impls(hook):
            return True
        with self._cond:
            if len(self._queue) >= self.queue_size:
                self._stats.dropped[hook] += 1
                first = sum(self._stats.dropped.values()) == 1
            else:
                self._queue.append((hook, kwargs))
                if self._worker is None:
                    self._worker = threading.Thread(target=self._deliver, daemon=True,
                                                    name="xpro-plugin-notify")
                    self._worker.start()
                self._cond.notify_all()
                return True
        if first:
            log.error("plugin notifications dropped: %d are waiting (a slow plugin?); "
                      "see xpro_plugin_notifications_dropped_total", self.queue_size,
                      extra={"event": "plugin_queue_full"})
        return False

    def _deliver(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                hook, kwargs = self._queue.popleft()
                self._inflight += 1
            try:
                self.call_each(hook, **kwargs)
            except Exception:  # a bug here must not stop the deliveries
                log.exception("delivering %s failed", hook)
            finally:
                with self._cond:
                    self._inflight -= 1
                    self._stats.delivered += 1
                    self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued notification was delivered; ``False`` on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._inflight, timeout)

    def hook_stats(self) -> HookStats:
        """A copy of the notification counters."""
        with self._lock:
            s = self._stats
            return HookStats(queued=len(self._queue) + self._inflight, delivered=s.delivered,
                             dropped=s.dropped.copy(), timeouts=s.timeouts.copy(),
                             skipped=s.skipped.copy(), errors=s.errors.copy())

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
        lazy = set(getattr(cli, "lazy", ()))  # built-ins not imported yet (XproGroup)
        for impl in self._impls("xpro_add_cli_commands"):
            before = dict(cli.commands)
            try:
                impl.function(cli=cli)
            except Exception as exc:
                self.fail(impl.plugin_name,
                          f"xpro_add_cli_commands: {type(exc).__name__}: {exc}")
            clashes = sorted({n for n in {*before, *lazy}
                              if cli.commands.get(n) is not before.get(n)})
            for n in clashes:
                if n in before:
                    cli.commands[n] = before[n]
                else:
                    del cli.commands[n]
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

    # -- the notification hooks, typed ---------------------------------------------

    def alert(self, alert: Alert) -> bool:
        """Queue ``alert`` for every sink; ``False`` if the queue was full (dropped)."""
        return self.notify("xpro_alert", alert=alert)

    def sync_completed(self, stats: SyncStats, proxy: str) -> bool:
        """Queue the news of a completed round for every plugin; ``False`` if dropped."""
        return self.notify("xpro_sync_completed", stats=stats, proxy=proxy)

    def startup(self, proxy: str) -> list[str]:
        """Tell every plugin the proxy started (waiting up to the limit for each);
        return the plugins that raised or timed out."""
        return self.call_each("xpro_startup", proxy=proxy)

    def shutdown(self, proxy: str) -> list[str]:
        """Deliver what is queued (up to the limit), then tell every plugin the proxy
        is stopping; return the plugins that raised or timed out."""
        self.flush(self.hook_timeout)
        return self.call_each("xpro_shutdown", proxy=proxy)
