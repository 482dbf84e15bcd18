"""Arbitrary bytes where the mesh or a client puts data: only the documented errors.

Everything a store hands back was written by some proxy of the mesh (or by
anyone who can write to the store); everything on the control socket by a
local client.  Each decoder gets arbitrary bytes, shaped as its input is
shaped (a list of values, a reply per bucket...), and may only return
(skipping what is bad) or raise its documented error type:

===========================================  ===============================
decoder                                      may raise
===========================================  ===============================
stores._common.decode_values                 nothing (bad records skipped)
stores.redis.decode_heartbeats               nothing (bad heartbeats skipped)
RedisStore.merge, its reply                  BadRecord
RedisStore.changes, its replies              nothing (bad buckets skipped)
EtcdStore._decode_for_merge, _decode_kvs     nothing (corrupt = absent)
EtcdStore._take_logged (a merge log entry)   nothing (a mismatch = absent)
EtcdStore.changes (records, change log)      nothing (a bad log reads all)
EtcdStore.proxies (heartbeats)               nothing
control.parse_request                        BadRequest
control.handle_request, a live server        nothing (an error reply)
===========================================  ===============================

Each test runs a bounded number of examples (well under 10 s here).
"""

from __future__ import annotations

import json
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpro.core.layout import FLOW_KEY, LOCAL, MASTER
from xpro.core.model import R_DEN, SyncParams
from xpro.daemon.control import (
    BadRequest,
    ControlServer,
    handle_request,
    parse_request,
    request,
)
from xpro.errors import BadRecord
from xpro.stores._common import KEY_SIZE, RECORD_SIZE, decode_values, valid_master

pytestmark = pytest.mark.unit

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
U64 = st.integers(0, (1 << 64) - 1)
NOW = time.time_ns()
LIMIT = NOW + 86_400 * 10**9

keys36 = st.binary(min_size=KEY_SIZE, max_size=KEY_SIZE)


def _record(ts1: int, ts2: int, c: int) -> bytes:
    return struct.pack("<QQQ", ts1, ts2, c)


#: A stored value: mostly 24 bytes (then any u64s, in bounds or not), or any bytes.
values = st.one_of(
    st.builds(_record, U64, U64, U64),
    st.builds(_record, st.integers(0, LIMIT), st.integers(0, LIMIT), st.integers(0, 1 << 62)),
    st.binary(max_size=64),
)
heartbeat_values = st.one_of(
    st.builds(struct.Struct("<dQ").pack, st.floats(allow_nan=True, allow_infinity=True), U64),
    st.binary(max_size=32),
    st.none(),
)


def _check_records(ks: np.ndarray, recs: np.ndarray) -> None:
    assert ks.dtype == FLOW_KEY
    assert recs.dtype == MASTER
    assert len(ks) == len(recs)
    assert valid_master(recs, LIMIT).all()


# -- _common ---------------------------------------------------------------------------


@FUZZ
@given(st.lists(st.tuples(keys36, st.one_of(values, st.none())), max_size=40))
def test_decode_values_skips_what_is_bad(items: list[tuple[bytes, bytes | None]]) -> None:
    ks, recs = decode_values([k for k, _ in items], [v for _, v in items], LIMIT, "fuzz")
    _check_records(ks, recs)
    good = [(k, v) for k, v in items if v is not None and len(v) == RECORD_SIZE
            and valid_master(np.frombuffer(v, dtype=MASTER), LIMIT).all()]
    assert len(ks) == len(good)


# -- redis -----------------------------------------------------------------------------


@FUZZ
@given(st.lists(st.tuples(st.binary(max_size=80), heartbeat_values), max_size=20))
def test_redis_heartbeats_skip_what_is_bad(items: list[tuple[bytes, bytes | None]]) -> None:
    from xpro.stores.redis import _pairs_b, decode_heartbeats

    out = decode_heartbeats(items, LIMIT, "fuzz")
    for name, p in out.items():
        assert isinstance(name, str)
        assert np.isfinite(p.workload)
        assert p.workload >= 0
        assert 0 <= p.last_seen <= LIMIT
    flat = [x for kv in items for x in kv if x is not None]
    decode_heartbeats(_pairs_b(flat), LIMIT, "fuzz")  # an odd HGETALL reply too


def _redis_store() -> Any:
    from xpro.stores.redis import RedisStore

    store = RedisStore.from_url("redis://127.0.0.1:1", options={"buckets": 4})
    store._epoch = "fuzz"
    return store


PARAMS = SyncParams(t_t1=10 * 10**9, t_t4=100 * 10**9, r_q=2 * R_DEN)


