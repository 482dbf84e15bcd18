"""The program's ``.bss`` counters (``struct xpro_bss``): what it could not record.

``XdpFilter.dirty_lost()`` and ``XdpFilter.events_lost()`` read them through an
mmap of ``.bss``; these tests make the program lose a dirty mark and a warning
and see the counters rise.
"""

from __future__ import annotations

import os
import socket
import struct

import numpy as np
import pytest

from xpro.core.model import FilterParams
from xpro.core.params import Sizes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loads BPF programs)")

S = 1_000_000_000


def _udp4(src: str, dst: str = "10.0.0.2") -> bytes:
    udp = struct.pack("!HHHH", 4242, 53, 8 + 18, 0) + b"x" * 18
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + ip + udp


def test_events_lost_counts_warnings_a_full_ring_buffer_refused() -> None:
    """A flow over T_F1 with no rate limit on warnings (``warn_period`` 0) warns at
    every packet; nobody reads the ring buffer (256 KiB, 80 bytes a warning), so
    past about 3300 warnings each one is lost and counted."""
    from xpro.datapath.xdp import XdpFilter

    params = FilterParams(t_t2=0, t_f1=1, warn_period=0)
    with XdpFilter(params, sizes=Sizes(flows=1024, dsts=64, prefixes=16, known=16)) as k:
        assert k.events_lost() == 0
        frame = _udp4("10.9.9.9")
        k.set_clock(100 * S)
        k.program.test_run(frame, data_out=False)  # creates the flow: an empty window
        k.set_clock(101 * S)
        k.program.test_run(frame, repeat=2000, data_out=False)
        assert k.events_lost() == 0  # 2000 warnings fit
        k.program.test_run(frame, repeat=3000, data_out=False)
        lost = k.events_lost()
        assert lost is not None
        assert 1000 <= lost < 3000, lost
        assert k.dirty_lost() == 0  # the other counter of the struct is untouched
        k.program.test_run(frame, repeat=100, data_out=False)
        assert k.events_lost() == lost + 100


def test_dirty_lost_counts_flows_a_full_dirty_set_refused() -> None:
    """With the sync on (an epoch), every new flow is marked dirty; the set holds
    as many keys as the flow table, and the LRU table takes new flows past that
    by evicting, so the marks beyond it are lost and counted."""
    from xpro.datapath.xdp import XdpFilter

    with XdpFilter(FilterParams(), sizes=Sizes(flows=256, dsts=64, prefixes=16,
                                                known=16)) as k:
        k.set_clock(100 * S)
        k.next_epoch()
        assert k.epoch != 0
        assert k.dirty_lost() == 0
        for i in range(1024):
            k.program.test_run(_udp4(f"10.1.{i >> 8}.{i & 255}"), data_out=False)
        assert k.dirty_lost() > 0
        assert k.events_lost() == 0
        assert len(k.take_dirty(k.epoch)) == 256
        assert np.all(k.counters()[:, 0][1:] == 0)  # every packet passed
