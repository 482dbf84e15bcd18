"""An endpoint an operator types (``xpro explain SRC DST``): an address, with a
port for ``addr+port`` destinations."""

from __future__ import annotations

import ipaddress
import re

from xpro.core import layout as L
from xpro.core.text import printable
from xpro.errors import ConfigError

__all__ = ["parse_endpoint"]

_PORT_RE = re.compile(r"[0-9]{1,5}")
_HINT = "write 192.0.2.1, 192.0.2.1:53, 2001:db8::1 or [2001:db8::1]:53"


def parse_endpoint(text: str, *, what: str) -> tuple[bytes, int, int]:
    """``ADDR``, ``ADDR:PORT`` or ``[V6]:PORT`` -> (addr16, port, has_port).

    Raises :class:`~xpro.errors.ConfigError` naming ``what`` for anything else:
    a name, an unclosed bracket or text after it, a port out of 1-65535, an
    IPv6 zone (``%eth0``: a flow key has none, so it would be dropped
    silently)."""
    shown = printable(text, 80)
    host, port, has_port = text.strip(), 0, 0
    if host.startswith("["):
        inner, closed, rest = host[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ConfigError(f"{what} {shown!r}: {_HINT}")
        host = inner
        if rest:
            port, has_port = _port(rest[1:], what), 1
    elif host.count(":") == 1:
        host, _, p = host.partition(":")
        port, has_port = _port(p, what), 1
    if "%" in host:
        raise ConfigError(f"{what} {shown!r}: a zone (%...) is not part of a flow's "
                          f"address; leave it out ({_HINT})")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{what} {shown!r} is not an IP address ({_HINT})") from None
    return L.addr16(addr), port, has_port


def _port(text: str, what: str) -> int:
    if not _PORT_RE.fullmatch(text) or not 0 < int(text) < 65536:
        raise ConfigError(f"{what}: port {printable(text, 20)!r} must be a number from 1 to "
                          "65535")
    return int(text)
