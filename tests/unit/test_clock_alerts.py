"""A proxy's clock off the mesh's, and forged store data: alerts, status, metrics.

A :class:`~xpro.daemon.Proxy` over the userspace filter (no kernel) and a
``memory://`` master whose clock the test sets: two other proxies publish
offsets of 0 to it; this proxy's clock is first 5 s behind it, then right
again (docs/sync.rst, "Clocks").  Then a record dated a day ahead is forged
into the master (docs/sync.rst, "Values from the store").
"""

from __future__ import annotations

import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_isolation import UserBackend
from xpro.cli.operator import format_status
from xpro.config import load_config
from xpro.core import model
from xpro.daemon.proxy import Proxy
from xpro.datapath.afxdp.filter import UserFilter
from xpro.plugins import PluginHost, open_store
from xpro.stores.memory import MemoryStore
from xpro.sync import Syncer, SyncLoop

pytestmark = pytest.mark.unit

S = model.NS_PER_S


def _proxy(overrides: dict[str, str]) -> tuple[Proxy, UserFilter, MemoryStore, str]:
    """A daemon named p1 over the userspace filter, and a fresh memory:// master."""
    cfg = load_config(None, env={}, overrides={"proxy.name": "p1", **overrides})
    p = Proxy(cfg, plugins=PluginHost(load_entry_points=False))
    filt = UserFilter(cfg.filter_params())
    p.backend = UserBackend(filt)
    url = f"memory://{uuid.uuid4().hex}"
    store = open_store(url)
    assert isinstance(store, MemoryStore)
    return p, filt, store, url


def test_a_clock_off_the_mesh_is_alerted_shown_and_corrected() -> None:
    p, filt, store, url = _proxy({"sync.clock_alert": "1.5"})
    cfg = p.config
    ahead = [5 * S]  # the store's clock minus this proxy's
    store.use_clock(lambda: filt.now() + ahead[0])
    syncer = Syncer(filt, open_store(url), "p1", cfg.sync_params(), ttl=cfg.ttl_ns)
    syncer.local_clock = filt.now
    loop = p.loop = SyncLoop(syncer, 1.0, name="p1", on_round=p._on_round)

    def round_() -> None:
        for peer in ("p2", "p3"):  # their clocks agree with the store's
            store.heartbeat(peer, 10.0, filt.now() + ahead[0], offset=0)
        loop.step()

    try:
        round_()
        (alert,) = [a for a in p.recent_alerts if a.kind == "clock_skew"]
        assert "5.000 s behind the mesh's" in alert.message
        assert "corrected" in alert.message
        assert syncer.skew == pytest.approx(5 * S, abs=S // 100)
        st = p.status()
        assert st["sync"]["clock"]["skew_s"] == pytest.approx(5.0, abs=0.01)
        assert "this proxy's clock: +5.000 s off the mesh's, corrected by +5.000 s  ALERT" \
            in format_status(st)
        fams = {f.name: f for f in text_string_to_metric_families(p.metrics_text())}
        assert fams["xpro_clock_skew_seconds"].samples[0].value == pytest.approx(5.0, abs=0.01)
        offsets = {s.labels["proxy"]: s.value for s in fams["xpro_clock_offset_seconds"].samples}
        assert offsets["p2"] == 0.0
        assert offsets["p1"] == pytest.approx(5.0, abs=0.01)
        round_()  # still off: no second alert
        assert [a.kind for a in p.recent_alerts].count("clock_skew") == 1

        ahead[0] = 0  # fixed
        round_()
        assert [a.kind for a in p.recent_alerts][-1] == "clock_ok"
        assert syncer.skew == 0
    finally:
        syncer.store.close()
        store.close()


def test_forged_store_data_is_alerted_once_a_minute_with_its_key() -> None:
    p, filt, store, url = _proxy({})
    cfg = p.config
    # The full pull reads every record written by hand (a candidate pull reads
    # only what merges published).
    syncer = Syncer(filt, open_store(url), "p1", cfg.sync_params(), ttl=cfg.ttl_ns,
                    pull="all")
    syncer.local_clock = filt.now
    try:
        forged = bytes(range(35)) + bytes(1)  # a flow key (pad 0: one a proxy writes)
        now = filt.now()
        store.poke(forged, now, now + 86_400 * S, 10)  # dated a day ahead
        p._on_round(syncer.round())
        (alert,) = [a for a in p.recent_alerts if a.kind == "store_data"]
        assert alert.details["quarantined"] == 1
        assert forged.hex()[:16] in alert.message
        assert "dated in the future" in alert.message
        store.poke(forged, now, now + 86_400 * S, 11)
        p._on_round(syncer.round())  # within the minute: counted, not alerted again
        assert [a.kind for a in p.recent_alerts].count("store_data") == 1
        assert syncer.quarantined_total == 2
    finally:
        syncer.store.close()
        store.close()
