"""``distributed`` (short form) on every data path, with the same verdicts as native.

The issue on data paths is done when every backend runs the lab's
distributed scenario with the verdicts of ``native``: with sync, at least
95 % of the attack dropped from the end of the second sync period on and at
most 1 % of the legitimate packets.  Short form: four proxies, twenty bots
at 1.6 x T_F1 (each proxy sees 0.4 x T_F1 of every bot: alone, none would
drop), ten seconds (the scenario's own length, the one the target is set
on), sync only; about 15 s per backend.  Four proxies, not two, and more
than five seconds: the ``offload`` defect below shows only once the NIC's
share of the drops is large and has had a few seconds to weigh (with two
proxies and five seconds ``offload`` passed).  Not seven: the seconds
right after the 2nd sync period weigh more in a shorter run, and ``afxdp``
(the filter in Python, in the lab's one process) measured 93.7 and 94.8 %
in two of three clean-clone CI runs at seven, against 96.5-97.2 % in every
run outside CI.

Where each backend sits in the lab is :func:`xpro.lab.mesh.placement`:
``afxdp`` sends passed frames out of the proxy's service-side interface to
the service's MAC; ``offload`` is the driver-mode emulation (the reduced
program on the proxy's outside interface, in front of the full program on
the service's end of the proxy's link), and the test checks that the reduced
program did most of the dropping, so the emulated NIC really was in the path.

``offload`` once lost the mesh's count of a bot dropped in front (the NIC's
drops never reach the full program): about 50 % dropped instead of 98 %.
The backend now counts the reduced program's drops into the full program's
records as this proxy's own packets (``OP_KEEP_BASE``), so the sync shares
them; this test caught it and keeps it caught.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from xpro.lab.mesh import BACKENDS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

Runner = Callable[..., dict[str, Any]]

SHORT = ("--variant", "sync", "--proxies", "4", "--bots", "20", "--duration", "10")

@pytest.mark.parametrize("backend", BACKENDS)
def test_distributed_short_form_has_the_native_verdicts(run_lab: Runner, backend: str) -> None:
    out = run_lab("run", "distributed", *SHORT, "--backend", backend)
    print(f"\n{backend}: attack dropped {out['attack_dropped_pct']} % from "
          f"{out['measured_from_s']} s ({out['attack_dropped_total_pct']} % over the run), "
          f"legit dropped {out['legit_dropped_pct']} %, first drop after "
          f"{out['time_to_first_drop_s']} s, verdicts {out['verdicts']}")
    assert out["backend"] == backend
    assert out["variant"] == "sync"
    assert out["attack_sent"] > 20 * 150 * 8.5  # 20 bots at 160/s for 9 s, give or take
    assert out["attack_dropped_pct"] >= 95.0, out
    assert out["legit_dropped_pct"] <= 1.0, out
    assert out["legit_received"] > 0
    v = out["verdicts"]
    if backend == "offload":
        # The reduced program in front dropped most; the full program only what
        # came between its verdict and the next refresh of the drop set.
        assert v.get("offload_flow", 0) > v.get("src_rate", 0), v
    else:
        assert v.get("src_rate", 0) > 0.9 * (out["attack_sent"] - out["attack_reached_service"])
