"""xpro.core.keys: exact look-ups, even for keys chosen to share a fingerprint.

The fingerprint is a linear mix of the key's words, so anyone who picks
addresses can make two keys share one (an attacker who is a client of a
destination chosen for it).  ``index_of`` must still find each key.
"""

from __future__ import annotations

import random

import numpy as np

from xpro.core import layout as L
from xpro.core.keys import _MIX, KeyIndex, fingerprint, index_of

M64 = (1 << 64) - 1


def colliding(key: bytes, k: int = 1) -> bytes:
    """Another key of the same width and fingerprint: bytes 4-7 (the high half
    of word 0) moved by ``k``, word 1 (bytes 8-15) moved to compensate."""
    width = len(key)
    raw = bytearray(key + bytes(-width % 8))
    w0 = int.from_bytes(raw[0:8], "little")
    w1 = int.from_bytes(raw[8:16], "little")
    d0 = k << 32
    m0, m1 = int(_MIX[0]), int(_MIX[1])
    d1 = (-d0 * m0 * pow(m1, -1, 1 << 64)) & M64
    raw[0:8] = ((w0 + d0) & M64).to_bytes(8, "little")
    raw[8:16] = ((w1 + d1) & M64).to_bytes(8, "little")
    return bytes(raw[:width])


def v6_dst(rng: random.Random) -> bytes:
    addr = bytes.fromhex("20010db8") + rng.randbytes(12)
    return addr + bytes([0, 0, 0, 0])


def test_a_crafted_collision_is_a_collision() -> None:
    rng = random.Random(1)
    a = v6_dst(rng)
    b = colliding(a)
    assert a != b
    assert a[:4] == b[:4] == bytes.fromhex("20010db8")  # still in 2001:db8::/32
    keys = np.frombuffer(a + b, dtype=L.DST_KEY)
    fp = fingerprint(keys)
    assert fp[0] == fp[1]


def test_index_of_finds_every_key_of_a_fingerprint_in_either_order() -> None:
    rng = random.Random(2)
    a = v6_dst(rng)
    run = [a, colliding(a, 1), colliding(a, 2), colliding(a, 3)]
    others = [v6_dst(rng) for _ in range(50)]
    hay = np.frombuffer(b"".join(others[:25] + run + others[25:]), dtype=L.DST_KEY)
    for order in (run, run[::-1], [run[2], run[0]]):
        needles = np.frombuffer(b"".join(order), dtype=L.DST_KEY)
        idx = index_of(hay, needles)
        assert [hay[i].tobytes() for i in idx] == order
    absent = np.frombuffer(colliding(a, 9), dtype=L.DST_KEY)
    assert list(index_of(hay, absent)) == [-1]


def test_index_of_agrees_with_a_dict() -> None:
    rng = random.Random(3)
    base = [rng.randbytes(36) for _ in range(300)]
    hay_keys = base + [colliding(k) for k in base[:30]]
    needles = [rng.choice(hay_keys) for _ in range(400)] + [rng.randbytes(36) for _ in range(50)]
    needles += [colliding(k, 5) for k in base[:10]]
    hay = np.frombuffer(b"".join(hay_keys), dtype=L.FLOW_KEY)
    got = index_of(hay, np.frombuffer(b"".join(needles), dtype=L.FLOW_KEY))
    where = {k: i for i, k in reversed(list(enumerate(hay_keys)))}
    assert got.tolist() == [where.get(k, -1) for k in needles]


def test_index_of_a_long_crafted_run_finds_each_key_and_the_first_of_equals() -> None:
    """Thousands of keys of one fingerprint (an attacker's many destination
    keys): every needle found, absent ones not, a repeated key at its first
    index.  Walking the run per needle took 24 s for 5000 such keys; sorted
    by bytes it takes milliseconds (docs/security.rst)."""
    rng = random.Random(5)
    a = v6_dst(rng)
    run = [a] + [colliding(a, i) for i in range(1, 3000)]
    hay_keys = run + [v6_dst(rng) for _ in range(100)] + run[:50]  # 50 repeated
    hay = np.frombuffer(b"".join(hay_keys), dtype=L.DST_KEY)
    needles = run[::-1] + [colliding(a, 5000 + i) for i in range(20)]
    got = index_of(hay, np.frombuffer(b"".join(needles), dtype=L.DST_KEY))
    where = {k: i for i, k in reversed(list(enumerate(hay_keys)))}
    assert got.tolist() == [where.get(k, -1) for k in needles]
    assert got[-21] == 0
    assert (got[-20:] == -1).all()


def test_the_key_index_finds_colliding_keys_too() -> None:
    rng = random.Random(4)
    a = rng.randbytes(36)
    keys = np.frombuffer(a + colliding(a) + colliding(a, 2), dtype=L.FLOW_KEY)
    ix = KeyIndex(L.FLOW_KEY)
    ix.add(keys[:1], np.array([0]))
    assert ix.find(keys[1:], keys).tolist() == [-1, -1]
    ix.add(keys[1:], np.array([1, 2]))
    assert ix.find(keys, keys).tolist() == [0, 1, 2]
