"""The daemon's control socket: how ``xpro status``, ``flows``, ``explain`` and
``config reload`` reach a running :class:`~xpro.daemon.Proxy`.

A unix stream socket, root only (mode 0600).  One request per connection:
the client writes one JSON object (``{"op": "status", "args": {}}``) and a
newline, the daemon answers with one JSON object: ``{"ok": true, "result":
...}``, or ``{"ok": false, "error": "...", "exit_code": N}`` for an error the
user can fix (the same message and exit code the CLI gives).  A malformed or
failing request never affects the daemon.

Nor do its clients.  One thread reads every connection (a selector), so an
idle client costs a file descriptor, not a thread:

* a client has :data:`READ_TIMEOUT` seconds from connecting to send its whole
  request (one deadline, not one per byte), and at most :data:`MAX_REQUEST`
  bytes; otherwise it gets an error reply and is closed;
* at most :data:`MAX_CLIENTS` connections are open.  A further one closes the
  connection that has been waiting longest for its request (which gets an
  error reply saying so), so idle clients cannot lock ``xpro status`` out; if
  every open connection is being answered, the new one gets the error;
* at most :data:`MAX_BUSY` requests are answered at once (a thread each); a
  further request gets an error reply ("busy: try again").

See docs/operations.rst, "Isolation".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xpro.core.text import printable
from xpro.errors import PrivilegeError, XproError

if TYPE_CHECKING:
    from xpro.daemon.api import ProxyView

__all__ = ["MAX_BUSY", "MAX_CLIENTS", "MAX_REQUEST", "READ_TIMEOUT", "BadRequest",
           "ControlError", "ControlServer", "NoDaemon", "handle_request", "parse_request",
           "request"]

log = logging.getLogger("xpro.daemon.control")

#: Seconds a client has, from connecting, to send its whole request.
READ_TIMEOUT = 5.0
#: Connections open at once (waiting for their request or being answered).
MAX_CLIENTS = 64
#: Requests answered at once.
MAX_BUSY = 8
#: The largest request, in bytes (the newline included).
MAX_REQUEST = 1 << 16
#: The largest answer the client reads (a daemon's list is bounded well under
#: it: :data:`MAX_ROWS`).
MAX_REPLY = 64 << 20
#: The deepest nesting of an answer the client takes (the daemon's are a few
#: levels; the CLI walks an answer recursively).
MAX_DEPTH = 32
#: The most rows a list request (``flows``, ``destinations``, the top of
#: ``status``) is answered with.
MAX_ROWS = 100_000


class ControlError(XproError):
    """The daemon answered a request with an error."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NoDaemon(XproError):
    """No daemon listens on the control socket."""

    exit_code = 3


def _deeper(obj: object, limit: int) -> bool:
    """Whether JSON data nests more than ``limit`` levels (walked without recursion)."""
    if not isinstance(obj, dict | list):
        return False
    stack: list[tuple[dict[Any, Any] | list[Any], int]] = [(obj, 0)]
    while stack:
        o, d = stack.pop()
        if d >= limit:
            return True
        stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o)
                     if isinstance(v, dict | list))  # containers only: a long flat list is cheap
    return False


def _peer_uid(s: socket.socket) -> int:
    """The user of the process at the other end of a connected unix socket."""
    creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    uid: int = struct.unpack("3i", creds)[1]
    return uid


def _rows(n: object, what: str) -> int:
    """A list request's row count: none given (``None``: all) is at most
    :data:`MAX_ROWS`, as is any more; a whole table of a million flows was
    hundreds of MiB of JSON built under the daemon's lock."""
    if n is None:
        return MAX_ROWS
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise BadRequest(f"{what} must be a count from 0 to {MAX_ROWS}")
    return min(n, MAX_ROWS)


