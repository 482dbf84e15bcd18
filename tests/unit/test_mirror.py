"""The sync's mirror of the flow table and its bulk key index."""

from __future__ import annotations

import numpy as np
import pytest

from xpro.core import layout as L
from xpro.core.keys import KeyIndex, fingerprint
from xpro.sync.mirror import Mirror

pytestmark = pytest.mark.unit


def keys(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n, L.FLOW_KEY.itemsize), dtype=np.uint8)
    raw[:, 16:36] = raw[0, 16:36]  # one destination for most ...
    raw[::7, 16:20] = 9  # ... and a second one
    raw[:, 35] = 0  # the pad byte of a packet's key
    raw[::11, 35] = L.DST_PAD_CLOSED  # closed-drops records: their destination's id
    return raw.view(L.FLOW_KEY).reshape(n)


def test_mirror_update_find_remove_against_a_dict() -> None:
    m = Mirror()
    ref: dict[bytes, int] = {}
    dsts: set[bytes] = set()
    all_keys = keys(5000, 1)
    rng = np.random.default_rng(2)
    for step in range(20):
        pick = np.unique(rng.integers(0, len(all_keys), size=400))
        k = all_keys[pick]
        c = rng.integers(0, 10**6, size=len(k))
        m.update(k, c, c + 1, c)
        for kb, cv in zip(k, c, strict=True):
            ref[kb.tobytes()] = int(cv)
            dsts.add(kb["dst"].tobytes()[:19] + b"\0")
        if step % 3 == 2:
            gone = k[: len(k) // 2]
            m.remove(gone)
            for kb in gone:
                ref.pop(kb.tobytes(), None)
        slots = m.index.find(all_keys, m.keys)
        found = {all_keys[i].tobytes(): int(m.c[s]) for i, s in enumerate(slots) if s >= 0}
        assert found == ref
        assert int(m.alive.sum()) == len(ref)
    # destination ids: one per distinct destination key
    assert set(m.dst_index) == dsts
    assert len(dsts) == 2


def test_fingerprint_clash_goes_to_the_side_dict() -> None:
    """Key B's fingerprint equals stored key A's: B is found through the side dict."""
    idx = KeyIndex(L.FLOW_KEY)
    stored = keys(2, 5)
    idx.add(stored[:1], np.array([0]))
    idx.fp[:] = fingerprint(stored[1:2])  # A now sits under B's fingerprint
    idx.add(stored[1:2], np.array([1]))  # so B clashes with A
    assert list(idx.clash.values()) == [1]
    assert idx.find(stored[1:2], stored)[0] == 1


def test_address_ids_of_keys_and_closed_drops_records() -> None:
    """addr+port: each destination key's address aggregate has an id of its own;
    an address's closed-drops record (pad 3) maps to it, a key's (pad 1) to
    the key; a fragment's key (port 0, protocol 0, pad 0) is not the address's."""
    from xpro.core import model
    from xpro.core.layout import addr16
    from xpro.daemon.proxy import _dst_text
    from xpro.sync.known import is_address, limits

    a = addr16("10.9.9.9")
    raw = [a + model.port_bytes(p) + bytes((17, 0)) for p in (53, 80)]
    raw.append(a + bytes(4))  # a fragment's key
    akey = model.address_key(raw[0])
    flows = [bytes(16) + k for k in raw]
    flows += [model.closed_key(raw[0]), model.closed_key(akey)]
    m = Mirror()
    fk = np.frombuffer(b"".join(flows), dtype=L.FLOW_KEY)
    ids = m.update(fk, np.zeros(5, np.int64), np.ones(5, np.int64), np.ones(5, np.int64))
    assert len(set(ids[:3].tolist())) == 3
    assert ids[3] == ids[0]  # the key's closed drops
    aids = m.address_ids(ids)
    assert len(set(aids.tolist())) == 1
    assert aids[0] == ids[4]  # the address's closed drops: the address's id
    assert m.dst_keys[aids[0]].tobytes() == akey
    dk = m.dst_keys[np.array([ids[0], ids[2], aids[0]])]
    assert is_address(dk).tolist() == [False, False, True]
    p = model.FilterParams(t_f2=100, t_f2_address=250)
    assert limits(dk, p).tolist() == [100, 100, 250]
    assert [_dst_text(k) for k in dk] == ["10.9.9.9:53", "10.9.9.9",
                                          "10.9.9.9 (address: all ports)"]


def test_destination_ids_stay_one_per_key_through_floods_and_pruning() -> None:
    """Rounds of flows to many new destinations (a spray) come and go: every
    destination has one id, its key is at that id, freed ids are reused and
    never held by two keys."""
    rng = np.random.default_rng(7)
    m = Mirror()
    pool = np.frombuffer(rng.bytes(36 * 3000), dtype=L.FLOW_KEY).copy()
    pool["dst"]["pad"] = 0
    pool["dst"]["addr"][1000:] = pool["dst"]["addr"][0]  # many ports of one address
    live: set[bytes] = set()
    for _ in range(30):
        add = pool[rng.choice(len(pool), 400, replace=False)]
        add = add[[k.tobytes() not in live for k in add]]
        n = len(add)
        ids = m.update(add, np.zeros(n, np.int64), np.ones(n, np.int64), np.ones(n, np.int64))
        for k, d in zip(add, ids, strict=True):
            assert m.dst_keys[d].tobytes() == k["dst"].tobytes()
        live |= {k.tobytes() for k in add}
        gone = [k for k in live if rng.random() < 0.5]
        m.remove(np.frombuffer(b"".join(gone), dtype=L.FLOW_KEY))
        live -= set(gone)
        m.prune_dsts()
        held = list(m.dst_index.values())
        assert len(held) == len(set(held))  # one key per id
        assert not set(held) & set(m.dst_free)  # a freed id is held by none
        for k, d in m.dst_index.items():
            assert m.dst_keys[d].tobytes() == k
        want = {np.frombuffer(k, dtype=L.FLOW_KEY)["dst"].tobytes() for k in live}
        assert want <= set(m.dst_index)


def test_an_address_id_is_held_while_a_flow_of_its_keys_is() -> None:
    """An address aggregate has no flow of its own until it closes: its id is
    kept (with the recent rate's history, docs/semantics.rst) while a flow of
    one of its keys is mirrored, and freed with the last of them."""
    from xpro.core import model
    from xpro.core.layout import addr16

    a = addr16("10.9.9.9")
    flows = [bytes(16) + a + model.port_bytes(p) + bytes((17, 0)) for p in (53, 80)]
    fk = np.frombuffer(b"".join(flows), dtype=L.FLOW_KEY)
    m = Mirror()
    ids = m.update(fk, np.zeros(2, np.int64), np.ones(2, np.int64), np.ones(2, np.int64))
    aid = int(m.address_ids(ids)[0])
    assert m.prune_dsts().tolist() == []
    m.remove(fk[:1])
    assert m.prune_dsts().tolist() == [int(ids[0])]  # the key without flows goes
    assert int(m.address_ids(ids[1:])[0]) == aid  # the address stays, with its id
    m.remove(fk[1:])
    assert sorted(m.prune_dsts().tolist()) == sorted([int(ids[1]), aid])
    assert model.address_key(flows[0][16:]) not in m.dst_index
