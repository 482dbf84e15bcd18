"""The userspace filter of the afxdp path agrees with the reference model.

The same generated traces as the kernel's differential tests
(``tests/kernel/test_differential.py``, reused by import) run through
:class:`xpro.datapath.afxdp.filter.UserFilter`: one packet at a time through the
kernel harness's own checker, and as whole batches (split at random points)
whose verdicts, counters, records and warnings must equal the model's packet
by packet.  A real :class:`xpro.sync.Syncer` runs over the userspace filter.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.contrib.coap import CoAP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.kernel.harness import SetKnown, Step, SyncRound, run_differential, set_known, sync_round
from tests.kernel.test_differential import (
    T0,
    _spoof8,
    _spray_trace,
    atomic_fragment_case,
    closure_traces,
    mapped_source_case,
    params,
    traces,
)
from tests.packets import arp_frame, frame
from xpro.core import layout as L
from xpro.core import model
from xpro.core.params import Sizes
from xpro.core.state import APPLIED, OP_CREATE, OP_FLOW, apply_entries
from xpro.datapath.afxdp.filter import UserFilter, parsed_destination_addr
from xpro.datapath.afxdp.parse import OK, mask_sources, pack_frames, parse_batch
from xpro.parsers.coap import parse_coap
from xpro.plugins import open_store
from xpro.sync import Syncer

pytestmark = pytest.mark.unit

S = model.NS_PER_S
MS = S // 1000
EXAMPLES = int(os.environ.get("XPRO_DIFF_EXAMPLES", "300"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _flow(v: Any) -> model.FlowRecord:
    return model.FlowRecord(ts1=int(v["ts1"]), ts2=int(v["ts2"]), c=int(v["c"]),
                            gen=int(v["gen"]), warn_ts=int(v["warn_ts"]))


def _event(ev: Any) -> model.Event:
    return model.Event(L.EventKind(int(ev["kind"])), bytes(np.asarray(ev["key"]).tobytes()),
                       int(ev["ts"]), int(ev["c"]), int(ev["window"]))


def _dst(v: Any) -> model.DstRecord:
    return model.DstRecord(ts1=int(v["ts1"]), ts2=int(v["ts2"]), c=int(v["c"]),
                           warn_ts=int(v["warn_ts"]), kc=int(v["kc"]))


class UserHarness:
    """A :class:`UserFilter` driven like the kernel harness's ``KernelFilter``
    (``xdp`` is the filter itself: the harness writes the known table and the
    sync rounds' aggregates through it, as through ``XdpFilter``)."""

    def __init__(self) -> None:
        self.f = UserFilter(model.FilterParams(),
                            sizes=Sizes(flows=4096, dsts=1024, known=1024))
        self.xdp = self.f
        self.events: list[model.Event] = []
        self.q = self.f.events(lambda ev: self.events.append(_event(ev)))

    def reset(self, p: model.FilterParams) -> None:
        self.f.clear()
        self.f.configure(p)
        self.q.consume()
        self.events.clear()

    def packet(self, fr: bytes, now: int) -> int:
        action, _ = self.f.process_frames([fr], now)
        self.q.consume()
        return int(action[0])

    def stat(self, reason: int) -> tuple[int, int]:
        c = self.f.counters()
        return int(c[reason, 0]), int(c[reason, 1])

    def all_stats(self) -> list[list[int]]:
        return [list(self.stat(r)) for r in range(L.N_REASONS)]

    def flow(self, key: bytes) -> model.FlowRecord | None:
        exists, recs = self.f.read(np.frombuffer(key, dtype=L.FLOW_KEY))
        return _flow(recs[0]) if exists[0] else None

    def all_flows(self) -> dict[bytes, model.FlowRecord]:
        keys, vals = self.f.read_flows()
        return {keys[i].tobytes(): _flow(vals[i]) for i in range(len(keys))}

    def dst(self, dkey: bytes) -> model.DstRecord | None:
        exists, recs = self.f.read_dsts_of(np.frombuffer(dkey, dtype=L.DST_KEY))
        return _dst(recs[0]) if exists[0] else None

    def all_dsts(self) -> dict[bytes, model.DstRecord]:
        keys, vals = self.f.read_dsts()
        return {keys[i].tobytes(): _dst(v) for i, v in enumerate(vals)}

    def all_known(self) -> dict[bytes, int]:
        keys, classes = self.f.read_known()
        return {keys[i].tobytes(): int(classes[i]) for i in range(len(keys))}


@pytest.fixture(scope="module")
def harness() -> UserHarness:
    return UserHarness()


@SETTINGS
@given(p=params(), trace=traces())
def test_packet_by_packet_agrees_with_model(harness: UserHarness, p: model.FilterParams,
                                           trace: list[tuple[bytes, int]]) -> None:
    run_differential(harness, p, trace)  # type: ignore[arg-type]


def test_an_atomic_fragment_is_judged_on_its_port(harness: UserHarness) -> None:
    """As in the kernel program (tests/kernel/test_differential.py)."""
    p, trace = atomic_fragment_case()
    run_differential(harness, p, trace)  # type: ignore[arg-type]


def test_an_ipv6_packet_from_a_mapped_address_is_not_allowed_by_an_ipv4_entry(
        harness: UserHarness) -> None:
    """As in the kernel program (tests/kernel/test_differential.py)."""
    p, trace = mapped_source_case()
    run_differential(harness, p, trace)  # type: ignore[arg-type]
    run_batches(harness, p, trace, [0, 1, 100, 450])  # several frames a batch too


@settings(SETTINGS, max_examples=max(1, EXAMPLES // 2))  # longer traces: half as many
@given(p=params(), trace=closure_traces())
def test_packet_by_packet_agrees_with_model_on_closed_destinations(
        harness: UserHarness, p: model.FilterParams, trace: list[Step]) -> None:
    """The kernel suite's closure traces (spoofed bursts, known and heavy sources
    written into the known table, sync rounds applied through ``apply``), one
    packet at a time."""
    run_differential(harness, p, trace)  # type: ignore[arg-type]


def run_batches(h: UserHarness, p: model.FilterParams, trace: Sequence[Step],
                cuts: list[int]) -> tuple[model.Filter, dict[bytes, list[L.Reason]]]:
    """Feed ``trace`` in batches split at ``cuts`` (and at each thing the daemon
    does: a known class written, a sync round applied); compare every verdict
    with the model's, and every record, counter and warning at each of those
    steps and at the end.  Returns the model and each frame's reasons."""
    h.reset(p)
    m = model.Filter(p)
    cut = {c % (len(trace) + 1) for c in cuts}
    actions: list[int] = []
    want: list[model.Verdict] = []
    reasons: dict[bytes, list[L.Reason]] = {}
    batch: list[tuple[bytes, int]] = []

    def flush() -> None:
        if batch:
            a, r = h.f.process_frames([fr for fr, _ in batch], np.array([t for _, t in batch]))
            for i, (fr, t) in enumerate(batch):
                w = m.packet(fr, t)
                assert (int(a[i]), int(r[i])) == (w.action, int(w.reason)), (
                    f"packet {len(want)} at t={t}: {fr.hex()} (a batch of {len(batch)})")
                want.append(w)
                reasons.setdefault(fr, []).append(w.reason)
            actions.extend(a.tolist())
            batch.clear()

    for i, st_ in enumerate(trace):
        if i in cut:
            flush()
        if isinstance(st_, SetKnown):
            flush()
            set_known(h, m, st_)  # type: ignore[arg-type]
        elif isinstance(st_, SyncRound):
            flush()
            sync_round(h, m, st_.now)  # type: ignore[arg-type]
            assert h.all_dsts() == m.dsts, f"step {i}: sync round at {st_.now}"
        else:
            if batch and st_[1] < batch[-1][1]:  # the clock was stepped back: a batch
                flush()                           # is stamped once, time never goes back in it
            batch.append(st_)
    flush()
    h.q.consume()
    assert h.all_stats() == m.stats
    assert h.all_flows() == m.flows
    assert h.all_dsts() == m.dsts
    assert h.all_known() == m.known
    assert h.events == m.events
    return m, reasons


@SETTINGS
@given(p=params(), trace=traces(), cuts=st.lists(st.integers(0, 80), max_size=4))
def test_batches_agree_with_model(harness: UserHarness, p: model.FilterParams,
                                  trace: list[tuple[bytes, int]], cuts: list[int]) -> None:
    run_batches(harness, p, trace, cuts)


@SETTINGS
@given(p=params(), trace=traces())
def test_parse_and_source_prefix_agree_with_model(p: model.FilterParams,
                                                 trace: list[tuple[bytes, int]]) -> None:
    """The batch parser gives the model's status, key and family for every frame
    (a third VLAN tag is malformed), and :func:`mask_sources` the model's flow key."""
    frames = [fr for fr, _ in trace]
    b = parse_batch(*pack_frames(frames), p.dst_mode)
    want = [model.parse(fr, p.dst_mode) for fr in frames]
    assert b.status.tolist() == [w.status.value for w in want]
    ok = b.status == OK
    assert [bytes(k.tobytes()) for k in b.keys[ok]] == [w.key for w in want if w.key]
    assert b.ipv6[ok].tolist() == [w.ipv6 for w in want if w.key]
    mask_sources(b, ok, p.source_prefix_v4, p.source_prefix_v6)
    assert [bytes(k.tobytes()) for k in b.keys[ok]] == [
        model.flow_key(w, p) for w in want if w.key]


@SETTINGS
@given(p=params(), trace=closure_traces(), cuts=st.lists(st.integers(0, 200), max_size=4),
       stamp=st.booleans())
def test_batches_agree_with_model_on_closed_destinations(
        harness: UserHarness, p: model.FilterParams, trace: list[Step], cuts: list[int],
        stamp: bool) -> None:
    """Closure traces in batches: a destination closes, reopens, serves its known
    clients inside one batch.  With ``stamp`` every batch gets one time, as the
    data path stamps it (the trace's times, moved to each batch's last)."""
    if stamp:
        trace = _stamped(trace, cuts)
    run_batches(harness, p, trace, cuts)


def _stamped(trace: Sequence[Step], cuts: list[int]) -> list[Step]:
    """``trace`` with every packet of a batch (as :func:`run_batches` splits it at
    ``cuts``) stamped with the batch's last time."""
    cut = {c % (len(trace) + 1) for c in cuts}
    out: list[Step] = []
    batch: list[bytes] = []
    t = 0

    def flush() -> None:
        out.extend((fr, t) for fr in batch)
        batch.clear()

    for i, st_ in enumerate(trace):
        if i in cut or not isinstance(st_, tuple):
            flush()
        if isinstance(st_, tuple):
            batch.append(st_[0])
            t = st_[1]
        else:
            out.append(st_)
    flush()
    return out


def test_heavy_flood_in_large_batches(harness: UserHarness) -> None:
    """The kernel suite's dense trace, in batches of 1000: flood, legitimate, many small."""
    p = model.FilterParams(t_f1=100, t_t2=S, t_f2=2000, t_t3=S, t_t1=2 * S, warn_period=S // 3)
    trace = []
    bot = frame("10.0.0.66", "10.9.9.9")
    legit = frame("2001:db8::7", "2001:db8:9::9", proto="tcp", dport=443)
    small = [frame(f"10.1.{i // 200}.{i % 200 + 1}", "10.9.9.9") for i in range(600)]
    for i in range(6000):
        t = T0 + i * S // 2000
        trace.append((bot, t))
        trace.append((small[i % 600], t))
        if i % 50 == 0:
            trace.append((legit, t))
    run_batches(harness, p, trace, list(range(0, len(trace), 1000)))


def test_same_time_batch_as_the_data_path_stamps_it(harness: UserHarness) -> None:
    """One timestamp for a whole batch (what the RX loop does) still agrees."""
    p = model.FilterParams(t_f1=10, t_t2=0, t_t1=S, t_t3=0, t_f2=50)
    frames = [frame(f"10.0.{i % 7}.1", f"10.9.9.{i % 3}") for i in range(500)]
    trace = [(fr, T0 + (i // 100) * S // 10) for i, fr in enumerate(frames)]
    run_batches(harness, p, trace, [100, 200, 300, 400])


def test_spoofed_flood_to_a_closed_destination_in_stamped_batches(harness: UserHarness) -> None:
    """The kernel suite's spoofed flood, in batches of 256 stamped with one time
    each (as the data path stamps them): the destination closes inside a
    batch; then no flow record is made for the flood but its closed-drops
    record, a known client keeps passing, every other source is DST_CLOSED."""
    p = model.FilterParams(t_f1=10**6, t_t2=S, t_f2=1000, t_t3=100 * MS, t_t1=2 * S)
    client = frame("192.0.2.7", "10.9.9.9")
    trace: list[Step] = [SetKnown(client, L.Known.CLIENT), (client, T0)]
    trace += [(_spoof8(i), T0 + i * S // 2000) for i in range(1, 400)]
    late = [_spoof8(1000 + i) for i in range(5000)]
    t1 = T0 + 200 * MS
    for i, fr in enumerate(late):
        trace.append((fr, t1 + i * S // 5000))
        if i % 500 == 0:
            trace.append((client, t1 + i * S // 5000))
    cuts = list(range(2, len(trace), 256))
    trace = _stamped(trace, cuts)
    _, reasons = run_batches(harness, p, trace, cuts)
    assert set(reasons[client]) == {L.Reason.PASS}
    assert {r for fr in late for r in reasons[fr]} == {L.Reason.DST_CLOSED}
    flows = harness.all_flows()
    assert not {model.parse(fr, 0).key for fr in late} & flows.keys()
    drops = flows[model.closed_key(model.parse(client, 0).dst)]
    assert drops.c == harness.stat(L.Reason.DST_CLOSED)[0] >= 5000


def test_known_and_heavy_sources_of_a_closed_destination_in_batches(
        harness: UserHarness) -> None:
    """Known clients served until their own total is over T_F2 (kc), a heavy
    source never served (DST_CLOSED under T_F1, SRC_RATE over it), a sync round
    writing kc in the middle, in batches of 64 with one time each."""
    p = model.FilterParams(t_f1=200, t_t2=200 * MS, t_f2=100, t_t3=100 * MS, t_t1=2 * S)
    clients = [frame(f"192.0.2.{i}", "10.9.9.9") for i in range(1, 5)]  # 125 pps each
    heavy = frame("192.0.2.9", "10.9.9.9")  # 500 pps
    trace: list[Step] = [SetKnown(c, L.Known.CLIENT) for c in clients]
    trace.append(SetKnown(heavy, L.Known.HEAVY))
    trace += [(_spoof8(i), T0 + i * MS) for i in range(300)]  # 1000 pps: closed at 0.1 s
    t = T0 + 300 * MS
    for i in range(800):
        t += MS
        trace.append((clients[i // 2 % 4] if i % 2 else heavy, t))
        if i == 400:
            trace.append(SyncRound(t))
    cuts = list(range(0, len(trace), 64))
    trace = _stamped(trace, cuts)
    m, reasons = run_batches(harness, p, trace, cuts)
    served = [r for c in clients for r in reasons[c]]
    assert {L.Reason.PASS, L.Reason.DST_RATE} <= set(served)
    assert set(reasons[heavy]) == {L.Reason.DST_CLOSED, L.Reason.SRC_RATE}
    d = m.dsts[model.parse(heavy, 0).dst]
    assert d.kc > 0


def test_known_table_set_drop_read_and_full() -> None:
    """Like the kernel's plain hash: the last class of a key given twice wins, a
    full table takes what fits and raises, nothing is evicted."""
    from xpro.errors import DatapathError

    f = UserFilter(model.FilterParams(), sizes=Sizes(known=4))
    keys = np.zeros(6, dtype=L.FLOW_KEY)
    keys["src"] = [L.addr16(f"10.0.0.{i}") for i in range(6)]
    keys["dst"]["addr"] = L.addr16("10.9.9.9")
    f.set_known(keys[:2], L.Known.CLIENT)
    f.set_known(keys[[1, 2, 1]], np.array([L.Known.CLIENT, L.Known.HEAVY, L.Known.HEAVY]))
    got, cls = f.read_known()
    assert dict(zip((k.tobytes() for k in got), cls.tolist(), strict=True)) == {
        keys[0].tobytes(): L.Known.CLIENT, keys[1].tobytes(): L.Known.HEAVY,
        keys[2].tobytes(): L.Known.HEAVY}
    with pytest.raises(DatapathError, match="full"):
        f.set_known(keys[3:], L.Known.CLIENT)
    assert len(f.read_known()[0]) == 4
    assert f.drop_known(keys[[0, 0, 5]]) == 1
    assert len(f.read_known()[0]) == 3


def test_table_grows_and_evicts_least_recently_used() -> None:
    f = UserFilter(model.FilterParams(t_f1=10**6, t_f2=2**32 - 1), sizes=Sizes(flows=3000))
    frames = [frame(f"10.{i >> 8 & 255}.{i & 255}.1", "10.9.9.9") for i in range(5000)]
    for lo in range(0, 5000, 500):
        f.process_frames(frames[lo : lo + 500], T0 + lo)
    keys, vals = f.read_flows()
    assert len(keys) == 3000
    assert int(vals["ts2"].min()) == T0 + 2000  # the oldest 2000 went first
    exists, _ = f.read(keys)
    assert exists.all()


def _flow_frames(first: int, n: int) -> list[bytes]:
    return [bytes(Ether() / IP(src=f"10.{i >> 8 & 255}.{i & 255}.1", dst="10.9.9.9") / UDP())
            for i in range(first, first + n)]


def test_dirty_marks_survive_the_table_growing() -> None:
    """A batch that grows the table (moving every record) still marks every flow
    it touched dirty in the running epoch."""
    f = UserFilter(model.FilterParams())
    f.next_epoch()  # epoch 1
    f.process_frames(_flow_frames(0, 500), T0)
    assert len(f.take_dirty(f.next_epoch())) == 500  # epoch 1 ended, 2 runs
    f.process_frames(_flow_frames(0, 600), T0 + 1000)  # 500 known + 100 new: it grows
    assert len(f.take_dirty(2)) == 600


def test_apply_across_the_table_growing() -> None:
    """One apply batch that creates records (growing the table) and updates
    others: every update lands on its own record."""
    f = UserFilter(model.FilterParams())
    f.process_frames(_flow_frames(0, 500), T0)
    known, vals = f.read_flows()
    fresh = np.zeros(100, dtype=L.FLOW_KEY)
    fresh["src"] = [L.addr16(f"10.200.{i}.1") for i in range(100)]
    fresh["dst"]["addr"] = L.addr16("10.9.9.9")
    e = np.concatenate([
        apply_entries(known, OP_FLOW, gen=vals["gen"], c_delta=7, base_c=7),
        apply_entries(fresh, OP_FLOW | OP_CREATE, c_delta=3, ts1=T0, ts2=T0, base_c=3),
    ])
    assert (f.apply(e) == APPLIED).all()
    exists, after = f.read(known)
    assert exists.all()
    assert (after["c"] == vals["c"] + 7).all()
    exists, made = f.read(fresh)
    assert exists.all()
    assert (made["c"] == 3).all()
    assert len(f.read_flows()[0]) == 600


class _CountingLock:
    """A lock that records how many APPLY entries each taking of it covered."""

    def __init__(self, f: UserFilter) -> None:
        self._lock = f.lock
        self.takes = 0

    def __enter__(self) -> None:
        self._lock.acquire()
        self.takes += 1

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_a_large_apply_takes_the_lock_per_chunk_with_the_same_results(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync batch does not hold the data path's lock for its whole length,
    and chunking changes nothing: a key repeated across a chunk boundary still
    sees the earlier operation first."""
    import xpro.datapath.afxdp.filter as filt

    cut = filt.APPLY_CHUNK
    n = 3 * cut + 100
    keys = np.zeros(n, dtype=L.FLOW_KEY)
    keys["src"] = [L.addr16(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}") for i in range(n)]
    keys["dst"]["addr"] = L.addr16("10.9.9.9")
    keys[cut] = keys[cut - 1]  # create, then update, across the cut
    e = apply_entries(keys, OP_FLOW | OP_CREATE, c_delta=2, ts1=T0, ts2=T0, base_c=2)

    results = {}
    for chunk in (cut, 10 * n):
        monkeypatch.setattr(filt, "APPLY_CHUNK", chunk)
        f = UserFilter(model.FilterParams(), sizes=Sizes(flows=1 << 16, dsts=1024))
        lock = _CountingLock(f)
        f.lock = lock  # type: ignore[assignment]
        res = f.apply(e)
        exists, recs = f.read(keys)
        assert exists.all()
        results[chunk] = (res.tobytes(), recs.tobytes())
        assert lock.takes == (2 * -(-n // chunk))  # apply, then read, chunk by chunk
    assert len(set(results.values())) == 1
    recs = np.frombuffer(results[cut][1], dtype=L.FLOW)
    assert recs["c"][cut] == recs["c"][cut - 1] == 4  # created with 2, then 2 added


def test_parsed_destination_keys_the_flow() -> None:
    """A packet a destination parser recognises is keyed on the destination it names."""
    def parser(payload: bytes) -> str | None:
        return payload.decode() if payload.startswith(b"svc") else None

    parser.udp_ports = {5683}  # type: ignore[attr-defined]
    f = UserFilter(model.FilterParams(), parsers=[parser])
    named = bytes(Ether() / IP(src="10.0.0.1", dst="10.9.9.9") / UDP(dport=5683) / b"svc-a")
    other = bytes(Ether() / IP(src="10.0.0.1", dst="10.9.9.9") / UDP(dport=53) / b"svc-a")
    f.process_frames([named, other], T0)
    keys, _ = f.read_flows()
    dsts = sorted(bytes(k["dst"]["addr"]).ljust(16, b"\0") for k in keys)
    assert dsts == sorted([parsed_destination_addr("svc-a"), L.addr16("10.9.9.9")])


def _udp(payload: bytes) -> bytes:
    return bytes(Ether() / IP(src="10.0.0.1", dst="10.9.9.9") / UDP(dport=5683) / payload)


def _dst_addrs(f: UserFilter) -> dict[int, bytes]:
    """Each flow's destination address, by the flow's packet count (one source here)."""
    keys, vals = f.read_flows()
    return {int(v["c"]): bytes(k["dst"]["addr"]).ljust(16, b"\0")
            for k, v in zip(keys, vals, strict=True)}


def test_parsers_take_turns_and_a_failing_one_is_skipped() -> None:
    """The first parser that names a destination wins; one that raises names none,
    and the packet goes on to the next parser, or keeps its IP destination."""
    def boom(payload: bytes) -> str | None:
        if payload == b"boom":
            raise ValueError("a broken parser")
        return "first" if payload.startswith(b"a") else None

    def second(payload: bytes) -> str | None:
        return "second" if payload in (b"ab", b"b") else None

    f = UserFilter(model.FilterParams(), parsers=[boom, second])
    # 1 packet "ab" (both recognise it), 2 "b", 3 "boom", 4 "zzz": counts tell them apart
    frames = ([_udp(b"ab")] + [_udp(b"b")] * 2 + [_udp(b"boom")] * 3 + [_udp(b"zzz")] * 4)
    f.process_frames(frames, T0)
    assert _dst_addrs(f) == {1: parsed_destination_addr("first"),
                             2: parsed_destination_addr("second"),
                             7: L.addr16("10.9.9.9")}


def test_many_destination_names_are_all_keyed_right() -> None:
    """More names than the filter remembers: every packet still gets its own name's key."""
    from xpro.datapath.afxdp import filter as filt

    names = [f"svc{i}.example" for i in range(filt._DEST_CACHE + 50)]
    f = UserFilter(model.FilterParams(), sizes=Sizes(flows=1 << 14, dsts=1 << 14),
                   parsers=[lambda payload: payload.decode()])
    for start in range(0, len(names), 1000):
        f.process_frames([_udp(n.encode()) for n in names[start:start + 1000]], T0)
    keys, _ = f.read_dsts()
    got = sorted(bytes(k["addr"]).ljust(16, b"\0") for k in keys)
    assert got == sorted(parsed_destination_addr(n) for n in names)
    assert len(f._dest_addrs) <= filt._DEST_CACHE


def test_coap_parser_keys_requests_by_their_target() -> None:
    """Through the real CoAP parser: two targets behind one proxy address, two records."""
    f = UserFilter(model.FilterParams(), parsers=[parse_coap],
                   names={parse_coap: ["a.example", "B.Example."]})
    frames = [bytes(Ether() / IP(src="10.0.0.1", dst="10.9.9.9") / UDP(dport=5683)
                    / CoAP(type=0, code=1, msg_id=i, options=[("Uri-Host", host)]))
              for i, host in enumerate([b"a.example", b"b.example", b"a.example"])]
    frames.append(arp_frame())  # not even IP: passes, as the kernel does
    f.process_frames(frames, T0)
    _, dsts = f.read_dsts()
    keys, _ = f.read_dsts()
    got = {bytes(k["addr"]).ljust(16, b"\0"): int(d["c"]) for k, d in zip(keys, dsts, strict=True)}
    assert got == {parsed_destination_addr("a.example"): 2, parsed_destination_addr("b.example"): 1}


def test_syncer_runs_unchanged_over_the_userspace_filter() -> None:
    """Two userspace proxies, one memory:// master: a flow seen by both merges."""
    url = f"memory://{uuid.uuid4().hex}"
    sync_params = model.SyncParams(t_t1=100 * S, t_t4=1000 * S, r_q=2 * model.R_DEN)
    p = model.FilterParams(t_t1=100 * S, t_t2=S, t_f1=100, t_t3=S, t_f2=10**6)
    a, b = UserFilter(p), UserFilter(p)
    sa = Syncer(a, open_store(url), "a", sync_params)
    sb = Syncer(b, open_store(url), "b", sync_params)
    bot = frame("10.0.0.66", "10.9.9.9")
    a.process_frames([bot] * 30, T0)
    b.process_frames([bot] * 20, T0 + 1000)
    sa.round(T0 + S)
    sb.round(T0 + S)
    sa.round(T0 + S + 1)
    key = model.parse(bot, 0).key
    for f in (a, b):
        exists, rec = f.read(np.frombuffer(key, dtype=L.FLOW_KEY))
        assert exists[0]
        assert int(rec[0]["c"]) == 50
    _, dsts = b.read_dsts()
    assert [int(d["c"]) for d in dsts] == [50]
    # Sixty packets a second at each of four proxies: caught only together.
    more = [UserFilter(p) for _ in range(2)]
    syncers = [sa, sb] + [Syncer(f, open_store(url), f"p{i}", sync_params)
                          for i, f in enumerate(more)]
    filters = [a, b, *more]
    src = frame("10.0.0.77", "10.9.9.9")
    verdicts: list[int] = []
    for second in range(4):
        for i in range(60):
            for f in filters:
                verdicts += f.process_frames([src], T0 + 10 * S + second * S + i * S // 60
                                             )[0].tolist()
        for s in syncers:
            s.round(T0 + 10 * S + (second + 1) * S)
    assert verdicts[:240] == [L.XDP_PASS] * 240
    assert verdicts[-240:] == [L.XDP_DROP] * 240


def test_backend_options_are_checked_before_anything_is_loaded() -> None:
    from xpro.backends.afxdp import AfxdpBackend
    from xpro.errors import ConfigError

    b = AfxdpBackend(params=model.FilterParams(), options={"parsers": ["no-such-parser"]})
    with pytest.raises(ConfigError, match="no-such-parser"):
        b.load()
    b = AfxdpBackend(params=model.FilterParams(), options={"parsers": [parse_coap]})
    with pytest.raises(ConfigError, match="coap_names"):  # the parser keys only listed names
        b.load()
    b = AfxdpBackend(params=model.FilterParams(), options={"parsers": [parse_coap],
                                                           "coap_names": ["a b"]})
    with pytest.raises(ConfigError, match=r"afxdp\.coap_names: 'a b' is not a destination"):
        b.load()
    b = AfxdpBackend(params=model.FilterParams(), options={"parsers": [parse_coap],
                                                           "coap_names": ["svc.example"]})
    assert b.load().parsers == [parse_coap]
    with pytest.raises(ConfigError, match="egress"):
        b.attach("eth0")
    b.close()


# --- evasions: a flood that spells or invents destination names ----------------------

def _addr(a: Any) -> bytes:
    """A 16-byte address field (numpy drops trailing zero bytes of ``S16``)."""
    return bytes(a).ljust(16, b"\0")


COAP_PARAMS = model.FilterParams(t_f1=100, t_t2=S // 2, t_t1=10 * S, t_f2=10**6, t_t3=S)


def _coap_request(src: str, target: list[tuple[str, bytes]], i: int) -> bytes:
    return bytes(Ether() / IP(src=src, dst="10.9.9.9") / UDP(sport=40000, dport=5683)
                 / CoAP(type=0, code=1, msg_id=i & 0xFFFF, token=i.to_bytes(4, "big"),
                        options=target))


def _spray(f: UserFilter, targets: list[list[tuple[str, bytes]]], *, src: str = "10.0.0.66",
           rate: int = 1000, seconds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """One source cycling through ``targets`` at ``rate`` requests a second, in batches
    of 100 (a tenth of a second each); returns every verdict's action and reason."""
    n = rate * seconds
    frames = [_coap_request(src, targets[i % len(targets)], i) for i in range(n)]
    actions, reasons = [], []
    for lo in range(0, n, 100):
        a, r = f.process_frames(frames[lo:lo + 100], T0 + lo * S // rate)
        actions.append(a)
        reasons.append(r)
    return np.concatenate(actions), np.concatenate(reasons)


def _names_parser(payload: bytes) -> str | None:
    """parse_coap without its list: keys every name it is given (the evasion)."""
    return parse_coap(payload)


_names_parser.udp_ports = {5683}  # type: ignore[attr-defined]


@pytest.mark.parametrize("listed", [pytest.param(True, id="names-listed"),
                                    pytest.param(False, id="every-name-keyed")])
def test_a_spray_over_invented_names_is_one_flow(listed: bool) -> None:
    """One source cycling through 100 invented target names, 1000 requests a second.

    With the operator's list, every name it does not list keys on the IP
    destination: the spray is one flow, over T_F1 once its window passes T_T2,
    and dropped by the per-source rule.  The control keys every name (what the
    parser did before): 100 flows of 10 requests a second, each under T_F1,
    none dropped.
    """
    names = [[("Uri-Host", f"bot{i}.invented.example".encode())] for i in range(100)]
    if listed:
        f = UserFilter(COAP_PARAMS, parsers=[parse_coap],
                       names={parse_coap: ["victim.example"]})
    else:
        f = UserFilter(COAP_PARAMS, parsers=[_names_parser])
    action, reason = _spray(f, names)
    keys, vals = f.read_flows()
    if listed:
        assert len(keys) == 1
        assert _addr(keys[0]["dst"]["addr"]) == L.addr16("10.9.9.9")
        assert int(vals[0]["c"]) == 2000
        # judged after T_T2 (0.5 s), then over T_F1: dropped but for the first half second
        assert (reason[:500] == L.Reason.PASS).all()
        assert (reason[600:] == L.Reason.SRC_RATE).all()
        assert (action[600:] == L.XDP_DROP).all()
    else:
        assert len(keys) == 100
        assert (reason == L.Reason.PASS).all()


def test_a_spray_over_the_spellings_of_a_listed_name_is_one_flow() -> None:
    """100 spellings of the one listed target (case, trailing dot, default port,
    percent-encoding, Proxy-Uri or Uri-Host, full width) from one source: one flow
    and one destination keyed on the target's name, cut by the per-source rule."""
    base = "victim.example"
    spellings: list[list[tuple[str, bytes]]] = []
    for i in range(100):
        host = "".join(c.upper() if (i >> (k % 7)) & 1 else c for k, c in enumerate(base))
        if i % 3 == 0:
            host = host.replace("i", "%69", 1)
        if i % 5 == 0:
            host = host.replace("t", "\uff54")  # full-width t
        if i % 2:
            host += "."
        if i % 4 < 2:
            port = ":5683" if i % 8 < 4 else ""
            spellings.append([("Proxy-Uri", f"coap://{host}{port}/p{i}".encode())])
        else:
            opts = [("Uri-Host", host.encode())]
            if i % 8 < 4:
                opts.append(("Uri-Port", b"\x16\x33"))
            spellings.append(opts)
    assert len({tuple(s) for s in spellings}) > 50
    f = UserFilter(COAP_PARAMS, parsers=[parse_coap], names={parse_coap: ["Victim.Example."]})
    _, reason = _spray(f, spellings)
    keys, vals = f.read_flows()
    assert [_addr(k["dst"]["addr"]) for k in keys] == [parsed_destination_addr(base)]
    assert int(vals[0]["c"]) == 2000
    assert (reason[600:] == L.Reason.SRC_RATE).all()
    dkeys, _ = f.read_dsts()
    assert [_addr(k["addr"]) for k in dkeys] == [parsed_destination_addr(base)]


def test_names_change_live_and_a_bad_list_changes_nothing() -> None:
    target = [("Uri-Host", b"b.example")]
    f = UserFilter(COAP_PARAMS, parsers=[parse_coap], names={parse_coap: ["a.example"]})
    f.process_frames([_coap_request("10.0.0.1", target, 0)], T0)
    f.set_names({parse_coap: ["a.example", "b.example:5683"]})
    f.process_frames([_coap_request("10.0.0.1", target, 1)], T0 + 1)
    keys, _ = f.read_flows()
    assert sorted(_addr(k["dst"]["addr"]) for k in keys) == sorted(
        [L.addr16("10.9.9.9"), parsed_destination_addr("b.example")])
    with pytest.raises(ValueError, match="'not a name' is not a destination"):
        f.set_names({parse_coap: ["c.example", "not a name"]})
    with pytest.raises(ValueError, match="keys only the destinations it is given"):
        f.set_names({})
    f.process_frames([_coap_request("10.0.0.1", target, 2)], T0 + 2)
    _, vals = f.read_flows()
    assert sorted(int(v["c"]) for v in vals) == [1, 2]  # b.example still keyed apart
    with pytest.raises(ValueError, match="keys only the destinations it is given"):
        UserFilter(COAP_PARAMS, parsers=[parse_coap])


def test_backend_takes_the_names_live() -> None:
    from xpro.backends.afxdp import AfxdpBackend
    from xpro.errors import ConfigError

    b = AfxdpBackend(params=COAP_PARAMS, options={"parsers": [parse_coap],
                                                  "coap_names": ["a.example"]})
    f = b.load()
    b.reconfigure({"coap_names": ["b.example"], "parsers": ["coap"], "xdp_mode": "native"})
    assert b.options["parsers"] == [parse_coap]  # only the names are live
    f.process_frames([_coap_request("10.0.0.1", [("Uri-Host", b"B.example")], 0)], T0)
    keys, _ = f.read_flows()
    assert [_addr(k["dst"]["addr"]) for k in keys] == [parsed_destination_addr("b.example")]
    with pytest.raises(ConfigError, match=r"afxdp\.coap_names"):
        b.reconfigure({"coap_names": ["bad name"]})
    assert b.options["coap_names"] == ["b.example"]
    b.close()


@pytest.mark.parametrize("backend", ["afxdp", "auto"])
def test_a_reload_gives_the_filter_the_new_names(backend: str) -> None:
    """Proxy.reconfigure hands afxdp.coap_names to the running backend (a live key),
    also when the same file changes the backend, which takes a restart: until
    then the running one takes the live keys (its options once came back
    empty, and the names were reported applied and were not)."""
    from xpro.backends.afxdp import AfxdpBackend
    from xpro.config import load_config
    from xpro.daemon.proxy import Proxy

    base = {"afxdp.parsers": "coap", "afxdp.egress": "eth9"}
    old = load_config(None, env={}, overrides={**base, "proxy.backend": "afxdp",
                                               "afxdp.coap_names": "a.example"})
    new = load_config(None, env={}, overrides={**base, "proxy.backend": backend,
                                               "afxdp.coap_names": "a.example,B.Example."})
    proxy = Proxy(old)
    proxy.backend = AfxdpBackend(params=old.filter_params(),
                                 options={**old.backend_options(), "parsers": [parse_coap]})
    f = proxy.backend.load()
    changes = proxy.reconfigure(new)
    assert [(c.key, c.live) for c in changes if c.live] == [("afxdp.coap_names", True)]
    assert proxy.config.proxy.backend == "afxdp"
    assert proxy.config.afxdp.coap_names == ("a.example", "b.example")
    f.process_frames([_coap_request("10.0.0.1", [("Uri-Host", b"b.example")], 0)], T0)
    keys, _ = f.read_flows()
    assert [_addr(k["dst"]["addr"]) for k in keys] == [parsed_destination_addr("b.example")]
    proxy.backend.close()


@pytest.mark.parametrize("batch", [1, 64, 1000])
@pytest.mark.parametrize("stamp", [False, True])
def test_spray_over_ports_in_batches(harness: UserHarness, batch: int, stamp: bool) -> None:
    """addr+port: the kernel suite's spray over the ports of one address, with a
    known client of the address and a client of another, in batches (and with
    one time per batch): the address closes inside a batch as the model's does,
    and the table's records and closed-drops records agree."""
    p = model.FilterParams(t_f1=10**6, t_t2=S, t_f2=1000, t_t3=200 * MS, t_t1=2 * S,
                           dst_mode=1, warn_period=S // 4)
    client = frame("192.0.2.7", "10.9.9.9", dport=9000)
    other = frame("192.0.2.8", "10.9.9.10", dport=9000)
    trace = _spray_trace(client, other)
    cuts = list(range(0, len(trace), batch))
    if stamp:
        trace = _stamped(trace, cuts)
    _, reasons = run_batches(harness, p, trace, cuts)
    assert L.Reason.DST_CLOSED in {r for rs in reasons.values() for r in rs}
    assert set(reasons[client]) == {L.Reason.PASS}


def test_the_epoch_after_the_last_uses_the_other_dirty_set() -> None:
    """2**32 - 1 and 1 are both odd: the wrap goes to 2, so two epochs in a row
    never share a dirty set (one round's take would empty the next's marks)."""
    f = UserFilter(model.FilterParams())
    f._epoch = 0xFFFFFFFF
    assert f.next_epoch() == 0xFFFFFFFF
    assert f.epoch == 2
