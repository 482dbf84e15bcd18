"""Helpers shared by the store tests."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import numpy as np

from xpro.core import model
from xpro.core.layout import FLOW_KEY, LOCAL
from xpro.stores.base import Store

S = model.NS_PER_S


def now_ns() -> int:
    return time.time_ns()


def keys(n: int, seed: int | None = None) -> np.ndarray:
    """``n`` distinct random flow keys."""
    rng = np.random.default_rng(seed)
    out = np.frombuffer(rng.bytes(36 * n), dtype=FLOW_KEY).copy()
    assert len(np.unique(out.view("V36"))) == n
    return out


def locals_(rows: Iterable[Sequence[int]]) -> np.ndarray:
    """LOCAL array from (ts1, ts2, c, dc, mark) rows."""
    rows = list(rows)
    arr = np.zeros(len(rows), dtype=LOCAL)
    for i, (ts1, ts2, c, dc, mark) in enumerate(rows):
        arr[i] = (ts1, ts2, c, dc, mark, 0)
    return arr


def seed_master(store: Store, k: np.ndarray, masters: Sequence[model.Master]) -> None:
    """Create master records with exactly these values (a merge into nothing)."""
    loc = locals_((m.ts1, m.ts2, m.c, 0, 0) for m in masters)
    existed, _ = store.merge(k, loc, model.SyncParams())
    assert not existed.any()


def read_all(store: Store) -> dict[bytes, tuple[int, int, int]]:
    k, r, _ = store.changes(None)
    return {bytes(a.tobytes()): (int(b["ts1"]), int(b["ts2"]), int(b["c"]))
            for a, b in zip(k, r, strict=True)}


def as_dict(k: np.ndarray, r: np.ndarray) -> dict[bytes, tuple[int, int, int]]:
    return {bytes(a.tobytes()): (int(b["ts1"]), int(b["ts2"]), int(b["c"]))
            for a, b in zip(k, r, strict=True)}


def to_local(row: np.void) -> model.Local:
    return model.Local(int(row["ts1"]), int(row["ts2"]), int(row["c"]), int(row["dc"]),
                       int(row["mark"]))
