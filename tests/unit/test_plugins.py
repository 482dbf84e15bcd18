"""The plugin system: registries, failure isolation, the built-in log sink, hook docs."""

from __future__ import annotations

import inspect
import json
import logging
import sys
import threading
import time
import uuid
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from xpro import plugins
from xpro.core.alert import Alert
from xpro.core.status import SyncStats
from xpro.errors import PluginError
from xpro.hooks import specs as hookspecs
from xpro.hooks.registry import Registry
from xpro.hooks.specs import hookimpl
from xpro.plugins import PluginHost
from xpro.plugins.builtin import alert_log as alerts
from xpro.plugins.builtin import plugins_command
from xpro.sync import Syncer, SyncLoop

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs"


class Recorder:
    """A well-behaved plugin that records what it receives."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.rounds: list[tuple[SyncStats, str]] = []
        self.events: list[tuple[str, str]] = []

    @hookimpl
    def xpro_alert(self, alert: Alert) -> None:
        self.alerts.append(alert)

    @hookimpl
    def xpro_sync_completed(self, stats: SyncStats, proxy: str) -> None:
        self.rounds.append((stats, proxy))

    @hookimpl
    def xpro_startup(self, proxy: str) -> None:
        self.events.append(("startup", proxy))

    @hookimpl
    def xpro_shutdown(self, proxy: str) -> None:
        self.events.append(("shutdown", proxy))


class Broken:
    """A plugin whose every hook raises."""

    @hookimpl
    def xpro_alert(self, alert: Alert) -> None:
        raise RuntimeError("sink exploded")

    @hookimpl
    def xpro_sync_completed(self, stats: SyncStats) -> None:  # a subset of the arguments
        raise OSError("disk full")

    @hookimpl
    def xpro_add_stores(self, registry: Registry[Any]) -> None:
        raise ImportError("no driver")

    @hookimpl
    def xpro_add_cli_commands(self, cli: click.Group) -> None:
        raise RuntimeError("no commands today")


class StoreA:
    @hookimpl
    def xpro_add_stores(self, registry: Registry[Any]) -> None:
        registry.add("dup", int)
        registry.add("only-a", str)


class StoreB:
    @hookimpl
    def xpro_add_stores(self, registry: Registry[Any]) -> None:
        registry.add("dup", float)


@pytest.fixture
def host() -> PluginHost:
    return PluginHost(load_entry_points=False)


@pytest.fixture
def alert() -> Alert:
    return Alert.make("src_overload", "10.0.0.1 sends 5000 pps to 10.0.0.9", "p1",
                      src="10.0.0.1", dst="10.0.0.9", rate=5000, limit=100)


# -- registries -------------------------------------------------------------------


def test_registry_rejects_a_duplicate_naming_both_plugins() -> None:
    reg: Registry[Any] = Registry("store")
    reg.current_plugin = "store_memory"
    reg.add("memory", object)
    reg.current_plugin = "shiny_store"
    with pytest.raises(PluginError, match=r"store 'memory' is registered twice: by "
                                          r"store_memory and by shiny_store"):
        reg.add("memory", dict)
    assert reg.get("memory") is object
    assert reg.owner("memory") == "store_memory"


def test_registry_unknown_name_lists_the_known_ones() -> None:
    reg: Registry[Any] = Registry("backend")
    with pytest.raises(PluginError, match=r"no backend named 'native' \(known: none\)"):
        reg.get("native")
    reg.add("generic", object)
    reg.add("afxdp", object)
    with pytest.raises(PluginError, match=r"no backend named 'native' \(known: afxdp, generic\)"):
        reg.get("native")
    assert reg.names() == ["afxdp", "generic"]
    assert "generic" in reg
    assert len(reg) == 2


def test_collect_duplicate_across_plugins_raises(host: PluginHost) -> None:
    host.register(StoreA(), "a")
    host.register(StoreB(), "b")
    with pytest.raises(PluginError, match="'dup' is registered twice: by b and by a"):
        host.collect("store", "xpro_add_stores")


def test_collect_skips_a_raising_plugin_and_keeps_the_others(host: PluginHost) -> None:
    host.register(StoreA(), "a")
    host.register(Broken(), "broken")
    reg = host.collect("store", "xpro_add_stores")
    assert reg.names() == ["dup", "only-a"]
    assert host.failed() == {"broken": "xpro_add_stores: ImportError: no driver"}


# -- failure isolation -------------------------------------------------------------


def test_a_raising_sink_is_reported_by_name_and_the_others_still_get_the_alert(
    host: PluginHost, alert: Alert, caplog: pytest.LogCaptureFixture
) -> None:
    first, last = Recorder(), Recorder()
    host.register(first, "first")
    host.register(Broken(), "broken")
    host.register(last, "last")
    with caplog.at_level(logging.ERROR, logger="xpro.plugins"):
        assert host.call_each("xpro_alert", alert=alert) == ["broken"]
    assert first.alerts == [alert]
    assert last.alerts == [alert]
    assert host.failed() == {"broken": "xpro_alert: RuntimeError: sink exploded"}
    assert "plugin broken: xpro_alert: RuntimeError: sink exploded" in caplog.text


def test_typed_hook_methods_isolate_failures(host: PluginHost, alert: Alert) -> None:
    rec = Recorder()
    host.register(Broken(), "broken")
    host.register(rec, "rec")
    stats = SyncStats(flows=3)
    assert host.alert(alert)  # queued
    assert host.sync_completed(stats, "p1")
    assert host.flush(10)
    assert host.startup("p1") == []
    assert host.shutdown("p1") == []
    assert rec.alerts == [alert]
    assert rec.rounds == [(stats, "p1")]
    assert rec.events == [("startup", "p1"), ("shutdown", "p1")]
    assert host.failed() == {"broken": "xpro_sync_completed: OSError: disk full"}
    hs = host.hook_stats()
    assert hs.errors == {"broken": 2}
    assert hs.delivered == 2
    assert hs.queued == 0


# -- slow plugins ------------------------------------------------------------------------


class Slow:
    """A sink that sleeps far longer than the host's limit (until ``release``)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    @hookimpl
    def xpro_alert(self, alert: Alert) -> None:
        self.calls += 1
        self.release.wait(60)

    @hookimpl
    def xpro_sync_completed(self, stats: SyncStats, proxy: str) -> None:
        self.calls += 1
        self.release.wait(60)

    @hookimpl
    def xpro_startup(self, proxy: str) -> None:
        self.release.wait(60)


