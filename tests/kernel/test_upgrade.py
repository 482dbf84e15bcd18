"""Adopting the pins of the build before the closed-drops record moved into
the destination's record (docs/operations.rst, "Pins, restarts and upgrades").

That build's ``dsts`` held 40-byte aggregates and its closed-drops records
lived in the flow table.  The new build unpins the old ``dsts`` (the next
round recomputes the aggregates), adopts the flow table, and once the link
holds the new program moves the closed-drops records into their
destinations' records, where the program counts and the sync reads them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.packets import frame
from xpro.core import layout as L
from xpro.core import model
from xpro.core.params import Sizes
from xpro.datapath.xdp import XdpFilter

pytestmark = pytest.mark.kernel

S = model.NS_PER_S
T0 = 1_700_000_000 * S
SIZES = Sizes(flows=1 << 12, dsts=64, prefixes=16, known=1024, known_filters=8)


def test_an_older_builds_pins_are_adopted_and_its_closed_drops_moved(pin_dir: Path) -> None:
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        pytest.skip("needs bpftool to pin a map as an older build did")
    params = model.FilterParams()
    dkey = model.parse(frame("10.0.0.1", "10.9.9.9"), 0).dst
    closed = model.closed_key(dkey)
    flow = model.parse(frame("10.0.0.1", "10.9.9.9"), 0).key
    with XdpFilter(params, pin_dir=pin_dir, sizes=SIZES) as old:
        rec = np.zeros(1, dtype=L.FLOW)
        rec["ts1"], rec["ts2"], rec["c"], rec["base_c"] = T0, T0 + S, 700, 650
        old.flows[closed] = rec[0]  # where the older build kept it
        rec["c"], rec["base_c"] = 9, 9
        old.flows[flow] = rec[0]
    (pin_dir / "dsts").unlink()
    subprocess.run([bpftool, "map", "create", str(pin_dir / "dsts"), "type", "lru_hash",
                    "key", "20", "value", "40", "entries", "64", "name", "dsts"], check=True)

    with XdpFilter(params, pin_dir=pin_dir, sizes=SIZES) as new:
        assert new.dsts.value_size == L.DST_REC.itemsize
        new.handed_over()
        assert closed not in new.flows
        there, got = new.read(np.frombuffer(closed + flow, dtype=L.FLOW_KEY))
        assert there.tolist() == [True, True]
        assert (int(got[0]["c"]), int(got[0]["ts1"]), int(got[0]["ts2"])) == (700, T0, T0 + S)
        assert int(got[0]["base_c"]) == 650  # the 50 not pushed yet stay unpushed
        assert int(got[1]["c"]) == 9
        keys, _ = new.read_flows()
        assert sorted(k.tobytes() for k in keys) == sorted([closed, flow])
        new.obj.unpin_maps()


def test_closed_drops_left_in_the_flow_table_are_moved_at_any_handover(pin_dir: Path) -> None:
    """A start that stopped between unpinning the old ``dsts`` and the
    handover leaves the records in the flow table with ``dsts`` already in
    the new layout: they are never read from there, and the next handover
    moves them (it reads the table, not what the last start meant to do)."""
    params = model.FilterParams()
    dkey = model.parse(frame("10.0.0.1", "10.9.9.9"), 0).dst
    closed = model.closed_key(dkey)
    with XdpFilter(params, pin_dir=pin_dir, sizes=SIZES) as first:
        rec = np.zeros(1, dtype=L.FLOW)
        rec["ts1"], rec["ts2"], rec["c"] = T0, T0 + S, 30
        first.flows[closed] = rec[0]
        assert len(first.read_flows()[0]) == 0  # not read from the flow table
    with XdpFilter(params, pin_dir=pin_dir, sizes=SIZES) as again:
        again.handed_over()
        keys, vals = again.read_flows()
        assert [k.tobytes() for k in keys] == [closed]
        assert int(vals[0]["c"]) == 30
        assert closed not in again.flows
        again.obj.unpin_maps()
