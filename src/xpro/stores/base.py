"""The master store: where proxies share their flow records (Algorithm 1).

A store keeps, per flow key, the master record (ts1, ts2, c) and applies the
master side of :func:`xpro.core.model.merge` atomically per record, in bulk.
Implementations are plugins (``xpro_add_stores``), selected by URL scheme:
``memory://``, ``redis://``, ``rediss://``, ``redis+cluster://``, ``etcd://``.

Everything moves as numpy structured arrays (docs/sync.rst, "One round"): keys are
:data:`xpro.core.layout.FLOW_KEY`, records :data:`MASTER` and :data:`LOCAL`.
Errors: :class:`~xpro.errors.StoreUnavailable` when the server cannot be
reached (the sync retries), :class:`~xpro.errors.BadRecord` for data that does
not parse or is out of bounds (skipped and logged, never fatal).

Nothing read from a store is trusted further than :class:`xpro.core.bounds.Bounds`
allows (docs/sync.rst, "Values from the store"): the merge treats a master
record out of bounds as absent, and what a store skipped as bad is reported
through :meth:`Store.take_rejected`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from xpro.core.bounds import Bounds
from xpro.core.layout import MASTER
from xpro.core.model import SyncParams
from xpro.core.status import ProxyStatus

__all__ = ["MAX_REJECTED", "REFUSED", "Store"]

#: The ``before`` of a record a merge refused to apply (its bucket's call
#: failed on bad data, say): every field all ones, with ``existed`` False.
#: Its ``dc`` is not in the master; the sync keeps it for the next round.
REFUSED = np.array([((1 << 64) - 1,) * 3], dtype=MASTER)[0]

#: At most this many rejected values are kept between two take_rejected().
MAX_REJECTED = 10_000


class Store(abc.ABC):
    """One connection to a master store, for one mesh (a key namespace)."""

    #: URL schemes this class serves.
    schemes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: str, *, mesh: str = "xpro", options: Mapping[str, Any] | None = None
                 ) -> Store:
        """Connect (lazily or not) to the store at ``url``; keys live under ``mesh``."""

    @abc.abstractmethod
    def merge(self, keys: np.ndarray, local: np.ndarray, params: SyncParams,
              bounds: Bounds | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Apply the master side of :func:`xpro.core.model.merge` to each key, atomically per key.

        ``keys`` (FLOW_KEY, no duplicates) and ``local`` (LOCAL) are parallel
        arrays.  For each i: ``master' = merge(local[i], master, params)[1]``
        is stored, where ``master`` is the record as it was, or None if there
        is none or it is out of ``bounds`` (the caller's clock and limits;
        None: the store's own clock, ``max_future`` and the default count
        ceiling).  Returns ``(existed, before)``: a bool array and the MASTER
        records as they were before this merge (zeros where none existed or
        the record was out of bounds), from which the caller computes the
        same ``local'`` with :func:`xpro.core.model.merge`.  A record the
        store could not merge comes back as :data:`REFUSED`.

        If it raises :class:`~xpro.errors.StoreError`, the batch may or may not
        have been applied; calling it again on the same object with the same
        arrays applies each record at most once and returns what the first
        application saw (the sync relies on this to replay a failed merge).
        """

    @abc.abstractmethod
    def changes(self, cursor: Any | None, limit: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, Any]:
        """Master records changed since ``cursor`` (all of them for None).

        Returns ``(keys, records, new_cursor)``; the cost follows the number of
        changes, not the size of the table (docs/sync.rst, "One round").  With
        a ``limit``, about that many at most (a store reads in whole units --
        a change-log entry, a page -- and may go over by one); the others come
        with the next call from the new cursor, whose attribute ``more`` is
        True while some were left.
        """

    @abc.abstractmethod
    def heartbeat(self, proxy: str, workload: float, now: int, offset: int | None = None
                  ) -> None:
        """Publish this proxy's workload W and liveness (Algorithm 1, line 1), and
        its clock's offset to the store's (ns, :meth:`clock`) if it measured one."""

    @abc.abstractmethod
    def proxies(self) -> dict[str, ProxyStatus]:
        """Every proxy's last heartbeat (Algorithm 1, line 2)."""

    @abc.abstractmethod
    def expire(self, before: int, bounds: Bounds | None = None) -> int:
        """Delete master records whose ts2 is older than ``before``, or that are out
        of ``bounds`` (dated in the future, say; None: the store's own clock and
        limits); return how many."""

    def clock(self) -> int | None:
        """The store's clock now (ns since the epoch), or None if it has none the
        proxies can read: the sync measures each proxy's offset to it and takes
        the store as the mesh's time base (docs/sync.rst, "Clocks")."""
        return None

    def lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew the mesh-wide lease ``name`` for ``holder``; True if it holds it.

        The lease lasts ``seconds`` (by the store's clock where it has one)
        unless renewed; while it lasts nobody else gets it.  The sync expires
        the master only while it holds the lease ``expire``, so one proxy of
        the mesh does it (docs/sync.rst, "Bounded work").  A store without
        leases says yes to everyone.
        """
        return True

    def take_rejected(self) -> list[tuple[str, str]]:
        """The values this store skipped as bad since the last call: (what, why) pairs.

        ``what`` names the value (a flow key in hex, ``heartbeat NAME``,
        ``config FIELD``); at most :data:`MAX_REJECTED` are kept.
        """
        out: list[tuple[str, str]] = self.__dict__.get("_rejected") or []
        self.__dict__["_rejected"] = []
        return out

    def reject(self, what: str, why: str) -> None:
        """Note a value skipped as bad (see :meth:`take_rejected`)."""
        lst: list[tuple[str, str]] = self.__dict__.setdefault("_rejected", [])
        if len(lst) < MAX_REJECTED:
            lst.append((what, why))

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
