"""Algorithm 1's merge over whole arrays: :func:`xpro.core.model.merge`, vectorised.

The sync merges every changed flow each period; a Python loop per record
costs microseconds each, which at 100k flows is the whole period
(docs/sync.rst, "One round").  This is the same function over numpy arrays,
branch for branch, and
``tests/unit/test_merge.py`` checks it against the model on random records.
Timestamps and counts are handled as int64 (nanoseconds of TAI fit until
2262; counts far below 2**63).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from xpro.core.layout import LOCAL, MASTER
from xpro.core.model import NS_PER_S, R_DEN, SyncParams

__all__ = ["merge_arrays", "products_exceed", "rate_exceeds_array"]

Array = npt.NDArray[Any]


def _div_r(x: Array, r_q: int) -> Array:
    """``floor(x * R_DEN / r_q)`` for 0 <= x < 2**63, without overflowing int64."""
    q, rem = np.divmod(x, r_q)
    out: Array = q * R_DEN + rem * R_DEN // r_q
    return out


def merge_arrays(local: Array, local_exists: Array, master: Array, master_exists: Array,
                 params: SyncParams, span: int | Array | None = None
                 ) -> tuple[Array, Array]:
    """Merge parallel arrays of LOCAL and MASTER records; returns (local', master').

    Where neither side exists the outputs are zeros.  Everything the model
    does per record happens here per element, with masks for the branches;
    ``span`` as in :func:`xpro.core.model.adopt` (the local window's cut),
    one for all records or one per record.
    """
    n = len(local)
    lt1 = local["ts1"].astype(np.int64)
    lt2 = local["ts2"].astype(np.int64)
    lc = local["c"].astype(np.int64)
    ldc = local["dc"].astype(np.int64)
    mark = local["mark"] == 1
    mt1 = master["ts1"].astype(np.int64)
    mt2 = master["ts2"].astype(np.int64)
    mc = master["c"].astype(np.int64)
    le = np.asarray(local_exists, dtype=bool)
    me = np.asarray(master_exists, dtype=bool)
    both = le & me

    # Outputs start as "both exist, not reset" and are patched per branch.
    o_lt1, o_lt2 = lt1.copy(), lt2.copy()
    o_mt1, o_mt2, o_mc = mt1.copy(), mt2.copy(), mc.copy()

    # Lines 11-17.
    later = lt2 < mt2
    shorten = ~later & (lt2 - mt1 > params.t_t4)
    plain = ~later & ~shorten
    o_lt2 = np.where(later, mt2, o_lt2)
    new_t1 = lt2 - _div_r(np.where(shorten, lt2 - mt1, 0), params.r_q)
    o_lt1 = np.where(shorten, new_t1, o_lt1)
    o_mc = np.where(shorten, _div_r(mc, params.r_q), o_mc)
    o_mt1 = np.where(shorten, new_t1, o_mt1)
    o_mt2 = np.where(shorten | plain, lt2, o_mt2)
    # Lines 19-22.
    # (changed: the local window starts where the master's does; see model.merge)
    o_lt1 = o_mt1.copy()
    # Line 24.
    part = o_mc  # the master's count in the local one (model.adopt)
    o_lc = o_mc + ldc
    o_mc = o_lc

    # Lines 6-8: a local reset replaces the master's window.
    reset = both & mark & (lt1 - mt1 > params.t_t1)
    # Lines 31-33: only local -> the master takes it as it is.
    only_local = le & ~me
    take_local = reset | only_local
    o_lt1 = np.where(take_local, lt1, o_lt1)
    o_lt2 = np.where(take_local, lt2, o_lt2)
    o_lc = np.where(take_local, lc, o_lc)
    o_mt1 = np.where(take_local, lt1, o_mt1)
    o_mt2 = np.where(take_local, lt2, o_mt2)
    o_mc = np.where(take_local, lc, o_mc)
    # Lines 27-28: only in the master -> the local record is created from it.
    only_master = me & ~le
    o_lt1 = np.where(only_master, mt1, o_lt1)
    o_lt2 = np.where(only_master, mt2, o_lt2)
    o_lc = np.where(only_master, mc, o_lc)
    o_mt1 = np.where(only_master, mt1, o_mt1)
    o_mt2 = np.where(only_master, mt2, o_mt2)
    o_mc = np.where(only_master, mc, o_mc)
    # The local window takes at most span of the master's (model.adopt).
    if span is not None:
        sp = np.broadcast_to(np.asarray(span, dtype=np.int64), (n,))
        w = o_lt2 - o_lt1
        cut = me & ~take_local & (w > sp)
        if cut.any():
            part = np.where(only_master, mc, part)[cut]
            dc = np.where(only_master, 0, ldc)[cut]
            scaled = np.floor(part.astype(np.float64) * sp[cut].astype(np.float64)
                              / w[cut].astype(np.float64))
            o_lc[cut] = np.minimum(part, scaled.astype(np.int64)) + dc
            o_lt1[cut] = o_lt2[cut] - sp[cut]

    out_local = np.zeros(n, dtype=LOCAL)
    out_master = np.zeros(n, dtype=MASTER)
    any_ = le | me
    out_local["ts1"] = np.where(any_, o_lt1, 0)
    out_local["ts2"] = np.where(any_, o_lt2, 0)
    out_local["c"] = np.where(any_, o_lc, 0)
    out_master["ts1"] = np.where(any_, o_mt1, 0)
    out_master["ts2"] = np.where(any_, o_mt2, 0)
    out_master["c"] = np.where(any_, o_mc, 0)
    # dc and mark are consumed by every merge (left zero).
    return out_local, out_master


def products_exceed(a: Array, ka: int, b: Array, kb: int, *, strict: bool = True) -> Array:
    """``a * ka > b * kb`` (``>=`` unless ``strict``) for integer arrays ``a``,
    ``b`` and integers ``ka``, ``kb`` >= 0, exactly.

    In int64 when no product can overflow; otherwise in doubles where they
    are far apart (relative error below 1e-15: the comparison cannot be
    wrong), and in Python integers for the few that are not (a very long
    window at a high limit: a T_F1 near 2**32 takes that path for every
    flow, and object arrays cost a microsecond an element).
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if len(a) == 0:
        return np.zeros(0, dtype=bool)
    big = 2**62

    def small(x: Array, k: int) -> bool:  # no |x * k| reaches 2**62 (np.abs(-2**63) < 0)
        lim = big // max(k, 1)
        return -lim < int(x.min()) and int(x.max()) < lim

    if small(a, ka) and small(b, kb):
        return np.asarray(a * ka > b * kb if strict else a * ka >= b * kb)
    fa = a.astype(np.float64) * float(ka)
    fb = b.astype(np.float64) * float(kb)
    out: Array = fa > fb if strict else fa >= fb
    close = np.flatnonzero(np.abs(fa - fb) <= 1e-12 * np.maximum(np.abs(fa), np.abs(fb)))
    if len(close):
        lhs = a[close].astype(object) * ka
        rhs = b[close].astype(object) * kb
        out[close] = np.asarray(lhs > rhs if strict else lhs >= rhs, dtype=bool)
    return out


def rate_exceeds_array(count: Array, window: Array, limit: int) -> Array:
    """:func:`xpro.core.model.rate_exceeds` over arrays: ``count * 1e9 > limit * window``,
    exactly (:func:`products_exceed`)."""
    return products_exceed(count, NS_PER_S, window, limit)