def _userspace_syncer(name: str) -> Syncer:
    from xpro.core import model
    from xpro.datapath.afxdp.filter import UserFilter

    p = model.SyncParams(t_t1=10 * model.NS_PER_S, t_t4=100 * model.NS_PER_S,
                         r_q=model.R_DEN)
    return Syncer(UserFilter(model.FilterParams()), plugins.open_store(
        f"memory://{uuid.uuid4().hex}"), name, p)


def test_a_slow_sink_does_not_stall_the_sync() -> None:
    """A sink that sleeps longer than the limit: the sync keeps its period, the
    other plugins still get every round, and the slow one is named and counted."""
    host = PluginHost(load_entry_points=False, hook_timeout=0.2)
    slow, rec = Slow(), Recorder()
    host.register(slow, "slow_sink")
    host.register(rec, "rec")
    loop = SyncLoop(_userspace_syncer("p1"), 0.01, name="p1",
                    on_round=lambda st: host.sync_completed(st, "p1"))
    loop.start()
    try:
        # Before the queue, the first round sat in the sink for its 60 s: rounds
        # stayed at 1 (these loops would run into pytest's timeout).
        while not host.hook_stats().timeouts:
            time.sleep(0.01)
        stuck_at = loop.status.rounds
        while loop.status.rounds < stuck_at + 20:  # the sink is still stuck meanwhile
            time.sleep(0.01)
        assert not slow.release.is_set()
    finally:
        loop.stop()
        slow.release.set()
    assert host.flush(10)
    assert len(rec.rounds) == loop.status.rounds
    hs = host.hook_stats()
    assert hs.timeouts["slow_sink"] >= 1
    # Calls made while it was stuck were skipped, not waited for.
    assert hs.skipped["slow_sink"] + slow.calls == loop.status.rounds
    assert host.failed()["slow_sink"] == (
        "xpro_sync_completed: no answer within 0.2 s; its calls are skipped until it returns")
    assert "rec" not in host.failed()


