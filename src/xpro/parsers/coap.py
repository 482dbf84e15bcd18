"""CoAP (RFC 7252) destination parser: the target of a request sent to a proxy.

A CoAP forward proxy receives requests on UDP port 5683 that name their real
target in options: ``Proxy-Uri`` (option 35, an absolute URI) or
``Uri-Host`` (option 3) with ``Uri-Port`` (option 7) and ``Proxy-Scheme``
(option 39).  :func:`parse_coap` returns that target in its canonical form
(:mod:`xpro.core.hostnames`): ``"host"`` or ``"host:port"`` (an IPv6 address
in brackets when a port follows), the host case-folded, percent-decoded,
without a trailing dot and, when it is not ASCII, encoded by UTS #46; the
port left out when it is 5683, and taken from the scheme when the request
gives none (``coaps://h`` is ``h:5684``).  So the spellings of one target
are one name, and one key (docs/semantics.rst, "Evasions").  ``Proxy-Uri``
wins over ``Uri-Host`` when both are present (RFC 7252 5.10.2 forbids mixing
them; the proxy would use the URI).

Anything that is not a well-formed CoAP message -- wrong version, a token
length above 8, an option with the reserved nibble 15, an option running
past the end, a payload marker with no payload -- gives ``None``; so does a
request a proxy must reject (a target option repeated or of a length out of
its range, RFC 7252 5.4.3 and 5.4.5: they are critical options), one whose
target is malformed (a ``Proxy-Uri`` that is not an absolute URI with a
host, or has user information or a fragment; a host that is not a host
name), and a well-formed message that names no target.  The parser never
raises: it runs on every CoAP packet of a flood.
"""

from __future__ import annotations

import re
from typing import Any

from xpro.core.hostnames import COAP_PORT, DEFAULT_PORTS, canonical_host, canonical_target, join
from xpro.hooks.specs import hookimpl

__all__ = ["COAP_PORT", "canonical_name", "parse_coap", "parse_options"]

URI_HOST = 3
URI_PORT = 7
PROXY_URI = 35
PROXY_SCHEME = 39

#: The lengths RFC 7252 5.10 allows each target option (a value outside is an
#: unrecognised critical option: the request is rejected).
_LENGTHS = {URI_HOST: (1, 255), URI_PORT: (0, 2), PROXY_URI: (1, 1034),
            PROXY_SCHEME: (1, 255)}

_PAYLOAD_MARKER = 0xFF
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_AUTHORITY = re.compile(r"[^/?]*")
_URI_PORT = re.compile(r"[0-9]*")  # RFC 3986 3.2.3: any number of digits, "" the default


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


def canonical_name(text: str) -> str | None:
    """The canonical form of a target as an operator writes it (``host[:port]``,
    port 5683 by default), as :func:`parse_coap` returns it; None if it is not one."""
    return canonical_target(text, COAP_PORT)


def _text(value: bytes) -> str | None:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # no control characters and no white space (isprintable() lets the ASCII space by)
    return text if text.isprintable() and " " not in text else None


def _from_proxy_uri(value: bytes) -> str | None:
    """The target of an absolute URI (RFC 7252 6.4 steps 1-3, RFC 3986 3.2), or None."""
    uri = _text(value)
    if uri is None:
        return None
    scheme, sep, rest = uri.partition(":")
    if not sep or not _SCHEME.fullmatch(scheme) or not rest.startswith("//") or "#" in rest:
        return None  # not absolute, no authority, or a fragment (6.4 step 3)
    authority = _AUTHORITY.match(rest, 2).group()  # type: ignore[union-attr]
    if "@" in authority:  # a CoAP URI has no user information (6.1)
        return None
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None
        host_text, after = authority[: end + 1], authority[end + 1 :]
    else:
        host_text, colon, port_text = authority.partition(":")
        after = colon + port_text
    if after and not after.startswith(":"):
        return None
    digits = after[1:]
    if not _URI_PORT.fullmatch(digits):
        return None
    if len(digits.lstrip("0")) > 5:
        return None
    port = int(digits) if digits else DEFAULT_PORTS.get(scheme.lower())
    if port is not None and not 0 < port <= 65535:
        return None
    host = canonical_host(host_text)
    return None if host is None else join(host, port)


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
    found: dict[int, bytes] = {}
    for number, value in options:
        bounds = _LENGTHS.get(number)
        if bounds is None:
            continue
        if number in found or not bounds[0] <= len(value) <= bounds[1]:
            return None  # a critical option repeated or out of range: rejected (5.4)
        found[number] = value
    if PROXY_URI in found:
        return _from_proxy_uri(found[PROXY_URI])
    if URI_HOST not in found:
        return None  # the target is the proxy itself (its IP destination)
    scheme = "coap"
    if PROXY_SCHEME in found:
        text = _text(found[PROXY_SCHEME])
        if text is None or not _SCHEME.fullmatch(text):
            return None
        scheme = text.lower()
    port = (int.from_bytes(found[URI_PORT], "big") if URI_PORT in found
            else DEFAULT_PORTS.get(scheme))
    if port == 0:
        return None
    text = _text(found[URI_HOST])
    host = None if text is None else canonical_host(text)
    return None if host is None else join(host, port)


#: Only CoAP's port is handed to this parser by the data path.
parse_coap.udp_ports = frozenset({COAP_PORT})  # type: ignore[attr-defined]
#: Operator names are put in the form the parser gives (see UserFilter.set_names).
parse_coap.canonical = canonical_name  # type: ignore[attr-defined]
#: The backend option (``afxdp.coap_names``) listing the names that get keys of their own.
parse_coap.names_option = "coap_names"  # type: ignore[attr-defined]


@hookimpl
def xpro_add_destination_parsers(registry: Any) -> None:
    registry.add("coap", parse_coap)
