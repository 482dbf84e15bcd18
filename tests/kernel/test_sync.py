"""The sync round against the real kernel program, proxies sharing memory://.

Packets go through each proxy's XDP program with BPF_PROG_TEST_RUN and a fake
clock; sync rounds run Algorithm 1 against one master.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from tests.packets import frame
from xpro.core import layout as L
from xpro.core import model
from xpro.core.layout import Known, Reason
from xpro.core.params import KnownPolicy, Sizes
from xpro.core.status import Closure, SyncStats
from xpro.datapath.xdp import XdpFilter
from xpro.plugins import open_store
from xpro.stores.base import Store
from xpro.stores.memory import MemoryStore
from xpro.sync import Syncer

pytestmark = pytest.mark.kernel

S = model.NS_PER_S
T0 = 1_700_000_000 * S
SYNC = model.SyncParams(t_t1=100 * S, t_t4=1000 * S, r_q=2 * model.R_DEN)


class Proxy:
    def __init__(self, name: str, store: Store, params: model.FilterParams) -> None:
        self.filt = XdpFilter(params, sizes=Sizes(flows=4096, dsts=256, prefixes=16))
        self.sync = Syncer(self.filt, store, name, SYNC)

    def send(self, fr: bytes, now: int, n: int = 1) -> list[int]:
        self.filt.set_clock(now)
        return [self.filt.program.test_run(fr, data_out=False).retval for _ in range(n)]

    def flow(self, fr: bytes) -> model.FlowRecord | None:
        key = model.parse(fr, self.filt.params.dst_mode).key
        v = self.filt.flows.get(key)
        return None if v is None else model.FlowRecord(int(v["ts1"]), int(v["ts2"]), int(v["c"]),
                                                        int(v["gen"]), int(v["warn_ts"]))

    def close(self) -> None:
        self.filt.close()


@pytest.fixture
def mesh() -> Iterator[list[Proxy]]:
    url = f"memory://{uuid.uuid4().hex}"
    params = model.FilterParams(t_t1=100 * S, t_t2=S, t_f1=100, t_t3=S, t_f2=10**6)
    store = open_store(url)
    proxies = [Proxy(f"p{i}", open_store(url), params) for i in range(4)]
    yield proxies
    for p in proxies:
        p.close()
    store.close()


BOT = frame("10.0.0.66", "10.9.9.9")


def master_count(p: Proxy, fr: bytes) -> int:
    key = model.parse(fr, 0).key
    keys, recs, _ = p.sync.store.changes(None)
    for k, r in zip(keys, recs, strict=True):
        if k.tobytes() == key:
            return int(r["c"])
    raise AssertionError("no master record")


def test_flow_seen_at_one_proxy_appears_merged_everywhere(mesh: list[Proxy]) -> None:
    a, b = mesh[0], mesh[1]
    a.send(BOT, T0, 30)
    b.send(BOT, T0 + 1000, 20)
    a.sync.round(T0 + S)
    b.sync.round(T0 + S)
    a.sync.round(T0 + S + 1)
    fa, fb = a.flow(BOT), b.flow(BOT)
    assert fa is not None
    assert fb is not None
    assert fa.c == fb.c == 50
    assert master_count(a, BOT) == 50
    # A proxy that never saw the flow gets it too.
    mesh[2].sync.round(T0 + S + 2)
    f2 = mesh[2].flow(BOT)
    assert f2 is not None
    assert f2.c == 50
    # The destination aggregate reflects every proxy's packets.
    _, dsts = b.filt.read_dsts()
    assert [int(d["c"]) for d in dsts] == [50]


def test_distributed_flood_is_caught_only_with_sync(mesh: list[Proxy]) -> None:
    """Each proxy sees 60 pps from the bot (under T_F1 = 100); together 240 pps."""
    verdicts: list[int] = []
    for second in range(4):
        for i in range(60):
            t = T0 + second * S + i * S // 60
            for p in mesh:
                verdicts += p.send(BOT, t)
        for p in mesh:
            p.sync.round(T0 + (second + 1) * S)
    # Past T_T2 and a sync, each proxy judges the global rate: dropped.
    assert verdicts[-4 * 60 :] == [1] * 240
    # Alone, a proxy would never drop it: 60 pps < T_F1.
    assert verdicts[: 4 * 60] == [2] * 240


@pytest.mark.parametrize("n_proxies", [2, 4])
def test_no_packet_lost_or_counted_twice(mesh: list[Proxy], n_proxies: int) -> None:
    """Packets from threads while sync rounds run: the master counts them exactly."""
    proxies = mesh[:n_proxies]
    per_call, calls = 1, 3000  # one frame a run: tests/packets.py, run_frames
    flows = [frame(f"10.0.1.{i}", "10.9.9.9") for i in range(1, 4)]
    for p in proxies:
        p.filt.set_clock(T0)

    # The traffic comes in three parts, each sent after one more round has
    # started, so rounds run during it on any machine, however loaded (the
    # first round is the full read: its race with packets lost counts once).
    round_started = [threading.Event() for _ in range(3)]

    def traffic(p: Proxy) -> None:
        for j in range(calls):
            if j % (calls // 3) == 0:
                round_started[j // (calls // 3)].wait(30)
            p.filt.program.test_run(flows[j % 3], repeat=per_call, data_out=False)

    threads = [threading.Thread(target=traffic, args=(p,)) for p in proxies]
    for t in threads:
        t.start()
    rounds = 0
    while any(t.is_alive() for t in threads):
        if rounds < 3:
            round_started[rounds].set()
        for p in proxies:
            p.sync.round(T0 + rounds)
        rounds += 1
    for t in threads:
        t.join()
    for _ in range(2):
        for p in proxies:
            p.sync.round(T0 + S)
    assert rounds >= 3
    total = sum(master_count(proxies[0], f) for f in flows)
    assert total == per_call * calls * n_proxies
    for p in proxies:
        assert sum(p.flow(f).c for f in flows) == total  # type: ignore[union-attr]


def test_packets_around_the_first_rounds_full_read_are_all_merged(mesh: list[Proxy]) -> None:
    """The first round reads the whole table after moving to a new epoch.  A
    packet just after the move marks its flow in the new epoch's set; one
    just after the read finds it marked and marks nothing.  The full read once
    emptied the new epoch's set too: the second packet then never reached the
    master (found under load by test_no_packet_lost_or_counted_twice)."""
    p = mesh[0]
    p.filt.set_clock(T0)
    p.send(BOT, T0, 5)
    real_next, real_read = p.filt.next_epoch, p.filt.read_flows

    def next_epoch() -> int:
        ended = real_next()
        p.filt.program.test_run(BOT, data_out=False)  # after the move, before the read
        return ended

    def read_flows() -> tuple[np.ndarray, np.ndarray]:
        out = real_read()
        p.filt.program.test_run(BOT, data_out=False)  # after the read
        return out

    p.filt.next_epoch = next_epoch  # type: ignore[method-assign]
    p.filt.read_flows = read_flows  # type: ignore[method-assign]
    p.sync.round(T0 + 1)
    p.filt.next_epoch, p.filt.read_flows = real_next, real_read  # type: ignore[method-assign]
    for i in range(2):  # no more packets: what is pending must be merged anyway
        p.sync.round(T0 + 2 + i)
    assert master_count(p, BOT) == 7


def test_restart_adopts_pinned_maps_without_double_counting(tmp_path_factory: pytest.TempPathFactory
                                                            ) -> None:
    """A daemon that dies between rounds leaves its maps pinned; the next one
    adopts them, baseline included, and counts every packet exactly once."""
    from xpro.bpf import ensure_bpffs

    pins = ensure_bpffs() / f"xpro-test-{uuid.uuid4().hex[:8]}"
    url = f"memory://{uuid.uuid4().hex}"
    params = model.FilterParams(t_t1=100 * S, t_f1=10**6)
    sizes = Sizes(flows=1024, dsts=64, prefixes=16)
    first = XdpFilter(params, sizes=sizes, pin_dir=pins)
    try:
        s1 = Syncer(first, open_store(url), "a", SYNC)
        first.set_clock(T0)
        first.program.test_run(BOT, repeat=30, data_out=False)
        s1.round(T0 + S)
        first.program.test_run(BOT, repeat=10, data_out=False)  # not yet synced
    finally:
        first.close()
    second = XdpFilter(params, sizes=sizes, pin_dir=pins)
    try:
        s2 = Syncer(second, open_store(url), "a", SYNC)
        second.set_clock(T0 + 2 * S)
        second.program.test_run(BOT, repeat=5, data_out=False)
        s2.round(T0 + 3 * S)
        s2.round(T0 + 4 * S)
        keys, recs, _ = s2.store.changes(None)
        assert [int(r["c"]) for r in recs] == [45]
        assert int(second.flows[keys[0]]["c"]) == 45
    finally:
        second.obj.unpin_maps()
        second.close()


def test_recompute_keeps_packets_of_flows_new_since_the_read(mesh: list[Proxy]) -> None:
    """A spoofed flood creates flows between the round's read and its recompute:
    their packets are in the kernel's aggregate and must stay there."""
    p = mesh[0]
    for i in range(20):
        p.send(frame(f"10.1.0.{i}", "10.9.9.9"), T0 + i, 5)
    p.sync.round(T0 + S)  # reads and recomputes the 20 flows: c* = 100
    dkey = model.parse(BOT, 0).dst
    assert int(p.filt.dsts[dkey]["c"]) == 100
    # Next round: the epoch ends and the dirty flows are read ...
    real_read = p.filt.read

    def read_then_spoof(keys: object) -> object:
        out = real_read(keys)  # type: ignore[arg-type]
        if not getattr(read_then_spoof, "done", False):
            read_then_spoof.done = True  # type: ignore[attr-defined]
            # ... and meanwhile 30 new sources send 3 packets each.
            for i in range(30):
                p.send(frame(f"10.2.0.{i}", "10.9.9.9"), T0 + S + 10 + i, 3)
        return out

    p.filt.read = read_then_spoof  # type: ignore[method-assign]
    p.send(frame("10.1.0.0", "10.9.9.9"), T0 + S + 5, 1)  # one dirty flow for the round
    p.sync.round(T0 + 2 * S)
    assert int(p.filt.dsts[dkey]["c"]) == 100 + 1 + 90


