"""Real store servers on loopback for the store tests (session-scoped, cleaned up).

* ``redis_server``: one ``redis-server``; ``redis_cluster``: three masters with
  a replica each; ``etcd_server``: one member; ``etcd_cluster``: three members.
* ``server_factory``: start extra servers (a test that stops and restarts one).
* ``store_factory``: parametrized over every backend; ``store_factory(mesh)``
  opens one more Store on the same backend and mesh (one per proxy).

Every server listens on 127.0.0.1 only, on free ports, with a temporary data
directory; all of it is stopped and deleted at teardown, also when a test fails.
A missing binary skips the tests that need it with the package to install.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from xpro.store import Store

REDIS = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
ETCD = shutil.which("etcd")
REDIS_SKIP = "redis-server not installed: apt-get install redis-server"
ETCD_SKIP = "etcd not installed: apt-get install etcd-server"

_used_ports: set[int] = set()


def free_port(also: int = 0) -> int:
    """A free loopback TCP port (and ``port + also`` free too, for cluster buses)."""
    for _ in range(200):
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port in _used_ports or (also and port + also > 65535):
            continue
        if also:
            with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s2:
                try:
                    s2.bind(("127.0.0.1", port + also))
                except OSError:
                    continue
        _used_ports.add(port)
        return port
    raise RuntimeError("no free loopback port found")


SETPRIV = shutil.which("setpriv")


def orphan_proof(argv: list[str]) -> list[str]:
    """Prefix argv so the server gets SIGKILL if this process dies (util-linux setpriv)."""
    return [SETPRIV, "--pdeathsig", "KILL", "--", *argv] if SETPRIV else argv


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # the server is still starting
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout} s (last error: {last})")


@dataclass
class Server:
    """One server process we started: can be stopped, killed and started again."""

    name: str
    argv: list[str]
    port: int
    workdir: Path
    ready: Callable[[Server], bool]
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def start(self, timeout: float = 20.0) -> None:
        logf = self.workdir / f"{self.name}.log"
        self.logs.append(logf)
        with open(logf, "ab") as out:
            self.proc = subprocess.Popen(
                orphan_proof(self.argv), cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        try:
            wait_for(lambda: self._alive() and self.ready(self), timeout, self.name)
        except TimeoutError:
            tail = logf.read_text(errors="replace")[-2000:]
            self.stop()
            raise TimeoutError(f"{self.name} did not start; log tail:\n{tail}") from None

    def _alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"{self.name} exited ({code})")
        return True

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save (a crash)."""
        self.stop(signal.SIGKILL)


