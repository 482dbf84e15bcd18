"""A hash table of fixed-size records in numpy arrays, looked up and filled in bulk.

The userspace filter keeps its flow and destination records here, in the
same dtypes as the kernel maps (:mod:`xpro.core.layout`).  Open addressing with
linear probing: a lookup of a whole batch of keys is a handful of vectorised
probe rounds (the table is kept at most half full, so chains are short), not
a Python loop per key.  Deleted slots become tombstones until the next
rebuild.  Like the kernel's LRU hash, a full table evicts the records idle
longest (smallest ``ts2``) to make room.

The keys are chosen by the traffic, so the hash is keyed: every table mixes
a random 64-bit key (from :mod:`secrets`) into its hash, and sources chosen
offline to share one slot (a spoofed flood can choose its sources freely) no
longer do.  The keyed hash is a mix, not a cryptographic PRF; as a second
line, a probe sequence longer than :meth:`Table.probe_limit` (about twice the
longest chain a random half-full table shows) has the table rebuilt with a
fresh key at the next :meth:`Table.reserve` (docs/operations.rst,
"Isolation").
"""

from __future__ import annotations

import secrets
import struct
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]

_EMPTY, _USED, _TOMB = 0, 1, 2
_MULT = np.array([0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                  0x9E3779B97F4A7C15, 0xFF51AFD7ED558CCD], dtype=np.uint64)
#: The hash's starting state, before the key is mixed in (key 0: the unkeyed hash).
_SEED = 0x9E3779B97F4A7C15
_MULT_INT = [int(m) for m in _MULT]
_M64 = (1 << 64) - 1
#: Up to this many keys are hashed in Python integers (:meth:`Table._hash_few`).
_FEW = 2


def new_key() -> int:
    """A fresh random 64-bit hash key."""
    return secrets.randbits(64)


