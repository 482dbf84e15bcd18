"""CoAP (RFC 7252) destination parser: the target of a request sent to a proxy.

A CoAP forward proxy receives requests on UDP port 5683 that name their real
target in options: ``Proxy-Uri`` (option 35, an absolute URI) or
``Uri-Host`` (option 3) with ``Uri-Port`` (option 7).  :func:`parse_coap`
returns that target as ``"host"`` or ``"host:port"`` (an IPv6 literal in
brackets when a port follows), the host in lower case.  ``Proxy-Uri`` wins
over ``Uri-Host`` when both are present (RFC 7252 5.10.2 forbids mixing them;
the proxy would use the URI).

Anything that is not a well-formed CoAP message -- wrong version, a token
length above 8, an option with the reserved nibble 15, an option running
past the end, a payload marker with no payload -- gives ``None``; so does a
well-formed message that names no target.  The parser never raises: it runs
on every CoAP packet of a flood.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from xpro.hooks.specs import hookimpl

__all__ = ["COAP_PORT", "parse_coap", "parse_options"]

COAP_PORT = 5683

URI_HOST = 3
URI_PORT = 7
PROXY_URI = 35

_PAYLOAD_MARKER = 0xFF


def _extended(nibble: int, data: bytes, i: int) -> tuple[int, int] | None:
    """The value of a delta/length nibble with its extended bytes: (value, next index)."""
    if nibble < 13:
        return nibble, i
    if nibble == 13:
        if i + 1 > len(data):
            return None
        return data[i] + 13, i + 1
    if nibble == 14:
        if i + 2 > len(data):
            return None
        return int.from_bytes(data[i : i + 2], "big") + 269, i + 2
    return None  # 15 is reserved outside the payload marker


def parse_options(data: bytes) -> list[tuple[int, bytes]] | None:
    """The options of a CoAP message as (number, value) pairs, or None if malformed."""
    if len(data) < 4:
        return None
    ver, tkl = data[0] >> 6, data[0] & 0x0F
    if ver != 1 or tkl > 8:
        return None
    i = 4 + tkl
    if i > len(data):
        return None
    if data[1] == 0:  # an Empty message has nothing after the header (RFC 7252 4.1)
        return [] if len(data) == 4 and tkl == 0 else None
    options: list[tuple[int, bytes]] = []
    number = 0
    while i < len(data):
        byte = data[i]
        if byte == _PAYLOAD_MARKER:
            return options if i + 1 < len(data) else None  # a marker needs a payload
        i += 1
        d = _extended(byte >> 4, data, i)
        if d is None:
            return None
        delta, i = d
        ln = _extended(byte & 0x0F, data, i)
        if ln is None:
            return None
        length, i = ln
        if i + length > len(data):
            return None
        number += delta
        options.append((number, data[i : i + length]))
        i += length
    return options


def _host(text: str) -> str | None:
    host = text.strip().lower()
    if not host or any(c in host for c in " /?#@"):
        return None
    return host


def _join(host: str, port: int | None) -> str:
    if port is None:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _from_proxy_uri(value: bytes) -> str | None:
    try:
        parts = urlsplit(value.decode("utf-8"))
        host = parts.hostname
        port = parts.port
    except (UnicodeDecodeError, ValueError):
        return None
    if not parts.scheme or not host:
        return None
    h = _host(host)
    return None if h is None else _join(h, port)


#: Targets remembered by the bytes after the token (see :func:`parse_coap`).
_MEMO_MAX = 4096
_memo: dict[bytes, str | None] = {}


def parse_coap(payload: bytes) -> str | None:
    """The target a CoAP request names (Proxy-Uri, else Uri-Host[:Uri-Port]), or None.

    Once the header is valid (version 1, a token of at most 8 bytes, not an
    Empty message), the target depends only on the bytes after the token: the
    message ID and the token, which change from request to request, do not
    count.  So the target is remembered by those bytes (for the last 4096
    seen): the requests of a flood mostly repeat their options, and a lookup
    costs a fifth of a parse.
    """
    if len(payload) < 4:
        return None
    tkl = payload[0] & 0x0F
    if payload[0] >> 6 != 1 or tkl > 8 or payload[1] == 0 or 4 + tkl > len(payload):
        return None
    tail = payload[4 + tkl :]
    try:
        return _memo[tail]
    except KeyError:
        pass
    target = _target(payload)
    if len(_memo) >= _MEMO_MAX:
        _memo.clear()
    _memo[tail] = target
    return target


def _target(payload: bytes) -> str | None:
    """:func:`parse_coap` without the memory."""
    try:
        options = parse_options(payload)
    except Exception:  # pragma: no cover - parse_options checks every bound
        return None
    if not options:
        return None
    host: str | None = None
    port: int | None = None
    for number, value in options:
        if number == PROXY_URI:
            target = _from_proxy_uri(value)
            if target is not None:
                return target
        elif number == URI_HOST and host is None:
            try:
                host = _host(value.decode("utf-8"))
            except UnicodeDecodeError:
                host = None
        elif number == URI_PORT and port is None and len(value) <= 2:
            port = int.from_bytes(value, "big")
    return None if host is None else _join(host, port)


#: Only CoAP's port is handed to this parser by the data path.
parse_coap.udp_ports = frozenset({COAP_PORT})  # type: ignore[attr-defined]


@hookimpl
def xpro_add_destination_parsers(registry: Any) -> None:
    registry.add("coap", parse_coap)
