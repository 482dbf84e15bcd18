"""The host's interfaces and privileges, as the data paths need them.

Read over netlink (pyroute2) inside a network namespace entered by this
thread only (:func:`xpro.bpf.xdp.in_netns`: the mount namespace, and so
bpffs, stays the daemon's).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

from xpro.bpf.xdp import in_netns
from xpro.errors import NetnsError, PrivilegeError

__all__ = ["Link", "NetnsError", "iproute", "link_index", "link_info", "require_root"]


def require_root(what: str = "this") -> None:
    """Raise :class:`PrivilegeError` unless the process runs as root."""
    if os.geteuid() != 0:
        raise PrivilegeError(
            f"{what} needs root (network namespaces, veth pairs and XDP): run it with sudo"
        )


@contextlib.contextmanager
def iproute(netns: str | None) -> Iterator[Any]:
    # The socket is made in the namespace by this thread, without a child
    # process (pyroute2's IPRoute(netns=...) forks one).
    with in_netns(netns):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def link_index(ipr: Any, ifname: str, netns: str | None) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        where = f"network namespace {netns!r}" if netns else "the root network namespace"
        raise NetnsError(f"no interface {ifname!r} in {where}")
    return int(found[0])


@dataclass(frozen=True)
class Link:
    """An interface as netlink reports it."""

    name: str
    netns: str | None
    index: int
    mac: str
    mtu: int
    up: bool


def link_info(ifname: str, netns: str | None = None) -> Link:
    """Index, MAC address, MTU and state of ``ifname`` in ``netns``."""
    with iproute(netns) as ipr:
        idx = link_index(ipr, ifname, netns)
        msg = ipr.get_links(idx)[0]
        return Link(
            name=ifname,
            netns=netns,
            index=idx,
            mac=str(msg.get_attr("IFLA_ADDRESS")),
            mtu=int(msg.get_attr("IFLA_MTU")),
            up=bool(msg["flags"] & 1),
        )
