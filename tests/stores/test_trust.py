"""Attacks through the master store, on memory, Redis and etcd (docs/security.rst).

Each test is an attack by someone who can write the store (a store writer, or
a compromised proxy with its credential): they forge records the way such a
writer can -- raw bytes in the record hash or key, with a change-log entry so
that every proxy reads them -- while proxies running the real XDP program
(BPF_PROG_TEST_RUN, a fake clock) sync every second.  The figures each test
checks are the ones docs/security.rst quotes, before and after the proxies
stopped trusting the store's values.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from tests.packets import frame, run_frames
from tests.stores.conftest import backend_url
from xpro.core import layout as L
from xpro.core import model
from xpro.core.layout import MASTER, Reason
from xpro.core.params import Sizes
from xpro.core.pull import AGG_KEY, PARTIAL
from xpro.datapath.xdp import XdpFilter
from xpro.plugins import open_store
from xpro.stores.base import Store
from xpro.stores.etcd import EtcdStore
from xpro.stores.memory import MemoryStore
from xpro.stores.redis import RedisStore
from xpro.sync import Syncer, SyncLoop

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="loads BPF programs: needs root"),
]

S = model.NS_PER_S
T0 = 1_700_000_000 * S
PARAMS = model.FilterParams(t_t1=10 * S, t_t2=S, t_f1=100, t_t3=S, t_f2=10_000)
SYNC = model.SyncParams(t_t1=10 * S, t_t4=5 * S, r_q=2 * model.R_DEN)
SIZES = Sizes(flows=8192, dsts=256, prefixes=16)
DST = "10.9.9.9"
BOT = frame("10.0.0.66", DST)
LEGIT = frame("10.0.0.7", DST)
NEWCOMER = frame("10.0.0.8", DST)


def key_of(fr: bytes) -> bytes:
    return model.parse(fr, 0).key


# ---------------------------------------------------------------------------
# A mesh of proxies on one store, and a forger with raw access to it
# ---------------------------------------------------------------------------


class Proxy:
    def __init__(self, name: str, store: Store) -> None:
        self.filt = XdpFilter(PARAMS, sizes=SIZES)
        self.sync = Syncer(self.filt, store, name, SYNC)
        self.stats: list[Any] = []

    def send(self, fr: bytes, now: int, n: int = 1) -> int:
        """``n`` packets of ``fr`` at ``now``; returns how many passed."""
        self.filt.set_clock(now)
        before = int(np.asarray(self.filt.counters())[Reason.PASS, 0])
        run_frames(self.filt.program, fr, n)
        return int(np.asarray(self.filt.counters())[Reason.PASS, 0]) - before

    def round(self, now: int) -> None:
        self.stats.append(self.sync.round(now))

    def quarantined(self) -> int:
        return sum(getattr(s, "quarantined", 0) for s in self.stats)


@contextlib.contextmanager
def two_proxies(url: str) -> Iterator[tuple[str, str, list[Proxy]]]:
    """Proxies p0 and p1 on a new mesh of the store at ``url``, closed after."""
    name = f"t{uuid.uuid4().hex[:10]}"
    proxies: list[Proxy] = []
    try:
        proxies += [Proxy(f"p{i}", open_store(url, mesh=name)) for i in range(2)]
        yield url, name, proxies
    finally:
        for p in proxies:
            p.filt.close()
            p.sync.store.close()
        if url.startswith("memory://"):
            MemoryStore.forget(url.removeprefix("memory://"), name)


@pytest.fixture(params=["memory", "redis", "etcd"])
def mesh(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, list[Proxy]]]:
    with two_proxies(backend_url(request, str(request.param))) as m:
        yield m


def forge(url: str, mesh: str, key: bytes, ts1: int, ts2: int, c: int) -> None:
    """Write a raw master record, as a store writer can, and log it as changed."""
    value = np.array([(ts1, ts2, c)], dtype=MASTER).tobytes()
    forge_raw(url, mesh, {key: value})


def forge_raw(url: str, mesh: str, records: dict[bytes, bytes]) -> None:
    st = open_store(url, mesh=mesh)
    try:
        if isinstance(st, MemoryStore):
            for k, v in records.items():
                ts1, ts2, c = struct.unpack("<QQQ", v)
                st.poke(k, ts1, ts2, c)
        elif isinstance(st, RedisStore):
            st.changes(None)  # creates the mesh's configuration if needed
            for k, v in records.items():
                names = st.bucket_keys(st.key_bucket(k))
                cl = st.raw_client(names["records"])
                cl.hset(names["records"], k, v)
                cl.rpush(names["log"], struct.pack(">I", int(time.time())) + k)
                cl.hincrby(names["meta"], "n", 1)
                cl.hincrby(names["meta"], "k", 1)
        else:
            assert isinstance(st, EtcdStore)
            st.changes(None)
            for k, v in records.items():
                st.raw_put(st.record_key(k), v)
                entry = struct.pack("<I", 1) + k + b"\x01" + v
                st.raw_put(st._p_log + f"{time.time_ns():016x}/forger/00000001/000000".encode(),
                           entry)
            st.raw_put(st._k_ver, b"")
    finally:
        st.close()


def forge_partial(store: Store, dkey: bytes, slot: int, ts1: int, ts2: int, c: int) -> None:
    """Write the master's partial of destination ``dkey`` in ``slot`` (a memory
    store), with a change-log entry so that every proxy pulls it."""
    st = store._state  # type: ignore[attr-defined]
    ak = np.zeros(1, dtype=AGG_KEY)
    ak["dst"] = np.frombuffer(dkey, dtype=L.DST_KEY)
    ak["slot"] = slot
    part = np.array([(ts1, ts2, c, 1)], dtype=PARTIAL)
    with st.lock:
        st.version += 1
        st.partials[ak.tobytes()] = part[0]
        st.plog.append((st.version, [ak.tobytes()]))


def master_record(p: Proxy, key: bytes) -> tuple[int, int, int] | None:
    keys, recs, _ = p.sync.store.changes(None)
    for k, r in zip(keys, recs, strict=True):
        if k.tobytes() == key:
            return int(r["ts1"]), int(r["ts2"]), int(r["c"])
    return None


def bot_through(mesh: tuple[str, str, list[Proxy]],
                window: Callable[[int, int], tuple[int, int] | None]) -> int:
    """30 s of the bot at 1000 packets/s (10 x T_F1) through proxy A, both
    proxies syncing every second; after each round (``second``, ``now``),
    ``window`` gives the (ts1, ts2) to forge the bot's master record with,
    one packet (None: no forgery).  Returns how many of its packets passed."""
    url, name, (a, b) = mesh
    passed = 0
    for second in range(30):
        for tick in range(100):
            passed += a.send(BOT, T0 + second * S + tick * S // 100, 10)
        now = T0 + (second + 1) * S
        a.round(now)
        b.round(now)
        forged = window(second, now)
        if forged is not None:
            forge(url, name, key_of(BOT), *forged, 1)
    return passed


# ---------------------------------------------------------------------------
# The attacks
# ---------------------------------------------------------------------------


def test_a_flood_dated_in_the_future_is_still_dropped(mesh: tuple[str, str, list[Proxy]]
                                                      ) -> None:
    """The bot's master record set once to ts1 = ts2 = now + 80,000 s: before,
    every proxy copied that start into its kernel record and the per-source
    check never judged the flow again: 28,010 of 30,000 passed (now 1,010,
    its first second)."""
    _, _, (a, b) = mesh

    def ahead(second: int, now: int) -> tuple[int, int] | None:
        return (now + 80_000 * S, now + 80_000 * S) if second == 1 else None

    passed = bot_through(mesh, ahead)
    assert passed <= 1_001 + 10, passed
    assert a.quarantined() + b.quarantined() >= 1
    rec = master_record(a, key_of(BOT))
    assert rec is not None
    assert rec[1] <= T0 + 31 * S, "the forged record does not stay in the master"


@pytest.mark.parametrize("start", ["1970", "a day before", "1970, then ahead, in turn"])
def test_a_window_start_forged_in_the_past_does_not_switch_off_the_limit(
        mesh: tuple[str, str, list[Proxy]], start: str) -> None:
    """The bot's master record set once to a window that starts long ago, with
    one packet: before, every proxy took that start into its kernel record,
    its own packets counted over decades (or a day), and 26,715 (12,244) of
    the bot's 30,000 packets passed; now its window reaches back T_T4 at most
    (docs/sync.rst, "How far back a local window reaches").  In turn with a
    record dated ahead (the merge refused, the row retried): a span taken
    from the row's own window grew by a period a round, and 4,791 passed
    (memory store); the span now counts from the round before the refusal."""
    def window(second: int, now: int) -> tuple[int, int] | None:
        if start == "a day before":
            return (now - 86_400 * S, now) if second == 1 else None
        if start == "1970":
            return (0, now) if second == 1 else None
        ahead = now + 1000 * S
        return None if second < 1 else (0, now) if second % 2 else (ahead, ahead)

    passed = bot_through(mesh, window)
    assert passed <= 1_001 + 10, passed


def test_a_forged_huge_count_does_not_drop_a_legitimate_source(
        mesh: tuple[str, str, list[Proxy]]) -> None:
    """A count of 2**62 on a legitimate flow: before, the source was dropped at
    every proxy from the next round on (170 of 200 packets dropped at A; now
    none)."""
    url, name, (a, b) = mesh
    passed = sent = 0
    for second in range(20):
        for tick in range(10):  # 10 packets/s
            sent += 1
            passed += a.send(LEGIT, T0 + second * S + tick * S // 10)
        now = T0 + (second + 1) * S
        a.round(now)
        b.round(now)
        if second == 1:
            forge(url, name, key_of(LEGIT), now - 5 * S, now, 1 << 62)
    assert passed == sent, f"{sent - passed} of {sent} dropped"
    assert b.send(LEGIT, T0 + 21 * S) == 1, "the proxy that never saw it passes it too"
    assert a.quarantined() + b.quarantined() >= 1


def test_forged_flows_under_t_f1_do_not_close_a_destination(
        mesh: tuple[str, str, list[Proxy]]) -> None:
    """150 forged flows at 90 packets/s each (under T_F1 = 100) add up to
    13,500 packets/s, over T_F2 = 10,000: before, the destination closed at
    every proxy without a packet of them sent, and a new client was dropped
    (180 of 200; now none)."""
    url, name, (a, b) = mesh
    for second in range(3):
        for tick in range(10):
            a.send(LEGIT, T0 + second * S + tick * S // 10)
        now = T0 + (second + 1) * S
        a.round(now)
        b.round(now)
    forged = [key_of(frame(f"10.50.{i // 200}.{i % 200 + 1}", DST)) for i in range(150)]
    start = T0 - 7 * S
    passed = sent = 0
    for second in range(3, 13):
        # The forger keeps them going: 90 packets/s each, rewritten every second.
        now = T0 + second * S
        rec = np.array([(start, now, 90 * (now - start) // S)], dtype=MASTER).tobytes()
        forge_raw(url, name, dict.fromkeys(forged, rec))
        for tick in range(10):
            t = T0 + second * S + tick * S // 10
            a.send(LEGIT, t)
            for p in (a, b):
                sent += 1
                passed += p.send(NEWCOMER, t)
        now = T0 + (second + 1) * S
        a.round(now)
        b.round(now)
    assert passed == sent, f"the new client: {sent - passed} of {sent} dropped"
    assert not a.sync.known.closed
    assert not b.sync.known.closed


def test_a_master_count_of_exactly_2_62_does_not_wedge_the_sync(
        mesh: tuple[str, str, list[Proxy]]) -> None:
    """Before: the merged count went over 2**62, the batch was refused, and the
    failed batch was replayed first on every round, forever, as "master store
    unreachable" (9 of A's 10 rounds after it failed, store_down raised, the
    source dropped; now none failed)."""
    url, name, (a, b) = mesh
    clock = {"now": T0}
    alerts: list[str] = []
    loops = []
    for p in (a, b):
        real = p.sync.round
        p.sync.round = lambda now=None, _r=real: _r(clock["now"])  # type: ignore[method-assign]
        loops.append(SyncLoop(p.sync, 1.0, on_alert=lambda k, m: alerts.append(k)))
    failed = 0
    for second in range(12):
        for tick in range(10):
            a.send(LEGIT, T0 + second * S + tick * S // 10)
        clock["now"] = T0 + (second + 1) * S
        for loop in loops:
            before = loop.status.failed_total
            loop.step()
            failed += loop.status.failed_total - before
        if second == 1:
            # A one-second window: the merge adds to it without shortening it.
            forge(url, name, key_of(LEGIT), clock["now"] - S, clock["now"], 1 << 62)
    assert failed == 0, f"{failed} failed rounds"
    assert "store_down" not in alerts
    assert all(loop.status.healthy for loop in loops)
    assert a.sync._pending is None
    last = loops[0].status.last
    assert last is not None
    assert a.send(LEGIT, clock["now"]) == 1


@pytest.mark.parametrize("mesh", ["redis", "etcd"], indirect=True)
def test_a_rewritten_mesh_configuration_is_not_adopted(mesh: tuple[str, str, list[Proxy]]
                                                       ) -> None:
    """The mesh's configuration key rewritten under running proxies (another
    bucket count, encoding and epoch): before, on Redis, 12 of the 16 rounds
    after it failed with a ConfigError and the master stayed at 30 of the 80
    packets sent (now no round fails and the master, A and B hold 80).  etcd
    proxies read the key once, at connect: the rewrite never reached them."""
    url, name, (a, b) = mesh
    for p in (a, b):  # no window shortening: the master counts every packet
        p.sync.params = model.SyncParams(t_t1=10 * S, t_t4=10_000 * S)
    st = open_store(url, mesh=name)
    sent = 0
    errors = 0
    try:
        for second in range(8):
            for tick in range(10):
                sent += 1
                a.send(LEGIT, T0 + second * S + tick * S // 10)
            now = T0 + (second + 1) * S
            for p in (a, b):
                try:
                    p.round(now)
                except Exception:
                    errors += 1
            if second == 1:
                if isinstance(st, RedisStore):
                    st.changes(None)
                    cfg = f"{{xpro:{name}}}:cfg"
                    st.raw_client(cfg).hset(cfg, mapping={"buckets": 7, "encoding": 9,
                                                          "epoch": "forged"})
                else:
                    assert isinstance(st, EtcdStore)
                    st.raw_put(st._k_cfg, b"encoding=9")
    finally:
        st.close()
    assert errors == 0
    if url.startswith("redis"):
        assert a.quarantined() >= 1, "the rewrite is reported"
    rec = master_record(a, key_of(LEGIT))
    assert rec is not None
    assert rec[2] == sent, f"master count {rec[2]}, {sent} packets sent"
    if b.sync.partials is None:  # the full pull: B holds every record
        f = b.filt.flows.get(key_of(LEGIT))
        assert f is not None
        assert int(f["c"]) == sent
    else:  # far under T_F1, not a candidate: B holds it in the destination's partials
        # (and writes that aggregate into its program only once it holds it,
        # or once it is near T_F2: docs/sync.rst, "What a round pulls")
        dk = np.frombuffer(key_of(LEGIT)[16:], dtype=L.DST_KEY)
        _, _, c = b.sync.partials.values(dk, now)
        assert int(c[0]) == sent


@pytest.fixture
def memory_mesh() -> Iterator[tuple[Proxy, Proxy]]:
    """Proxies p0 and p1 on a new memory:// mesh (forge_partial writes it)."""
    with two_proxies(f"memory://{uuid.uuid4().hex[:10]}") as (_, _, (a, b)):
        yield a, b