def test_a_full_queue_drops_and_counts(alert: Alert) -> None:
    host = PluginHost(load_entry_points=False, hook_timeout=30, queue_size=5)
    slow = Slow()
    host.register(slow, "slow_sink")
    try:
        accepted = [host.alert(alert) for _ in range(50)]
    finally:
        slow.release.set()
    assert accepted.count(False) >= 50 - 5 - 1  # 5 queued, 1 in the sink's hands
    assert host.hook_stats().dropped["xpro_alert"] == accepted.count(False)
    assert host.flush(10)
    assert host.hook_stats().queued == 0


def test_startup_waits_for_a_slow_plugin_only_up_to_the_limit() -> None:
    host = PluginHost(load_entry_points=False, hook_timeout=0.2)
    slow, rec = Slow(), Recorder()
    host.register(slow, "slow")
    host.register(rec, "rec")
    try:
        assert host.startup("p1") == ["slow"]
        assert rec.events == [("startup", "p1")]
        assert host.hook_stats().timeouts == {"slow": 1}
    finally:
        slow.release.set()


def test_a_sink_that_exits_is_recorded_and_the_deliveries_go_on(alert: Alert) -> None:
    class Exits:
        @hookimpl
        def xpro_alert(self, alert: Alert) -> None:
            raise SystemExit(3)

    host = PluginHost(load_entry_points=False)
    rec = Recorder()
    host.register(Exits(), "exits")
    host.register(rec, "rec")
    for _ in range(3):
        host.alert(alert)
    assert host.flush(10)
    assert rec.alerts == [alert] * 3
    assert host.hook_stats().errors == {"exits": 3}
    assert host.failed() == {"exits": "xpro_alert: SystemExit: 3"}


def test_plugin_counters_are_metrics_and_the_status_names_the_plugin() -> None:
    from types import SimpleNamespace

    from xpro.cli.operator import format_status
    from xpro.config import default_config
    from xpro.daemon.metrics import exposition

    host = PluginHost(load_entry_points=False, hook_timeout=0.1, queue_size=1)
    slow = Slow()
    host.register(slow, "slow_sink")
    try:
        for _ in range(20):
            host.sync_completed(SyncStats(), "p1")
        time.sleep(0.3)
        host.sync_completed(SyncStats(), "p1")
    finally:
        slow.release.set()
    host.flush(10)
    view = SimpleNamespace(name="p1", config=default_config(), backend=None, plugins=host)
    text = exposition(view)  # type: ignore[arg-type]
    assert 'xpro_plugin_timeouts_total{plugin="slow_sink"} 1.0' in text
    assert 'xpro_plugin_notifications_dropped_total{hook="xpro_sync_completed"}' in text
    assert "xpro_plugin_queue_depth 0.0" in text
    st = {"proxy": "p1", "version": "0", "pid": 1, "uptime_s": 1.0, "backend": "native",
          "store": {"url": "memory://", "mesh": "xpro"}, "mode": "enforce",
          "thresholds": {"t_f1": 1, "t_f2": 1, "t_w": 1, "t_t1": 1, "t_t2": 1},
          "plugins_failed": host.failed(), "plugins": host.hook_stats().to_dict()}
    out = format_status(st)
    assert "plugin slow_sink: xpro_sync_completed: no answer within 0.1 s" in out
    assert "dropped" in out


