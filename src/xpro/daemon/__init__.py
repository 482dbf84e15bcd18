"""The proxy daemon: :class:`Proxy` (``xpro run`` is a thin layer over it)."""

from xpro.daemon.proxy import DaemonRunning, Proxy, parse_endpoint

__all__ = ["DaemonRunning", "Proxy", "parse_endpoint"]
