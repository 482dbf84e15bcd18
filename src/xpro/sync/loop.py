"""The sync loop: a round every period, and the retry policy of the whole sync."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from xpro.core.alert import AlertKind
from xpro.core.status import SyncStats, SyncStatus
from xpro.errors import StoreError, XproError
from xpro.sync.round import Syncer

__all__ = ["SyncLoop"]

log = logging.getLogger(__name__)


class SyncLoop:
    """Runs :meth:`Syncer.round` every period, and keeps going when the master fails.

    ``syncer`` is a :class:`Syncer`, or a function that connects to the
    master and returns one: it is called again until it succeeds, so a
    daemon starts filtering while the store is still unreachable.  While the
    master is unreachable the program keeps filtering on local state; rounds
    (and connections) are retried with exponential backoff (up to
    ``max_backoff`` seconds) and the first failure and the recovery are
    reported through ``on_alert(kind, message)`` (``"store_down"`` /
    ``"store_up"``); every completed round goes to ``on_round(stats)``.  Any
    other exception in a round is logged with its traceback and retried the
    same way: a bug must not stop the sync.  The retry policy lives here and
    only here (docs/sync.rst, "Faults").
    """

    def __init__(self, syncer: Syncer | Callable[[], Syncer], period: float, *,
                 name: str = "", max_backoff: float = 30.0,
                 on_alert: Callable[[AlertKind, str], None] | None = None,
                 on_round: Callable[[SyncStats], None] | None = None) -> None:
        if isinstance(syncer, Syncer):
            self.syncer: Syncer | None = syncer
            self._connect: Callable[[], Syncer] | None = None
            self.name = name or syncer.proxy
        else:
            self.syncer, self._connect = None, syncer
            self.name = name or "proxy"
        self.period = period
        self.max_backoff = max_backoff
        self.on_alert = on_alert
        self.on_round = on_round
        self.status = SyncStatus()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _failed(self, error: str) -> float:
        self.status.failures += 1
        self.status.failed_total += 1
        self.status.last_error = error
        return float(min(self.max_backoff, self.period * 2 ** min(self.status.failures, 10)))

    def step(self) -> float:
        """One round (or one failed attempt); returns the seconds to wait before the next."""
        try:
            if self.syncer is None:
                assert self._connect is not None
                self.syncer = self._connect()
                if self._stop.is_set():  # connected as the stop came: no round
                    return 0.0
            st = self.syncer.round()
        except Exception as exc:
            if self._stop.is_set() and isinstance(exc, StoreError):
                # the stop cut the round short (stop's interrupt): no outage
                log.info("sync %s: the round in progress was cut short by the stop (%s)",
                         self.name, exc)
                return 0.0
            return self._round_failed(exc)
        if not self.status.healthy:
            log.warning("sync %s: master store back after %d failed rounds", self.name,
                        self.status.failures)
            self._alert("store_up", f"master store reachable again after "
                                    f"{self.status.failures} failed rounds")
        self.status.healthy = True
        self.status.failures = 0
        self.status.rounds += 1
        self.status.last_ok = st.started
        self.status.last = st
        if self.on_round is not None:
            try:
                self.on_round(st)
            except Exception:  # a listener must not stop the sync
                log.exception("sync %s: the round's listener failed", self.name)
        return max(0.0, self.period - st.seconds)

    def _round_failed(self, exc: Exception) -> float:
        """Any failed round (or connection) is the mesh's sync down: unhealthy,
        one ``store_down`` alert, retried with backoff.  A store that cannot
        be reached, one that cannot be used (a ``ConfigError`` at connect: a
        mesh of another encoding, an option the store refuses) or a bug."""
        if isinstance(exc, StoreError):
            why = f"master store unreachable: {exc}"
        elif isinstance(exc, XproError):
            why = f"master store unusable: {exc}"
        else:
            why = f"sync round failed: {type(exc).__name__}: {exc}"
            log.error("sync %s: the round failed; retrying", self.name, exc_info=exc)
        if self.status.healthy:
            self.status.healthy = False
            log.error("sync %s: %s; filtering on local state", self.name, why)
            self._alert("store_down", why)
        return self._failed(why)

    def _alert(self, kind: AlertKind, message: str) -> None:
        if self.on_alert is not None:
            try:
                self.on_alert(kind, message)
            except Exception:  # an alert sink must not stop the sync
                log.exception("sync %s: alert sink failed", self.name)

    def run(self) -> None:
        """Run until :meth:`stop`."""
        while not self._stop.is_set():
            wait = self.step()
            self._stop.wait(wait)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"xpro-sync-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0, *, interrupt: Callable[[], None] | None = None,
             grace: float = 5.0) -> None:
        """Stop after the round in progress.  A round still running after
        ``grace`` seconds is taken as blocked (on a master that stopped
        answering: up to the store's timeout, 10 s by default, and its retry
        time; a round that works lasts a few seconds at most, under a spray
        in the lab): ``interrupt`` (the store's ``close``) cuts it short, so
        that the caller does not release what the round still uses; but not
        in the middle of a merge (:attr:`Syncer.merging`), which it waits for
        until a second before ``timeout``.  Waits at most ``timeout`` seconds
        in all."""
        self._stop.set()
        t = self._thread
        if t is None:
            return
        deadline = time.monotonic() + timeout
        t.join(min(grace, timeout))
        while t.is_alive() and getattr(self.syncer, "merging", False) \
                and time.monotonic() < deadline - 1.0:
            t.join(0.05)
        if t.is_alive() and interrupt is not None:
            log.info("sync %s: a round is still running at the stop; cutting it short",
                     self.name)
            try:
                interrupt()
            except Exception:  # the stop goes on
                log.exception("sync %s: interrupting the round failed", self.name)
        t.join(max(0.0, deadline - time.monotonic()))

    @property
    def running(self) -> bool:
        """Whether the loop's thread is alive (a stop that timed out leaves it so)."""
        return self._thread is not None and self._thread.is_alive()

