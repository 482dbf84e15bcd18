"""The candidate fraction ``sync.near``: what a mesh pulls against what it misses.

Run as ``python bench/pull_near.py`` (pure Python, :class:`xpro.core.pull.MeshModel`,
about a minute).  Four proxies, 2000 benign flows at 0-0.9 x T_F1 each (every
flow at one proxy), and 50 bots that move: every second each bot sends from
one proxy picked at random (an anycast route that flaps) among the first two
for 15 s, at 0.9 x T_F1, then among the other two (which never counted it),
at 1.5 x T_F1.  For each ``near`` (and the full pull) over 30 seconds: the
bots' packets passed from the jump on (what the per-source rule missed) and
the records pulled per proxy per round.
The last line is one JSON object.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from xpro.core import model
from xpro.core.pull import MeshModel, PullRule

S = model.NS_PER_S
T0 = 1_700_000_000 * S
FP = model.FilterParams(t_t1=10 * S, t_t2=S, t_f1=100, t_t3=S, t_f2=10**9)
SP = model.SyncParams(t_t1=10 * S, t_t4=5 * S, r_q=2 * model.R_DEN)
PROXIES, BENIGN, BOTS, SECONDS, JUMP = 4, 2000, 50, 30, 15


def run(pull: str, near: float) -> dict[str, float]:
    rng = np.random.default_rng(7)
    rule = PullRule.of(FP, near=near)
    mesh = MeshModel(PROXIES, SP, rule, pull=pull)
    keys = [bytes(rng.bytes(36)) for _ in range(BENIGN + BOTS)]
    keys = [k[:35] + b"\0" for k in keys]
    home = rng.integers(0, PROXIES, BENIGN)
    rate = rng.uniform(0, 0.9 * FP.t_f1, BENIGN)
    passed = sent = 0
    for sec in range(SECONDS):
        t = T0 + sec * S
        for i in range(BENIGN):
            n = int(rate[i]) + int(rng.random() < rate[i] % 1)
            if n:
                mesh.count(int(home[i]), keys[i], t, n)
        for b in range(BOTS):
            half = PROXIES // 2  # before the jump through the first half, then the other
            kb = keys[BENIGN + b]
            p = int(rng.integers(0, half)) + (0 if sec < JUMP else half)
            n = int((0.9 if sec < JUMP else 1.5) * FP.t_f1)
            for j in range(10):  # in ten bursts: a drop verdict applies to the rest
                dropped = mesh.drops(p, kb, FP)
                mesh.count(p, kb, t + j * S // 10, n // 10)
                if sec >= JUMP:
                    sent += n // 10
                    passed += 0 if dropped else n // 10
        for p in range(PROXIES):
            mesh.round(p)
    return {"bots_passed_pct": round(100 * passed / sent, 2),
            "pulled_per_proxy_round": round(sum(mesh.pulled) / PROXIES / SECONDS, 1)}


def main() -> None:
    out: dict[str, dict[str, float]] = {"all": run("all", 0.5)}
    for near in (0.25, 0.5, 0.75, 1.0):
        out[f"near={near}"] = run("candidates", near)
    for name, r in out.items():
        print(f"{name:12s} bots passed {r['bots_passed_pct']:6.2f} %   pulled/proxy/round "
              f"{r['pulled_per_proxy_round']:8.1f}", file=sys.stderr)
    print(json.dumps({"bench": "pull_near", "results": out}))


if __name__ == "__main__":
    main()