def _clients_for_a_second(a: Proxy, b: Proxy, second: int) -> None:
    """LEGIT through A and NEWCOMER through B, 10 packets/s each, in ``second``."""
    for tick in range(10):
        t = T0 + second * S + tick * S // 10
        a.send(LEGIT, t)
        b.send(NEWCOMER, t)


def test_a_forged_partial_does_not_close_a_destination_even_within_a_round(
        memory_mesh: tuple[Proxy, Proxy]) -> None:
    """A store writer forges the master's partial of a destination: 20,000
    packets/s over 10 s (over T_F2, within every bound), while the mesh's
    proxies say they see 10 packets/s.  The round's recompute caps what other
    proxies' flows may add (docs/security.rst); the closure a round raises
    right after its pull must be held to the same cap, or the destination is
    closed to new clients for as long as the rest of the round takes (before:
    closed in the program when the recompute started, at every round)."""
    a, b = memory_mesh
    dkey = key_of(LEGIT)[16:]
    closed_in_round: list[bool] = []
    real = b.sync._recompute_destinations

    def recompute(dst_ids: Any, now: int) -> Any:
        have, rec = b.filt.read_dsts_of(np.frombuffer(dkey, dtype=L.DST_KEY))
        w = now - int(rec["ts1"][0])
        closed_in_round.append(bool(have[0]) and w > S and int(rec["c"][0]) * S > 10_000 * w)
        return real(dst_ids, now)

    b.sync._recompute_destinations = recompute  # type: ignore[method-assign]
    for second in range(8):
        _clients_for_a_second(a, b, second)
        now = T0 + (second + 1) * S
        if second >= 3:
            forge_partial(a.sync.store, dkey, now // b.sync.rule.slot_ns, now - 10 * S, now,
                          20_000 * 10)
        a.round(now)
        b.round(now)
    assert len(closed_in_round) == 8
    assert not any(closed_in_round), closed_in_round
    assert not b.sync.known.closed


