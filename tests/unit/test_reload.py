"""A reload reaches everything that judges by the keys it changes: the sync's
pull rule (what the master publishes as candidates, by T_F1 and ``sync.near``)
and the log's format; a key that cannot change live says so."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.packets import frame
from tests.unit.test_isolation import UserBackend
from xpro.config import Config, load_config
from xpro.core import layout as L
from xpro.core import model
from xpro.daemon.logs import setup_logging
from xpro.daemon.proxy import Proxy
from xpro.datapath.afxdp.filter import UserFilter
from xpro.errors import ConfigError
from xpro.plugins import PluginHost, open_store
from xpro.sync import Syncer, SyncLoop

pytestmark = pytest.mark.unit

S = model.NS_PER_S
T0 = 1_700_000_000 * S


def _config(**keys: str) -> Config:
    return load_config(None, env={}, overrides=keys)


def _proxy(cfg: Config, url: str, name: str) -> tuple[Proxy, UserFilter]:
    p = Proxy(cfg, plugins=PluginHost(load_entry_points=False))
    filt = UserFilter(cfg.filter_params())
    p.backend = UserBackend(filt)
    p.loop = SyncLoop(Syncer(filt, open_store(url), name, cfg.sync_params(),
                             known=cfg.known_policy(), pull=cfg.sync.pull,
                             near=cfg.sync.near), 1.0, name=name)
    return p, filt


@pytest.mark.parametrize(("key", "old", "new"), [("thresholds.t_f1", "1000", "300"),
                                               ("sync.near", "0.9", "0.5")])
def test_a_reload_changes_what_the_master_publishes_as_candidates(
        key: str, old: str, new: str) -> None:
    """A flow at 200 packets/s, T_F1 1000 then 300 (or ``near`` 0.9 then 0.5 at
    T_F1 300): not a candidate before the reload, one after it, so the other
    proxy pulls it.  Before the fix the merging proxy's rule kept its values
    from start-up and the other proxy never saw the flow."""
    fixed = {"thresholds.t_f1": "300"} if key == "sync.near" else {}
    url = f"memory://{uuid.uuid4().hex}"
    a, fa = _proxy(_config(**fixed, **{key: old}), url, "a")
    b, fb = _proxy(_config(**fixed, **{key: old}), url, "b")
    flow = frame("10.0.0.66", "10.9.9.9")
    k = np.frombuffer(model.parse(flow, 0).key, dtype=L.FLOW_KEY)

    def second(n: int) -> None:  # 200 packets over second n at proxy a, then a round each
        fa.process_frames([flow] * 200, T0 + n * S + np.arange(200) * (S // 200))
        for p in (a, b):
            assert p.syncer is not None
            p.syncer.round(T0 + (n + 1) * S)

    second(0)
    assert not fb.read(k)[0][0]  # 0.2 x T_F1 (or under near): not pulled
    for p in (a, b):
        changes = p.reconfigure(_config(**fixed, **{key: new}))
        assert [(c.key, c.live) for c in changes] == [(key, True)]
    second(1)
    assert a.syncer is not None
    assert (a.syncer.rule.t_f1, a.syncer.rule.near_pm) == (300, 500)
    exists, rec = fb.read(k)
    assert exists[0]
    assert int(rec[0]["c"]) == 400


def test_the_pull_mode_takes_a_restart() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    p, _ = _proxy(_config(), url, "a")
    changes = p.reconfigure(_config(**{"sync.pull": "all"}))
    assert [(c.key, c.live) for c in changes] == [("sync.pull", False)]
    assert p.syncer is not None
    assert p.syncer.partials is not None  # still pulling candidates


@pytest.mark.usefixtures("restore_logging")
def test_a_reload_of_the_log_format_changes_the_next_lines() -> None:
    out = io.StringIO()
    setup_logging("json", "info", stream=out)
    p, _ = _proxy(_config(), f"memory://{uuid.uuid4().hex}", "a")
    log = logging.getLogger("xpro.test")
    log.info("before", extra={"event": "probe"})
    changes = p.reconfigure(_config(**{"log.format": "text"}))
    assert [(c.key, c.live) for c in changes] == [("log.format", True)]
    log.info("after", extra={"event": "probe"})
    first, *rest = [line for line in out.getvalue().splitlines() if "xpro.test" in line]
    assert json.loads(first)["message"] == "before"
    assert len(rest) == 1
    assert "after" in rest[0]
    assert not rest[0].startswith("{")


def test_a_new_t_t1_reads_the_partials_again_from_the_start() -> None:
    """T_T1 sets the partials' slot width: the next round pulls them all again
    (cursor reset) and judges them at the new width."""
    url = f"memory://{uuid.uuid4().hex}"
    p, filt = _proxy(_config(), url, "a")
    assert p.syncer is not None
    filt.process_frames([frame("10.0.0.1", "10.9.9.9")], T0)
    p.syncer.round(T0 + S)
    assert p.syncer.cursor is not None
    assert p.syncer.partials is not None
    pulls: list[object] = []
    real = p.syncer.store.pull

    def pull(cursor: object, **kw: object) -> object:
        pulls.append(cursor)
        return real(cursor, **kw)  # type: ignore[arg-type]

    p.syncer.store.pull = pull  # type: ignore[method-assign]
    p.reconfigure(_config(**{"thresholds.t_f1": "50"}))
    p.syncer.round(T0 + 2 * S)
    assert pulls[-1] is not None  # the same slots: it goes on from its cursor
    assert p.syncer.rule.t_f1 == 50
    p.reconfigure(_config(**{"thresholds.t_f1": "50", "thresholds.t_t1": "20",
                             "sync.ttl": "60"}))
    assert p.syncer.rule.slot_ns < 5 * S  # taken at the next round, not in one
    p.syncer.round(T0 + 3 * S)
    assert pulls[-1] is None  # from the start
    assert p.syncer.partials.rule.slot_ns == p.syncer.rule.slot_ns >= 5 * S
    assert p.syncer.cursor is not None


def test_a_reload_while_the_store_is_reached_reaches_the_new_syncer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reload lands while the sync connects (no syncer yet to configure):
    the syncer is built from the configuration as it is once connected."""
    import xpro.plugins

    old, new = _config(), _config(**{"thresholds.t_t1": "20", "sync.ttl": "60",
                                     "sync.near": "0.25", "known.min_packets": "50"})
    p = Proxy(old, plugins=PluginHost(load_entry_points=False))
    filt = UserFilter(old.filter_params())
    p.backend = UserBackend(filt)
    p.loop = SyncLoop(p._connect, 1.0, name="a")
    real = xpro.plugins.open_store

    def open_during_reload(*a: object, **kw: object) -> object:
        store = real(*a, **kw)  # type: ignore[arg-type]
        ping = store.ping

        def ping_and_reload() -> object:
            p.reconfigure(new)  # SIGHUP meanwhile: no syncer yet
            return ping()

        store.ping = ping_and_reload
        return store

    monkeypatch.setattr(xpro.plugins, "open_store", open_during_reload)
    p.loop.step()
    s = p.syncer
    assert s is not None
    assert (s.params.t_t1, s.ttl, s.rule.near_pm, s.known.policy.min_packets) \
        == (20 * S, 60 * S, 250, 50)


