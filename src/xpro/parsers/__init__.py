"""Destination parsers: find a packet's real destination in its payload.

An application-level proxy (a CoAP forward proxy, an HTTP proxy) receives
every request on one address; the service a request is really for is named
inside it.  Keying the per-destination limit (T_F2) on that name instead of
the proxy's address lets xpro protect each service behind the proxy on its
own.  The kernel program cannot read variable-length options, so parsers run
on the ``afxdp`` path (:class:`xpro.datapath.afxdp.filter.UserFilter`).

A parser is a callable ``parser(payload: bytes) -> str | None``: the UDP
payload in, the destination (``"host"`` or ``"host:port"``) out, ``None``
when the payload is not its protocol.  It must never raise.  Optional
attributes:

``udp_ports``
    A set of destination ports: the data path hands it only those packets.
``canonical``
    ``canonical(name) -> str | None``: a name as an operator writes it, in
    the form the parser returns (None if it is not a name).  A parser that
    has it keys only the names it is given (``UserFilter(names=...)``), put
    through it; every other packet keeps its IP destination, so a flood
    cannot split itself over invented names (docs/semantics.rst, "Evasions").
    The parser must then return every spelling of a destination in that one
    form.
``names_option``
    The ``afxdp`` backend option holding that list (``"coap_names"``).

Parsers register by name through the ``xpro_add_destination_parsers`` hook;
the built-in one is :mod:`xpro.parsers.coap`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["DestinationParser"]

#: ``parser(payload) -> destination | None``.
DestinationParser = Callable[[bytes], Any]
