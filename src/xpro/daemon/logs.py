"""Structured logs: one event per line on standard error.

Library code logs with a stable ``event`` name and fields passed as
``extra`` (``log.info("attached", extra={"event": "attached", "interface":
"eth0"})``).  :func:`setup_logging` renders them as one JSON object per line
(``format = "json"``: ``ts``, ``level``, ``logger``, ``event``, ``message``
and the fields) or as ``key=value`` text for a terminal.

A record is one line whatever its strings hold (a peer's name from the
store, a server's error): JSON escapes every control character, and the
text format passes the message through :func:`xpro.core.text.printable` and
indents a traceback's lines, escaped too, under ``  | `` so that no line of
it reads as a record of its own.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
import threading
import traceback
from types import TracebackType
from typing import Any, TextIO

from xpro.config.kinds import redact
from xpro.core.text import printable

__all__ = ["JsonFormatter", "TextFormatter", "set_format", "setup_logging"]

#: Attributes every LogRecord has; anything else on a record is an event field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and k != "event"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record (secrets scrubbed: :func:`xpro.config.kinds.redact`)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(self._format(record))

    def _format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", "message"),
            "message": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message key=value ...`` for a human (secrets scrubbed)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(self._format(record))

    def _format(self, record: logging.LogRecord) -> str:
        ts = _dt.datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        extra = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in
                         _fields(record).items())
        line = f"{ts} {record.levelname:<7} {record.name}: {printable(record.getMessage())}"
        if extra:
            line += " " + extra
        if record.exc_info:
            line += "".join(f"\n  | {printable(t)}"
                            for t in self.formatException(record.exc_info).splitlines())
        return line


def setup_logging(fmt: str = "json", level: str = "info", *,
                  stream: TextIO | None = None) -> None:
    """Send the ``xpro`` loggers' records to ``stream`` (stderr) in ``fmt``.

    The libraries' own warnings (redis-py, grpc...) and uncaught exceptions
    of any thread go the same way, so every line the daemon writes passes
    through :func:`xpro.config.kinds.redact`: a store password never
    reaches the log, not even inside a traceback.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler._xpro = True  # type: ignore[attr-defined]
    root = logging.getLogger("xpro")
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    top = logging.getLogger()
    for h in list(top.handlers):
        if getattr(h, "_xpro", False):
            top.removeHandler(h)
    others = logging.StreamHandler(stream or sys.stderr)
    others.setFormatter(handler.formatter)
    others.setLevel(logging.WARNING)
    others._xpro = True  # type: ignore[attr-defined]
    top.addHandler(others)
    _redacting_excepthooks()


def set_format(fmt: str) -> None:
    """Render every later line in ``fmt`` (a reload of ``log.format``): the
    handlers :func:`setup_logging` installed, and no other."""
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    for h in [*logging.getLogger("xpro").handlers, *logging.getLogger().handlers]:
        if getattr(h, "_xpro", False):
            h.setFormatter(formatter)


def _redacting_excepthooks() -> None:
    """Uncaught exceptions (main thread and others) printed with secrets scrubbed."""

    def main_hook(et: type[BaseException], e: BaseException, tb: TracebackType | None) -> None:
        sys.stderr.write(redact("".join(traceback.format_exception(et, e, tb))))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        text = "".join(traceback.format_exception(args.exc_type, args.exc_value,
                                                  args.exc_traceback))
        sys.stderr.write(redact(f"Exception in thread {name}:\n{text}"))

    sys.excepthook = main_hook
    threading.excepthook = thread_hook
