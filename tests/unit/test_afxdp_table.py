"""The AF_XDP flow table against sources chosen to collide (docs/operations.rst, "Isolation").

The unkeyed hash is public: a flood can choose its sources offline so that
every one of them has the same 64-bit hash, hence the same slot, and each
lookup walks the whole chain.  :func:`colliding_sources` builds such sources
(the hash's rounds are invertible, so the second word of each source is
solved for), and the tests count probe steps -- one per key per slot looked
at -- in an unkeyed table (the baseline) and in a keyed one, in the same
test: no timing.
"""

from __future__ import annotations

import numpy as np
import pytest

from xpro.core import layout as L
from xpro.datapath.afxdp.table import _MULT, _SEED, Table

pytestmark = pytest.mark.unit

M64 = (1 << 64) - 1
N_FLOOD = 4096      # sources in the table, all in one slot for the unkeyed hash
N_LOOKUPS = 2000    # new sources of the same flood looked up (each a miss)


def _unxorshift29(y: np.ndarray) -> np.ndarray:
    return y ^ (y >> np.uint64(29)) ^ (y >> np.uint64(58))


def colliding_sources(n: int, dst: str = "192.0.2.10", first: int = 1) -> np.ndarray:
    """``n`` FLOW_KEYs to ``dst`` whose UNKEYED table hash is one and the same.

    The hash takes the key eight bytes at a time: ``h ^= w; h *= M; h ^=
    h >> 29``.  Each step is invertible, so for any first word there is a
    second word that brings the state to a fixed value T; every key built
    so shares the state after 16 bytes (the source), the rest (destination)
    is the same, and so is the hash.
    """
    w0 = np.arange(first, first + n, dtype=np.uint64) * np.uint64(0x9E3779B1)
    with np.errstate(over="ignore"):
        s0 = (np.uint64(_SEED) ^ w0) * _MULT[0]
        s0 ^= s0 >> np.uint64(29)
        target = np.uint64(0x0123456789ABCDEF)
        inv = np.uint64(pow(int(_MULT[1]), -1, 1 << 64))
        pre = _unxorshift29(np.full(n, target, dtype=np.uint64)) * inv
    w1 = pre ^ s0
    keys = np.zeros(n, dtype=L.FLOW_KEY)
    src = np.zeros((n, 2), dtype="<u8")
    src[:, 0], src[:, 1] = w0, w1
    keys["src"] = src.view("S16").reshape(n)
    keys["dst"]["addr"] = L.addr16(dst)
    return keys


def _filled(table: Table, keys: np.ndarray) -> Table:
    table.reserve(len(keys))
    table.insert(keys, np.zeros(len(keys), dtype=L.FLOW))
    return table


def test_the_crafted_sources_collide_in_the_unkeyed_hash_only() -> None:
    keys = colliding_sources(64)
    assert len(np.unique(keys.view(np.dtype((np.void, 36))))) == 64
    unkeyed = Table(L.FLOW_KEY, L.FLOW, 1 << 16, key=0)
    assert len(np.unique(unkeyed._hash(keys))) == 1
    keyed = Table(L.FLOW_KEY, L.FLOW, 1 << 16)
    assert keyed.key != 0
    assert len(np.unique(keyed._hash(keys))) == 64


def test_keyed_table_keeps_lookups_short_against_colliding_sources() -> None:
    flood = colliding_sources(N_FLOOD)
    probes = colliding_sources(N_LOOKUPS, first=N_FLOOD + 1)  # new sources: misses
    unkeyed = _filled(Table(L.FLOW_KEY, L.FLOW, 1 << 20, key=0, rekey=False), flood)
    keyed = _filled(Table(L.FLOW_KEY, L.FLOW, 1 << 20), flood)

    steps = {}
    for name, t in (("unkeyed", unkeyed), ("keyed", keyed)):
        t.probes = 0
        assert (t.find(probes) == -1).all()
        found = t.find(flood[:N_LOOKUPS])
        assert (found >= 0).all()
        steps[name] = t.probes
    # Unkeyed: every miss walks the whole chain of N_FLOOD records, every hit
    # half of it on average: about 2000 * 4096 * 1.5 = 12M steps.
    assert steps["unkeyed"] > N_LOOKUPS * N_FLOOD
    # Keyed: a half-full table at most; a few steps per lookup.
    assert steps["keyed"] < 4 * 2 * N_LOOKUPS
    assert steps["unkeyed"] > 1000 * steps["keyed"], steps
    assert keyed.longest <= keyed.probe_limit
    assert keyed.rekeys == 0


def test_a_long_probe_rekeys_the_table_and_keeps_every_record() -> None:
    """Even if the key were known (here: 0), the first long chain has the table
    rebuilt with a fresh key at the next reserve(); the records stay."""
    flood = colliding_sources(1024)
    t = Table(L.FLOW_KEY, L.FLOW, 1 << 20, key=0)
    vals = np.zeros(len(flood), dtype=L.FLOW)
    vals["c"] = np.arange(len(flood))
    t.reserve(len(flood))
    t.insert(flood, vals)
    assert t.longest > t.probe_limit  # the baseline: one chain of 1024
    assert t.rekeys == 0
    assert t.key == 0
    t.reserve(0)
    assert t.rekeys == 1
    assert t.key != 0
    t.probes = 0
    slots = t.find(flood)
    assert (slots >= 0).all()
    assert (t.vals["c"][slots] == np.arange(len(flood))).all()
    assert t.probes < 4 * len(flood)
    assert len(t) == len(flood)


def test_filter_recomputes_its_hashes_when_the_table_rekeys() -> None:
    """The batch path hashes before reserve(); a rekey there must not leave the
    batch looking up stale slots."""
    from tests.packets import frame
    from xpro.core import model
    from xpro.core.params import Sizes
    from xpro.datapath.afxdp.filter import UserFilter

    # whole addresses: the crafted sources differ in their last 64 bits
    f = UserFilter(model.FilterParams(source_prefix_v6=128),
                   sizes=Sizes(flows=1 << 16, dsts=1024))
    f.flows.key = 0  # as if the attacker knew the key
    flood = colliding_sources(300, dst="2001:db8::10")
    frames = [frame(L.addr_str(bytes(k["src"])), "2001:db8::10") for k in flood]
    f.process_frames(frames, 10**18)
    assert f.flows.longest > f.flows.probe_limit
    f.process_frames(frames, 10**18 + 1000)  # reserve() rekeys, then the same batch again
    assert f.flows.rekeys == 1
    _, recs = f.read_flows()
    assert len(recs) == 300
    assert (recs["c"] == 2).all()


def test_a_few_keys_hash_as_a_batch_does() -> None:
    """A handful of keys is hashed in Python integers (faster for one key); the
    hash is the batch's, for every key width and hash key."""
    rng = np.random.default_rng(5)
    for dtype in (L.FLOW_KEY, L.DST_KEY):
        for key in (0, None):
            t = Table(dtype, L.DST, 1024, key=key)
            keys = np.frombuffer(rng.bytes(dtype.itemsize * 40), dtype=dtype)
            batch = t._hash(keys)
            assert len(batch) > 2  # the batch path, not the few-keys one
            one_by_one = np.concatenate([t._hash(keys[i : i + 1]) for i in range(len(keys))])
            assert (one_by_one == batch).all()
            assert (t._hash(keys[:2]) == batch[:2]).all()
