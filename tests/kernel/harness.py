"""The kernel program behind the same interface as :class:`xpro.core.model.Filter`.

Differential tests feed one trace to both and compare, packet by packet, the
verdict, the counter of the reason, the flow record, the destination's
aggregate and closed-drops record, and the warnings; at the end of the
trace, every map.  The kernel runs with the fake clock (``cfg.fake_now``)
through ``BPF_PROG_TEST_RUN``.  Besides packets, a trace holds what the
daemon does between packets: known-client classes written to both
(:class:`SetKnown`) and sync rounds that write the model's exact aggregates
to both (:class:`SyncRound`, the kernel's through the control program).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from xpro.bpf import RingBuffer
from xpro.core import layout as L
from xpro.core import model
from xpro.core.params import Sizes
from xpro.core.state import APPLIED, OP_CREATE, OP_DST, apply_entries
from xpro.datapath.xdp import XdpFilter


@dataclass(frozen=True)
class SetKnown:
    """The daemon classes the flow of ``frame`` (``cls``: a ``Known``, or 0 to remove it);
    ``address``: its source for the address aggregate of its destination
    (``addr+port`` mode, :func:`model.address_key`) instead."""

    frame: bytes
    cls: int
    address: bool = False


@dataclass(frozen=True)
class SyncRound:
    """A sync round at ``now``: each destination's aggregate set to
    :func:`model.recompute_dst` of the model's records."""

    now: int


#: One step of a trace: a packet ``(frame, now)``, or what the daemon does.
Step = tuple[bytes, int] | SetKnown | SyncRound


class KernelFilter:
    """One loaded xpro program (:class:`xpro.datapath.xdp.XdpFilter`), driven like a
    :class:`model.Filter`."""

    def __init__(self, program: str = "xpro_xdp", flows_max: int = 4096) -> None:
        self.xdp = XdpFilter(model.FilterParams(), program=program,
                             sizes=Sizes(flows=flows_max, dsts=1024, prefixes=64, known=1024))
        self.prog = self.xdp.program
        self.cfg = self.xdp.cfg
        self.flows = self.xdp.flows
        self.dsts = self.xdp.dsts
        self.stats = self.xdp.stats
        self.events: list[model.Event] = []
        self.ring = RingBuffer(self.xdp.obj.maps["events"], self._on_event, dtype=L.EVENT)
        self._zero_stat = np.zeros(self._ncpus(), dtype=L.STAT)

    def _ncpus(self) -> int:
        return int(np.asarray(self.stats[np.uint32(0)]).shape[0])

    def _on_event(self, ev: Any) -> None:
        key = bytes(np.asarray(ev["key"]).tobytes())
        self.events.append(
            model.Event(L.EventKind(int(ev["kind"])), key, int(ev["ts"]), int(ev["c"]),
                        int(ev["window"]))
        )

    def close(self) -> None:
        self.ring.close()
        self.xdp.close()

    def reset(self, params: model.FilterParams) -> None:
        """Empty every map and install ``params`` (as the daemon would)."""
        self.flows.clear()
        self.dsts.clear()
        self.xdp.clear_known()
        for i in range(L.N_REASONS):
            self.stats[np.uint32(i)] = self._zero_stat
        self.ring.consume()
        self.events.clear()
        self.xdp.configure(params, clock_offset=0)
        self.xdp.set_clock(1)

    def packet(self, frame: bytes, now: int) -> int:
        self.cfg.view["fake_now"] = now
        rv = self.prog.test_run(frame, data_out=False).retval
        self.ring.consume()
        return int(rv)

    # --- reading state back as model records --------------------------------

    @staticmethod
    def _flow_record(v: Any) -> model.FlowRecord:
        return model.FlowRecord(ts1=int(v["ts1"]), ts2=int(v["ts2"]), c=int(v["c"]),
                                gen=int(v["gen"]), warn_ts=int(v["warn_ts"]))

    def flow(self, key: bytes) -> model.FlowRecord | None:
        """The record of a flow key, a closed-drops record's too (kept in its
        destination's record)."""
        if model.is_closed_key(key):
            v = self.dsts.get(model.aggregates_of(key, 0)[0])
            if v is None or not int(v["cd"]["ts2"]):
                return None
            return self._flow_record(v["cd"])
        v = self.flows.get(key)
        return None if v is None else self._flow_record(v)

    def all_flows(self) -> dict[bytes, model.FlowRecord]:
        keys, vals = self.xdp.read_flows()
        return {keys[i].tobytes(): self._flow_record(vals[i]) for i in range(len(keys))}

    @staticmethod
    def _dst_record(v: Any) -> model.DstRecord:
        return model.DstRecord(ts1=int(v["ts1"]), ts2=int(v["ts2"]), c=int(v["c"]),
                               warn_ts=int(v["warn_ts"]), kc=int(v["kc"]))

    def dst(self, dkey: bytes) -> model.DstRecord | None:
        v = self.dsts.get(dkey)
        return None if v is None or not int(v["ts2"]) else self._dst_record(v)

    def all_dsts(self) -> dict[bytes, model.DstRecord]:
        keys, vals = self.xdp.read_dsts()
        return {keys[i].tobytes(): self._dst_record(vals[i]) for i in range(len(keys))}

    def all_known(self) -> dict[bytes, int]:
        keys, classes = self.xdp.read_known()
        return {keys[i].tobytes(): int(classes[i]) for i in range(len(keys))}

    def stat(self, reason: int) -> tuple[int, int]:
        per_cpu = np.asarray(self.stats[np.uint32(reason)])
        return int(per_cpu["packets"].sum()), int(per_cpu["bytes"].sum())

    def all_stats(self) -> list[list[int]]:
        return [list(self.stat(r)) for r in range(L.N_REASONS)]


