"""Redis-only behaviour: the Lua merge against Python, bad data, outages, failover."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.stores._util import S, as_dict, keys, locals_, now_ns, read_all, to_local
from tests.stores.conftest import Server, Servers, cluster_ok, role, wait_for
from xpro.core import model
from xpro.core.bounds import FUTURE, Bounds
from xpro.core.layout import MASTER
from xpro.core.merge import merge_arrays
from xpro.core.model import R_DEN, SyncParams
from xpro.errors import ConfigError, StoreUnavailable
from xpro.plugins import open_store
from xpro.stores import _redis_lua
from xpro.stores._common import Replay, batch_digest, key_hex
from xpro.stores.base import REFUSED
from xpro.stores.redis import RedisStore

pytestmark = pytest.mark.integration

P = SyncParams(t_t1=10 * S, t_t4=5 * S, r_q=2 * R_DEN)
NOW = now_ns()
U64 = (1 << 64) - 1


@pytest.fixture(params=["single", "cluster"])
def rstore(request: pytest.FixtureRequest) -> Iterator[RedisStore]:
    """A RedisStore on a fresh mesh, on the single server or on the cluster."""
    if request.param == "single":
        srv: Server = request.getfixturevalue("redis_server")
        url = f"redis://127.0.0.1:{srv.port}"
    else:
        nodes: list[Server] = request.getfixturevalue("redis_cluster")
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    st_ = open_store(url, mesh=f"r{uuid.uuid4().hex[:10]}")
    assert isinstance(st_, RedisStore)
    yield st_
    st_.close()


def raw_hset(store: RedisStore, key: bytes, value: bytes) -> None:
    """Write bytes straight into the record hash, bypassing xpro."""
    rk = store.bucket_keys(store.key_bucket(key))["records"]
    store.raw_client(rk).hset(rk, key, value)


# ---------------------------------------------------------------------------
# The Lua merge against the Python one, on raw master values
# ---------------------------------------------------------------------------

u64_edges = st.sampled_from([0, 1, (1 << 32) - 1, 1 << 32, (1 << 32) + 1, (1 << 52) - 1,
                             1 << 52, (1 << 53) + 1, NOW, NOW - 1, NOW + 1])
ts_any = st.one_of(u64_edges, st.integers(0, NOW + 3600 * S), st.integers(NOW - 10**13, NOW))


@st.composite
def raw_case(draw: st.DrawFn) -> tuple[list[tuple[int, int, int] | None],
                                       list[tuple[int, int, int, int, int]], SyncParams]:
    n = draw(st.integers(1, 16))
    masters = []
    rows = []
    for _ in range(n):
        # Raw masters need not be windows: ts1 > ts2 is stored as is.
        # Counts up to 2**61 each, so that c + dc stays a valid count (<= 2**62).
        masters.append(draw(st.none() | st.tuples(ts_any, ts_any,
                                                  st.integers(0, 1 << 61) | u64_edges)))
        c = draw(st.integers(0, 1 << 61) | st.integers(0, 100))
        rows.append((draw(ts_any), draw(ts_any), c, draw(st.integers(0, 1 << 61)),
                     draw(st.integers(0, 1))))
    params = SyncParams(t_t1=draw(st.integers(0, 1 << 62) | st.sampled_from([10 * S, 0])),
                        t_t4=draw(st.integers(0, 1 << 62) | st.sampled_from([5 * S, 1])),
                        r_q=draw(st.integers(R_DEN, (1 << 20) - 1)))
    bounds = Bounds(now=draw(st.sampled_from([NOW, NOW - 10**13, 1 << 52])),
                    future=draw(st.sampled_from([2 * S, 3600 * S, 86_400 * S])),
                    max_age=draw(st.sampled_from([None, 100 * S, 10**13])),
                    max_pps=draw(st.sampled_from([None, 1 << 32, 1000, 1])))
    return masters, rows, params, bounds


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=raw_case(), seed=st.integers(0, 2**32 - 1))
def test_lua_merge_equals_python_merge(rstore: RedisStore, case: Any, seed: int) -> None:
    """Raw records in, and three answers compared: Lua, numpy (merge_arrays), model.merge.

    A raw master out of the bounds counts as absent in all three: the Lua
    bounds check (doubles for the count ceiling) and the Python one agree.
    """
    masters, rows, params, bounds = case
    k = keys(len(rows), seed ^ uuid.uuid4().int & 0xFFFFFFFF)  # new keys for every example
    for i, m in enumerate(masters):
        if m is not None:
            raw_hset(rstore, k[i].tobytes(), np.array([m], dtype=MASTER).tobytes())
    _, _, cursor = rstore.changes(None)
    loc = locals_(rows)
    existed, before = rstore.merge(k, loc, params, bounds)
    stored = as_dict(*rstore.changes(cursor)[:2])
    assert len(stored) == len(rows)
    m_arr = np.zeros(len(rows), dtype=MASTER)
    for i, m in enumerate(masters):
        if m is not None:
            m_arr[i] = m
    why = bounds.check(m_arr)
    present = np.array([m is not None for m in masters])
    left = present & (why == FUTURE)  # dated in the future: left as it is
    has = present & (why == 0)
    assert (before[left] == REFUSED).all()
    masters = [m if h else None for m, h in zip(masters, has, strict=True)]
    m_arr[~has] = 0
    _, py_new = merge_arrays(loc, np.ones(len(loc), dtype=bool), m_arr, has, params)
    assert (existed == has).all()
    assert (before[has] == m_arr[has]).all()
    for i in range(len(rows)):
        if left[i]:
            assert stored[k[i].tobytes()] == tuple(case[0][i])
            continue
        m = masters[i]
        _, want = model.merge(to_local(loc[i]), None if m is None else model.Master(*m), params)
        assert want is not None
        lua = stored[k[i].tobytes()]
        py = (int(py_new[i]["ts1"]), int(py_new[i]["ts2"]), int(py_new[i]["c"]))
        assert lua == py == (want.ts1, want.ts2, want.c), (i, m, rows[i], params)


def test_buckets_spread_over_the_cluster(redis_cluster: list[Server]) -> None:
    """Every flow to one destination: the buckets still land on all three masters."""
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in redis_cluster[:1])
    s = open_store(url, mesh=f"r{uuid.uuid4().hex[:10]}")
    assert isinstance(s, RedisStore)
    k = keys(3000, 21)
    k["dst"] = k["dst"][0]  # one attacked destination
    s.merge(k, locals_([(NOW, NOW, 1, 1, 0)] * len(k)), P)
    sizes: dict[str, int] = {}
    for b in range(s.buckets):
        rk = s.bucket_keys(b)["records"]
        client = s.raw_client(rk)
        name = f"{client.connection_pool.connection_kwargs['port']}"
        sizes[name] = sizes.get(name, 0) + int(client.hlen(rk))
    assert len(sizes) == 3, sizes
    assert min(sizes.values()) > 3000 // 3 // 2, sizes
    s.close()


# ---------------------------------------------------------------------------
# Bad data
# ---------------------------------------------------------------------------


def test_bad_data_is_skipped_and_logged(rstore: RedisStore,
                                        caplog: pytest.LogCaptureFixture) -> None:
    k = keys(8, 31)
    t = now_ns() - S
    rstore.merge(k, locals_([(t, t, 5, 5, 0)] * 8), P)
    _, _, cursor = rstore.changes(None)
    far = now_ns() + 3 * 86_400 * S
    bad = {
        1: b"garbage",  # wrong length
        2: b"\xff" * 25,  # wrong length
        3: np.array([(t, t, U64)], dtype=MASTER).tobytes(),  # a "negative" count
        4: np.array([(t, far, 1)], dtype=MASTER).tobytes(),  # far in the future
        5: np.array([(far, t, 1)], dtype=MASTER).tobytes(),
        6: b"",
    }
    for i, v in bad.items():
        raw_hset(rstore, k[i].tobytes(), v)
    # A field that is no flow key, and a corrupt change-log entry.
    rk0 = rstore.bucket_keys(rstore.key_bucket(k[0].tobytes()))
    cl = rstore.raw_client(rk0["records"])
    cl.hset(rk0["records"], b"not-a-key", b"x" * 24)
    cl.rpush(rk0["log"], b"\x00\x00\x00\x01" + b"short")
    caplog.set_level(logging.WARNING, logger="xpro.stores")
    got = as_dict(*rstore.changes(None)[:2])
    assert set(got) == {k[i].tobytes() for i in (0, 7)}, "good records only, none lost"
    for i in bad:
        assert key_hex(k[i].tobytes()) in caplog.text, f"record {i} not named in the log"
    assert "not a flow key" in caplog.text
    # Raw writes bypass the change log: an incremental read sees nothing, and no garbage.
    assert len(rstore.changes(cursor)[0]) == 0
    # Merging into a corrupt record overwrites it with the local record; one
    # dated in the future is left as it is (refused), until expire deletes it.
    caplog.clear()
    existed, before = rstore.merge(k, locals_([(t, t + 1, 2, 2, 0)] * 8), P)
    assert list(existed) == [True, False, False, False, False, False, False, True]
    assert int(before[3]["c"]) == 0
    assert (before[[4, 5]] == REFUSED).all()
    assert "was corrupt" in caplog.text
    assert key_hex(k[3].tobytes()) in caplog.text
    assert {w for w, _ in rstore.take_rejected()} >= {key_hex(k[i].tobytes()) for i in bad}
    for cur in (None, cursor):
        after = as_dict(*rstore.changes(cur)[:2])
        assert len(after) == 6
        for i in (1, 2, 3, 6):
            assert after[k[i].tobytes()] == (t, t + 1, 2)
        assert after[k[0].tobytes()] == (t, t + 1, 7)
    assert rstore.expire(0) == 2
    assert rstore.merge(k[4:6], locals_([(t, t + 1, 2, 2, 0)] * 2), P)[0].tolist() == [
        False, False]
    assert len(read_all(rstore)) == 8


def test_wrong_type_keys_do_not_crash(rstore: RedisStore,
                                      caplog: pytest.LogCaptureFixture) -> None:
    k = keys(2000, 41)
    t = now_ns() - S
    rstore.merge(k, locals_([(t, t, 1, 1, 0)] * len(k)), P)
    rk = rstore.bucket_keys(0)
    cl = rstore.raw_client(rk["records"])
    cl.delete(rk["log"])
    cl.set(rk["log"], b"not a list")  # a key of the wrong type
    caplog.set_level(logging.WARNING, logger="xpro.stores")
    got = as_dict(*rstore.changes(None)[:2])
    in_bucket = {x.tobytes() for x in k if rstore.key_bucket(x.tobytes()) == 0}
    assert set(got) >= {x.tobytes() for x in k} - in_bucket
    # The next merge into that bucket still works (the log is replaced).
    rstore.merge(k, locals_([(t, t, 1, 1, 0)] * len(k)), P)


# ---------------------------------------------------------------------------
# Outages, restarts, replays
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("persist", [True, False], ids=["aof", "no-persistence"])
def test_unavailable_then_back(server_factory: Servers, persist: bool) -> None:
    extra = ("--appendonly", "yes", "--appendfsync", "always") if persist else ()
    srv = server_factory.redis(extra=extra)
    s = RedisStore.from_url(f"redis://127.0.0.1:{srv.port}", mesh="outage")
    k = keys(200, 51)
    t = now_ns() - S
    s.merge(k, locals_([(t, t, 1, 1, 0)] * 200), P)
    _, _, cur = s.changes(None)
    srv.stop()
    for call in (lambda: s.merge(k, locals_([(t, t, 1, 1, 0)] * 200), P),
                 lambda: s.changes(cur), lambda: s.heartbeat("p", 1.0, t), s.proxies, s.ping,
                 lambda: s.expire(t)):
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{srv.port}.*retries"):
            call()
    srv.start()
    s.ping()
    existed, _ = s.merge(k, locals_([(t, t + 1, 5, 1, 0)] * 200), P)
    assert existed.all() == persist
    assert not existed.any() or persist
    got, _, _ = s.changes(cur)
    # With persistence only the 200 records changed since the cursor come back;
    # without it the store is new (another epoch) and everything is read again.
    assert len(got) == 200
    assert {c for _, _, c in read_all(s).values()} == {2 if persist else 5}
    s.close()


def test_replay_applies_once(rstore: RedisStore) -> None:
    """A merge retried with the same arguments (its reply was lost) is not applied twice."""
    k = keys(500, 61)
    t = now_ns() - S
    loc = locals_([(t, t, 3, 3, 0)] * len(k))
    rstore.merge(k, loc, P)
    loc2 = locals_([(t, t + 1, 4, 1, 0)] * len(k))
    e1, b1 = rstore.merge(k, loc2, P)
    # Pretend the replies were lost: the store still holds this op as pending.
    rstore._replay = Replay(batch_digest(k, loc2, P), rstore._op)
    e2, b2 = rstore.merge(k, loc2, P)
    assert (e1 == e2).all(), "the replay returns what the first call saw"
    assert (b1 == b2).all(), "the replay returns what the first call saw"
    assert {c for _, _, c in read_all(rstore).values()} == {4}, "applied exactly once"
    # A different batch is a new merge.
    rstore.merge(k, loc2, P)
    assert {c for _, _, c in read_all(rstore).values()} == {5}


def test_function_library_is_replaced_when_different(redis_server: Server) -> None:
    r = redis.Redis(port=redis_server.port)
    fake = f"#!lua name={_redis_lua.LIBRARY}\nredis.register_function('xpro_v1_merge', " \
           "function() return 'stale' end)\n"
    r.function_load(fake, replace=True)
    s = RedisStore.from_url(f"redis://127.0.0.1:{redis_server.port}", mesh="libcheck")
    t = now_ns()
    existed, _ = s.merge(keys(3, 71), locals_([(t, t, 1, 1, 0)] * 3), P)
    assert not existed.any()
    (lib,) = r.function_list(library=_redis_lua.LIBRARY, withcode=True)
    fields = dict(zip(lib[::2], lib[1::2], strict=True)) if isinstance(lib, list) else lib
    code = fields.get(b"library_code", fields.get("library_code"))
    assert (code.decode() if isinstance(code, bytes) else code) == _redis_lua.CODE
    s.close()
    r.close()


def test_bucket_count_must_match(redis_server: Server) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}"
    mesh = f"r{uuid.uuid4().hex[:8]}"
    a = RedisStore.from_url(url + "?buckets=16", mesh=mesh)
    t = now_ns()
    a.merge(keys(5, 81), locals_([(t, t, 1, 1, 0)] * 5), P)
    b = RedisStore.from_url(url, mesh=mesh, options={"buckets": 32})
    with pytest.raises(ConfigError, match="buckets"):
        b.merge(keys(5, 82), locals_([(t, t, 1, 1, 0)] * 5), P)
    a.close()
    b.close()


# ---------------------------------------------------------------------------
# Cluster failover
# ---------------------------------------------------------------------------


def _retry(fn: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_cluster_master_killed(redis_cluster: list[Server]) -> None:
    """Kill a master: after the replica takes over, merges go on and nothing acked is lost.

    Asynchronous replication can lose the writes a master acknowledged in its
    last replication lag before dying; the test waits for replication (WAIT)
    before the kill, so here every count must be exact.
    """
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in redis_cluster)
    s = RedisStore.from_url(url, mesh=f"f{uuid.uuid4().hex[:8]}", options={"retry_time": 1})
    k = keys(3000, 91)
    t = now_ns() - S
    loc = locals_([(t, t, 1, 1, 0)] * len(k))
    for _ in range(3):
        s.merge(k, loc, P)
    masters = [n for n in redis_cluster if n.running and role(n.port) == "master"]
    for m in masters:
        with redis.Redis(port=m.port) as r:  # closed at once: no stray socket warning
            r.execute_command("WAIT", 1, 2000)
    victim = masters[0]
    replicas_before = {n.port for n in redis_cluster if n.running} - {m.port for m in masters}
    victim.kill()
    done = 3
    _retry(lambda: s.merge(k, loc, P))  # replayed until the failover completes
    done += 1
    for _ in range(2):
        s.merge(k, loc, P)
        done += 1
    got = read_all(s)
    assert len(got) == len(k)
    assert {c for _, _, c in got.values()} == {done}
    promoted = {p for p in replicas_before if role(p) == "master"}
    assert len(promoted) == 1, "a replica took over the dead master's slots"
    s.close()
    # Bring the node back (it rejoins as a replica) for the tests that follow.
    victim.start()
    wait_for(lambda: all(cluster_ok(n.port) for n in redis_cluster), 60, "cluster after restart")


def test_log_trimmed_reader_falls_back_to_full_read(redis_server: Server) -> None:
    """A reader whose cursor fell behind the trimmed change log reads its buckets in full."""
    url = f"redis://127.0.0.1:{redis_server.port}?buckets=1&log_retention=1"
    mesh = f"r{uuid.uuid4().hex[:8]}"
    w = RedisStore.from_url(url, mesh=mesh)
    r = RedisStore.from_url(url, mesh=mesh)
    _, _, old = r.changes(None)
    k = keys(300, 201)
    t = now_ns() - S
    w.merge(k, locals_([(t, t + 1, 1, 1, 0)] * 300), P)
    w.merge(k[:150], locals_([(t, t + 2, 2, 1, 0)] * 150), P)
    meta = w.raw_client(w.bucket_keys(0)["meta"]).hgetall(w.bucket_keys(0)["meta"])
    assert int(meta[b"t"]) == 1, "450 logged keys > 300 records: the first entry is trimmed"
    # k[150:] were logged only in the trimmed entry: only a full read finds them.
    got = as_dict(*r.changes(old)[:2])
    assert len(got) == 300
    assert got[k[0].tobytes()][2] == 2
    assert got[k[200].tobytes()][2] == 1
    # Age: expire trims entries older than log_retention (the newest stays).
    _, _, cur = r.changes(None)
    for i in range(4, 7):
        w.merge(k[:10], locals_([(t, t + i, i, 1, 0)] * 10), P)
    time.sleep(2.1)
    w.merge(k[:1], locals_([(t, t + 9, 9, 1, 0)]), P)
    before_t = int(w.raw_client(w.bucket_keys(0)["meta"]).hget(w.bucket_keys(0)["meta"], "t"))
    assert w.expire(0) == 0
    after_t = int(w.raw_client(w.bucket_keys(0)["meta"]).hget(w.bucket_keys(0)["meta"], "t"))
    assert after_t > before_t
    got2 = as_dict(*r.changes(cur)[:2])
    assert set(got2) >= {x.tobytes() for x in k[:10]}
    w.close()
    r.close()
