"""The memory store's own behaviour (the contract suite in tests/stores covers the rest)."""

from __future__ import annotations

import logging
import uuid

import pytest

from tests.stores._util import S, as_dict, keys, locals_, now_ns, read_all
from xpro.core.model import SyncParams
from xpro.stores._common import key_hex
from xpro.stores.memory import MemoryStore

pytestmark = pytest.mark.unit

P = SyncParams()


def fresh() -> MemoryStore:
    return MemoryStore.from_url(f"memory://{uuid.uuid4().hex[:8]}", mesh="m")


def test_stores_with_one_url_share_state() -> None:
    name = uuid.uuid4().hex[:8]
    a = MemoryStore.from_url(f"memory://{name}", mesh="m")
    b = MemoryStore.from_url(f"memory://{name}", mesh="m")
    t = now_ns()
    a.merge(keys(3, 1), locals_([(t, t, 1, 1, 0)] * 3), P)
    assert len(read_all(b)) == 3
    MemoryStore.forget(name, "m")
    assert len(read_all(MemoryStore.from_url(f"memory://{name}", mesh="m"))) == 0


def test_bad_records_are_skipped_and_replaced(caplog: pytest.LogCaptureFixture) -> None:
    s = fresh()
    k = keys(4, 2)
    t = now_ns() - S
    s.merge(k, locals_([(t, t, 1, 1, 0)] * 4), P)
    s.poke(k[1].tobytes(), t, t, 1 << 63)  # a "negative" count
    s.poke(k[2].tobytes(), t, t + 5 * 86_400 * S, 1)  # far in the future
    caplog.set_level(logging.WARNING, logger="xpro.stores")
    got = read_all(s)
    assert set(got) == {k[0].tobytes(), k[3].tobytes()}
    assert key_hex(k[1].tobytes()) in caplog.text
    assert key_hex(k[2].tobytes()) in caplog.text
    existed, _ = s.merge(k, locals_([(t, t + 1, 2, 2, 0)] * 4), P)
    assert existed.tolist() == [True, False, False, True]
    assert {v[2] for v in read_all(s).values()} == {2, 3}


def test_slots_are_reused_after_expire() -> None:
    s = fresh()
    t = now_ns() - 100 * S
    k = keys(100, 3)
    s.merge(k, locals_([(t, t, 1, 1, 0)] * 100), P)
    assert s.expire(t + 1) == 100
    used = s._state.used
    k2 = keys(100, 4)
    s.merge(k2, locals_([(t, t + 5, 1, 1, 0)] * 100), P)
    assert s._state.used == used
    kk, rr, cur = s.changes(None)
    assert set(as_dict(kk, rr)) == {x.tobytes() for x in k2}
    assert len(s.changes(cur)[0]) == 0
