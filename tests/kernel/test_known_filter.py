"""The destinations' filters of their known sources (``known_dsts``, docs/performance.rst).

The program skips the known table's look-up for a source whose two bits are
not set in its destination's filter; the daemon (``XdpFilter.set_known`` /
``drop_known``) keeps every filter a superset of its destination's known
sources.  A filter that missed one would drop a known client as unknown: these
tests serve thousands of them, both families, through the real program, and
follow the filters through removals and a restart on pinned maps.
"""

from __future__ import annotations

import ipaddress
import os
import random
from pathlib import Path

import numpy as np
import pytest

from xpro.core import layout as L
from xpro.core import model
from xpro.core.keys import known_filters
from xpro.core.params import Sizes
from xpro.core.state import APPLIED, OP_CREATE, OP_DST, apply_entries
from xpro.datapath.xdp import XdpFilter
from xpro.lab.frames import udp_frame

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loads BPF programs)")

S = 1_000_000_000
NOW = 1000 * S
# T_F2 over the known clients' own total (they would close the destination
# fully past it), far under the aggregate written by close().
PARAMS = model.FilterParams(t_t2=0, t_t3=0, t_f1=1_000_000, t_f2=10_000)
MACS = {"src_mac": "02:00:00:00:00:01", "dst_mac": "02:00:00:00:00:02"}
VICTIMS = ("10.9.9.1", "2001:db8:9::1")


def frame(src: str, dst: str) -> bytes:
    return udp_frame(src=src, dst=dst, **MACS)


def key_of(f: bytes) -> np.ndarray:
    parsed = model.parse(f, PARAMS.dst_mode)
    return np.frombuffer(model.flow_key(parsed, PARAMS), dtype=L.FLOW_KEY)


def close(xdp: XdpFilter, dst: str) -> None:
    """Write the aggregate of ``dst`` far over T_F2 (as the sync would)."""
    fk = key_of(frame("10.0.0.1" if ":" not in dst else "2001:db8::1", dst)).copy()
    fk["src"] = b""
    ent = apply_entries(fk, OP_DST | OP_CREATE, c_delta=10**8, ts1=NOW - 2 * S, ts2=NOW)
    assert list(xdp.apply(ent)) == [APPLIED]


def sources(rng: random.Random, n: int, v6: bool) -> list[str]:
    if v6:  # distinct /64s: the key keeps the prefix only
        return [str(ipaddress.IPv6Address((0x2001_0db8 << 96) | (rng.getrandbits(32) << 64)
                                          | rng.getrandbits(64))) for _ in range(n)]
    return [str(ipaddress.IPv4Address(rng.getrandbits(32) | 1 << 24)) for _ in range(n)]


def verdicts(xdp: XdpFilter, frames: list[bytes]) -> list[int]:
    return [int(xdp.program.test_run(f, data_out=False).retval) for f in frames]


def filter_of(xdp: XdpFilter, dst: np.ndarray) -> np.ndarray | None:
    v = xdp.known_dsts.get(np.ascontiguousarray(dst).tobytes())
    return None if v is None else np.asarray(v["w"]).reshape(-1).copy()


@pytest.fixture
def xdp(pin_dir: Path) -> XdpFilter:
    f = XdpFilter(PARAMS, pin_dir=pin_dir,
                  sizes=Sizes(flows=1 << 15, dsts=64, prefixes=16, known=1 << 14))
    f.set_clock(NOW)
    return f


def test_every_known_source_of_a_closed_destination_is_served(xdp: XdpFilter) -> None:
    rng = random.Random(7)
    with xdp:
        for victim in VICTIMS:
            v6 = ":" in victim
            close(xdp, victim)
            clients = sources(rng, 3000, v6)
            strangers = sources(rng, 3000, v6)
            keys = np.concatenate([key_of(frame(s, victim)) for s in clients])
            xdp.set_known(keys, L.Known.CLIENT)
            # Many sources a filter: a good share of its bits set, so the
            # look-up runs for some strangers too, and never decides alone.
            bits = int(np.unpackbits(filter_of(xdp, keys["dst"][0]).view(np.uint8)).sum())
            assert 2000 < bits <= 2 * len(clients)
            assert set(verdicts(xdp, [frame(s, victim) for s in clients])) == {L.XDP_PASS}
            assert set(verdicts(xdp, [frame(s, victim) for s in strangers])) == {L.XDP_DROP}
        served = xdp.counters()[L.Reason.PASS][0]
        assert served == 6000


def test_the_filters_follow_the_known_table_through_removals_and_a_restart(
        pin_dir: Path, xdp: XdpFilter) -> None:
    rng = random.Random(11)
    a = [key_of(frame(s, VICTIMS[0])) for s in sources(rng, 200, False)]
    b = [key_of(frame(s, VICTIMS[1])) for s in sources(rng, 200, True)]
    ka, kb = np.concatenate(a), np.concatenate(b)
    dst_a, dst_b = ka["dst"][:1], kb["dst"][:1]

    def expected(keys: np.ndarray) -> np.ndarray:
        return known_filters(keys, L.KNOWN_FILTER_WORDS)[1][0]

    with xdp:
        xdp.set_known(np.concatenate([ka, kb]), L.Known.CLIENT)
        assert np.array_equal(filter_of(xdp, dst_a), expected(ka))
        xdp.set_known(ka[:10], L.Known.HEAVY)  # a class changes: the same bits
        assert np.array_equal(filter_of(xdp, dst_a), expected(ka))
        assert xdp.drop_known(ka[100:]) == 100
        assert np.array_equal(filter_of(xdp, dst_a), expected(ka[:100]))  # no stale bit
        assert xdp.drop_known(ka[:100]) == 100
        assert filter_of(xdp, dst_a) is None  # no known source: no filter
        assert np.array_equal(filter_of(xdp, dst_b), expected(kb))
        # A filter lost (maps pinned by a build without them) is rebuilt
        # from the known table when the maps are adopted.
        xdp.known_dsts.clear()

    with XdpFilter(PARAMS, pin_dir=pin_dir,
                   sizes=Sizes(flows=1 << 15, dsts=64, prefixes=16, known=1 << 14)) as again:
        assert np.array_equal(filter_of(again, dst_b), expected(kb))
        again.set_clock(NOW)
        close(again, VICTIMS[1])
        assert set(verdicts(again, [frame(str(ipaddress.IPv6Address(k.tobytes()[:16])),
                                          VICTIMS[1]) for k in kb])) == {L.XDP_PASS}
        again.clear_known()
        assert filter_of(again, dst_b) is None
        assert len(again.read_known()[0]) == 0



