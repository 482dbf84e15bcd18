"""The vectorised merge equals the model's, record by record."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpro.core import model
from xpro.core.layout import LOCAL, MASTER
from xpro.core.merge import merge_arrays, products_exceed, rate_exceeds_array

pytestmark = pytest.mark.unit

S = model.NS_PER_S
T0 = 1_700_000_000 * S
ts = st.integers(T0, T0 + 60 * S)
window = st.integers(0, 30 * S)


@st.composite
def cases(draw: st.DrawFn) -> tuple[model.Local | None, model.Master | None]:
    loc = None
    if draw(st.integers(0, 4)):
        t1 = draw(ts)
        loc = model.Local(t1, t1 + draw(window), draw(st.integers(0, 10**9)),
                          draw(st.integers(0, 10**6)), draw(st.integers(0, 1)))
    mas = None
    if draw(st.integers(0, 4)):
        t1 = draw(ts)
        mas = model.Master(t1, t1 + draw(window), draw(st.integers(0, 10**9)))
    return loc, mas


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(cases(), min_size=1, max_size=50),
       t_t1=st.integers(0, 20 * S), t_t4=st.integers(0, 20 * S), r=st.integers(1025, 8 * 1024),
       span=st.none() | st.integers(0, 40 * S))
def test_vectorised_merge_matches_model(rows: list[tuple[model.Local | None, model.Master | None]],
                                        t_t1: int, t_t4: int, r: int, span: int | None) -> None:
    params = model.SyncParams(t_t1=t_t1, t_t4=t_t4, r_q=r)
    n = len(rows)
    local = np.zeros(n, dtype=LOCAL)
    master = np.zeros(n, dtype=MASTER)
    for i, (lo, ma) in enumerate(rows):
        if lo:
            local[i] = (lo.ts1, lo.ts2, lo.c, lo.dc, lo.mark, 0)
        if ma:
            master[i] = (ma.ts1, ma.ts2, ma.c)
    le = np.array([lo is not None for lo, _ in rows])
    me = np.array([ma is not None for _, ma in rows])
    # one span for all, or one each (the sync's rows whose counts may be older)
    spans = [span if span is None or i % 3 else span // 2 for i in range(n)]
    out_l, out_m = merge_arrays(local, le, master, me, params,
                                span if span is None else np.array(spans, dtype=np.int64))
    for i, (lo, ma) in enumerate(rows):
        want_l, want_m = model.merge(lo, ma, params, spans[i])
        got_l = tuple(int(x) for x in out_l[i][["ts1", "ts2", "c"]].tolist())
        got_m = tuple(int(x) for x in out_m[i].tolist())
        assert got_l == ((want_l.ts1, want_l.ts2, want_l.c) if want_l else (0, 0, 0)), i
        assert got_m == ((want_m.ts1, want_m.ts2, want_m.c) if want_m else (0, 0, 0)), i


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_threshold_boundaries(delta: int) -> None:
    """Each strict comparison of Algorithm 1 at, below and above its threshold."""
    p = model.SyncParams(t_t1=10 * S, t_t4=5 * S, r_q=2 * model.R_DEN)
    rows = [
        # line 13: ts2' - ts1 vs T_T4
        (model.Local(T0 + S, T0 + 5 * S + delta, 10, 3, 0), model.Master(T0, T0 + S, 7)),
        # line 6: ts1' - ts1 vs T_T1 (marked)
        (model.Local(T0 + 10 * S + delta, T0 + 11 * S, 10, 10, 1), model.Master(T0, T0 + S, 7)),
        # line 21: ts2' - ts1' vs T_T4 with ts1' <= ts1
        (model.Local(T0, T0 + 5 * S + delta, 10, 3, 0), model.Master(T0 + S, T0 + 6 * S, 7)),
    ]
    n = len(rows)
    local = np.array([(lo.ts1, lo.ts2, lo.c, lo.dc, lo.mark, 0) for lo, _ in rows], dtype=LOCAL)
    master = np.array([(ma.ts1, ma.ts2, ma.c) for _, ma in rows], dtype=MASTER)
    out_l, out_m = merge_arrays(local, np.ones(n, bool), master, np.ones(n, bool), p)
    for i, (lo, ma) in enumerate(rows):
        want_l, want_m = model.merge(lo, ma, p)
        assert want_l is not None
        assert want_m is not None
        assert tuple(out_l[i][["ts1", "ts2", "c"]].tolist()) == (want_l.ts1, want_l.ts2, want_l.c)
        assert tuple(out_m[i].tolist()) == (want_m.ts1, want_m.ts2, want_m.c)


def test_old_master_and_huge_counts_do_not_overflow() -> None:
    """A master record 200 days old and a count near 2**62: exact, as the model."""
    p = model.SyncParams(t_t1=10 * S, t_t4=5 * S, r_q=2 * model.R_DEN + 1)
    lo = model.Local(T0 + 200 * 86400 * S, T0 + 200 * 86400 * S + S, 5, 5, 0)
    ma = model.Master(T0, T0 + S, 2**62 - 1)
    local = np.array([(lo.ts1, lo.ts2, lo.c, lo.dc, lo.mark, 0)], dtype=LOCAL)
    master = np.array([(ma.ts1, ma.ts2, ma.c)], dtype=MASTER)
    out_l, out_m = merge_arrays(local, np.ones(1, bool), master, np.ones(1, bool), p)
    want_l, want_m = model.merge(lo, ma, p)
    assert want_l is not None
    assert want_m is not None
    assert tuple(out_l[0][["ts1", "ts2", "c"]].tolist()) == (want_l.ts1, want_l.ts2, want_l.c)
    assert tuple(out_m[0].tolist()) == (want_m.ts1, want_m.ts2, want_m.c)


def test_a_local_window_takes_at_most_the_span_of_the_masters() -> None:
    """A master window that starts long ago (written by anyone who can write
    the store): the local record keeps the master's rate over the span, and
    this proxy's own packets whole; the master record is not cut."""
    p = model.SyncParams(t_t1=10 * S, t_t4=5 * S, r_q=2 * model.R_DEN)
    lo = model.Local(T0 + 8 * S, T0 + 10 * S, 1000, 1000, 0)  # 500/s here
    for ma, want in [
        # the window starts in 1970: before, 1000 packets over 850 million s
        (model.Master(0, T0 + 9 * S, 1), model.Local(T0 + 5 * S, T0 + 10 * S, 1000, 0, 0)),
        # a day: the master's packets (1/s; halved over half the window by
        # line 14) keep their rate over 5 s: 4 of them (floored)
        (model.Master(T0 - 86_400 * S, T0 + 9 * S, 86_400),
         model.Local(T0 + 5 * S, T0 + 10 * S, 1000 + 4, 0, 0)),
    ]:
        got_l, got_m = model.merge(lo, ma, p, span=5 * S)
        assert got_l == want
        assert got_m is not None
        assert got_m.ts1 < T0 - 3600 * S  # (halved by line 14, not cut)
        assert model.merge(lo, ma, p)[1] == got_m
    # only in the master: the record created here is cut the same way
    got_l, _ = model.merge(None, model.Master(0, T0, 7), p, span=5 * S)
    assert got_l == model.Local(T0 - 5 * S, T0, 0, 0, 0)
    # within the span, nothing changes
    ma = model.Master(T0 + 7 * S, T0 + 9 * S, 40)
    assert model.merge(lo, ma, p, span=5 * S) == model.merge(lo, ma, p)


