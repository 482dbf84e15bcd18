"""etcd's server CPU for the master records: one key per record, or records packed per key.

Run as ``python bench/etcd_layout.py`` (about eight minutes; ``--quick`` for a
tenth of the sizes, ``--scale N`` for an N-th).  It answers one question of
design (docs/performance.rst, "etcd's layout"): would the etcd store's 4 x
100k round fit its period if the records were packed R to a key, as the Redis
store packs them in hashes?  It starts its own etcd member with fsync
(:mod:`xpro.lab.servers`), writes through the same gRPC stubs and the same
transactions as :class:`xpro.stores.etcd.EtcdStore` (compare-and-swap on each
key's mod_revision, a change-log entry and the ``v`` key in every transaction,
the losers re-sent with the fresh revisions their failure branch returns), and
reads the member's CPU time from ``/proc`` (utime + stime, less what it burns
idle).  The values are random bytes: etcd does not look at them, so the figures
are etcd's alone, without the proxies' merge.

For each layout (``keys``: 24-byte values under 36-byte keys, 120 records a
transaction; ``R=128``, ``R=512``: R records of 60 bytes a value, up to 100
keys or 1.2 MB a transaction), on a fresh member:

* ``create`` and ``update``: 400k records (``records`` in the JSON)
  written once, then rewritten once (the steady state of a round that
  changed them all);
* ``small``: 1M records stored (``store``), one writer changes 1000 random
  ones (a quiet round: what packing costs in bytes rewritten);
* ``round``: the same store, four writers (``proxies``) at once each
  changing 100k random records (``changes``: the bench's 4 x 100k round on
  etcd), and ``serial``: the same with the writers one after another (no
  lost compare-and-swap);
* ``db_mb``: the member's database after each step (without compaction);
* ``ratios``: each packed layout's figure over one key a record's (etcd's
  CPU for ``update``, ``round`` and ``serial``, the bytes rewritten for
  ``small``).

The last line of the output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from xpro.lab.servers import ServerSet, process_cpu_s

KEY, VALUE, RECORD = 36, 24, 60  # a flow key, a master record, both (the etcd store's sizes)
CHUNK = 120  # records per transaction, one key each (xpro.stores.etcd.CHUNK)
PACKED_KEYS = 100  # packed keys per transaction ...
TXN_BYTES = 1_200_000  # ... within etcd's 1.5 MiB request limit
WRITERS = 4  # client threads of the create and update passes
IN_FLIGHT = 16  # transactions each keeps in flight
IDLE_S = 1.0  # the member's idle CPU is measured over this, then subtracted (a tenth
# of it in runs scaled down: their figures mean nothing, only that they run)
SETTLE_S = 0.5  # after the last reply: etcd commits its backend every 100 ms
PREFIX = b"xpro/bench/"


def _rpc() -> Any:
    from etcd3 import etcdrpc

    return etcdrpc


class Layout:
    """``per_key`` records under each key (0: one record, the etcd store's layout)."""

    def __init__(self, per_key: int, records: int) -> None:
        self.per_key = per_key
        self.keys = records if per_key == 0 else -(-records // per_key)
        self.value_size = VALUE if per_key == 0 else per_key * RECORD
        self.per_txn = CHUNK if per_key == 0 else max(
            1, min(PACKED_KEYS, TXN_BYTES // (self.value_size + 64)))

    @property
    def name(self) -> str:
        return "keys" if self.per_key == 0 else f"R={self.per_key}"

    def key(self, i: int) -> bytes:
        return PREFIX + (b"r/%036d" % i if self.per_key == 0 else b"b/%08x" % i)

    def keys_of(self, records: Sequence[int]) -> dict[int, int]:
        """The keys holding these records, and how many of them each holds."""
        out: dict[int, int] = {}
        for r in records:
            k = r if self.per_key == 0 else r // self.per_key
            out[k] = out.get(k, 0) + 1
        return out


class Member:
    """One etcd member and the figures of what it did."""

    def __init__(self, servers: ServerSet, idle_s: float = IDLE_S) -> None:
        self.server = servers.etcd(1, fsync=True, extra=[
            "--quota-backend-bytes", str(8 << 30), "--max-request-bytes", str(4 << 20),
            "--max-txn-ops", "256"]).members[0]
        rpc = _rpc()
        channel = grpc.insecure_channel(self.server.address, options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20)])
        self.kv, self.maint = rpc.KVStub(channel), rpc.MaintenanceStub(channel)
        pid = self.server.pid
        if pid is None:
            raise RuntimeError(f"{self.server!r} is not running")
        self.pid = pid
        self._log = 0
        self._lock = threading.Lock()
        c0 = process_cpu_s([self.pid])
        time.sleep(idle_s)
        self.idle = (process_cpu_s([self.pid]) - c0) / idle_s

    def log_key(self) -> bytes:
        with self._lock:
            self._log += 1
            return PREFIX + b"l/%016x/%08x" % (time.time_ns(), self._log)

    def measure(self, fn: Callable[[], Any]) -> dict[str, float]:
        c0, t0 = process_cpu_s([self.pid]), time.monotonic()
        fn()
        wall = time.monotonic() - t0
        time.sleep(SETTLE_S)
        cpu = process_cpu_s([self.pid]) - c0 - self.idle * (time.monotonic() - t0)
        db = self.maint.Status(_rpc().StatusRequest(), timeout=60).dbSize
        return {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "db_mb": round(db / 1e6, 1)}


def cas(m: Member, lay: Layout, keys: Sequence[int], revs: Sequence[int], records: int) -> Any:
    """A merge transaction as the etcd store sends it."""
    rpc = _rpc()
    log_key = m.log_key()
    compare = [rpc.Compare(key=lay.key(k), target=rpc.Compare.MOD, result=rpc.Compare.EQUAL,
                           mod_revision=rv) for k, rv in zip(keys, revs, strict=True)]
    compare.append(rpc.Compare(key=log_key, target=rpc.Compare.VERSION,
                               result=rpc.Compare.EQUAL, version=0))
    success = [rpc.RequestOp(request_put=rpc.PutRequest(key=lay.key(k),
                                                        value=os.urandom(lay.value_size)))
               for k in keys]
    entry = os.urandom(4 + records * (KEY + 1 + VALUE))  # the records' keys, flags, values
    success += [rpc.RequestOp(request_put=rpc.PutRequest(key=log_key, value=entry)),
                rpc.RequestOp(request_put=rpc.PutRequest(key=PREFIX + b"v", value=b""))]
    failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=lay.key(k))) for k in keys]
    return rpc.TxnRequest(compare=compare, success=success, failure=failure)


