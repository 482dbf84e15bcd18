"""The recent rate of an aggregate (docs/semantics.rst, "The recent rate"):
the model's rule, and the sync's arrays against it."""

from __future__ import annotations

import random

import numpy as np
import pytest

from xpro.core import model
from xpro.sync.aggregates import RecentCounts, recent_starts

pytestmark = pytest.mark.unit

S = model.NS_PER_S
T0 = 1_700_000_000 * S
P = model.FilterParams(t_t1=10 * S, t_t2=S, t_f1=100, t_t3=S, t_f2=10_000)


def rec(ts1: int, c: int) -> model.DstRecord:
    return model.DstRecord(ts1=ts1, ts2=T0, c=c, kc=0)


def test_a_flood_after_established_clients_is_judged_over_its_own_window() -> None:
    """Clients at 200 packets/s for 4 s, then 30,000 packets/s for 0.6 s: over
    the whole window 4,600 packets/s (open); the gain since the recompute
    1.5 s ago is 18,000 over 1.5 s, 12,000 packets/s (over T_F2)."""
    now = T0
    c = 200 * 4 + 18_000
    history = [(now - 15 * S // 10, 800), (now - S // 2, 1_000)]
    r = rec(now - 4 * S, c)
    assert not model.rate_exceeds(r.c, now - r.ts1, P.t_f2)
    start = model.recent_start(r, history, now, P, P.t_f2)
    assert r.ts1 < start <= now - P.t_t3
    assert model.rate_exceeds(r.c, now - start, P.t_f2)
    # The rate judged is the recent one, to the nanosecond.
    assert (now - start) == (15 * S // 10) * c // (c - 800)


@pytest.mark.parametrize(("history", "c", "why"), [
    ([], 20_000, "no history"),
    ([(T0 - S // 2, 0)], 20_000, "none older than T_T3"),
    ([(T0 - 2 * S, 10_000)], 25_000, "7,500 packets/s since: under T_F2"),
    ([(T0 - 2 * S, 30_000)], 25_000, "the count fell (flows aged out)"),
])
def test_the_start_stays_where_the_recent_rate_is_not_over(
        history: list[tuple[int, int]], c: int, why: str) -> None:
    r = rec(T0 - 5 * S, c)
    assert model.recent_start(r, history, T0, P, P.t_f2) == r.ts1, why


def test_the_gain_is_held_to_the_budget() -> None:
    """A count the mesh's published rates do not back (a forged partial) is
    not a recent rate."""
    r = rec(T0 - 9 * S, 60_000)  # 6,667 packets/s over its window
    history = [(T0 - 2 * S, 1_000)]
    assert model.recent_start(r, history, T0, P, P.t_f2) > r.ts1
    assert model.recent_start(r, history, T0, P, P.t_f2, budget=20_000) == r.ts1
    assert model.recent_start(r, history, T0, P, P.t_f2, budget=30_000) > r.ts1


def test_the_window_judged_is_never_shorter_than_t_t3_nor_moved_back() -> None:
    """The whole window over T_F2 already, with a higher rate: kept."""
    r = rec(T0 - 2 * S, 100_000)
    assert model.recent_start(r, [(T0 - 3 * S, 0)], T0, P, P.t_f2) == r.ts1
    r = rec(T0 - 9 * S, 90_000)
    start = model.recent_start(r, [(T0 - S - 1, 0)], T0, P, P.t_f2)
    assert T0 - start > P.t_t3


def test_the_arrays_agree_with_the_model() -> None:
    """Random histories kept in :class:`RecentCounts` (rounds a period apart,
    some skipped, ids forgotten) against :func:`model.recent_start`."""
    rnd = random.Random(7)
    period = S // 2
    rc = RecentCounts()
    rc.fit(P.t_t3)
    n = 40
    hist: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    counts = [0] * n
    checked = moved = 0
    for rnd_no in range(60):
        now = T0 + rnd_no * period + rnd.randrange(period // 4)
        ids = np.array(sorted(rnd.sample(range(n), rnd.randrange(1, n))), dtype=np.int64)
        for i in ids.tolist():
            counts[i] = max(0, counts[i] + rnd.choice([-500, 0, 300, 3_000, 12_000, 40_000]))
        c = np.array([counts[i] for i in ids.tolist()], dtype=np.int64)
        ts1 = now - np.array([rnd.randrange(S, 8 * S) for _ in ids], dtype=np.int64)
        has = np.array([rnd.random() < 0.9 for _ in ids])
        budget = np.array([rnd.choice([1e12, 20_000.0, 5_000.5]) for _ in ids])
        limit = np.array([rnd.choice([P.t_f2, 500]) for _ in ids], dtype=np.int64)
        t_h, c_h = rc.latest_before(ids, now - P.t_t3)
        got = recent_starts(ts1, c, has, t_h, c_h, now, limit, budget)
        rc.record(ids[has], c[has], now)
        for j, i in enumerate(ids.tolist()):
            if not has[j]:
                assert got[j] == ts1[j]
                continue
            want = model.recent_start(rec(int(ts1[j]), int(c[j])), hist[i], now, P,
                                      int(limit[j]), budget=int(budget[j]))
            assert got[j] == want, (rnd_no, i)
            checked += 1
            moved += want != ts1[j]
            if not hist[i] or now - hist[i][-1][0] >= rc.spacing:
                hist[i].append((now, int(c[j])))
        if rnd_no % 17 == 16:
            gone = rnd.sample(range(n), 3)
            rc.forget(np.array(gone))
            for i in gone:
                hist[i] = []
    assert checked > 1000, checked
    assert moved > 30, moved


@pytest.mark.parametrize("step", [S // 50, S // 7, S // 2, 3 * S])
def test_the_ring_reaches_past_t_t3_whatever_the_period(step: int) -> None:
    """Rounds 20 ms to 3 s apart, for 12 s: the latest entry older than T_T3
    is the one the full history has, kept or skipped by the spacing."""
    rc = RecentCounts()
    rc.fit(P.t_t3)
    ids = np.array([3], dtype=np.int64)
    kept: list[int] = []
    for k in range(12 * S // step):
        now = T0 + k * step
        before = [t for t in kept if t < now - P.t_t3]
        t_h, _ = rc.latest_before(ids, now - P.t_t3)
        assert int(t_h[0]) == (max(before) if before else 0), k
        if before:  # never further back than T_T3, a spacing and a step
            assert now - int(t_h[0]) <= P.t_t3 + rc.spacing + step
        rc.record(ids, np.array([k]), now)
        if not kept or now - kept[-1] >= rc.spacing:
            kept.append(now)
    assert len(kept) > 2