def test_a_reload_that_would_break_a_rule_with_the_running_values_changes_nothing() -> None:
    """Four deny prefixes with tables.prefixes raised to 4 in the same file: the
    table keeps its size until a restart, so the lists cannot go in; the
    reload is refused whole, with a message that says why."""
    url = f"memory://{uuid.uuid4().hex}"
    old = _config(**{"tables.prefixes": "2", "filter.deny": "192.0.2.1/32"})
    p, filt = _proxy(old, url, "a")
    deny = "192.0.2.1/32,192.0.2.2/32,192.0.2.3/32,192.0.2.4/32"
    new = _config(**{"tables.prefixes": "4", "filter.deny": deny, "thresholds.t_f1": "7"})
    with pytest.raises(ConfigError, match=r"tables.prefixes.*restart"):
        p.reconfigure(new)
    assert p.config == old
    assert filt.params.t_f1 == old.thresholds.t_f1
    assert len(filt.params.deny) == 1


def test_a_kept_key_keeps_its_source() -> None:
    """A key that takes a restart keeps its running value, and ``config show``
    the source of that value, not the new one's."""
    p, _ = _proxy(_config(), f"memory://{uuid.uuid4().hex}", "a")
    new = load_config(None, env={"XPRO_TABLES_FLOWS": "4096"}, overrides={})
    p.reconfigure(new)
    assert p.config.tables.flows == 1 << 20
    assert "XPRO_TABLES_FLOWS" not in p.config.sources.get("tables.flows", "")


def test_the_kept_password_keeps_its_source(tmp_path: Path) -> None:
    """The store password takes a restart (the connection holds it): after a
    reload that names another one, ``config show --running`` still says where
    the running one came from."""
    pw = tmp_path / "store.password"
    pw.write_text("s3cret-new\n")
    old = load_config(None, env={"XPRO_STORE_PASSWORD": "s3cret-old"}, overrides={})
    new = load_config(None, env={}, overrides={"store.password_file": str(pw)})
    p, _ = _proxy(old, f"memory://{uuid.uuid4().hex}", "a")
    p.reconfigure(new)
    assert p.config.store_password == old.store_password
    assert p.config.sources["store.password"] == old.sources["store.password"]
    assert "XPRO_STORE_PASSWORD" in p.config.sources["store.password"]


