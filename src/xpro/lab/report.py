"""What a lab run measured, as figures, a table, JSON and plots.

A :class:`Run` holds what was sent and what reached the service, per role
(attack, legit) and per time bin, plus per source.  :meth:`Run.metrics`
turns it into the figures the scenarios report:

* ``attack_dropped_pct`` / ``legit_dropped_pct``: the share of the packets
  sent that did not reach the service, counted from the end of the second
  sync period after the attack started (``attack_start + 2 * period``) to
  the end of the run -- the time a mesh needs to see and share a flow;
* ``attack_dropped_total_pct`` / ``legit_dropped_total_pct``: the same over
  the whole run;
* ``time_to_first_drop_s``: from the attack's start to the first 0.1-s bin
  in which at least 5 % of the attack did not arrive;
* ``time_to_converge_s``: from the attack's start to the start of the first
  0.5-s window from which on every window of the attack has at least 95 %
  dropped (``None``: never);
* ``attack_reached_service``: attack packets the service received;
* for each *group* of legitimate clients a scenario accounts on its own
  (``spoofed-flood``: ``victim_clients``, ``other_clients``,
  ``new_clients``): ``{group}_dropped_pct``, counted like
  ``legit_dropped_pct``, with ``{group}_sent`` and ``{group}_received``;
  and ``{group}_dropped_converged_pct``, counted from the moment the attack
  converged (``time_to_converge_s``) to the end: how the group fares while
  the filter keeps the attack out (``None``: it never converged).

Sent and received are counted by the clock all processes share, so a bin's
figures compare directly (the path through a proxy takes well under a bin).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from xpro.lab.traffic import ROLES

__all__ = ["Run", "format_table", "plot_runs", "plot_sweep", "to_json"]

Array = npt.NDArray[Any]
_A, _L = ROLES.index("attack"), ROLES.index("legit")

#: A bin counts as "dropping" when at least this share of the attack is missing.
FIRST_DROP_SHARE = 0.05
#: Converged: every window from then on drops at least this share.
CONVERGED_SHARE = 0.95
#: Window of the convergence test, seconds.
CONVERGE_WINDOW = 0.5
#: Colours of the groups' lines in the plots, in the order of ``Run.groups``.
_GROUP_COLORS = ("tab:blue", "tab:olive", "tab:purple", "tab:brown")


def _pct(sent: float, received: float) -> float | None:
    if sent <= 0:
        return None
    return round(max(0.0, 100.0 * (1.0 - received / sent)), 2)


@dataclass
class Run:
    """One variant of one scenario, measured."""

    name: str
    width: float
    sent: Array
    received: Array
    sent_by_source: dict[str, int]
    received_by_source: dict[str, int]
    legit_sources: frozenset[str]
    attack_start: float
    attack_end: float
    duration: float
    period: float
    events: list[tuple[float, str]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: When the proxies' own counters first showed a rate drop (s after the
    #: attack started; sampled every 50 ms; in-process proxies only).
    first_filter_drop: float | None = None
    #: Groups of legitimate clients: rows ``len(ROLES) + i`` of ``sent`` and
    #: ``received`` (see :class:`xpro.lab.traffic.Bins`).
    groups: tuple[str, ...] = ()
    #: Scenario-specific figures added to :meth:`metrics` as they are.
    info: dict[str, Any] = field(default_factory=dict)

    def _row(self, name: str) -> int:
        if name in ROLES:
            return ROLES.index(name)
        return len(ROLES) + self.groups.index(name)

    def _bin(self, t: float) -> int:
        return min(max(round(t / self.width), 0), int(self.sent.shape[1]))

    def dropped_pct(self, role: str, start: float = 0.0, end: float = math.inf) -> float | None:
        """Share of ``role``'s (or a group's) packets sent in ``[start, end)`` that did
        not arrive (%)."""
        r = self._row(role)
        a = self._bin(start)
        b = self.sent.shape[1] if math.isinf(end) else self._bin(end)
        return _pct(float(self.sent[r, a:b].sum()), float(self.received[r, a:b].sum()))

    def time_to_first_drop(self) -> float | None:
        a, b = self._bin(self.attack_start), self._bin(self.attack_end)
        for i in range(a, b):
            s, r = self.sent[_A, i], self.received[_A, i]
            if s >= 5 and (s - r) >= FIRST_DROP_SHARE * s:
                return round(i * self.width - self.attack_start, 2) + 0.0  # never -0.0
        return None

    def time_to_converge(self) -> float | None:
        step = max(1, round(CONVERGE_WINDOW / self.width))
        a, b = self._bin(self.attack_start), self._bin(self.attack_end)
        windows = []
        for i in range(a, b, step):
            s = float(self.sent[_A, i:min(i + step, b)].sum())
            r = float(self.received[_A, i:min(i + step, b)].sum())
            windows.append((i, s <= 0 or (s - r) >= CONVERGED_SHARE * s))
        found: int | None = None
        for i, ok in windows:
            if ok and found is None:
                found = i
            elif not ok:
                found = None
        if found is None or not any(self.sent[_A, a:b]):
            return None
        return round(found * self.width - self.attack_start, 2)

    def legit_per_source(self) -> tuple[int, float | None]:
        """(legit sources that lost any packet, the worst loss among them in %)."""
        losses = []
        for src in self.legit_sources:
            s = self.sent_by_source.get(src, 0)
            if s:
                losses.append((s - self.received_by_source.get(src, 0)) / s)
        hit = sum(1 for x in losses if x > 0)
        worst = round(100.0 * max(losses), 2) if losses else None
        return hit, worst

    def metrics(self) -> dict[str, Any]:
        settled = self.attack_start + 2 * self.period
        hit, worst = self.legit_per_source()
        attack_sent = int(self.sent[_A].sum())
        legit_sent = int(self.sent[_L].sum())
        converge = self.time_to_converge()
        converged = None if converge is None else self.attack_start + converge
        groups: dict[str, Any] = {}
        for g in self.groups:
            r = self._row(g)
            groups[f"{g}_dropped_pct"] = self.dropped_pct(g, settled)
            groups[f"{g}_dropped_converged_pct"] = (None if converged is None
                                                    else self.dropped_pct(g, converged))
            groups[f"{g}_sent"] = int(self.sent[r].sum())
            groups[f"{g}_received"] = int(self.received[r].sum())
        return {
            "attack_dropped_pct": self.dropped_pct("attack", settled),
            "legit_dropped_pct": self.dropped_pct("legit", settled),
            **groups,
            "attack_dropped_total_pct": self.dropped_pct("attack"),
            "legit_dropped_total_pct": self.dropped_pct("legit"),
            "time_to_first_drop_s": self.time_to_first_drop(),
            "time_to_converge_s": converge,
            "time_to_first_filter_drop_s": self.first_filter_drop,
            "attack_sent": attack_sent,
            "attack_reached_service": int(self.received[_A].sum()),
            "legit_sent": legit_sent,
            "legit_received": int(self.received[_L].sum()),
            "legit_sources_hit": hit,
            "legit_worst_source_dropped_pct": worst,
            "measured_from_s": round(settled, 3),
            "attack_start_s": self.attack_start,
            "attack_end_s": self.attack_end,
            "verdicts": {k: v for k, v in self.counters.items() if v},
            "events": [{"t_s": round(t, 2), "what": w} for t, w in self.events],
            "notes": list(self.notes),
            **self.info,
        }


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}{unit}" if unit == "%" else f"{v:.2f}{unit}"
    return f"{v}{unit}"


def format_table(runs: Sequence[Run], *, title: str = "") -> str:
    """The side-by-side table of the variants of one scenario."""
    header = ["", *(r.name for r in runs)]
    ms = [r.metrics() for r in runs]
    rows: list[list[str]] = [
        ["attack sent (packets)", *(_fmt(m["attack_sent"]) for m in ms)],
        ["attack reached the service", *(_fmt(m["attack_reached_service"]) for m in ms)],
        ["attack dropped, after 2nd sync", *(_fmt(m["attack_dropped_pct"], "%") for m in ms)],
        ["attack dropped, whole run", *(_fmt(m["attack_dropped_total_pct"], "%") for m in ms)],
        ["legit dropped, after 2nd sync", *(_fmt(m["legit_dropped_pct"], "%") for m in ms)],
        ["legit dropped, whole run", *(_fmt(m["legit_dropped_total_pct"], "%") for m in ms)],
        ["legit sources that lost any", *(_fmt(m["legit_sources_hit"]) for m in ms)],
        *([f"{g.replace('_', ' ')} dropped, {when}",
           *(_fmt(m.get(f"{g}_dropped{key}_pct"), "%") for m in ms)]
          for g in dict.fromkeys(g for r in runs for g in r.groups)
          for when, key in (("after 2nd sync", ""), ("once converged", "_converged"))),
        ["time to first drop", *(_fmt(m["time_to_first_drop_s"], " s") for m in ms)],
        ["time to converge (>95%)", *(_fmt(m["time_to_converge_s"], " s") for m in ms)],
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [title] if title else []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in
                                             zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def to_json(runs: Sequence[Run], *, scenario: str, extra: Mapping[str, Any] | None = None
            ) -> str:
    """One JSON object: the metrics, or ``{"variants": {NAME: metrics}}`` for several."""
    obj: dict[str, Any]
    if len(runs) == 1:
        obj = {"scenario": scenario, "variant": runs[0].name, **runs[0].metrics()}
    else:
        obj = {"scenario": scenario, "variants": {r.name: r.metrics() for r in runs}}
    if extra:
        obj.update(extra)
    return json.dumps(obj, sort_keys=False)


def _rate(counts: Array, width: float, smooth: int) -> tuple[Array, Array]:
    n = len(counts) // smooth * smooth
    c = counts[:n].reshape(-1, smooth).sum(axis=1) / (width * smooth)
    t = np.arange(len(c)) * width * smooth
    return t, c


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        from xpro.lab.mesh import LabError

        raise LabError("the lab's plots need matplotlib: pip install 'xpro[lab]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_runs(runs: Sequence[Run], out: Path, *, title: str) -> list[Path]:
    """Delivered attack and legit traffic at the service over time, one panel a variant.

    Writes ``out`` with ``.png`` and ``.svg``; returns the two paths.
    """
    plt = _pyplot()

    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 2.4 * len(runs) + 0.6),
                             sharex=True, squeeze=False)
    smooth = max(1, round(0.2 / runs[0].width))
    for ax, run in zip(axes[:, 0], runs, strict=True):
        for role, color in (("attack", "tab:red"), ("legit", "tab:green")):
            r = ROLES.index(role)
            t, s = _rate(run.sent[r], run.width, smooth)
            _, d = _rate(run.received[r], run.width, smooth)
            ax.plot(t, s, color=color, linestyle=":", linewidth=1, label=f"{role} sent")
            ax.plot(t, d, color=color, linewidth=1.6, label=f"{role} delivered")
        for g, color in zip(run.groups, _GROUP_COLORS, strict=False):
            r = run._row(g)
            _, d = _rate(run.received[r], run.width, smooth)
            ax.plot(t, d, color=color, linewidth=1.0, label=f"{g.replace('_', ' ')} delivered")
        ax.axvline(run.attack_start, color="grey", linewidth=0.8)
        ax.axvline(run.attack_start + 2 * run.period, color="grey", linestyle="--",
                   linewidth=0.8)
        for t_ev, what in run.events:
            ax.axvline(t_ev, color="tab:blue", linewidth=0.8)
            ax.text(t_ev + 0.05, 0.92, what, transform=ax.get_xaxis_transform(), fontsize=7,
                    color="tab:blue", ha="left", va="top")
        ax.set_yscale("symlog", linthresh=10)
        top = float(max(run.sent.max(), run.received.max(), 1)) / run.width
        ax.set_ylim(0, top * 4)
        ax.set_xlim(0, run.duration + 0.5)
        ax.set_ylabel("packets/s")
        m = run.metrics()
        ax.set_title(f"{run.name}: attack dropped {_fmt(m['attack_dropped_pct'], '%')} "
                     f"after the 2nd sync, legit dropped {_fmt(m['legit_dropped_pct'], '%')}",
                     fontsize=9, loc="left")
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=4, loc="lower right")
    axes[-1, 0].set_xlabel("seconds (grey: attack starts; dashed: end of the 2nd sync period)")
    fig.suptitle(title, fontsize=10)
    return _save(plt, fig, out)


def _save(plt: Any, fig: Any, out: Path) -> list[Path]:
    """Write ``fig`` as ``out``.png and .svg; returns both paths."""
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=110)
    plt.close(fig)
    return paths


def plot_sweep(points: Sequence[tuple[float, Run]], out: Path, *, title: str) -> list[Path]:
    """Attack dropped (after the 2nd sync, and whole run) against the global rate / T_F1."""
    plt = _pyplot()

    xs = [x for x, _ in points]
    after = [r.metrics()["attack_dropped_pct"] or 0.0 for _, r in points]
    total = [r.metrics()["attack_dropped_total_pct"] or 0.0 for _, r in points]
    legit = [r.metrics()["legit_dropped_pct"] or 0.0 for _, r in points]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(xs, after, marker="o", color="tab:red", label="attack dropped, after 2nd sync")
    ax.plot(xs, total, marker="s", color="tab:orange", linestyle="--",
            label="attack dropped, whole run")
    ax.plot(xs, legit, marker="^", color="tab:green", label="legit dropped")
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("global rate of each bot / T_F1 (each proxy sees 1/N of it)")
    ax.set_ylabel("% dropped")
    ax.set_ylim(-3, 103)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(plt, fig, out)
