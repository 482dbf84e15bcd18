"""Real store servers on loopback: ``redis-server``, a Redis Cluster, etcd.

The store tests, the benchmarks and the lab start the servers a mesh needs
with this module, so that there is one way to do it::

    from xpro.lab.servers import ServerSet

    with ServerSet() as servers:
        redis = servers.redis()                  # one redis-server
        cluster = servers.redis_cluster()        # 3 masters with a replica each
        etcd = servers.etcd(3)                   # a 3-member etcd cluster
        store = open_store(cluster.url, mesh="lab")
        ...
    # every server stopped, every data directory deleted

What it guarantees:

* Every server listens on 127.0.0.1 only, on a free port (and a free cluster
  bus port, ``port + 10000``, for cluster nodes), with its data directory
  and log file in a temporary directory of the :class:`ServerSet`.
* A started server has answered a request (PING for Redis, ``/health`` for
  etcd) -- for a cluster, the whole cluster is up (all slots served and every
  replica attached; every member healthy).
* No orphans: servers run under ``setpriv --pdeathsig KILL`` (util-linux), so
  the kernel kills them when the process that started them dies, however it
  dies.  :meth:`ServerSet.close` (the end of the ``with``) stops them (SIGTERM,
  then SIGKILL) and deletes the directory, also after an error; a directory
  left behind by a process that was killed is deleted by the next
  :class:`ServerSet`.  A forked child (``multiprocessing``) never stops its
  parent's servers.  The servers die with the *thread* that started them
  (that is how ``PR_SET_PDEATHSIG`` works): start them from the main thread.
* A missing binary raises :class:`BinaryMissing` (a
  :class:`~xpro.errors.XproError`) naming the Debian package to install; a
  server that does not come up raises :class:`ServerError` with the tail of
  its log.

Single servers can be stopped, killed (a crash) and started again on the same
port and data directory, which is how the tests exercise outages and
failovers.  Readiness checks use no client library: a few lines of RESP for
Redis, HTTP for etcd.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Generic, NamedTuple, TypeVar, overload

from xpro.errors import XproError

__all__ = [
    "HOST",
    "BinaryMissing",
    "EtcdCluster",
    "EtcdServer",
    "RedisCluster",
    "RedisReplyError",
    "RedisServer",
    "Server",
    "ServerError",
    "ServerSet",
    "ServerTimeout",
    "TlsFiles",
    "find_binary",
    "free_port",
    "make_tls",
    "orphan_proof",
    "process_cpu_s",
    "redis_command",
    "remove_stale_dirs",
    "require_binary",
    "wait_for",
]

#: The only address servers listen on.
HOST = "127.0.0.1"

#: The Debian package that ships each binary.
PACKAGES = {
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "etcd": "etcd-server",
    "etcdctl": "etcd-client",
    "openssl": "openssl",
    "setpriv": "util-linux",
}


class ServerError(XproError):
    """A server could not be started, reached or stopped."""


class BinaryMissing(ServerError):
    """A server binary is not installed."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.package = PACKAGES.get(binary, binary)
        super().__init__(f"{binary} not installed: apt-get install {self.package}")


class ServerTimeout(ServerError, TimeoutError):
    """A server (or a cluster) was not ready in time."""


class RedisReplyError(ServerError):
    """Redis answered a command with an error."""


def find_binary(name: str) -> str | None:
    """The path of ``name`` on PATH, or None."""
    return shutil.which(name)


def require_binary(name: str) -> str:
    """The path of ``name`` on PATH; :class:`BinaryMissing` if it is not installed."""
    path = shutil.which(name)
    if path is None:
        raise BinaryMissing(name)
    return path


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

_handed_out: set[int] = set()