@contextmanager
def kernel_filter(**kw: Any) -> Iterator[KernelFilter]:
    k = KernelFilter(**kw)
    try:
        yield k
    finally:
        k.close()


def set_known(k: KernelFilter, m: model.Filter, step: SetKnown) -> None:
    """Write (or remove) a known-client class in both, as the daemon would."""
    parsed = model.parse(step.frame, m.params.dst_mode)
    if parsed.status is not model.ParseStatus.OK:
        return
    fk = model.flow_key(parsed, m.params)  # the daemon classes flows, by their keys
    if step.address:
        fk = fk[:16] + model.address_key(fk[16:])
    key = np.frombuffer(fk, dtype=L.FLOW_KEY)
    if step.cls:
        m.known[fk] = step.cls
        k.xdp.set_known(key, step.cls)
    else:
        m.known.pop(fk, None)
        k.xdp.drop_known(key)


def sync_round(k: KernelFilter, m: model.Filter, now: int) -> None:
    """Set every destination's aggregate to the model's exact recompute, in both.

    The model's records are grouped by aggregate (:func:`model.aggregates_of`:
    a closed-drops record with its destination, in ``addr+port`` mode a flow
    with its key's and its address's); the kernel gets the result as the sync writes it:
    deltas of c and kc from its own record, ts1 set, ts2 moved forward,
    through the control program.
    """
    by_dst: dict[bytes, list[tuple[bytes, model.FlowRecord]]] = {}
    for key, rec in m.flows.items():
        for agg in model.aggregates_of(key, m.params.dst_mode):
            by_dst.setdefault(agg, []).append((key, rec))
    for dkey, recs in sorted(by_dst.items()):
        r = model.recompute_dst(recs, now, m.params, m.known,
                                address=model.is_address_key(dkey))
        if r is None:
            continue
        d = m.dsts.get(dkey)
        if d is None:
            m.dsts[dkey] = model.DstRecord(ts1=r.ts1, ts2=r.ts2, c=r.c, kc=r.kc)
        else:
            d.ts1, d.ts2, d.c, d.kc = r.ts1, max(d.ts2, r.ts2), r.c, r.kc
        cur = k.dst(dkey)
        fk = bytes(16) + dkey
        if cur is None:
            ent = apply_entries([fk], OP_DST | OP_CREATE, c_delta=r.c, kc_delta=r.kc,
                                ts1=r.ts1, ts2=r.ts2)
        else:
            ent = apply_entries([fk], OP_DST, c_delta=r.c - cur.c, kc_delta=r.kc - cur.kc,
                                ts1=r.ts1, ts2=r.ts2)
        assert list(k.xdp.apply(ent)) == [APPLIED], f"sync round at {now}: {dkey.hex()}"


def run_differential(k: KernelFilter, params: model.FilterParams,
                     trace: Sequence[Step]) -> model.Filter:
    """Feed ``trace`` to the kernel and the model; assert they agree at every packet.

    Returns the model, in the state the kernel is in.
    """
    k.reset(params)
    m = model.Filter(params)
    for i, step in enumerate(trace):
        if isinstance(step, SetKnown):
            set_known(k, m, step)
            continue
        if isinstance(step, SyncRound):
            sync_round(k, m, step.now)
            assert k.all_dsts() == m.dsts, f"step {i}: sync round at {step.now}"
            continue
        frame, now = step
        if len(frame) < 14:  # BPF_PROG_TEST_RUN refuses frames below ETH_HLEN
            continue
        want = m.packet(frame, now)
        got = k.packet(frame, now)
        ctx = f"packet {i} of {len(trace)} at t={now}: {frame.hex()}"
        assert got == want.action, f"verdict {got} != model {want} ({ctx})"
        assert k.stat(want.reason)[0] == m.stats[want.reason][0], (
            f"reason {want.reason.name} not counted as the model did ({ctx})")
        parsed = model.parse(frame, params.dst_mode)
        if parsed.status is model.ParseStatus.OK:
            fk = model.flow_key(parsed, params)
            assert k.flow(fk) == m.flows.get(fk), f"flow record ({ctx})"
            assert k.dst(parsed.dst) == m.dsts.get(parsed.dst), f"destination ({ctx})"
            ck = model.closed_key(parsed.dst)
            assert k.flow(ck) == m.flows.get(ck), f"closed-drops record ({ctx})"
            ak = model.address_key(parsed.dst)
            assert k.dst(ak) == m.dsts.get(ak), f"address aggregate ({ctx})"
            ck = model.closed_key(ak)
            assert k.flow(ck) == m.flows.get(ck), f"address closed-drops record ({ctx})"
        assert k.events == m.events, f"warnings ({ctx})"
    assert k.all_stats() == m.stats
    assert k.all_flows() == m.flows
    assert k.all_dsts() == m.dsts
    assert k.all_known() == m.known
    return m
