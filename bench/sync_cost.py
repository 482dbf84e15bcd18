"""Sync cost per store: whole sync rounds (``Syncer.round``), kernel program included.

Run as ``python bench/sync_cost.py`` (root: it loads the XDP program; about
six minutes; ``--quick`` for a tenth of the sizes, ``--plot PATH`` to draw the
figure).  It starts its own servers with :mod:`xpro.lab.servers` (one
redis-server, a Redis Cluster of 3 masters with a replica each, one etcd
member with fsync), on free loopback ports, and removes them at the end.
Each round is the one the daemon runs every period: heartbeat, dirty flows
read through the control program, merge into the master, the master's
changes taken in and written back to the maps, destination aggregates
recomputed.  For each store:

* **4 proxies x 100k changed flows** -- four proxies, each its own XDP
  program in its own process (forked; threads in one process for
  ``memory://``, which cannot be shared between processes), each with 100k
  flows of its own.  Round 1 merges them all into the master (they were
  created fresh), round 2 takes in the other proxies' flows; then every
  proxy sends one packet per flow through its program (``test_run``), so all
  its 100k flows changed, and the proxies start round 3 together: each
  merges 100k records and takes in what the others merged.  Reported: the
  slowest proxy's round 3 (``round_4x100k_s``), ``records_per_s`` = 400k /
  that, and round 4, which takes in the rest of the others' changes.  And
  the CPU round 3 took: the proxies' (``round_4x100k_cpu_total_s``), the
  store servers' (``round_4x100k_server_cpu_s``, from /proc), and the least
  wall time that much CPU needs on this machine's cores
  (``round_4x100k_cpu_bound_s``): where the proxies and the master share
  the cores, a round cannot be shorter.
* **By proxies** (``by_proxies``; ``round_16x25k_s``): the same round with
  2, 4, 8 and 16 proxies (``--proxies``), each with a quarter of the
  proxies' flows (25k): what one proxy pulls and how the round grows with
  the mesh at the same changes per proxy (not on etcd).
* **A table of 1M flows** at one proxy (``Sizes(flows=2**21)``), and of 10k
  and 100k: the first round (reads the whole table and merges it all), an
  idle round (nothing changed; median of 5), a round after 1000 flows
  changed, after 1% changed, and (1M) after 10% changed -- one packet per
  changed flow through ``test_run``.  So the cost of a round can be read
  against the number of changes and against the size of the table.
* Redis: ``used_memory`` (INFO memory) before and after the first round of
  the 1M table, per record (records, change log and replay results).

etcd merges ~30k records/s here, so it runs at a fifth of the table sizes
(``flows`` in its JSON says how many); the 4 x 100k round keeps its size.
The last line of the output is one JSON object; ``--replot FILE`` redraws the
figure from a saved output.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from xpro.core import layout as L
from xpro.core import model
from xpro.core.params import Sizes
from xpro.core.state import OP_CREATE, OP_FLOW, apply_entries
from xpro.datapath.xdp import XdpFilter
from xpro.lab.servers import ServerSet, process_cpu_s
from xpro.plugins import open_store
from xpro.stores.base import Store
from xpro.sync import Syncer

S = model.NS_PER_S
# Thresholds that never drop nor reset a flow during the bench: every packet
# is counted, so every round has exactly the changes the bench made.
PARAMS = model.FilterParams(t_t1=1000 * S, t_f1=2**32 - 1, t_f2=2**32 - 1)
SYNC = model.SyncParams(t_t1=1000 * S, t_t4=10_000 * S, r_q=2 * model.R_DEN)
N_DST = 256  # destinations the flows go to (198.18.0.0-255)
ID_STRIDE = 1 << 20  # proxy i's flows are sources 10.0.0.1 + i * ID_STRIDE + j
FIXED_CHANGES = 1000  # the changes of the "same changes, growing table" rounds
TARGET_ROUND_S = 1.0
TARGET_IDLE_S = 0.050
ETCD_QUOTA = ("--quota-backend-bytes", str(8 * 1024**3))
STORES = ("memory", "redis", "redis+cluster", "etcd")
#: What a store's bench runs: the same 4 x 100k round with the full pull
#: (side by side), the table by proxies, the one-proxy tables.
PARTS = ("full", "scaling", "tables")
SCALING = (2, 4, 8, 16)  # proxies, each with 25k changed flows (a quarter of per_proxy)
SCALING_PER_PROXY = 25_000


# ---------------------------------------------------------------------------
# Flows: keys and the frames that hit them
# ---------------------------------------------------------------------------


def _mapped(v4: np.ndarray) -> np.ndarray:
    """IPv4 addresses (uint64 values) as 16-byte IPv4-mapped IPv6 (S16)."""
    out = np.zeros((len(v4), 16), dtype=np.uint8)
    out[:, 10:12] = 0xFF
    out[:, 12:16] = v4.astype(">u4").view(np.uint8).reshape(-1, 4)
    return out.view("S16").ravel()


def _src(ids: np.ndarray) -> np.ndarray:
    return (10 << 24) + 1 + ids.astype(np.uint64)


def _dst(ids: np.ndarray) -> np.ndarray:
    return (198 << 24) + (18 << 16) + (ids % N_DST).astype(np.uint64)


def flow_keys(ids: np.ndarray) -> np.ndarray:
    """The FLOW_KEY of flow ``id``: 10.0.0.1 + id -> 198.18.0.(id % 256)."""
    k = np.zeros(len(ids), dtype=L.FLOW_KEY)
    k["src"] = _mapped(_src(ids))
    k["dst"]["addr"] = _mapped(_dst(ids))
    return k


def flow_frames(ids: np.ndarray) -> bytes:
    """One 60-byte Ethernet/IPv4/UDP frame per flow, concatenated."""
    f = np.zeros((len(ids), 60), dtype=np.uint8)
    f[:, 0:6], f[:, 6:12], f[:, 12] = 2, 4, 0x08  # MACs, ethertype IPv4
    f[:, 14], f[:, 17], f[:, 22], f[:, 23] = 0x45, 46, 64, 17  # v4/IHL, tot_len, TTL, UDP
    f[:, 26:30] = _src(ids).astype(">u4").view(np.uint8).reshape(-1, 4)
    f[:, 30:34] = _dst(ids).astype(">u4").view(np.uint8).reshape(-1, 4)
    f[:, 34:36], f[:, 36:38], f[:, 39] = (0x9C, 0x40), (0, 53), 26  # ports, UDP length
    return f.tobytes()


def check_keys() -> None:
    """The keys the bench creates are the ones the program derives from its frames."""
    ids = np.array([0, 1, 255, 256, 999_999], dtype=np.int64)
    frames, keys = flow_frames(ids), flow_keys(ids)
    for j in range(len(ids)):
        got = model.parse(frames[60 * j : 60 * (j + 1)], 0).key
        assert got == keys[j].tobytes(), (got.hex(), keys[j].tobytes().hex())


def create_flows(filt: XdpFilter, ids: np.ndarray, t: int) -> None:
    """Create these flows in the maps, fresh (never synced: the next round merges them)."""
    res = filt.apply(apply_entries(flow_keys(ids), OP_FLOW | OP_CREATE, c_delta=1, ts1=t, ts2=t))
    assert (res == 0).all(), f"{int((res != 0).sum())} flows not created"


def send(filt: XdpFilter, ids: np.ndarray, t: int) -> None:
    """One packet per flow through the program at (fake) time ``t``."""
    filt.set_clock(t)
    frames = flow_frames(ids)
    run = filt.program.test_run
    for j in range(len(ids)):
        run(frames[60 * j : 60 * (j + 1)], data_out=False)


def table_size(n: int) -> Sizes:
    """An LRU well above ``n`` flows (a thrashing LRU costs ~6x, docs/platform.rst)."""
    return Sizes(flows=max(1 << 14, 1 << int(np.ceil(np.log2(2 * n)))))


class TimedStore:
    """A store whose calls are timed (the store's share of a round)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.spent = 0.0
        self.by_call: dict[str, float] = {}

    def reset(self) -> None:
        self.spent = 0.0
        self.by_call = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if name not in ("merge", "changes", "pull", "clients", "heartbeat", "proxies",
                        "expire"):
            return attr

        def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return attr(*a, **kw)
            finally:
                dt = time.perf_counter() - t
                self.spent += dt
                self.by_call[name] = self.by_call.get(name, 0.0) + dt

        return timed


def timed_round(sync: Syncer, store: TimedStore, now: int) -> dict[str, Any]:
    store.reset()
    w0, c0 = time.time(), time.thread_time()
    st = sync.round(now)
    cpu = time.thread_time() - c0
    return {"s": st.seconds, "cpu_s": cpu, "store_s": store.spent,
            "merge_s": store.by_call.get("merge", 0.0),
            "changes_s": store.by_call.get("changes", 0.0) + store.by_call.get("pull", 0.0),
            "start": w0, "end": time.time(),
            "flows": st.flows, "merged": st.merged, "pulled": st.pulled,
            "partials": st.partials, "destinations": st.destinations,
            "created": st.created, "applied": st.applied, "raced": st.raced,
            "error": st.error}


# ---------------------------------------------------------------------------
# 4 proxies x 100k changed flows
# ---------------------------------------------------------------------------


def _proxy(url: str, mesh: str, idx: int, n: int, proxies: int, t0: int, barrier: Any,
           gate: Any, out: Any, pull: str = "candidates") -> None:
    try:
        filt = XdpFilter(PARAMS, sizes=table_size(proxies * n))
    except Exception as exc:
        barrier.abort()
        gate.abort()
        out.put((idx, {"failed": repr(exc)}))
        return
    res: dict[str, Any] = {}
    try:
        ids = np.arange(n, dtype=np.int64) + idx * ID_STRIDE
        create_flows(filt, ids, t0)
        store = TimedStore(open_store(url, mesh=mesh))
        sync = Syncer(filt, store, f"p{idx}", SYNC,  # type: ignore[arg-type]
                      store_expire_every=10**9, pull=pull)
        for r, label in enumerate(("first", "pull")):
            barrier.wait(900)
            res[label] = timed_round(sync, store, t0 + (1 + r) * S)
        send(filt, ids, t0 + 3 * S)  # every flow of this proxy changed
        for r, label in enumerate(("changed", "follow")):
            barrier.wait(900)
            if r == 0:
                gate.wait(900)  # the parent reads the servers' CPU time ...
            res[label] = timed_round(sync, store, t0 + (4 + r) * S)
            if r == 0:
                gate.wait(900)  # ... and again once every proxy is done
        res["flows_in_map"] = len(filt.read_flows()[0])
        store.close()
    except Exception as exc:
        barrier.abort()
        gate.abort()
        res["failed"] = repr(exc)
    finally:
        filt.close()
        out.put((idx, res))


def four_proxies(url: str, n: int, t0: int, *, threads: bool, proxies: int = 4,
                 pull: str = "candidates", server_pids: Callable[[], list[int]] | None = None
                 ) -> dict[str, Any]:
    mesh = f"c{uuid.uuid4().hex[:8]}"
    workers: list[Any]
    if threads:
        q: Any = queue.Queue()
        bar: Any = threading.Barrier(proxies)
        gate: Any = threading.Barrier(proxies + 1)
        workers = [threading.Thread(target=_proxy,
                                    args=(url, mesh, i, n, proxies, t0, bar, gate, q, pull))
                   for i in range(proxies)]
    else:
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        bar = ctx.Barrier(proxies)
        gate = ctx.Barrier(proxies + 1)
        workers = [ctx.Process(target=_proxy,
                               args=(url, mesh, i, n, proxies, t0, bar, gate, q, pull))
                   for i in range(proxies)]
    for w in workers:
        w.start()
    # The servers' CPU time over the "changed" round: between the gate every
    # proxy passes before it and the one every proxy passes after it.
    server_cpu: float | None = None
    try:
        gate.wait(1800)
        c0 = process_cpu_s(server_pids()) if server_pids else None
        gate.wait(1800)
        if c0 is not None and server_pids is not None:
            server_cpu = process_cpu_s(server_pids()) - c0
    except threading.BrokenBarrierError:
        pass  # a proxy failed: its result says why
    got = dict(q.get(timeout=1800) for _ in workers)
    for w in workers:
        w.join(60)
    if threads:
        from xpro.stores.memory import MemoryStore

        MemoryStore.forget(url.removeprefix("memory://"), mesh)
    failed = {i: r["failed"] for i, r in got.items() if "failed" in r}
    if failed:
        raise RuntimeError(f"proxies failed: {failed}")
    rows = list(got.values())

    def slowest(label: str) -> float:
        return max(r[label]["s"] for r in rows)

    ch = [r["changed"] for r in rows]
    cpu_total = sum(c["cpu_s"] for c in ch)
    return {
        "proxies": proxies, "per_proxy": n,
        "round_4x100k_s": round(slowest("changed"), 4),
        "records_per_s": round(proxies * n / slowest("changed")),
        "round_4x100k_wall_s": round(max(c["end"] for c in ch) - min(c["start"] for c in ch), 4),
        "round_4x100k_cpu_s": round(max(c["cpu_s"] for c in ch), 4),
        # The CPU the round took: the proxies' (the threads that ran it) and
        # the servers' (None for memory://, which runs in the proxies), and
        # the least wall time that much CPU takes on this machine's cores.
        "round_4x100k_cpu_total_s": round(cpu_total, 4),
        "round_4x100k_server_cpu_s": None if server_cpu is None else round(server_cpu, 4),
        "round_4x100k_cpu_bound_s": None if server_cpu is None else round(
            (cpu_total + server_cpu) / (os.cpu_count() or 1), 4),
        "round_4x100k_store_s": round(max(c["store_s"] for c in ch), 4),
        "round_4x100k_merge_s": round(max(c["merge_s"] for c in ch), 4),
        "round_4x100k_changes_s": round(max(c["changes_s"] for c in ch), 4),
        "round_4x100k_pulled": [c["pulled"] for c in ch],
        "round_4x100k_partials": [c["partials"] for c in ch],
        # records one proxy pulled besides its merge's replies: candidates and
        # destination partials (the full pull: every other proxy's change)
        "pulled_4x100k": max(c["pulled"] + c["partials"] for c in ch),
        "first_round_4x100k_s": round(slowest("first"), 4),
        "follow_up_round_4x100k_s": round(slowest("follow"), 4),
        "follow_up_pulled": [r["follow"]["pulled"] for r in rows],
        "flows_per_map": [r["flows_in_map"] for r in rows],
    }


# ---------------------------------------------------------------------------
# One proxy: tables of 10k, 100k, 1M flows
# ---------------------------------------------------------------------------


def one_table(url: str, n: int, t0: int, *, largest: bool,
              memory: Callable[[], int] | None) -> dict[str, Any]:
    mesh = f"t{uuid.uuid4().hex[:8]}"
    filt = XdpFilter(PARAMS, sizes=table_size(n))
    out: dict[str, Any] = {"flows": n, "map_size": filt.sizes.flows}
    try:
        all_ids = np.arange(n, dtype=np.int64)
        create_flows(filt, all_ids, t0)
        store = TimedStore(open_store(url, mesh=mesh))
        sync = Syncer(filt, store, "p0", SYNC, store_expire_every=10**9)  # type: ignore[arg-type]
        clock = [t0]

        def now() -> int:
            clock[0] += S
            return clock[0]

        before = memory() if memory else 0
        first = timed_round(sync, store, now())
        assert first["merged"] == n, first
        out["first_round_s"] = round(first["s"], 4)
        out["first_round_store_s"] = round(first["store_s"], 4)
        if memory:
            out["redis_bytes_per_record"] = round((memory() - before) / n, 1)
        idle = [timed_round(sync, store, now()) for _ in range(5)]
        assert all(r["merged"] == 0 for r in idle), idle
        out["idle_round_s"] = round(statistics.median(r["s"] for r in idle), 5)
        out["idle_round_store_s"] = round(statistics.median(r["store_s"] for r in idle), 5)

        def changed(k: int, reps: int) -> dict[str, float]:
            times, stores = [], []
            for rep in range(reps):
                ids = (np.arange(k, dtype=np.int64) * (n // k) + rep) % n
                send(filt, ids, clock[0])
                r = timed_round(sync, store, now())
                assert r["merged"] == k, (k, r)
                times.append(r["s"])
                stores.append(r["store_s"])
            return {"s": round(statistics.median(times), 5),
                    "store_s": round(statistics.median(stores), 5)}

        by_changes: dict[str, Any] = {"0": {"s": out["idle_round_s"],
                                            "store_s": out["idle_round_store_s"]}}
        fixed, pct = min(FIXED_CHANGES, n), max(1, n // 100)
        counts = [fixed, pct] + ([n // 10] if largest else [])
        for k in dict.fromkeys(counts):
            by_changes[str(k)] = changed(k, 3 if k <= max(fixed, pct) else 1)
        by_changes.setdefault(str(n), {"s": out["first_round_s"],
                                       "store_s": out["first_round_store_s"]})
        out["round_1k_changed_s"] = by_changes[str(fixed)]["s"]
        out["round_1pct_s"] = by_changes[str(pct)]["s"]
        if largest:
            out["round_10pct_s"] = by_changes[str(n // 10)]["s"]
            t = time.perf_counter()
            store.store.expire(t0 - SYNC.t_t1)  # nothing is that old: the scan alone
            out["store_expire_scan_s"] = round(time.perf_counter() - t, 4)
        out["by_changes"] = by_changes
        store.close()
        if url.startswith("memory://"):
            from xpro.stores.memory import MemoryStore

            MemoryStore.forget(url.removeprefix("memory://"), mesh)
    finally:
        filt.close()
    return out


def _tables(url: str, sizes: list[int], t0: int, memory: Callable[[], int] | None,
            out: Any) -> None:
    try:
        res = {str(n): one_table(url, n, t0, largest=n == sizes[-1],
                                 memory=memory if n == sizes[-1] else None) for n in sizes}
        out.put(res)
    except BaseException as exc:
        out.put({"failed": repr(exc)})
        raise


def tables(url: str, sizes: list[int], t0: int, memory: Callable[[], int] | None,
           *, fork: bool) -> dict[str, Any]:
    """The table runs, in a forked process (its maps and mirror go with it)."""
    if not fork:
        q: Any = queue.Queue()
        _tables(url, sizes, t0, memory, q)
        res: dict[str, Any] = q.get()
    else:
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_tables, args=(url, sizes, t0, memory, q))
        p.start()
        res = q.get(timeout=1800)
        p.join(60)
    if "failed" in res:
        raise RuntimeError(f"table runs failed: {res['failed']}")
    return res


# ---------------------------------------------------------------------------


def bench_store(name: str, url: str, *, per_proxy: int, sizes: list[int],
                memory: Callable[[], int] | None, parts: tuple[str, ...] = PARTS,
                server_pids: Callable[[], list[int]] | None = None,
                scaling: tuple[int, ...] = SCALING) -> dict[str, Any]:
    t0 = time.clock_gettime_ns(time.CLOCK_TAI) - 600 * S
    started = time.monotonic()
    threads = url.startswith("memory://")
    res: dict[str, Any] = {"url_scheme": url.split("://", maxsplit=1)[0]}
    log(f"{name}: 4 proxies x {per_proxy}")
    res.update(four_proxies(url, per_proxy, t0, threads=threads, server_pids=server_pids))
    if "full" in parts:
        log(f"{name}: 4 proxies x {per_proxy}, full pull (every change, as before)")
        full = four_proxies(url, per_proxy, t0, threads=threads, pull="all")
        res["full_pull"] = {k: full[k] for k in ("round_4x100k_s", "pulled_4x100k",
                                                 "round_4x100k_store_s",
                                                 "round_4x100k_changes_s")}
    if "scaling" in parts:
        res["by_proxies"] = {}
        for p in scaling:
            m = per_proxy * SCALING_PER_PROXY // 100_000
            log(f"{name}: {p} proxies x {m}")
            r = four_proxies(url, m, t0, threads=threads, proxies=p)
            res["by_proxies"][str(p)] = {
                "per_proxy": m, "round_s": r["round_4x100k_s"],
                "store_s": r["round_4x100k_store_s"], "pull_s": r["round_4x100k_changes_s"],
                "pulled": r["pulled_4x100k"], "others_changes": (p - 1) * m}
        if "16" in res["by_proxies"]:
            res["round_16x25k_s"] = res["by_proxies"]["16"]["round_s"]
    if "tables" not in parts:
        res["bench_s"] = round(time.monotonic() - started, 1)
        return res
    log(f"{name}: tables of {', '.join(map(str, sizes))} flows")
    tab = tables(url, sizes, t0, memory, fork=not threads)
    big = tab[str(sizes[-1])]
    res.update({
        "flows": sizes[-1],
        "first_round_1m_s": big["first_round_s"],
        "idle_round_1m_s": big["idle_round_s"],
        "round_1k_changed_of_1m_s": big["round_1k_changed_s"],
        "round_1pct_of_1m_s": big["round_1pct_s"],
        "round_10pct_of_1m_s": big["round_10pct_s"],
        "store_expire_scan_1m_s": big["store_expire_scan_s"],
        "by_table": {k: {f: v[f] for f in ("first_round_s", "idle_round_s",
                                           "round_1k_changed_s", "round_1pct_s")}
                     for k, v in tab.items()},
        "by_changes_1m": big["by_changes"],
    })
    if "redis_bytes_per_record" in big:
        res["redis_bytes_per_record"] = big["redis_bytes_per_record"]
    res["bench_s"] = round(time.monotonic() - started, 1)
    log(f"{name}: done in {res['bench_s']} s")
    return res


def _pids(servers: list[Any]) -> list[int]:
    return [p for p in (s.pid for s in servers) if p is not None]


def run_store(name: str, servers: ServerSet, per_proxy: int, sizes: list[int],
              parts: tuple[str, ...] = PARTS, scaling: tuple[int, ...] = SCALING
              ) -> dict[str, Any]:
    """Start the servers of store ``name`` and bench it."""
    if name == "memory":
        return bench_store(name, f"memory://b{uuid.uuid4().hex[:6]}", per_proxy=per_proxy,
                           sizes=sizes, memory=None, parts=parts, scaling=scaling)
    if name == "redis":
        srv = servers.redis()
        return bench_store(name, srv.url, per_proxy=per_proxy, sizes=sizes,
                           memory=srv.used_memory, parts=parts, server_pids=lambda: _pids([srv]),
                           scaling=scaling)
    if name == "redis+cluster":
        cluster = servers.redis_cluster(3, 1, node_timeout_ms=2000)

        def masters_memory() -> int:
            return sum(n.used_memory() for n in cluster.masters())

        return bench_store(name, cluster.url, per_proxy=per_proxy, sizes=sizes,
                           memory=masters_memory, parts=parts,
                           server_pids=lambda: _pids(list(cluster)), scaling=scaling)
    # etcd: a quarter of the proxies' flows and a fifth of the tables.
    etcd_per_proxy, etcd_sizes = per_proxy // 4, [n // 5 for n in sizes]
    etcd = servers.etcd(1, fsync=True, extra=ETCD_QUOTA)
    # A merge sends all its transactions at once: allow them more than the
    # default 5 s RPC deadline when four proxies do that together.
    res = bench_store(name, etcd.url + "?timeout=30", per_proxy=etcd_per_proxy,
                      sizes=etcd_sizes, memory=None,
                      parts=tuple(p for p in parts if p != "scaling"),
                      server_pids=lambda: _pids(list(etcd)))
    res["scaled"] = (f"{etcd_per_proxy} flows per proxy (a quarter) and tables of "
                     f"{', '.join(map(str, etcd_sizes))} flows (a fifth): etcd merges "
                     "~30k records/s here")
    return res


def log(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def print_table(results: dict[str, Any]) -> None:
    cols = [("round_4x100k_s", "4x100k s"), ("records_per_s", "records/s"),
            ("follow_up_round_4x100k_s", "follow-up s"), ("flows", "table"),
            ("first_round_1m_s", "first s"), ("idle_round_1m_s", "idle s"),
            ("round_1k_changed_of_1m_s", "1k chg s"), ("round_1pct_of_1m_s", "1% chg s"),
            ("round_10pct_of_1m_s", "10% chg s"), ("redis_bytes_per_record", "B/record")]
    print(f"{'store':15s}" + "".join(f"{h:>12s}" for _, h in cols))
    for name, r in results.items():
        if "error" in r:
            print(f"{name:15s}  failed: {r['error']}")
            continue
        print(f"{name:15s}" + "".join(f"{r.get(c, '-')!s:>12s}" for c, _ in cols))
    print()
    print("round time (s) by table size, one proxy:")
    print(f"{'store':15s}{'flows':>10s}{'first':>10s}{'idle':>10s}{'1k chg':>10s}{'1% chg':>10s}")
    for name, r in results.items():
        for n, t in r.get("by_table", {}).items():
            print(f"{name:15s}{n:>10s}{t['first_round_s']:>10}{t['idle_round_s']:>10}"
                  f"{t['round_1k_changed_s']:>10}{t['round_1pct_s']:>10}")
    for name, r in results.items():
        if "by_proxies" in r:
            print(f"\n{name}: round and records pulled per proxy, by proxies (same changes each)")
            print(f"{'proxies':>8s}{'per proxy':>10s}{'round s':>10s}{'pull s':>10s}"
                  f"{'pulled':>10s}{'others chg':>12s}")
            for p, t in r["by_proxies"].items():
                print(f"{p:>8s}{t['per_proxy']:>10}{t['round_s']:>10}{t['pull_s']:>10}"
                      f"{t['pulled']:>10}{t['others_changes']:>12}")
        if "full_pull" in r:
            f = r["full_pull"]
            print(f"{name}: 4x100k round {r['round_4x100k_s']} s, pulled {r['pulled_4x100k']}; "
                  f"with the full pull {f['round_4x100k_s']} s, pulled {f['pulled_4x100k']}")
    r = results.get("redis", {})
    if "idle_round_1m_s" in r:
        met_round = "met" if r["round_4x100k_s"] <= TARGET_ROUND_S else "NOT met"
        met_idle = "met" if r["idle_round_1m_s"] <= TARGET_IDLE_S else "NOT met"
        print(f"\ntargets on single Redis: 4x100k round {r['round_4x100k_s']:.3f} s "
              f"(target {TARGET_ROUND_S} s: {met_round}), idle round with {r['flows']} flows "
              f"{r['idle_round_1m_s'] * 1000:.1f} ms (target {TARGET_IDLE_S * 1000:.0f} ms: "
              f"{met_idle})")


# ---------------------------------------------------------------------------
# The figure
# ---------------------------------------------------------------------------


def plot(doc: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stores = {k: v for k, v in doc["stores"].items() if "error" not in v}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    colors = {"memory": "tab:green", "redis": "tab:red", "redis+cluster": "tab:purple",
              "etcd": "tab:blue"}

    ax = axes[0]
    for name, r in stores.items():
        pts = sorted((int(k), v["s"]) for k, v in r["by_changes_1m"].items() if int(k) > 0)
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, "o-", color=colors.get(name), label=f"{name} ({r['flows']:,} flows)")
        ax.axhline(r["idle_round_1m_s"], color=colors.get(name), ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("flows changed since the last round")
    ax.set_ylabel("round time (s)")
    ax.set_title("One proxy, full table: cost follows the changes\n"
                 "(dotted: idle round; last point: first round, all flows)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

    ax = axes[1]
    from matplotlib.lines import Line2D

    for name, r in stores.items():
        ns = sorted(int(k) for k in r["by_table"])
        tb = r["by_table"]
        ax.plot(ns, [tb[str(n)]["round_1k_changed_s"] for n in ns], "o-", color=colors.get(name))
        ax.plot(ns, [tb[str(n)]["idle_round_s"] for n in ns], "s--", color=colors.get(name),
                alpha=0.7)
    ax.axhline(TARGET_IDLE_S, color="black", lw=1, ls="-.")
    handles = [Line2D([], [], color=colors.get(n), lw=3, label=n) for n in stores]
    handles += [Line2D([], [], color="gray", marker="o", ls="-", label=f"{FIXED_CHANGES} changed"),
                Line2D([], [], color="gray", marker="s", ls="--", label="idle (none changed)"),
                Line2D([], [], color="black", ls="-.", lw=1, label="idle target 50 ms")]
    ax.legend(handles=handles, fontsize=7, ncol=2, loc="upper left")
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi * 8)
    ax.set_xlabel("flows in the table (and in the master)")
    ax.set_ylabel("round time (s)")
    ax.set_title("Same changes, growing table", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)

    ax = axes[2]
    names = list(stores)
    vals = [stores[n]["round_4x100k_s"] for n in names]
    follow = [stores[n]["follow_up_round_4x100k_s"] for n in names]
    xs = np.arange(len(names))
    ax.bar(xs - 0.2, vals, 0.4, color=[colors.get(n, "gray") for n in names],
           label="round: merge own, take in others'")
    ax.bar(xs + 0.2, follow, 0.4, color=[colors.get(n, "gray") for n in names], alpha=0.45,
           label="next round: take in the rest")
    for x, v, f in zip(xs, vals, follow, strict=True):
        ax.text(x - 0.2, v * 1.08, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
        ax.text(x + 0.2, f * 1.08, f"{f:.2f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(TARGET_ROUND_S, color="black", lw=1, ls="-.", label="1 s period")
    ax.set_xticks(xs, [f"{n}\n{stores[n]['proxies']}x{stores[n]['per_proxy'] // 1000}k"
                       for n in names], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(min([*follow, *vals]) / 2, max(vals) * 30)
    ax.set_ylabel("slowest proxy's round (s)")
    ax.set_title("4 proxies x 100k changed flows, concurrently", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, axis="y", which="both", alpha=0.3)

    fig.suptitle(f"xpro sync rounds per store ({doc['machine']['cpus']} cores, "
                 f"kernel {doc['machine']['kernel']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}", file=sys.stderr)


# ---------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of the sizes")
    ap.add_argument("--scale", type=int, metavar="N",
                    help="divide the sizes by N (10 for --quick; the suite runs 100)")
    ap.add_argument("--stores", default=",".join(STORES),
                    help=f"comma-separated, from {', '.join(STORES)}")
    ap.add_argument("--plot", metavar="PATH", help="write the figure (PNG) here")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"besides the 4 x 100k round, comma-separated from {', '.join(PARTS)}")
    ap.add_argument("--proxies", default=",".join(map(str, SCALING)), metavar="LIST",
                    help="the proxy counts of the scaling table (comma-separated)")
    ap.add_argument("--replot", metavar="FILE",
                    help="only redraw the figure from a saved output (its last line)")
    args = ap.parse_args()
    if args.replot:
        if not args.plot:
            ap.error("--replot needs --plot PATH")
        with open(args.replot) as f:
            plot(json.loads(f.read().strip().splitlines()[-1]), args.plot)
        return
    if os.geteuid() != 0:
        sys.exit("sync_cost.py loads the XDP program: run it as root")
    wanted = [s.strip() for s in args.stores.split(",") if s.strip()]
    for s in wanted:
        if s not in STORES:
            ap.error(f"unknown store {s!r}: use {', '.join(STORES)}")
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    for p in parts:
        if p not in PARTS:
            ap.error(f"unknown part {p!r}: use {', '.join(PARTS)}")
    try:
        scaling = tuple(int(x) for x in args.proxies.split(",") if x.strip())
    except ValueError:
        ap.error(f"--proxies {args.proxies!r}: proxy counts, comma-separated")
    if not scaling or min(scaling) < 1:
        ap.error("--proxies: at least one count, each at least 1")
    scale = args.scale or (10 if args.quick else 1)
    if scale < 1 or 100_000 // scale < 100:
        ap.error("--scale must be from 1 to 1000")
    per_proxy = 100_000 // scale
    sizes = [10_000 // scale, 100_000 // scale, 1_000_000 // scale]
    check_keys()
    started = time.monotonic()
    results: dict[str, Any] = {}
    with ServerSet(prefix="xpro-bench-") as servers:
        for name in wanted:
            try:
                results[name] = run_store(name, servers, per_proxy, sizes, parts, scaling)
            except Exception as exc:  # the other stores still run
                log(f"{name}: FAILED: {exc!r}")
                results[name] = {"error": repr(exc)}
    print_table(results)
    doc = {
        "bench": "sync_cost",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release()},
        "quick": args.quick,
        "scale": scale,
        "targets": {"round_4x100k_s": TARGET_ROUND_S, "round_16x25k_s": TARGET_ROUND_S,
                    "idle_round_1m_s": TARGET_IDLE_S, "pulled_4x100k": "<= 10% of 300k"},
        "total_s": round(time.monotonic() - started, 1),
        "stores": results,
    }
    if args.plot:
        plot(doc, args.plot)
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
