"""Known limits of detection, each a strict xfail that points at its account
in the docs: a change that lifts one makes its test pass, and the xfail (and
the docs) must then go.

Two proxies share memory://; packets go through each one's XDP program with
BPF_PROG_TEST_RUN and a fake clock; both sync every second.
"""

from __future__ import annotations

import uuid

import pytest

from tests.packets import frame
from tests.stores.test_trust import DST, SYNC, T0, S, two_proxies

pytestmark = pytest.mark.kernel


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "docs/semantics.rst, 'The per-destination check': the sync halves a flow's "
    "count and window past T_T4, and the aggregate's window starts with its "
    "oldest live flow, so a flood between T_F2 and r x T_F2 reopens"))
def test_a_flood_just_over_t_f2_keeps_the_destination_closed_past_t_t4() -> None:
    """A spoofed flood of 12,000 packets/s (1.2 x T_F2), 200 sources each far
    under T_F1, through two proxies, for ten seconds; a new client tries the
    destination once a second.  The destination closes at the second second
    of the flood and should stay closed while the flood lasts.  With
    T_T4 = 5 s it reopens from the sixth second: the flood's flows are halved
    (count and window) while the new clients' one-packet flows, idle but
    live, keep the aggregate's window at its old start, so c* / window falls
    to 0.7 x T_F2.  With T_T4 = 100 s it stays closed."""
    assert SYNC.t_t4 == 5 * S
    flood = [[frame(f"10.{1 + p}.0.{i}", DST) for i in range(100)] for p in range(2)]
    newcomers = [frame(f"10.4.0.{i}", DST) for i in range(12)]
    passed: dict[int, int] = {}
    with two_proxies(f"memory://{uuid.uuid4().hex[:10]}") as (_, _, (a, b)):
        for second in range(12):
            for tick in range(5):
                t = T0 + second * S + tick * S // 5
                for p, proxy in enumerate((a, b)):
                    for fr in flood[p] if second >= 2 else flood[p][:1]:
                        proxy.send(fr, t, 12 if second >= 2 else 1)
            passed[second] = b.send(newcomers[second], T0 + second * S + 95 * S // 100, 10)
            now = T0 + (second + 1) * S
            a.round(now)
            b.round(now)
    assert passed[0] == passed[1] == 10  # before the flood
    assert {s: passed[s] for s in range(4, 12)} == dict.fromkeys(range(4, 12), 0)
