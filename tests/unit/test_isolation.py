"""A hostile peer name, and overload warnings counted (docs/operations.rst, "Isolation").

A :class:`~xpro.daemon.Proxy` runs here over the userspace filter (a small
backend of this module, no kernel) and a ``memory://`` master in which
another "proxy" heartbeats under the name ``"\\x1b[2J\\nEVIL"``: an escape
sequence that clears a terminal, then a line of its own.  Everywhere the
name is shown -- ``xpro status`` (text and JSON), ``xpro top``, the metrics,
the logs -- it must come out escaped, on the line it belongs to.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import socket
import threading
import time
import uuid
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from tests.packets import frame
from xpro.backends import Attachment, Backend
from xpro.cli import cli
from xpro.cli.operator import format_status
from xpro.config import load_config
from xpro.core import model
from xpro.core.text import printable
from xpro.daemon import metrics
from xpro.daemon.logs import setup_logging
from xpro.daemon.proxy import Proxy
from xpro.datapath.afxdp.filter import UserFilter
from xpro.plugins import PluginHost, open_store
from xpro.sync import SyncLoop

pytestmark = pytest.mark.unit

EVIL = "\x1b[2J\nEVIL"
S = model.NS_PER_S


class UserBackend(Backend):
    """The userspace filter as a backend, attached nowhere."""

    name = "test-user"

    def __init__(self, filt: UserFilter) -> None:
        super().__init__(params=filt.params)
        self.filter = filt
        self.attachments = {"eth0": Attachment("eth0", "afxdp")}

    def load(self) -> UserFilter:
        return self.filter

    def attach(self, ifname: str) -> Attachment:
        return self.attachments[ifname]

    def close(self, *, keep: bool = False) -> None:
        pass


@pytest.fixture
def proxy() -> Proxy:
    cfg = load_config(None, env={}, overrides={"proxy.name": "p1", "thresholds.t_f1": "10",
                                               "thresholds.t_t2": "0.01"})
    host = PluginHost(load_entry_points=False)
    p = Proxy(cfg, plugins=host)
    filt = UserFilter(cfg.filter_params())
    p.backend = UserBackend(filt)
    url = f"memory://{uuid.uuid4().hex}"
    store = open_store(url)
    store.heartbeat(EVIL, 1234.0, filt.now())  # a peer, as the store gives it
    from xpro.sync import Syncer

    p.loop = SyncLoop(Syncer(filt, open_store(url), "p1", cfg.sync_params()), 1.0, name="p1")
    p.loop.step()
    return p


def _no_raw_controls(text: str) -> None:
    assert "\x1b" not in text
    assert not any(line.startswith("EVIL") for line in text.splitlines())


def test_status_text_escapes_a_hostile_peer_name(proxy: Proxy) -> None:
    st = proxy.status()
    assert EVIL in st["sync"]["peers"]  # the data is the store's, unchanged
    text = format_status(st)
    _no_raw_controls(text)
    (row,) = [line for line in text.splitlines() if "EVIL" in line]
    assert row.split()[0] == "\\x1b[2J\\nEVIL"
    assert "1,234.0" in row  # the rest of its row is still there
    # --json: the escaping of JSON
    out = json.dumps(st, default=str)
    _no_raw_controls(out)
    assert json.loads(out)["sync"]["peers"][EVIL]["workload"] == 1234.0


def test_top_escapes_a_hostile_peer_name_and_rich_markup(
        proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    st = proxy.status()
    st["sync"]["peers"]["[red]x[/red]"] = st["sync"]["peers"][EVIL]
    monkeypatch.setattr("xpro.cli.operator._ask", lambda sock, op, **kw: st)
    r = CliRunner().invoke(cli, ["top", "--count", "1", "--socket", "/nonexistent"])
    assert r.exit_code == 0, r.output
    _no_raw_controls(r.output)
    assert "\\x1b[2J\\nEVIL" in r.output
    assert "[red]x[/red]" in r.output  # shown as text, not taken as markup


def test_metrics_escape_a_hostile_peer_name(proxy: Proxy) -> None:
    text = proxy.metrics_text()
    _no_raw_controls(text)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    labels = {s.labels["proxy"] for s in families["xpro_workload_pps"].samples}
    assert labels == {printable(EVIL), "p1"}


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_logs_stay_one_line_with_a_hostile_peer_name(fmt: str) -> None:
    buf = io.StringIO()
    setup_logging(fmt, "debug", stream=buf)
    log = logging.getLogger("xpro.test")
    log.warning("peer %s is late", EVIL, extra={"event": "peer_late", "peer": EVIL})
    try:
        raise ValueError(EVIL)
    except ValueError:
        log.exception("failed for %s", EVIL, extra={"event": "failed", "x": 1})
    lines = buf.getvalue().splitlines()
    _no_raw_controls(buf.getvalue())
    if fmt == "json":
        assert len(lines) == 2
        first = json.loads(lines[0])
        assert first["message"] == f"peer {EVIL} is late"  # JSON keeps it, escaped
        assert first["peer"] == EVIL
        assert EVIL in json.loads(lines[1])["traceback"]
    else:
        assert lines[0].endswith('xpro.test: peer \\x1b[2J\\nEVIL is late peer="\\u001b[2J\\nEVIL"')
        # A traceback's lines are indented and escaped: none reads as a record
        # (its message's own newline ends a line there, under the indent).
        assert lines[1].endswith("xpro.test: failed for \\x1b[2J\\nEVIL x=1")
        assert all(line.startswith("  | ") for line in lines[2:])
        assert lines[-2:] == ["  | ValueError: \\x1b[2J", "  | EVIL"]


# -- overload warnings, counted ---------------------------------------------------------


def _flood(filt: UserFilter, sources: int) -> None:
    """30 packets from each source over 0.24 s: each goes over T_F1 and warns once."""
    frames = [frame(f"10.0.{i >> 8}.{i & 255}", "10.9.9.9") for i in range(sources)] * 30
    t0 = filt.now()
    filt.process_frames(frames, t0 + np.arange(len(frames), dtype=np.int64) * (S // 1000))


def test_warnings_read_failed_and_lost_are_counted(
        proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    filt = proxy.filter
    assert isinstance(filt, UserFilter)
    q = filt.events(proxy._on_event, capacity=5)
    _flood(filt, 8)  # 8 sources over T_F1: 8 warnings, 3 find the queue full
    calls = {"n": 0}
    real = proxy.alert

    def alert(a: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("a broken alert")
        real(a)

    monkeypatch.setattr(proxy, "alert", alert)
    assert q.consume() == 5  # the failure did not stop the others
    assert (proxy.events_seen, proxy.events_failed, proxy.events_lost()) == (5, 1, 3)
    assert proxy.alert_counts["src_overload"] == 4
    st = proxy.status()
    assert st["events"] == {"seen": 5, "failed": 1, "lost": 3}
    assert "overload warnings: 5 read, 1 could not be handled, 3 lost" in format_status(st)
    families = {f.name: f for f in text_string_to_metric_families(proxy.metrics_text())}
    assert families["xpro_events"].samples[0].value == 5
    assert families["xpro_events_failed"].samples[0].value == 1
    assert families["xpro_events_lost"].samples[0].value == 3
    assert np.isfinite(proxy.status()["sync"]["peers"][EVIL]["age_s"])


def test_the_metric_table_lists_every_metric_the_proxy_exports(proxy: Proxy) -> None:
    """docs/operations.rst points at xpro.daemon.metrics for the list of
    metrics: it must hold each family exported (counters under their _total
    name; a backend's own counters under the pattern it documents)."""
    from xpro.daemon import metrics

    doc = metrics.__doc__ or ""
    listed = set(re.findall(r"``(xpro_\w+)(?:\{[^`]*\})?``", doc))
    exported = {f.name + ("_total" if f.type == "counter" else "")
                for f in text_string_to_metric_families(proxy.metrics_text())}
    assert exported
    assert not {n for n in exported if not n.startswith("xpro_backend_")} - listed



def _closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:  # closed with the client's byte unread
        return True


def _closed_now(s: socket.socket) -> bool:
    """Whether the server has closed ``s`` (without waiting)."""
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        s.setblocking(True)


def _scrape(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode()


def test_idle_metrics_clients_cannot_take_the_daemons_threads(
        proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any local user reaches the metrics endpoint.  Each connection held a
    thread and a file descriptor for ever (prometheus_client's server): 500
    idle ones took the daemon's threads and, at its file limit, every new
    socket (docs/operations.rst, "Isolation").  Now at most MAX_CLIENTS are
    served at once, the rest are closed at once, a silent one is closed after
    CLIENT_TIMEOUT_S and one that trickles its request after
    CLIENT_DEADLINE_S; a scraper gets its answer once they are gone."""
    monkeypatch.setattr(metrics, "CLIENT_TIMEOUT_S", 3.0)
    monkeypatch.setattr(metrics, "CLIENT_DEADLINE_S", 6.0)
    server: Any = metrics.serve(proxy, "127.0.0.1:0")
    port = server.server_address[1]
    threads = threading.active_count()
    idle: list[socket.socket] = []
    try:
        for _ in range(30):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            idle[-1].send(b"G")  # a request that never ends
        deadline = time.monotonic() + 10
        while server.refused < 30 - metrics.MAX_CLIENTS and time.monotonic() < deadline:
            time.sleep(0.05)
        # a thread and a deadline's timer each, for the served ones only
        assert threading.active_count() <= threads + 2 * metrics.MAX_CLIENTS
        # Past the first MAX_CLIENTS (served, and waiting for their request),
        # each was closed as it came.
        assert server.refused == 30 - metrics.MAX_CLIENTS
        for s in idle[metrics.MAX_CLIENTS :]:
            s.settimeout(0.1)
            assert _closed(s)
        # The first half of the held ones trickle a byte every half second:
        # closed by the deadline; the others by the silence.
        t = time.monotonic()
        while time.monotonic() - t < 8 and not all(
                _closed_now(s) for s in idle[: metrics.MAX_CLIENTS]):
            for s in idle[: metrics.MAX_CLIENTS // 2]:
                with contextlib.suppress(OSError):
                    s.send(b"E")
            time.sleep(0.5)
        assert all(_closed_now(s) for s in idle[: metrics.MAX_CLIENTS])
        families = {f.name for f in text_string_to_metric_families(
            _scrape(port).split("\r\n\r\n", 1)[1])}
        assert "xpro_workload_pps" in families
    finally:
        for s in idle:
            s.close()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("args", "reply"), [
    (["explain", "10.0.0.1", "10.0.0.2:53"], {"text": f"source {EVIL}\r\nerror: forged"}),
    (["config", "show", "--running"], {"toml": f'[proxy]\nname = "{EVIL}"\r\n', "values": {}}),
    (["config", "reload"], {"changes": [{"key": EVIL, "old": 1, "new": "\x1b]0;t\x07",
                                         "live": True}]}),
])
def test_other_replies_of_the_daemon_are_escaped(
        args: list[str], reply: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``explain``, ``config show --running`` and ``config reload`` print
    comes from the daemon: no control sequence reaches the terminal.  The
    texts the daemon writes keep their lines; the fields of a reload are
    each escaped whole, newlines too."""
    monkeypatch.setattr("xpro.cli.operator._ask", lambda sock, op, **kw: reply)
    r = CliRunner().invoke(cli, [*args, "--socket", "/nonexistent"])
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output
    assert "\r" not in r.output
    assert "\\x1b" in r.output
    if args[-1] == "reload":
        _no_raw_controls(r.output)
