"""xpro.core.keys: exact look-ups, even for keys that share a fingerprint.

The fingerprint is keyed with a random seed per process, so nobody outside
can pick keys that share one; two keys still may by chance, and a test that
knows the seed crafts such keys at will.  ``index_of`` and ``KeyIndex`` must
still find each key.
"""

from __future__ import annotations

import random

import numpy as np

from xpro.core import keys as K
from xpro.core import layout as L
from xpro.core.keys import KeyIndex, fingerprint, group_keys, index_of

M64 = (1 << 64) - 1


def _mix(w: int, i: int) -> int:
    """fingerprint's mixer of word i, in Python integers."""
    x = w ^ int(K._SEED[i])
    x ^= x >> 30
    x = x * int(K._M1) & M64
    x ^= x >> 27
    x = x * int(K._M2) & M64
    return x ^ (x >> 31)


def _unshift(y: int, s: int) -> int:
    """The x with x ^ (x >> s) == y."""
    x = y
    for _ in range(64 // s + 1):
        x = y ^ (x >> s)
    return x


def _unmix(x: int, i: int) -> int:
    x = _unshift(x, 31)
    x = x * pow(int(K._M2), -1, 1 << 64) & M64
    x = _unshift(x, 27)
    x = x * pow(int(K._M1), -1, 1 << 64) & M64
    return _unshift(x, 30) ^ int(K._SEED[i])


def colliding(key: bytes, k: int = 1) -> bytes:
    """Another key of the same width and fingerprint (this process's seed):
    bytes 4-7 (the high half of word 0) moved by ``k``, word 1 (bytes 8-15)
    chosen to compensate."""
    width = len(key)
    raw = bytearray(key + bytes(-width % 8))
    w0 = int.from_bytes(raw[0:8], "little")
    w1 = int.from_bytes(raw[8:16], "little")
    b0 = (w0 + (k << 32)) & M64
    m0, m1 = int(K._MIX[0]), int(K._MIX[1])
    target = (_mix(w1, 1) * m1 + (_mix(w0, 0) - _mix(b0, 0)) * m0) * pow(m1, -1, 1 << 64)
    raw[0:8] = b0.to_bytes(8, "little")
    raw[8:16] = _unmix(target & M64, 1).to_bytes(8, "little")
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


def test_group_keys_groups_equal_keys_and_only_them() -> None:
    """Grouped by fingerprint, checked by bytes: keys crafted to share a
    fingerprint are groups of their own."""
    rng = random.Random(6)
    base = [rng.randbytes(36) for _ in range(200)]
    pool = base + [colliding(k, j) for k in base[:20] for j in (1, 2)]
    for with_clash in (False, True):
        src = pool if with_clash else base
        seq = [rng.choice(src) for _ in range(1000)]
        keys = np.frombuffer(b"".join(seq), dtype=L.FLOW_KEY)
        first, inv = group_keys(keys)
        assert (keys[first][inv] == keys).all()
        assert sorted(bytes(k) for k in keys[first]) == sorted(set(seq))
        assert all(seq.index(seq[i]) == i for i in first.tolist())  # first occurrences


def test_a_colliding_key_is_found_after_its_twin_is_removed() -> None:
    """The index holds one key of a fingerprint, its twins in a side dict; with
    the indexed one removed, a twin was found nowhere (the mirror then took
    its flow for a new one, and kept the old slot for ever)."""
    rng = random.Random(8)
    a = rng.randbytes(36)
    keys = np.frombuffer(a + colliding(a) + colliding(a, 2), dtype=L.FLOW_KEY)
    ix = KeyIndex(L.FLOW_KEY)
    ix.add(keys, np.array([0, 1, 2]))
    assert len(ix.clash) == 2
    ix.remove(keys[:1], np.array([0]))
    assert ix.find(keys, keys).tolist() == [-1, 1, 2]
    ix.remove(keys[1:2], np.array([1]))
    assert ix.find(keys, keys).tolist() == [-1, -1, 2]
    assert not ix.clash


def test_addresses_of_one_prefix_do_not_share_fingerprints() -> None:
    """Clients numbered in one /16 to the hosts of one /24 differ only in the
    high bytes of two words: the unkeyed linear mix gave every second one of
    100 000 such flows the fingerprint of another (the slow path of every
    look-up); the keyed mixer gives none."""
    n = 100_000
    ids = np.arange(n, dtype=np.uint32)
    mapped = np.zeros((n, 16), dtype=np.uint8)
    mapped[:, 10:12] = 0xFF

    def v4(addr: np.ndarray) -> np.ndarray:
        out = mapped.copy()
        out[:, 12:] = addr.astype(">u4").view(np.uint8).reshape(n, 4)
        return out.view("S16").reshape(-1)

    keys = np.zeros(n, dtype=L.FLOW_KEY)
    keys["src"] = v4(0x0A000001 + ids)
    keys["dst"]["addr"] = v4(0xC6120000 + ids % 256)
    keys["dst"]["port"] = 9000
    assert len(np.unique(fingerprint(keys))) == n