def test_closed_drops_count_in_the_recomputed_aggregate() -> None:
    """A sync round folds a destination's closed-drops record into its own
    aggregate: the destination stays closed, no aggregate appears for the
    record's key."""
    params = model.FilterParams(t_t1=100 * S, t_t2=S, t_f1=100, t_t3=S // 2, t_f2=100)
    p = Proxy("p0", open_store(f"memory://{uuid.uuid4().hex}"), params)
    try:
        dkey = model.parse(BOT, 0).dst
        spoofed = [frame(f"11.0.{i // 250}.{i % 250 + 1}", "10.9.9.9") for i in range(600)]
        for i, fr in enumerate(spoofed):  # 600 pps of new sources: closed after T_T3
            p.send(fr, T0 + i * S // 600)
        closed_drops = int(np.asarray(p.filt.counters())[Reason.DST_CLOSED, 0])
        assert closed_drops > 200
        # kept inside the destination's record, read under its flow key
        assert model.closed_key(dkey) not in p.filt.flows
        there, drops = p.filt.read(np.frombuffer(model.closed_key(dkey), dtype=L.FLOW_KEY))
        assert there[0]
        assert int(drops[0]["c"]) == closed_drops
        p.sync.round(T0 + S + 1)
        keys, dsts = p.filt.read_dsts()
        assert [k.tobytes() for k in keys] == [dkey]
        assert int(dsts[0]["c"]) == 600  # the admitted flows and the closed drops
        assert p.send(frame("11.1.0.1", "10.9.9.9"), T0 + S + 2) == [1]
        assert int(np.asarray(p.filt.counters())[Reason.DST_CLOSED, 0]) == closed_drops + 1
    finally:
        p.close()


def test_address_aggregate_recomputed_with_its_known_clients() -> None:
    """addr+port: a round recomputes the address aggregate of every key it
    touched, over the flows of all the address's keys and its own closed-drops
    record (model.recompute_dst of the kernel's records), keeps it closed, and
    writes the address's known clients: a source established on one port is
    then served on any port of the closed address; a spoofed one is not."""
    params = model.FilterParams(t_t1=100 * S, t_t2=S, t_f1=10**6, t_t3=S // 2, t_f2=100,
                                dst_mode=1)
    p = Proxy("p0", open_store(f"memory://{uuid.uuid4().hex}"), params)
    p.sync.known.policy = KnownPolicy(min_age=S, min_packets=8)
    try:
        client = frame("192.0.2.7", "10.9.9.9", dport=9000)
        for i in range(20):  # 10 pps for 2 s before the flood
            p.send(client, T0 + i * S // 10)
        p.sync.round(T0 + 2 * S)
        akey = model.address_key(model.parse(client, 1).dst)
        ck = model.parse(client, 1).key
        known = {k.tobytes(): int(c) for k, c in zip(*p.filt.read_known(), strict=True)}
        assert known == {ck: Known.CLIENT, ck[:16] + akey: Known.CLIENT}
        # 600 pps over 200 ports of the address (the table holds 256 keys):
        # the address closes after about 0.36 s, no key does.
        t1 = T0 + 2 * S
        for i in range(600):
            p.send(frame(f"11.0.{i // 250}.{i % 250 + 1}", "10.9.9.9", dport=2000 + i % 200),
                   t1 + i * S // 600)
        closed_drops = int(np.asarray(p.filt.counters())[Reason.DST_CLOSED, 0])
        assert closed_drops > 100
        there, drops = p.filt.read(np.frombuffer(model.closed_key(akey), dtype=L.FLOW_KEY))
        assert there[0]
        assert int(drops[0]["c"]) == closed_drops
        now = t1 + S + 1
        p.sync.round(now)
        keys, recs = p.filt.read_flows()
        flows = {k.tobytes(): model.FlowRecord(int(r["ts1"]), int(r["ts2"]), int(r["c"]))
                 for k, r in zip(keys, recs, strict=True)}
        mine = [(k, f) for k, f in flows.items() if akey in model.aggregates_of(k, 1)]
        want = model.recompute_dst(mine, now, params, known, address=True)
        assert want is not None
        got = p.filt.dsts[akey]
        # The window starts where the recent rate puts it: 600 packets gained
        # since the last round's 20, a second ago (docs/semantics.rst).
        ts1 = model.recent_start(want, [(T0 + 2 * S, 20)], now, params, params.t_f2_addr)
        assert ts1 > want.ts1
        assert (int(got["c"]), int(got["ts1"]), int(got["kc"])) == (want.c, ts1, want.kc)
        assert want.c == 20 + 600
        assert akey in p.sync.known.closed
        assert not any(k != akey for k in p.sync.known.closed)
        other_port = frame("192.0.2.7", "10.9.9.9", proto="tcp", dport=22)
        assert p.send(other_port, now + 1) == [2]  # XDP_PASS: a client of the address
        assert p.send(frame("11.1.0.1", "10.9.9.9", dport=22), now + 2) == [1]
    finally:
        p.close()


def _bot_under_clocks(lag: list[int], seconds: int, count_from: int, *,
                      clock_sync: bool = True, step: tuple[int, int, int] | None = None
                      ) -> tuple[list[int], SyncStats]:
    """Four proxies on a memory store whose clock is the mesh's; proxy j's
    program and sync clocks run ``lag[j]`` ns late (``step`` = (second, j,
    new lag): from that second on).  Each proxy sees 60 packets/s of one bot
    (under T_F1 = 100), 240 together, for ``seconds`` s with a round a
    second.  Returns each proxy's drops from second ``count_from`` on, and
    the last proxy's last round."""
    url = f"memory://{uuid.uuid4().hex}"
    params = model.FilterParams(t_t1=100 * S, t_t2=S, t_f1=100, t_t3=S, t_f2=10**6)
    mesh_now = [T0]
    store = open_store(url)
    assert isinstance(store, MemoryStore)
    store.use_clock(lambda: mesh_now[0])
    proxies = [Proxy(f"p{i}", open_store(url), params) for i in range(4)]
    for j, p in enumerate(proxies):
        p.sync.local_clock = lambda j=j: mesh_now[0] - lag[j]  # type: ignore[misc]
        p.sync.clock_sync = clock_sync
    try:
        dropped = [0] * 4
        for second in range(seconds):
            if step is not None and second == step[0]:
                lag[step[1]] = step[2]
            for i in range(60):
                t = T0 + second * S + i * S // 60
                for j, p in enumerate(proxies):
                    v = p.send(BOT, t - lag[j])
                    if second >= count_from:
                        dropped[j] += v == [1]
            mesh_now[0] = T0 + (second + 1) * S
            for p in proxies:
                st = p.sync.round()
        return dropped, st
    finally:
        for p in proxies:
            p.close()
        store.close()


@pytest.mark.parametrize("behind", [3, 37, 3600])
@pytest.mark.parametrize("clock_sync", [True, False], ids=["translated", "as-is"])
def test_a_proxy_with_a_clock_behind_still_drops_a_distributed_flood(behind: int,
                                                                     clock_sync: bool) -> None:
    """One proxy's clock (its program's and its sync's) runs ``behind`` seconds
    late.  Each proxy sees 60 packets/s of the bot (under T_F1 = 100), 240
    together.  Measured against the store's clock, the late proxy's offset is
    ``behind`` s off the mesh's median: it translates what it reads and
    writes, and drops the flood from the second round like the others (>= 90 %:
    240 of 240 at each).  As-is, the records of the others look ``behind`` s
    in the future to it: it drops none (before this, 119 of 240 at 3 s, none
    at 37 s), and the others still drop all."""
    dropped, st = _bot_under_clocks([0, 0, 0, behind * S], 6, 2, clock_sync=clock_sync)
    late = dropped[3] / (4 * 60)
    if clock_sync:
        assert min(dropped) / (4 * 60) >= 0.9, dropped
        assert st.skew == behind * S
        assert st.clock_offset == behind * S
    else:
        assert late < 0.9, dropped  # what it did before
        assert min(dropped[:3]) / (4 * 60) >= 0.9, dropped


def test_a_proxy_whose_clock_is_stepped_back_an_hour_keeps_dropping() -> None:
    """As above, but the late proxy's clock is right for 3 s and then stepped
    back an hour (its program's and its sync's).  Its kernel records then
    lie an hour ahead of its clock (a new window each, docs/semantics.rst,
    "Clock and time"), and its next round measures the new offset and
    translates: from two rounds after the step it drops >= 90 % again, as
    the others do throughout.  Before, it dropped none of the bot's packets
    for the hour (the windows were never judged, the others' records looked
    an hour ahead and the 10-minute cap left the skew uncorrected)."""
    dropped, st = _bot_under_clocks([0, 0, 0, 0], 9, 5, step=(3, 3, 3600 * S))
    assert min(dropped) / (4 * 60) >= 0.9, dropped
    assert st.skew == 3600 * S


@pytest.mark.parametrize("pull", ["candidates", "all"])
def test_a_closure_anywhere_serves_the_known_clients_everywhere(pull: str) -> None:
    """A client established at proxy 0, a spoofed flood through proxy 1 closes the
    destination: proxy 2, which never saw either, closes it too and serves
    the client (with the candidate pull: from the master's aggregate and its
    index of the destination's possible clients)."""
    params = model.FilterParams(t_t1=100 * S, t_t2=S, t_f1=100, t_t3=S // 2, t_f2=100)
    url = f"memory://{uuid.uuid4().hex}"
    proxies = [Proxy(f"p{i}", open_store(url), params) for i in range(3)]
    try:
        for p in proxies:
            p.sync = Syncer(p.filt, p.sync.store, p.sync.proxy, SYNC, pull=pull)
        client = frame("10.1.0.1", "10.9.9.9")
        for i in range(30):  # 10 packets/s for 3 s: a known client (2 s, 8 packets)
            proxies[0].send(client, T0 + i * S // 10)
        t = T0 + 3 * S
        for p in proxies:
            p.sync.round(t)
        spoofed = [frame(f"11.0.{i // 250}.{i % 250 + 1}", "10.9.9.9") for i in range(600)]
        for i, fr in enumerate(spoofed):  # 600 pps of new sources through proxy 1
            proxies[1].send(fr, t + i * S // 600)
        t += S + 1
        for _ in range(2):
            for p in proxies:
                p.sync.round(t)
            t += 1
        dkey = model.parse(client, 0).dst
        third = proxies[2]
        assert dkey in third.sync.known.closed
        ck = np.frombuffer(model.parse(client, 0).key, dtype=L.FLOW_KEY)
        assert third.sync.known.classes_of(ck).tolist() == [L.Known.CLIENT]
        assert third.send(client, t) == [2]  # served
        assert third.send(frame("11.9.0.1", "10.9.9.9"), t) == [1]  # a new source is not
    finally:
        for p in proxies:
            p.close()


SPRAY_PARAMS = model.FilterParams(t_t1=100 * S, t_t2=S, t_f1=100, t_t3=S // 2, t_f2=250,
                                  dst_mode=L.DST_ADDR_PORT)
SPRAY_CLIENT = frame("10.1.0.1", "10.9.9.9", dport=9000)


def _spray(proxies: list[Proxy], seconds: int) -> int:
    """A port spray: a client of port 9000 at proxy 0 for 2 s,
    then 200 packets/s to a new port of the address with every packet through
    each of proxies 1 and 2, a round of every proxy each second.  Returns the
    time of the last round."""
    for i in range(21):
        proxies[0].send(SPRAY_CLIENT, T0 + i * S // 10)
    t = T0 + 2 * S + S // 10
    for p in proxies:
        p.sync.round(t)
    for second in range(seconds):
        for i in range(200):
            n = second * 200 + i
            for j in (1, 2):
                proxies[j].send(frame(f"11.{j}.{n // 250}.{n % 250 + 1}", "10.9.9.9",
                                      dport=10000 + 2 * n + j), t + i * S // 200)
        t += S
        for p in proxies:
            p.sync.round(t)
    return t


@pytest.mark.parametrize("pull", ["candidates", "all"])
def test_a_port_spray_over_the_mesh_closes_the_address_everywhere(pull: str) -> None:
    """addr+port keys: a client of the victim's port 9000 at proxy 0 for 2 s,
    then a spray to a new port of the victim's address with every packet,
    200 packets/s through each of proxies 1 and 2: each under T_F2 = 250
    alone, the mesh over it.  From the mesh's count (the master's address
    partials, with the candidate pull) proxy 3, which saw no packet of it,
    closes the address too: a new source to any port is dropped, the client
    (known at the address through proxy 0's record) is served."""
    url = f"memory://{uuid.uuid4().hex}"
    proxies = [Proxy(f"p{i}", open_store(url), SPRAY_PARAMS) for i in range(4)]
    try:
        for p in proxies:
            p.sync = Syncer(p.filt, p.sync.store, p.sync.proxy, SYNC, pull=pull)
        client = SPRAY_CLIENT
        # The address's window starts with the client: the mesh's average is
        # over T_F2 after about 3.4 s of spray; 6 s of it, a round a second.
        t = _spray(proxies, 6)
        last = proxies[3]
        akey = model.address_key(model.parse(client, L.DST_ADDR_PORT).dst)
        assert akey in last.sync.known.closed
        assert last.send(frame("11.9.0.1", "10.9.9.9", dport=12345), t) == [1]  # dropped
        assert last.send(client, t) == [2]  # served
    finally:
        for p in proxies:
            p.close()


def test_an_address_the_master_closes_is_raised_in_the_program_right_after_the_pull() -> None:
    """Under a spray the rest of a round (flows written back, the recompute of
    thousands of keys) outlasts the period, and the program judged the count
    the round had pulled over a window that grew meanwhile: in the lab the
    address stayed open seconds after the master's aggregate had closed it.
    Now a round raises the program's aggregate of every destination the
    master's partials close right after the pull: at proxy 3, which saw none
    of the spray, the program holds the address closed before the recompute
    of every round in which the master's aggregate is closed."""
    from xpro.sync.known import closed_now

    url = f"memory://{uuid.uuid4().hex}"
    proxies = [Proxy(f"p{i}", open_store(url), SPRAY_PARAMS) for i in range(4)]
    try:
        last = proxies[3]
        akey = np.frombuffer(model.address_key(model.parse(SPRAY_CLIENT, L.DST_ADDR_PORT).dst),
                             dtype=L.DST_KEY)
        seen: list[tuple[bool, bool]] = []
        real = last.sync._recompute_destinations

        def spy(dst_ids: np.ndarray, now: int) -> tuple[int, list[Closure]]:
            assert last.sync.partials is not None
            lim = SPRAY_PARAMS.t_f2_addr
            t1, t2, c = last.sync.partials.values(akey, now)
            exists, rec = last.filt.read_dsts_of(akey)
            kernel = bool(exists[0]) and bool(closed_now(
                rec["ts1"].astype(np.int64), rec["ts2"].astype(np.int64),
                rec["c"].astype(np.int64), now, SPRAY_PARAMS, lim)[0])
            seen.append((bool(closed_now(t1, t2, c, now, SPRAY_PARAMS, lim)[0]), kernel))
            return real(dst_ids, now)

        last.sync._recompute_destinations = spy  # type: ignore[method-assign]
        _spray(proxies, 6)
        assert any(master for master, _ in seen), seen
        assert all(kernel for master, kernel in seen if master), seen
    finally:
        for p in proxies:
            p.close()


def test_a_spray_far_under_t_f2_per_key_is_not_written_into_every_proxy() -> None:
    """The keys of a spray, each far under T_F2, are not written into the program
    of a proxy that saw none of them (before, every proxy's destination table
    took every key of the mesh each round, and the round's work grew with the
    mesh's keys); the address, over its limit, is, and an aggregate a proxy
    holds is kept at the mesh's count."""
    url = f"memory://{uuid.uuid4().hex}"
    proxies = [Proxy(f"p{i}", open_store(url), SPRAY_PARAMS) for i in range(4)]
    try:
        last = proxies[3]
        last.send(SPRAY_CLIENT, T0)  # proxy 3 holds the client port's aggregate
        t = _spray(proxies, 6)
        keys, recs = last.filt.read_dsts()
        got = {bytes(k): int(r["c"]) for k, r in zip(keys, recs, strict=True)}
        dkey = model.parse(SPRAY_CLIENT, L.DST_ADDR_PORT).dst
        akey = model.address_key(dkey)
        assert set(got) == {dkey, akey}, f"{len(got)} aggregates"
        assert got[dkey] == 22  # its packet and proxy 0's 21
        assert akey in last.sync.known.closed
        assert last.send(frame("11.9.0.1", "10.9.9.9", dport=12345), t) == [1]
    finally:
        for p in proxies:
            p.close()


def _closed_in_program(p: Proxy, dkey: bytes, now: int, params: model.FilterParams) -> bool:
    """Whether proxy ``p``'s program holds destination ``dkey`` closed at ``now``."""
    from xpro.sync.known import closed_now

    exists, rec = p.filt.read_dsts_of(np.frombuffer(dkey, dtype=L.DST_KEY))
    return bool(exists[0]) and bool(closed_now(
        rec["ts1"].astype(np.int64), rec["ts2"].astype(np.int64), rec["c"].astype(np.int64),
        now, params)[0])


def _half_second_of(p: Proxy, clients: list[bytes], t: int) -> None:
    """Each client's packets of half a second from ``t`` (10 packets/s) through ``p``."""
    for i in range(5):
        for fr in clients:
            p.send(fr, t + i * S // 10)


def _clients_then_flood(proxies: list[Proxy], clients: list[bytes], *,
                        spray: bool = False, check: Callable[[], None] | None = None) -> int:
    """The clients at proxy 0 for 8 s (10 packets/s each, a round of every proxy
    each half second; ``check`` runs then), then 2 s more of them with 400
    packets/s of new sources through each of proxies 1 and 2, to 10.9.9.9
    (``spray``: each to a port of its own).  Returns the time of the last round."""
    t = T0
    for _ in range(16):
        _half_second_of(proxies[0], clients, t)
        t += S // 2
        for p in proxies:
            p.sync.round(t)
    if check is not None:
        check()
    n = 0
    for _ in range(4):
        for i in range(200):
            for j in (1, 2):
                n += 1
                dport = 10000 + n if spray else 53  # 53: frame's port
                proxies[j].send(frame(f"11.{j}.{n // 250}.{n % 250 + 1}", "10.9.9.9",
                                      dport=dport), t + i * S // 400)
        _half_second_of(proxies[0], clients, t)
        t += S // 2
        for p in proxies:
            p.sync.round(t)
    return t


@pytest.mark.parametrize("pull", ["candidates", "all"])
def test_a_flood_behind_established_clients_closes_at_its_recent_rate(pull: str) -> None:
    """Three clients of the destination at proxy 0, 10 packets/s each for 8 s;
    then a spoofed flood, 400 packets/s through each of proxies 1 and 2 (each
    alone under T_F2 = 500, the mesh over it); a round of every proxy each
    half second.  Over the window the clients opened, the mesh's rate passes
    T_F2 only 12.5 s into the flood; its recent rate (docs/semantics.rst,
    "The recent rate") closes it at every proxy within 2 s, and the clients
    are served (before: open after 2 s, and after 4).  With the candidate
    pull, proxy 0 (the clients', none of the flood) holds it closed in the
    program from the pull of each round it is closed in, not only from the
    recompute at the round's end (before: open until the recompute, every
    round)."""

    params = model.FilterParams(t_t1=100 * S, t_t2=S, t_f1=100, t_t3=S, t_f2=500)
    url = f"memory://{uuid.uuid4().hex}"
    proxies = [Proxy(f"p{i}", open_store(url), params) for i in range(3)]
    try:
        for p in proxies:
            p.sync = Syncer(p.filt, p.sync.store, p.sync.proxy, SYNC, pull=pull,
                            period=S // 2)
        clients = [frame(f"10.1.0.{i}", "10.9.9.9") for i in range(1, 4)]
        dkey = model.parse(clients[0], 0).dst
        first = proxies[0]
        seen: list[tuple[bool, bool]] = []  # (closed in the program before, closed after)
        real = first.sync._recompute_destinations

        def spy(dst_ids: np.ndarray, now: int) -> tuple[int, list[Closure]]:
            before = _closed_in_program(first, dkey, now, params)
            out = real(dst_ids, now)
            seen.append((before, dkey in first.sync.known.closed))
            return out

        first.sync._recompute_destinations = spy  # type: ignore[method-assign]

        def open_everywhere() -> None:
            assert not any(dkey in p.sync.known.closed for p in proxies)

        t = _clients_then_flood(proxies, clients, check=open_everywhere)
        for p in proxies:
            assert dkey in p.sync.known.closed, p.sync.proxy
            assert p.send(frame("11.9.0.1", "10.9.9.9"), t) == [1]  # a new source: dropped
            assert p.send(clients[0], t) == [2], p.sync.proxy  # a client: served
        rec = proxies[0].filt.read_dsts_of(np.frombuffer(dkey, dtype=L.DST_KEY))[1][0]
        assert t - int(rec["ts1"]) < 8 * S, "judged over the flood's window, not the clients'"
        if pull == "candidates":
            assert any(after for _, after in seen)
            assert all(before for before, after in seen if after), seen
    finally:
        for p in proxies:
            p.close()


@pytest.mark.parametrize("pull", ["candidates", "all"])
def test_a_port_spray_behind_established_clients_closes_the_address_at_its_recent_rate(
        pull: str) -> None:
    """The same in ``addr+port`` mode, where it is the address's aggregate that
    must close: three clients of port 9000 at proxy 0 for 8 s, then a spray
    over new ports, 400 packets/s through each of proxies 1 and 2 (each key
    far under T_F2 = 500, each proxy alone under it, the mesh over it).  The
    address has no flow of its own until it closes, and the mirror freed its
    id every round, with the history its recent rate is judged from: it
    closed by the window the clients opened, 12.5 s into the spray.  Now
    every proxy closes it within 2 s, and the clients are served."""

    params = model.FilterParams(t_t1=100 * S, t_t2=S, t_f1=100, t_t3=S, t_f2=500,
                                dst_mode=L.DST_ADDR_PORT)
    url = f"memory://{uuid.uuid4().hex}"
    proxies = [Proxy(f"p{i}", open_store(url), params) for i in range(3)]
    try:
        for p in proxies:
            p.sync = Syncer(p.filt, p.sync.store, p.sync.proxy, SYNC, pull=pull,
                            period=S // 2)
        clients = [frame(f"10.1.0.{i}", "10.9.9.9", dport=9000) for i in range(1, 4)]
        akey = model.address_key(model.parse(clients[0], L.DST_ADDR_PORT).dst)

        def open_everywhere() -> None:
            assert not any(akey in p.sync.known.closed for p in proxies)

        t = _clients_then_flood(proxies, clients, spray=True, check=open_everywhere)
        for p in proxies:
            assert akey in p.sync.known.closed, p.sync.proxy
            assert p.send(frame("11.9.0.1", "10.9.9.9", dport=7), t) == [1]  # dropped
            assert p.send(clients[0], t) == [2], p.sync.proxy  # a client: served
    finally:
        for p in proxies:
            p.close()


def test_a_proxy_over_the_limit_alone_closes_at_the_start_of_its_round() -> None:
    """Clients for 8 s, then 800 packets/s of new sources through this proxy
    alone (T_F2 = 500), a round each half second.  The program's own count
    gained over T_F2 since the recompute T_T3 ago: the round raises it
    before its merge (docs/semantics.rst, "The recent rate"), not at its
    recompute, which under a spray ends seconds later (before: open at the
    merge of the round that closed it)."""

    params = model.FilterParams(t_t1=100 * S, t_t2=S, t_f1=100, t_t3=S, t_f2=500)
    url = f"memory://{uuid.uuid4().hex}"
    p = Proxy("p0", open_store(url), params)
    try:
        p.sync = Syncer(p.filt, p.sync.store, "p0", SYNC, period=S // 2)
        clients = [frame(f"10.1.0.{i}", "10.9.9.9") for i in range(1, 4)]
        dkey = model.parse(clients[0], 0).dst
        at_merge: list[bool] = []
        real = p.sync._merge

        def spy(*args: object) -> tuple[np.ndarray, np.ndarray]:
            at_merge.append(_closed_in_program(p, dkey, t, params))  # t: the round's
            return real(*args)  # type: ignore[arg-type]

        p.sync._merge = spy  # type: ignore[method-assign]
        t = T0
        closed_after: list[bool] = []
        for half in range(22):
            _half_second_of(p, clients, t)
            if half >= 16:
                for i in range(400):
                    p.send(frame(f"11.{half}.{i // 250}.{i % 250 + 1}", "10.9.9.9"),
                           t + i * S // 800)
            t += S // 2
            p.sync.round(t)
            closed_after.append(dkey in p.sync.known.closed)
        first = closed_after.index(True)
        assert first >= 17, closed_after
        assert at_merge[first], (first, at_merge)
    finally:
        p.close()


def test_the_programs_epoch_after_the_last_uses_the_other_dirty_set(mesh: list[Proxy]) -> None:
    """As the AF_XDP filter's: after 2**32 - 1 comes 2, the other set's parity."""
    p = mesh[0]
    p.filt.cfg.view["epoch"] = 0xFFFFFFFF
    assert p.filt.next_epoch() == 0xFFFFFFFF
    assert p.filt.epoch == 2
