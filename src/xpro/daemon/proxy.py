"""The proxy daemon as a library object: :class:`Proxy`.

``xpro run`` is a thin layer over this class; a program (the lab, a test, an
operator's own supervisor) can start, reconfigure and stop a proxy the same
way::

    from xpro.config import load_config
    from xpro.daemon import Proxy

    with Proxy(load_config("/etc/xpro/xpro.toml")) as proxy:   # start()
        print(proxy.status()["counters"])
        proxy.reconfigure(load_config("/etc/xpro/xpro.toml"))

A started proxy has:

- a data-path backend (a plugin, ``proxy.backend``) attached to every
  ``proxy.interfaces`` in ``proxy.netns``, with its maps and links pinned in
  ``proxy.pin_dir`` (a previous daemon's pins are adopted);
- the sync thread: Algorithm 1 every ``sync.period`` against the master store
  (:class:`xpro.sync.SyncLoop`; an unreachable store is retried, filtering
  goes on on local state);
- the event thread: the program's overload warnings (ring buffer) become
  ``xpro_alert`` calls, as do store outages and a workload above T_W;
- the Prometheus endpoint (``metrics.listen``) and the control socket
  (``control.socket``) that ``xpro status``, ``xpro flows``, ``xpro explain``
  and ``xpro config reload`` talk to.

No failure of a plugin, of the store, or of a single round takes the
daemon down; each is logged, counted in the metrics and retried.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import hashlib
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from xpro import __version__
from xpro.config import Change, Config, load_config
from xpro.config.kinds import mask_url, redact
from xpro.core import layout as L
from xpro.core.alert import Alert, AlertKind
from xpro.core.endpoint import parse_endpoint
from xpro.core.explain import Explanation, explain, known_reason, rate_pps
from xpro.core.merge import rate_exceeds_array
from xpro.core.model import NS_PER_S, FilterParams, Prefix, mask_source, source_text
from xpro.core.params import tai_now
from xpro.core.prefixset import PrefixSet
from xpro.core.status import Closure, SyncStats
from xpro.core.text import printable
from xpro.daemon.control import ControlServer
from xpro.daemon.logs import set_format
from xpro.daemon.metrics import MetricsServer, exposition, serve
from xpro.daemon.privileges import (
    Capabilities,
    drop_to,
    read_capabilities,
    runtime_capabilities,
)
from xpro.errors import ConfigError, XproError
from xpro.plugins import plugins as process_plugins
from xpro.sync import Syncer, SyncLoop
from xpro.sync.known import closed_now, is_address, is_closed_record, limits

if TYPE_CHECKING:
    from xpro.backends import Backend
    from xpro.core.state import FilterState
    from xpro.plugins.host import PluginHost
    from xpro.stores.base import Store

__all__ = ["DaemonRunning", "Proxy", "parse_endpoint"]

log = logging.getLogger("xpro.daemon")

#: Where the daemon's lock files live (one per pin directory).
RUN_DIR = Path("/run/xpro")


class DaemonRunning(XproError):
    """Another daemon already runs with the same pin directory or control socket."""


class RunLock:
    """An exclusive lock on a name (a pin directory, a socket) under :data:`RUN_DIR`."""

    def __init__(self, what: str, name: str) -> None:
        # One lock per place, however it is spelled (a trailing slash, "..").
        digest = hashlib.sha256(os.path.realpath(name).encode()).hexdigest()[:16]
        self.path = RUN_DIR / f"{what}-{digest}.lock"
        try:
            RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise XproError(
                f"cannot take the lock of {what} {printable(name, 200)} in {RUN_DIR} "
                f"({exc.strerror}): {RUN_DIR} must be writable (under systemd with "
                f"ProtectSystem=, list it in ReadWritePaths=, as packaging/ does)") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise DaemonRunning(
                f"another xpro daemon (pid {other}) runs with {what} {name}: stop it "
                f"(systemctl stop xpro, or kill -TERM {other}) or give this one its own "
                f"--{what.replace('_', '-')}") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        # The file stays: unlinked, a waiter holding the old file and a
        # newcomer creating a new one could both take "the" lock.
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Proxy:
    """One proxy of the mesh: the data path, the sync, alerts, metrics and control.

    :param config: the effective configuration (:func:`xpro.config.load_config`).
    :param plugins: the plugin host (default: the process-wide one, with every
        installed ``xpro`` entry point).
    :param reload_source: what :meth:`reload` reads the new configuration
        from (default: the same file, and the environment, again).
    :param backend_options: extra settings for the backend, merged over the
        ones the configuration gives (see each backend in :doc:`/backends`).
    :param drop_capabilities: once attached, drop every capability the
        backend no longer needs (:mod:`xpro.daemon.privileges`).  For the
        daemon process only (``xpro run`` passes ``proxy.drop_capabilities``):
        capabilities belong to the calling thread and everything it starts,
        so a program running several proxies must not.
    :param on_failure: called (from the failing thread) once the data path
        stopped filtering for good (:attr:`failed`); ``xpro run`` then exits so
        that its service manager starts it again.
    """

    def __init__(self, config: Config, *, plugins: PluginHost | None = None,
                 reload_source: Callable[[], Config] | None = None,
                 backend_options: Mapping[str, Any] | None = None,
                 drop_capabilities: bool = False,
                 on_failure: Callable[[], None] | None = None) -> None:
        self.config = config
        #: Why the data path stopped filtering for good (None while it filters).
        self.failed: str | None = None
        self._on_failure = on_failure
        self.drop_capabilities = drop_capabilities
        self.capabilities: Capabilities | None = None
        self.reload_source = reload_source or (lambda: load_config(config.path))
        self.backend_options = dict(backend_options or {})
        self.name = config.proxy.name
        self.plugins = plugins or process_plugins()
        self.backend: Backend | None = None
        self.store: Store | None = None
        self.loop: SyncLoop | None = None
        self.started_ns = 0
        self.started_at = 0.0
        self.alert_counts: collections.Counter[str] = collections.Counter()
        self.recent_alerts: collections.deque[Alert] = collections.deque(maxlen=50)
        self.errors: collections.Counter[str] = collections.Counter()
        self.reloads = 0
        #: Overload warnings read from the data path, and those whose handling failed.
        self.events_seen = 0
        self.events_failed = 0
        self._overloaded = False
        self._known_full = False
        self._clock_off = False
        self._store_data_alerted = 0.0  # monotonic time of the last store_data alert
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.RLock()
        self._locks: list[RunLock] = []
        self._metrics: MetricsServer | None = None
        self._control: ControlServer | None = None
        self._running = False
        self._stopping = False  # from the top of a stop to the next start

    # ---- life cycle ----------------------------------------------------------------

    @property
    def filter(self) -> FilterState:
        """The loaded filter state (after :meth:`start`)."""
        if self.backend is None or getattr(self.backend, "filter", None) is None:
            raise XproError(f"proxy {self.name} is not started")
        filt: FilterState = self.backend.load()
        return filt

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> Self:
        """Load or adopt the filter, attach it, start the sync, events, metrics and control."""
        if self._running:
            return self
        self._stopping = False
        cfg = self.config
        if not cfg.proxy.interfaces:
            raise ConfigError("no interface to attach to: set proxy.interfaces in the config "
                              "file, XPRO_PROXY_INTERFACES, or --interface IF")
        backends = self.plugins.backends()
        if cfg.proxy.backend not in backends:
            raise ConfigError(f"proxy.backend: no backend {cfg.proxy.backend!r} is installed "
                              f"(installed: {', '.join(backends.names()) or 'none'}); "
                              "see `xpro plugins`")
        cls = backends.get(cfg.proxy.backend)
        pin_dir = cfg.proxy.pin_dir or None
        try:
            if pin_dir:
                self._locks.append(RunLock("pin_dir", pin_dir))
            if cfg.control.socket:
                self._locks.append(RunLock("control_socket", cfg.control.socket))
            options = {"interfaces": cfg.proxy.interfaces, **cfg.backend_options(),
                       **self.backend_options}
            if options.get("parsers"):
                options["parsers"] = self._parsers(options["parsers"])
            self.backend = cls(params=cfg.filter_params(), sizes=cfg.sizes(), pin_dir=pin_dir,
                               netns=cfg.proxy.netns or None, options=options)
            filt = self.backend.load()
            adopted = False
            for ifname in cfg.proxy.interfaces:
                att = self.backend.attach(ifname)
                adopted |= att.adopted
                log.info("attached", extra={"event": "attached", **att.to_dict()})
            # Adopted maps keep the old configuration: install this one.
            filt.configure(cfg.filter_params())
            if self.drop_capabilities:  # before any thread starts: they inherit it
                self._drop_capabilities()
            self.failed = None
            self.backend.on_failure = self._datapath_failed
            self.backend.start()
        except BaseException:
            self._release(keep=self._adopted_any())
            raise
        self.started_ns, self.started_at = tai_now(), time.time()
        self._running = True
        self._stop.clear()
        try:
            self.loop = SyncLoop(self._connect, cfg.sync.period, name=self.name,
                                 on_alert=self._sync_alert, on_round=self._on_round)
            self.loop.start()
            self._spawn(self._events_main, "events")
            self._start_metrics()  # a port in use: ConfigError
            self._start_control()
            self.plugins.startup(self.name)
        except BaseException:
            # A start that fails leaves things as it found them, as above: an
            # adopted filter goes on filtering, a new one is removed.  The
            # start's error is the one reported, whatever the stop meets.
            try:
                self.stop(keep=self._adopted_any())
            except Exception:
                log.exception("cleaning up after a failed start failed",
                              extra={"event": "stop_error"})
            raise
        log.info("started", extra={"event": "started", "proxy": self.name,
                                   "backend": cfg.proxy.backend,
                                   "interfaces": list(cfg.proxy.interfaces),
                                   "store": mask_url(cfg.store_url), "adopted": adopted})
        return self

    def _drop_capabilities(self) -> None:
        backend = self.config.proxy.backend
        keep = runtime_capabilities(backend, netns=bool(self.config.proxy.netns))
        if keep is None:
            log.warning("backend %s is not one of xpro's: its needs at run time are unknown, "
                        "no capability is dropped", backend,
                        extra={"event": "capabilities_kept", "backend": backend})
            return
        before = read_capabilities()
        self.capabilities = drop_to(keep)
        log.info("capabilities dropped", extra={
            "event": "capabilities_dropped", "backend": backend,
            "kept": sorted(self.capabilities.permitted),
            "dropped": sorted(before.permitted - self.capabilities.permitted),
            "bounding": sorted(self.capabilities.bounding)})

    def _parsers(self, wanted: list[Any]) -> list[Callable[[bytes], Any]]:
        """Destination parsers by name (``xpro_add_destination_parsers``) or as callables."""
        reg = self.plugins.destination_parsers()
        missing = [n for n in wanted if isinstance(n, str) and n not in reg]
        if missing:
            raise ConfigError(f"afxdp.parsers: no destination parser {missing}; installed: "
                              f"{reg.names() or 'none'} (see `xpro plugins`)")
        return [reg.get(n) if isinstance(n, str) else n for n in wanted]

    def _adopted_any(self) -> bool:
        return self.backend is not None and any(
            a.adopted for a in self.backend.attachments.values())

    def _spawn(self, fn: Callable[[], None], what: str) -> None:
        t = threading.Thread(target=fn, name=f"xpro-{what}-{self.name}", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, *, keep: bool | None = None) -> None:
        """Stop: detach and unpin (``proxy.on_exit = "detach"``) or leave the
        filter running on its pins for the next daemon (``keep``)."""
        if not self._running:
            return
        keep = self.config.proxy.on_exit == "keep" if keep is None else keep
        self._stopping = True
        self._running = False
        self._stop.set()
        if self.loop is not None:
            # A round blocked on a master that stopped answering is cut short
            # (its store closed under it), not left running while the maps
            # and the store are released below.
            self.loop.stop(interrupt=self._close_store)
            if self.loop.running:
                log.warning("the sync round did not end within 15 s of the stop; "
                            "stopping anyway", extra={"event": "stop_sync_running"})
        for t in self._threads:
            t.join(10)
        self._threads.clear()
        self.plugins.shutdown(self.name)
        self._release(keep=keep)
        log.info("stopped", extra={"event": "stopped", "proxy": self.name,
                                   "kept": keep})

    def _datapath_failed(self, why: str) -> None:
        """The backend's data path stopped filtering for good (its thread failed).

        The alert is queued before :attr:`failed` is set, which is what the
        daemon's main thread acts on (it stops, and the stop flushes the
        alerts); the main thread is woken whatever the alert does."""
        if self._stopping:  # a late failure of a path being stopped
            return
        try:
            log.critical("%s: the data path forwards nothing any more", why,
                         extra={"event": "datapath_failed"})
            self.alert(Alert.make("datapath_down", f"{why}: the data path forwards nothing "
                                  "any more", self.name))
        except Exception:  # the daemon must still learn of it
            log.exception("raising the datapath_down alert failed",
                          extra={"event": "alert_error"})
        finally:
            self.failed = why or "the data path failed"
            if self._on_failure is not None:
                self._on_failure()

    def _close_store(self) -> None:
        store = self.store
        if store is not None:
            store.close()

    def _release(self, *, keep: bool) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._metrics is not None:
            with contextlib.suppress(Exception):
                self._metrics.shutdown()
                self._metrics.server_close()
            self._metrics = None
        if self.backend is not None:
            try:
                self.backend.stop()
            except XproError as exc:  # reported when it happened (_datapath_failed)
                log.warning("stopping the data path: %s", exc,
                            extra={"event": "stop_error"})
            finally:
                self.backend.close(keep=keep)
            self.backend = None
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.close()
            self.store = None
        self.loop = None
        for lock in reversed(self._locks):
            lock.release()
        self._locks.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` (True) or ``timeout`` (False)."""
        return self._stop.wait(timeout)

    # ---- reconfiguration -----------------------------------------------------------

    def reconfigure(self, new: Config) -> tuple[Change, ...]:
        """Apply ``new``: live keys at once, in the running program (no state lost).

        Keys that take a restart (map sizes, interfaces, the store...) are
        reported and left as they are; the returned changes say which is
        which (``Change.live``).
        """
        with self._lock:
            changes = self.config.diff(new)
            if not changes:
                return changes
            applied = [c for c in changes if c.live]
            pending = [c for c in changes if not c.live]
            # What will run: the live keys new, the others as they run.  It must
            # keep the rules between keys (a deny list longer than the running
            # table, tables.prefixes taking a restart): if not, nothing changes.
            run = _merge_live(self.config, new)
            _check_running(run, pending)
            if self.backend is not None:
                # Live backend settings first: one that does not take changes nothing.
                self.backend.reconfigure({**run.backend_options(), **self.backend_options})
                self.filter.configure(run.filter_params())
            if self.syncer is not None:
                # The sync's live keys, for its next round.
                self.syncer.configure(run.sync_params(), filter_params=run.filter_params(),
                                      period=run.period_ns, ttl=run.ttl_ns,
                                      known=run.known_policy(), near=run.sync.near)
            if self.loop is not None:
                self.loop.period = run.sync.period
            logging.getLogger("xpro").setLevel(run.log.level.upper())
            set_format(run.log.format)
            self.config = run
            self.reloads += 1
        for c in applied:
            log.info("config changed", extra={"event": "config_changed", "key": c.key,
                                              "old": c.old, "new": c.new})
        for c in pending:
            log.warning("config key needs a restart", extra={
                "event": "config_needs_restart", "key": c.key, "old": c.old, "new": c.new})
        return changes

    def reload(self) -> tuple[Change, ...]:
        """Read the configuration again (SIGHUP, ``xpro config reload``) and apply it.

        A configuration that does not validate changes nothing: the error
        says what is wrong and the daemon goes on with the one it has.
        """
        try:
            changes = self.reconfigure(self.reload_source())
        except XproError as exc:
            log.error("config reload refused: %s", exc, extra={"event": "config_invalid"})
            raise
        log.info("config reloaded", extra={"event": "config_reloaded",
                                           "changed": [c.key for c in changes]})
        return changes

    # ---- the sync ------------------------------------------------------------------

    @property
    def syncer(self) -> Syncer | None:
        """The sync's state, once the master store was reached."""
        return self.loop.syncer if self.loop is not None else None

    def _connect(self) -> Syncer:
        """Open the master store and a :class:`Syncer` on it (the sync loop retries it)."""
        from xpro.plugins import open_store

        cfg = self.config
        store = open_store(cfg.store_url, mesh=cfg.store.mesh, options=cfg.store_options())
        try:
            store.ping()
        except BaseException:
            store.close()
            raise
        self.store = store
        with self._lock:
            # Built from the configuration as it is now (a reload while the
            # store was being reached found no syncer to configure), and made
            # the loop's before the lock goes, so the next reload finds it.
            cfg = self.config
            syncer = Syncer(self.filter, store, self.name, cfg.sync_params(),
                            period=cfg.period_ns, ttl=cfg.ttl_ns, known=cfg.known_policy(),
                            pull=cfg.sync.pull, near=cfg.sync.near)
            if self.loop is not None:
                self.loop.syncer = syncer
        return syncer

    def _on_round(self, stats: SyncStats) -> None:
        log.debug("sync round", extra={
            "event": "sync_round", "seconds": round(stats.seconds, 6), "flows": stats.flows,
            "merged": stats.merged, "pulled": stats.pulled, "applied": stats.applied,
            "workload": round(stats.workload, 1)})
        self.plugins.sync_completed(stats, self.name)
        for closure in stats.closures:
            self._closure_alert(closure)
        if stats.known_overflow and not self._known_full:
            self._known_full = True
            size = self.config.tables.known
            self.alert(Alert.make(
                "known_full", f"the known-client table is full ({size} entries): "
                f"{stats.known_overflow} clients of open or closing destinations are not "
                "known, and are dropped like new sources while their destination is closed; "
                "raise tables.known", self.name, overflow=stats.known_overflow, size=size))
        elif not stats.known_overflow:
            self._known_full = False
        t_w = self.config.thresholds.t_w
        if stats.workload > t_w and not self._overloaded:
            self._overloaded = True
            self.alert(Alert.make("workload", f"workload {stats.workload:.0f} packets/s "
                                  f"exceeds T_W {t_w}: add proxies", self.name,
                                  workload=stats.workload, limit=t_w))
        elif stats.workload <= t_w * 0.9:
            self._overloaded = False
        self._clock_alerts(stats)
        self._store_data_alert(stats)

    def _clock_alerts(self, stats: SyncStats) -> None:
        """``clock_skew`` when this proxy's clock goes off the mesh's by more than
        ``sync.clock_alert``; ``clock_ok`` when it is back within."""
        d = stats.skew_measured
        if d is None:
            return
        bound = self.config.sync.clock_alert * NS_PER_S
        if abs(d) > bound and not self._clock_off:
            self._clock_off = True
            how = ("corrected: its timestamps are translated" if stats.skew else
                   "NOT corrected (beyond a day): filtering on its own clock")
            self.alert(Alert.make(
                "clock_skew", f"this proxy's clock is {abs(d) / NS_PER_S:.3f} s "
                f"{'behind' if d > 0 else 'ahead of'} the mesh's (sync.clock_alert "
                f"{self.config.sync.clock_alert:g} s), {how}; check its time daemon",
                self.name, skew_s=d / NS_PER_S, corrected=bool(stats.skew),
                limit_s=self.config.sync.clock_alert))
        elif abs(d) <= bound * 0.5 and self._clock_off:
            self._clock_off = False
            self.alert(Alert.make("clock_ok", f"this proxy's clock is back within "
                                  f"{abs(d) / NS_PER_S:.3f} s of the mesh's", self.name,
                                  skew_s=d / NS_PER_S))

    def _store_data_alert(self, stats: SyncStats) -> None:
        """``store_data`` when a round quarantined values read from the store (at
        most one a minute: a writer of the store must not flood the sinks)."""
        if not stats.quarantined:
            return
        now = time.monotonic()
        if self._store_data_alerted and now - self._store_data_alerted < 60.0:
            return
        self._store_data_alerted = now
        examples = [f"{printable(what, 80)}: {printable(why, 120)}"
                    for what, why in stats.bad_values[:5]]
        self.alert(Alert.make(
            "store_data", f"{stats.quarantined} value(s) read from the store were out of "
            f"bounds and left out of the round (forged, or a proxy's clock far off): "
            f"{'; '.join(examples)}; see docs/sync.rst, \"Values from the store\"",
            self.name, quarantined=stats.quarantined, examples=examples))

    def _dst_limit(self, dkey: Any) -> tuple[int, str]:
        """The limit an aggregate is judged by, and its name: an address's own
        (addr+port mode), or T_F2."""
        if int(dkey["pad"]) & L.DST_PAD_ADDR:
            return self.filter.params.t_f2_addr, "t_f2_address"
        return self.config.thresholds.t_f2, "T_F2"

    def _closure_alert(self, cl: Closure) -> None:
        """One alert when a destination closes, one when it reopens (mesh-wide figures)."""
        dkey = np.frombuffer(cl.dst, dtype=L.DST_KEY)[0]
        dst = _dst_text(dkey)
        rate = rate_pps(cl.count, cl.window)
        limit, name = self._dst_limit(dkey)
        if cl.closed:
            self.alert(Alert.make(
                "dst_closed", f"{dst} closed to unknown sources: {rate:.0f} packets/s offered "
                f"in the mesh ({name} {limit}); {cl.known} known clients still served",
                self.name, dst=dst, rate=rate, limit=limit, count=cl.count,
                window_s=cl.window / NS_PER_S, known_clients=cl.known))
        else:
            self.alert(Alert.make(
                "dst_reopened", f"{dst} reopened: {rate:.0f} packets/s offered in the mesh "
                f"({name} {limit}), closed for {(tai_now() - cl.since) / NS_PER_S:.1f} s",
                self.name, dst=dst, rate=rate, limit=limit, count=cl.count,
                closed_s=(tai_now() - cl.since) / NS_PER_S))

    def _sync_alert(self, kind: AlertKind, message: str) -> None:
        # A store error's text goes to every alert sink: no secret in it.
        self.alert(Alert.make(kind, redact(message), self.name))

    def alert(self, alert: Alert) -> None:
        """Hand ``alert`` to every ``xpro_alert`` sink (a failing sink is reported, not fatal)."""
        self.alert_counts[alert.kind] += 1
        self.recent_alerts.append(alert)
        self.plugins.alert(alert)

    # ---- the event thread ----------------------------------------------------------

    def _events_main(self) -> None:
        try:
            rb = self.filter.events(self._on_event)
        except XproError as exc:
            log.error("cannot read the program's events: %s", exc,
                      extra={"event": "events_error"})
            return
        try:
            while not self._stop.is_set():
                try:
                    rb.poll(250)
                except Exception:
                    self.errors["events"] += 1
                    log.exception("handling an event failed", extra={"event": "events_error"})
                    self._stop.wait(0.25)
        finally:
            rb.close()

    def _on_event(self, ev: Any) -> None:
        """One warning from the data path: count it, turn it into an alert.

        A warning that cannot be handled is counted and logged (the first,
        then every power of two), never raised: the reader would stop for a
        moment and the rest of the ring buffer's batch would wait."""
        self.events_seen += 1
        try:
            self._event_alert(ev)
        except Exception:
            self.events_failed += 1
            n = self.events_failed
            if n & (n - 1) == 0:
                log.exception("an overload warning could not be handled (%d so far)", n,
                              extra={"event": "events_error"})

    def events_lost(self) -> int | None:
        """Warnings the data path dropped (its ring buffer or queue was full), or None
        if it does not count them."""
        if self.backend is None:
            return None
        fn = getattr(self.filter, "events_lost", None)
        return None if fn is None else fn()

    def _event_alert(self, ev: Any) -> None:
        key = ev["key"]
        window = int(ev["window"])
        rate = rate_pps(int(ev["c"]), window)
        dst = _dst_text(key["dst"])
        if int(ev["kind"]) == L.EventKind.SRC_OVERLOAD:
            src = source_text(bytes(key["src"]), self.filter.params)  # a prefix, or an address
            limit = self.config.thresholds.t_f1
            self.alert(Alert.make("src_overload", f"{src} sends {rate:.0f} packets/s to {dst} "
                                  f"(T_F1 {limit})", self.name, src=src, dst=dst, rate=rate,
                                  limit=limit, count=int(ev["c"]), window_s=window / NS_PER_S))
        else:
            limit, name = self._dst_limit(key["dst"])
            self.alert(Alert.make("dst_overload", f"{dst} receives {rate:.0f} packets/s "
                                  f"({name} {limit})", self.name, dst=dst, rate=rate, limit=limit,
                                  count=int(ev["c"]), window_s=window / NS_PER_S))

    # ---- views -----------------------------------------------------------------------

    def counters(self) -> dict[str, dict[str, int]]:
        """Packets and bytes by verdict reason since the program was loaded."""
        arr = self.filter.counters()
        return {r.name.lower(): {"packets": int(arr[r][0]), "bytes": int(arr[r][1])}
                for r in L.Reason}

    def status(self, *, top: int = 5) -> dict[str, Any]:
        """This proxy and the mesh, as ``xpro status`` shows it (JSON-serialisable).

        ``top`` is how many of the busiest sources and destinations it lists.
        """
        with self._lock:
            now = tai_now()
            cfg = self.config
            st: dict[str, Any] = {
                "proxy": self.name, "version": __version__, "pid": os.getpid(),
                "running": self._running, "uptime_s": round(time.time() - self.started_at, 3),
                "failed": self.failed,
                "backend": cfg.proxy.backend, "netns": cfg.proxy.netns,
                "interfaces": [a.to_dict() for a in (self.backend.attachments.values()
                                                     if self.backend else ())],
                "store": {"url": mask_url(cfg.store_url), "mesh": cfg.store.mesh,
                          "username": cfg.store.username},
                "thresholds": {k: getattr(cfg.thresholds, k) for k in
                               ("t_t1", "t_t2", "t_t3", "t_t4", "t_f1", "t_f2", "t_w", "r")},
                "mode": cfg.filter.mode, "sync_period_s": cfg.sync.period,
                "reloads": self.reloads, "errors": dict(self.errors),
                "capabilities": (self.capabilities.to_dict()
                                 if self.capabilities is not None else None),
                "plugins_failed": self.plugins.failed(),
                "plugins": self.plugins.hook_stats().to_dict(),
                "events": {"seen": self.events_seen, "failed": self.events_failed,
                           "lost": self.events_lost()},
                "alerts": dict(self.alert_counts),
                "recent_alerts": [a.to_dict() for a in list(self.recent_alerts)[-10:]],
            }
            if self.backend is None:
                return st
            st["counters"] = self.counters()
            loop = self.loop
            sync: dict[str, Any] = {"healthy": True, "rounds": 0}
            if loop is not None:
                s = loop.status
                sync.update(healthy=s.healthy, rounds=s.rounds, failures=s.failures,
                            failed_total=s.failed_total,
                            last_error=redact(s.last_error) if s.last_error else s.last_error,
                            last_ok_age_s=(now - s.last_ok) / NS_PER_S if s.last_ok else None)
                if s.last is not None:
                    last = s.last
                    sync["last_round"] = {k: getattr(last, k) for k in (
                        "seconds", "flows", "merged", "pulled", "created", "applied", "raced",
                        "expired", "destinations", "workload", "error", "closed", "known",
                        "partials", "clients_pulled", "skipped_dsts", "recent")}
                    period = cfg.sync.period
                    sync["peers"] = {
                        name: {"workload": p.workload,
                               "age_s": max(0.0, (now - p.last_seen) / NS_PER_S),
                               "alive": (now - p.last_seen) / NS_PER_S < 3 * period + 1,
                               "clock_offset_s": None if p.offset is None
                               else p.offset / NS_PER_S}
                        for name, p in sorted(last.peers.items())}
                    sync["clock"] = {
                        "offset_s": None if last.clock_offset is None
                        else last.clock_offset / NS_PER_S,
                        "skew_s": None if last.skew_measured is None
                        else last.skew_measured / NS_PER_S,
                        "corrected_s": last.skew / NS_PER_S,
                        "alert_s": cfg.sync.clock_alert}
                    sync["quarantined"] = last.quarantined
            st["sync"] = sync
            st["top_sources"] = self.flows(limit=top)
            st["top_destinations"] = self.destinations(limit=top)
            syncer = self.syncer
            st["closed"] = {
                "destinations": len(syncer.known.closed) if syncer is not None else 0,
                "known_clients": len(syncer.known.keys) if syncer is not None else 0,
                "known_overflow": syncer.known.overflow if syncer is not None else 0,
            }
            st["dirty_lost"] = self.filter.dirty_lost()
            return st

    def flows(self, *, src: str | None = None, dst: str | None = None, sort: str = "rate",
              limit: int | None = 20) -> list[dict[str, Any]]:
        """Flow records, filtered by source/destination prefix, sorted, as dicts.

        A flow's source is the prefix its flows are keyed on
        (``filter.source_prefix_v6``/``_v4``: ``2001:db8:1:2::/64``), and
        ``src`` selects the flows whose source prefix overlaps it (an address
        finds the prefix it lies in).  ``sort``: ``rate`` (packets/s over
        the window, highest first), ``count``, ``recent`` (last packet,
        newest first) or ``age`` (window, longest first).
        """
        if sort not in ("rate", "count", "recent", "age"):
            raise ConfigError(f"--sort {sort!r}: choose rate, count, recent or age")
        p = self.filter.params  # what the running program judges (and keys) with
        keys, recs = self.filter.read_flows()
        now = tai_now()
        mask = np.ones(len(keys), dtype=bool)
        if src:
            mask &= _in_prefix(keys["src"], src, what="--src", params=p)
        if dst:
            mask &= _in_prefix(keys["dst"]["addr"], dst, what="--dst")
        keys, recs = keys[mask], recs[mask]
        window = np.maximum(now - recs["ts1"].astype(np.int64), 1)
        rate = recs["c"].astype(np.float64) * NS_PER_S / window
        order = {"rate": -rate, "count": -recs["c"].astype(np.float64),
                 "recent": -recs["ts2"].astype(np.float64),
                 "age": -window.astype(np.float64)}[sort]
        idx = np.argsort(order, kind="stable")
        if limit is not None:
            idx = idx[:limit]
        c = recs["c"].astype(np.int64)
        over = (window > p.t_t2) & rate_exceeds_array(c, window, p.t_f1)
        out = []
        drops = is_closed_record(keys)
        for i in idx:
            k, r = keys[i], recs[i]
            out.append({
                # A destination's closed-drops record has no source of its own.
                "src": "(closed drops)" if drops[i] else source_text(bytes(k["src"]), p),
                "dst": _dst_text(k["dst"]),
                "count": int(r["c"]), "local_count": int(r["c"]) - int(r["base_c"]),
                "window_s": round(int(window[i]) / NS_PER_S, 6),
                "rate_pps": round(float(rate[i]), 3),
                "idle_s": round(max(0, now - int(r["ts2"])) / NS_PER_S, 6),
                "resets": int(r["gen"]),
                "over_t_f1": bool(over[i]) and not drops[i],
                "closed_drops": bool(drops[i]),
            })
        return out

    def destinations(self, *, limit: int | None = 20) -> list[dict[str, Any]]:
        """Destination aggregates by rate, highest first."""
        keys, recs = self.filter.read_dsts()
        now = tai_now()
        window = np.maximum(now - recs["ts1"].astype(np.int64), 1)
        rate = recs["c"].astype(np.float64) * NS_PER_S / window
        idx = np.argsort(-rate, kind="stable")[:limit]
        p = self.filter.params  # judged as the running program judges (flows() alike)
        # An address aggregate (addr+port mode) is judged by its own limit.
        lim = limits(keys, p)
        over = np.zeros(len(keys), dtype=bool)
        for v in np.unique(lim):
            m = lim == v
            over[m] = (window[m] > p.t_t3) & rate_exceeds_array(
                recs["c"][m].astype(np.int64), window[m], int(v))
        shut = closed_now(recs["ts1"].astype(np.int64), recs["ts2"].astype(np.int64),
                          recs["c"].astype(np.int64), now, p, lim)
        # The drops while closed: each destination's closed-drops record (mesh-wide c').
        ck = np.zeros(len(idx), dtype=L.FLOW_KEY)
        ck["dst"] = keys[idx]
        ck["dst"]["pad"] |= L.DST_PAD_CLOSED
        has_drops, drop_recs = self.filter.read(ck)
        syncer = self.syncer
        out = []
        for j, i in enumerate(idx):
            dkey = bytes(np.ascontiguousarray(keys[i]).tobytes())
            since = syncer.known.closed.get(dkey) if syncer is not None else None
            out.append({
                "dst": _dst_text(keys[i]), "count": int(recs[i]["c"]),
                "address": bool(is_address(keys[i:i + 1])[0]),
                "window_s": round(int(window[i]) / NS_PER_S, 6),
                "rate_pps": round(float(rate[i]), 3),
                "over_t_f2": bool(over[i]),
                "closed": bool(shut[i]),
                "closed_since_s": (round((now - since) / NS_PER_S, 3)
                                   if since is not None else None),
                "known_clients": syncer.known.count_of(dkey) if syncer is not None else 0,
                "known_count": int(recs[i]["kc"]),
                "closed_drops": int(drop_recs[j]["c"]) if has_drops[j] else 0,
            })
        return out

    def explain(self, src: str, dst: str, *, proto: int = 17) -> Explanation:
        """What the next packet from ``src`` to ``dst`` would meet, and why.

        ``dst`` may carry a port (``192.0.2.1:53``) in ``addr+port``
        destination mode; ``proto`` is the IP protocol of that port.
        """
        s16, _, _ = parse_endpoint(src, what="source")
        d16, port, has_port = parse_endpoint(dst, what="destination")
        params = self.filter.params
        key = np.zeros(1, dtype=L.FLOW_KEY)
        # the flow is keyed on the source's prefix (the lists see s16 itself)
        ipv6 = ipaddress.IPv6Address(s16).ipv4_mapped is None
        key["src"] = mask_source(s16, ipv6, params.source_prefix_v4, params.source_prefix_v6)
        key["dst"]["addr"] = d16
        if params.dst_mode == L.DST_ADDR_PORT:
            if not has_port:
                raise ConfigError("the filter keys destinations by address and port "
                                  "(filter.destination = \"addr+port\"): give DST as ADDR:PORT")
            key["dst"]["port"] = port
            key["dst"]["proto"] = proto
        exists, recs = self.filter.read(key)
        flow = None
        if exists[0]:
            r = recs[0]
            flow = {f: int(r[f]) for f in ("ts1", "ts2", "c", "base_c")}
        akey = key.copy()
        akey["dst"]["port"], akey["dst"]["proto"], akey["dst"]["pad"] = 0, 0, L.DST_PAD_ADDR
        by_port = params.dst_mode == L.DST_ADDR_PORT
        d_exists, d_recs = self.filter.read_dsts_of(
            np.concatenate([key["dst"], akey["dst"]], dtype=L.DST_KEY) if by_port else key["dst"])
        dest = address = None
        if d_exists[0]:
            dest = {f: int(d_recs[0][f]) for f in ("ts1", "ts2", "c", "kc")}
        if by_port and d_exists[1]:
            address = {f: int(d_recs[1][f]) for f in ("ts1", "ts2", "c", "kc")}
        address_known = 0
        synced = None
        known, since, why = 0, None, ""
        now = int(self.filter.cfg.view["fake_now"] or tai_now())
        syncer = self.syncer
        if syncer is not None:
            synced = syncer.mirror.record(key)
            known = int(syncer.known.classes_of(key)[0])
            address_known = int(syncer.known.classes_of(akey)[0]) if by_port else 0
            since = syncer.known.closed.get(bytes(np.ascontiguousarray(key["dst"]).tobytes()))
            why = known_reason(synced, now, params, syncer.known.policy, known=known,
                               closed=since is not None)
        return explain(params, s16, d16, now=now, flow=flow, dest=dest, synced=synced,
                       flow_key=key.tobytes(), src_text=src,
                       dst_text=_dst_text(key["dst"][0]), known=known, closed_since=since,
                       known_why=why, address=address, address_known=address_known)

    # ---- metrics and control -------------------------------------------------------

    def metrics_text(self) -> str:
        """The Prometheus exposition text of this proxy."""
        return exposition(self)

    def _start_metrics(self) -> None:
        listen = self.config.metrics.listen
        if not listen:
            return
        self._metrics = serve(self, listen)

    def _start_control(self) -> None:
        path = self.config.control.socket
        if not path:
            return
        self._control = ControlServer(self, path)