def test_a_plugin_that_fails_to_import_is_reported_and_the_others_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real distribution on sys.path, as pip would install it.
    dist = tmp_path / "xpro_broken_test_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: xpro-broken-test-plugin\n"
                                   "Version: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[xpro]\nbroken_import = xpro_no_such_module_anywhere\n"
        "good_test = xpro_good_test_plugin\n")
    (tmp_path / "xpro_good_test_plugin.py").write_text(
        "from xpro.hooks.specs import hookimpl\n\n"
        "@hookimpl\ndef xpro_startup(proxy):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        host = PluginHost()
        failed = host.failed()
        assert list(failed) == ["broken_import"]
        assert "ModuleNotFoundError" in failed["broken_import"]
        assert "xpro_no_such_module_anywhere" in failed["broken_import"]
        assert host.pm.has_plugin("good_test")
        assert host.pm.has_plugin("store_memory")  # the built-ins still load
        infos = {i.name: i for i in host.infos()}
        assert infos["good_test"].dist == "xpro-broken-test-plugin 1.0"
        assert infos["good_test"].hooks == ("xpro_startup",)
        assert infos["broken_import"].error == failed["broken_import"]
    finally:
        sys.modules.pop("xpro_good_test_plugin", None)


def test_an_unknown_hook_is_reported(host: PluginHost) -> None:
    class Typo:
        @hookimpl
        def xpro_alret(self, alert: Alert) -> None:
            pass

    assert host.register(Typo(), "typo")
    assert "unknown hook(s) xpro_alret" in host.failed()["typo"]


def test_a_hook_with_a_wrong_parameter_is_rejected(host: PluginHost) -> None:
    class WrongArgs:
        @hookimpl
        def xpro_alert(self, alert: Alert, colour: str) -> None:
            pass

    assert not host.register(WrongArgs(), "wrong")
    assert "colour" in host.failed()["wrong"]
    assert not host.pm.has_plugin("wrong")


def _adds_commands(echoes: dict[str, str]) -> object:
    """A plugin that adds a command under each name of ``echoes``, which prints its text."""
    def echo(text: str) -> Any:
        return lambda: click.echo(text)

    class Commands:
        @hookimpl
        def xpro_add_cli_commands(self, cli: click.Group) -> None:
            for name, text in echoes.items():
                cli.command(name=name)(echo(text))

    return Commands()


def _lazy_status_group() -> click.Group:
    """A group like ``xpro``'s, whose ``status`` is imported when looked up."""
    from xpro.cli._base import XproGroup

    @click.group(cls=XproGroup, lazy={"status": "xpro.cli.operator:status"})
    def group() -> None:
        pass

    return group


def test_plugin_commands_added_once_and_clashes_refused(host: PluginHost) -> None:
    @click.group()
    def group() -> None:
        pass

    @group.command()
    def version() -> None:
        click.echo("the real one")

    host.register(_adds_commands({"hello": "hello", "version": "hijacked"}), "commands")
    host.register(Broken(), "broken")
    host.add_cli_commands(group)
    host.add_cli_commands(group)  # idempotent
    assert sorted(group.commands) == ["hello", "version"]
    runner = CliRunner()
    assert runner.invoke(group, ["version"]).output == "the real one\n"
    assert runner.invoke(group, ["hello"]).output == "hello\n"
    failed = host.failed()
    assert failed["commands"] == "command name(s) already taken: version; not added"
    assert failed["broken"] == "xpro_add_cli_commands: RuntimeError: no commands today"


def test_a_plugin_command_named_like_a_lazy_built_in_is_refused(host: PluginHost) -> None:
    """The built-ins of ``xpro`` are imported when looked up (XproGroup's lazy
    names): a plugin's command under one of those names is refused all the same."""
    group = _lazy_status_group()
    host.register(_adds_commands({"status": "hijacked", "hello": "hello"}), "commands")
    host.add_cli_commands(group)
    assert sorted(group.commands) == ["hello"]
    out = CliRunner().invoke(group, ["status", "--help"]).output
    assert "hijacked" not in out
    assert "--socket" in out
    assert host.failed()["commands"] == "command name(s) already taken: status; not added"


def test_built_ins_loaded_before_the_plugins_are_no_clash(host: PluginHost) -> None:
    """docs/conf.py loads the lazy built-ins before the plugins add theirs."""
    from xpro.cli.operator import status

    group = _lazy_status_group()
    group.add_command(status)
    host.register(_adds_commands({"hello": "hello"}), "commands")
    host.add_cli_commands(group)
    assert sorted(group.commands) == ["hello", "status"]
    assert "commands" not in host.failed()


def test_plugins_command_lists_plugins_and_failures(
    host: PluginHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plugins, "plugins", lambda: host)
    host.register(plugins_command, "plugins_cli")
    host.register(Broken(), "broken")

    @click.group()
    def group() -> None:
        pass

    host.add_cli_commands(group)
    runner = CliRunner()
    result = runner.invoke(group, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "plugins_cli" in result.output
    assert "broken               FAILED" in result.output
    result = runner.invoke(group, ["plugins", "--json", "--check"])
    assert result.exit_code == 1
    rows = {r["name"]: r for r in map(json.loads, result.output.splitlines())}
    assert rows["plugins_cli"]["hooks"] == ["xpro_add_cli_commands"]
    assert rows["broken"]["error"].startswith("xpro_add_")


def test_builtins_are_declared_as_entry_points() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="xpro")}
    for name, module in [("store_memory", "xpro.stores.memory"),
                         ("alert_log", "xpro.plugins.builtin.alert_log"),
                         ("plugins_cli", "xpro.plugins.builtin.plugins_command")]:
        assert names.get(name) == module, (
            f"entry point {name} = {module!r} missing: add it to [project.entry-points.xpro] "
            f"in pyproject.toml and reinstall xpro (pip install -e .)")


