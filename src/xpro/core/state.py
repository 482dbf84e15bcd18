"""The flow state a data path keeps, as the sync and the daemon see it.

The control program's operations and results (``XPRO_APPLY_*`` and
``enum xpro_apply_result`` in ``bpf/xpro_shared.h``), the :class:`FilterState`
protocol that the kernel filter and the AF_XDP filter both meet, and the
builder of control-program batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from xpro.core import layout as L
from xpro.core.model import FilterParams

__all__ = ["APPLIED", "APPLY_MAX", "GEN_MISMATCH", "MISSING", "NO_RECORD", "OP_CREATE",
           "OP_DELETE", "OP_DST", "OP_FLOW", "OP_KEEP_BASE", "OP_READ", "RACED", "FilterState",
           "apply_entries"]

Array = npt.NDArray[Any]

APPLY_MAX = 8192  # XPRO_APPLY_MAX in bpf/xpro_shared.h

#: Control-program operations (XPRO_APPLY_* in bpf/xpro_shared.h).
OP_FLOW = 0x1
OP_DST = 0x2
OP_READ = 0x4
OP_CREATE = 0x10
OP_DELETE = 0x20
#: With OP_FLOW: add ``c_delta`` and leave ``base_c`` alone, so the packets
#: count as this proxy's own at the next sync (counts made outside the program).
OP_KEEP_BASE = 0x40

#: Control-program results (enum xpro_apply_result in bpf/xpro_shared.h).
APPLIED = 0
#: A packet got there first (the record was reset, created or counted since
#: the read): nothing changed, the next round retries.
RACED = 1
#: No record (and no OP_CREATE, or the create failed).
MISSING = 2
#: Older names of RACED and MISSING.
GEN_MISMATCH = RACED
NO_RECORD = MISSING


@runtime_checkable
class FilterState(Protocol):
    """What the sync, the daemon and the CLI need of a data path's flow state.

    :class:`XdpFilter` (the kernel program) and
    :class:`xpro.datapath.afxdp.filter.UserFilter` (the AF_XDP path) both provide it,
    so :class:`xpro.sync.Syncer` and :class:`xpro.daemon.Proxy` work on
    either unchanged.  ``cfg.view`` exposes the configuration fields
    (``fake_now``, ``clock_offset``, ``epoch``...).
    """

    params: FilterParams
    cfg: Any

    @property
    def epoch(self) -> int: ...
    def configure(self, params: FilterParams, *, clock_offset: int | None = None) -> None: ...
    def sync_clock(self) -> int: ...
    def set_clock(self, fake_now: int) -> None: ...
    def now(self) -> int: ...
    def read_flows(self) -> tuple[Array, Array]: ...
    def read_dsts(self) -> tuple[Array, Array]: ...
    def read_dsts_of(self, keys: Array) -> tuple[Array, Array]: ...
    def read(self, keys: Array) -> tuple[Array, Array]: ...
    def apply(self, entries: Array, out: Array | None = None) -> Array: ...
    def counters(self) -> Array: ...
    def next_epoch(self) -> int: ...
    def take_dirty(self, epoch: int) -> Array: ...
    def peek_dirty(self, epoch: int) -> Array: ...
    def dirty_lost(self) -> int: ...
    def set_known(self, keys: Array, classes: Any) -> None: ...
    def drop_known(self, keys: Array) -> int: ...
    def read_known(self) -> tuple[Array, Array]: ...
    def events(self, callback: Callable[[Any], object]) -> Any: ...
    def close(self) -> None: ...


def apply_entries(keys: Iterable[bytes] | Array, op: int | Array, *, gen: Any = 0,
                  c_delta: Any = 0, ts1: Any = 0, ts2: Any = 0, base_c: Any = 0,
                  kc_delta: Any = None) -> Array:
    """Build an APPLY array from parallel columns (scalars broadcast).

    ``kc_delta`` (OP_DST only) is the signed delta added to a destination's
    ``kc``; it travels in the ``base_c`` field, which DST operations do not
    otherwise use (``struct xpro_apply`` in ``bpf/xpro_shared.h``).
    """
    karr = keys if isinstance(keys, np.ndarray) else np.frombuffer(
        b"".join(keys), dtype=L.FLOW_KEY)
    e = np.zeros(len(karr), dtype=L.APPLY)
    e["key"] = karr
    e["op"], e["gen"], e["c_delta"], e["ts1"], e["ts2"] = op, gen, c_delta, ts1, ts2
    if kc_delta is None:
        e["base_c"] = base_c
    else:
        e["base_c"] = np.broadcast_to(np.asarray(kc_delta, dtype=np.int64),
                                      (len(karr),)).view(np.uint64)
    return e