_I63 = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_I63, _I63), min_size=1, max_size=20),
       st.integers(0, 10**12), st.integers(0, 2**40), st.booleans())
def test_products_compare_exactly(rows: list[tuple[int, int]], ka: int, kb: int,
                                  strict: bool) -> None:
    """Against Python integers, with ties and near-ties made on purpose: a
    double alone would call ``a * ka`` and ``a * ka + 1`` equal."""
    rows = rows + [(b * kb // ka if ka else 0, b) for _, b in rows]  # ties and near-ties
    a = np.array([r[0] for r in rows if -(2**63) <= r[0] < 2**63], dtype=np.int64)
    b = np.array([r[1] for r in rows if -(2**63) <= r[0] < 2**63], dtype=np.int64)
    got = products_exceed(a, ka, b, kb, strict=strict)
    want = [(int(x) * ka > int(y) * kb) if strict else (int(x) * ka >= int(y) * kb)
            for x, y in zip(a, b, strict=True)]
    assert got.tolist() == want


def test_rate_exceeds_array_on_a_limit_near_two_to_the_32() -> None:
    """The sync bench's benign T_F1 (2**32 - 1) and windows of seconds: past
    int64, so compared in doubles, exactly at the boundary as the model."""
    limit = 2**32 - 1
    window = np.array([10**10, 10**10, 10**10, 3 * 10**9], dtype=np.int64)
    count = np.array([limit * 10, limit * 10 + 1, limit * 10 - 1, 1], dtype=np.int64)
    got = rate_exceeds_array(count, window, limit).tolist()
    assert got == [model.rate_exceeds(int(c), int(w), limit)
                   for c, w in zip(count, window, strict=True)]
    assert got == [False, True, False, False]