# -- alerts and the built-in log sink -----------------------------------------------


def test_alert_defaults_and_validation(alert: Alert) -> None:
    assert alert.severity == "warning"
    assert alert.time_ns > 0
    assert Alert.make("store_up", "back", "p1").severity == "info"
    with pytest.raises(ValueError, match="alert kind 'flood' is not one of store_down"):
        Alert.make("flood", "x", "p1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="severity 'meh'"):
        Alert(kind="workload", message="x", proxy="p1", severity="meh")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        alert.details["rate"] = 1  # type: ignore[index]
    assert json.loads(alert.to_json()) == {
        "kind": "src_overload", "severity": "warning", "proxy": "p1",
        "message": "10.0.0.1 sends 5000 pps to 10.0.0.9", "time_ns": alert.time_ns,
        "details": {"src": "10.0.0.1", "dst": "10.0.0.9", "rate": 5000, "limit": 100},
    }


def test_log_sink_writes_one_structured_line(
    host: PluginHost, caplog: pytest.LogCaptureFixture
) -> None:
    host.register(alerts, "alert_log")
    a = Alert.make("store_down", 'refused "quickly"\nretrying', "p1", time_ns=42, tries=3)
    with caplog.at_level(logging.INFO, logger="xpro.core.alert"):
        assert host.call_each("xpro_alert", alert=a) == []
    (rec,) = caplog.records
    assert rec.levelno == logging.CRITICAL
    assert rec.getMessage() == ('alert kind=store_down severity=critical proxy="p1" time_ns=42 '
                                'message="refused \\"quickly\\"\\nretrying" tries=3')
    assert "\n" not in rec.getMessage()


# -- hook documentation --------------------------------------------------------------


def test_every_hook_is_documented() -> None:
    hooks = [n for n in hookspecs.__all__ if n.startswith("xpro_")]
    specs = [n for n, _ in inspect.getmembers(hookspecs) if n.startswith("xpro_")]
    assert sorted(hooks) == sorted(specs)
    for name in hooks:
        fn = getattr(hookspecs, name)
        doc = inspect.getdoc(fn) or ""
        assert doc.strip(), f"{name} has no docstring"
        assert doc.splitlines()[0].strip(), f"{name} has no summary line"
        for param in inspect.signature(fn).parameters:
            assert f":param {param}:" in doc, f"{name}: parameter {param} is not documented"
    page = (DOCS / "plugins.rst").read_text(encoding="utf-8")
    assert ".. automodule:: xpro.hooks.specs" in page
    for name in hooks:
        assert name in page, f"docs/plugins.rst never mentions {name}"
