"""The kernel program behind the same interface as :class:`xpro.model.Filter`.

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

from xpro import layout as L
from xpro import model
from xpro.bpf import BpfObject, RingBuffer, object_path


def _lpm_key(p: model.Prefix) -> bytes:
    return p.length.to_bytes(4, "little") + p.network.to_bytes(16, "big")


class KernelFilter:
    """One loaded xpro program, driven like a :class:`model.Filter`."""

    def __init__(self, program: str = "xpro_xdp", flows_max: int = 4096) -> None:
        self.obj = BpfObject(
            object_path(),
            programs=[program],
            max_entries={"flows": flows_max, "dsts": 1024, "allow_src": 64,
                         "deny_src": 64, "dst_policy": 64},
            types=L.MAP_TYPES,
        )
        self.obj.load()
        self.prog = self.obj.programs[program]
        self.cfg = self.obj.global_data(".data", L.CONFIG)
        self.flows = self.obj.maps["flows"]
        self.dsts = self.obj.maps["dsts"]
        self.stats = self.obj.maps["stats"]
        self.events: list[model.Event] = []
        self.ring = RingBuffer(self.obj.maps["events"], self._on_event, dtype=L.EVENT)
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
        self.obj.close()

    def reset(self, params: model.FilterParams) -> None:
        """Empty every map and install ``params`` (as the daemon would)."""
        self.flows.clear()
        self.dsts.clear()
        for i in range(L.N_REASONS):
            self.stats[np.uint32(i)] = self._zero_stat
        for name, prefixes in (("allow_src", dict.fromkeys(params.allow, 1)),
                               ("deny_src", dict.fromkeys(params.deny, 1)),
                               ("dst_policy", dict(params.dst_policy))):
            m = self.obj.maps[name]
            m.clear()
            for p, v in prefixes.items():
                m[_lpm_key(p)] = np.uint32(v).tobytes()
        self.ring.consume()
        self.events.clear()
        v = self.cfg.view
        v["t_t1"], v["t_t2"], v["t_t3"] = params.t_t1, params.t_t2, params.t_t3
        v["t_f1"], v["t_f2"] = params.t_f1, params.t_f2
        v["warn_period"] = params.warn_period
        v["mode"], v["dst_mode"] = params.mode, params.dst_mode
        v["malformed_policy"] = params.malformed_policy
        v["events"] = int(params.events)
        v["n_allow"], v["n_deny"] = len(params.allow), len(params.deny)
        v["n_dst_policy"] = len(params.dst_policy)
        v["clock_offset"] = 0
        v["fake_now"] = 1

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