def read(lay: Layout, keys: Sequence[int]) -> Any:
    rpc = _rpc()
    return rpc.TxnRequest(success=[rpc.RequestOp(request_range=rpc.RangeRequest(key=lay.key(k)))
                                   for k in keys])


def _revs(resp: Any) -> list[int]:
    return [r.response_range.kvs[0].mod_revision if r.response_range.kvs else 0
            for r in resp.responses]


def _groups(seq: Sequence[int], n: int) -> list[Sequence[int]]:
    return [seq[s : s + n] for s in range(0, len(seq), n)]


def write_all(m: Member, lay: Layout, revs: list[int]) -> None:
    """Every key written once, from WRITERS threads; ``revs`` updated."""
    groups = _groups(range(lay.keys), lay.per_txn)
    per = 1 if lay.per_key == 0 else lay.per_key

    def worker(t: int) -> None:
        mine = groups[t::WRITERS]
        for part in _groups(range(len(mine)), IN_FLIGHT):
            futs = [(mine[i], m.kv.Txn.future(
                cas(m, lay, mine[i], [revs[k] for k in mine[i]], len(mine[i]) * per),
                timeout=600)) for i in part]
            for g, f in futs:
                resp = f.result()
                if not resp.succeeded:
                    raise RuntimeError("a write of the create/update pass lost its compare")
                for k in g:
                    revs[k] = resp.header.revision

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(WRITERS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def merge(m: Member, lay: Layout, records: Sequence[int], stats: dict[str, int]) -> None:
    """One proxy's merge of these records: read their keys, compare-and-swap, re-send losers."""
    counts = lay.keys_of(records)
    groups = _groups(sorted(counts), lay.per_txn)
    futs = [m.kv.Txn.future(read(lay, g), timeout=600) for g in groups]
    state = [_revs(f.result()) for f in futs]
    todo, attempt = list(range(len(groups))), 0
    while todo:
        sent = [(gi, m.kv.Txn.future(cas(m, lay, groups[gi], state[gi],
                                         sum(counts[k] for k in groups[gi])), timeout=600))
                for gi in todo]
        again = []
        for gi, f in sent:
            resp = f.result()
            stats["txns"] += 1
            if resp.succeeded:
                stats["keys"] += len(groups[gi])
            else:
                stats["lost"] += 1
                state[gi] = _revs(resp)
                again.append(gi)
        todo, attempt = again, attempt + 1
        if todo:
            time.sleep(random.uniform(0, min(0.002 * 2**attempt, 0.2)))


def _merges(m: Member, lay: Layout, picks: list[list[int]], *, together: bool
            ) -> dict[str, Any]:
    stats = [{"txns": 0, "lost": 0, "keys": 0} for _ in picks]

    def run() -> None:
        if not together:
            for p, s in zip(picks, stats, strict=True):
                merge(m, lay, p, s)
            return
        threads = [threading.Thread(target=merge, args=(m, lay, p, s))
                   for p, s in zip(picks, stats, strict=True)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()

    out: dict[str, Any] = m.measure(run)
    for k in ("txns", "lost", "keys"):
        out[k] = sum(s[k] for s in stats)
    out["mb_written"] = round(out["keys"] * (lay.value_size + len(lay.key(0))) / 1e6, 1)
    out["us_per_record"] = round(out["cpu_s"] / sum(len(p) for p in picks) * 1e6, 1)
    return out


def bench_layout(servers: ServerSet, per_key: int, args: argparse.Namespace
                 ) -> dict[str, Any]:
    res: dict[str, Any] = {}
    lay = Layout(per_key, args.records)
    m = Member(servers, IDLE_S if args.scale == 1 else IDLE_S / 10)
    revs = [0] * lay.keys
    for name in ("create", "update"):
        res[name] = m.measure(lambda: write_all(m, lay, revs))
        res[name]["us_per_record"] = round(res[name]["cpu_s"] / args.records * 1e6, 1)
        log(f"{lay.name:6} {name:7} {res[name]}")
    m.server.stop()

    lay = Layout(per_key, args.store)
    m = Member(servers, IDLE_S if args.scale == 1 else IDLE_S / 10)
    write_all(m, lay, [0] * lay.keys)
    rng = random.Random(1)
    res["small"] = _merges(m, lay, [rng.sample(range(args.store), min(1000, args.store))],
                           together=False)
    log(f"{lay.name:6} small   {res['small']}")
    picks = [rng.sample(range(args.store), args.changes) for _ in range(args.proxies)]
    for name, together in (("round", True), ("serial", False)):
        res[name] = _merges(m, lay, picks, together=together)
        log(f"{lay.name:6} {name:7} {res[name]}")
    m.server.stop()
    return res


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of the sizes")
    ap.add_argument("--scale", type=int, metavar="N", help="sizes divided by N")
    ap.add_argument("--packs", default="128,512",
                    help="records per key of the packed layouts (comma-separated)")
    args = ap.parse_args()
    scale = args.scale = args.scale or (10 if args.quick else 1)
    args.records, args.store = 400_000 // scale, 1_000_000 // scale
    args.proxies, args.changes = 4, 100_000 // scale
    t0 = time.monotonic()
    out: dict[str, Any] = {"bench": "etcd_layout", "records": args.records,
                           "store": args.store, "proxies": args.proxies,
                           "changes": args.changes, "layouts": {}}
    with ServerSet() as servers:
        for per_key in [0] + [int(x) for x in args.packs.split(",") if x]:
            out["layouts"]["keys" if per_key == 0 else f"R={per_key}"] = bench_layout(
                servers, per_key, args)
    out["total_s"] = round(time.monotonic() - t0, 1)
    # each packed layout against one key a record, measured in the same run
    keys = out["layouts"]["keys"]
    out["ratios"] = {
        name: {step: round(r[step][fig] / keys[step][fig], 3) if keys[step][fig] else None
               for step, fig in (("update", "cpu_s"), ("round", "cpu_s"),
                                 ("serial", "cpu_s"), ("small", "mb_written"))}
        for name, r in out["layouts"].items() if name != "keys"}
    print(f"\n{'layout':8}{'update us/rec':>15}{'small MB':>10}{'round cpu s':>13}"
          f"{'lost':>7}{'serial cpu s':>14}{'round MB':>10}")
    for name, r in out["layouts"].items():
        print(f"{name:8}{r['update']['us_per_record']:>15}{r['small']['mb_written']:>10}"
              f"{r['round']['cpu_s']:>13}{r['round']['lost']:>7}{r['serial']['cpu_s']:>14}"
              f"{r['round']['mb_written']:>10}")
    for name, ratio in out["ratios"].items():
        print(f"{name} / keys: " + ", ".join(f"{k} {v}" for k, v in ratio.items()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