def _ops(proxy: ProxyView) -> dict[str, Callable[..., Any]]:
    from xpro.config import dumps

    def explain(src: str, dst: str, proto: int = 17) -> dict[str, Any]:
        e = proxy.explain(src, dst, proto=proto)
        return {**e.to_dict(), "text": e.text()}

    def config() -> dict[str, Any]:
        return {"toml": dumps(proxy.config),
                "values": proxy.config.effective_config(with_sources=True),
                "path": str(proxy.config.path) if proxy.config.path else None}

    def reload() -> dict[str, Any]:
        changes = proxy.reload()
        return {"changes": [c._asdict() for c in changes]}

    def status(top: object = 5) -> dict[str, Any]:
        return proxy.status(top=_rows(top, "top"))

    def flows(limit: object = 20, **kw: Any) -> list[dict[str, Any]]:
        return proxy.flows(limit=_rows(limit, "limit"), **kw)

    def destinations(limit: object = 20) -> list[dict[str, Any]]:
        return proxy.destinations(limit=_rows(limit, "limit"))

    return {
        "ping": lambda: {"proxy": proxy.name, "pid": os.getpid()},
        "status": status,
        "flows": flows,
        "destinations": destinations,
        "explain": explain,
        "config": config,
        "reload": reload,
        "metrics": proxy.metrics_text,
    }