def process_cpu_s(pids: list[int]) -> float:
    """User and system CPU seconds of these processes, all their threads (/proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def free_port(also: int = 0) -> int:
    """A free TCP port on 127.0.0.1, not handed out before by this process.

    ``also``: ``port + also`` must be free too (a Redis Cluster bus port).
    """
    for _ in range(500):
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port in _handed_out or (also and (port + also > 65535 or port + also in _handed_out)):
            continue
        if also:
            with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s2:
                try:
                    s2.bind((HOST, port + also))
                except OSError:
                    continue
            _handed_out.add(port + also)
        _handed_out.add(port)
        return port
    raise ServerError("no free loopback port found")


def orphan_proof(argv: Sequence[str]) -> list[str]:
    """``argv`` under ``setpriv --pdeathsig KILL``: killed when its parent dies."""
    setpriv = find_binary("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else list(argv)


class _Exited(ServerError):
    """The process ended while we waited for it (no point waiting on)."""


def _pid_alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_exec(pid: int, wrapper: str, timeout: float = 2.0) -> None:
    """Wait until ``pid`` has left the ``setpriv`` wrapper (it then has its death signal).

    Closes the window in which the owner could die before the death signal is set.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            return  # gone already (or no /proc): nothing to wait for
        if argv0 and argv0.decode(errors="replace") != wrapper:
            return
        time.sleep(0.001)


def wait_for(check: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.05) -> None:
    """Call ``check`` until it returns true; an exception counts as "not yet".

    Raises :class:`ServerTimeout` (a :class:`TimeoutError`) after ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            if check():
                return
        except _Exited:
            raise
        except Exception as exc:  # still starting
            last = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise ServerTimeout(f"{what} not ready after {timeout} s (last error: {last})")


class TlsFiles(NamedTuple):
    """A CA certificate and a server certificate and key it signed (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def make_tls(directory: str | Path, *, names: Sequence[str] = ("127.0.0.1", "localhost"),
             days: int = 2) -> TlsFiles:
    """A throw-away CA and a server certificate for ``names`` (openssl).

    IP addresses among ``names`` go into the certificate as IP SANs, the rest
    as DNS names.  For tests and the lab only: the keys are not encrypted.
    """
    openssl = require_binary("openssl")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        done = subprocess.run([openssl, *args], cwd=d, capture_output=True, timeout=60,
                              check=False)
        if done.returncode:
            raise ServerError(f"openssl {args[0]} failed: "
                              f"{done.stderr.decode(errors='replace')[-500:]}")

    sans = []
    for n in names:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in n else socket.AF_INET, n)
            sans.append(f"IP:{n}")
        except OSError:
            sans.append(f"DNS:{n}")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", str(days), "-subj", "/CN=xpro throw-away CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", f"/CN={names[0]}")
    (d / "ext.cnf").write_text(f"subjectAltName={','.join(sans)}\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", str(days), "-extfile", "ext.cnf")
    return TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key")


# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------

ReadyCheck = Callable[["Server"], bool]


