"""The partials a proxy keeps (xpro.sync.aggregates.Partials) against a plain
sum over every partial it took in, through updates, shards and prunes."""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.test_keys import colliding
from xpro.core import layout as L
from xpro.core import model
from xpro.core.keys import fingerprint
from xpro.core.pull import AGG_KEY, PARTIAL, PullRule
from xpro.sync.aggregates import Partials

pytestmark = pytest.mark.unit

S = model.NS_PER_S
RULE = PullRule(t_f1=100, t_t2=S, t_t1=10 * S, near_pm=500, min_age=2 * S, min_packets=8)


def _dst(i: int) -> bytes:
    k = np.zeros(1, dtype=L.DST_KEY)
    k["addr"] = bytes(10) + b"\xff\xff" + bytes((10, 9, i >> 8 & 255, i & 255))
    k["port"] = 9000 + i % 3  # big-endian in the key: bytes must match
    return k.tobytes()


def _brute(held: dict[bytes, tuple[bytes, int, tuple[int, int, int, int]]], dsts: list[bytes],
           now: int) -> list[tuple[int, int, int]]:
    first = RULE.live_from(now)
    out = []
    for d in dsts:
        live = [p for dd, slot, p in held.values() if dd == d and slot >= first and p[3] > 0]
        if not live:
            out.append((0, 0, 0))
            continue
        out.append((min(p[0] for p in live), max(p[1] for p in live), sum(p[2] for p in live)))
    return out