class Servers:
    """Everything started for the session, stopped and deleted in one place."""

    def __init__(self) -> None:
        _remove_stale_dirs()
        self.root = Path(tempfile.mkdtemp(prefix="xpro-stores-"))
        (self.root / "owner.pid").write_text(str(os.getpid()))
        self.servers: list[Server] = []

    def close(self) -> None:
        for s in self.servers:
            try:
                s.stop()
            except Exception:  # keep stopping the others
                s.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def _dir(self, name: str) -> Path:
        d = self.root / f"{name}-{uuid.uuid4().hex[:6]}"
        d.mkdir()
        return d

    # Redis ---------------------------------------------------------------

    def redis(self, *, port: int | None = None, cluster: bool = False, extra: tuple[str, ...] = (),
              ready: Callable[[Server], bool] | None = None) -> Server:
        if REDIS is None:
            pytest.skip(REDIS_SKIP)
        port = port or free_port(also=10000 if cluster else 0)
        d = self._dir(f"redis-{port}")
        argv = [REDIS, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
                "--save", "", "--appendonly", "no", "--protected-mode", "yes",
                "--daemonize", "no", "--logfile", ""]
        if cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0"]
        argv += list(extra)
        srv = Server(f"redis-{port}", argv, port, d, ready or _redis_ready)
        self.servers.append(srv)
        srv.start()
        return srv

    def redis_cluster(self) -> list[Server]:
        if REDIS is None or REDIS_CLI is None:
            pytest.skip(REDIS_SKIP)
        nodes = [self.redis(cluster=True) for _ in range(6)]
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes],
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        wait_for(lambda: all(cluster_ok(n.port) for n in nodes), 30, "redis cluster")
        wait_for(lambda: sum(role(n.port) == "slave" for n in nodes) == 3, 30,
                 "redis cluster replicas")
        return nodes

    # etcd ----------------------------------------------------------------

    def etcd(self, members: int = 1, tls: tuple[Path, Path, Path] | None = None) -> list[Server]:
        """``members`` etcd members; ``tls`` = (ca, cert, key) serves clients over TLS."""
        if ETCD is None:
            pytest.skip(ETCD_SKIP)
        client = "https" if tls else "http"
        ports = [(free_port(), free_port()) for _ in range(members)]
        names = [f"m{i}-{uuid.uuid4().hex[:4]}" for i in range(members)]
        initial = ",".join(f"{n}=http://127.0.0.1:{pp}" for n, (_, pp) in zip(names, ports,
                                                                               strict=True))
        token = uuid.uuid4().hex
        out = []
        for n, (cp, pp) in zip(names, ports, strict=True):
            d = self._dir(f"etcd-{n}")
            argv = [ETCD, "--name", n, "--data-dir", str(d / "data"),
                    "--listen-client-urls", f"{client}://127.0.0.1:{cp}",
                    "--advertise-client-urls", f"{client}://127.0.0.1:{cp}",
                    "--listen-peer-urls", f"http://127.0.0.1:{pp}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
                    "--initial-cluster", initial, "--initial-cluster-token", token,
                    "--initial-cluster-state", "new", "--unsafe-no-fsync",
                    "--heartbeat-interval", "50", "--election-timeout", "500",
                    "--logger", "zap", "--log-outputs", "stderr"]
            if tls:
                argv += ["--cert-file", str(tls[1]), "--key-file", str(tls[2])]
            srv = Server(f"etcd-{n}", argv, cp, d,
                         _etcd_ready if tls is None else _etcd_tls_ready(tls[0]))
            self.servers.append(srv)
            out.append(srv)
        # Members wait for each other: start all, then wait for each.
        for srv in out:
            logf = srv.workdir / f"{srv.name}.log"
            srv.logs.append(logf)
            with open(logf, "ab") as fh:
                srv.proc = subprocess.Popen(orphan_proof(srv.argv), cwd=srv.workdir, stdout=fh,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        for srv in out:
            try:
                wait_for(lambda s=srv: s._alive() and s.ready(s), 30, srv.name)
            except Exception:
                tail = srv.logs[-1].read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{srv.name} did not start:\n{tail}") from None
        return out


def _remove_stale_dirs() -> None:
    """Delete the temp dirs of earlier sessions that were killed before their teardown."""
    for d in Path(tempfile.gettempdir()).glob("xpro-stores-*"):
        try:
            pid = int((d / "owner.pid").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)  # its owner is gone (its servers died with it)
        except (OSError, ValueError):
            continue


def _redis_ready(srv: Server) -> bool:
    import redis

    r = redis.Redis(host="127.0.0.1", port=srv.port, socket_timeout=1)
    try:
        return bool(r.ping())
    finally:
        r.close()


def cluster_ok(port: int) -> bool:
    import redis

    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    try:
        info = r.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and "cluster_slots_ok:16384" in text
    finally:
        r.close()


def role(port: int) -> str:
    import redis

    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    try:
        rep = r.execute_command("ROLE")
        v = rep[0]
        return v.decode() if isinstance(v, bytes) else str(v)
    finally:
        r.close()


def _etcd_tls_ready(ca: Path) -> Callable[[Server], bool]:
    def ready(srv: Server) -> bool:
        import etcd3.etcdrpc as rpc
        import grpc

        creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
        ch = grpc.secure_channel(f"127.0.0.1:{srv.port}", creds)
        try:
            rpc.KVStub(ch).Range(rpc.RangeRequest(key=b"xpro-ready"), timeout=1)
            return True
        finally:
            ch.close()

    return ready


def _etcd_ready(srv: Server) -> bool:
    import etcd3.etcdrpc as rpc
    import grpc

    ch = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    try:
        rpc.KVStub(ch).Range(rpc.RangeRequest(key=b"xpro-ready"), timeout=1)
        return True
    finally:
        ch.close()


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    s = Servers()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="session")
def redis_server(servers: Servers) -> Server:
    return servers.redis()


@pytest.fixture(scope="session")
def redis_cluster(servers: Servers) -> list[Server]:
    return servers.redis_cluster()


@pytest.fixture(scope="session")
def etcd_server(servers: Servers) -> Server:
    return servers.etcd(1)[0]


@pytest.fixture(scope="session")
def etcd_cluster(servers: Servers) -> list[Server]:
    return servers.etcd(3)


@pytest.fixture
def server_factory(servers: Servers) -> Servers:
    """Start more servers for one test (stopped at the end of the session at the latest)."""
    return servers


BACKENDS = ["memory", "redis", "redis-cluster", "etcd", "etcd-cluster"]


def backend_url(request: pytest.FixtureRequest, backend: str) -> str:
    if backend == "memory":
        return f"memory://t-{uuid.uuid4().hex[:8]}"
    if backend == "redis":
        srv: Server = request.getfixturevalue("redis_server")
        return f"redis://127.0.0.1:{srv.port}"
    if backend == "redis-cluster":
        nodes: list[Server] = request.getfixturevalue("redis_cluster")
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes[:3])
    if backend == "etcd":
        e: Server = request.getfixturevalue("etcd_server")
        return f"etcd://127.0.0.1:{e.port}"
    members: list[Server] = request.getfixturevalue("etcd_cluster")
    return "etcd://" + ",".join(f"127.0.0.1:{m.port}" for m in members)


StoreFactory = Callable[..., Store]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_factory(request: pytest.FixtureRequest, backend: str) -> Iterator[StoreFactory]:
    """``store_factory(mesh=None, **options)``: a new Store on this test's backend.

    All stores of one test share a fresh mesh unless ``mesh`` is given; all are
    closed at the end of the test.
    """
    from xpro.store import open_store

    url = backend_url(request, backend)
    default_mesh = f"t{uuid.uuid4().hex[:10]}"
    made: list[Store] = []

    def make(mesh: str | None = None, **options: Any) -> Store:
        st = open_store(url, mesh=mesh or default_mesh, options=options or None)
        made.append(st)
        return st

    make.url = url  # type: ignore[attr-defined]
    make.backend = backend  # type: ignore[attr-defined]
    yield make
    for st in made:
        st.close()
    if backend == "memory":
        from xpro.stores.memory import MemoryStore

        for st in made:
            assert isinstance(st, MemoryStore)
            MemoryStore.forget(st.name, st.mesh)
