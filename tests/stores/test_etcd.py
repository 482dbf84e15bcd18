"""etcd-only behaviour: bad data, conflicts, outages, a member killed."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import etcd3.etcdrpc as rpc
import grpc
import numpy as np
import pytest

from tests.stores._util import S, as_dict, keys, locals_, now_ns, read_all
from tests.stores.conftest import Server, Servers, wait_for
from xpro.core.layout import MASTER
from xpro.core.model import R_DEN, SyncParams
from xpro.errors import StoreConflict, StoreUnavailable
from xpro.stores._common import Replay, batch_digest, key_hex
from xpro.stores.base import REFUSED
from xpro.stores.etcd import EtcdStore

pytestmark = pytest.mark.integration

P = SyncParams(t_t1=10 * S, t_t4=5 * S, r_q=2 * R_DEN)
U64 = (1 << 64) - 1


def url_of(members: list[Server]) -> str:
    return "etcd://" + ",".join(f"127.0.0.1:{m.port}" for m in members)


@pytest.fixture
def estore(etcd_server: Server) -> Iterator[EtcdStore]:
    s = EtcdStore.from_url(url_of([etcd_server]), mesh=f"e{uuid.uuid4().hex[:10]}")
    yield s
    s.close()


def test_bad_data_is_skipped_and_logged(estore: EtcdStore,
                                        caplog: pytest.LogCaptureFixture) -> None:
    k = keys(8, 131)
    t = now_ns() - S
    estore.merge(k, locals_([(t, t, 5, 5, 0)] * 8), P)
    _, _, cursor = estore.changes(None)
    far = now_ns() + 3 * 86_400 * S
    bad = {
        1: b"garbage",
        2: b"\xff" * 25,
        3: np.array([(t, t, U64)], dtype=MASTER).tobytes(),
        4: np.array([(t, far, 1)], dtype=MASTER).tobytes(),
        5: b"",
    }
    for i, v in bad.items():
        estore.raw_put(estore.record_key(k[i].tobytes()), v)
    estore.raw_put(estore.record_key(b"short-key"), b"x" * 24)
    caplog.set_level(logging.WARNING, logger="xpro.stores")
    got = as_dict(*estore.changes(None)[:2])
    assert set(got) == {k[i].tobytes() for i in (0, 6, 7)}
    for i in bad:
        assert key_hex(k[i].tobytes()) in caplog.text, f"record {i} not named in the log"
    assert "not a flow key" in caplog.text
    # Raw puts bypass the change log; a corrupt log entry forces a full read.
    assert len(estore.changes(cursor)[0]) == 0
    estore.raw_put(estore._p_log + b"0000000000000000/garbage", b"\x01\x02")
    estore.raw_put(estore._k_ver, b"")
    caplog.clear()
    got2 = as_dict(*estore.changes(cursor)[:2])
    assert set(got2) == {k[i].tobytes() for i in (0, 6, 7)}
    assert "corrupt" in caplog.text
    caplog.clear()
    existed, before = estore.merge(k, locals_([(t, t + 1, 2, 2, 0)] * 8), P)
    assert list(existed) == [True, False, False, False, False, False, True, True]
    assert int(before[3]["c"]) == 0
    assert (before[4] == REFUSED).all()  # dated in the future: left as it is
    assert "was corrupt" in caplog.text
    after = read_all(estore)
    for i in (1, 2, 3, 5):
        assert after[k[i].tobytes()] == (t, t + 1, 2)
    assert k[4].tobytes() not in after
    assert after[k[0].tobytes()] == (t, t + 1, 7)
    assert estore.expire(0) == 2  # the future one and the short key
    assert k[4].tobytes() not in read_all(estore)
    assert len(read_all(estore)) == 7


class _Meddler(EtcdStore):
    """An EtcdStore that lets a real second writer win the race ``times`` times."""

    times = 0
    victim: bytes = b""

    def _call_txns(self, reqs: Any, what: str) -> list[Any]:
        if what == "merge" and self.times > 0:
            self.times -= 1
            other = EtcdStore.from_url(self.url, mesh=self.mesh)
            t = now_ns() - S
            other.merge(np.frombuffer(self.victim, dtype=keys(1, 0).dtype).copy(),
                        locals_([(t, t, 100, 100, 0)]), P)
            other.close()
        return super()._call_txns(reqs, what)


def test_conflicts_are_retried_and_merged_exactly(etcd_server: Server) -> None:
    mesh = f"e{uuid.uuid4().hex[:10]}"
    s = _Meddler.from_url(url_of([etcd_server]), mesh=mesh)
    assert isinstance(s, _Meddler)
    k = keys(300, 141)
    t = now_ns() - S
    s.merge(k, locals_([(t, t, 1, 1, 0)] * len(k)), P)
    s.victim = k[5].tobytes()
    s.times = 2  # the first two compare-and-swaps lose against a real concurrent merge
    s.merge(k, locals_([(t, t, 2, 1, 0)] * len(k)), P)
    got = read_all(s)
    assert got[k[5].tobytes()][2] == 1 + 100 + 100 + 1
    assert {c for kb, (_, _, c) in got.items() if kb != k[5].tobytes()} == {2}
    s.max_retries = 3
    s.times = 10
    with pytest.raises(StoreConflict, match="compare-and-swap"):
        s.merge(k, locals_([(t, t, 3, 1, 0)] * len(k)), P)
    s.close()


def test_replay_applies_once(estore: EtcdStore) -> None:
    k = keys(400, 151)
    t = now_ns() - S
    estore.merge(k, locals_([(t, t, 3, 3, 0)] * len(k)), P)
    loc2 = locals_([(t, t + 1, 4, 1, 0)] * len(k))
    e1, b1 = estore.merge(k, loc2, P)
    estore._replay = Replay(batch_digest(k, loc2, P), estore._op)  # as if the replies were lost
    e2, b2 = estore.merge(k, loc2, P)
    assert (e1 == e2).all()
    assert (b1 == b2).all()
    assert {c for _, _, c in read_all(estore).values()} == {4}
    estore.merge(k, loc2, P)
    assert {c for _, _, c in read_all(estore).values()} == {5}


def test_unavailable_then_back(server_factory: Servers) -> None:
    (srv,) = server_factory.etcd(1)
    s = EtcdStore.from_url(url_of([srv]), mesh="outage", options={"retry_time": 0.3,
                                                                  "timeout": 1})
    k = keys(100, 161)
    t = now_ns() - S
    s.merge(k, locals_([(t, t, 1, 1, 0)] * 100), P)
    _, _, cur = s.changes(None)
    srv.stop()
    for call in (lambda: s.merge(k, locals_([(t, t, 1, 1, 0)] * 100), P),
                 lambda: s.changes(cur), lambda: s.heartbeat("p", 1.0, t), s.proxies, s.ping):
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{srv.port}.*retries"):
            call()
    srv.start()
    s.ping()
    existed, _ = s.merge(k, locals_([(t, t + 1, 2, 1, 0)] * 100), P)
    assert existed.all()
    got, _, _ = s.changes(cur)
    assert len(got) == 100
    assert {c for _, _, c in read_all(s).values()} == {2}
    s.close()


def _leader(members: list[Server]) -> Server:
    for m in members:
        if not m.running:
            continue
        ch = grpc.insecure_channel(f"127.0.0.1:{m.port}")
        try:
            st = rpc.MaintenanceStub(ch).Status(rpc.StatusRequest(), timeout=2)
            if st.leader == st.header.member_id:
                return m
        except grpc.RpcError:
            pass
        finally:
            ch.close()
    raise AssertionError("no leader")


def test_member_killed_nothing_lost(etcd_cluster: list[Server]) -> None:
    """Kill the leader mid-run: the store fails over, elections finish, no merge is lost."""
    s = EtcdStore.from_url(url_of(etcd_cluster), mesh=f"e{uuid.uuid4().hex[:10]}")
    k = keys(600, 171)
    t = now_ns() - S
    loc = locals_([(t, t, 1, 1, 0)] * len(k))
    done = 0
    for _ in range(2):
        s.merge(k, loc, P)
        done += 1
    victim = _leader(etcd_cluster)
    victim.kill()
    deadline = time.monotonic() + 60
    for _ in range(3):
        while True:
            try:
                s.merge(k, loc, P)  # after StoreUnavailable: the same call again (a replay)
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        done += 1
    got = read_all(s)
    assert len(got) == len(k)
    assert {c for _, _, c in got.values()} == {done}
    s.close()
    victim.start()
    wait_for(lambda: _leader(etcd_cluster) is not None, 30, "etcd leader")


def test_log_trimmed_reader_falls_back_to_full_read(etcd_server: Server) -> None:
    mesh = f"e{uuid.uuid4().hex[:10]}"
    url = url_of([etcd_server])
    w = EtcdStore.from_url(url, mesh=mesh, options={"log_retention": 1})
    r = EtcdStore.from_url(url, mesh=mesh)
    k = keys(200, 181)
    t = now_ns() - S
    w.merge(k, locals_([(t, t, 1, 1, 0)] * len(k)), P)
    _, _, cur = r.changes(None)
    w.merge(k, locals_([(t, t + 1, 2, 1, 0)] * len(k)), P)
    time.sleep(1.2)
    w.merge(k[:5], locals_([(t, t + 2, 3, 1, 0)] * 5), P)
    assert w.expire(0) == 0  # trims the log entries older than 1 s (never compacts)
    # Compaction is the administrator's (xpro store compact): readers still work after it.
    assert w.compact(w.revision())
    assert not w.compact(w.revision() - 1)  # compacted that far already
    got = as_dict(*r.changes(cur)[:2])
    assert len(got) == 200, "entries the reader never saw were trimmed: a full read"
    assert got[k[0].tobytes()][2] == 3
    assert got[k[100].tobytes()][2] == 2
    _, _, cur2 = r.changes(None)
    w.merge(k[:7], locals_([(t, t + 3, 4, 1, 0)] * 7), P)
    assert len(r.changes(cur2)[0]) == 7, "after the fallback, reads are incremental again"
    w.close()
    r.close()


def test_close_from_another_thread_does_not_wait_for_a_call_in_flight(
        estore: EtcdStore) -> None:
    """A merge or a read holds the store's lock for its whole RPC; the stop's
    interrupt (close, from the stopping thread) waited for it to time out,
    so it cut nothing.  It closes the channels at once now, and the store
    refuses every later call."""
    import threading

    estore.ping()
    held, release = threading.Event(), threading.Event()

    def in_flight() -> None:
        with estore._lock:  # what merge/changes/pull hold while their RPC runs
            held.set()
            release.wait(10)

    t = threading.Thread(target=in_flight)
    t.start()
    try:
        assert held.wait(5)
        start = time.monotonic()
        estore.close()
        assert time.monotonic() - start < 1.0
    finally:
        release.set()
        t.join(5)
    with pytest.raises(StoreUnavailable, match="closed"):
        estore.ping()