class Server:
    """One server process: started, stopped, killed and started again.

    It keeps its port, its data directory (``workdir``) and its log file
    (``log``, appended to at every start) across restarts.
    """

    def __init__(self, name: str, argv: Sequence[str], port: int, workdir: Path,
                 ready: ReadyCheck | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.workdir = workdir
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._ready = ready
        self._launcher = os.getpid()

    def __repr__(self) -> str:
        state = f"pid {self.proc.pid}" if self.running and self.proc else "stopped"
        return f"<{type(self).__name__} {self.name} {HOST}:{self.port} {state}>"

    @property
    def host(self) -> str:
        return HOST

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        """The process is alive (also when asked from a forked child of the owner)."""
        if self.proc is None:
            return False
        if os.getpid() != self._launcher:  # not our child: poll() cannot wait for it
            return _pid_alive(self.proc.pid)
        return self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running and self.proc is not None else None

    def ping(self) -> bool:
        """Whether the server answers (overridden per kind)."""
        return True

    def ready(self) -> bool:
        """The readiness check: the one given at construction, else :meth:`ping`."""
        if self._ready is not None:
            return self._ready(self)
        return self.ping()

    # --- life cycle ----------------------------------------------------------

    def launch(self) -> None:
        """Start the process without waiting for it to be ready."""
        if self.running:
            raise ServerError(f"{self.name} is already running")
        argv = orphan_proof(self.argv)
        self._launcher = os.getpid()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                argv, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        if argv[0] != self.argv[0]:
            _wait_exec(self.proc.pid, argv[0])

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the server answers; :class:`ServerError` if it exits or times out."""

        def check() -> bool:
            if not self.running:
                code = None if self.proc is None else self.proc.returncode
                raise _Exited(f"{self.name} exited ({code})")
            return self.ready()

        try:
            wait_for(check, timeout, self.name)
        except (ServerTimeout, _Exited) as exc:
            self.stop()
            raise ServerError(f"{self.name} did not start ({exc}); log tail:\n"
                              f"{self.log_tail()}") from None

    def start(self, timeout: float = 20.0) -> None:
        """Start the process and wait until it answers."""
        self.launch()
        self.wait_ready(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Send ``sig`` to the server's process group; SIGKILL after ``timeout`` s."""
        p = self.proc
        if p is None:
            return
        if os.getpid() != self._launcher:
            raise ServerError(f"{self.name} was started by process {self._launcher}: "
                              "stop it there")
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown, nothing saved (a crash)."""
        self.stop(signal.SIGKILL)

    def restart(self, timeout: float = 20.0) -> None:
        self.stop()
        self.start(timeout)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# --- Redis ------------------------------------------------------------------


def _resp(args: Sequence[str | bytes | int | float]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read_reply(f: BinaryIO) -> Any:
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ServerError("the connection closed in the middle of a reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise ServerError(f"unexpected RESP reply {line[:40]!r}")


def redis_command(port: int, *args: str | bytes | int | float, password: str | None = None,
                  username: str | None = None, ca: str | Path | None = None,
                  timeout: float = 2.0) -> Any:
    """Send one command to the Redis on ``127.0.0.1:port`` and return its reply.

    Bulk strings come back as bytes, status replies as str, errors raise
    :class:`RedisReplyError`.  ``ca``: connect with TLS, checking the server
    certificate against this CA.  One connection per call: for readiness
    checks and the odd INFO, not for data.
    """
    raw = socket.create_connection((HOST, port), timeout=timeout)
    sock: socket.socket = raw
    try:
        if ca is not None:
            ctx = ssl.create_default_context(cafile=str(ca))
            sock = ctx.wrap_socket(raw, server_hostname=HOST)
        with sock.makefile("rb") as f:
            if password is not None:
                auth: list[str] = ["AUTH", password] if username is None else [
                    "AUTH", username, password]
                sock.sendall(_resp(auth))
                _read_reply(f)
            sock.sendall(_resp(args))
            return _read_reply(f)
    finally:
        sock.close()


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


class RedisServer(Server):
    """One ``redis-server`` (no persistence unless asked for)."""

    def __init__(self, name: str, argv: Sequence[str], port: int, workdir: Path,
                 ready: ReadyCheck | None = None, *, password: str | None = None,
                 tls: TlsFiles | None = None, cluster: bool = False) -> None:
        super().__init__(name, argv, port, workdir, ready)
        self.password = password
        self.tls = tls
        self.cluster = cluster

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT`` (``rediss://`` with TLS; never the password)."""
        return f"{'rediss' if self.tls else 'redis'}://{self.address}"

    def command(self, *args: str | bytes | int | float, timeout: float = 2.0) -> Any:
        """One command (see :func:`redis_command`), with this server's password and TLS."""
        return redis_command(self.port, *args, password=self.password,
                             ca=self.tls.ca if self.tls else None, timeout=timeout)

    def ping(self) -> bool:
        return _text(self.command("PING", timeout=1.0)) == "PONG"

    def info(self, section: str = "default") -> dict[str, str]:
        """``INFO section`` as a dict of strings."""
        out = {}
        for line in _text(self.command("INFO", section)).splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out

    def used_memory(self) -> int:
        """``used_memory`` from ``INFO memory`` (bytes)."""
        return int(self.info("memory")["used_memory"])

    def role(self) -> str:
        """``master`` or ``slave``."""
        return _text(self.command("ROLE", timeout=1.0)[0])

    def cluster_ok(self) -> bool:
        """This node sees the cluster up with all 16384 slots served."""
        text = _text(self.command("CLUSTER", "INFO", timeout=1.0))
        return "cluster_state:ok" in text and "cluster_slots_ok:16384" in text


_S = TypeVar("_S", bound=Server)


class _Group(Sequence[_S], Generic[_S]):
    """Servers that form one cluster: a sequence of its members."""

    def __init__(self, members: Sequence[_S]) -> None:
        self.members = list(members)

    @overload
    def __getitem__(self, i: int) -> _S: ...

    @overload
    def __getitem__(self, i: slice) -> list[_S]: ...

    def __getitem__(self, i: int | slice) -> _S | list[_S]:
        return self.members[i]

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[_S]:
        return iter(self.members)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {', '.join(m.address for m in self.members)}>"

    @property
    def running(self) -> list[_S]:
        return [m for m in self.members if m.running]

    def stop(self) -> None:
        for m in self.members:
            m.stop()


class RedisCluster(_Group[RedisServer]):
    """A Redis Cluster: ``masters`` masters with ``replicas`` replicas each."""

    def __init__(self, nodes: Sequence[RedisServer], masters: int, replicas: int) -> None:
        super().__init__(nodes)
        self.masters_wanted = masters
        self.replicas = replicas

    @property
    def nodes(self) -> list[RedisServer]:
        return self.members

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a first contact."""
        return "redis+cluster://" + ",".join(n.address for n in self.members)

    def masters(self) -> list[RedisServer]:
        """The running nodes that are masters now."""
        return [n for n in self.members if n.running and n.role() == "master"]

    def ok(self) -> bool:
        """Every running node sees the cluster up with all slots served."""
        return all(n.cluster_ok() for n in self.members if n.running)

    def wait_ok(self, timeout: float = 60.0) -> None:
        wait_for(self.ok, timeout, "redis cluster")

    def create(self, timeout: float = 60.0) -> None:
        """``redis-cli --cluster create`` over the (running) nodes, then wait for it."""
        cli = require_binary("redis-cli")
        argv = [cli]
        if self.members and self.members[0].password:
            argv += ["--no-auth-warning", "-a", self.members[0].password]
        argv += ["--cluster", "create", *[n.address for n in self.members],
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        if done.returncode:
            raise ServerError("redis-cli --cluster create failed: "
                              f"{done.stdout.decode(errors='replace')[-1500:]}")
        self.wait_ok(timeout)
        want = self.masters_wanted * self.replicas
        wait_for(lambda: sum(n.role() == "slave" for n in self.members) == want, timeout,
                 "redis cluster replicas")


# --- etcd -------------------------------------------------------------------


class EtcdServer(Server):
    """One etcd member (clients on ``port``, peers on ``peer_port``)."""

    def __init__(self, name: str, argv: Sequence[str], port: int, workdir: Path,
                 ready: ReadyCheck | None = None, *, peer_port: int,
                 tls: TlsFiles | None = None) -> None:
        super().__init__(name, argv, port, workdir, ready)
        self.peer_port = peer_port
        self.tls = tls

    @property
    def url(self) -> str:
        """``etcd://127.0.0.1:PORT`` (``etcds://`` with TLS)."""
        return f"{'etcds' if self.tls else 'etcd'}://{self.address}"

    @property
    def client_url(self) -> str:
        """The URL etcd itself listens on (``http://`` or ``https://``)."""
        return f"{'https' if self.tls else 'http'}://{self.address}"

    def _http(self, path: str, body: dict[str, Any] | None = None,
              timeout: float = 2.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.client_url + path, data=data, method=(
            "GET" if body is None else "POST"))
        ctx = ssl.create_default_context(cafile=str(self.tls.ca)) if self.tls else None
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:  # /health answers 503 while unhealthy
            return json.loads(exc.read() or b"null")

    def ping(self) -> bool:
        """``/health`` says true: the member is up and has a leader."""
        got = self._http("/health", timeout=1.0)
        return isinstance(got, dict) and got.get("health") == "true"

    def status(self) -> dict[str, Any]:
        """The member's ``Maintenance.Status`` (through etcd's JSON gateway)."""
        got = self._http("/v3/maintenance/status", {})
        if not isinstance(got, dict):
            raise ServerError(f"{self.name}: unexpected status {got!r}")
        return got

    def is_leader(self) -> bool:
        st = self.status()
        return str(st.get("leader")) == str(st.get("header", {}).get("member_id"))


class EtcdCluster(_Group[EtcdServer]):
    """etcd members that form one cluster (one member is a cluster too)."""

    @property
    def url(self) -> str:
        """``etcd://`` (or ``etcds://``) listing every member."""
        scheme = "etcds" if self.members and self.members[0].tls else "etcd"
        return f"{scheme}://" + ",".join(m.address for m in self.members)

    def leader(self) -> EtcdServer | None:
        """The running member that is leader now, or None."""
        for m in self.running:
            try:
                if m.is_leader():
                    return m
            except (OSError, ValueError, ServerError):
                continue
        return None


# ---------------------------------------------------------------------------
# A set of servers that always cleans up
# ---------------------------------------------------------------------------

DEFAULT_PREFIX = "xpro-servers-"
_OWNER = "owner.pid"


def remove_stale_dirs(prefix: str = DEFAULT_PREFIX, parent: str | Path | None = None) -> int:
    """Delete directories of earlier :class:`ServerSet` whose process is gone.

    Their servers died with their owner (``--pdeathsig``); returns how many
    directories were deleted.
    """
    gone = 0
    for d in Path(parent or tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            pid = int((d / _OWNER).read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            gone += 1
        except (OSError, ValueError):  # not ours, or the owner is alive
            continue
    return gone


class ServerSet:
    """Servers started together, stopped and deleted together.

    Use it as a context manager, or call :meth:`close` (also registered with
    :mod:`atexit`).  ``parent`` is where the temporary directory goes (the
    system's temp dir by default); ``keep=True`` keeps it after close (logs,
    data) for a post mortem.
    """

    def __init__(self, parent: str | Path | None = None, *, prefix: str = DEFAULT_PREFIX,
                 keep: bool = False) -> None:
        remove_stale_dirs(prefix, parent)
        self.root = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        (self.root / _OWNER).write_text(str(os.getpid()))
        self.keep = keep
        self.servers: list[Server] = []
        self._owner = os.getpid()
        self._closed = False
        atexit.register(self.close)

    def __enter__(self) -> ServerSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ServerSet {self.root} {len(self.servers)} servers>"

    def _dir(self, name: str) -> Path:
        d = self.root / f"{name}-{uuid.uuid4().hex[:6]}"
        d.mkdir()
        return d

    def close(self) -> None:
        """Stop every server (SIGTERM, then SIGKILL) and delete the directory."""
        if self._closed or os.getpid() != self._owner:  # a forked child owns nothing
            return
        self._closed = True
        atexit.unregister(self.close)
        for s in reversed(self.servers):
            try:
                s.stop()
            except Exception:  # keep stopping the others
                with contextlib.suppress(Exception):
                    s.kill()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def directory(self, name: str) -> Path:
        """A new directory inside this set's (for a server's data, certificates...)."""
        return self._dir(name)

    def add(self, server: _S, *, start: bool = True, timeout: float = 20.0) -> _S:
        """Take any :class:`Server` into the set (stopped with it); start it unless told not to."""
        self.servers.append(server)
        if start:
            server.start(timeout)
        return server

    # --- Redis ---------------------------------------------------------------

    def redis(self, *, port: int | None = None, cluster: bool = False,
              password: str | None = None, tls: TlsFiles | None = None,
              persist: bool = False, extra: Sequence[str] = (),
              ready: ReadyCheck | None = None, node_timeout_ms: int = 1000,
              start: bool = True, timeout: float = 20.0) -> RedisServer:
        """One ``redis-server`` on 127.0.0.1.

        ``persist``: an append-only file fsynced at every write (a restart
        keeps everything).  ``password``: ``requirepass``.  ``tls``: clients
        connect over TLS only, on ``port``.  ``cluster``: a node for
        :meth:`redis_cluster`.  ``extra`` arguments go last (they win).
        ``ready`` replaces the readiness check (PING).
        """
        binary = require_binary("redis-server")
        port = port or free_port(also=10000 if cluster else 0)
        d = self._dir(f"redis-{port}")
        argv = [binary, "--port", str(port), "--bind", HOST, "--dir", str(d),
                "--save", "", "--appendonly", "no", "--protected-mode", "yes",
                "--daemonize", "no", "--logfile", ""]
        if persist:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        if password is not None:
            argv += ["--requirepass", password]
            if cluster:
                argv += ["--masterauth", password]
        if tls is not None:
            argv += ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(tls.cert),
                     "--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca),
                     "--tls-auth-clients", "no"]
            if cluster:
                argv += ["--tls-cluster", "yes", "--tls-replication", "yes"]
        if cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", str(node_timeout_ms),
                     "--cluster-replica-validity-factor", "0"]
        argv += list(extra)
        srv = RedisServer(f"redis-{port}", argv, port, d, ready, password=password, tls=tls,
                          cluster=cluster)
        self.servers.append(srv)
        if start:
            srv.start(timeout)
        return srv

    def redis_cluster(self, masters: int = 3, replicas: int = 1, *,
                      password: str | None = None, node_timeout_ms: int = 1000,
                      extra: Sequence[str] = (), timeout: float = 60.0) -> RedisCluster:
        """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each.

        Returns when every slot is served and every replica has attached.
        (Redis needs at least 3 masters.)
        """
        require_binary("redis-cli")
        nodes = [self.redis(cluster=True, password=password, node_timeout_ms=node_timeout_ms,
                            extra=extra) for _ in range(masters * (1 + replicas))]
        cl = RedisCluster(nodes, masters, replicas)
        cl.create(timeout)
        return cl

    # --- etcd ----------------------------------------------------------------

    def etcd(self, members: int = 1, *, tls: TlsFiles | tuple[Path, Path, Path] | None = None,
             fsync: bool = False, extra: Sequence[str] = (), timeout: float = 30.0
             ) -> EtcdCluster:
        """An etcd cluster of ``members`` members (1 is a single server).

        ``tls`` = (ca, cert, key): clients connect over TLS (peers stay on
        plain HTTP on loopback).  ``fsync=False`` runs with
        ``--unsafe-no-fsync`` (fast tests; a crash of the *machine* can lose
        data, a crash of the process cannot).  ``extra`` arguments go to every
        member.  Returns when every member is healthy.
        """
        binary = require_binary("etcd")
        files = TlsFiles(*tls) if tls is not None else None
        client = "https" if files else "http"
        ports = [(free_port(), free_port()) for _ in range(members)]
        names = [f"m{i}-{uuid.uuid4().hex[:4]}" for i in range(members)]
        initial = ",".join(f"{n}=http://{HOST}:{pp}"
                           for n, (_, pp) in zip(names, ports, strict=True))
        token = uuid.uuid4().hex
        out: list[EtcdServer] = []
        for n, (cp, pp) in zip(names, ports, strict=True):
            d = self._dir(f"etcd-{n}")
            argv = [binary, "--name", n, "--data-dir", str(d / "data"),
                    "--listen-client-urls", f"{client}://{HOST}:{cp}",
                    "--advertise-client-urls", f"{client}://{HOST}:{cp}",
                    "--listen-peer-urls", f"http://{HOST}:{pp}",
                    "--initial-advertise-peer-urls", f"http://{HOST}:{pp}",
                    "--initial-cluster", initial, "--initial-cluster-token", token,
                    "--initial-cluster-state", "new",
                    "--heartbeat-interval", "50", "--election-timeout", "500",
                    "--logger", "zap", "--log-outputs", "stderr"]
            if not fsync:
                argv.append("--unsafe-no-fsync")
            if files:
                argv += ["--cert-file", str(files.cert), "--key-file", str(files.key)]
            argv += list(extra)
            srv = EtcdServer(f"etcd-{n}", argv, cp, d, peer_port=pp, tls=files)
            self.servers.append(srv)
            out.append(srv)
        # Members wait for each other: launch all, then wait for each.
        for srv in out:
            srv.launch()
        for srv in out:
            srv.wait_ready(timeout)
        return EtcdCluster(out)
