"""The pull rule (xpro.core.pull): its numpy form equals its specification, the
master's aggregate equals the exact one, and a mesh pulling candidates counts
and detects as one pulling every change."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from xpro.core import layout as L
from xpro.core import model, pull
from xpro.core.layout import MASTER
from xpro.core.pull import MeshModel, PullRule

pytestmark = pytest.mark.unit

S = model.NS_PER_S
T0 = 1_700_000_000 * S
RULE = PullRule(t_f1=100, t_t2=S, t_t1=10 * S, near_pm=500, min_age=2 * S, min_packets=8)
FP = model.FilterParams(t_t1=10 * S, t_t2=S, t_f1=100, t_t3=S, t_f2=10_000)
SP = model.SyncParams(t_t1=10 * S, t_t4=1000 * S, r_q=2 * model.R_DEN)


def _keys(n: int, dsts: int, rng: np.random.Generator) -> np.ndarray:
    k = np.frombuffer(rng.bytes(36 * n), dtype=L.FLOW_KEY).copy()
    d = np.frombuffer(rng.bytes(20 * dsts), dtype=L.DST_KEY).copy()
    d["pad"] = 0
    d["addr"][1::2] = d["addr"][0]  # every other key on one address (addr+port mode)
    k["dst"] = d[np.arange(n) % dsts]
    k["dst"]["pad"][:dsts] = L.DST_PAD_CLOSED
    # an address aggregate's closed-drops records (addr+port mode)
    k["dst"]["port"][dsts : 2 * dsts] = 0
    k["dst"]["proto"][dsts : 2 * dsts] = 0
    k["dst"]["pad"][dsts : 2 * dsts] = L.DST_PAD_ADDR_CLOSED
    k["src"][: 2 * dsts] = b""
    return k


def _records(n: int, rng: np.random.Generator) -> np.ndarray:
    r = np.zeros(n, dtype=MASTER)
    t1 = T0 + rng.integers(0, 5 * S, n)
    r["ts1"] = t1
    r["ts2"] = t1 + rng.integers(0, 4 * S, n)
    r["c"] = rng.integers(0, 600, n)
    return r


def _m(r: np.void) -> model.Master:
    return model.Master(int(r["ts1"]), int(r["ts2"]), int(r["c"]))


@pytest.mark.parametrize("addresses", [False, True], ids=["addr", "addr+port"])
def test_arrays_equal_the_specification(addresses: bool) -> None:
    """In addr+port mode a flow counts in its address's partials too (and an
    address's closed-drops record in its address's only)."""
    rule = dataclasses.replace(RULE, addresses=addresses)
    rng = np.random.default_rng(1)
    k, a, b = _keys(2000, 7, rng), _records(2000, rng), _records(2000, rng)
    had = rng.random(2000) < 0.6
    kb = [x.tobytes() for x in k]
    cand = pull.candidates_array(k, a, rule)
    contr = pull.contributes_array(k, a, rule)
    elig = pull.eligible_array(k, a, rule)
    for i in range(2000):
        assert cand[i] == pull.is_candidate(kb[i], _m(a[i]), rule)
        assert contr[i] == pull.contributes(kb[i], _m(a[i]), rule)
        assert elig[i] == pull.client_eligible(kb[i], _m(a[i]), rule)
    assert 0 < cand.sum() < 2000
    assert 0 < elig.sum() < 2000
    # The partials after one move of every record: numpy and the spec.
    spec: dict[tuple[bytes, int], pull.Partial] = {}
    for i in range(2000):
        if had[i]:
            pull.apply_flow(spec, kb[i], None, _m(b[i]), rule)
    ak, t1, t2, dc, dn = pull.partial_deltas(k, b, np.zeros(2000, bool), b, had, rule)
    start = pull.apply_partials(np.zeros(len(ak), dtype=pull.PARTIAL), t1, t2, dc, dn)
    table = {(x["dst"].tobytes(), int(x["slot"])): p for x, p in zip(ak, start, strict=True)}
    for i in range(2000):
        pull.apply_flow(spec, kb[i], _m(b[i]) if had[i] else None, _m(a[i]), rule)
    ak, t1, t2, dc, dn = pull.partial_deltas(k, b, had, a, np.ones(2000, bool), rule)
    cur = np.array([table.get((x["dst"].tobytes(), int(x["slot"])), np.zeros(1, pull.PARTIAL)[0])
                    for x in ak], dtype=pull.PARTIAL)
    new = pull.apply_partials(cur, t1, t2, dc, dn)
    for x, p in zip(ak, new, strict=True):
        table[(x["dst"].tobytes(), int(x["slot"]))] = p
    got = {at: (int(p["c"]), int(p["n"])) for at, p in table.items() if int(p["n"])}
    want = {at: (p.c, p.n) for at, p in spec.items() if p.n}
    assert got == want
    pads = {d[19] for d, _ in got}
    assert pads == {0, L.DST_PAD_ADDR}  # pad 2: an address's closed drops, or its flows
    if addresses:  # the shared address holds every flow of its keys
        shared = {d for d, _ in got if d[19] == L.DST_PAD_ADDR and d[:16] == k["dst"][1]["addr"]
                  .tobytes()}
        assert shared


def test_the_aggregate_from_partials_is_the_exact_one_over_live_flows() -> None:
    """Every flow live: c* and ts2* as recompute_dst, ts1* the same; a slot that
    aged out of T_T1 leaves (to the slot's width)."""
    rng = np.random.default_rng(2)
    k, r = _keys(500, 1, rng), _records(500, rng)
    recs = {x.tobytes(): _m(y) for x, y in zip(k, r, strict=True)}
    parts = pull.partials_of(recs, RULE)
    now = T0 + 9 * S
    agg = pull.aggregate([(s, p) for (_, s), p in parts.items()], now, RULE)
    exact = model.recompute_dst(
        [(kb, model.FlowRecord(m.ts1, m.ts2, m.c, 0, 0)) for kb, m in recs.items()], now, FP)
    assert agg is not None
    assert exact is not None
    assert agg == (exact.ts1, exact.ts2, exact.c)
    late = T0 + 30 * S
    assert pull.aggregate([(s, p) for (_, s), p in parts.items()], late, RULE) is None


@pytest.mark.parametrize("proxies", [2, 4])
def test_a_mesh_pulling_candidates_counts_and_detects_as_one_pulling_everything(
        proxies: int) -> None:
    """Random benign flows and a distributed flood (each bot at 1.6 x T_F1 over
    the mesh, split over every proxy): the master's counts are exact in both
    meshes, every proxy drops every bot from the same round on, no benign flow
    is dropped, and the candidate mesh pulls a fraction of the changes."""
    rng = np.random.default_rng(proxies)
    keys = [x.tobytes() for x in _keys(400, 5, rng)]
    bots, benign = keys[5:25], keys[25:]
    meshes = {m: MeshModel(proxies, SP, RULE, pull=m) for m in ("candidates", "all")}
    sent: dict[bytes, int] = dict.fromkeys(keys, 0)
    first_drop: dict[str, list[int]] = {m: [] for m in meshes}
    for second in range(12):
        t = T0 + second * S
        for i, kb in enumerate(bots):  # 160 packets/s over the mesh
            for p in range(proxies):
                n = 160 // proxies
                for mesh in meshes.values():
                    mesh.count(p, kb, t + i, n)
                sent[kb] += n
        for kb in benign:  # a few packets, at one proxy
            if rng.random() < 0.3:
                p, n = int(rng.integers(0, proxies)), int(rng.integers(1, 10))
                for mesh in meshes.values():
                    mesh.count(p, kb, t + 1, n)
                sent[kb] += n
        for name, mesh in meshes.items():
            for p in range(proxies):
                mesh.round(p)
            drops = [all(mesh.drops(p, kb, FP) for kb in bots) for p in range(proxies)]
            if all(drops) and not first_drop[name]:
                first_drop[name].append(second)
            assert not any(mesh.drops(p, kb, FP) for p in range(proxies) for kb in benign)
    for mesh in meshes.values():
        for p in range(proxies):  # a last round each: everything merged
            mesh.round(p)
        assert {kb: m.c for kb, m in mesh.master.items()} == {kb: n for kb, n in sent.items()
                                                             if n}
    assert first_drop["candidates"] == first_drop["all"]
    assert first_drop["candidates"]
    cand, full = meshes["candidates"], meshes["all"]
    assert sum(cand.pulled) < 0.5 * sum(full.pulled)
