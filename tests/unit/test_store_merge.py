"""The vectorised merge and the Redis wire encoding against xpro.core.model (no server)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpro.core import model
from xpro.core.bounds import Bounds
from xpro.core.layout import FLOW_KEY, LOCAL, MASTER
from xpro.core.merge import merge_arrays
from xpro.core.model import R_DEN, SyncParams
from xpro.errors import BadRecord, ConfigError
from xpro.stores._common import (
    MAX_COUNT,
    bucket_of,
    check_local,
    check_merge_input,
    check_params,
    decode_values,
    valid_master,
)
from xpro.stores.redis import WIRE, _encode_local, _fixed_args

pytestmark = pytest.mark.unit

S = model.NS_PER_S
NOW = 1_790_000_000 * S
ts = st.one_of(st.integers(NOW - 100 * S, NOW + 100 * S), st.integers(0, NOW + 86_000 * S),
               st.sampled_from([0, 1, (1 << 32) - 1, 1 << 32, (1 << 53) + 1]))
cnt = st.one_of(st.integers(0, 1000), st.integers(0, 1 << 61))


@st.composite
def batch(draw: st.DrawFn) -> tuple[list[model.Local], list[model.Master | None], SyncParams]:
    n = draw(st.integers(1, 30))
    locs, masters = [], []
    for _ in range(n):
        a = draw(ts)
        b = draw(st.one_of(st.just(a), st.integers(a, a + 20 * S), ts))
        c = draw(cnt)
        locs.append(model.Local(a, b, c, draw(st.integers(0, c)), draw(st.integers(0, 1))))
        if draw(st.booleans()):
            x = draw(ts)
            masters.append(model.Master(x, draw(st.one_of(st.integers(x, x + 30 * S), ts)),
                                        draw(cnt)))
        else:
            masters.append(None)
    params = SyncParams(t_t1=draw(st.sampled_from([0, 10 * S, 1 << 53])),
                        t_t4=draw(st.sampled_from([0, 5 * S, 1 << 52])),
                        r_q=draw(st.integers(R_DEN, (1 << 20) - 1)))
    return locs, masters, params


def arrays(locs: list[model.Local], masters: list[model.Master | None]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    loc = np.zeros(len(locs), dtype=LOCAL)
    mas = np.zeros(len(locs), dtype=MASTER)
    for i, (lv, m) in enumerate(zip(locs, masters, strict=True)):
        loc[i] = (lv.ts1, lv.ts2, lv.c, lv.dc, lv.mark, 0)
        if m is not None:
            mas[i] = (m.ts1, m.ts2, m.c)
    return loc, mas, np.array([m is not None for m in masters])


@settings(max_examples=400, deadline=None)
@given(batch())
def test_merge_arrays_equals_model(case: tuple[list[model.Local], list[model.Master | None],
                                               SyncParams]) -> None:
    locs, masters, params = case
    loc, mas, ex = arrays(locs, masters)
    out_l, out_m = merge_arrays(loc, np.ones(len(loc), dtype=bool), mas, ex, params)
    for i, (lv, m) in enumerate(zip(locs, masters, strict=True)):
        want_l, want_m = model.merge(lv, m, params)
        assert want_l is not None
        assert want_m is not None
        assert (int(out_m[i]["ts1"]), int(out_m[i]["ts2"]), int(out_m[i]["c"])) == (
            want_m.ts1, want_m.ts2, want_m.c), (lv, m, params)
        assert (int(out_l[i]["ts1"]), int(out_l[i]["ts2"]), int(out_l[i]["c"]),
                int(out_l[i]["dc"]), int(out_l[i]["mark"])) == (
            want_l.ts1, want_l.ts2, want_l.c, want_l.dc, want_l.mark), (lv, m, params)


@settings(max_examples=200, deadline=None)
@given(batch())
def test_redis_wire_encoding_is_exact(case: tuple[list[model.Local], list[model.Master | None],
                                                  SyncParams]) -> None:
    """The doubles the Lua fast path reads are exact, and flagged when they cannot be."""
    locs, _, params = case
    loc, _, _ = arrays(locs, [None] * len(locs))
    bh = (NOW - (1 << 51)) >> 32
    base = bh << 32
    w = _encode_local(loc, base)
    assert w.dtype == WIRE
    assert WIRE.itemsize == 57
    for i, lv in enumerate(locs):
        assert (int(w[i]["ts1"]), int(w[i]["ts2"]), int(w[i]["c"]), int(w[i]["dc"])) == (
            lv.ts1, lv.ts2, lv.c, lv.dc)
        fast = int(w[i]["mark"]) < 2
        assert int(w[i]["mark"]) % 2 == lv.mark
        in_window = all(0 <= x - base < 1 << 52 for x in (lv.ts1, lv.ts2)) and lv.dc < 1 << 52
        assert fast == in_window
        if fast:
            assert int(w[i]["a1"]) == lv.ts1 - base
            assert float(int(w[i]["a1"])) == w[i]["a1"]
            assert int(w[i]["a2"]) == lv.ts2 - base
            assert int(w[i]["ad"]) == lv.dc
    args = _fixed_args(params, base, bh, Bounds(now=NOW, future=86_400 * S))
    assert args[0] == bh
    slow = params.t_t1 >= 1 << 52 or params.t_t4 >= 1 << 52
    assert (args[1] == -1) == slow
    assert (int(args[5]) << 32) + int(args[6]) == params.t_t1
    assert (int(args[7]) << 32) + int(args[8]) == params.t_t4
    assert (int(args[9]) << 32) + int(args[10]) == NOW + 86_400 * S


def test_bucket_hash_is_fixed() -> None:
    """The bucket formula is part of the encoding: proxies must agree across versions."""
    raw = bytes(36) + bytes(range(36)) + b"\xff" * 36
    k = np.frombuffer(raw, dtype=FLOW_KEY)
    assert bucket_of(k, 1 << 30).tolist() == [70278227, 990906976, 988570397]
    assert [_ref_bucket(raw[i : i + 36], 1 << 30) for i in (0, 36, 72)] == [
        70278227, 990906976, 988570397]


def _ref_bucket(key: bytes, buckets: int) -> int:
    """The documented formula, in plain Python."""
    m = (1 << 64) - 1
    h = 0xCBF29CE484222325
    for j in range(9):
        w = int.from_bytes(key[4 * j : 4 * j + 4], "little")
        h = ((h ^ w) * 0x100000001B3) & m
    h ^= h >> 29
    h = (h * 0xBF58476D1CE4E5B9) & m
    h ^= h >> 32
    return h % buckets


@given(st.binary(min_size=36, max_size=36), st.integers(1, 70000))
def test_bucket_matches_documented_formula(key: bytes, buckets: int) -> None:
    k = np.frombuffer(key, dtype=FLOW_KEY)
    assert int(bucket_of(k, buckets)[0]) == _ref_bucket(key, buckets)


def test_buckets_spread_one_destination() -> None:
    rng = np.random.default_rng(1)
    k = np.frombuffer(rng.bytes(36 * 20000), dtype=FLOW_KEY).copy()
    k["dst"] = k["dst"][0]
    counts = np.bincount(bucket_of(k, 64), minlength=64)
    assert counts.min() > 20000 / 64 * 0.7
    assert counts.max() < 20000 / 64 * 1.3


def test_bounds_and_validation() -> None:
    lim = NOW + 86_400 * S
    rec = np.array([(NOW, NOW, MAX_COUNT), (NOW, lim + 1, 0), (0, 0, MAX_COUNT + 1)], dtype=MASTER)
    assert valid_master(rec, lim).tolist() == [True, False, False]
    loc = np.zeros(3, dtype=LOCAL)
    loc["mark"] = [0, 1, 2]
    assert check_local(loc, lim).tolist() == [True, True, False]
    check_params(SyncParams())
    for bad in (SyncParams(r_q=R_DEN - 1), SyncParams(r_q=1 << 20), SyncParams(t_t1=-1),
                SyncParams(t_t4=(1 << 62) + 1)):
        with pytest.raises(ConfigError):
            check_params(bad)
    k = np.zeros(3, dtype=FLOW_KEY)
    k["src"] = [b"a", b"b", b"c"]
    with pytest.raises(BadRecord, match="mark"):
        check_merge_input(k, loc, SyncParams(), lim)
    with pytest.raises(ValueError, match="parallel"):
        check_merge_input(k[:2], loc, SyncParams(), lim)


def test_decode_values_skips_bad() -> None:
    lim = NOW + 86_400 * S
    good = np.array([(1, 2, 3)], dtype=MASTER).tobytes()
    huge = np.array([(1, 2, 1 << 63)], dtype=MASTER).tobytes()
    ks = [bytes([i]) * 36 for i in range(4)]
    k, r = decode_values(ks, [good, b"x", None, huge], lim, "test")
    assert len(k) == 1
    assert k[0].tobytes() == ks[0]
    assert int(r[0]["c"]) == 3