def test_values_and_live_are_the_sum_over_the_live_partials() -> None:
    rng = np.random.default_rng(11)
    parts = Partials(RULE)
    held: dict[bytes, tuple[bytes, int, tuple[int, int, int, int]]] = {}
    t0 = 1_700_000_000 * S
    dsts = [_dst(i) for i in range(60)]
    for step in range(40):
        now = t0 + step * S // 2
        n = int(rng.integers(1, 80))
        ak = np.zeros(n, dtype=AGG_KEY)
        pv = np.zeros(n, dtype=PARTIAL)
        for j in range(n):
            d = dsts[int(rng.integers(len(dsts)))]
            ak[j]["shard"] = int(rng.integers(3))
            ak[j]["dst"] = np.frombuffer(d, dtype=L.DST_KEY)[0]
            ak[j]["slot"] = now // RULE.slot_ns - int(rng.integers(0, 6))
            t2 = now - int(rng.integers(0, 3 * S))
            pv[j] = (t2 - int(rng.integers(0, 5 * S)), t2, int(rng.integers(0, 900)),
                     int(rng.integers(0, 3)))
        ak = ak[np.unique(ak.view(np.dtype((np.void, AGG_KEY.itemsize))),
                          return_index=True)[1]]
        pv = pv[: len(ak)]
        got_dsts = parts.update(ak, pv)
        assert {bytes(k) for k in got_dsts} == {bytes(k["dst"]) for k in ak}
        for k, p in zip(ak, pv, strict=True):
            held[k.tobytes()] = (k["dst"].tobytes(), int(k["slot"]),
                                 (int(p["ts1"]), int(p["ts2"]), int(p["c"]), int(p["n"])))
        # What aged out since the last round, read before the prune (as a round does).
        aged = parts.aged(now - S // 2, now)  # since the last step
        first, before = RULE.live_from(now), RULE.live_from(now - S // 2)
        assert {bytes(k) for k in aged} == {v[0] for v in held.values()
                                            if before <= v[1] < first and v[2][3] > 0}
        if step % 5 == 4:
            parts.prune(now)
            first = RULE.live_from(now)
            held = {k: v for k, v in held.items() if v[1] >= first and v[2][3] > 0}
        ask = [dsts[int(i)] for i in rng.choice(len(dsts), 25, replace=False)]
        t1, t2, c = parts.values(np.frombuffer(b"".join(ask), dtype=L.DST_KEY), now)
        assert list(zip(t1.tolist(), t2.tolist(), c.tolist(), strict=True)) == \
            _brute(held, ask, now)
        dk, lt1, lt2, lc = parts.live(now)
        want = {d: v for d, v in zip(dsts, _brute(held, dsts, now), strict=True) if v[1] > 0}
        assert {bytes(k): (int(a), int(b), int(x)) for k, a, b, x
                in zip(dk, lt1, lt2, lc, strict=True)} == want
        assert len(dk) == len({bytes(k) for k in dk})
    assert len(parts.dsts) <= len(dsts)


def test_a_key_twice_in_one_batch_keeps_the_later_value() -> None:
    """A store that answers a partial twice in one pull (a hostile one) neither
    crashes the round nor counts it twice."""
    parts = Partials(RULE)
    now = 1_700_000_000 * S
    ak = np.zeros(2, dtype=AGG_KEY)
    ak["dst"] = np.frombuffer(_dst(1), dtype=L.DST_KEY)[0]
    ak["slot"] = now // RULE.slot_ns
    pv = np.array([(now - S, now, 10, 1), (now - S, now, 30, 1)], dtype=PARTIAL)
    assert [bytes(k) for k in parts.update(ak, pv)] == [_dst(1)]
    assert len(parts) == 1
    _, _, c = parts.values(np.frombuffer(_dst(1), dtype=L.DST_KEY), now)
    assert c.tolist() == [30]


def test_destinations_and_partials_that_share_a_fingerprint_stay_apart() -> None:
    """The partials are found by a keyed fingerprint (xpro.core.keys.KeyIndex):
    keys crafted to share one (knowing this process's seed) are told apart
    by their bytes, across batches and prunes."""
    parts = Partials(RULE)
    now = 1_700_000_000 * S
    a = _dst(7)
    twins = [a, *(colliding(a, k) for k in range(1, 4))]
    fp = fingerprint(np.frombuffer(b"".join(twins), dtype=L.DST_KEY))
    assert len(set(fp.tolist())) == 1
    for round_, d in enumerate([*twins, *twins]):  # one batch a key, each twice
        ak = np.zeros(1, dtype=AGG_KEY)
        ak["dst"] = np.frombuffer(d, dtype=L.DST_KEY)[0]
        ak["slot"] = now // RULE.slot_ns
        pv = np.array([(now - S, now, 100 * (twins.index(d) + 1) + round_ // 4, 1)],
                      dtype=PARTIAL)
        assert [bytes(k) for k in parts.update(ak, pv)] == [d]
    assert len(parts) == 4
    _, _, c = parts.values(np.frombuffer(b"".join(twins), dtype=L.DST_KEY), now)
    assert c.tolist() == [101, 201, 301, 401]
    parts.prune(now + 40 * S)  # every slot over: all forgotten, indexes rebuilt
    assert len(parts) == 0
    for i, d in enumerate(twins):
        ak = np.zeros(1, dtype=AGG_KEY)
        ak["dst"] = np.frombuffer(d, dtype=L.DST_KEY)[0]
        ak["slot"] = now // RULE.slot_ns
        parts.update(ak, np.array([(now - S, now, 10 + i, 1)], dtype=PARTIAL))
    _, _, c = parts.values(np.frombuffer(b"".join(reversed(twins)), dtype=L.DST_KEY), now)
    assert c.tolist() == [13, 12, 11, 10]


def test_partial_keys_that_share_a_fingerprint_in_one_batch_and_through_a_prune() -> None:
    """Partials (not only destinations) crafted to share a fingerprint, taken
    in one batch, then a prune that keeps some of them: each keeps its own
    value, every look-up by destination agrees with a plain sum."""
    parts = Partials(RULE)
    now = 1_700_000_000 * S
    base = np.zeros(1, dtype=AGG_KEY)
    base["dst"] = np.frombuffer(_dst(3), dtype=L.DST_KEY)[0]
    base["slot"] = now // RULE.slot_ns
    a = base.tobytes()
    twins = [a, *(colliding(a, k) for k in range(1, 4))]
    ak = np.frombuffer(b"".join(twins), dtype=AGG_KEY).copy()
    assert len(set(fingerprint(ak).tolist())) == 1
    ak["slot"][1:] = now // RULE.slot_ns - 20  # these three end before the prune
    pv = np.array([(now - S, now, 10 * (i + 1), 1) for i in range(4)], dtype=PARTIAL)
    parts.update(ak, pv)
    dsts = np.ascontiguousarray(ak["dst"])
    _, _, c = parts.values(dsts, now)
    assert c.tolist() == [10, 0, 0, 0]  # the last three's slots are over already
    parts.prune(now)  # keeps one of four: the indexes are rebuilt
    assert len(parts) == 1
    fresh = ak[1:3].copy()
    fresh["slot"] = now // RULE.slot_ns
    parts.update(fresh, np.array([(now - S, now, 99, 1), (now - S, now, 7, 1)], dtype=PARTIAL))
    parts.update(ak[:1], np.array([(now - S, now, 11, 1)], dtype=PARTIAL))
    _, _, c = parts.values(dsts, now)
    assert c.tolist() == [11, 99, 7, 0]
    assert len(parts) == 3
