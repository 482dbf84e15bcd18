"""Real store servers on loopback for the store tests (session-scoped, cleaned up).

* ``redis_server``: one ``redis-server``; ``redis_cluster``: three masters with
  a replica each; ``etcd_server``: one member; ``etcd_cluster``: three members.
* ``server_factory``: start extra servers (a test that stops and restarts one).
* ``store_factory``: parametrized over every backend; ``store_factory(mesh)``
  opens one more Store on the same backend and mesh (one per proxy).

The servers come from :mod:`xpro.lab.servers` (the same code the benchmarks and the
lab use): 127.0.0.1 only, free ports, a temporary data directory, all of it
stopped and deleted at teardown, also when a test fails.  A missing binary
skips the tests that need it, naming the package to install.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from xpro.lab.servers import (
    BinaryMissing,
    EtcdServer,
    RedisServer,
    Server,
    ServerSet,
    find_binary,
    free_port,
    orphan_proof,
    redis_command,
    wait_for,
)
from xpro.stores.base import Store

REDIS = find_binary("redis-server")
REDIS_CLI = find_binary("redis-cli")
ETCD = find_binary("etcd")
REDIS_SKIP = "redis-server not installed: apt-get install redis-server"
ETCD_SKIP = "etcd not installed: apt-get install etcd-server"

__all__ = ["ETCD", "REDIS", "REDIS_CLI", "Server", "Servers", "cluster_ok", "free_port",
           "orphan_proof", "role", "wait_for"]


class Servers:
    """Everything started for the session (a :class:`xpro.lab.servers.ServerSet`)."""

    def __init__(self) -> None:
        self.set = ServerSet(prefix="xpro-stores-")

    @property
    def root(self) -> Path:
        return self.set.root

    @property
    def servers(self) -> list[Server]:
        return self.set.servers

    def close(self) -> None:
        self.set.close()

    def redis(self, *, port: int | None = None, cluster: bool = False,
              extra: Sequence[str] = (), ready: Callable[[Server], bool] | None = None,
              **kw: Any) -> RedisServer:
        try:
            return self.set.redis(port=port, cluster=cluster, extra=extra, ready=ready, **kw)
        except BinaryMissing as exc:
            pytest.skip(str(exc))

    def redis_cluster(self) -> list[RedisServer]:
        try:
            return list(self.set.redis_cluster(3, 1))
        except BinaryMissing as exc:
            pytest.skip(str(exc))

    def etcd(self, members: int = 1, tls: tuple[Path, Path, Path] | None = None
             ) -> list[EtcdServer]:
        """``members`` etcd members; ``tls`` = (ca, cert, key) serves clients over TLS."""
        try:
            return list(self.set.etcd(members, tls=tls))
        except BinaryMissing as exc:
            pytest.skip(str(exc))


def cluster_ok(port: int) -> bool:
    """The Redis Cluster node on ``port`` serves all slots."""
    text = redis_command(port, "CLUSTER", "INFO", timeout=1.0).decode()
    return "cluster_state:ok" in text and "cluster_slots_ok:16384" in text


def role(port: int) -> str:
    """``master`` or ``slave``: the role of the Redis on ``port``."""
    v = redis_command(port, "ROLE", timeout=1.0)[0]
    return v.decode() if isinstance(v, bytes) else str(v)


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
    from xpro.plugins import open_store

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
