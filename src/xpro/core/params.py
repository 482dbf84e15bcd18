"""Parameters of the domain that are not the algorithm's own: table sizes, the clock."""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["Sizes", "tai_now"]


@dataclass(frozen=True)
class Sizes:
    """Map sizes chosen before load (the flow table is the one to size)."""

    flows: int = 1 << 20
    dsts: int = 1 << 16
    prefixes: int = 16384
    #: (source, destination) pairs the daemon classifies for closed destinations.
    known: int = 1 << 16

    def max_entries(self) -> dict[str, int]:
        return {"flows": self.flows, "dirty0": self.flows, "dirty1": self.flows,
                "dsts": self.dsts,
                "allow_src": self.prefixes, "deny_src": self.prefixes,
                "dst_policy": self.prefixes, "known": self.known}


def tai_now() -> int:
    """The mesh's clock: TAI, in ns."""
    return time.clock_gettime_ns(time.CLOCK_TAI)
