"""Canonical host names and targets: one spelling for each name a packet can give.

A destination parser (:mod:`xpro.parsers.coap`) keys a request on the target
it names, and the operator lists the targets that get keys of their own
(``afxdp.coap_names``).  Both go through the functions here, so every
spelling of one target is one key: ``Victim.Example.``, ``victim.example``,
``v%69ctim.example``, ``ｖｉｃｔｉｍ。ｅｘａｍｐｌｅ`` and
``victim.example:5683`` are all ``victim.example`` (docs/semantics.rst,
"Evasions").

The rules (RFC 3986 section 6.2.2 and RFC 7252 sections 6.4 and 6.5):

* percent-encodings are decoded (UTF-8; RFC 7252 decodes all of them in the
  host, which includes the unreserved characters of RFC 3986 6.2.2.2);
* an IPv6 address (with or without brackets) is written in its compressed
  form, an IPv4-mapped one as IPv4; an IPv4 address in any form
  ``inet_aton`` takes (``10.1``, ``0x0a.0.0.1``, ``167772161``) as a dotted
  quad, as the WHATWG URL standard does;
* a name is case-folded and one trailing dot is removed; a name that is not
  ASCII is mapped and encoded by UTS #46 (non-transitional, the ``idna``
  package: docs/dependencies.rst says why not ``encodings.idna``), so
  full-width letters and ideographic dots are the ASCII ones; each label
  must then be a host name's (letters, digits and inner hyphens, RFC 1123),
  and an ``xn--`` label a valid A-label;
* the port is that of the scheme when none is given, and it is left out when
  it is CoAP's own (5683).

Anything that is not a host name -- an empty label, a character DNS names do
not have, an invalid A-label, a zone index, a port out of range -- gives
``None``; nothing here raises on any input.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from types import MappingProxyType

import idna

__all__ = ["COAP_PORT", "DEFAULT_PORTS", "canonical_host", "canonical_target", "join",
           "percent_decode"]

#: CoAP's port (RFC 7252 6.1): a target on it is written without a port.
COAP_PORT = 5683

#: The port of a URI that gives none, by scheme (RFC 7252 6.1-6.2, RFC 8323 8, RFC 9110 4.2).
DEFAULT_PORTS: Mapping[str, int] = MappingProxyType({
    "coap": 5683, "coaps": 5684, "coap+tcp": 5683, "coaps+tcp": 5684,
    "coap+ws": 80, "coaps+ws": 443, "http": 80, "https": 443,
})

#: A host name of labels (RFC 1123 2.1): letters, digits and inner hyphens.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
_HEXDIGITS = frozenset("0123456789abcdefABCDEF")
_PORT = re.compile(r"0*[0-9]{1,5}")
_NUMBER = re.compile(r"(0[xX][0-9a-fA-F]*|[0-9]+)")


def percent_decode(text: str) -> str | None:
    """``text`` with every ``%XX`` decoded (as UTF-8), or None if one is broken."""
    if "%" not in text:
        return text
    raw = text.encode("utf-8", "surrogatepass")
    out = bytearray()
    i = 0
    while i < len(raw):
        b = raw[i]
        if b == 0x25:  # '%'
            hx = raw[i + 1 : i + 3]
            if len(hx) != 2 or not all(chr(c) in _HEXDIGITS for c in hx):
                return None
            out.append(int(hx, 16))
            i += 3
        else:
            out.append(b)
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _ipv6(text: str) -> str | None:
    if "%" in text:  # a zone index names an interface of the sender, not a target
        return None
    try:
        addr = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    mapped = addr.ipv4_mapped
    return str(mapped) if mapped is not None else addr.compressed


def _ipv4(name: str) -> str | None:
    """The WHATWG IPv4 parser, for a name whose last label is a number: a dotted
    quad, or None if it is not a valid address."""
    parts = name.split(".")
    if len(parts) > 4:
        return None
    nums: list[int] = []
    for p in parts:
        if not _NUMBER.fullmatch(p):
            return None
        if p[:2].lower() == "0x":
            nums.append(int(p[2:] or "0", 16))
        elif len(p) > 1 and p[0] == "0":
            if any(c in "89" for c in p):
                return None
            nums.append(int(p, 8))
        else:
            nums.append(int(p))
    last = nums.pop()
    if any(n > 255 for n in nums) or last >= 256 ** (4 - len(nums)):
        return None
    value = last
    for k, n in enumerate(nums):
        value += n << (8 * (3 - k))
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def _a_label(label: str) -> bool:
    """Whether an ``xn--`` label is a valid A-label (IDNA 2008)."""
    try:
        idna.decode(label)
    except Exception:  # idna.IDNAError, UnicodeError: whatever a third-party codec raises
        return False
    return True


@functools.lru_cache(maxsize=4096)
def canonical_host(text: str) -> str | None:
    """The canonical form of a URI host or a ``Uri-Host`` value, or None if malformed.

    Remembered for the last 4096 hosts: a name that is not ASCII costs tens of
    microseconds in UTS #46 (the ``idna`` package checks every code point).
    """
    if not text or len(text) > 1024:
        return None
    if text.startswith("["):  # an IP-literal (RFC 3986 3.2.2); IPvFuture is not a target
        return _ipv6(text[1:-1]) if text.endswith("]") else None
    name = percent_decode(text)
    if not name:
        return None
    if ":" in name:  # Uri-Host holds an IPv6 address without brackets
        return _ipv6(name)
    if not name.isascii():
        try:  # UTS 46 maps case, width and the ideographic dots too
            name = idna.encode(name, uts46=True, transitional=False).decode("ascii")
        except Exception:  # idna.IDNAError, UnicodeError: on any input, no name
            return None
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253:
        return None
    if _NUMBER.fullmatch(name.rsplit(".", 1)[-1]):  # an address, as WHATWG decides it
        return _ipv4(name)
    if not _NAME.fullmatch(name):
        return None
    if "--" in name:
        for label in name.split("."):
            if label[2:4] == "--" and not (label.startswith("xn--") and _a_label(label)):
                return None  # "??--" is for encodings (RFC 5891 4.2.3.1): A-labels only
    return name


def join(host: str, port: int | None) -> str:
    """``host`` or ``host:port`` (``[v6]:port``); CoAP's own port is left out."""
    if port is None or port == COAP_PORT:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def canonical_target(text: str, default_port: int = COAP_PORT) -> str | None:
    """The canonical form of ``host``, ``host:port``, ``[v6]:port`` or a bare IPv6
    address, as an operator writes a target; None if it is not one.

    A target without a port is on ``default_port``.
    """
    text = text.strip()
    port_text = ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host_text, rest = text[: end + 1], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                return None
            port_text = rest[1:]
    elif text.count(":") == 1:
        host_text, _, port_text = text.partition(":")
    else:
        host_text = text  # a name, or a bare IPv6 address
    port = default_port
    if port_text:
        if not _PORT.fullmatch(port_text):
            return None
        port = int(port_text)
    if not 0 < port <= 65535:
        return None
    host = canonical_host(host_text)
    return None if host is None else join(host, port)