def _merge_live(old: Config, new: Config) -> Config:
    """``new`` with every key that needs a restart kept at its value in ``old``."""
    from xpro.config import SCHEMA

    sections: dict[str, dict[str, Any]] = {}
    for opt in SCHEMA:
        value = new.get(opt.key) if opt.live else old.get(opt.key)
        sections.setdefault(opt.section, {})[opt.name] = value
    replaced = {name: dataclasses.replace(getattr(new, name), **vals)
                for name, vals in sections.items()}
    # Where each value came from, as the values: a kept key keeps its source
    # (the password too: it is kept, as the store's connection is).
    sources = dict(new.sources)
    for key in [opt.key for opt in SCHEMA if not opt.live] + ["store.password"]:
        sources.pop(key, None)
        if key in old.sources:
            sources[key] = old.sources[key]
    return dataclasses.replace(new, **replaced, store_password=old.store_password,
                               sources=MappingProxyType(sources))


def _check_running(run: Config, pending: list[Change]) -> None:
    """Raise :class:`ConfigError` if ``run`` (what a reload would leave running)
    breaks a rule between keys: one of them takes a restart (the new file
    alone passed every rule when it was loaded)."""
    from xpro.config import RULES, SCHEMA

    values = {opt.key: run.get(opt.key) for opt in SCHEMA}
    kept = {c.key: c.old for c in pending}
    problems = []
    for rule in RULES:
        detail = rule.check(values)
        if detail is None:
            continue
        why = ", ".join(f"{k} = {kept[k]}" for k in rule.keys if k in kept)
        problems.append(f"{detail} (with the running {why}, which takes a restart)" if why
                        else detail)
    if problems:
        raise ConfigError("nothing changed: " + "; ".join(problems) +
                          ": restart the daemon to apply the new values together")


def _dst_text(dkey: Any) -> str:
    addr = L.addr_str(bytes(dkey["addr"]))
    if int(dkey["pad"]) & L.DST_PAD_ADDR:  # addr+port mode: the address's own aggregate
        return f"{addr} (address: all ports)"
    port = int(dkey["port"])
    if not port:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _in_prefix(addrs: np.ndarray, prefix: str, *, what: str,
               params: FilterParams | None = None) -> np.ndarray:
    """Which 16-byte addresses lie in ``prefix`` (vectorised).

    With ``params``, ``addrs`` are flow sources (prefixes of the configured
    lengths): those that overlap ``prefix``, so an address, or a prefix
    longer than the flows', finds the flow it is counted in.
    """
    try:
        p = Prefix.parse(prefix)
    except ValueError as exc:
        raise ConfigError(f"{what} {printable(prefix, 80)!r}: {exc}") from None
    if params is not None:
        keyed = 96 + params.source_prefix_v4 if p.is_v4 else params.source_prefix_v6
        if p.length > keyed:
            p = Prefix(p.network >> (128 - keyed) << (128 - keyed), keyed)
    out: np.ndarray = PrefixSet.build({p: 1}).contains(addrs)
    return out
