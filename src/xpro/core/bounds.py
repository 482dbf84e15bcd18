"""What a master record read from the store may hold, judged by the reader's clock.

A proxy takes nothing from the master store on trust (docs/sync.rst, "Values
from the store"): a record another proxy -- or anyone who can write the
store -- left there is used only if it is physically possible as this proxy
sees the world at ``now``:

* no timestamp later than ``now + future`` (a couple of sync periods: the
  writer's round cannot be much ahead of the reader's);
* ``ts1 <= ts2`` (a window that ends before it starts was not counted);
* ``c`` no more than the mesh could have counted in the window: the window
  (at most :data:`RATE_WINDOW_CAP`) plus :data:`RATE_SLACK`, times
  ``max_pps`` packets a second (:data:`MAX_PPS`, 2**32, by default: a
  ceiling no real mesh reaches -- 4.3 billion packets a second -- that
  still refuses 2**62, or any count that would overflow a sum); and never
  more than :data:`MAX_COUNT`;
* for the sync, not idle for longer than the TTL (``max_age``): such a
  record has expired and counts as absent.

The same rules run in the stores' merge functions (the Redis function in Lua,
the memory and etcd stores in Python, :mod:`xpro.stores`), which leave a
master record dated in the future as it is (the merge of that record is
refused: the caller's clock may be the one behind) and treat one out of the
other bounds as absent; and in the sync, which checks again what the store
returns.  Rates are compared in float64 (the Lua side
has doubles only): the bound is a ceiling, not a count, so rounding at the
last bit does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from xpro.core.model import NS_PER_S

__all__ = ["COUNT", "FUTURE", "MAX_COUNT", "MAX_PPS", "MAX_SKEW", "OK", "ORDER", "RATE_SLACK",
           "RATE_WINDOW_CAP", "REASONS", "STALE", "Bounds"]

Array = npt.NDArray[Any]

#: Counts above this are garbage (a negative i64 read as u64 is >= 2**63).
MAX_COUNT = 1 << 62
#: The default packets-per-second ceiling of a record's count (2**32).
MAX_PPS = 1 << 32
#: The longest window the count ceiling grows with (one day, in ns).
RATE_WINDOW_CAP = 86_400 * NS_PER_S
#: Added to every window for the count ceiling (1 s): a record created by a
#: burst has a window of a few ns and many packets.
RATE_SLACK = NS_PER_S

#: How far in the future a stored record may be dated before expiry deletes
#: it, and how far a proxy's clock may be off the mesh's and be corrected
#: (ten minutes): records dated a little ahead are a clock's doing, and a
#: proxy whose clock is behind must not delete the others' records.
MAX_SKEW = 600 * NS_PER_S

#: Why a record is out of bounds (0: it is not).
OK, FUTURE, ORDER, COUNT, STALE = 0, 1, 2, 3, 4
REASONS = {FUTURE: "dated in the future", ORDER: "ts1 after ts2",
           COUNT: "count over the bound", STALE: "idle for longer than the TTL"}


@dataclass(frozen=True)
class Bounds:
    """The bounds of a master record at ``now`` (ns, the reader's clock).

    ``future``: how far after ``now`` a timestamp may lie (ns); ``max_age``:
    a record whose ts2 is older than ``now - max_age`` counts as expired
    (None: never); ``max_pps``: the count ceiling's rate (None: only
    :data:`MAX_COUNT`).
    """

    now: int
    future: int = 2 * NS_PER_S
    max_age: int | None = None
    max_pps: int | None = MAX_PPS

    @property
    def limit(self) -> int:
        """The latest timestamp in bounds."""
        return max(0, self.now + self.future)

    @property
    def oldest(self) -> int:
        """The earliest ts2 in bounds (0 without ``max_age``)."""
        return 0 if self.max_age is None else max(0, self.now - self.max_age)

    def ceiling(self, ts1: Array, ts2: Array) -> Array:
        """The highest count in bounds for each window, as float64.

        ``(max_pps / 1e9) * (min(ts2 - ts1, RATE_WINDOW_CAP) + RATE_SLACK)``,
        the window taken exactly and rounded once, as the Redis function
        computes it: the two agree to the last bit.
        """
        t1 = np.asarray(ts1).astype(np.uint64)
        t2 = np.asarray(ts2).astype(np.uint64)
        w = np.where(t2 >= t1, t2 - np.minimum(t1, t2), np.uint64(0)).astype(np.float64)
        w = np.minimum(w, float(RATE_WINDOW_CAP))
        if self.max_pps is None:
            return np.full(len(w), float(MAX_COUNT))
        ppn = self.max_pps / NS_PER_S
        out: Array = ppn * (w + float(RATE_SLACK))
        return out

    def check(self, rec: Array) -> Array:
        """Why each record (fields ts1, ts2, c; u64) is out of bounds: a uint8
        array of :data:`OK`, :data:`FUTURE`, :data:`ORDER`, :data:`COUNT` or
        :data:`STALE`, the first that applies in that order."""
        ts1 = np.asarray(rec["ts1"]).astype(np.uint64)
        ts2 = np.asarray(rec["ts2"]).astype(np.uint64)
        c = np.asarray(rec["c"]).astype(np.uint64)
        lim = np.uint64(self.limit)
        future = (ts1 > lim) | (ts2 > lim)
        order = ts1 > ts2
        count = (c > np.uint64(MAX_COUNT)) | (c.astype(np.float64) > self.ceiling(ts1, ts2))
        stale = ts2 < np.uint64(self.oldest)
        out = np.zeros(len(c), dtype=np.uint8)
        for code, mask in ((STALE, stale), (COUNT, count), (ORDER, order), (FUTURE, future)):
            out[mask] = code
        return out

    def ok(self, rec: Array) -> Array:
        """Which records are in bounds."""
        out: Array = self.check(rec) == OK
        return out
