"""The filters of known sources (``known_slots``, docs/performance.rst).

The program skips the known table's look-up for a source whose two bits are
not set in the filter of its destination's slot; the daemon
(``XdpFilter.set_known`` / ``drop_known``) keeps every slot's filter a
superset of the known sources of the destinations in it.  A filter that
missed one would drop a known client as unknown: these tests serve
thousands of them, both families, through the real program, and follow the
filters through shared slots, removals and a restart on pinned maps.
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
from xpro.core.keys import known_filters, known_slot
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


def filter_of(xdp: XdpFilter, dst: np.ndarray) -> np.ndarray:
    """The filter of the slot of ``dst`` (one DST_KEY)."""
    slot = known_slot(np.ascontiguousarray(dst).reshape(1))[0] & xdp._known.mask
    v = xdp.known_slots.get(np.uint32(slot).tobytes())
    return np.asarray(v["w"]).reshape(-1).copy()


def empty(f: np.ndarray) -> bool:
    return not f.any()


@pytest.fixture
def xdp(pin_dir: Path) -> XdpFilter:
    f = XdpFilter(PARAMS, pin_dir=pin_dir,
                  sizes=Sizes(flows=1 << 15, dsts=64, prefixes=16, known=1 << 14))
    f.handed_over()  # as the backend does once attached: the filters in use
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
        return known_filters(keys, L.KNOWN_FILTER_WORDS, xdp._known.mask)[1][0]

    with xdp:
        xdp.set_known(np.concatenate([ka, kb]), L.Known.CLIENT)
        assert np.array_equal(filter_of(xdp, dst_a), expected(ka))
        xdp.set_known(ka[:10], L.Known.HEAVY)  # a class changes: the same bits
        assert np.array_equal(filter_of(xdp, dst_a), expected(ka))
        assert xdp.drop_known(ka[100:]) == 100
        assert np.array_equal(filter_of(xdp, dst_a), expected(ka[:100]))  # no stale bit
        assert xdp.drop_known(ka[:100]) == 100
        assert empty(filter_of(xdp, dst_a))  # no known source: no bit
        assert np.array_equal(filter_of(xdp, dst_b), expected(kb))
        # Filters lost (a pinned array that a build without them left, or
        # one written with another mask) are rebuilt from the known table
        # when the maps are adopted.
        n = xdp.known_slots.max_entries
        xdp.known_slots.update_batch(np.arange(n, dtype=np.uint32),
                                     np.zeros((n, 8 * L.KNOWN_FILTER_WORDS), dtype=np.uint8))

    with XdpFilter(PARAMS, pin_dir=pin_dir,
                   sizes=Sizes(flows=1 << 15, dsts=64, prefixes=16, known=1 << 14)) as again:
        again.handed_over()
        assert np.array_equal(filter_of(again, dst_b), expected(kb))
        again.set_clock(NOW)
        close(again, VICTIMS[1])
        assert set(verdicts(again, [frame(str(ipaddress.IPv6Address(k.tobytes()[:16])),
                                          VICTIMS[1]) for k in kb])) == {L.XDP_PASS}
        again.clear_known()
        assert empty(filter_of(again, dst_b))
        assert len(again.read_known()[0]) == 0



@pytest.mark.parametrize("slots", [1, 2])
def test_destinations_that_share_a_slot_share_its_filter(pin_dir: Path, slots: int) -> None:
    """Three destinations with known clients in one or two slots: each slot's
    filter holds the sources of every destination in it, so every client is
    served; when one destination's clients go, its bits go and the others'
    stay."""
    rng = random.Random(5)
    victims = ["10.9.9.1", "10.9.9.2", "10.9.9.3"]
    with XdpFilter(PARAMS, pin_dir=pin_dir,
                   sizes=Sizes(flows=1 << 15, dsts=64, prefixes=16, known=1 << 14,
                               known_filters=slots)) as xdp:
        xdp.set_clock(NOW)
        assert int(xdp.cfg.view["known_slot_mask"]) == 0xFFFFFFFF  # until the handover
        xdp.handed_over()
        assert int(xdp.cfg.view["known_slot_mask"]) == slots - 1
        clients = {v: sources(rng, 50, False) for v in victims}
        keys = {v: np.concatenate([key_of(frame(s, v)) for s in clients[v]]) for v in victims}
        for v in victims:
            close(xdp, v)
            xdp.set_known(keys[v], L.Known.CLIENT)
        for v in victims:
            assert set(verdicts(xdp, [frame(s, v) for s in clients[v]])) == {L.XDP_PASS}, v
            strangers = [frame(s, v) for s in sources(rng, 50, False)]
            assert set(verdicts(xdp, strangers)) == {L.XDP_DROP}, v

        xdp.drop_known(keys[victims[0]])
        rest = np.concatenate([keys[victims[1]], keys[victims[2]]])
        for v in victims[1:]:
            mine = rest[known_slot(np.ascontiguousarray(rest["dst"])) & (slots - 1)
                        == known_slot(keys[v]["dst"][:1])[0] & (slots - 1)]
            assert np.array_equal(filter_of(xdp, keys[v]["dst"][:1]),
                                  known_filters(mine, L.KNOWN_FILTER_WORDS, slots - 1)[1][0])
            assert set(verdicts(xdp, [frame(s, v) for s in clients[v]])) == {L.XDP_PASS}, v
        assert set(verdicts(xdp, [frame(s, victims[0]) for s in clients[victims[0]]])) \
            == {L.XDP_DROP}  # no longer known: strangers now


def test_a_slot_out_of_the_array_is_looked_up(xdp: XdpFilter) -> None:
    """A mask wider than the array (as before the daemon sets it, or a
    smaller pinned array): the slot is not found, and the program looks the
    source up in the known table rather than taking it for unknown."""
    victim = VICTIMS[0]
    keys = np.concatenate([key_of(frame(f"10.0.{i}.1", victim)) for i in range(1, 4)])
    with xdp:
        close(xdp, victim)
        xdp.set_known(keys, L.Known.CLIENT)
        xdp.cfg.view["known_slot_mask"] = 0xFFFFFFFF
        assert verdicts(xdp, [frame(f"10.0.{i}.1", victim) for i in range(1, 4)]) \
            == [L.XDP_PASS] * 3
        assert verdicts(xdp, [frame("10.0.9.9", victim)]) == [L.XDP_DROP]


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
        assert not empty(filter_of(xdp, client["dst"]))
        assert verdicts(xdp, [frame("2001:db8:1::1", victim),
                              frame("2001:db8:2::1", victim)]) == [L.XDP_PASS] * 2


def test_a_filter_write_that_fails_is_written_again_before_its_entries(
        xdp: XdpFilter, monkeypatch: pytest.MonkeyPatch) -> None:
    """The filter array refuses a write: set_known fails before the entries
    are written, and the sync's retry writes filter and entries."""
    from xpro.errors import DatapathError

    victim = VICTIMS[0]
    clients = [key_of(frame(f"10.0.{i}.1", victim)) for i in range(1, 4)]
    keys = np.concatenate(clients)
    with xdp:
        close(xdp, victim)

        def refuse(*_a: object, **_k: object) -> int:
            raise DatapathError("no memory")

        with monkeypatch.context() as m:
            m.setattr(xdp.known_slots, "update_batch", refuse)
            with pytest.raises(DatapathError):
                xdp.set_known(keys, L.Known.CLIENT)
        assert len(xdp.read_known()[0]) == 0
        xdp.set_known(keys, L.Known.CLIENT)
        assert not empty(filter_of(xdp, keys["dst"][:1]))
        assert verdicts(xdp, [frame(f"10.0.{i}.1", victim) for i in range(1, 4)]) \
            == [L.XDP_PASS] * 3


