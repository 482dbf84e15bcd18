"""Interfaces without an Ethernet header, made in a test's own namespace.

A ``tun`` device through the ``/dev/net/tun`` ioctls (made from a thread
inside the namespace: the device goes where the file was opened), and IP
tunnels (``ipip``, ``gre``) over netlink where the kernel has them.  Each is
recorded in the :class:`Topology`, which deletes it before its namespace.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from xpro.bpf.xdp import in_netns
from xpro.lab.namespaces import Topology

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000

#: The link type each kind of interface has (``<linux/if_arp.h>``).
LINK_TYPES = {"tun": "ARPHRD_NONE", "tap": "ARPHRD_ETHER", "ipip": "ARPHRD_TUNNEL",
              "gre": "ARPHRD_IPGRE"}


def add_tun(topo: Topology, netns: str, *, tap: bool = False) -> str:
    """A persistent tun (or tap) device in ``netns``; returns its name."""
    name = f"xt{topo.run}{len(topo.links)}{'p' if tap else 'n'}"
    with in_netns(netns):
        fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        ifr = struct.pack("16sH", name.encode(), (IFF_TAP if tap else IFF_TUN) | IFF_NO_PI)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        topo.links.append((name, netns))
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)
    return name


def add_link(topo: Topology, netns: str, kind: str) -> str:
    """An interface of ``kind`` (tun, tap, ipip, gre) in ``netns``; skips the test
    if the kernel has no driver for it."""
    if kind in ("tun", "tap"):
        return add_tun(topo, netns, tap=kind == "tap")
    name = f"xt{topo.run}{len(topo.links)}{kind[0]}"
    local = {f"{kind}_local": "192.0.2.1", f"{kind}_remote": "192.0.2.2"}
    with in_netns(netns):
        ipr = IPRoute()
    try:
        ipr.link("add", ifname=name, kind=kind, **local)
    except NetlinkError as exc:
        if exc.code in (errno.EOPNOTSUPP, errno.ENODEV, errno.ENOENT):
            pytest.skip(f"this kernel cannot make {kind} interfaces "
                        f"({errno.errorcode.get(exc.code, exc.code)}: no {kind} driver)")
        raise
    finally:
        ipr.close()
    topo.links.append((name, netns))
    return name
