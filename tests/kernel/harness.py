"""The kernel program behind the same interface as :class:`xpro.core.model.Filter`.

Differential tests feed one trace to both and compare, packet by packet, the
verdict, the counter of the reason, the flow record, and the warnings; at
the end of the trace, every map.  The kernel runs with the fake clock
(``cfg.fake_now``) through ``BPF_PROG_TEST_RUN``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from xpro.bpf import RingBuffer
from xpro.core import layout as L
from xpro.core import model
from xpro.core.params import Sizes
from xpro.datapath.xdp import XdpFilter


class KernelFilter:
    """One loaded xpro program (:class:`xpro.datapath.xdp.XdpFilter`), driven like a
    :class:`model.Filter`."""

    def __init__(self, program: str = "xpro_xdp", flows_max: int = 4096) -> None:
        self.xdp = XdpFilter(model.FilterParams(), program=program,
                             sizes=Sizes(flows=flows_max, dsts=1024, prefixes=64))
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

    def flow(self, key: bytes) -> model.FlowRecord | None:
        v = self.flows.get(key)
        if v is None:
            return None
        return model.FlowRecord(ts1=int(v["ts1"]), ts2=int(v["ts2"]), c=int(v["c"]),
                                gen=int(v["gen"]), warn_ts=int(v["warn_ts"]))

    def all_flows(self) -> dict[bytes, model.FlowRecord]:
        keys, vals = self.flows.lookup_batch()
        return {
            keys[i].tobytes(): model.FlowRecord(
                ts1=int(vals[i]["ts1"]), ts2=int(vals[i]["ts2"]), c=int(vals[i]["c"]),
                gen=int(vals[i]["gen"]), warn_ts=int(vals[i]["warn_ts"]))
            for i in range(len(keys))
        }

    def all_dsts(self) -> dict[bytes, model.DstRecord]:
        keys, vals = self.dsts.lookup_batch()
        return {
            keys[i].tobytes(): model.DstRecord(
                ts1=int(vals[i]["ts1"]), ts2=int(vals[i]["ts2"]), c=int(vals[i]["c"]),
                warn_ts=int(vals[i]["warn_ts"]))
            for i in range(len(keys))
        }

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


def run_differential(k: KernelFilter, params: model.FilterParams,
                     trace: list[tuple[bytes, int]]) -> None:
    """Feed ``trace`` to the kernel and the model; assert they agree at every packet."""
    k.reset(params)
    m = model.Filter(params)
    for i, (frame, now) in enumerate(trace):
        if len(frame) < 14:  # BPF_PROG_TEST_RUN refuses frames below ETH_HLEN
            continue
        want = m.packet(frame, now)
        got = k.packet(frame, now)
        ctx = f"packet {i} of {len(trace)} at t={now}: {frame.hex()}"
        assert got == want.action, f"verdict {got} != model {want} ({ctx})"
        assert k.stat(want.reason)[0] == m.stats[want.reason][0], (
            f"reason {want.reason.name} not counted as the model did ({ctx})")
        parsed = model.parse(frame, params.dst_mode)
        if parsed.status is model.ParseStatus.OK and parsed.key in m.flows:
            assert k.flow(parsed.key) == m.flows[parsed.key], f"flow record ({ctx})"
        assert k.events == m.events, f"warnings ({ctx})"
    assert k.all_stats() == m.stats
    assert k.all_flows() == m.flows
    assert k.all_dsts() == m.dsts
