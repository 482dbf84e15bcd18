"""The example plugin package (examples/xpro-example-plugin), installed in the venv.

Found through its ``xpro`` entry point like any third-party plugin; its alert
sinks write a real file and POST to a real HTTP server on 127.0.0.1; its
command runs through the installed ``xpro`` console script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

import xpro.core.alert
from xpro.core.alert import Alert
from xpro.plugins import PluginHost

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not any(ep.name == "example" and ep.value == "xpro_example_plugin"
                for ep in entry_points(group="xpro")),
        reason="the example plugin is not installed: "
               "pip install -e examples/xpro-example-plugin (scripts/bootstrap.sh does)",
    ),
]

XPRO = Path(sys.executable).with_name("xpro")


@pytest.fixture
def host() -> PluginHost:
    """A fresh plugin manager that loads the installed entry points."""
    return PluginHost()


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP server that records the JSON bodies POSTed to it."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            assert self.headers["Content-Type"] == "application/json"
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_found_through_its_entry_point(host: PluginHost) -> None:
    info = {i.name: i for i in host.infos()}["example"]
    assert info.module == "xpro_example_plugin"
    assert info.dist.startswith("xpro-example-plugin ")
    assert info.hooks == ("xpro_add_cli_commands", "xpro_alert")
    assert info.error == ""


def test_an_alert_reaches_the_file_and_the_webhook(
    host: PluginHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = webhook
    path = tmp_path / "alerts.jsonl"
    monkeypatch.setenv("XPRO_ALERT_FILE", str(path))
    monkeypatch.setenv("XPRO_WEBHOOK_URL", url)
    alert = Alert.make("dst_overload", "10.0.0.9 receives 2e6 pps", "p1",
                       dst="10.0.0.9", rate=2_000_000)
    assert host.call_each("xpro_alert", alert=alert) == []
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [alert.to_dict()]
    assert received == [alert.to_dict()]


def test_an_unreachable_webhook_is_reported_and_other_sinks_still_run(
    host: PluginHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as s:
        dead = f"http://127.0.0.1:{s.server_address[1]}/"  # closed on leaving the block
    monkeypatch.setenv("XPRO_ALERT_FILE", str(tmp_path / "a.jsonl"))
    monkeypatch.setenv("XPRO_WEBHOOK_URL", dead)
    alert = Alert.make("store_down", "master store unreachable", "p1")
    if not host.pm.has_plugin("alert_log"):  # its entry point: test_plugins checks it
        host.register(xpro.core.alert, "alert_log")
    with caplog.at_level("CRITICAL", logger="xpro.core.alert"):
        assert host.call_each("xpro_alert", alert=alert) == ["example"]
    assert "URLError" in host.failed()["example"]
    assert "kind=store_down" in caplog.text  # the built-in log sink still ran


def _xpro(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(XPRO), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, check=False)


def test_its_command_is_in_help_and_runs(tmp_path: Path) -> None:
    assert XPRO.exists(), f"{XPRO} missing: install xpro into the venv"
    helped = _xpro("--help")
    assert helped.returncode == 0, helped.stderr
    assert "example-alerts" in helped.stdout

    path = tmp_path / "alerts.jsonl"
    alerts = [Alert.make("src_overload", "10.0.0.1 over its limit", "p1", time_ns=1, src="a"),
              Alert.make("store_up", "master back", "p2", time_ns=2)]
    path.write_text("".join(a.to_json() + "\n" for a in alerts), encoding="utf-8")
    env = {"XPRO_ALERT_FILE": str(path)}
    shown = _xpro("example-alerts", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        "1 p1 warning  src_overload 10.0.0.1 over its limit",
        "2 p2 info     store_up     master back",
    ]
    only = _xpro("example-alerts", "--json", "--kind", "store_up", env=env)
    assert only.returncode == 0, only.stderr
    assert [json.loads(x) for x in only.stdout.splitlines()] == [alerts[1].to_dict()]
    unset = _xpro("example-alerts", env={"XPRO_ALERT_FILE": ""})
    assert unset.returncode == 2
    assert "set XPRO_ALERT_FILE" in unset.stderr
    assert "Traceback" not in unset.stderr


def test_a_broken_plugin_is_reported_and_xpro_still_runs(tmp_path: Path) -> None:
    if not any(ep.name == "plugins_cli" for ep in entry_points(group="xpro")):
        pytest.skip("xpro's plugins_cli entry point is not installed (pyproject.toml)")
    dist = tmp_path / "xpro_broken_cli_test-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: xpro-broken-cli-test\n"
                                   "Version: 1.0\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text("[xpro]\nbroken = xpro_broken_cli_test\n",
                                           encoding="utf-8")
    (tmp_path / "xpro_broken_cli_test.py").write_text("raise RuntimeError('half installed')\n",
                                                      encoding="utf-8")
    path = [str(tmp_path), os.environ.get("PYTHONPATH", "")]
    env = {"PYTHONPATH": os.pathsep.join(p for p in path if p)}
    listed = _xpro("plugins", "--check", env=env)
    assert listed.returncode == 1
    assert "broken               FAILED" in listed.stdout
    assert "RuntimeError: half installed" in listed.stdout
    assert "plugin broken: failed to load xpro_broken_cli_test" in listed.stderr  # logged
    assert "example              ok" in listed.stdout
    still = _xpro("example-alerts", env={**env, "XPRO_ALERT_FILE": str(tmp_path / "none")})
    assert still.returncode == 0, still.stderr