class Table:
    """Records of ``val_dtype`` keyed by ``key_dtype``, at most ``max_entries`` of them.

    ``aux`` is one spare byte per record for the owner (the filter keeps its
    dirty-set bits there); it moves with the record when the table grows.

    ``key`` is the hash key (default: a random one, :func:`new_key`); 0 is
    the unkeyed hash, and ``rekey=False`` keeps the key whatever the probes
    (both for tests that need the table to stay predictable).  ``probes``
    counts the probe steps of every :meth:`find` and :meth:`insert` (one per
    key per slot looked at), ``longest`` the longest probe sequence seen and
    ``rekeys`` the rebuilds with a fresh key.
    """

    def __init__(self, key_dtype: np.dtype[Any], val_dtype: np.dtype[Any],
                 max_entries: int, *, key: int | None = None, rekey: bool = True) -> None:
        self.key_dtype = key_dtype
        self.val_dtype = val_dtype
        self.void = np.dtype((np.void, key_dtype.itemsize))
        self.max_entries = max_entries
        self.key = new_key() if key is None else key & 0xFFFFFFFFFFFFFFFF
        self.rekey = rekey
        self.probes = 0
        self.longest = 0
        self.rekeys = 0
        self._long = False  # a probe went past probe_limit: rekey at the next reserve()
        self._alloc(1024)

    def _alloc(self, cap: int) -> None:
        self.cap = cap
        self.mask = cap - 1
        self.keys: Array = np.zeros(cap, dtype=self.key_dtype)
        self.vals: Array = np.zeros(cap, dtype=self.val_dtype)
        self.aux: Array = np.zeros(cap, dtype=np.uint8)
        self.state: Array = np.zeros(cap, dtype=np.uint8)
        self.fp: Array = np.zeros(cap, dtype=np.uint64)
        self.used = 0
        self.tomb = 0

    def __len__(self) -> int:
        return self.used

    def get(self, slots: Array) -> Array:
        """The records at ``slots`` (a row gather of raw bytes: faster than a
        structured fancy index)."""
        raw = self.vals.view(np.uint8).reshape(self.cap, self.val_dtype.itemsize)
        out: Array = raw[slots].view(self.val_dtype).reshape(len(slots))
        return out

    def put(self, slots: Array, vals: Array) -> None:
        """Overwrite the records at ``slots``."""
        raw = self.vals.view(np.uint8).reshape(self.cap, self.val_dtype.itemsize)
        src = np.ascontiguousarray(vals, dtype=self.val_dtype)
        raw[slots] = src.view(np.uint8).reshape(len(src), self.val_dtype.itemsize)

    def slots(self) -> Array:
        """The slots in use."""
        return np.flatnonzero(self.state == _USED)

    def clear(self) -> None:
        self._alloc(1024)

    @property
    def probe_limit(self) -> int:
        """The longest probe sequence tolerated before a rekey: 8 log2(capacity),
        at least 96.

        Measured over 3000 and 8000 random half-full tables of 8192 slots:
        the longest chain passed 40 in 1 to 1.5 %, 50 in 0.07 to 0.16 %
        (the longest seen: 65), and each 5 more slots divide that by about
        2.6, so a random table passes 104 about once in 10**7 (a rekey it
        does not need costs one rebuild, nothing else).  At 2**21 slots the
        longest chain averaged 52; the limit there is 168.  A chain built
        to collide is thousands long."""
        return max(96, 8 * (self.cap.bit_length() - 1))

    def _probed(self, rounds: int, steps: int) -> None:
        self.probes += steps
        self.longest = max(self.longest, rounds)
        if rounds > self.probe_limit and self.rekey:
            self._long = True

    def _hash(self, keys: Array) -> Array:
        """A 64-bit hash of each key, keyed by :attr:`key`, whose low bits (the
        slot) depend on every byte."""
        c = np.ascontiguousarray(keys, dtype=self.key_dtype)
        if len(c) <= _FEW:
            return self._hash_few(c)
        raw = c.view(np.uint8).reshape(len(c), self.key_dtype.itemsize)
        width = raw.shape[1]
        padded = np.zeros((len(c), (width + 7) // 8 * 8), dtype=np.uint8)
        padded[:, :width] = raw
        words = padded.view("<u8")
        h = np.full(len(c), _SEED ^ self.key, dtype=np.uint64)
        for j in range(words.shape[1]):
            h ^= words[:, j]
            h *= _MULT[j % len(_MULT)]
            h ^= h >> np.uint64(29)
        # MurmurHash3's finaliser: products carry bits only upward; fold them down.
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
        return h

    def _hash_few(self, c: Array) -> Array:
        """:meth:`_hash` of a handful of keys in Python integers (numpy's fixed
        cost per operation is most of the time for one key: a one-source flood's
        destination)."""
        width = self.key_dtype.itemsize
        nwords = (width + 7) // 8
        out = np.empty(len(c), dtype=np.uint64)
        for i, raw in enumerate(c.tobytes()[k : k + width] for k in range(0, len(c) * width,
                                                                            width)):
            h = _SEED ^ self.key
            for j, w in enumerate(struct.unpack(f"<{nwords}Q", raw.ljust(nwords * 8, b"\0"))):
                h = ((h ^ w) * _MULT_INT[j % len(_MULT_INT)]) & _M64
                h ^= h >> 29
            h ^= h >> 33
            h = (h * 0xFF51AFD7ED558CCD) & _M64
            h ^= h >> 33
            h = (h * 0xC4CEB9FE1A85EC53) & _M64
            h ^= h >> 33
            out[i] = h
        return out

    def find(self, keys: Array, hashes: Array | None = None) -> Array:
        """The slot of each key, or -1 (``hashes``: their :meth:`hash`, if known)."""
        n = len(keys)
        out = np.full(n, -1, dtype=np.int64)
        if n == 0 or self.used == 0:
            return out
        keys = np.ascontiguousarray(keys, dtype=self.key_dtype)
        fp = self._hash(keys) if hashes is None else hashes
        kv = keys.view(self.void)
        stored = self.keys.view(self.void)
        pos = (fp & np.uint64(self.mask)).astype(np.int64)
        act = np.arange(n)
        rounds = steps = 0
        while len(act):
            rounds += 1
            steps += len(act)
            p = pos[act]
            st = self.state[p]
            hit = (st == _USED) & (self.fp[p] == fp[act])
            if hit.any():
                h = np.flatnonzero(hit)
                hit[h] = stored[p[h]] == kv[act[h]]
            out[act[hit]] = p[hit]
            act = act[(st != _EMPTY) & ~hit]
            pos[act] = (pos[act] + 1) & self.mask
        self._probed(rounds, steps)
        return out

    def reserve(self, n: int) -> None:
        """Make room for ``n`` more records, growing (and moving every record to a
        new slot) now if need be.  Call it before :meth:`find` when the slots
        found are used after an :meth:`insert`: an insert never moves records.

        A probe sequence past :attr:`probe_limit` since the last call has the
        table rebuilt here with a fresh key: hashes computed before this call
        are then stale (compare :attr:`key` before and after)."""
        if self._long:
            self._long = False
            self.key = new_key()
            self.rekeys += 1
            self._rebuild(self.used + n)
        elif 2 * (self.used + self.tomb + n) > self.cap:
            self._rebuild(self.used + n)

    def insert(self, keys: Array, vals: Array, hashes: Array | None = None) -> Array:
        """Add records whose keys are absent and distinct, in room :meth:`reserve`
        made; returns their slots."""
        n = len(keys)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if 2 * (self.used + self.tomb + n) > self.cap:
            raise RuntimeError(f"Table.insert of {n} records without reserve(): "
                               "growing now would move the slots the caller holds")
        keys = np.ascontiguousarray(keys, dtype=self.key_dtype)
        fp = self._hash(keys) if hashes is None else hashes
        kw, vw = self.key_dtype.itemsize, self.val_dtype.itemsize
        kraw = keys.view(np.uint8).reshape(n, kw)
        vraw = np.ascontiguousarray(vals, dtype=self.val_dtype).view(np.uint8).reshape(n, vw)
        skeys = self.keys.view(np.uint8).reshape(self.cap, kw)
        svals = self.vals.view(np.uint8).reshape(self.cap, vw)
        out = np.empty(n, dtype=np.int64)
        pos = (fp & np.uint64(self.mask)).astype(np.int64)
        act = np.arange(n)
        rounds = steps = 0
        while len(act):
            rounds += 1
            steps += len(act)
            p = pos[act]
            free = self.state[p] != _USED
            cand, cp = act[free], p[free]
            _, first = np.unique(cp, return_index=True)
            win, wp = cand[first], cp[first]
            self.tomb -= int((self.state[wp] == _TOMB).sum())
            self.state[wp] = _USED
            self.fp[wp] = fp[win]
            skeys[wp] = kraw[win]
            svals[wp] = vraw[win]
            self.aux[wp] = 0
            out[win] = wp
            lose = np.ones(len(act), dtype=bool)
            lose[np.flatnonzero(free)[first]] = False
            act = act[lose]
            pos[act] = (pos[act] + 1) & self.mask
        self.used += n
        self._probed(rounds, steps)
        return out

    def delete(self, slots: Array) -> None:
        slots = np.unique(np.asarray(slots, dtype=np.int64))
        slots = slots[self.state[slots] == _USED]
        self.state[slots] = _TOMB
        self.vals[slots] = 0
        self.aux[slots] = 0
        self.used -= len(slots)
        self.tomb += len(slots)

    def make_room(self, n_new: int, keep: Array) -> Array:
        """Evict the least recently used records so ``n_new`` more fit (at least a
        sixteenth of the table at a time); returns the evicted keys.  Slots in
        ``keep`` (records in use by the batch) stay."""
        over = self.used + n_new - self.max_entries
        if over <= 0:
            return np.zeros(0, dtype=self.key_dtype)
        # A pass over the table costs O(table): under a flood of new keys,
        # make room for many batches at once (1/16 of the table).
        over = max(over, self.max_entries // 16)
        used = self.slots()
        if len(keep):
            used = used[~np.isin(used, keep)]
        if len(used) == 0:
            return np.zeros(0, dtype=self.key_dtype)
        k = min(over, len(used))
        ts2 = self.vals["ts2"][used]
        victims = used[np.argpartition(ts2, k - 1)[:k]] if k < len(used) else used
        gone = self.keys[victims].copy()
        self.delete(victims)
        return gone

    def _rebuild(self, need: int) -> None:
        live = self.slots()
        keys, vals, aux = self.keys[live], self.vals[live], self.aux[live]
        cap = 1024
        while 2 * need > cap:
            cap *= 2
        self._alloc(cap)
        slots = self.insert(keys, vals)
        self.aux[slots] = aux
