"""An endpoint an operator types (``xpro explain SRC DST``): an address, with a
port for ``addr+port`` destinations."""

from __future__ import annotations

import ipaddress
import re

from xpro.core import layout as L
from xpro.core.text import printable
from xpro.errors import ConfigError

__all__ = ["parse_endpoint", "port_number", "split_bracketed"]

_PORT_RE = re.compile(r"[0-9]{1,5}")
_HINT = "write 192.0.2.1, 192.0.2.1:53, 2001:db8::1 or [2001:db8::1]:53"


def port_number(text: str) -> int:
    """A port written in ASCII digits, 1 to 65535; ValueError otherwise (``int``
    alone takes ``+5``, ``1_0`` and other scripts' digits)."""
    if not _PORT_RE.fullmatch(text) or not 0 < int(text) < 65536:
        raise ValueError(f"bad port {printable(text, 20)!r}: a number from 1 to 65535")
    return int(text)


def split_bracketed(item: str) -> tuple[str, str | None]:
    """``[V6]`` or ``[V6]:PORT`` -> (V6, PORT, or None without one); ValueError
    for an unclosed bracket or anything else after it."""
    host, closed, rest = item[1:].partition("]")
    if not item.startswith("[") or not closed or (rest and not rest.startswith(":")):
        raise ValueError(f"bad host {printable(item, 80)!r}: write [IPV6]:PORT")
    return host, rest[1:] if rest else None


def parse_endpoint(text: str, *, what: str) -> tuple[bytes, int, int]:
    """``ADDR``, ``ADDR:PORT`` or ``[V6]:PORT`` -> (addr16, port, has_port).

    Raises :class:`~xpro.errors.ConfigError` naming ``what`` for anything else:
    a name, an unclosed bracket or text after it, a port out of 1-65535, an
    IPv6 zone (``%eth0``: a flow key has none, so it would be dropped
    silently)."""
    shown = printable(text, 80)
    host, port_s = text.strip(), None
    try:
        if host.startswith("["):
            host, port_s = split_bracketed(host)
        elif host.count(":") == 1:
            host, _, port_s = host.partition(":")
        port = 0 if port_s is None else port_number(port_s)
    except ValueError as exc:
        raise ConfigError(f"{what} {shown!r}: {exc} ({_HINT})") from None
    if "%" in host:
        raise ConfigError(f"{what} {shown!r}: a zone (%...) is not part of a flow's "
                          f"address; leave it out ({_HINT})")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{what} {shown!r} is not an IP address ({_HINT})") from None
    return L.addr16(addr), port, int(port_s is not None)