def test_a_full_filter_map_falls_back_to_the_lookup(
        pin_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Room for two filters, three destinations with known clients: the third
    has none, and the program looks its sources up (``known_unfiltered``)
    instead of taking it for a destination without known sources.  When a
    filter's room frees, the third gets one and the lookup stops."""
    rng = random.Random(5)
    victims = ["10.9.9.1", "10.9.9.2", "10.9.9.3"]
    with XdpFilter(PARAMS, pin_dir=pin_dir,
                   sizes=Sizes(flows=1 << 15, dsts=64, prefixes=16, known=1 << 14,
                               known_filters=2)) as xdp:
        xdp.set_clock(NOW)
        clients = {v: sources(rng, 50, False) for v in victims}
        keys = {v: np.concatenate([key_of(frame(s, v)) for s in clients[v]]) for v in victims}
        for v in victims:
            close(xdp, v)
            xdp.set_known(keys[v], L.Known.CLIENT)
        assert "filter map of known sources is full" in caplog.text
        assert xdp.known_filters_missing() == 1
        assert int(xdp.cfg.view["known_unfiltered"]) == 1
        assert filter_of(xdp, keys[victims[2]]["dst"][:1]) is None
        for v in victims:
            assert set(verdicts(xdp, [frame(s, v) for s in clients[v]])) == {L.XDP_PASS}, v
            strangers = [frame(s, v) for s in sources(rng, 50, False)]
            assert set(verdicts(xdp, strangers)) == {L.XDP_DROP}, v

        xdp.drop_known(keys[victims[0]])
        assert xdp.known_filters_missing() == 0
        assert int(xdp.cfg.view["known_unfiltered"]) == 0
        assert filter_of(xdp, keys[victims[2]]["dst"][:1]) is not None
        assert set(verdicts(xdp, [frame(s, victims[2]) for s in clients[victims[2]]])) \
            == {L.XDP_PASS}
        assert set(verdicts(xdp, [frame(s, victims[0]) for s in clients[victims[0]]])) \
            == {L.XDP_DROP}  # no longer known: strangers now


@pytest.mark.parametrize("victim", ["2001:db8:9::1", "2001:db8:ff09::1"])
def test_a_destination_sharing_a_fingerprint_keeps_its_filter(xdp: XdpFilter,
                                                              victim: str) -> None:
    """An attacker who picks a destination key with the victim's fingerprint
    (tests/unit/test_keys.py) and becomes its client must not make the
    victim's filter look empty when both are written in one batch (the two
    victims put the twin after, then before, the victim's key)."""
    from tests.unit.test_keys import colliding

    client = key_of(frame("2001:db8:1::1", victim))
    twin = client.copy()
    twin["dst"] = np.frombuffer(colliding(client["dst"].tobytes()), dtype=L.DST_KEY)
    bot = twin.copy()
    bot["src"] = key_of(frame("2001:db8:66::1", victim))["src"]
    other = key_of(frame("2001:db8:2::1", victim))
    with xdp:
        close(xdp, victim)
        xdp.set_known(client, L.Known.CLIENT)
        xdp.set_known(np.concatenate([bot, other]), L.Known.CLIENT)
        assert filter_of(xdp, client["dst"]) is not None
        assert verdicts(xdp, [frame("2001:db8:1::1", victim),
                              frame("2001:db8:2::1", victim)]) == [L.XDP_PASS] * 2


def test_a_filter_write_that_fails_is_written_again_before_its_entries(
        xdp: XdpFilter, monkeypatch: pytest.MonkeyPatch) -> None:
    """The filter map refuses a write (out of memory): set_known fails before
    the entries are written, and the sync's retry writes filter and entries."""
    from xpro.errors import DatapathError

    victim = VICTIMS[0]
    clients = [key_of(frame(f"10.0.{i}.1", victim)) for i in range(1, 4)]
    keys = np.concatenate(clients)
    with xdp:
        close(xdp, victim)

        def refuse(*_a: object, **_k: object) -> int:
            raise DatapathError("no memory")

        with monkeypatch.context() as m:
            m.setattr(xdp.known_dsts, "update_batch", refuse)
            with pytest.raises(DatapathError):
                xdp.set_known(keys, L.Known.CLIENT)
        assert len(xdp.read_known()[0]) == 0
        xdp.set_known(keys, L.Known.CLIENT)
        assert filter_of(xdp, keys["dst"][:1]) is not None
        assert int(xdp.cfg.view["known_unfiltered"]) == 0
        assert verdicts(xdp, [frame(f"10.0.{i}.1", victim) for i in range(1, 4)]) \
            == [L.XDP_PASS] * 3
