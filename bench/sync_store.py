"""Sync cost per master store: merge rounds, idle and 1%-changed reads, memory per record.

Run as ``python bench/sync_store.py`` (``--quick`` for a smaller run).  It
starts its own servers with :mod:`xpro.lab.servers` (redis-server single and a
3-master cluster with replicas, one etcd member with fsync; free loopback
ports, a temporary directory, removed at the end).  It measures the store
calls alone; ``bench/sync_cost.py`` measures whole sync rounds.  For each store it measures:

* ``round_4x100k_s``: 4 concurrent clients (processes; threads for memory://)
  each merge 100k distinct changed flows, timed from a common start to the
  last client done -- once into an empty store (insert) and once more (update,
  the steady state, reported as the round time);
* ``round_4x100k_s`` is the median of 3 update rounds (min and max beside it);
  ``round_same_flows_s``: the same, but all 4 clients merge the same 100k flows
  (one attack seen by every proxy: each record is merged 4 times per round);
* ``records_per_s``: 400k / the update round;
* ``idle_round_1m_s``: one ``changes(cursor)`` with 1M records stored and
  nothing changed (median of 20); ``changed_1pct_s``: the same after 1% of
  them changed; ``full_read_1m_s``: ``changes(None)`` over 1M;
* Redis only: memory per record (INFO used_memory before/after loading 1M
  records, with the change log and meta included; and the record hashes
  alone, from MEMORY USAGE).

etcd is run at a reduced size (see ``sizes`` in the JSON): it merges ~20-30k
records/s here, so 1M records would take minutes to load.  The last line of
the output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from typing import Any

import numpy as np

from xpro.core.layout import FLOW_KEY, LOCAL
from xpro.core.model import R_DEN, SyncParams
from xpro.lab.servers import RedisServer, ServerSet
from xpro.plugins import open_store
from xpro.stores.base import Store

P = SyncParams(t_t1=10 * 10**9, t_t4=5 * 10**9, r_q=2 * R_DEN)
TARGET_ROUND_S = 1.0
TARGET_IDLE_S = 0.050


# ---------------------------------------------------------------------------
# Servers: xpro.lab.servers (127.0.0.1, free ports, a temporary directory, cleaned up)
# ---------------------------------------------------------------------------

ETCD_QUOTA = ("--quota-backend-bytes", str(8 * 1024**3))


# ---------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------


def flows(n: int, seed: int) -> np.ndarray:
    return np.frombuffer(np.random.default_rng(seed).bytes(36 * n), dtype=FLOW_KEY).copy()


def local_batch(n: int, t0: int, c: int) -> np.ndarray:
    loc = np.zeros(n, dtype=LOCAL)
    loc["ts1"] = t0
    loc["ts2"] = t0 + 10**8
    loc["c"] = c
    loc["dc"] = 1
    return loc


def _worker(url: str, mesh: str, w: int, n: int, rounds: int, barrier: Any, out: Any,
            same: bool) -> None:
    store = open_store(url, mesh=mesh)
    k = flows(n, 1000 if same else 1000 + w)
    t0 = time.time_ns() - 10**9
    for r in range(rounds):
        loc = local_batch(n, t0, r + 1)
        barrier.wait()
        start = time.time()
        store.merge(k, loc, P)
        out.put((w, r, start, time.time()))
    store.close()


def round_times(url: str, mesh: str, clients: int, n: int, rounds: int, threads: bool,
                same: bool = False) -> list[float]:
    """Per round: from the common start to the last client done.

    ``same``: every client merges the same flows (one attack seen by all
    proxies: every record is contended); otherwise each has its own.
    """
    if threads:
        import queue

        q: Any = queue.Queue()
        bar: Any = threading.Barrier(clients)
        workers: list[Any] = [threading.Thread(target=_worker, args=(url, mesh, w, n, rounds,
                                                                     bar, q, same))
                              for w in range(clients)]
    else:
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        bar = ctx.Barrier(clients)
        workers = [ctx.Process(target=_worker, args=(url, mesh, w, n, rounds, bar, q, same))
                   for w in range(clients)]
    for p in workers:
        p.start()
    res = [q.get(timeout=600) for _ in range(clients * rounds)]
    for p in workers:
        p.join(60)
    out = []
    for r in range(rounds):
        rows = [x for x in res if x[1] == r]
        out.append(max(x[3] for x in rows) - min(x[2] for x in rows))
    return out


def load(store: Store, total: int, seed: int, chunk: int = 200_000) -> None:
    t0 = time.time_ns() - 10**9
    for s in range(0, total, chunk):
        n = min(chunk, total - s)
        store.merge(flows(n, seed + s), local_batch(n, t0, 1), P)


def read_costs(store: Store, total: int, seed: int) -> dict[str, float]:
    """Full read, idle read, and a read after 1% changed, on a loaded store."""
    start = time.perf_counter()
    k, _, cur = store.changes(None)
    full = time.perf_counter() - start
    assert len(k) >= total, (len(k), total)
    idle = []
    for _ in range(20):
        s = time.perf_counter()
        got, _, cur = store.changes(cur)
        idle.append(time.perf_counter() - s)
        assert len(got) == 0
    ch = max(1, total // 100)
    t0 = time.time_ns() - 10**9
    keys = flows(min(total, 200_000), seed)[:ch]
    store.merge(keys, local_batch(ch, t0, 2), P)
    s = time.perf_counter()
    got, _, cur = store.changes(cur)
    changed = time.perf_counter() - s
    assert len(got) == ch, (len(got), ch)
    return {"full_read_s": full, "idle_read_s": statistics.median(idle), "changed_1pct_s": changed,
            "changed_records": ch}


def redis_memory(srv: RedisServer, total: int) -> dict[str, float]:
    """Bytes per record: the whole instance, and the record hashes alone."""
    srv.command("MEMORY", "PURGE")
    before = srv.used_memory()
    mesh = f"mem{uuid.uuid4().hex[:6]}"
    s2 = open_store(srv.url, mesh=mesh)
    load(s2, total, seed=77_000_000)
    after = srv.used_memory()
    rec_bytes = 0
    for b in range(s2.buckets):  # type: ignore[attr-defined]
        rec_bytes += int(srv.command("MEMORY", "USAGE", s2.bucket_keys(b)["records"],  # type: ignore[attr-defined]
                                     "SAMPLES", 0) or 0)
    s2.close()
    return {"bytes_per_record": (after - before) / total,
            "record_hash_bytes_per_record": rec_bytes / total}


# ---------------------------------------------------------------------------


def bench_store(name: str, url: str, *, clients: int, per_client: int, stored: int,
                threads: bool, redis: RedisServer | None) -> dict[str, Any]:
    t_insert, *t_updates = round_times(url, f"b{uuid.uuid4().hex[:8]}", clients, per_client,
                                       4, threads)
    t_update = statistics.median(t_updates)
    _, *t_same = round_times(url, f"s{uuid.uuid4().hex[:8]}", clients, per_client, 3, threads,
                             same=True)
    res: dict[str, Any] = {
        "clients": clients, "per_client": per_client,
        "round_insert_s": round(t_insert, 4), "round_4x100k_s": round(t_update, 4),
        "round_update_min_max_s": [round(min(t_updates), 4), round(max(t_updates), 4)],
        "records_per_s": round(clients * per_client / t_update),
        "round_same_flows_s": round(statistics.median(t_same), 4),
    }
    store = open_store(url, mesh=f"r{uuid.uuid4().hex[:8]}")
    t = time.perf_counter()
    load(store, stored, seed=5_000_000)
    res["load_records_per_s"] = round(stored / (time.perf_counter() - t))
    rc = read_costs(store, stored, seed=5_000_000)
    res.update(stored=stored, full_read_1m_s=round(rc["full_read_s"], 4),
               idle_round_1m_s=round(rc["idle_read_s"], 5),
               changed_1pct_s=round(rc["changed_1pct_s"], 4),
               changed_records=rc["changed_records"])
    store.close()
    if redis is not None:
        res.update({k: round(v, 1) for k, v in redis_memory(redis, stored).items()})
    print(f"  {name}: done", file=sys.stderr, flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of the sizes")
    ap.add_argument("--stores", default="memory,redis,redis-cluster,etcd")
    args = ap.parse_args()
    scale = 10 if args.quick else 1
    wanted = args.stores.split(",")
    results: dict[str, Any] = {}
    with ServerSet(prefix="xpro-bench-") as servers:
        for name in wanted:
            if name == "memory":
                results[name] = bench_store(name, f"memory://bench{uuid.uuid4().hex[:6]}",
                                            clients=4, per_client=100_000 // scale,
                                            stored=1_000_000 // scale, threads=True,
                                            redis=None)
            elif name == "redis":
                srv = servers.redis()
                results[name] = bench_store(name, srv.url, clients=4,
                                            per_client=100_000 // scale,
                                            stored=1_000_000 // scale, threads=False,
                                            redis=srv)
            elif name == "redis-cluster":
                cluster = servers.redis_cluster(node_timeout_ms=2000)
                url = "redis+cluster://" + ",".join(n.address for n in cluster[:3])
                results[name] = bench_store(name, url, clients=4, per_client=100_000 // scale,
                                            stored=1_000_000 // scale, threads=False,
                                            redis=None)
            elif name == "etcd":
                etcd = servers.etcd(1, fsync=True, extra=ETCD_QUOTA)
                results[name] = bench_store(name, etcd.url, clients=4,
                                            per_client=25_000 // scale,
                                            stored=200_000 // scale, threads=False,
                                            redis=None)

    cols = [("round_insert_s", "insert round s"), ("round_4x100k_s", "update round s"),
            ("records_per_s", "records/s"), ("round_same_flows_s", "same flows s"),
            ("stored", "stored"),
            ("full_read_1m_s", "full read s"), ("idle_round_1m_s", "idle read s"),
            ("changed_1pct_s", "1% changed s"), ("bytes_per_record", "B/record"),
            ("record_hash_bytes_per_record", "hash B/rec")]
    print(f"{'store':14s}{'clients x flows':>16s}" + "".join(f"{h:>15s}" for _, h in cols))
    for name, r in results.items():
        size = f"{r['clients']}x{r['per_client']}"
        print(f"{name:14s}{size:>16s}" + "".join(f"{r.get(c, '-')!s:>15s}" for c, _ in cols))
    if "redis" in results:
        r = results["redis"]
        print(f"targets on single Redis: 4x100k round {r['round_4x100k_s']:.3f} s "
              f"(target {TARGET_ROUND_S} s), idle read with {r['stored']} records "
              f"{r['idle_round_1m_s'] * 1000:.1f} ms (target {TARGET_IDLE_S * 1000:.0f} ms)")
    print(json.dumps({
        "bench": "sync_store",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release()},
        "quick": args.quick,
        "targets": {"round_4x100k_s": TARGET_ROUND_S, "idle_round_1m_s": TARGET_IDLE_S},
        "stores": results,
    }))


if __name__ == "__main__":
    main()
