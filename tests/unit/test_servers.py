"""xpro.lab.servers without any real store server: ports, waits, processes, clean-up."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from xpro.errors import XproError
from xpro.lab.servers import (
    HOST,
    BinaryMissing,
    RedisReplyError,
    Server,
    ServerError,
    ServerSet,
    ServerTimeout,
    _read_reply,
    _resp,
    free_port,
    orphan_proof,
    remove_stale_dirs,
    wait_for,
)

pytestmark = pytest.mark.unit
SLEEP = "/bin/sleep"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): read its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    p = free_port(also=10000)
    assert p + 10000 <= 65535
    for port in (p, p + 10000):
        with socket.socket() as s:
            s.bind((HOST, port))


def test_wait_for() -> None:
    calls = iter([False, False, True])
    wait_for(lambda: next(calls), 5, "thing", interval=0.001)

    def boom() -> bool:
        raise ConnectionRefusedError("nope")

    with pytest.raises(ServerTimeout, match=r"thing not ready.*nope") as err:
        wait_for(boom, 0.05, "thing", interval=0.01)
    assert isinstance(err.value, TimeoutError)
    assert isinstance(err.value, XproError)


def test_resp_encoding_and_replies() -> None:
    assert _resp(["SET", b"k", 5]) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\n"
    stream = io.BytesIO(b"+PONG\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$6\r\nmaster\r\n:7\r\n"
                        b"-ERR wrong\r\n")
    assert _read_reply(stream) == "PONG"
    assert _read_reply(stream) == 42
    assert _read_reply(stream) == b"abc"
    assert _read_reply(stream) is None
    assert _read_reply(stream) == [b"master", 7]
    with pytest.raises(RedisReplyError, match="ERR wrong"):
        _read_reply(stream)
    with pytest.raises(ServerError, match="closed"):
        _read_reply(io.BytesIO(b"+PON"))


def test_missing_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with ServerSet(tmp_path) as ss:
        with pytest.raises(BinaryMissing, match="apt-get install redis-server"):
            ss.redis()
        with pytest.raises(BinaryMissing, match="apt-get install etcd-server"):
            ss.etcd()
        root = ss.root
    assert not root.exists()
    assert orphan_proof(["x"]) == ["x"]  # no setpriv on that PATH: run as is


def test_server_life_cycle(tmp_path: Path) -> None:
    with ServerSet(tmp_path) as ss:
        srv = ss.add(Server("sleeper", [SLEEP, "300"], 0, ss.directory("s"),
                            ready=lambda s: True))
        assert srv.running
        pid = srv.pid
        assert pid is not None
        srv.kill()
        assert not srv.running
        assert not _alive(pid)
        srv.start()
        pid = srv.pid
        assert pid is not None
        root = ss.root
    assert not _alive(pid), "closing the set stops its servers"
    assert not root.exists()


def test_a_server_that_exits_fails_fast(tmp_path: Path) -> None:
    with ServerSet(tmp_path) as ss:
        srv = Server("quitter", [sys.executable, "-c", "print('bad flag'); raise SystemExit(3)"],
                     0, ss.directory("q"), ready=lambda s: False)
        t = time.monotonic()
        with pytest.raises(ServerError, match=r"(?s)quitter exited \(3\).*bad flag"):
            ss.add(srv, timeout=30)
        assert time.monotonic() - t < 10


def test_forked_child_does_not_stop_the_parents_servers(tmp_path: Path) -> None:
    ss = ServerSet(tmp_path)
    srv = ss.add(Server("sleeper", [SLEEP, "300"], 0, ss.directory("s"), ready=lambda s: True))
    child = os.fork()
    if child == 0:  # a forked child sees the server running, and cannot stop it
        try:
            srv.stop()
        except ServerError:
            os._exit(0 if srv.running else 1)
        os._exit(2)
    assert os.waitpid(child, 0)[1] == 0
    owner = ss._owner
    ss._owner = -1  # as seen from a forked child
    ss.close()
    assert srv.running
    assert ss.root.exists()
    ss._owner, ss._closed = owner, False
    ss.close()
    assert not srv.running
    assert not ss.root.exists()


def test_servers_die_with_their_owner_and_stale_dirs_go(tmp_path: Path) -> None:
    """Kill -9 the process that started a server: the server dies, its dir is reclaimed."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        from xpro.lab.servers import Server, ServerSet
        ss = ServerSet({str(tmp_path)!r}, prefix="xpro-orphan-")
        srv = ss.add(Server("sleeper", [{SLEEP!r}, "300"], 0, ss.directory("s"),
                            ready=lambda s: True))
        print(srv.pid, ss.root, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    pid_s, root_s = done.stdout.split()
    pid, root = int(pid_s), Path(root_s)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the server outlived its owner"
    assert root.exists()
    alive = tmp_path / "xpro-orphan-alive"
    alive.mkdir()
    (alive / "owner.pid").write_text(str(os.getpid()))
    foreign = tmp_path / "xpro-orphan-foreign"
    foreign.mkdir()
    assert remove_stale_dirs("xpro-orphan-", tmp_path) == 1
    assert not root.exists()
    assert alive.exists()
    assert foreign.exists()
