"""The proxy daemon: :class:`Proxy` (``xpro run`` is a thin layer over it).

The names are imported on first use, so a client of the control socket
(:mod:`xpro.daemon.control`, ``xpro status``) does not import the daemon.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xpro.daemon.proxy import DaemonRunning, Proxy, parse_endpoint

__all__ = ["DaemonRunning", "Proxy", "parse_endpoint"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("xpro.daemon.proxy"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})  # autodoc and dir() list the lazy names
