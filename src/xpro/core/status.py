"""What the mesh and the sync report: values passed to hooks, status and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Closure", "ProxyStatus", "SyncStats", "SyncStatus"]


@dataclass(frozen=True)
class ProxyStatus:
    """What a proxy last published: its workload W (packets/s), when, and how far
    the store's clock was ahead of its own (ns; None: not measured)."""

    workload: float
    last_seen: int  # ns, the proxy's clock (TAI) as the mesh's time (docs/sync.rst)
    offset: int | None = None


@dataclass(frozen=True)
class Closure:
    """A destination that closed or reopened in a round, with the mesh-wide figures."""

    dst: bytes  # the 20-byte destination key
    closed: bool  # True: it closed; False: it reopened
    count: int  # c* (admitted plus dropped while closed) in the window
    window: int  # ns
    known: int  # known clients of it in the table
    since: int  # when it closed (ns); for a reopening, when it had closed


@dataclass
class SyncStats:
    """What one round did (passed to ``xpro_sync_completed``)."""

    started: int = 0  # ns
    seconds: float = 0.0
    flows: int = 0  # local records read
    merged: int = 0  # sent to the master
    pulled: int = 0  # master records taken in (changes, or candidates)
    partials: int = 0  # destination partials taken in (docs/sync.rst, "What a round pulls")
    clients_pulled: int = 0  # known-client records read for closed destinations
    # Destinations whose partials changed that this proxy neither holds nor
    # needs (under ``near`` x their limit): not written into its program.
    skipped_dsts: int = 0
    # Aggregates written with their recent window: their recent rate over their
    # limit and over their window's (docs/semantics.rst, "The recent rate").
    recent: int = 0
    created: int = 0  # local records created from the master
    applied: int = 0  # kernel updates applied
    raced: int = 0  # updates skipped: reset in the kernel meanwhile
    expired: int = 0
    destinations: int = 0
    workload: float = 0.0
    peers: dict[str, ProxyStatus] = field(default_factory=dict)
    error: str = ""  # a store error after the merge (the round still completed)
    closures: list[Closure] = field(default_factory=list)  # closed or reopened this round
    closed: int = 0  # destinations closed to unknown sources after the round
    known: int = 0  # entries of the known-client table
    known_overflow: int = 0  # clients that did not fit in the known-client table
    # Values from the store out of bounds, dropped from the round (docs/sync.rst,
    # "Values from the store"): how many, and the first few as (what, why).
    quarantined: int = 0
    bad_values: list[tuple[str, str]] = field(default_factory=list)
    # Destinations whose share from other proxies was cut to what the mesh's
    # workloads can back.
    unbacked: int = 0
    # Clocks (docs/sync.rst, "Clocks"): the store's clock minus this proxy's
    # (ns; None: the store has none), and the shift applied to what it reads
    # and writes (its offset minus the mesh's median).
    clock_offset: int | None = None
    skew: int = 0
    # How far this proxy's clock is off the mesh's, as measured (ns; None: not
    # measured), whether or not it was corrected: ``skew`` is 0 below 50 ms
    # and beyond the correction's bound.
    skew_measured: int | None = None
    # Bounded work (docs/sync.rst): changes were left for the next round; flows
    # the mirror forgot at its cap; heartbeats beyond the peers' cap.
    pull_capped: bool = False
    mirror_capped: int = 0
    peers_capped: int = 0


@dataclass
class SyncStatus:
    """The sync loop's health, as ``xpro status`` and the metrics show it."""

    healthy: bool = True
    last_ok: int = 0  # ns, when the last round completed
    last_error: str = ""
    failures: int = 0  # consecutive failed rounds
    failed_total: int = 0  # every failed attempt since start (store or bug)
    rounds: int = 0
    last: SyncStats | None = None


