"""Why a flow is (or would be) dropped: the question every operator of a rate filter asks.

:func:`explain` takes the filter's parameters, the flow's record and its
destination's aggregate as the kernel holds them, and the sync's last view of
the flow, and says what the *next* packet of that flow would meet, check by
check, in the order of Algorithm 2 (``bpf/xpro.bpf.c``, :meth:`xpro.core.model.Filter.packet`):
allow and deny lists, a destination closed to unknown sources, the T_T1 idle
reset, the per-source check (T_T2, T_F1), then the per-destination check
(T_T3, T_F2).  It is a pure function, tested
against the model: the verdict it predicts is the verdict the model gives.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

from xpro.core.layout import DST_ADDR_PORT, MODE_MONITOR, Known, Reason
from xpro.core.model import (
    NS_PER_S,
    FilterParams,
    flow_mode,
    mask_source,
    rate_exceeds,
    source_text,
    window_over,
)
from xpro.core.params import KnownPolicy

__all__ = ["Check", "Explanation", "explain", "known_reason", "rate_pps"]


def rate_pps(count: int, window_ns: int) -> float:
    """Packets per second over a window (0 for an empty window)."""
    return count * NS_PER_S / window_ns if window_ns > 0 else 0.0


@dataclass(frozen=True)
class Check:
    """One rule the next packet meets, and what it gives."""

    name: str
    fires: bool
    why: str


@dataclass(frozen=True)
class Explanation:
    """What the next packet of ``src -> dst`` would meet, and the resulting verdict."""

    src: str
    dst: str
    now: int
    verdict: str  # "pass" or "drop"
    reason: str  # a :class:`xpro.core.layout.Reason` name
    checks: tuple[Check, ...]
    local: dict[str, Any] | None = None  # the kernel record (global as of the last sync + local)
    synced: dict[str, Any] | None = None  # the sync's last view of the master record
    destination: dict[str, Any] | None = None  # the aggregate of the destination key
    limits: dict[str, Any] = field(default_factory=dict)
    #: The source the flow is keyed on: the prefix of ``filter.source_prefix_v6``
    #: (``_v4``) that holds ``src`` (``2001:db8:1:2::/64``), or the address itself.
    flow_src: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = [asdict(c) for c in self.checks]
        return d

    def text(self) -> str:
        """A few lines for a terminal."""
        word = {"pass": "PASSED", "drop": "DROPPED"}[self.verdict]
        lines = [f"{self.src} -> {self.dst}: the next packet is {word} "
                 f"({self.reason})"]
        if "/" in self.flow_src:
            lines.append(f"  source     counted as {self.flow_src}: the flow of every "
                         f"address in it (filter.source_prefix_v4/_v6)")
        if self.local is not None:
            loc = self.local
            lines.append(
                f"  record     c={loc['c']} over {loc['window_s']:.3f} s "
                f"= {loc['rate_pps']:.1f} packets/s; since the last sync {loc['local_c']} "
                f"counted here; idle {loc['idle_s']:.3f} s")
        else:
            lines.append("  record     none: the next packet starts a new window")
        if self.synced is not None:
            s = self.synced
            lines.append(f"  last sync  c={s['c']} over {s['window_s']:.3f} s "
                         f"= {s['rate_pps']:.1f} packets/s (the mesh-wide record)")
        if self.destination is not None:
            d = self.destination
            lines.append(f"  dest       c={d['c']} over {d['window_s']:.3f} s "
                         f"= {d['rate_pps']:.1f} packets/s (all sources)")
        for c in self.checks:
            mark = "FIRES" if c.fires else "ok   "
            lines.append(f"  {mark} {c.name:<12} {c.why}")
        return "\n".join(lines)


def _window(now: int, ts1: int) -> int:
    return max(0, now - ts1)


def explain(params: FilterParams, src: bytes, dst: bytes, *, now: int,
            flow: dict[str, int] | None, dest: dict[str, int] | None,
            synced: dict[str, int] | None = None, flow_key: bytes | None = None,
            src_text: str = "", dst_text: str = "", known: int = 0,
            closed_since: int | None = None, known_why: str = "",
            address: dict[str, int] | None = None, address_known: int = 0) -> Explanation:
    """Explain the next packet of a flow at time ``now`` (ns, the filter's clock).

    ``src``/``dst`` are 16-byte addresses (:func:`xpro.core.layout.addr16`);
    ``flow`` the kernel record (``ts1``, ``ts2``, ``c``, ``base_c``), ``dest``
    the destination aggregate (``ts1``, ``ts2``, ``c``), ``synced`` the sync's
    view of the master record (``ts1``, ``ts2``, ``c``); each ``None`` when
    absent.  ``src`` is the full address (the allow and deny lists match
    it); ``flow_key`` is the flow's key, its source masked to the configured
    prefix (by default ``src`` masked by the family of its address, then
    ``dst``); it selects the mode override;
    ``known`` is the flow's class in the ``known`` map (0: none);
    ``closed_since`` when the sync saw the destination close, and
    ``known_why`` why the source is or is not a known client
    (:func:`known_reason`), for the words.  In ``addr+port`` mode,
    ``address`` is the address's own aggregate and ``address_known`` the
    source's class for it (docs/semantics.rst, "Address aggregates").
    """
    p = params
    checks: list[Check] = []
    limits = {"t_f1": p.t_f1, "t_f2": p.t_f2, "t_t1_s": p.t_t1 / NS_PER_S,
              "t_t2_s": p.t_t2 / NS_PER_S, "t_t3_s": p.t_t3 / NS_PER_S}
    if flow_key is None:  # the source's prefix, by the family of its address
        ipv6 = ipaddress.IPv6Address(src).ipv4_mapped is None
        flow_key = mask_source(src, ipv6, p.source_prefix_v4, p.source_prefix_v6) + dst
    key = flow_key
    monitor = flow_mode(p, key) == MODE_MONITOR
    flow_src = source_text(key[:16], p)

    def done(verdict: str, reason: Reason) -> Explanation:
        return Explanation(src_text, dst_text, now, verdict, reason.name, tuple(checks),
                           _view(flow, now, with_local=True), _view(synced, now),
                           _view(dest, now), limits, flow_src)

    if p.allow and any(q.contains(src) for q in p.allow):
        checks.append(Check("allow", True, "the source is in an allow prefix: always passed"))
        return done("pass", Reason.ALLOW)
    if p.deny and any(q.contains(src) for q in p.deny):
        checks.append(Check("deny", True, "the source is in a deny prefix: always dropped"))
        return done("drop", Reason.DENY)

    # A destination closed to unknown sources (judged before the packet).
    closed = dest is not None and _closed(p, dest, now)
    if closed:
        assert dest is not None
        who = {0: "an unknown source", Known.CLIENT: "a known client"}.get(
            known, "a heavy source")
        window = now - dest["ts1"]
        since = (f" since {(now - closed_since) / NS_PER_S:.1f} s"
                 if closed_since is not None else "")
        because = f": {known_why}" if known_why else ""
        checks.append(Check("closed", known == 0,
                            f"the destination is closed to unknown sources{since} "
                            f"({dest['c']} packets in {window / NS_PER_S:.3f} s = "
                            f"{rate_pps(dest['c'], window):.1f}/s > T_F2 {p.t_f2}/s); "
                            f"this is {who}{because}"))
        if known == 0:
            return done("pass" if monitor else "drop",
                        Reason.MON_DST_CLOSED if monitor else Reason.DST_CLOSED)
    by_port = p.dst_mode == DST_ADDR_PORT
    a_closed = by_port and address is not None and _closed(p, address, now, p.t_f2_addr)
    if a_closed:
        assert address is not None
        who = {0: "an unknown source", Known.CLIENT: "a known client"}.get(
            address_known, "a heavy source")
        window = now - address["ts1"]
        checks.append(Check("address-closed", address_known == 0,
                            f"the address (all its ports) is closed to unknown sources "
                            f"({address['c']} packets in {window / NS_PER_S:.3f} s = "
                            f"{rate_pps(address['c'], window):.1f}/s > t_f2_address "
                            f"{p.t_f2_addr}/s); this is {who} of the address"))
        if address_known == 0:
            return done("pass" if monitor else "drop",
                        Reason.MON_DST_CLOSED if monitor else Reason.DST_CLOSED)

    # The record the next packet would see (Algorithm 2, lines 1-11).
    started = False
    if flow is None:
        ts1, c = now, 1
        started = True
        checks.append(Check("new", False, "no record: the packet opens a window of its own"))
    elif window_over(now, flow["ts2"], p.t_t1):
        ts1, c = now, 1
        started = True
        idle = now - flow["ts2"]
        checks.append(Check("idle-reset", False,
                            f"idle {idle / NS_PER_S:.3f} s > T_T1 {p.t_t1 / NS_PER_S:g} s: "
                            "the window starts again" if idle > 0 else
                            f"its last packet is {-idle / NS_PER_S:.3f} s ahead of the clock "
                            f"(> T_T1 {p.t_t1 / NS_PER_S:g} s: the clock was stepped back): "
                            "the window starts again"))
    else:
        ts1, c = flow["ts1"], flow["c"] + 1
    per_src = _rate_check("per-source", c, now - ts1, p.t_t2, "T_T2", p.t_f1, "T_F1")
    checks.append(per_src)
    if per_src.fires:
        return done("pass" if monitor else "drop",
                    Reason.MON_SRC_RATE if monitor else Reason.SRC_RATE)

    # The destination aggregate (lines 18-25, docs/semantics.rst, "The per-destination check").
    d_ts1, d_c = _next_window(dest, ts1, started, now, p, closed=closed)
    if closed and known != Known.CLIENT:
        checks.append(Check("closed", True, "a heavy source is never served by a closed "
                                            "destination"))
        return done("pass" if monitor else "drop",
                    Reason.MON_DST_CLOSED if monitor else Reason.DST_CLOSED)
    per_dst = _rate_check("per-dest", d_c, now - d_ts1, p.t_t3, "T_T3", p.t_f2, "T_F2")
    checks.append(per_dst)
    if per_dst.fires:
        return done("pass" if monitor else "drop",
                    Reason.MON_DST_RATE if monitor else Reason.DST_RATE)
    if not by_port:
        return done("pass", Reason.PASS)
    # The address's own aggregate (docs/semantics.rst, "Address aggregates").
    a_ts1, a_c = _next_window(address, ts1, started, now, p, closed=a_closed)
    if a_closed and address_known != Known.CLIENT:
        checks.append(Check("address-closed", True, "a heavy source is never served by a "
                                                    "closed address"))
        return done("pass" if monitor else "drop",
                    Reason.MON_DST_CLOSED if monitor else Reason.DST_CLOSED)
    per_addr = _rate_check("per-address", a_c, now - a_ts1, p.t_t3, "T_T3", p.t_f2_addr,
                           "t_f2_address")
    checks.append(per_addr)
    if per_addr.fires:
        return done("pass" if monitor else "drop",
                    Reason.MON_DST_RATE if monitor else Reason.DST_RATE)
    return done("pass", Reason.PASS)


def _next_window(rec: dict[str, int] | None, ts1: int, started: bool, now: int,
                 p: FilterParams, *, closed: bool) -> tuple[int, int]:
    """The window start and count an aggregate (a destination key's or an
    address's) judges the next packet by (lines 18-25): a new window if it has
    none or it is over; while it is closed (the packet is a known client's),
    the count of its known clients."""
    if rec is None:
        return ts1, 1
    if window_over(now, rec["ts2"], p.t_t1):
        return now, 1
    start = min(rec["ts1"], ts1) if started else rec["ts1"]
    return start, (rec.get("kc", 0) if closed else rec["c"]) + 1


def known_reason(rec: dict[str, int] | None, now: int, p: FilterParams, policy: KnownPolicy,
                 *, known: int, closed: bool) -> str:
    """Why a source is (or is not) a known client of a destination, from its
    mesh-wide record (docs/semantics.rst, "Closed destinations and known clients")."""
    if known == Known.HEAVY:
        return "it is over T_F1 in the mesh"
    if rec is None:
        return ("no record of it reached this proxy" if not known
                else "it was established before the destination closed")
    window, c = rec["ts2"] - rec["ts1"], rec["c"]
    facts = (f"its window is {window / NS_PER_S:.1f} s with {c} packets "
             f"(known.min_age {policy.min_age / NS_PER_S:g} s, "
             f"known.min_packets {policy.min_packets})")
    if known:
        return f"it was established before the destination closed ({facts})"
    if window_over(now, rec["ts2"], p.t_t1):
        return "its record is idle"
    if window > p.t_t2 and rate_exceeds(c, window, p.t_f1):
        return "it is over T_F1"
    if window < policy.min_age or c < policy.min_packets:
        return f"{facts}: too young or too few packets"
    if closed:
        return f"it qualified only after the destination closed ({facts})"
    return f"it qualifies and joins at the next sync round ({facts})"


def _closed(p: FilterParams, dest: dict[str, int], now: int, limit: int | None = None) -> bool:
    """:meth:`xpro.core.model.Filter.dst_closed` on a destination record dict."""
    window = now - dest["ts1"]
    return (not window_over(now, dest["ts2"], p.t_t1) and window > p.t_t3
            and rate_exceeds(dest["c"], window, p.t_f2 if limit is None else limit))


def _rate_check(name: str, count: int, window: int, t_min: int, t_min_name: str,
                limit: int, limit_name: str) -> Check:
    """A rate rule: judged once the window is longer than ``t_min``, fires above ``limit``."""
    if window <= t_min:
        return Check(name, False, f"window {window / NS_PER_S:.3f} s <= {t_min_name} "
                                  f"{t_min / NS_PER_S:g} s: not judged yet")
    fires = rate_exceeds(count, window, limit)
    rel = ">" if fires else "<="
    return Check(name, fires, f"{count} packets in {window / NS_PER_S:.3f} s = "
                              f"{rate_pps(count, window):.1f}/s {rel} {limit_name} {limit}/s")


def _view(rec: dict[str, int] | None, now: int, *, with_local: bool = False
          ) -> dict[str, Any] | None:
    if rec is None:
        return None
    window = _window(now, rec["ts1"])
    out: dict[str, Any] = {
        "ts1": rec["ts1"], "ts2": rec["ts2"], "c": rec["c"],
        "window_s": window / NS_PER_S, "rate_pps": rate_pps(rec["c"], window),
        "idle_s": max(0, now - rec["ts2"]) / NS_PER_S,
    }
    if with_local:
        out["local_c"] = rec["c"] - rec.get("base_c", 0)
    return out


