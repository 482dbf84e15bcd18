"""The store contract, run on every backend: memory, Redis, Redis Cluster, etcd, etcd cluster.

Each test opens its stores through ``store_factory`` (one Store per proxy) on
a fresh mesh, against real servers started by ``conftest.py``.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.stores._util import S, as_dict, keys, locals_, now_ns, read_all, seed_master, to_local
from xpro.core import model, pull
from xpro.core.bounds import Bounds
from xpro.core.layout import LOCAL, MASTER
from xpro.core.model import R_DEN, SyncParams
from xpro.errors import BadRecord, ConfigError
from xpro.stores._common import key_list
from xpro.stores.base import REFUSED, Store

pytestmark = pytest.mark.integration

NOW = now_ns()
DAY = 86_400 * S


def loose() -> Bounds:
    """Bounds that refuse only what no merge can take (the arithmetic is tested)."""
    return Bounds(now=now_ns(), future=DAY, max_pps=None)


def _check_against_model(store: Store, masters: list[model.Master | None],
                         locals_rows: list[tuple[int, int, int, int, int]], params: SyncParams,
                         seed: int, bounds: Bounds | None = None) -> None:
    """Seed the masters, merge the locals, compare every record with model.merge
    (of the master if it is within ``bounds``, else of nothing)."""
    n = len(locals_rows)
    k = keys(n, seed)
    have = [i for i, m in enumerate(masters) if m is not None]
    if have:
        seed_master(store, k[have], [masters[i] for i in have])  # type: ignore[misc]
    _, _, cursor = store.changes(None)
    loc = locals_(locals_rows)
    b = bounds or loose()
    masters = [m if m is not None and b.ok(np.array([(m.ts1, m.ts2, m.c)], dtype=MASTER))[0]
               else None for m in masters]
    existed, before = store.merge(k, loc, params, bounds=b)
    ck, cr, _ = store.changes(cursor)
    got = as_dict(ck, cr)
    assert len(got) == n, "changes() must return exactly the records this merge changed"
    for i in range(n):
        m = masters[i]
        assert bool(existed[i]) == (m is not None)
        if m is not None:
            assert (int(before[i]["ts1"]), int(before[i]["ts2"]), int(before[i]["c"])) == (
                m.ts1, m.ts2, m.c)
        else:
            assert int(before[i]["c"]) == 0
        _, want = model.merge(to_local(loc[i]), m, params)
        assert want is not None
        assert got[k[i].tobytes()] == (want.ts1, want.ts2, want.c), (
            f"record {i}: local={locals_rows[i]} master={m} params={params}")


# ---------------------------------------------------------------------------
# The merge equals model.merge, record by record
# ---------------------------------------------------------------------------

# Every branch of Algorithm 1 (lines 6-8, 11-12, 13-15, 17, 19-20, 21-22),
# in the Lua fast path (timestamps near now) and its exact 32-bit-limb path
# (timestamps months apart, counts above 2**52, thresholds above 2**52).
P = SyncParams(t_t1=10 * S, t_t4=5 * S, r_q=2 * R_DEN)
T = NOW - 60 * S
BRANCHES: list[tuple[str, model.Master | None, tuple[int, int, int, int, int], SyncParams]] = [
    ("absent", None, (T, T + S, 7, 7, 0), P),
    ("mark-reset", model.Master(T - 30 * S, T - 20 * S, 50), (T, T + S, 3, 3, 1), P),
    ("mark-but-recent", model.Master(T - 5 * S, T, 50), (T, T + S, 3, 3, 1), P),
    ("older-local-ts2", model.Master(T, T + 3 * S, 40), (T + S, T + 2 * S, 9, 4, 0), P),
    ("t_t4-shortening", model.Master(T - 20 * S, T - S, 1001), (T - 2 * S, T, 9, 4, 0), P),
    ("t_t4-odd-r", model.Master(T - 20 * S + 7, T - S, 999_999),
     (T - 2 * S, T + 3, 9, 4, 0), SyncParams(t_t1=10 * S, t_t4=5 * S, r_q=1537)),
    ("extend", model.Master(T, T + S, 10), (T + S // 2, T + 2 * S, 11, 1, 0), P),
    ("earlier-local-start", model.Master(T, T + S, 10), (T - 9 * S, T + 2 * S, 11, 1, 0), P),
    ("line-22", model.Master(T + S, T + 2 * S, 10), (T - 6 * S, T + 3 * S, 11, 1, 0), P),
    ("months-apart", model.Master(T - 200 * DAY, T - 199 * DAY, 5), (T, T + S, 2, 2, 0), P),
    ("huge-counts", model.Master(T - 20 * S, T, 2**61 + 12345), (T - S, T + S, 2**60, 2**60, 0),
     SyncParams(t_t1=10 * S, t_t4=5 * S, r_q=3 * R_DEN + 1)),
    ("huge-thresholds", model.Master(T - 20 * S, T, 77), (T - S, T + S, 5, 5, 1),
     SyncParams(t_t1=2**53, t_t4=2**52 + 1, r_q=2 * R_DEN)),
    ("limb-edges", model.Master((1 << 60) - 1, 1 << 60, (1 << 32) - 1),
     ((1 << 60) + (1 << 32) - 1, (1 << 60) + (1 << 33), 1 << 32, 1 << 32, 0), P),
    ("r-equals-1", model.Master(T - 20 * S, T, 1000), (T, T + S, 1, 1, 0),
     SyncParams(t_t1=10 * S, t_t4=5 * S, r_q=R_DEN)),
    ("zero-thresholds", model.Master(T, T, 3), (T, T + 1, 1, 1, 1),
     SyncParams(t_t1=0, t_t4=0, r_q=5000)),
]


def test_every_branch_matches_model(store_factory: Any) -> None:
    store = store_factory()
    for i, (name, m, row, params) in enumerate(BRANCHES):
        try:
            _check_against_model(store, [m], [row], params, seed=1000 + i)
        except AssertionError as exc:
            raise AssertionError(f"case {name}: {exc}") from exc


def test_batch_of_all_branches_matches_model(store_factory: Any) -> None:
    """The same cases in one batch (one call per bucket, many records per call)."""
    store = store_factory()
    for params in {p for *_, p in BRANCHES}:
        cases = [(m, row) for _, m, row, p in BRANCHES if p == params]
        _check_against_model(store, [m for m, _ in cases], [r for _, r in cases], params,
                             seed=hash(params) & 0xFFFF)


LIMIT = NOW + DAY - 3600 * S  # stays below the store's far-future bound during the run
timestamps = st.one_of(
    st.integers(NOW - 120 * S, NOW + 60 * S),
    st.integers(NOW - 400 * DAY, NOW),
    st.integers(0, 2**40),
    st.integers(0, LIMIT),
)
counts = st.one_of(st.integers(0, 2000), st.integers(0, 2**61))


@st.composite
def windows(draw: st.DrawFn) -> tuple[int, int]:
    ts1 = draw(timestamps)
    ts2 = min(ts1 + draw(st.one_of(st.integers(0, 30 * S), st.integers(0, 2**50))), LIMIT)
    return ts1, ts2


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[model.Master | None], list[tuple[int, int, int, int, int]],
                                    SyncParams]:
    n = draw(st.integers(1, 12))
    masters: list[model.Master | None] = []
    rows = []
    for _ in range(n):
        if draw(st.booleans()):
            a, b = draw(windows())
            masters.append(model.Master(a, b, draw(counts)))
        else:
            masters.append(None)
        a, b = draw(windows())
        c = draw(counts)
        rows.append((a, b, c, draw(st.integers(0, c)), draw(st.integers(0, 1))))
    params = SyncParams(
        t_t1=draw(st.sampled_from([0, S, 10 * S, 2**45, 2**53])),
        t_t4=draw(st.sampled_from([0, S, 5 * S, 2**44, 2**52 + 3])),
        r_q=draw(st.one_of(st.just(2 * R_DEN), st.integers(R_DEN, (1 << 20) - 1))),
    )
    return masters, rows, params


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=cases(), seed=st.integers(0, 2**32 - 1))
def test_merge_matches_model_property(store_factory: Any, case: Any, seed: int) -> None:
    masters, rows, params = case
    store = store_factory(mesh=f"h{uuid.uuid4().hex[:12]}")  # a fresh mesh per example
    _check_against_model(store, masters, rows, params, seed)


def test_merge_validates_its_input(store_factory: Any) -> None:
    store = store_factory()
    k = keys(2, 5)
    good = locals_([(NOW, NOW, 1, 1, 0)] * 2)
    with pytest.raises(ValueError, match="repeat"):
        store.merge(np.concatenate([k[:1], k[:1]]), good, P)
    with pytest.raises(ConfigError, match="r ="):
        store.merge(k, good, SyncParams(r_q=R_DEN - 1))
    bad = locals_([(NOW, NOW + 3 * DAY, 1, 1, 0), (NOW, NOW, 1, 1, 0)])
    with pytest.raises(BadRecord, match="out of bounds"):
        store.merge(k, bad, P)
    assert read_all(store) == {}, "a refused batch writes nothing"
    existed, before = store.merge(k[:0], good[:0], P)
    assert len(existed) == 0
    assert len(before) == 0


# ---------------------------------------------------------------------------
# Bounds: a master record out of them counts as absent (docs/sync.rst)
# ---------------------------------------------------------------------------


def test_out_of_bounds_masters_count_as_absent(store_factory: Any) -> None:
    """Judged by the caller's clock (here a fake one, 1000 days ago): a record
    with ts1 > ts2, with a count over the ceiling or idle longer than max_age is
    merged as if there were none; one dated after now + future is left as it
    is and the merge of it refused (the caller's clock may be the late one)."""
    store = store_factory()
    t = NOW - 1000 * DAY
    b = Bounds(now=t, future=2 * S, max_age=60 * S)
    masters = [
        model.Master(t - 5 * S, t - S, 400),  # in bounds
        model.Master(t - 5 * S, t + 80_000 * S, 400),  # dated in the future
        model.Master(t + 3 * S, t + 3 * S, 1),  # ... both timestamps
        model.Master(t - S, t - 2 * S, 400),  # ts1 after ts2
        model.Master(t - 5 * S, t - S, 1 << 62),  # 2**62 in 4 s
        model.Master(t - 5 * S, t - S, 5 * (1 << 32) + 1),  # just over the ceiling
        model.Master(t - 5 * S, t - S, 5 * (1 << 32)),  # on it: in bounds
        model.Master(t - 100 * S, t - 61 * S, 400),  # idle for longer than max_age
    ]
    rows = [(t - 2 * S, t, 7, 7, 0)] * len(masters)
    k = keys(len(masters), 2024)
    seed_master(store, k, masters)  # type: ignore[arg-type]
    existed, before = store.merge(k, locals_(rows), P, bounds=b)
    assert existed.tolist() == [True, False, False, False, False, False, True, False]
    assert int(before[4]["c"]) == 0
    assert (before[[1, 2]] == REFUSED).all()
    got = read_all(store)
    assert got[k[0].tobytes()] == (t - 5 * S, t, 407)
    for i in (3, 4, 5, 7):
        assert got[k[i].tobytes()] == (t - 2 * S, t, 7), i  # the local record, as if new
    for i in (1, 2):
        m = masters[i]
        assert got[k[i].tobytes()] == (m.ts1, m.ts2, m.c), i  # left as it was
    # Without bounds, the store's own: its clock, max_future, the 2**32 pps ceiling.
    k2 = keys(2, 2025)
    t2 = now_ns()
    seed_master(store, k2, [model.Master(t2 - 5 * S, t2 - S, 1 << 62),
                            model.Master(t2 - 5 * S, t2 - S, 4000)])
    existed, _ = store.merge(k2, locals_([(t2 - 2 * S, t2, 7, 7, 0)] * 2), P)
    assert existed.tolist() == [False, True]


def test_expire_deletes_records_out_of_bounds(store_factory: Any) -> None:
    """Records dated in the future (by the expiring proxy's clock) expire."""
    s = store_factory()
    t = NOW - 1000 * DAY
    k = keys(4, 2026)
    seed_master(s, k, [model.Master(t - S, t, 5), model.Master(t, t + 80_000 * S, 5),
                       model.Master(t - S, t, 1 << 40), model.Master(t - 90 * S, t - 80 * S, 5)])
    b = Bounds(now=t, future=2 * S, max_age=60 * S)
    assert s.expire(t - 60 * S, bounds=b) == 3
    assert set(read_all(s)) == {k[0].tobytes()}


def test_one_lease_holder_at_a_time(store_factory: Any) -> None:
    a, b = store_factory(), store_factory()
    assert a.lease("expire", "p1", 1)
    assert not b.lease("expire", "p2", 1)
    assert a.lease("expire", "p1", 1), "the holder renews it"
    assert b.lease("other", "p2", 1), "leases are per name"
    time.sleep(1.3)
    assert b.lease("expire", "p2", 5), "free once it lapsed"
    assert not a.lease("expire", "p1", 5)


# ---------------------------------------------------------------------------
# Concurrency, incremental reads, expiry, heartbeats
# ---------------------------------------------------------------------------


def test_concurrent_merges_give_exact_counts(store_factory: Any) -> None:
    """4 proxies merge the same hot keys at once: the master count is the sum of all dc."""
    hot = keys(300, 7)
    rounds, workers = 5, 4
    stores = [store_factory() for _ in range(workers)]
    t0 = now_ns() - 10 * S
    errors: list[BaseException] = []
    barrier = threading.Barrier(workers)

    def run(w: int) -> None:
        try:
            barrier.wait()
            for r in range(rounds):
                dc = w + 1
                # ts2 - ts1 stays below T_T4: no window shortening, counts just add up.
                loc = locals_([(t0, t0 + r * 1000 + w, dc, dc, 0)] * len(hot))
                stores[w].merge(hot, loc, P)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    want = rounds * sum(range(1, workers + 1))
    got = read_all(stores[0])
    assert len(got) == len(hot)
    assert {c for _, _, c in got.values()} == {want}


def test_changes_are_incremental(store_factory: Any) -> None:
    a, b = store_factory(), store_factory()
    k = keys(500, 11)
    t = now_ns() - S
    a.merge(k, locals_([(t, t, 1, 1, 0)] * 500), P)
    k1, _r1, cur = b.changes(None)
    assert len(k1) == 500
    k2, _, cur2 = b.changes(cur)
    assert len(k2) == 0, "nothing changed: nothing comes back"
    sub = k[::7]
    a.merge(sub, locals_([(t, t + 1, 2, 1, 0)] * len(sub)), P)
    k3, r3, cur3 = b.changes(cur2)
    assert set(as_dict(k3, r3)) == {x.tobytes() for x in sub}
    assert {c for _, _, c in as_dict(k3, r3).values()} == {2}
    assert len(b.changes(cur3)[0]) == 0
    # An old cursor still sees everything since then; a foreign cursor means a full read.
    assert len(b.changes(cur2)[0]) == len(sub)
    assert len(b.changes(object())[0]) == 500


def test_changes_in_batches(store_factory: Any) -> None:
    """With a limit, a read returns about that many changes and the rest at the
    next calls (the cursor says ``more``): a full read and incremental ones."""
    a, b = store_factory(), store_factory()
    k = keys(1000, 12)
    t = now_ns() - S
    a.merge(k, locals_([(t, t, 1, 1, 0)] * len(k)), P)
    got: dict[bytes, tuple[int, int, int]] = {}
    cur: Any = None
    calls = 0
    while True:
        kk, rr, cur = b.changes(cur, limit=100)
        calls += 1
        assert len(kk) <= 300, len(kk)
        got.update(as_dict(kk, rr))
        if not cur.more:
            break
        assert calls < 100
    assert calls >= 4
    assert set(got) == {x.tobytes() for x in k}
    # Changes since: five merges of 100 records each, read 150 at a time.
    for i in range(5):
        sub = k[i * 100 : (i + 1) * 100]
        a.merge(sub, locals_([(t, t + 1, 2, 1, 0)] * len(sub)), P)
    seen: set[bytes] = set()
    calls = 0
    while True:
        kk, rr, cur = b.changes(cur, limit=150)
        calls += 1
        assert len(kk) <= 300, len(kk)
        assert {c for _, _, c in as_dict(kk, rr).values()} <= {2}
        seen |= {x.tobytes() for x in kk}
        if not cur.more:
            break
        assert calls < 100
    assert seen == {x.tobytes() for x in k[:500]}
    assert len(b.changes(cur, limit=150)[0]) == 0


def test_expire(store_factory: Any) -> None:
    s = store_factory()
    k = keys(40, 13)
    t = now_ns() - 100 * S
    rows = [(t - 50 * S, t - 40 * S, 1, 1, 0)] * 25 + [(t, t + 50 * S, 1, 1, 0)] * 15
    s.merge(k, locals_(rows), P)
    assert s.expire(t - 10 * S) == 25
    left = read_all(s)
    assert set(left) == {x.tobytes() for x in k[25:]}
    assert s.expire(t - 10 * S) == 0
    # An expired key merged again is new again.
    existed, _ = s.merge(k[:1], locals_([(t, t, 3, 3, 0)]), P)
    assert not existed[0]


def test_heartbeats(store_factory: Any) -> None:
    a, b = store_factory(), store_factory()
    t = now_ns()
    a.heartbeat("proxy-a", 1234.5, t)
    b.heartbeat("proxy-b", 0.0, t + 1)
    got = a.proxies()
    assert got["proxy-a"].workload == 1234.5
    assert got["proxy-a"].last_seen == t
    assert got["proxy-b"].workload == 0.0
    assert got["proxy-b"].last_seen == t + 1
    a.heartbeat("proxy-a", 99.0, t + 5)
    assert b.proxies()["proxy-a"].last_seen == t + 5
    with pytest.raises(ValueError, match="workload"):
        a.heartbeat("proxy-a", float("nan"), t)
    other = store_factory(mesh="othermesh" + str(t % 10**6))
    assert "proxy-a" not in other.proxies(), "meshes are separate namespaces"



def test_local_dtype_is_required(store_factory: Any) -> None:
    s = store_factory()
    with pytest.raises(TypeError):
        s.merge(keys(1, 3), np.zeros(1, dtype=[("x", "<u8")]), P)
    assert LOCAL.itemsize == 40
    s.ping()


def test_idle_changes_cost_is_small(store_factory: Any) -> None:
    """An idle read must not scan the table (sanity bound; the bench measures it)."""
    s = store_factory()
    k = keys(5000, 17)
    t = now_ns() - S
    s.merge(k, locals_([(t, t, 1, 1, 0)] * len(k)), P)
    _, _, cur = s.changes(None)
    start = time.perf_counter()
    for _ in range(5):
        got, _, cur = s.changes(cur)
        assert len(got) == 0
    assert (time.perf_counter() - start) / 5 < 0.25


# ---------------------------------------------------------------------------
# Candidates, destination partials, known clients (xpro.core.pull)
# ---------------------------------------------------------------------------

RULE = pull.PullRule(t_f1=100, t_t2=S, t_t1=10 * S, near_pm=500, min_age=2 * S, min_packets=8)


def _pull_keys(n: int, seed: int, dsts: int = 3) -> np.ndarray:
    """``n`` flow keys to ``dsts`` destinations (pad 0), the last of each
    destination's being its closed-drops record."""
    k = keys(n, seed)
    d = keys(dsts, seed + 1)["dst"]
    d["pad"] = 0
    k["dst"] = d[np.arange(n) % dsts]
    k["dst"]["pad"][-dsts:] = 1
    k["src"][-dsts:] = b"\0" * 16
    return k


def _sum_partials(ak: np.ndarray, parts: np.ndarray) -> dict[tuple[bytes, int], list[int]]:
    """Partials summed over shards: (dst, slot) -> [ts1 min, ts2 max, c, n]."""
    out: dict[tuple[bytes, int], list[int]] = {}
    for k, p in zip(ak, parts, strict=True):
        if int(p["n"]) == 0:
            continue
        at = (k["dst"].tobytes(), int(k["slot"]))
        cur = out.setdefault(at, [1 << 64, 0, 0, 0])
        cur[0] = min(cur[0], int(p["ts1"]))
        cur[1] = max(cur[1], int(p["ts2"]))
        cur[2] += int(p["c"])
        cur[3] += int(p["n"])
    return out


def _model_partials(parts: dict[tuple[bytes, int], pull.Partial]
                    ) -> dict[tuple[bytes, int], list[int]]:
    return {k: [p.ts1, p.ts2, p.c, p.n] for k, p in parts.items() if p.n}


def test_pull_serves_candidates_partials_and_clients_as_the_model(store_factory: Any) -> None:
    """Merges judged by a rule: the candidates, the destinations' partials and the
    known-client index a reader pulls are those of xpro.core.pull's model."""
    a, b = store_factory(), store_factory()
    if not a.candidates:
        pytest.skip(f"{type(a).__name__} serves the full pull only")
    rng = np.random.default_rng(5)
    n = 300
    k = _pull_keys(n, 21)
    t0 = now_ns() - 9 * S
    t0 -= t0 % RULE.slot_ns  # slots are predictable: t0 + 2 s is in t0's slot
    rows = []
    for _ in range(n):
        t1: int = t0 + int(rng.integers(0, S))
        w = int(rng.integers(0, 2 * S)) if rng.random() < 0.5 else int(rng.integers(2, 4)) * S
        c: int = int(rng.integers(1, 400))
        rows.append((t1, t1 + w, c, c, 0))
    _, _, _, _, cur = b.pull(None)
    master: dict[bytes, model.Master] = {}
    parts: dict[tuple[bytes, int], pull.Partial] = {}
    cands: set[bytes] = set()
    ever_elig: set[bytes] = set()
    existed, _ = a.merge(k, locals_(rows), P, bounds=loose(), rule=RULE)
    assert not existed.any()
    for i, kb in enumerate(key_list(k)):
        _, m = model.merge(to_local(locals_(rows[i : i + 1])[0]), None, P)
        assert m is not None
        master[kb] = m
        pull.apply_flow(parts, kb, None, m, RULE)
        if pull.is_candidate(kb, m, RULE):
            cands.add(kb)
        if pull.client_eligible(kb, m, RULE):
            ever_elig.add(kb)
    assert 20 < len(cands) < n - 20, "the data must hold candidates and others"
    ck, cr, ak, ap, cur = b.pull(cur)
    assert set(key_list(ck)) == cands
    for kb, r in zip(key_list(ck), cr, strict=True):
        assert (int(r["ts1"]), int(r["ts2"]), int(r["c"])) == (master[kb].ts1, master[kb].ts2,
                                                                master[kb].c)
    assert _sum_partials(ak, ap) == _model_partials(parts)

    # A second merge of some flows: later packets (some move slot), more counts.
    sub = np.arange(0, n, 3)
    rows2 = []
    for i in sub.tolist():
        m = master[k[i].tobytes()]
        dc = int(rng.integers(0, 300))
        rows2.append((m.ts1, m.ts2 + int(rng.integers(0, 4 * S)), m.c + dc, dc, 0))
    a.merge(k[sub], locals_(rows2), P, bounds=loose(), rule=RULE)
    cands2: set[bytes] = set()
    for j, i in enumerate(sub.tolist()):
        kb = k[i].tobytes()
        _, m = model.merge(to_local(locals_(rows2[j : j + 1])[0]), master[kb], P)
        assert m is not None
        pull.apply_flow(parts, kb, master[kb], m, RULE)
        if pull.is_candidate(kb, master[kb], RULE) or pull.is_candidate(kb, m, RULE):
            cands2.add(kb)
        if pull.client_eligible(kb, m, RULE):
            ever_elig.add(kb)
        master[kb] = m
    ck, cr, ak2, ap2, cur = b.pull(cur)
    assert set(key_list(ck)) == cands2
    got = _sum_partials(np.concatenate([ak, ak2]), np.concatenate([ap, ap2]))
    # the latest value of each partial wins: re-read them all
    _, _, fak, fap, _ = b.pull(None)
    want = _model_partials(parts)
    got = _sum_partials(fak, fap)
    assert {x: v[2:] for x, v in got.items()} == {x: v[2:] for x, v in want.items()}
    # A full read holds every current candidate (and at most those ever judged).
    fk, _, _, _, _ = b.pull(None)
    now_c = {kb for kb, m in master.items() if pull.is_candidate(kb, m, RULE)}
    assert now_c <= set(key_list(fk)) <= cands | cands2
    # Nothing new: nothing comes back.
    ck, _, ak3, _, _ = b.pull(cur)
    assert len(ck) == 0
    assert len(ak3) == 0

    # The known-client index: every flow ever eligible, per destination.
    d = np.unique(np.array(k["dst"], dtype=k["dst"].dtype).view("V20")).view(k["dst"].dtype)
    d = np.array(d, dtype=k["dst"].dtype).reshape(-1)
    d["pad"] = 0
    kk, _ = b.clients(d[:1])
    want_k = {kb for kb in ever_elig if kb[16:] == d[:1].tobytes()}
    assert want_k
    assert set(key_list(kk)) == want_k
    kk, _ = b.clients(d)
    assert set(key_list(kk)) == ever_elig

    # Expiry takes every record's contribution away.
    a.expire(now_ns() + DAY, bounds=loose())
    _, _, fak, fap, _ = b.pull(None)
    assert _sum_partials(fak, fap) == {}
    assert len(b.clients(d)[0]) == 0


def _forge_partial(store: Store, dst: bytes, slot: int, part: tuple[int, int, int, int]) -> None:
    """Write a partial (ts1, ts2, c, n) straight into the store, as a store
    writer can: no merge and no record behind it."""
    import struct

    from xpro.stores.etcd import EtcdStore
    from xpro.stores.memory import MemoryStore
    from xpro.stores.redis import RedisStore

    value = np.array([part], dtype=pull.PARTIAL)
    if isinstance(store, MemoryStore):
        ak = np.zeros(1, dtype=pull.AGG_KEY)
        ak["dst"] = np.frombuffer(dst, dtype=pull.AGG_KEY["dst"])
        ak["slot"] = slot
        with store._state.lock:
            store._state.partials[ak.tobytes()] = value[0]
    elif isinstance(store, RedisStore):
        tag = store._tags[int(store._dst_buckets(np.frombuffer(dst, dtype=pull.AGG_KEY["dst"]))[0])]
        store.raw_client(f"{tag}:a").hset(f"{tag}:a", dst + struct.pack("<Q", slot),
                                          value.tobytes())
    else:
        assert isinstance(store, EtcdStore)
        store.raw_put(store._row_key(slot, dst, "forger"), struct.pack("<QQqq", *part))


def test_expire_removes_partials_in_slots_ahead(store_factory: Any) -> None:
    """A partial in a slot after the latest time in bounds is no merge's (a
    proxy quarantines it, docs/security.rst); the expiry deletes it.  Before,
    expiry deleted only slots that were over, so such a partial stayed for
    good and every full read of the partials took it again."""
    a = store_factory()
    if not a.candidates:
        pytest.skip(f"{type(a).__name__} serves the full pull only")
    k = _pull_keys(30, 41)
    t0 = now_ns() - 2 * S
    a.merge(k, locals_([(t0, t0 + S, 5, 5, 0)] * len(k)), P, bounds=loose(), rule=RULE)
    _, _, ak0, ap0, _ = a.pull(None)
    live = _sum_partials(ak0, ap0)
    assert live
    dst = k[0]["dst"].tobytes()
    # after the store's latest time in bounds (max_future: a day by default)
    ahead = [(now_ns() + 2 * DAY) // RULE.slot_ns, (1 << 62) // RULE.slot_ns]
    for slot in ahead:
        _forge_partial(a, dst[:19] + b"\0", slot, (t0 - DAY, t0 + S, 1, 1))
    _, _, ak, ap, _ = a.pull(None)
    assert set(ahead) <= {int(x) for x in ak["slot"]}
    a.expire(t0 - 60 * S)  # the store's own clock and bounds
    _, _, ak, ap, _ = a.pull(None)
    assert not set(ahead) & {int(x) for x in ak["slot"]}
    assert _sum_partials(ak, ap) == live
