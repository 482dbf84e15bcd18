"""The control program xpro_apply: the sync's only way to change a record.

It applies deltas in kernel context with atomic adds and a generation check,
so packets counted while a sync runs are never lost (docs/semantics.rst, "Record ownership").
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from tests.packets import frame
from xpro.bpf import BpfObject, object_path
from xpro.core import layout as L
from xpro.core import model
from xpro.core.params import Sizes
from xpro.core.state import APPLIED, MISSING, OP_READ, RACED, apply_entries
from xpro.datapath.afxdp.filter import UserFilter
from xpro.datapath.xdp import XdpFilter
from xpro.sync.round import _flow_updates

pytestmark = pytest.mark.kernel

S = model.NS_PER_S
T0 = 1_700_000_000 * S
FLOW_OP, DST_OP, CREATE, DELETE, OP_KEEP_BASE = 1, 2, 0x10, 0x20, 0x40


class Prog:
    def __init__(self) -> None:
        self.obj = BpfObject(object_path(), programs=["xpro_xdp", "xpro_apply"],
                             max_entries={"flows": 4096}, types=L.MAP_TYPES)
        self.obj.load()
        self.xdp = self.obj.programs["xpro_xdp"]
        self.ctl = self.obj.programs["xpro_apply"]
        self.cfg = self.obj.global_data(".data", L.CONFIG)
        self.cfg.view["t_f1"] = 2**32 - 1
        self.cfg.view["t_f2"] = 2**32 - 1
        self.flows = self.obj.maps["flows"]
        self.dsts = self.obj.maps["dsts"]
        self.buf = self.obj.maps["apply_buf"].typed(np.dtype("<u4"), L.APPLY)

    def send(self, fr: bytes, now: int, repeat: int = 1) -> None:
        self.cfg.view["fake_now"] = now
        self.xdp.test_run(fr, repeat=repeat, data_out=False)

    def apply(self, entries: np.ndarray) -> np.ndarray:
        n = len(entries)
        self.buf.update_batch(np.arange(n, dtype="<u4"), entries)
        ran = self.ctl.test_run(np.uint32(n).tobytes() + bytes(60), data_out=False).retval
        assert ran == n  # the number of entries it looked at
        return np.array([int(self.buf[np.uint32(i)]["result"]) for i in range(n)])


@pytest.fixture
def prog() -> Iterator[Prog]:
    p = Prog()
    yield p
    p.obj.close()


def entry(key: bytes, op: int, **fields: int) -> np.ndarray:
    """One control-program entry (through the builder the sync uses)."""
    return apply_entries([key], op, **fields)


FR = frame("10.0.0.1", "10.9.9.9")
KEY = model.parse(FR, 0).key


def test_delta_is_added_and_timestamps_move(prog: Prog) -> None:
    prog.send(FR, T0, repeat=5)
    res = prog.apply(entry(KEY, FLOW_OP, gen=0, c_delta=100, ts1=T0 - S, ts2=T0 + S))
    assert list(res) == [0]
    f = prog.flows[KEY]
    assert (int(f["c"]), int(f["ts1"]), int(f["ts2"])) == (105, T0 - S, T0 + S)
    # ts2 only moves forward
    prog.apply(entry(KEY, FLOW_OP, gen=0, ts2=T0))
    assert int(prog.flows[KEY]["ts2"]) == T0 + S


def test_generation_mismatch_is_refused(prog: Prog) -> None:
    prog.send(FR, T0)
    prog.send(FR, T0 + 100 * S)  # idle > T_T1: a reset, gen 1
    assert int(prog.flows[KEY]["gen"]) == 1
    res = prog.apply(entry(KEY, FLOW_OP, gen=0, c_delta=50))
    assert list(res) == [1]
    assert int(prog.flows[KEY]["c"]) == 1


def test_create_and_delete(prog: Prog) -> None:
    res = prog.apply(entry(KEY, FLOW_OP, c_delta=7, ts1=T0, ts2=T0))
    assert list(res) == [2]  # no record, no CREATE
    res = prog.apply(entry(KEY, FLOW_OP | CREATE, c_delta=7, ts1=T0, ts2=T0))
    assert list(res) == [0]
    assert int(prog.flows[KEY]["c"]) == 7
    prog.send(FR, T0 + S)
    res = prog.apply(entry(KEY, FLOW_OP | DELETE, ts2=T0))  # a packet came since: kept
    assert list(res) == [1]
    res = prog.apply(entry(KEY, FLOW_OP | DELETE, ts2=T0 + S))
    assert list(res) == [0]
    assert KEY not in prog.flows


def test_destination_aggregate_delta(prog: Prog) -> None:
    prog.send(FR, T0, repeat=3)
    dkey = KEY[16:]
    assert int(prog.dsts[dkey]["c"]) == 3
    res = prog.apply(entry(KEY, DST_OP, c_delta=-2, ts1=T0 - S))
    assert list(res) == [0]
    d = prog.dsts[dkey]
    assert (int(d["c"]), int(d["ts1"])) == (1, T0 - S)


def test_no_packet_lost_while_deltas_are_applied(prog: Prog) -> None:
    """Packets from one thread, deltas from another: every count is kept."""
    prog.send(FR, T0)
    sent = 1
    per_call, calls = 50, 400
    deltas = [int(d) for d in np.random.default_rng(1).integers(-20, 100, size=300)]
    done = threading.Event()

    def packets() -> None:
        for _ in range(calls):
            prog.xdp.test_run(FR, repeat=per_call, data_out=False)
        done.set()

    t = threading.Thread(target=packets)
    t.start()
    applied = 0
    for d in deltas:
        res = prog.apply(entry(KEY, FLOW_OP, gen=0, c_delta=d))
        assert list(res) == [0]
        applied += d
    t.join()
    sent += per_call * calls
    assert int(prog.flows[KEY]["c"]) == sent + applied


def test_keep_base_adds_packets_as_this_proxys_own(prog: Prog) -> None:
    """Counts made outside the program (an offload NIC's drops) go out as dc next round."""
    prog.send(FR, T0, repeat=3)
    prog.apply(entry(KEY, FLOW_OP, gen=0, c_delta=7, base_c=10))  # a sync: c 10, base 10
    res = prog.apply(entry(KEY, FLOW_OP | OP_KEEP_BASE, gen=0, c_delta=40, ts2=T0 + S))
    assert list(res) == [0]
    f = prog.flows[KEY]
    assert (int(f["c"]), int(f["base_c"]), int(f["ts2"])) == (50, 10, T0 + S)


class _Both:
    """The kernel program (XdpFilter) or the AF_XDP filter, one packet at a time."""

    def __init__(self, backend: str, p: model.FilterParams) -> None:
        sizes = Sizes(flows=4096, dsts=1024, prefixes=64, known=1024)
        self.kernel = backend == "kernel"
        self.f: XdpFilter | UserFilter = (XdpFilter if self.kernel else UserFilter)(
            p, sizes=sizes)

    def send(self, fr: bytes, now: int) -> int:
        if isinstance(self.f, UserFilter):
            return int(self.f.process_frames([fr], now)[0][0])
        self.f.set_clock(now)
        return int(self.f.program.test_run(fr, data_out=False).retval)

    def evict(self, key: np.ndarray) -> None:
        if isinstance(self.f, UserFilter):
            slots = self.f.flows.find(key)
            self.f.flows.delete(slots[slots >= 0])
        else:
            del self.f.flows[key.tobytes()]

PASS = 2


@pytest.mark.parametrize("backend", ["kernel", "afxdp"])
def test_a_cut_for_a_record_created_again_since_the_read_is_refused(backend: str) -> None:
    """The round reads a client's record (gen 0), the LRU evicts it under a
    flood and the client's next packet creates it again (gen 0 again); the
    merge's cut (a negative delta) then arrives.  Added, it wrapped the count
    to about 2**64: the kernel dropped the client, the AF_XDP filter (which
    reads it signed) passed everything.  Now both refuse it (next round), and
    the client passes."""
    p = model.FilterParams(t_f1=100, t_f2=10_000)
    b = _Both(backend, p)
    try:
        client = frame("192.0.2.10", "10.9.9.1")
        key = np.frombuffer(model.flow_key(model.parse(client, 0), p), dtype=L.FLOW_KEY)
        t = T0
        for i in range(120):  # 20 packets/s for 6 s, under T_F1
            t = T0 + i * S // 20
            assert b.send(client, t) == PASS
        _, recs = b.f.read(key)
        assert int(recs["c"][0]) == 120
        final = np.zeros(1, dtype=[("ts1", "<u8"), ("ts2", "<u8"), ("c", "<u8")])
        final["ts1"], final["ts2"], final["c"] = recs["ts1"] + 3 * S, recs["ts2"], 60
        b.evict(key)
        t += S // 20
        assert b.send(client, t) == PASS  # created again: c = 1, gen 0
        res = b.f.apply(_flow_updates(key, recs, final))
        assert res.tolist() == [1]  # RACED
        _, after = b.f.read(key)
        assert int(after["c"][0]) == 1
        assert [b.send(client, t + (j + 1) * S // 20) for j in range(3)] == [PASS] * 3
        # the same cut on the record it was read from is applied
        _, now = b.f.read(key)
        res = b.f.apply(_flow_updates(key, now, np.array(
            [(now["ts1"][0], now["ts2"][0], 2)], dtype=final.dtype)))
        assert res.tolist() == [0]
        assert int(b.f.read(key)[1]["c"][0]) == 2
    finally:
        b.f.close()


@pytest.mark.parametrize("backend", ["kernel", "afxdp"])
def test_a_cut_for_an_aggregate_reset_since_the_read_is_refused(backend: str) -> None:
    """The recompute reads a destination's aggregate; a packet after T_T1 of
    quiet resets it (c* = 0); the recompute's cut then arrives.  Added, it
    wrapped c* and closed the destination to every new source (kernel).  Now
    both refuse it; the next recompute writes the aggregate."""
    p = model.FilterParams(t_f1=100, t_f2=10_000)
    b = _Both(backend, p)
    try:
        dk = np.frombuffer(model.parse(frame("192.0.2.77", "10.9.9.2"), 0).dst,
                           dtype=L.DST_KEY)
        t = T0 + 100 * S
        for i in range(50):
            b.send(frame(f"198.51.100.{i + 1}", "10.9.9.2"), t + i * S // 100)
        _, cur = b.f.read_dsts_of(dk)
        assert int(cur["c"][0]) == 50
        t2 = t + S // 2 + p.t_t1 + 1
        b.send(frame("198.51.100.200", "10.9.9.2"), t2)  # reset: c* = 1
        fk = np.zeros(1, dtype=L.FLOW_KEY)
        fk["dst"] = dk
        for c_delta, kc_delta in ((10 - 50, 0), (0, -5)):
            res = b.f.apply(apply_entries(fk, DST_OP, c_delta=c_delta, ts1=0,
                                          ts2=int(cur["ts2"][0]), kc_delta=kc_delta))
            assert res.tolist() == [1]  # RACED
        _, d = b.f.read_dsts_of(dk)
        assert (int(d["c"][0]), int(d["kc"][0])) == (1, 0)
        assert [b.send(frame(f"203.0.113.{j + 1}", "10.9.9.2"), t2 + 2 * S + j)
                for j in range(3)] == [PASS] * 3
    finally:
        b.f.close()


# --- the closed-drops record, kept inside its destination's record -----------

DKEY = KEY[16:]
CKEY = model.closed_key(DKEY)


def _read(prog: Prog, key: bytes) -> np.ndarray | None:
    """The record the READ operation finds under ``key``, None if missing."""
    e = entry(key, OP_READ)
    if prog.apply(e)[0] != APPLIED:
        return None
    return prog.buf[np.uint32(0)]


def _rec(prog: Prog) -> np.ndarray | None:
    v = prog.dsts.get(DKEY)
    return None if v is None else np.asarray(v, dtype=L.DST_REC)


def test_a_closed_drops_record_without_an_aggregate(prog: Prog) -> None:
    """The sync creates a closed-drops record for a destination this proxy
    has no record of (the mesh's drops): it lives in a destination record
    whose aggregate is absent; a packet then starts the aggregate as a new
    record's (window from the flow's start), and the closed-drops record is
    untouched by it."""
    assert prog.apply(entry(CKEY, FLOW_OP | CREATE, c_delta=40, ts1=T0, ts2=T0 + S,
                            base_c=40))[0] == APPLIED
    rec = _rec(prog)
    assert rec is not None
    assert int(rec["ts2"]) == 0
    assert (int(rec["cd"]["c"]), int(rec["cd"]["ts2"])) == (40, T0 + S)
    got = _read(prog, CKEY)
    assert got is not None
    assert int(got["c_delta"]) == 40
    assert int(got["base_c"]) == 40
    # A DST operation without CREATE does not take the absent aggregate for one.
    assert prog.apply(entry(bytes(16) + DKEY, DST_OP, c_delta=1, ts2=T0 + S))[0] \
        == MISSING
    prog.send(FR, T0 + 2 * S)
    rec = _rec(prog)
    assert rec is not None
    assert (int(rec["ts1"]), int(rec["ts2"]), int(rec["c"])) == (T0 + 2 * S, T0 + 2 * S, 1)
    assert int(rec["cd"]["c"]) == 40


def test_the_aggregate_and_the_closed_drops_record_are_deleted_apart(prog: Prog) -> None:
    """An idle aggregate deleted by the sync leaves its closed-drops record
    readable, and the other way round; the record goes when both have."""
    prog.send(FR, T0)
    assert prog.apply(entry(CKEY, FLOW_OP | CREATE, c_delta=7, ts1=T0, ts2=T0 + S))[0] \
        == APPLIED
    # the closed-drops record goes, the aggregate stays
    assert prog.apply(entry(CKEY, FLOW_OP | DELETE, ts2=T0 + S))[0] == APPLIED
    assert _read(prog, CKEY) is None
    rec = _rec(prog)
    assert rec is not None
    assert int(rec["c"]) == 1
    assert not rec["cd"].tobytes().strip(b"\0")
    # again, and now the aggregate goes first: the closed-drops record stays
    assert prog.apply(entry(CKEY, FLOW_OP | CREATE, c_delta=7, ts1=T0, ts2=T0 + S))[0] \
        == APPLIED
    assert prog.apply(entry(bytes(16) + DKEY, DST_OP | DELETE, ts2=T0))[0] \
        == APPLIED
    rec = _rec(prog)
    assert rec is not None
    assert int(rec["ts2"]) == 0
    assert int(rec["c"]) == 0
    assert int(_read(prog, CKEY)["c_delta"]) == 7
    # a stale delete (a drop since the read) is refused
    assert prog.apply(entry(CKEY, FLOW_OP | DELETE, ts2=T0))[0] == RACED
    assert prog.apply(entry(CKEY, FLOW_OP | DELETE, ts2=T0 + S))[0] == APPLIED
    assert _rec(prog) is None  # both gone: the record with them



def test_a_closed_drops_key_with_a_source_reaches_no_record(prog: Prog) -> None:
    """A key with the closed-drops bit and a source (or a pad no key has) is
    no key of the program's: every operation on it is refused, and the
    destination's real closed-drops record is not reached through it."""
    assert prog.apply(entry(CKEY, FLOW_OP | CREATE, c_delta=5, ts1=T0, ts2=T0 + S))[0] \
        == APPLIED
    forged = KEY[:16] + CKEY[16:]
    odd = CKEY[:35] + bytes((4,))
    for key in (forged, odd):
        assert _read(prog, key) is None
        assert prog.apply(entry(key, FLOW_OP, c_delta=1000, ts2=T0 + S))[0] == MISSING
        assert prog.apply(entry(key, FLOW_OP | CREATE, c_delta=1000, ts1=T0,
                                ts2=T0 + S))[0] == MISSING
        assert prog.apply(entry(key, FLOW_OP | DELETE, ts2=T0 + S))[0] == MISSING
    assert int(_read(prog, CKEY)["c_delta"]) == 5
    assert len(prog.flows.lookup_batch()[0]) == 0


def test_a_closed_drops_record_removed_while_counted_restarts_its_window(prog: Prog) -> None:
    """A packet that counted into the record while the sync removed it in
    place leaves a window with no start; the next closed drop starts it
    (as a new record), so the destination's recompute never takes 0 for a
    window start.  The state is set as the race leaves it."""
    prog.cfg.view["t_f2"] = 1
    prog.cfg.view["t_t3"] = 0
    prog.cfg.view["t_t1"] = 100 * S
    prog.send(FR, T0)  # the aggregate: over T_F2 = 1/s at once
    spoofed = frame("11.0.0.1", "10.9.9.9")
    prog.send(spoofed, T0 + S // 10, repeat=3)
    rec = _rec(prog)
    assert rec is not None
    assert int(rec["cd"]["c"]) == 3
    raced = rec.copy()
    raced["cd"]["ts1"] = 0  # removed, then counted into by a packet
    raced["cd"]["gen"] = 0
    prog.dsts[DKEY] = raced
    prog.send(spoofed, T0 + S // 5)
    rec = _rec(prog)
    assert rec is not None
    assert int(rec["cd"]["ts1"]) == T0 + S // 5
    # its baseline went with it: the sync takes its whole count as new drops
    assert (int(rec["cd"]["gen"]), int(rec["cd"]["base_gen"]), int(rec["cd"]["base_c"])) \
        == (0, 0, 0)