def test_a_failing_round_listener_does_not_stop_the_sync() -> None:
    """The loop's ``on_round`` (the daemon's: plugins, logs) raising once killed
    the sync's thread silently, with the status still healthy."""
    _, filt = _proxy(_config(), f"memory://{uuid.uuid4().hex}", "a")
    syncer = Syncer(filt, open_store(f"memory://{uuid.uuid4().hex}"), "a",
                    _config().sync_params())
    calls: list[int] = []

    def listener(st: object) -> None:
        calls.append(1)
        raise RuntimeError("a broken listener")

    loop = SyncLoop(syncer, 0.01, name="a", on_round=listener)
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        loop.stop()
    assert len(calls) >= 3
    assert loop.status.healthy


def test_a_lock_directory_that_cannot_be_written_is_one_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An xpro@NAME unit whose /run/xpro was read-only gave a traceback."""
    import xpro.daemon.proxy as proxy_mod
    from xpro.daemon.proxy import RunLock
    from xpro.errors import XproError

    (tmp_path / "file").write_text("")
    monkeypatch.setattr(proxy_mod, "RUN_DIR", tmp_path / "file" / "run")
    with pytest.raises(XproError, match="ReadWritePaths"):
        RunLock("pin_dir", "/sys/fs/bpf/xpro")


@pytest.mark.parametrize(("error", "says"), [
    ("config", "master store unusable: a mesh of encoding 9"),
    ("bug", "sync round failed: KeyError"),
])
def test_a_store_that_cannot_be_used_or_a_failing_round_is_the_sync_down(
        error: str, says: str) -> None:
    """A connection that fails with a ConfigError (the master holds a mesh of
    another encoding, an option the store refuses) or a round that fails on a
    bug was retried with the status still healthy and no alert: ``xpro
    status`` said the store was "ok" while the proxy filtered alone.  Now it
    is unhealthy, with one store_down alert, and recovers like an outage."""
    from xpro.errors import ConfigError

    _, filt = _proxy(_config(), f"memory://{uuid.uuid4().hex}", "a")
    store = open_store(f"memory://{uuid.uuid4().hex}")
    broken = [True]

    def connect() -> Syncer:
        if broken[0]:
            if error == "config":
                raise ConfigError("a mesh of encoding 9 is in this store")
            raise KeyError("a bug")
        return Syncer(filt, store, "a", _config().sync_params())

    alerts: list[tuple[str, str]] = []
    loop = SyncLoop(connect, 0.01, name="a", max_backoff=0.02,
                    on_alert=lambda kind, msg: alerts.append((kind, msg)))
    for _ in range(3):
        loop.step()
    assert not loop.status.healthy
    assert says in str(loop.status.last_error)
    assert [k for k, _ in alerts] == ["store_down"]
    assert says in alerts[0][1]
    broken[0] = False
    loop.step()
    assert loop.status.healthy
    assert [k for k, _ in alerts] == ["store_down", "store_up"]


class _SlowMerge:
    """A syncer whose round is one merge into the master, ``seconds`` long;
    ``close`` (the stop's interrupt) ends it at once."""

    def __init__(self, seconds: float) -> None:
        self.merging = False
        self.seconds = seconds
        self.cut = threading.Event()
        self.started = threading.Event()

    def round(self) -> None:
        from xpro.errors import StoreUnavailable

        self.merging = True
        self.started.set()
        try:
            if self.cut.wait(self.seconds):
                raise StoreUnavailable("closed")
        finally:
            self.merging = False
        raise StoreUnavailable("the round after the merge failed")  # ends the round


@pytest.mark.parametrize(("seconds", "cut"), [(2.0, False), (60.0, True)])
def test_a_stop_waits_for_a_merge_in_flight_before_it_cuts_the_round(
        seconds: float, cut: bool) -> None:
    """A merge cut by the stop may be applied in the master and not yet
    brought level in the kernel: a next daemon adopting the maps would merge
    it again.  So the stop waits for a merge in flight (2 s here: not cut),
    and cuts one only a second before its timeout (a master frozen in the
    middle of a merge)."""
    s = _SlowMerge(seconds)
    loop = SyncLoop(lambda: s, 0.01, name="a")  # type: ignore[arg-type,return-value]
    loop.start()
    assert s.started.wait(10)
    start = time.monotonic()
    loop.stop(timeout=5, interrupt=s.cut.set, grace=0.5)
    took = time.monotonic() - start
    assert not loop.running
    assert s.cut.is_set() is cut
    assert (3.5 <= took < 5) if cut else (took < 3.5), took
    assert loop.status.healthy  # a cut at the stop is no outage