def test_a_forged_partial_growing_fast_does_not_close_by_its_recent_rate(
        memory_mesh: tuple[Proxy, Proxy]) -> None:
    """A store writer forges a heartbeat (W = 2,500 packets/s, a quarter of
    T_F2) and a partial of the destination that gains 15,000 packets every
    second.  Over its window that is under T_F2 once held to the workloads'
    budget; its gain over the last second (the recent rate,
    docs/semantics.rst) must be held to the workloads over that second, not
    over that second plus the merge lag: with the lag the budget is 15,000,
    and the destination closed at the second forged round."""
    a, b = memory_mesh
    dkey = key_of(LEGIT)[16:]
    for second in range(8):
        _clients_for_a_second(a, b, second)
        now = T0 + (second + 1) * S
        if second >= 3:
            a.sync.store.heartbeat("evil", 2_500.0, now)
            forge_partial(a.sync.store, dkey, now // b.sync.rule.slot_ns, now - 10 * S, now,
                          15_000 * (second - 2))
        a.round(now)
        b.round(now)
        assert not b.sync.known.closed, second
    assert b.sync.mesh_rate() >= 2_500


def test_a_partial_in_a_slot_ahead_is_quarantined(memory_mesh: tuple[Proxy, Proxy]) -> None:
    """A store writer forges a destination's partial in a slot the clock has
    not reached (2**62, and an hour ahead), its ts1 a day back.  Before, it
    was taken as live until the clock reached its slot -- for good: the
    destination's window at every proxy stayed a day long (its window rule
    and the "near" test off) and expiry never removed it.  Now a partial
    whose slot lies after the latest time in bounds is quarantined, counted,
    and never counts (docs/security.rst)."""
    a, b = memory_mesh
    dkey = key_of(LEGIT)[16:]
    dk = np.frombuffer(dkey, dtype=L.DST_KEY)
    sl = b.sync.rule.slot_ns
    for second in range(4):
        _clients_for_a_second(a, b, second)
        now = T0 + (second + 1) * S
        if second == 1:
            for slot in (1 << 62, (now + 3600 * S) // sl):
                forge_partial(a.sync.store, dkey, slot, now - 86_400 * S, now, 1)
        a.round(now)
        b.round(now)
    assert b.quarantined() >= 2
    _, t2, _ = b.sync.partials.values(dk, now + 3600 * S)  # type: ignore[union-attr]
    assert int(t2[0]) == 0
    have, rec = b.filt.read_dsts_of(dk)
    assert have[0]
    assert now - int(rec["ts1"][0]) < 10 * S, now - int(rec["ts1"][0])


def test_forged_partials_of_made_up_destinations_stay_out_of_the_destination_table(
        memory_mesh: tuple[Proxy, Proxy]) -> None:
    """A store writer forges 2000 partials of destinations no proxy saw, each
    in the current slot and in bounds, with a count of 2**40: far over T_F2
    and far over what the mesh's workloads back.  A proxy writes into its
    program the destinations the master's aggregate puts near their limit;
    judged on the forged count, 208 of them filled its 256-entry destination
    table at the first round (before).  Judged on the count the workloads
    back, as the values written are, none is written."""
    a, b = memory_mesh
    fakes = [key_of(frame("10.0.0.1", f"10.77.{i // 250}.{i % 250}"))[16:]
             for i in range(2000)]
    for second in range(4):
        _clients_for_a_second(a, b, second)
        now = T0 + (second + 1) * S
        if second == 1:
            for d in fakes:
                forge_partial(a.sync.store, d, now // b.sync.rule.slot_ns, now - S, now, 1 << 40)
        a.round(now)
        b.round(now)
        keys, _ = b.filt.read_dsts()
        assert len(keys) <= 2, (second, len(keys))
    assert sum(s.partials for s in b.stats) >= 2000  # they were pulled, in bounds
    assert not b.sync.known.closed


# ---------------------------------------------------------------------------
# Redis's own keys (a fuzz of a live mesh's keys, 2026-12-07): each took one
# write to switch a limit off, silently, for good
# ---------------------------------------------------------------------------


@pytest.fixture
def redis_mesh(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, list[Proxy]]]:
    with two_proxies(backend_url(request, "redis")) as m:
        yield m


def _each_bucket(p: Proxy, fn: Any) -> None:
    st = p.sync.store
    assert isinstance(st, RedisStore)
    for b in range(st.buckets):
        names = st.bucket_keys(b)
        fn(st.raw_client(names["meta"]), names, st._tags[b])


def _bot_through_a_then_b(a: Proxy, b: Proxy, start: int) -> int:
    """The bot at 10 x T_F1 through A for three seconds, rounds every second;
    then 100 of its packets at B: how many B passed."""
    for second in range(start, start + 3):
        for tick in range(100):
            a.send(BOT, T0 + second * S + tick * S // 100, 10)
        now = T0 + (second + 1) * S
        a.round(now)
        b.round(now)
    return b.send(BOT, T0 + (start + 3) * S + S // 10, 100)


@pytest.mark.parametrize(("field", "pull"), [("cn", "candidates"), ("n", "all")])
def test_a_log_counter_past_2_53_does_not_stop_the_sync(
        redis_mesh: tuple[str, str, list[Proxy]], field: str, pull: str) -> None:
    """Before: the function counted on from 2**53 in doubles, where adding one
    changes nothing; once a reader had read the bucket whole, it saw "nothing
    new" for ever, and B passed the bot that A saw (100 of 100).  Now the log
    starts again.  (The candidates' log, and the change log of the full pull.)"""
    _, _, (a, b) = redis_mesh
    for p in (a, b):
        p.sync = Syncer(p.filt, p.sync.store, p.sync.proxy, SYNC, pull=pull)
    assert _bot_through_a_then_b(a, b, 0) == 0  # the mesh works
    _each_bucket(a, lambda cl, names, tag: cl.hset(names["meta"], field, str(2**53)))
    for second in (4, 5):  # B reads every bucket once (its cursor is not the count)
        a.send(LEGIT, T0 + second * S)
        a.round(T0 + (second + 1) * S)
        b.round(T0 + (second + 1) * S)
    bot2 = frame("10.0.0.67", DST)
    for second in range(6, 9):
        for tick in range(100):
            a.send(bot2, T0 + second * S + tick * S // 100, 10)
        now = T0 + (second + 1) * S
        a.round(now)
        b.round(now)
    assert b.send(bot2, T0 + 9 * S + S // 10, 100) == 0


def test_a_stale_replay_state_written_ahead_costs_one_round(
        redis_mesh: tuple[str, str, list[Proxy]]) -> None:
    """A's replay state (its last op per bucket) set far ahead: before, every
    merge of A was refused as a stale replay, for good, and the bot that A
    saw passed at B (the counts never reached the master).  Now the refusal
    says the op, A numbers its next call past it, and one round is lost."""
    _, _, (a, b) = redis_mesh
    a.round(T0)
    b.round(T0)
    st = a.sync.store
    assert isinstance(st, RedisStore)
    _each_bucket(a, lambda cl, names, tag: cl.hset(f"{tag}:d:{st.client_id}", "op",
                                                   str(10**15)))
    assert _bot_through_a_then_b(a, b, 1) == 0
    assert a.quarantined() >= 1  # the refused round is counted


def test_junk_in_a_known_client_set_keeps_the_others(
        redis_mesh: tuple[str, str, list[Proxy]]) -> None:
    """Before: one member that is not a flow key in a destination's set of
    known clients made the whole bucket's answer unreadable, and every proxy
    dropped that bucket's known clients while the destination was closed."""
    _, _, (a, _) = redis_mesh
    a.round(T0)
    st = a.sync.store
    assert isinstance(st, RedisStore)
    key = key_of(LEGIT)
    dkey = bytearray(key[16:36])
    dkey[19] = 0
    tag = st._tags[st.key_bucket(bytes(key[:16]) + bytes(dkey))]
    cl = st.raw_client(f"{tag}:r")
    cl.hset(f"{tag}:r", key, np.array([(T0, T0 + S, 5)], dtype=MASTER).tobytes())
    cl.sadd(f"{tag}:k:".encode() + bytes(dkey), key, b"x")
    keys, _ = st.clients(np.frombuffer(bytes(dkey), dtype=L.DST_KEY))
    assert [k.tobytes() for k in keys] == [key]


def test_a_lease_written_without_a_time_is_taken_over(
        redis_mesh: tuple[str, str, list[Proxy]]) -> None:
    """Before: a lease held by a name written without an expiry stopped the
    master's expiry for the whole mesh, for good."""
    _, _, (a, _) = redis_mesh
    st = a.sync.store
    assert isinstance(st, RedisStore)
    assert st.lease("expire", "p0", 30)
    key = st._lease_key + "expire"
    cl = st.raw_client(key)
    cl.hset(key, "h", "evil")
    assert not st.lease("expire", "p0", 30)  # held, and timed: a real holder's
    cl.persist(key)
    assert st.lease("expire", "p0", 30)
    assert cl.ttl(key) > 0


def test_the_expiry_deletes_heartbeats_of_proxies_gone_and_junk(
        redis_mesh: tuple[str, str, list[Proxy]]) -> None:
    """The heartbeat hash lives as long as any proxy beats, and every round
    reads it whole: 20 000 junk fields (dated long ago, or not heartbeats)
    made every round of every proxy pay for them, for good.  The expiry now
    deletes them and keeps the live proxies' beats."""
    _, _, (a, b) = redis_mesh
    now = T0 + 100 * S
    a.round(now)
    b.round(now)
    st = a.sync.store
    assert isinstance(st, RedisStore)
    key = st._hb_key
    cl = st.raw_client(key)
    junk = {f"old{i}": struct.pack("<dQ", 1.0, T0 - 3600 * S) for i in range(10_000)}
    junk.update({f"bad{i}": b"x" for i in range(10_000)})
    for i in range(0, 20_000, 5000):
        cl.hset(key, mapping=dict(list(junk.items())[i : i + 5000]))
    assert cl.hlen(key) == 20_002
    st.expire(now - 10 * S)
    assert sorted(cl.hkeys(key)) == [b"p0", b"p1"]


# ---------------------------------------------------------------------------
# etcd's own keys (the same fuzz against etcd, 2026-12-07)
# ---------------------------------------------------------------------------


@pytest.fixture
def etcd_mesh(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, list[Proxy]]]:
    with two_proxies(backend_url(request, "etcd")) as m:
        yield m


def _forge_rows(st: EtcdStore, now: int, rows: dict[bytes, bytes]) -> None:
    """Partial rows of DST's slot of ``now`` under the given client names, and
    a log entry naming them, as a store writer can."""
    rule = st._rule
    assert rule is not None
    slot = now // rule.slot_ns
    d = bytearray(key_of(LEGIT)[16:36])
    d[19] = 0
    for client, value in rows.items():
        st.raw_put(st._p_rows + struct.pack(">Q", slot) + bytes(d) + b"/" + client, value)
    st.raw_put(st._p_alog + b"forger", bytes(d) + struct.pack("<Q", slot))
    st.raw_put(st._k_pub, b"")


@pytest.mark.parametrize("rows", [
    # three rows whose flow counts overflow a u64 when summed: every round raised
    {name: struct.pack("<QQqq", 1, 2, 1, 2**63 - 1) for name in (b"e0", b"e1", b"e2")},
    # rows that sum below zero flows: the destination's partial was zeroed, silently
    {b"evil": struct.pack("<QQqq", 2**64 - 1, 0, 0, -(2**62))},
])
def test_forged_partial_rows_are_counted_and_change_no_verdict(
        etcd_mesh: tuple[str, str, list[Proxy]], rows: dict[bytes, bytes]) -> None:
    """Before: the first set made every round of every proxy raise an
    OverflowError after its merge (so each round merged the same counts
    again), for good; the second switched the destination limit off without
    a count.  Now such rows are rejected and counted, and the bot that A saw
    is still dropped at B."""
    _, _, (a, b) = etcd_mesh
    for second in range(2):
        a.send(LEGIT, T0 + second * S)
        a.round(T0 + (second + 1) * S)
        b.round(T0 + (second + 1) * S)
    st = a.sync.store
    assert isinstance(st, EtcdStore)
    _forge_rows(st, T0 + 2 * S, rows)
    assert _bot_through_a_then_b(a, b, 2) == 0
    assert all(not s.error for s in a.stats + b.stats), [s.error for s in a.stats + b.stats]
    assert a.quarantined() + b.quarantined() >= 1


def test_an_etcd_lease_held_past_any_proxys_end_is_taken_over(
        etcd_mesh: tuple[str, str, list[Proxy]]) -> None:
    """Before: a lease whose end was written a century ahead stopped the
    master's expiry for good."""
    _, _, (a, _) = etcd_mesh
    st = a.sync.store
    assert isinstance(st, EtcdStore)
    assert st.lease("expire", "p0", 30)
    st.raw_put(st._p_lease + b"expire", f"evil {time.time_ns() + 10 * S}".encode())
    assert not st.lease("expire", "p0", 30)  # a real holder's end: held
    st.raw_put(st._p_lease + b"expire", b"evil 999999999999999999999")
    assert st.lease("expire", "p0", 30)