class BadRequest(ControlError):
    """A request that does not parse (exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"bad request: {message}", 2)


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """One request line -> ``(op, args)``; anything else raises :class:`BadRequest`."""
    if len(line) > MAX_REQUEST:
        raise BadRequest(f"larger than {MAX_REQUEST} bytes")
    try:
        req = json.loads(line)
    except RecursionError:
        raise BadRequest("nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise BadRequest(f"not JSON ({exc})") from None
    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
        raise BadRequest('a request is {"op": NAME, "args": {...}}')
    args = req.get("args") or {}
    if not isinstance(args, dict):
        raise BadRequest("args must be an object")
    return req["op"], args


def handle_request(ops: dict[str, Callable[..., Any]], line: bytes) -> dict[str, Any]:
    """The reply to one request line (never raises)."""
    try:
        op, args = parse_request(line)
        fn = ops.get(op)
        if fn is None:
            raise ControlError(f"unknown request {op!r} (this daemon knows "
                               f"{', '.join(sorted(ops))}): is the CLI "
                               "newer than the daemon?", 2)
        return {"ok": True, "result": fn(**args)}
    except XproError as exc:
        return {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
    except (ValueError, TypeError) as exc:
        return {"ok": False, "error": f"bad request: {exc}", "exit_code": 2}
    except Exception as exc:  # never take the daemon down
        log.exception("control request failed", extra={"event": "control_error"})
        return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}",
                "exit_code": 1}


def _encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, default=str).encode() + b"\n"


def _check_parent(path: Path) -> None:
    """Refuse a directory where another user could replace the socket (and the
    CLI would then talk to their daemon): owned by someone else than root or
    this user, or writable by others without the sticky bit."""
    for d in (path.parent, *path.parent.parents):  # a parent's parent could swap it too
        st = os.stat(d)
        mine = st.st_uid in (0, os.geteuid())
        loose = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX
        if not mine or loose:
            raise XproError(f"control socket {path}: the directory {d} belongs to or can be "
                            "written by other users; put the socket in a directory only root "
                            "can write (the default is /run/xpro/control.sock)")


@dataclass
class _Conn:
    sock: socket.socket
    opened: float
    buf: bytearray = field(default_factory=bytearray)


class ControlServer:
    """Serves :func:`_ops` of ``proxy`` on the unix socket ``path`` (a thread).

    ``read_timeout``, ``max_clients``, ``max_busy`` and ``max_request``: see
    :data:`READ_TIMEOUT`, :data:`MAX_CLIENTS`, :data:`MAX_BUSY` and
    :data:`MAX_REQUEST`.  ``refused`` counts the connections closed with an
    error reply, by why (``timeout``, ``too_large``, ``evicted``, ``full``,
    ``busy``).
    """

    def __init__(self, proxy: ProxyView, path: str, *, read_timeout: float = READ_TIMEOUT,
                 max_clients: int = MAX_CLIENTS, max_busy: int = MAX_BUSY,
                 max_request: int = MAX_REQUEST) -> None:
        self.path = Path(path)
        self.read_timeout = read_timeout
        self.max_clients = max_clients
        self.max_busy = max_busy
        self.max_request = max_request
        self.refused: dict[str, int] = {}
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        _check_parent(self.path)
        # The daemon holds the socket's lock (xpro.daemon): a socket here is
        # stale.  Anything else is not ours to delete.
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise XproError(f"control socket {path}: a file that is not a socket is there; "
                                "move it, or choose another path with --control-socket")
            if st.st_uid not in (0, os.geteuid()):
                raise XproError(f"control socket {path}: a socket of user {st.st_uid} is "
                                "there (in a shared directory); remove it, or choose another "
                                "path with --control-socket")
            self.path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(str(self.path))
            self.sock.listen(128)
        except OSError as exc:
            self.sock.close()
            raise XproError(f"control socket {path}: {exc.strerror}; choose another path "
                            "with --control-socket, or \"\" to turn it off") from None
        finally:
            os.umask(old)
        self.sock.setblocking(False)
        self.ops = _ops(proxy)
        self._pending: dict[socket.socket, _Conn] = {}  # oldest first
        self._busy = 0
        self._lock = threading.Lock()
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self.thread = threading.Thread(target=self._serve, name=f"xpro-control-{proxy.name}",
                                       daemon=True)
        self.thread.start()

    # -- the reading thread --------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop:
            now = time.monotonic()
            wait = 1.0
            if self._pending:
                first = next(iter(self._pending.values()))  # the oldest expires first
                wait = min(wait, max(0.0, first.opened + self.read_timeout - now))
            try:
                events = self._sel.select(wait)
            except OSError:  # pragma: no cover - a closed selector on close()
                return
            for key, _ in events:
                if key.fileobj is self.sock:
                    self._accept()
                elif key.fileobj is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
                elif isinstance(key.fileobj, socket.socket):
                    conn = self._pending.get(key.fileobj)
                    if conn is not None:
                        self._read(conn)
            self._expire(time.monotonic())

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of file descriptors: make room, retry later
                log.warning("control socket: accept failed: %s", exc.strerror,
                            extra={"event": "control_accept_failed"})
                if self._pending:
                    self._evict_oldest()
                else:
                    time.sleep(0.05)
                return
            sock.setblocking(False)
            with self._lock:
                busy = self._busy
            if len(self._pending) + busy >= self.max_clients:
                if not self._pending:
                    self._refuse(sock, "full", f"too many control clients: {busy} requests "
                                 "are being answered; try again")
                    continue
                self._evict_oldest()
            self._pending[sock] = _Conn(sock, time.monotonic())
            self._sel.register(sock, selectors.EVENT_READ)

    def _evict_oldest(self) -> None:
        conn = next(iter(self._pending.values()))
        self._drop(conn)
        age = time.monotonic() - conn.opened
        self._refuse(conn.sock, "evicted", f"closed: {self.max_clients} control clients are "
                     f"connected and this one sent no request in {age:.1f} s")

    def _drop(self, conn: _Conn) -> None:
        """Stop reading ``conn`` (its socket stays open)."""
        del self._pending[conn.sock]
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            conn.sock.close()
            return
        if data:
            conn.buf += data
        nl = conn.buf.find(b"\n")
        if (nl < 0 and len(conn.buf) > self.max_request) or nl >= self.max_request:
            self._drop(conn)
            self._refuse(conn.sock, "too_large", f"bad request: larger than "
                         f"{self.max_request} bytes", exit_code=2)
            return
        if nl < 0 and data:
            return  # more to come
        self._drop(conn)
        if not conn.buf:  # closed without a request
            conn.sock.close()
            return
        line = bytes(conn.buf[: nl + 1] if nl >= 0 else conn.buf)
        with self._lock:
            busy = self._busy >= self.max_busy
            if not busy:
                self._busy += 1
        if busy:
            self._refuse(conn.sock, "busy", f"the daemon is busy with {self.max_busy} "
                         "requests: try again")
            return
        try:
            threading.Thread(target=self._answer, args=(conn.sock, line), daemon=True,
                             name="xpro-control-request").start()
        except RuntimeError:  # no thread to be had (TasksMax): this request only
            with self._lock:
                self._busy -= 1
            self._refuse(conn.sock, "busy", "the daemon could not start a thread for the "
                         "request: try again")

    def _expire(self, now: float) -> None:
        for conn in list(self._pending.values()):
            if now - conn.opened < self.read_timeout:
                break  # oldest first: the others are younger
            self._drop(conn)
            self._refuse(conn.sock, "timeout", f"bad request: no complete request within "
                         f"{self.read_timeout:g} s", exit_code=2)

    def _refuse(self, sock: socket.socket, why: str, message: str, exit_code: int = 1) -> None:
        """Reply ``message`` (best effort, never blocking) and close ``sock``."""
        self.refused[why] = self.refused.get(why, 0) + 1
        with contextlib.suppress(OSError):
            sock.recv(1 << 16)  # what the client sent: unread data would reset its read
        with contextlib.suppress(OSError):
            sock.send(_encode({"ok": False, "error": message, "exit_code": exit_code}))
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    # -- the answering threads --------------------------------------------------------

    def _answer(self, sock: socket.socket, line: bytes) -> None:
        try:
            reply = _encode(handle_request(self.ops, line))
            sock.setblocking(True)
            sock.settimeout(self.read_timeout)  # a client that does not read its answer
            sock.sendall(reply)
        except OSError:
            pass
        finally:
            sock.close()
            with self._lock:
                self._busy -= 1

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self.thread.join(5)
        for conn in list(self._pending.values()):
            self._drop(conn)
            conn.sock.close()
        self._sel.close()
        self.sock.close()
        self._wake_r.close()
        self._wake_w.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def request(path: str, op: str, *, timeout: float = 30.0, **args: Any) -> Any:
    """Send one request to the daemon at ``path``; returns its result.

    Raises :class:`NoDaemon` when nothing listens there and
    :class:`ControlError` when the daemon answers with an error.
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        try:
            while True:
                try:
                    s.connect(path)
                    break
                except BlockingIOError:  # the daemon's backlog is full (a flood of clients)
                    if time.monotonic() > deadline:
                        raise TimeoutError from None
                    time.sleep(0.01)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoDaemon(f"no xpro daemon listens on {printable(path)}: start one (xpro run, or "
                           "systemctl start xpro), or name its socket with "
                           "--socket (the daemon's control.socket)") from None
        except PermissionError:
            raise PrivilegeError(f"{printable(path)}: permission denied; the control socket "
                                 "is root only (run with sudo)") from None
        except OSError as exc:  # too long, under a file, not a socket, empty...
            raise NoDaemon(f"cannot reach a daemon at {printable(path)!r} "
                           f"({exc.strerror or exc}): give the path of the daemon's socket "
                           "with --socket (its control.socket)") from None
        peer = _peer_uid(s)
        if peer not in (0, os.geteuid()):
            raise XproError(f"the socket {printable(path)} is served by user {peer}, not by "
                            "root: not an xpro daemon; check the path (--socket) and who can "
                            "write its directory")
        # A daemon that refuses the connection answers and closes at once: keep
        # reading its answer even if the request could not be written.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        chunks = []
        size = 0
        while True:
            # One deadline for the whole answer, however slowly it comes.
            s.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                chunk = s.recv(1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_REPLY:
                raise XproError(f"the daemon on {printable(path)} answered more than "
                                f"{MAX_REPLY >> 20} MiB: ask for less (--limit, --top)")
            chunks.append(chunk)
    except TimeoutError:
        raise XproError(f"the daemon on {printable(path)} did not answer within {timeout:g} s"
                        ) from None
    finally:
        s.close()
    try:
        reply = json.loads(b"".join(chunks))
    except RecursionError:
        raise XproError(f"the daemon on {printable(path)} answered JSON nested too deep: "
                        "not a reply of this xpro") from None
    except ValueError:
        raise XproError(f"the daemon on {printable(path)} closed the connection without an "
                        "answer") from None
    if _deeper(reply, MAX_DEPTH):
        raise XproError(f"the daemon on {printable(path)} answered JSON nested too deep: "
                        "not a reply of this xpro")
    if not isinstance(reply, dict):
        raise XproError(f"the daemon on {printable(path)} answered {type(reply).__name__}, "
                        "not a reply of this xpro: is it the same version?")
    if not reply.get("ok"):
        code = reply.get("exit_code", 1)
        raise ControlError(printable(str(reply.get("error", "unknown error"))),
                           code if isinstance(code, int) and 0 < code < 256 else 1)
    return reply.get("result")