@FUZZ
@given(st.integers(1, 6), st.data())
def test_redis_merge_reply_only_raises_bad_record(n: int, data: st.DataObject) -> None:
    store = _redis_store()
    keys = np.zeros(n, dtype=FLOW_KEY)
    keys["src"] = [bytes([i + 1]) * 16 for i in range(n)]
    local = np.zeros(n, dtype=LOCAL)
    local["ts1"], local["ts2"], local["c"] = NOW, NOW, 1

    def execute(calls: list[Any], what: str) -> list[Any]:
        out: list[Any] = []
        for call in calls:
            m = len(call.idx)
            exact = st.builds(lambda f, r: f + r, st.binary(min_size=m, max_size=m),
                              st.binary(min_size=m * RECORD_SIZE, max_size=m * RECORD_SIZE))
            out.append(data.draw(st.one_of(exact, st.binary(max_size=200),
                                           st.just(RuntimeError("WRONGTYPE")))))
        return out

    store._execute = execute
    try:
        existed, before = store.merge(keys, local, PARAMS)
    except BadRecord:
        return
    assert existed.dtype == bool
    assert before.dtype == MASTER
    assert len(existed) == len(before) == n


@FUZZ
@given(st.data())
def test_redis_changes_skip_what_is_bad(data: st.DataObject) -> None:
    store = _redis_store()
    fields = st.one_of(keys36, st.binary(max_size=40))

    def execute(calls: list[Any], what: str) -> list[Any]:
        out: list[Any] = []
        for call in calls:
            op = call.args[0]
            if op == "HGET":
                out.append(b"fuzz")
            elif op == "FCALL_RO":
                mode = data.draw(st.sampled_from([0, 0, 1, 3]))
                kb = data.draw(st.one_of(
                    st.lists(keys36, max_size=6).map(b"".join), st.binary(max_size=120)))
                vals = data.draw(st.lists(st.one_of(values, st.none()), max_size=6))
                out.append([data.draw(st.integers(0, 1 << 40)), mode, kb, vals])
            elif op == "HSCAN":
                items = data.draw(st.lists(st.tuples(fields, values), max_size=6))
                out.append([0, [x for kv in items for x in kv]])
            else:
                raise AssertionError(op)
        return out

    store._execute = execute
    ks, recs, _ = store.changes(None)
    _check_records(ks, recs)


# -- etcd ------------------------------------------------------------------------------


def _etcd_store() -> Any:
    pytest.importorskip("etcd3")
    from xpro.stores.etcd import EtcdStore

    return EtcdStore.from_url("etcd://127.0.0.1:1")


def _kv(key: bytes, value: bytes, mod: int = 1) -> Any:
    return SimpleNamespace(key=key, value=value, mod_revision=mod)


@FUZZ
@given(st.lists(st.one_of(st.just([]), values.map(lambda v: [_kv(b"k", v)])), max_size=20))
def test_etcd_decode_for_merge_counts_corrupt_as_absent(vals: list[list[Any]]) -> None:
    from xpro.core.bounds import Bounds
    from xpro.stores._common import FLAG_ABSENT, FLAG_CORRUPT, FLAG_EXISTED, FLAG_REFUSED

    bounds = Bounds(now=NOW, future=LIMIT - NOW)
    recs, flags = _etcd_store()._decode_for_merge(vals, bounds)
    assert len(recs) == len(flags) == len(vals)
    assert set(flags.tolist()) <= {FLAG_ABSENT, FLAG_EXISTED, FLAG_CORRUPT, FLAG_REFUSED}
    assert bounds.ok(recs[flags == FLAG_EXISTED]).all()
    assert valid_master(recs[flags == FLAG_EXISTED], LIMIT).all()
    assert (recs[flags != FLAG_EXISTED].view(np.uint8) == 0).all()


@FUZZ
@given(st.integers(0, 5), st.data())
def test_etcd_merge_log_entry_never_raises(m: int, data: st.DataObject) -> None:
    size = 4 + m * (KEY_SIZE + 1 + RECORD_SIZE)
    entry = data.draw(st.one_of(
        st.binary(min_size=size - 4, max_size=size - 4).map(lambda b: struct.pack("<I", m) + b),
        st.binary(max_size=size + 8)))
    idx = np.arange(m)
    existed, before = np.zeros(m, dtype=bool), np.zeros(m, dtype=MASTER)
    if not _etcd_store()._take_logged(entry, idx, existed, before):
        # An entry that does not match its transaction: its records are absent.
        assert not existed.any()
        assert (before.view(np.uint8) == 0).all()


@FUZZ
@given(st.lists(st.tuples(st.binary(max_size=50), values), max_size=20))
def test_etcd_records_skip_what_is_bad(items: list[tuple[bytes, bytes]]) -> None:
    store = _etcd_store()
    kvs = [_kv(store._p_rec + k, v) for k, v in items]
    _check_records(*store._decode_kvs(kvs, LIMIT))


@FUZZ
@given(st.lists(st.tuples(st.binary(max_size=50), heartbeat_values.filter(
    lambda v: v is not None)), max_size=20))
def test_etcd_heartbeats_skip_what_is_bad(items: list[tuple[bytes, bytes]]) -> None:
    store = _etcd_store()
    kvs = [_kv(store._p_hb + k, v) for k, v in items]
    store._range_all = lambda prefix, **kw: (kvs, 1, 1)
    for name, p in store.proxies().items():
        assert isinstance(name, str)
        assert np.isfinite(p.workload)
        assert 0 <= p.last_seen <= LIMIT


