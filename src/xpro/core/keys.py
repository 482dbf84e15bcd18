"""Fixed-size keys as numpy structured arrays: fingerprints, look-ups, an index.

The sync's mirror, the kernel filter's destination reads, the offload drop
set and the AF_XDP table look keys up in bulk with these (no Python loop per
key).  Pure numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["KeyIndex", "cat_rows", "fingerprint", "gather", "group_keys", "index_of",
           "key_bytes", "known_filters", "known_hash", "known_slot", "take_rows", "unique_keys"]

Array = npt.NDArray[Any]

#: Per process, random: the fingerprint's key.  Keys that share a fingerprint
#: stay correct (compared by their bytes) but slow (a dict, or a sort of their
#: run); keyed, nobody can choose addresses to make many of them.
_SEED = np.random.default_rng().integers(0, 2**64, size=5, dtype=np.uint64)
_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD], dtype=np.uint64)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def fingerprint(keys: Array) -> Array:
    """A 64-bit keyed hash of each key's bytes (to sort and search keys as integers).

    Each 8-byte word, xored with the process's seed, goes through a bijective
    mixer (splitmix64's) before the words are summed with odd weights.  A mix
    without it (the words times constants, summed) made keys that differ in
    the high bytes of two words collide: addresses of one /24 and ports put
    every second key of the sync bench into the collision path (0.19 s of a
    0.93 s round, docs/performance.rst).
    """
    width = keys.dtype.itemsize
    n = len(keys)
    raw = np.zeros((n, (width + 7) // 8 * 8), dtype=np.uint8)
    raw[:, :width] = np.ascontiguousarray(keys).view(np.uint8).reshape(n, width)
    x = raw.view("<u8") ^ _SEED[: raw.shape[1] // 8]
    x ^= x >> _S30
    x *= _M1
    x ^= x >> _S27
    x *= _M2
    x ^= x >> _S31
    out: Array = (x * _MIX[: x.shape[1]]).sum(axis=1, dtype=np.uint64)
    return out


def key_bytes(keys: Array) -> list[bytes]:
    """Each key of a fixed-size key array as its bytes (dict and set keys)."""
    raw = np.ascontiguousarray(keys)
    return [bytes(x) for x in raw.view(np.dtype((np.void, raw.dtype.itemsize)))]


def unique_keys(keys: Array) -> Array:
    """The distinct keys of a key array, sorted by their bytes, in its dtype."""
    raw = np.ascontiguousarray(keys)
    vd = np.dtype((np.void, raw.dtype.itemsize))
    out: Array = np.unique(raw.view(vd)).view(raw.dtype).reshape(-1)
    return out


def take_rows(a: Array, idx: Array) -> Array:
    """``a[idx]`` for a structured array, copied as raw records: a structured
    take goes field by field (10x slower for the sync's nested keys)."""
    v = np.dtype((np.void, a.dtype.itemsize))
    out: Array = a.view(v)[idx].view(a.dtype)
    return out


def cat_rows(*arrays: Array) -> Array:
    """The arrays (one structured dtype) one after the other, copied as raw
    records: ``np.concatenate(..., dtype=)`` casts field by field (20x slower)
    and a bare one turns big-endian fields native."""
    dtype = arrays[0].dtype
    v = np.dtype((np.void, dtype.itemsize))
    out: Array = np.concatenate([np.asarray(a, dtype=dtype).view(v) for a in arrays]).view(dtype)
    return out


def group_keys(keys: Array) -> tuple[Array, Array]:
    """The distinct keys of a key array: ``(first, inverse)``, the index of each
    one's first occurrence and each key's number among them (``keys[first]
    [inverse] == keys``), in no particular order.  Grouped by fingerprint,
    then checked byte by byte: a sort of the raw bytes only when two keys
    share one (sorting 32-byte void values is several times slower)."""
    fp = fingerprint(keys)
    _, first, inv = np.unique(fp, return_index=True, return_inverse=True)
    kv = np.ascontiguousarray(keys).view(np.dtype((np.void, keys.dtype.itemsize)))
    if not (kv[first][inv] == kv).all():
        _, first, inv = np.unique(kv, return_index=True, return_inverse=True)
    return first, inv.reshape(-1)


def _mix(words: Array, mults: list[int], s1: int, k: int, s2: int) -> Array:
    """The hashes of bpf/xpro_shared.h over rows of little-endian words: the
    words times ``mults`` summed (wrapping as the C does), then
    ``h ^= h >> s1; h *= k; h ^= h >> s2``; uint32."""
    h: Array = (words * np.array(mults, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    h = h ^ (h >> np.uint32(s1))
    h = h * np.uint32(k)
    h = h ^ (h >> np.uint32(s2))
    out: Array = h.astype(np.uint32)
    return out


def known_hash(src: Array) -> Array:
    """``xpro_known_hash`` (bpf/xpro_shared.h) of each 16-byte source (``S16``):
    the hash of the known sources' filter, uint32."""
    w: Array = np.ascontiguousarray(src, dtype="S16").view("<u4").reshape(-1, 4)
    return _mix(w, [0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F], 16, 0x85EBCA6B, 13)


def known_slot(dst: Array) -> Array:
    """``xpro_known_slot`` (bpf/xpro_shared.h) of each destination key
    (``DST_KEY``): the hash that places its filter of known sources, uint32."""
    w: Array = np.ascontiguousarray(dst).view("<u4").reshape(-1, 5)
    return _mix(w, [0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1],
                15, 0x2C1B3C6D, 12)


def known_filters(keys: Array, words: int, mask: int | None = None) -> tuple[Array, Array]:
    """The filters of known sources of ``keys`` (flow keys, every one known):
    ``(groups, filters)``, the filters as ``(n, words)`` uint64, two bits a
    source (docs/performance.rst, "The known sources' filter").  Grouped by
    destination key (``groups``: DST_KEY), or with ``mask`` by slot
    (``known_slot(dst) & mask``; ``groups``: uint32 slots): a slot's filter
    holds the sources of every destination in it.  The program tests bits
    ``h % bits`` and ``(h >> 16) % bits`` of ``h = known_hash(source)``."""
    keys = np.ascontiguousarray(keys)
    dst = np.ascontiguousarray(keys["dst"])
    by: Array = dst if mask is None else known_slot(dst) & np.uint32(mask)
    if not len(keys):
        return by[:0], np.zeros((0, words), dtype=np.uint64)
    vd = by if mask is not None else dst.view(np.dtype((np.void, dst.dtype.itemsize)))
    _, first, row = np.unique(vd, return_index=True, return_inverse=True)
    row = row.reshape(-1)
    out = np.zeros((len(first), words), dtype=np.uint64)
    h = known_hash(keys["src"]).astype(np.int64)
    nbits = words * 64
    for bit in (h % nbits, (h >> 16) % nbits):
        np.bitwise_or.at(out, (row, bit >> 6), np.uint64(1) << (bit & 63).astype(np.uint64))
    return by[first], out


def _search(sorted_hay: Array, needles: Array) -> Array:
    """``np.searchsorted(sorted_hay, needles)``, with the needles searched in
    sorted order (a random-order search over a large array misses the cache
    at every step: 0.7 s against 0.1 s for 1M in 1M)."""
    order = np.argsort(needles, kind="stable")
    pos = np.empty(len(needles), dtype=np.int64)
    pos[order] = np.searchsorted(sorted_hay, needles[order])
    return pos


def index_of(haystack: Array, needles: Array) -> Array:
    """For each needle, its index in ``haystack`` or -1 (both arrays of one key dtype)."""
    if len(haystack) == 0 or len(needles) == 0:
        return np.full(len(needles), -1, dtype=np.int64)
    width = haystack.dtype.itemsize
    fh, fn = fingerprint(haystack), fingerprint(needles)
    order = np.argsort(fh, kind="stable")
    sorted_fh = fh[order]
    pos = np.minimum(_search(sorted_fh, fn), len(order) - 1)
    cand = order[pos]
    vd = np.dtype((np.void, width))
    hv = np.ascontiguousarray(haystack).view(vd)
    nv = np.ascontiguousarray(needles).view(vd)
    same_fp = sorted_fh[pos] == fn
    same = same_fp & (hv[cand] == nv)
    out = np.where(same, cand, -1)
    # Two keys with one fingerprint (rare by chance; the seed keeps an
    # attacker from picking them, and a test that knows it makes thousands):
    # the needle is the first of the run of its fingerprint only by luck.  Those needles
    # are compared by their bytes with every key of their fingerprints,
    # sorted: O(n log n) at worst, never a walk per needle.
    coll = np.flatnonzero(same_fp & ~same)
    if len(coll):
        rows = order[np.isin(sorted_fh, fn[coll])]
        rv = hv[rows]
        by_bytes = np.argsort(rv, kind="stable")  # equal keys: the first
        keys = rv[by_bytes]
        p = np.minimum(np.searchsorted(keys, nv[coll]), len(keys) - 1)
        hit = keys[p] == nv[coll]
        out[coll[hit]] = rows[by_bytes[p[hit]]]
    return out


def gather(values: Array, idx: Array) -> Array:
    """``values[idx]`` where ``idx >= 0``, zero where ``idx`` is -1 (no match)."""
    out = np.zeros(len(idx), dtype=values.dtype)
    hit = idx >= 0
    out[hit] = values[idx[hit]]
    return out



class KeyIndex:
    """Fixed-size keys -> slots, found and grown in bulk (no Python loop per key).

    Keys are kept sorted by a 64-bit fingerprint; a lookup is one
    ``searchsorted`` and a byte comparison with the stored key.  Two different
    keys with one fingerprint (about 1 in 10^7 at a million keys) are kept in
    a small dict instead.
    """

    def __init__(self, dtype: np.dtype[Any]) -> None:
        self.void = np.dtype((np.void, dtype.itemsize))
        self.fp = np.zeros(0, dtype=np.uint64)
        self.slot = np.zeros(0, dtype=np.int64)
        self.clash: dict[bytes, int] = {}

    def _probe(self, keys: Array) -> tuple[Array, Array, Array]:
        fp = fingerprint(keys)
        if len(self.fp) == 0:
            none = np.zeros(len(keys), dtype=bool)
            return fp, np.zeros(len(keys), dtype=np.int64), none
        pos = np.minimum(_search(self.fp, fp), len(self.fp) - 1)
        same_fp = self.fp[pos] == fp
        return fp, pos, same_fp

    def find(self, keys: Array, stored: Array) -> Array:
        """The slot of each key, or -1; ``stored`` holds the key of each slot."""
        _, pos, same_fp = self._probe(keys)
        out = np.full(len(keys), -1, dtype=np.int64)
        if not same_fp.any():
            return out
        cand = self.slot[pos]
        kv = np.ascontiguousarray(keys).view(self.void)
        hit = same_fp & (np.ascontiguousarray(stored).view(self.void)[cand] == kv)
        out[hit] = cand[hit]
        if self.clash:
            for i in np.flatnonzero(same_fp & ~hit).tolist():
                out[i] = self.clash.get(kv[i].tobytes(), -1)
        return out

    def add(self, keys: Array, slots: Array) -> None:
        """Index keys that :meth:`find` did not find."""
        fp, _, same_fp = self._probe(keys)
        _, first = np.unique(fp, return_index=True)
        dup = np.ones(len(keys), dtype=bool)
        dup[first] = False
        clash = same_fp | dup
        if clash.any():
            kv = np.ascontiguousarray(keys).view(self.void)
            for i in np.flatnonzero(clash).tolist():
                self.clash[kv[i].tobytes()] = int(slots[i])
        keep = ~clash
        order = np.argsort(fp[keep], kind="stable")
        new_fp, new_slot = fp[keep][order], slots[keep][order]
        at = np.searchsorted(self.fp, new_fp)
        self.fp = np.insert(self.fp, at, new_fp)
        self.slot = np.insert(self.slot, at, new_slot)

    def remove(self, keys: Array, slots: Array) -> None:
        """Forget keys found at ``slots``."""
        fp = fingerprint(keys)
        pos = np.searchsorted(self.fp, fp)
        ok = (pos < len(self.fp)) & (self.fp[np.minimum(pos, len(self.fp) - 1)] == fp)
        ok &= self.slot[np.minimum(pos, len(self.fp) - 1)] == slots
        self.fp = np.delete(self.fp, pos[ok])
        self.slot = np.delete(self.slot, pos[ok])
        if self.clash:
            kv = np.ascontiguousarray(keys).view(self.void)
            for i in np.flatnonzero(~ok).tolist():
                self.clash.pop(kv[i].tobytes(), None)
            if ok.any():
                self._promote()

    def _promote(self) -> None:
        """Move into the sorted index a side-dict key whose fingerprint it no
        longer holds (its twin there was removed): :meth:`find` looks in the
        side dict only for a fingerprint the index holds."""
        ck = np.frombuffer(b"".join(self.clash), dtype=self.void)
        cfp = fingerprint(ck)
        for i in range(len(ck)):
            at = int(np.searchsorted(self.fp, cfp[i]))
            if at < len(self.fp) and self.fp[at] == cfp[i]:
                continue
            slot = self.clash.pop(ck[i].tobytes())
            self.fp = np.insert(self.fp, at, cfp[i])
            self.slot = np.insert(self.slot, at, slot)

