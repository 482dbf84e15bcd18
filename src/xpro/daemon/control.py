"""The daemon's control socket: how ``xpro status``, ``flows``, ``explain`` and
``config reload`` reach a running :class:`~xpro.daemon.Proxy`.

A unix stream socket, root only (mode 0600).  One request per connection:
the client writes one JSON object (``{"op": "status", "args": {}}``) and a
newline, the daemon answers with one JSON object: ``{"ok": true, "result":
...}``, or ``{"ok": false, "error": "...", "exit_code": N}`` for an error the
user can fix (the same message and exit code the CLI gives).  A malformed or
failing request never affects the daemon.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xpro.errors import XproError

if TYPE_CHECKING:
    from xpro.daemon.api import ProxyView

__all__ = ["ControlError", "ControlServer", "NoDaemon", "request"]

log = logging.getLogger("xpro.daemon.control")

_MAX_REQUEST = 1 << 16


class ControlError(XproError):
    """The daemon answered a request with an error."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NoDaemon(XproError):
    """No daemon listens on the control socket."""

    exit_code = 3


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

    return {
        "ping": lambda: {"proxy": proxy.name, "pid": os.getpid()},
        "status": proxy.status,
        "flows": proxy.flows,
        "destinations": proxy.destinations,
        "explain": explain,
        "config": config,
        "reload": reload,
        "metrics": proxy.metrics_text,
    }


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        try:
            line = self.rfile.readline(_MAX_REQUEST)
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                raise ValueError("a request is {\"op\": NAME, \"args\": {...}}")
            fn = self.server.ops.get(req["op"])
            if fn is None:
                raise ControlError(f"unknown request {req['op']!r} (this daemon knows "
                                   f"{', '.join(sorted(self.server.ops))}): is the CLI "
                                   "newer than the daemon?", 2)
            args = req.get("args") or {}
            if not isinstance(args, dict):
                raise ValueError("args must be an object")
            reply: dict[str, Any] = {"ok": True, "result": fn(**args)}
        except XproError as exc:
            reply = {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
        except (ValueError, TypeError) as exc:
            reply = {"ok": False, "error": f"bad request: {exc}", "exit_code": 2}
        except Exception as exc:  # never take the daemon down
            log.exception("control request failed", extra={"event": "control_error"})
            reply = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}",
                     "exit_code": 1}
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(reply, default=str).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    ops: dict[str, Callable[..., Any]]


class ControlServer:
    """Serves :func:`_ops` of ``proxy`` on the unix socket ``path`` (a thread)."""

    def __init__(self, proxy: ProxyView, path: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        # The daemon holds the socket's lock (xpro.daemon): a file here is stale.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self.server = _Server(str(self.path), _Handler)
        except OSError as exc:
            raise XproError(f"control socket {path}: {exc.strerror}; choose another path "
                            "with --control-socket, or \"\" to turn it off") from None
        finally:
            os.umask(old)
        self.server.ops = _ops(proxy)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       name=f"xpro-control-{proxy.name}", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.thread.join(5)


def request(path: str, op: str, *, timeout: float = 30.0, **args: Any) -> Any:
    """Send one request to the daemon at ``path``; returns its result.

    Raises :class:`NoDaemon` when nothing listens there and
    :class:`ControlError` when the daemon answers with an error.
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoDaemon(f"no xpro daemon listens on {path}: start one (xpro run, or "
                           "systemctl start xpro), or name its socket with "
                           "--socket (the daemon's control.socket)") from None
        except PermissionError:
            raise XproError(f"{path}: permission denied; the control socket is root "
                            "only (run with sudo)") from None
        s.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        chunks = []
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    except TimeoutError:
        raise XproError(f"the daemon on {path} did not answer within {timeout:g} s") from None
    finally:
        s.close()
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise XproError(f"the daemon on {path} closed the connection without an answer"
                        ) from None
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "unknown error"), int(reply.get("exit_code", 1)))
    return reply.get("result")