def test_the_per_destination_filters_of_an_older_build_are_unpinned(pin_dir: Path) -> None:
    """Maps pinned by a build before the slots hold ``known_dsts``; the new
    build adopts the rest and removes that pin, which nothing reads."""
    import shutil
    import subprocess

    bpftool = shutil.which("bpftool")
    if bpftool is None:
        pytest.skip("needs bpftool to pin a map as an older build did")
    old = pin_dir / "known_dsts"
    pin_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([bpftool, "map", "create", str(old), "type", "hash", "key", "20",
                    "value", str(8 * L.KNOWN_FILTER_WORDS), "entries", "4",
                    "name", "known_dsts", "flags", "1"], check=True)
    assert old.exists()
    with XdpFilter(PARAMS, pin_dir=pin_dir,
                   sizes=Sizes(flows=1 << 15, dsts=64, prefixes=16, known=1 << 14)) as xdp:
        assert not old.exists()
        assert (pin_dir / "known_slots").exists()
        # The older program may still be attached: no filter in use yet.
        assert int(xdp.cfg.view["known_slot_mask"]) == 0xFFFFFFFF
        xdp.handed_over()
        assert int(xdp.cfg.view["known_slot_mask"]) == xdp.known_slots.max_entries - 1


def test_filter_slots_of_another_size_are_rebuilt_and_used_after_the_handover(
        pin_dir: Path) -> None:
    """tables.known_filters changed across a restart: the pinned array is
    replaced (the filters are rebuilt from the known table) instead of
    refusing to start, and until the new program holds the link the mask
    sends every source to the table: the program still attached reads it
    with its own array, and a mask of the new size would read the wrong
    slots there.  The known clients are served throughout."""
    rng = random.Random(3)
    victim = VICTIMS[0]
    clients = sources(rng, 40, False)
    keys = np.concatenate([key_of(frame(s, victim)) for s in clients])
    sizes = {"flows": 1 << 15, "dsts": 64, "prefixes": 16, "known": 1 << 14}
    old = XdpFilter(PARAMS, pin_dir=pin_dir, sizes=Sizes(**sizes, known_filters=8))
    old.set_clock(NOW)
    close(old, victim)
    old.set_known(keys, L.Known.CLIENT)
    with XdpFilter(PARAMS, pin_dir=pin_dir, sizes=Sizes(**sizes, known_filters=1)) as new:
        assert new.known_slots.max_entries == 1
        assert int(new.cfg.view["known_slot_mask"]) == 0xFFFFFFFF  # shared .data
        old_frames = [frame(s, victim) for s in clients]
        assert set(verdicts(old, old_frames)) == {L.XDP_PASS}  # the old program
        new.set_clock(NOW)
        assert set(verdicts(new, old_frames)) == {L.XDP_PASS}
        new.handed_over()
        assert int(new.cfg.view["known_slot_mask"]) == 0
        assert set(verdicts(new, old_frames)) == {L.XDP_PASS}
        assert set(verdicts(new, [frame(s, victim) for s in sources(rng, 40, False)])) \
            == {L.XDP_DROP}
    old.close()
