"""The sync round with real servers: proxies as separate processes, and an outage.

Each proxy loads the real XDP program and counts packets through it
(BPF_PROG_TEST_RUN) while it runs sync rounds against a real redis-server or
etcd; the master must end up with exactly the packets sent.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import uuid
from typing import Any

import pytest

from tests.packets import frame
from tests.stores.conftest import Servers
from xpro.core import model
from xpro.core.params import Sizes
from xpro.datapath.xdp import XdpFilter
from xpro.errors import StoreError
from xpro.plugins import open_store
from xpro.sync import Syncer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="loads BPF programs: needs root"),
]

S = model.NS_PER_S
T0 = 1_700_000_000 * S
PARAMS = model.FilterParams(t_t1=1000 * S, t_f1=2**32 - 1, t_f2=2**32 - 1)
SYNC = model.SyncParams(t_t1=1000 * S, t_t4=10_000 * S, r_q=2 * model.R_DEN)
SIZES = Sizes(flows=4096, dsts=256, prefixes=16)
FLOWS = [frame(f"10.0.2.{i}", "10.9.9.9") for i in range(1, 6)]
KEYS = [model.parse(f, 0).key for f in FLOWS]


def master_counts(url: str, mesh: str) -> dict[bytes, int]:
    with open_store(url, mesh=mesh) as st:
        keys, recs, _ = st.changes(None)
    return {k.tobytes(): int(r["c"]) for k, r in zip(keys, recs, strict=True)}


def local_counts(filt: XdpFilter) -> dict[bytes, int]:
    return {k: int(filt.flows[k]["c"]) for k in KEYS if k in filt.flows}


def _proxy(url: str, mesh: str, idx: int, calls: int, per_call: int,
           barrier: Any, out: Any, pull: str = "candidates") -> None:
    filt = XdpFilter(PARAMS, sizes=SIZES)
    try:
        sync = Syncer(filt, open_store(url, mesh=mesh), f"p{idx}", SYNC, pull=pull)
        filt.set_clock(T0)

        def traffic() -> None:
            for j in range(calls):
                filt.program.test_run(FLOWS[(j + idx) % len(FLOWS)], repeat=per_call,
                                      data_out=False)

        t = threading.Thread(target=traffic)
        t.start()
        rounds = 0
        while t.is_alive():
            sync.round(T0 + rounds)
            rounds += 1
        t.join()
        for r in range(4):  # everyone merges what is left, then takes the others'
            barrier.wait(60)
            sync.round(T0 + S + r)
        barrier.wait(60)
        out.put((idx, rounds, local_counts(filt)))
    finally:
        filt.close()


@pytest.mark.parametrize("pull", ["candidates", "all"])
@pytest.mark.parametrize("kind", ["redis", "etcd"])
@pytest.mark.parametrize("n", [2, 4])
def test_proxies_in_processes_count_exactly(server_factory: Servers, kind: str, n: int,
                                            pull: str) -> None:
    """The master counts every packet once; with the full pull every proxy ends
    on the global counts, with the candidate pull (these flows are far under
    T_F1) each holds at most the global count, what it last merged."""
    if kind == "redis":
        url = f"redis://127.0.0.1:{server_factory.redis().port}"
    else:
        url = f"etcd://127.0.0.1:{server_factory.etcd()[0].port}"
    mesh = f"t{uuid.uuid4().hex[:8]}"
    calls, per_call = 60, 25
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(n)
    out = ctx.Queue()
    procs = [ctx.Process(target=_proxy, args=(url, mesh, i, calls, per_call, barrier, out, pull))
             for i in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    sent = n * calls * per_call
    master = master_counts(url, mesh)
    assert sum(master.values()) == sent
    for _, rounds, local in results:
        assert rounds > 1
        if pull == "all":
            assert local == master  # every proxy converged on the global counts
        else:
            assert set(local) == set(master)
            assert all(0 < local[k] <= master[k] for k in master)


@pytest.mark.parametrize("pull", ["candidates", "all"])
def test_master_outage_loses_and_doubles_nothing(server_factory: Servers, pull: str) -> None:
    srv = server_factory.redis(extra=("--appendonly", "yes", "--appendfsync", "always"))
    url, mesh = f"redis://127.0.0.1:{srv.port}", f"t{uuid.uuid4().hex[:8]}"
    proxies = [XdpFilter(PARAMS, sizes=SIZES) for _ in range(2)]
    syncs: list[Syncer] = []
    try:
        syncs += [Syncer(f, open_store(url, mesh=mesh, options={"timeout": 1}), f"p{i}", SYNC,
                         pull=pull) for i, f in enumerate(proxies)]
        sent = 0

        def send(n: int) -> None:
            nonlocal sent
            for f in proxies:
                f.set_clock(T0)
                for fr in FLOWS:
                    rv = f.program.test_run(fr, repeat=n, data_out=False).retval
                    assert rv == 2  # filtering goes on, whatever the master does
                    sent += n

        send(10)
        for s in syncs:
            s.round(T0 + 1)
        srv.stop()  # the master goes away
        send(7)
        for s in syncs:
            with pytest.raises(StoreError):
                s.round(T0 + 2)
        send(3)
        for s in syncs:
            with pytest.raises(StoreError):
                s.round(T0 + 3)
        srv.start()  # and comes back, with what it had
        for r in range(3):
            for s in syncs:
                s.round(T0 + 4 + r)
        master = master_counts(url, mesh)
        assert sum(master.values()) == sent
        for f in proxies:
            local = local_counts(f)
            if pull == "all":
                assert local == master
            else:  # flows far under T_F1: each holds what it last merged
                assert all(0 < local[k] <= master[k] for k in master)
    finally:
        for f in proxies:
            f.close()
        for s in syncs:
            s.store.close()


@pytest.mark.parametrize("when", ["before", "after"])
def test_merge_interrupted_is_replayed_exactly_once(server_factory: Servers, when: str) -> None:
    """The master fails during a merge: before it applied the batch (the server
    stops), or after (the reply is lost).  The next round repeats the merge
    with the same arrays; the counts come out exact either way."""
    from xpro.errors import StoreUnavailable

    srv = server_factory.redis(extra=("--appendonly", "yes", "--appendfsync", "always"))
    url, mesh = f"redis://127.0.0.1:{srv.port}", f"t{uuid.uuid4().hex[:8]}"
    filt = XdpFilter(PARAMS, sizes=SIZES)
    store = open_store(url, mesh=mesh, options={"timeout": 1})
    try:
        sync = Syncer(filt, store, "p0", SYNC)
        filt.set_clock(T0)
        for fr in FLOWS:
            filt.program.test_run(fr, repeat=10, data_out=False)
        sync.round(T0 + 1)
        for fr in FLOWS:
            filt.program.test_run(fr, repeat=5, data_out=False)
        real_execute = store._execute  # type: ignore[attr-defined]

        def failing_execute(calls: Any, what: str) -> Any:
            if what != "merge":
                return real_execute(calls, what)
            if when == "before":  # the server goes away before the batch
                srv.stop()
                return real_execute(calls, what)
            real_execute(calls, what)  # applied, then the connection drops
            raise StoreUnavailable("connection lost before the reply (test)")

        store._execute = failing_execute  # type: ignore[attr-defined]
        with pytest.raises(StoreError):
            sync.round(T0 + 2)
        store._execute = real_execute  # type: ignore[attr-defined]
        if when == "before":
            srv.start()
        # No packet after the failure: only the replay can bring those 5 in.
        sync.round(T0 + 3)
        sync.round(T0 + 4)
        master = master_counts(url, mesh)
        assert sum(master.values()) == len(FLOWS) * 15
        assert local_counts(filt) == master
    finally:
        filt.close()
        store.close()


@pytest.mark.parametrize("kind", ["redis", "etcd"])
def test_a_stop_cuts_short_a_round_blocked_on_a_master_that_stopped_answering(
        server_factory: Servers, kind: str) -> None:
    """The master is frozen (SIGSTOP: connections stay open, nothing answers),
    so a round blocks until the store's timeout.  The stop cuts it short by
    closing the store under it, within its grace: the loop's thread is gone
    when stop returns, so the daemon releases nothing a round still uses, and
    the cut is no outage (no alert, no failure)."""
    import signal
    import time

    from xpro.sync import SyncLoop

    srv = server_factory.redis() if kind == "redis" else server_factory.etcd()[0]
    url, mesh = f"{kind}://127.0.0.1:{srv.port}", f"t{uuid.uuid4().hex[:8]}"
    filt = XdpFilter(PARAMS, sizes=SIZES)
    store = open_store(url, mesh=mesh, options={"timeout": 8})
    alerts: list[str] = []
    loop = SyncLoop(Syncer(filt, store, "p0", SYNC), period=0.05,
                    on_alert=lambda kind, msg: alerts.append(kind))
    assert srv.proc is not None
    try:
        loop.start()
        deadline = time.monotonic() + 20
        while loop.status.rounds < 2:
            assert time.monotonic() < deadline, "rounds"
            time.sleep(0.02)
        os.kill(srv.proc.pid, signal.SIGSTOP)
        time.sleep(0.5)  # the next round is blocked on the frozen master
        start = time.monotonic()
        loop.stop(timeout=5, interrupt=store.close, grace=1)
        took = time.monotonic() - start
        assert not loop.running, "the round still runs after the stop"
        assert took < 4, took  # not the store's 8-s timeout
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
        loop.stop()
        filt.close()
        store.close()
    assert alerts == []
    assert loop.status.failures == 0, loop.status.last_error


def test_sync_loop_backs_off_alerts_and_recovers(server_factory: Servers) -> None:
    """The loop as the daemon runs it, on the real clock: the master goes away,
    filtering goes on, the loop says so once, backs off, and catches up."""
    import time

    from xpro.sync import SyncLoop

    srv = server_factory.redis(extra=("--appendonly", "yes", "--appendfsync", "always"))
    url, mesh = f"redis://127.0.0.1:{srv.port}", f"t{uuid.uuid4().hex[:8]}"
    filt = XdpFilter(PARAMS, sizes=SIZES)
    alerts: list[str] = []
    loop = SyncLoop(Syncer(filt, open_store(url, mesh=mesh, options={"timeout": 1}), "p0", SYNC),
                    period=0.1, max_backoff=0.4, on_alert=lambda kind, msg: alerts.append(kind))

    def until(cond: Any, what: str) -> None:
        deadline = time.monotonic() + 20
        while not cond():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    try:
        loop.start()
        for fr in FLOWS:
            filt.program.test_run(fr, repeat=4, data_out=False)
        until(lambda: loop.status.rounds >= 3, "rounds")
        srv.stop()
        until(lambda: not loop.status.healthy, "the outage noticed")
        for fr in FLOWS:
            assert filt.program.test_run(fr, repeat=6, data_out=False).retval == 2
        until(lambda: loop.status.failures >= 3, "retries")
        srv.start()
        until(lambda: loop.status.healthy, "recovery")
        rounds = loop.status.rounds
        until(lambda: loop.status.rounds >= rounds + 2, "rounds after recovery")
    finally:
        loop.stop()
        filt.close()
        loop.syncer.store.close()
    assert alerts == ["store_down", "store_up"]
    master = master_counts(url, mesh)
    assert sum(master.values()) == len(FLOWS) * 10
