"""The daemon's pure parts: endpoints, prefixes, live reconfiguration, logs, metrics, CLI text."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from xpro.cli import cli
from xpro.cli.operator import format_status
from xpro.config import load_config
from xpro.core.layout import addr16
from xpro.core.model import FilterParams
from xpro.daemon.logs import setup_logging
from xpro.daemon.metrics import parse_listen
from xpro.daemon.proxy import _in_prefix, _merge_live, parse_endpoint
from xpro.errors import ConfigError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("text", "port", "has"), [
    ("192.0.2.1", 0, 0), ("192.0.2.1:53", 53, 1), ("2001:db8::1", 0, 0),
    ("[2001:db8::1]:443", 443, 1), ("[2001:db8::1]", 0, 0)])
def test_parse_endpoint(text: str, port: int, has: int) -> None:
    addr, p, h = parse_endpoint(text, what="destination")
    assert len(addr) == 16
    assert (p, h) == (port, has)


@pytest.mark.parametrize("bad", ["example.com", "192.0.2.1:0", "192.0.2.1:http", "[::1]:70000",
                                 "[::1", "[::1]x", "1.2.3.4:\u00b2", "fe80::1%eth0"])
def test_parse_endpoint_rejects_with_a_hint(bad: str) -> None:
    with pytest.raises(ConfigError, match="destination"):
        parse_endpoint(bad, what="destination")


def test_in_prefix_matches_the_model() -> None:
    addrs = ["10.0.0.1", "10.0.1.200", "10.0.2.1", "2001:db8::1", "192.0.2.1"]
    arr = np.array([addr16(a) for a in addrs], dtype="S16")
    assert list(_in_prefix(arr, "10.0.0.0/23", what="--src")) == [True, True, False, False,
                                                                   False]
    assert list(_in_prefix(arr, "2001:db8::/32", what="--src")) == [False] * 3 + [True, False]
    assert list(_in_prefix(arr, "0.0.0.0/0", what="--src")) == [True] * 3 + [False, True]
    with pytest.raises(ConfigError, match="--src"):
        _in_prefix(arr, "10.0.0.0/33", what="--src")


def test_in_prefix_finds_the_flow_an_address_is_counted_in() -> None:
    """Flow sources are prefixes (/64, /24 here): ``--src`` with an address (or
    a longer prefix) finds the flow of the prefix that holds it."""
    p = FilterParams(source_prefix_v4=24)
    flows = ["2001:db8:1:2::", "2001:db8:1:3::", "10.0.0.0", "10.0.1.0"]
    arr = np.array([addr16(a) for a in flows], dtype="S16")

    def hits(q: str) -> list[bool]:
        return list(_in_prefix(arr, q, what="--src", params=p))

    assert hits("2001:db8:1:2::5") == [True, False, False, False]
    assert hits("2001:db8:1:2:8000::/65") == [True, False, False, False]
    assert hits("2001:db8:1::/48") == [True, True, False, False]
    assert hits("10.0.0.77") == [False, False, True, False]
    assert hits("10.0.0.0/23") == [False, False, True, True]


def test_reconfigure_keeps_restart_keys_at_their_running_values() -> None:
    old = load_config(None, env={}, overrides={"tables.flows": "4096", "thresholds.t_f1": "100"})
    new = load_config(None, env={}, overrides={"tables.flows": "8192", "thresholds.t_f1": "200"})
    merged = _merge_live(old, new)
    assert merged.thresholds.t_f1 == 200  # live
    assert merged.tables.flows == 4096  # needs a restart
    assert {c.key: c.live for c in old.diff(new)} == {"thresholds.t_f1": True,
                                                       "tables.flows": False}


@pytest.mark.usefixtures("restore_logging")
def test_json_logs_are_one_object_per_line_with_the_event_fields() -> None:
    buf = io.StringIO()
    setup_logging("json", "info", stream=buf)
    log = logging.getLogger("xpro.test")
    log.info("attached", extra={"event": "attached", "interface": "eth0", "mode": "native"})
    log.debug("not shown")
    line = buf.getvalue().strip()
    assert "\n" not in line
    rec = json.loads(line)
    assert rec["event"] == "attached"
    assert rec["interface"] == "eth0"
    assert rec["level"] == "info"
    setup_logging("text", "debug", stream=buf)
    log.debug("round", extra={"event": "sync_round", "flows": 3})
    assert buf.getvalue().splitlines()[-1].endswith('xpro.test: round flows=3')


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9477") == ("127.0.0.1", 9477)
    assert parse_listen("[::1]:9477") == ("::1", 9477)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_listen("9477x")


def test_status_text_shows_mesh_verdicts_and_top_flows() -> None:
    st = {"proxy": "p1", "version": "0.1.0", "pid": 1, "uptime_s": 12.0, "backend": "native",
          "interfaces": [{"interface": "eth0", "mode": "native", "prog_id": 7, "why": ""}],
          "store": {"url": "redis://h:6379", "mesh": "xpro"},
          "sync": {"healthy": True, "rounds": 9, "peers": {
              "p1": {"workload": 1200.0, "age_s": 0.2, "alive": True},
              "p2": {"workload": 0.0, "age_s": 30.0, "alive": False}}},
          "thresholds": {"t_f1": 100, "t_f2": 10000, "t_w": 10**6, "t_t1": 10, "t_t2": 1},
          "mode": "enforce",
          "counters": {"pass": {"packets": 10, "bytes": 600},
                       "src_rate": {"packets": 900, "bytes": 54000}},
          "top_destinations": [{"dst": "192.0.2.1", "rate_pps": 50.0, "count": 5,
                                "over_t_f2": False}],
          "top_sources": [{"src": "10.0.0.9", "dst": "192.0.2.1", "rate_pps": 300.0,
                           "count": 900, "local_count": 100, "window_s": 3.0, "idle_s": 0.0,
                           "over_t_f1": True}],
          "alerts": {"src_overload": 1}}
    text = format_status(st)
    assert "p2" in text
    assert "NO" in text
    assert "src_rate" in text
    assert "10.0.0.9" in text
    assert "redis://h:6379" in text
    assert "src_overload 1" in text
    assert "DATA PATH STOPPED" not in text
    st["failed"] = "the afxdp loop failed: wake TX of the AF_XDP socket on eth1: ENXIO"
    assert ("  DATA PATH STOPPED: the afxdp loop failed: wake TX of the AF_XDP socket on "
            "eth1: ENXIO (the daemon exits; its service manager starts it again)"
            in format_status(st).splitlines())


@pytest.mark.usefixtures("restore_logging")
def test_run_without_root_exits_77(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    r = CliRunner().invoke(cli, ["run", "--interface", "eth0", "--log-format", "text",
                                 "--log-level", "error"], env={"XPRO_CONFIG": ""})
    assert r.exit_code == 77
    assert "needs root" in r.output


def test_config_show_json_and_check(tmp_path: object) -> None:
    r = CliRunner().invoke(cli, ["config", "show", "--json", "--t-f1", "250"],
                           env={"XPRO_CONFIG": ""})
    assert r.exit_code == 0, r.output
    shown = json.loads(r.output)
    assert shown["thresholds"]["t_f1"]["value"] == 250
    assert shown["thresholds"]["t_f1"]["source"].startswith("command line")


def test_one_run_lock_per_place_however_it_is_spelled(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``xpro detach --pin-dir /sys/fs/bpf/xpro/`` (a trailing slash) must meet
    the lock of the daemon that runs with ``/sys/fs/bpf/xpro``."""
    import xpro.daemon.proxy as proxy_mod
    from xpro.daemon.proxy import DaemonRunning, RunLock

    monkeypatch.setattr(proxy_mod, "RUN_DIR", tmp_path / "run")
    held = RunLock("pin_dir", "/sys/fs/bpf/xpro")
    try:
        for spelling in ("/sys/fs/bpf/xpro/", "/sys/fs/bpf/../bpf/xpro", "/sys/fs//bpf/xpro"):
            with pytest.raises(DaemonRunning):
                RunLock("pin_dir", spelling)
    finally:
        held.release()


def test_a_failed_data_path_wakes_the_daemon_even_when_its_alert_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The main thread exits on ``failed``: it is set, and the wake called,
    whatever the alert does; a failure that comes during a stop is the
    stop's (not an exit 1 after a clean SIGTERM)."""
    from xpro.daemon.proxy import Proxy

    woke: list[int] = []
    p = Proxy(load_config(None, env={}), on_failure=lambda: woke.append(1))

    def sink(alert: object) -> None:
        raise RuntimeError("a sink that fails")

    monkeypatch.setattr(p, "alert", sink)
    p._datapath_failed("the afxdp loop failed: x")
    assert p.failed == "the afxdp loop failed: x"
    assert woke == [1]
    p._datapath_failed("")
    assert p.failed == "the data path failed"  # never a falsy reason
    p.failed, p._stopping = None, True
    p._datapath_failed("the afxdp loop failed: late")
    assert p.failed is None
    assert woke == [1, 1]
