"""Parameters of the domain that are not the algorithm's own: table sizes, the clock."""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["KnownPolicy", "Sizes", "tai_now"]


@dataclass(frozen=True)
class Sizes:
    """Map sizes chosen before load (the flow table is the one to size)."""

    flows: int = 1 << 20
    dsts: int = 1 << 16
    prefixes: int = 16384
    #: (source, destination) pairs the daemon classifies for closed destinations.
    known: int = 1 << 18
    #: Slots of the filters of known sources (2 KiB each, a power of two).
    known_filters: int = 4096

    def max_entries(self) -> dict[str, int]:
        return {"flows": self.flows, "dirty0": self.flows, "dirty1": self.flows,
                "dsts": self.dsts,
                "allow_src": self.prefixes, "deny_src": self.prefixes,
                "dst_policy": self.prefixes, "known": self.known,
                "known_slots": self.known_filters}


@dataclass(frozen=True)
class KnownPolicy:
    """Who becomes a known client of a destination: a flow whose window spans
    ``min_age`` ns and holds ``min_packets`` packets; at most ``capacity`` of
    them in the table (docs/semantics.rst, "Closed destinations and known clients")."""

    min_age: int = 2_000_000_000
    min_packets: int = 8
    capacity: int = 1 << 18


def tai_now() -> int:
    """The mesh's clock: TAI, in ns."""
    return time.clock_gettime_ns(time.CLOCK_TAI)
