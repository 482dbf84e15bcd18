"""What the sync takes from the store, and how much work a round does (docs/sync.rst).

The userspace filter of the AF_XDP backend stands in for the kernel program
(the same FilterState), against ``memory://``; the attacks against the real
program on every store are in ``tests/stores/test_trust.py``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import numpy as np
import pytest

from tests.packets import frame
from xpro.core import layout as L
from xpro.core import model
from xpro.core.bounds import MAX_PPS, Bounds
from xpro.core.layout import MASTER
from xpro.core.params import KnownPolicy, Sizes
from xpro.core.status import ProxyStatus, SyncStats
from xpro.datapath.afxdp.filter import UserFilter
from xpro.errors import BadRecord
from xpro.plugins import open_store
from xpro.stores.base import REFUSED
from xpro.stores.memory import MemoryStore
from xpro.sync import Syncer
from xpro.sync.mirror import Mirror

pytestmark = pytest.mark.unit

S = model.NS_PER_S
T0 = 1_700_000_000 * S
SYNC = model.SyncParams(t_t1=10 * S, t_t4=100 * S)
PARAMS = model.FilterParams(t_t1=10 * S, t_t2=S, t_f1=100, t_t3=S, t_f2=10_000)


def syncer(url: str, name: str = "p0", **kw: Any) -> Syncer:
    f = UserFilter(PARAMS, sizes=Sizes(flows=1 << 14, dsts=1024))
    # The userspace filter keeps no known-client table: nobody becomes one.
    return Syncer(f, open_store(url, mesh="m"), name, SYNC,
                  known=KnownPolicy(min_packets=1 << 62), **kw)


def mem(url: str) -> MemoryStore:
    st = open_store(url, mesh="m")
    assert isinstance(st, MemoryStore)
    return st


def flow_key(src: str, dst: str = "10.9.9.9") -> bytes:
    return model.parse(frame(src, dst), 0).key


@pytest.fixture
def url() -> str:
    return f"memory://{uuid.uuid4().hex[:10]}"


def test_bounds_check_each_rule() -> None:
    b = Bounds(now=T0, future=2 * S, max_age=60 * S, max_pps=1000)
    rec = np.array([
        (T0 - S, T0, 5),  # fine
        (T0, T0 + 3 * S, 5),  # dated in the future
        (T0, T0 - 1, 5),  # ts1 after ts2
        (T0 - S, T0, 2001),  # 1000 pps over (1 s + 1 s): at most 2000
        (T0 - S, T0, 2000),
        (T0 - 70 * S, T0 - 61 * S, 5),  # idle longer than max_age
        (T0 - S, T0, (1 << 64) - 1),  # garbage
    ], dtype=MASTER)
    assert b.check(rec).tolist() == [0, 1, 2, 3, 0, 4, 3]
    # The default ceiling: 2**32 packets/s, the window counted up to a day.
    d = Bounds(now=T0)
    assert d.max_pps == MAX_PPS
    huge = np.array([(0, T0, 1 << 62), (T0 - S, T0, 1 << 33)], dtype=MASTER)
    assert d.check(huge).tolist() == [3, 0]


def test_forged_heartbeats_are_quarantined(url: str, caplog: pytest.LogCaptureFixture) -> None:
    s = syncer(url)
    st = mem(url)._state
    st.heartbeats["ahead"] = ProxyStatus(10.0, T0 + 3600 * S)
    st.heartbeats["huge"] = ProxyStatus(float(1 << 40), T0)
    st.heartbeats["fine"] = ProxyStatus(50.0, T0 - S)
    st.heartbeats["p0"] = ProxyStatus(1e9, T0)  # this proxy's own, forged
    caplog.set_level(logging.WARNING, logger="xpro.sync")
    r = s.round(T0)
    assert set(r.peers) == {"fine", "p0"}
    assert r.peers["p0"].workload == 0.0, "its own entry is what it measured"
    assert r.quarantined == 2
    assert {w for w, _ in r.bad_values} == {"heartbeat 'ahead'", "heartbeat 'huge'"}
    assert s.mesh_rate() == 50.0
    assert caplog.text.count("heartbeat 'ahead'") == 1
    r2 = s.round(T0 + S)
    assert r2.quarantined == 2
    assert caplog.text.count("heartbeat 'ahead'") == 1, "logged once per value"


def test_a_bad_record_is_logged_once_and_the_round_goes_on(url: str,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    # Records written into the master by hand are never judged candidates:
    # the full pull reads them.
    a, b = syncer(url, "a", pull="all"), syncer(url, "b", pull="all")
    m = mem(url)
    good, bad = flow_key("10.0.0.1"), flow_key("10.0.0.2")
    m.poke(good, T0 - S, T0, 10)
    m.poke(bad, T0 - S, T0 + 80_000 * S, 10)
    caplog.set_level(logging.WARNING, logger="xpro.sync")
    r = b.round(T0)
    assert r.pulled == 1
    assert r.created == 1
    assert r.quarantined == 1
    assert b.filt.read(np.frombuffer(bad, dtype=L.FLOW_KEY))[0].tolist() == [False]
    m.poke(bad, T0 - S, T0 + 80_000 * S, 11)
    b.round(T0 + S)
    lines = [rec for rec in caplog.records if "quarantined" in rec.getMessage()]
    assert len(lines) == 1
    assert b.quarantined_total == 2
    del a


def test_a_refused_merge_is_not_replayed_and_not_written_back(url: str) -> None:
    s = syncer(url)
    s.filt.process_frames([frame("10.0.0.1", "10.9.9.9")] * 5, T0)
    real = s.store.merge

    def refuse(*args: Any, **kw: Any) -> Any:
        raise BadRecord("forged op in the replay key")

    s.store.merge = refuse  # type: ignore[method-assign]
    r = s.round(T0 + S)
    assert s._pending is None
    assert "forged" in r.error
    s.store.merge = real  # type: ignore[method-assign]
    s.round(T0 + 2 * S)
    k, recs, _ = s.store.changes(None)
    assert [int(x["c"]) for x in recs] == [5], "merged once, next round"

    def refuse_one(keys: Any, local: Any, params: Any, bounds: Any = None,
                   rule: Any = None) -> Any:
        before = np.zeros(len(keys), dtype=MASTER)
        before[:] = REFUSED  # nothing applied (as a Redis bucket whose call failed)
        return np.zeros(len(keys), dtype=bool), before

    s.filt.process_frames([frame("10.0.0.1", "10.9.9.9")] * 3, T0 + 3 * S)
    s.store.merge = refuse_one  # type: ignore[method-assign]
    s.round(T0 + 4 * S)
    s.store.merge = real  # type: ignore[method-assign]
    f = s.filt.read(k)[1][0]
    assert int(f["c"]) - int(f["base_c"]) == 3, "its packets wait for the next merge"
    s.round(T0 + 5 * S)  # no new packet: the flow is merged all the same
    assert [int(x["c"]) for x in s.store.changes(None)[1]] == [8]


def test_a_round_pulls_at_most_max_pull(url: str) -> None:
    s = syncer(url, max_pull=1000, pull="all")
    m = mem(url)
    for i in range(2500):
        m.poke(flow_key(f"10.1.{i // 250}.{i % 250}"), T0 - S, T0, 3)
    pulled, capped = [], []
    for r in range(4):
        st = s.round(T0 + r)
        pulled.append(st.pulled)
        capped.append(st.pull_capped)
    assert pulled == [1000, 1000, 500, 0]
    assert capped == [True, True, False, False]
    assert s.caps_reached["pull"] == 2
    assert len(s.mirror) == 2500


def test_the_mirror_is_capped(url: str) -> None:
    s = syncer(url, max_mirror=100)
    for i in range(300):
        s.filt.process_frames([frame(f"10.2.{i // 250}.{i % 250}", "10.9.9.9")], T0 + i)
    st = s.round(T0 + S)
    assert st.mirror_capped == 200
    assert len(s.mirror) == 100
    assert s.caps_reached["mirror"] == 1
    # The idlest were forgotten, from the kernel too.
    kept = {bytes(k) for k in s.mirror.keys[s.mirror.alive]}
    assert flow_key("10.2.1.49") in kept
    assert flow_key("10.2.0.0") not in kept
    assert len(s.filt.read_flows()[0]) == 100


def test_too_many_heartbeats_are_capped(url: str) -> None:
    s = syncer(url)
    hb = mem(url)._state.heartbeats
    for i in range(1100):
        hb[f"x{i}"] = ProxyStatus(1.0, T0 - i)
    st = s.round(T0)
    assert st.peers_capped == 1100 + 1 - 1024
    assert len(st.peers) == 1024
    assert "x0" in st.peers
    assert "x1099" not in st.peers


def test_one_proxy_of_the_mesh_expires_the_master(url: str) -> None:
    a, b = syncer(url, "a", store_expire_every=1), syncer(url, "b", store_expire_every=1)
    calls: list[str] = []
    for s in (a, b):
        real = s.store.expire

        def spy(before: int, bounds: Bounds | None = None, _s: Syncer = s, _r: Any = real
                ) -> int:
            calls.append(_s.proxy)
            return int(_r(before, bounds))

        s.store.expire = spy  # type: ignore[method-assign]
    for r in range(5):
        a.round(T0 + r * S)
        b.round(T0 + r * S)
    assert calls == ["a"] * 5


def test_remote_flows_count_only_as_far_as_the_mesh_workload(url: str) -> None:
    """Flows no proxy says it saw (all workloads 0) do not make an aggregate;
    flows another proxy counts (its W published) do."""
    a, b = syncer(url, "a", pull="all"), syncer(url, "b", pull="all")
    m = mem(url)
    for i in range(150):
        m.poke(flow_key(f"10.50.0.{i}"), T0 - 10 * S, T0, 900)
    st = b.round(T0)
    assert st.unbacked == 1
    dk = model.parse(frame("10.0.0.1", "10.9.9.9"), 0).dst
    _, dsts = b.filt.read_dsts()
    assert int(dsts["c"].sum()) == 0
    # Now a counts 1000 packets/s of real traffic to it, for two seconds.
    for sec in range(1, 3):
        frames = [frame(f"10.60.{j // 250}.{j % 250}", "10.9.9.9") for j in range(1000)]
        a.filt.process_frames(frames, T0 + sec * S)
        a.round(T0 + sec * S + S // 2)
        b.round(T0 + sec * S + S // 2)
    keys, dsts = b.filt.read_dsts()
    got = {bytes(k): int(d["c"]) for k, d in zip(keys, dsts, strict=True)}
    assert got[dk] >= 2000, "backed by a's published workload"
    assert b.mesh_rate() > 900


def test_mirror_forgets_destinations_without_flows() -> None:
    m = Mirror()
    rng = np.random.default_rng(3)
    k = np.frombuffer(rng.bytes(36 * 400), dtype=L.FLOW_KEY).copy()
    k["dst"]["pad"] = 0
    k["dst"][200:] = k["dst"][200]  # 200 destinations of one flow each, and one of 200
    z = np.zeros(len(k), dtype=np.int64)
    m.update(k, z, z, z)
    assert len(m.dst_index) == 201
    m.remove(k[:150])
    assert len(m.prune_dsts()) == 150
    assert len(m.dst_index) == 51
    again = m.update(k[:10], z[:10], z[:10], z[:10])
    assert set(again.tolist()) <= set(m.dst_free + list(range(201)))
    assert len(m.dst_index) == 61
    assert m.dst_refs[m.dst[m.index.find(k[200:201], m.keys)[0]]] == 200


@pytest.mark.parametrize(("pull", "here", "there"), [("all", 5, 7), ("candidates", 30, 40)])
def test_a_change_made_right_after_our_merge_is_taken_next_round(url: str, pull: str,
                                                                 here: int, there: int) -> None:
    """Another proxy merges a flow between this proxy's merge of it and its read
    of the changes: the read skips it (merged here), and with no packet of it
    since, no later merge would bring the other's count (it did not before).
    With the candidate pull, a flow that became a candidate (70 packets in
    its first second: over 0.5 x T_F1)."""
    a, b = syncer(url, "a", pull=pull), syncer(url, "b", pull=pull)
    fr = frame("10.0.0.9", "10.9.9.9")
    a.filt.process_frames([fr] * here, T0)
    b.filt.process_frames([fr] * there, T0)
    real = a.store.merge

    def merge_then_b(*args: Any, **kw: Any) -> Any:
        out = real(*args, **kw)
        b.round(T0 + S)  # b merges its 7 right after
        return out

    a.store.merge = merge_then_b  # type: ignore[method-assign]
    a.round(T0 + S)
    a.store.merge = real  # type: ignore[method-assign]
    key = np.frombuffer(flow_key("10.0.0.9"), dtype=L.FLOW_KEY)
    assert int(a.filt.read(key)[1][0]["c"]) == here
    a.round(T0 + 2 * S)
    assert int(a.filt.read(key)[1][0]["c"]) == here + there
    assert [int(r["c"]) for r in a.store.changes(None)[1]] == [here + there]


def test_forged_partials_count_only_as_far_as_the_mesh_workload(url: str) -> None:
    """With the candidate pull a destination's aggregate comes from the master's
    partials: a partial no proxy's workload backs does not make an aggregate
    (nor puts its destination into the program: judged on the backed count,
    it is not near its limit), and one out of bounds is quarantined."""
    from xpro.core.pull import AGG_KEY, PARTIAL

    b = syncer(url, "b")
    assert b.partials is not None
    m = mem(url)
    dk = model.parse(frame("10.0.0.1", "10.9.9.9"), 0).dst
    st = m._state
    for slot, (t1, t2, c) in ((T0 // b.rule.slot_ns, (T0 - 10 * S, T0, 135_000)),
                              (T0 // b.rule.slot_ns - 1, (T0, T0 - S, 5))):  # ts1 > ts2: bad
        ak = np.zeros(1, dtype=AGG_KEY)
        ak["dst"] = np.frombuffer(dk, dtype=L.DST_KEY)
        ak["slot"] = slot
        st.version += 1
        st.partials[ak.tobytes()] = np.array([(t1, t2, c, 150)], dtype=PARTIAL)[0]
        st.plog.append((st.version, [ak.tobytes()]))
    r = b.round(T0)
    assert r.partials == 1
    assert r.quarantined == 1
    assert r.skipped_dsts == 1
    keys, _ = b.filt.read_dsts()
    assert len(keys) == 0


def test_a_closed_address_asks_for_the_clients_of_its_busiest_keys_only(url: str) -> None:
    """A spray that sends known.min_packets to each of 3000 ports of a closed
    address: the round asks the master for the clients of the 1024 busiest
    keys, the service's own port among them, not of all 3000."""
    from xpro.core import pull
    from xpro.sync import round as R

    f = UserFilter(PARAMS, sizes=Sizes(flows=1 << 14, dsts=1024))
    s = Syncer(f, open_store(url, mesh="m"), "p0", SYNC, pull="candidates")
    assert s.partials is not None
    now = T0 + 5 * S
    addr = model.parse(frame("10.0.0.1", "10.9.9.9"), 0).key[16:32]
    n = 3000
    ak = np.zeros(n + 1, dtype=pull.AGG_KEY)
    ak["dst"]["addr"] = addr
    ak["dst"]["proto"] = 17
    ak["dst"]["port"][:n] = 10_000 + np.arange(n)
    ak["dst"]["port"][n] = 9000  # the service, busier than any sprayed port
    ak["slot"] = now // s.rule.slot_ns
    parts = np.zeros(n + 1, dtype=pull.PARTIAL)
    parts["ts1"], parts["ts2"], parts["n"] = T0, now, 1
    parts["c"][:n] = s.rule.min_packets
    parts["c"][n] = 500
    s.partials.update(ak, parts)
    address = np.zeros(1, dtype=L.DST_KEY)
    address["addr"], address["pad"] = addr, L.DST_PAD_ADDR
    s.known.closed[address.tobytes()] = 0
    # The spray's workload, as a round takes it from the heartbeats: the
    # keys' counts are ranked as far as it backs them.
    s._w_seen["p1"] = {now: 10_000.0}
    asked: list[np.ndarray] = []

    def clients(dsts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        asked.append(np.asarray(dsts))
        return np.zeros(0, dtype=L.FLOW_KEY), np.zeros(0, dtype=MASTER)

    s.store.clients = clients  # type: ignore[method-assign]
    s._closed_clients(now, SyncStats())
    (keys,) = asked
    assert len(keys) == R.ADDRESS_KEYS
    assert 9000 in keys["port"].tolist()


def test_keys_no_proxy_writes_are_quarantined(url: str) -> None:
    """A closed-drops key with a source, or a pad no key has, is no record
    of the mesh: the data path would keep it nowhere (the program refuses
    it, tests/kernel/test_apply.py), so the pull quarantines it instead of
    creating it or counting it."""
    b = syncer(url, "b", pull="all")
    m = mem(url)
    good = flow_key("10.0.0.1")
    closed = model.closed_key(good[16:])
    with_src = flow_key("10.0.0.2")[:16] + closed[16:]
    odd_pad = good[:35] + bytes((4,))
    for k in (good, closed, with_src, odd_pad):
        m.poke(k, T0 - S, T0, 10)
    r = b.round(T0)
    assert r.quarantined == 2
    assert r.created == 2  # the flow and the real closed-drops record
    seen = {k.tobytes() for k in b.filt.read_flows()[0]}
    assert {good, closed} <= seen
    assert not {with_src, odd_pad} & seen
