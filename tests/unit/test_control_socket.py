"""The control socket against its own clients (docs/operations.rst, "Isolation").

A real :class:`~xpro.daemon.control.ControlServer` on a unix socket in a
temporary directory, serving a stand-in for the proxy: many idle
connections, a slow client, a huge request and more requests at once than
the daemon answers at once.  ``xpro status`` must answer throughout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from xpro.cli import cli
from xpro.daemon.control import ControlError, ControlServer, request
from xpro.errors import XproError

pytestmark = pytest.mark.unit


class FakeProxy:
    """What the control socket reads of a proxy; ``status`` can be held."""

    def __init__(self) -> None:
        self.name = "p1"
        self.config = SimpleNamespace()
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Semaphore(0)

    def status(self, *, top: int = 5) -> dict[str, Any]:
        self.entered.release()
        self.hold.wait(30)
        return {"proxy": self.name, "top": top}

    def flows(self, **kw: Any) -> list[Any]:
        return []

    destinations = flows

    def explain(self, *a: Any, **kw: Any) -> Any:
        raise NotImplementedError

    def reload(self) -> tuple[Any, ...]:
        return ()

    def metrics_text(self) -> str:
        return ""


@pytest.fixture
def sock_path() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="xc", dir="/tmp") as d:
        yield str(Path(d) / "c.sock")


def _read_all(s: socket.socket) -> dict[str, Any]:
    s.settimeout(10)
    chunks = []
    while True:
        try:
            b = s.recv(1 << 16)
        except ConnectionResetError:
            break
        if not b:
            break
        chunks.append(b)
    reply: dict[str, Any] = json.loads(b"".join(chunks))
    return reply


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def test_many_idle_connections_and_status_still_answers(sock_path: str) -> None:
    proxy = FakeProxy()
    server = ControlServer(proxy, sock_path, max_clients=16)  # type: ignore[arg-type]
    idle = [_connect(sock_path) for _ in range(200)]
    try:
        assert request(sock_path, "status", timeout=10) == {"proxy": "p1", "top": 5}
        r = CliRunner().invoke(cli, ["status", "--json", "--socket", sock_path])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["proxy"] == "p1"
        # The idle connections that made room were told why, and closed.
        evicted = _read_all(idle[0])
        assert not evicted["ok"]
        assert "16 control clients are connected and this one sent no request" in (
            evicted["error"])
        assert server.refused["evicted"] >= 200 - 16
        # At most max_clients are open: the daemon holds no more.
        assert len(server._pending) <= 16
    finally:
        for s in idle:
            s.close()
        server.close()


def test_an_idle_or_slow_client_is_closed_after_the_read_timeout(sock_path: str) -> None:
    server = ControlServer(FakeProxy(), sock_path, read_timeout=0.5)  # type: ignore[arg-type]
    try:
        idle = _connect(sock_path)
        slow = _connect(sock_path)
        # One deadline per connection, not per byte: a byte every 0.1 s does not help.
        for b in b'{"op": "sta':
            try:
                slow.send(bytes([b]))
            except OSError:
                break
            time.sleep(0.1)
        for s in (idle, slow):
            reply = _read_all(s)
            assert reply == {"ok": False, "exit_code": 2,
                             "error": "bad request: no complete request within 0.5 s"}
            s.close()
        assert server.refused["timeout"] == 2
        assert request(sock_path, "status", timeout=10)["proxy"] == "p1"
    finally:
        server.close()


def test_a_request_over_the_size_limit_is_refused(sock_path: str) -> None:
    server = ControlServer(FakeProxy(), sock_path)  # type: ignore[arg-type]
    try:
        s = _connect(sock_path)
        sent = 0
        try:  # the daemon stops reading past the limit and closes
            while sent < 1 << 20:
                s.sendall(b" " * 8192)
                sent += 8192
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < 1 << 20
        reply = _read_all(s)
        s.close()
        assert reply["error"] == "bad request: larger than 65536 bytes"
        assert reply["exit_code"] == 2
        with pytest.raises(ControlError, match="larger than 65536 bytes"):
            request(sock_path, "flows", src="x" * 70000)
        assert request(sock_path, "flows") == []
    finally:
        server.close()


def test_requests_beyond_the_busy_cap_get_a_clear_error(sock_path: str) -> None:
    proxy = FakeProxy()
    proxy.hold.clear()
    server = ControlServer(proxy, sock_path, max_busy=2)  # type: ignore[arg-type]
    results: list[Any] = []
    held = [threading.Thread(target=lambda: results.append(request(sock_path, "status")))
            for _ in range(2)]
    try:
        for t in held:
            t.start()
        for _ in held:
            assert proxy.entered.acquire(timeout=10)
        with pytest.raises(ControlError, match="busy with 2 requests: try again"):
            request(sock_path, "status")
        r = CliRunner().invoke(cli, ["status", "--socket", sock_path])
        assert r.exit_code == 1
        assert "busy with 2 requests" in r.output
    finally:
        proxy.hold.set()
        for t in held:
            t.join(10)
        server.close()
    assert results == [{"proxy": "p1", "top": 5}] * 2
    assert server.refused["busy"] == 2


def test_bad_requests_get_exit_code_2_and_the_daemon_goes_on(sock_path: str) -> None:
    server = ControlServer(FakeProxy(), sock_path)  # type: ignore[arg-type]
    try:
        for raw, needle in ((b"\xff\xfe\n", "not JSON"), (b"[" * 60000 + b"\n", "nested"),
                            (b"[1]\n", '"op"'), (b'{"op": "status", "args": 3}\n', "args"),
                            (b'{"op": "status", "args": {"colour": 1}}\n', "colour"),
                            (b'{"op": "format_disk"}\n', "unknown request")):
            s = _connect(sock_path)
            s.sendall(raw)
            reply = _read_all(s)
            s.close()
            assert reply["exit_code"] == 2, (raw[:20], reply)
            assert needle in reply["error"]
        assert request(sock_path, "ping")["proxy"] == "p1"
    finally:
        server.close()


@pytest.mark.parametrize("path", ["/tmp/" + "x" * 200, "/etc/passwd/sock", "",
                                  "/tmp/a\x1b]0;pwned\x07\r\nFAKE"])
def test_a_socket_path_that_cannot_be_reached_is_one_clear_line(path: str) -> None:
    """Too long, under a file, empty, or with control characters: exit 3 and one
    line that says what to give, no traceback, nothing raw on the terminal."""
    r = CliRunner().invoke(cli, ["status", "--socket", path])
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output
    assert "\x1b" not in r.output
    assert "\r" not in r.output
    assert "--socket" in r.output
    assert len(r.output.strip().splitlines()) == 1


@pytest.fixture
def old_daemon(sock_path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A daemon of another version on ``sock_path``: it answers every request
    with ``answers[op]``, replies that lack the fields this CLI prints."""
    answers: dict[str, Any] = {}
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                op = json.loads(conn.makefile("rb").readline())["op"]
                conn.sendall(json.dumps({"ok": True, "result": answers[op]}).encode() + b"\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield sock_path, answers
    finally:
        stop.set()
        t.join(5)
        srv.close()


@pytest.mark.parametrize(("args", "op", "answer", "raw"), [
    (["status"], "status", {"proxy": "p1", "version": "0.0.1"}, True),
    (["top", "--count", "1"], "status", {"proxy": "p1", "version": "0.0.1"}, False),
    (["flows"], "flows", [{"src": "10.0.0.1"}], True),
    (["explain", "10.0.0.1", "10.0.0.2"], "explain", {"verdict": "pass"}, True),
    (["config", "show", "--running"], "config", {"path": None}, False),
    (["config", "reload"], "reload", {"changes": [{"key": "thresholds.t_f1"}]}, True),
])
def test_a_daemon_of_another_version_is_one_clear_error(
        old_daemon: tuple[str, dict[str, Any]], args: list[str], op: str, answer: Any,
        raw: bool) -> None:
    """Its answer lacks fields this CLI prints: exit 1 and one line that says
    what to do (and names the daemon's version where it gave one), no
    traceback; ``--json`` still prints the answer as it came."""
    path, answers = old_daemon
    answers[op] = answer
    r = CliRunner().invoke(cli, [*args, "--socket", path])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert f"answered {op!r} in a form this xpro" in r.output
    assert "restart it" in r.output
    assert ("0.0.1" in r.output) == ("version" in answer)
    assert ("--json" in r.output) == raw
    if raw:
        r = CliRunner().invoke(cli, [*args, "--socket", path, "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output) == answer


def test_a_user_who_may_not_reach_the_socket_gets_the_privilege_exit_code(
        sock_path: str) -> None:
    """The control socket is root's: another user's ``xpro status`` is exit
    77 (missing privilege, as the CLI's table says), not 1."""
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root, to serve a socket a non-root child cannot reach")
    server = ControlServer(FakeProxy(), sock_path)  # type: ignore[arg-type]
    r, w = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # the child: user nobody, then the CLI's request
            code = 99
            try:
                os.setgid(65534)
                os.setuid(65534)
                request(sock_path, "ping")
                code = 0
            except Exception as exc:
                code = getattr(exc, "exit_code", 1) if "sudo" in str(exc) else 98
            finally:
                os.write(w, bytes([code]))
                os._exit(0)
        os.waitpid(pid, 0)
        assert os.read(r, 1) == bytes([77])
    finally:
        os.close(r)
        os.close(w)
        server.close()


def test_an_unreadable_answer_of_a_daemon_of_this_version_is_not_blamed_on_it(
        old_daemon: tuple[str, dict[str, Any]]) -> None:
    """The same version: the CLI's own bug, left as the error it is (with
    its traceback under --debug), not called a daemon of another version."""
    from xpro import __version__

    path, answers = old_daemon
    answers["status"] = {"proxy": "p1", "version": __version__}
    r = CliRunner().invoke(cli, ["status", "--socket", path])
    assert r.exit_code != 0
    assert "in a form this xpro" not in r.output
    assert isinstance(r.exception, KeyError)


def test_a_request_that_gets_no_thread_is_refused_and_the_next_is_answered(
        sock_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread that cannot start (TasksMax reached) killed the socket's
    selector thread with the request counted busy for good: every later
    ``xpro status`` hung.  Now that one request is refused as busy."""

    real = threading.Thread
    failed: list[str] = []

    class NoThread(real):  # type: ignore[misc,valid-type]
        def start(self) -> None:
            if self.name == "xpro-control-request" and not failed:
                failed.append(self.name)
                raise RuntimeError("can't start new thread")
            super().start()

    server = ControlServer(FakeProxy(), sock_path, max_busy=1)  # type: ignore[arg-type]
    try:
        monkeypatch.setattr(threading, "Thread", NoThread)
        with pytest.raises(ControlError, match="could not start a thread"):
            request(sock_path, "status")
        monkeypatch.setattr(threading, "Thread", real)
        assert request(sock_path, "status", timeout=5) == {"proxy": "p1", "top": 5}
        assert failed
    finally:
        monkeypatch.setattr(threading, "Thread", real)
        server.close()


def test_a_file_at_the_socket_path_that_is_not_a_socket_is_left_alone(sock_path: str) -> None:
    Path(sock_path).write_text("an operator's file\n")
    with pytest.raises(XproError, match="not a socket is there; move it"):
        ControlServer(FakeProxy(), sock_path)  # type: ignore[arg-type]
    assert Path(sock_path).read_text() == "an operator's file\n"


def test_a_socket_directory_other_users_can_write_is_refused(sock_path: str) -> None:
    """Another user could replace the socket there, and ``xpro`` would talk to
    theirs; a sticky directory (/tmp) keeps others from that."""
    d = Path(sock_path).parent
    d.chmod(0o777)
    with pytest.raises(XproError, match="can be written by other users"):
        ControlServer(FakeProxy(), sock_path)  # type: ignore[arg-type]
    d.chmod(0o1777)
    server = ControlServer(FakeProxy(), sock_path)  # type: ignore[arg-type]
    try:
        assert request(sock_path, "ping")["proxy"] == "p1"
    finally:
        server.close()
        d.chmod(0o700)


class CountingProxy(FakeProxy):
    """Records the row counts the daemon hands on."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[Any] = []

    def status(self, *, top: int = 5) -> dict[str, Any]:
        self.asked.append(("top", top))
        return {"proxy": self.name, "top": top}

    def flows(self, **kw: Any) -> list[Any]:
        self.asked.append(("limit", kw["limit"]))
        return []


def test_list_requests_are_answered_with_at_most_max_rows(sock_path: str) -> None:
    """``xpro flows --limit 0`` (all) made the daemon build the whole table, a
    million flows, as hundreds of MiB of JSON under its lock; ``top`` of -1 or
    null did the same for ``status``."""
    from xpro.daemon.control import MAX_ROWS

    proxy = CountingProxy()
    server = ControlServer(proxy, sock_path)  # type: ignore[arg-type]
    try:
        request(sock_path, "flows", limit=None)
        request(sock_path, "flows", limit=10**9)
        request(sock_path, "flows", limit=7)
        request(sock_path, "status", top=3)
        for bad in (-1, "x", True, 1.5):
            with pytest.raises(ControlError, match="top must be a count") as exc:
                request(sock_path, "status", top=bad)
            assert exc.value.exit_code == 2
        assert proxy.asked == [("limit", MAX_ROWS), ("limit", MAX_ROWS), ("limit", 7),
                               ("top", 3)]
    finally:
        server.close()


def test_a_reply_without_end_or_too_large_or_too_deep_is_one_error(tmp_path: Path) -> None:
    """A fake daemon (anyone who could put a socket at the path) that drips
    its answer, sends too much or nests it deeply: one line of error within
    the timeout, never a hang or a traceback."""
    from xpro.daemon import control

    path = str(tmp_path / "fake.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    stop = threading.Event()

    def serve(kind: str) -> None:
        conn, _ = listener.accept()
        conn.recv(1 << 16)
        try:
            if kind == "drip":
                while not stop.wait(0.2):
                    conn.send(b" ")
            elif kind == "huge":
                with contextlib.suppress(OSError):
                    while not stop.is_set():
                        conn.sendall(b" " * (1 << 20))
            elif kind == "deep":
                conn.sendall(b"[" * 100_000 + b"]" * 100_000)
            else:  # deep enough to take the CLI's stack, not json's
                conn.sendall(b'{"ok": true, "result": ' + b"[" * 200 + b"]" * 200 + b"}")
        finally:
            conn.close()

    try:
        for kind, needle in (("drip", "did not answer within 1 s"),
                             ("huge", "answered more than 64 MiB"),
                             ("deep", "nested too deep"), ("deep_mid", "nested too deep")):
            stop.clear()
            t = threading.Thread(target=serve, args=(kind,), daemon=True)
            t.start()
            t0 = time.monotonic()
            with pytest.raises(XproError, match=needle):
                control.request(path, "status", timeout=1.0 if kind == "drip" else 30.0)
            assert time.monotonic() - t0 < 20
            stop.set()
            t.join(10)
    finally:
        listener.close()


NOBODY = 65534


def _serve_as_nobody(path: str) -> int:
    """Fork a child that, as user ``nobody``, listens on ``path`` and answers
    one request like a daemon would; returns its pid."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            srv.bind(path)
            srv.listen(1)
            os.write(ready_w, b"1")
            srv.settimeout(20)
            conn, _ = srv.accept()
            conn.recv(1 << 16)
            conn.sendall(b'{"ok": true, "result": {"proxy": "fake"}}\n')
            conn.close()
        finally:
            os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    return pid


def test_the_cli_does_not_talk_to_a_socket_another_user_serves() -> None:
    """Where another user could put a socket of theirs (a shared directory),
    the CLI would send them its request and print their answer."""
    shared = Path(tempfile.mkdtemp(prefix="xshared", dir="/tmp"))
    shared.chmod(0o1777)  # as /tmp: anyone may create, only the owner delete
    path = str(shared / "c.sock")
    pid = _serve_as_nobody(path)
    try:
        with pytest.raises(XproError, match=f"served by user {NOBODY}, not by root"):
            request(path, "status", timeout=10)
        # nor does the daemon delete that user's socket to put its own there
        with pytest.raises(XproError, match=f"a socket of user {NOBODY} is there"):
            ControlServer(FakeProxy(), path)  # type: ignore[arg-type]
        assert Path(path).is_socket()
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        shutil.rmtree(shared)
