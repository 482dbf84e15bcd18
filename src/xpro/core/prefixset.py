"""Address prefixes matched against whole arrays of addresses.

The vectorised counterpart of :func:`xpro.core.model.longest_match`: the userspace
filter checks its allow, deny and policy lists with it for a whole batch, and
the offload backend its drop set at every refresh.  Addresses are the
16-byte (IPv4-mapped) form of :mod:`xpro.core.layout`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from xpro.core.model import Prefix

__all__ = ["PrefixSet"]

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class PrefixSet:
    """Prefixes with a value each, as (network, mask) pairs of two big-endian
    64-bit words: the longest match of a whole array of addresses at once."""

    net_hi: Array
    net_lo: Array
    mask_hi: Array
    mask_lo: Array
    values: Array
    lengths: Array

    @classmethod
    def build(cls, prefixes: Mapping[Prefix, int]) -> PrefixSet:
        items = sorted(prefixes.items(), key=lambda kv: kv[0].length)
        full = (1 << 128) - 1
        nets, masks = [], []
        for p, _ in items:
            m = (full << (128 - p.length)) & full
            nets.append(p.network & m)
            masks.append(m)
        return cls(
            np.array([x >> 64 for x in nets], dtype=np.uint64),
            np.array([x & 0xFFFFFFFFFFFFFFFF for x in nets], dtype=np.uint64),
            np.array([x >> 64 for x in masks], dtype=np.uint64),
            np.array([x & 0xFFFFFFFFFFFFFFFF for x in masks], dtype=np.uint64),
            np.array([v for _, v in items], dtype=np.int64),
            np.array([p.length for p, _ in items], dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.values)

    def lookup(self, addrs: Array, default: int) -> Array:
        """The value of the longest prefix holding each address (``default`` if none)."""
        hi, lo = _words(addrs)
        out = np.full(len(addrs), default, dtype=np.int64)
        for i in range(len(self.values)):  # shortest first: longer ones override
            hit = ((hi & self.mask_hi[i]) == self.net_hi[i]) & (
                (lo & self.mask_lo[i]) == self.net_lo[i])
            out[hit] = self.values[i]
        return out

    def contains(self, addrs: Array) -> Array:
        """Whether each address is in one of the prefixes."""
        return self.lookup(addrs, -1) >= 0

    def overlaps(self, addrs: Array, lengths: Array) -> Array:
        """Whether each prefix (an address of ``addrs`` and its length in
        ``lengths``) overlaps one of the set's: one of the two holds the other."""
        hi, lo = _words(addrs)
        out = np.zeros(len(addrs), dtype=bool)
        for i in range(len(self.values)):
            bits = np.minimum(np.asarray(lengths, dtype=np.int64), self.lengths[i])
            out |= (((hi ^ self.net_hi[i]) & _top(np.minimum(bits, 64))) == 0) & (
                ((lo ^ self.net_lo[i]) & _top(np.maximum(bits - 64, 0))) == 0)
        return out


def _words(addrs: Array) -> tuple[Array, Array]:
    """16-byte addresses as their two big-endian 64-bit words."""
    words = np.ascontiguousarray(addrs).view(">u8").reshape(len(addrs), 2)
    return words[:, 0].astype(np.uint64), words[:, 1].astype(np.uint64)


def _top(bits: Array) -> Array:
    """A u64 with its top ``bits`` bits (0 to 64) set, per element."""
    b = np.asarray(bits, dtype=np.uint64)
    full = np.uint64(2**64 - 1)
    return np.where(b == 0, np.uint64(0), full << (np.uint64(64) - np.maximum(b, 1)))