@FUZZ
@given(st.data())
def test_etcd_changes_skip_what_is_bad(data: st.DataObject) -> None:
    """The change log (entries written by every proxy) and the records it names."""
    from xpro.stores.etcd import EtcdCursor

    store = _etcd_store()
    log_entries = st.one_of(
        st.lists(keys36, max_size=4).map(
            lambda ks: struct.pack("<I", len(ks)) + b"".join(
                k + b"\1" + bytes(RECORD_SIZE) for k in ks)),
        st.binary(max_size=100))
    trim = data.draw(st.one_of(st.just(b""), st.binary(max_size=8), st.just(b"0")))
    header = SimpleNamespace(revision=10, cluster_id=7)
    ranges = [SimpleNamespace(response_range=SimpleNamespace(kvs=[_kv(b"v", b"", mod=9)])),
              SimpleNamespace(response_range=SimpleNamespace(
                  kvs=[_kv(b"lt", trim)] if trim else []))]
    store._call_txns = lambda reqs, what: [SimpleNamespace(header=header, responses=ranges)]

    def range_all(prefix: bytes, **kw: Any) -> tuple[list[Any], int, int]:
        if prefix == store._p_log:
            return [_kv(b"l", e) for e in data.draw(st.lists(log_entries, max_size=5))], 10, 7
        return [_kv(prefix + k, v) for k, v in data.draw(
            st.lists(st.tuples(st.one_of(keys36, st.binary(max_size=40)), values),
                     max_size=5))], 10, 7

    store._range_all = range_all
    store._get_many = lambda keys, rev: [_kv(k, data.draw(values)) for k in keys]
    cursor = data.draw(st.sampled_from([None, EtcdCursor(7, 5), EtcdCursor(8, 5)]))
    ks, recs, _ = store.changes(cursor)
    _check_records(ks, recs)


@FUZZ
@given(st.binary(max_size=40))
def test_etcd_counter_parse_never_raises(raw: bytes) -> None:
    from xpro.stores.etcd import _int

    assert isinstance(_int(raw), int)


# -- the control socket ----------------------------------------------------------------

requests = st.one_of(
    st.binary(max_size=300),
    st.integers(1, 60000).map(lambda n: b'{"op": ' + b"[" * n),  # deeper than the parser
    st.integers(1, 60000).map(lambda n: b"[" * n + b"]" * n),
    st.builds(lambda obj: json.dumps(obj).encode(), st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
            st.sampled_from(["op", "args", "limit", "src", "x"]), inner, max_size=4),
        max_leaves=12)),
    st.builds(lambda op, args: json.dumps({"op": op, "args": args}).encode(),
              st.sampled_from(["ping", "status", "flows", "nope"]),
              st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8),
                              max_size=3)),
)


def _ops() -> dict[str, Any]:
    def status(*, top: int = 5) -> dict[str, Any]:
        return {"top": top}

    def flows(*, src: str | None = None, limit: int | None = 20) -> list[Any]:
        return []

    return {"ping": lambda: {"proxy": "p1"}, "status": status, "flows": flows}


@FUZZ
@given(requests)
def test_control_request_parsing_only_raises_bad_request(raw: bytes) -> None:
    try:
        parsed: tuple[str, dict[str, Any]] | BadRequest = parse_request(raw)
    except BadRequest as exc:
        parsed = exc
    if isinstance(parsed, BadRequest):
        assert parsed.exit_code == 2
    else:
        assert isinstance(parsed[0], str)
        assert isinstance(parsed[1], dict)


@FUZZ
@given(requests)
def test_control_handler_always_replies(raw: bytes) -> None:
    reply = handle_request(_ops(), raw)
    assert isinstance(reply["ok"], bool)
    if not reply["ok"]:
        assert reply["exit_code"] == 2, reply  # the client's fault, never an internal error
    json.dumps(reply)


@pytest.fixture(scope="module")
def live_server() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="xf", dir="/tmp") as d:
        path = str(Path(d) / "c.sock")
        proxy = SimpleNamespace(name="p1", config=None, **{k: v for k, v in _ops().items()
                                                            if k != "ping"},
                                destinations=None, explain=None, reload=None,
                                metrics_text=None)
        server = ControlServer(proxy, path, read_timeout=2)  # type: ignore[arg-type]
        try:
            yield path
        finally:
            server.close()


@settings(FUZZ, max_examples=60)
@given(requests)
def test_a_live_control_server_survives_any_bytes(live_server: str, raw: bytes) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(live_server)
        s.sendall(raw + b"\n")
        reply = b""
        while chunk := s.recv(1 << 16):
            reply += chunk
    finally:
        s.close()
    assert isinstance(json.loads(reply)["ok"], bool)
    assert request(live_server, "ping", timeout=10)["proxy"] == "p1"
