"""The host's interfaces and privileges, as the data paths need them.

Read over netlink (pyroute2) inside a network namespace entered by this
thread only (:func:`xpro.bpf.xdp.in_netns`: the mount namespace, and so
bpffs, stays the daemon's).

Every data path parses a frame from its Ethernet header, so every backend
refuses an interface whose frames have none (:func:`require_ethernet`): a
tun device or WireGuard (``ARPHRD_NONE``), an IP tunnel (ipip, sit, gre:
``ARPHRD_TUNNEL``, ``ARPHRD_SIT``, ``ARPHRD_IPGRE``...).  There the IP header
would be read as MAC addresses and an ethertype: mostly "not IP" and passed,
whatever the flood (docs/semantics.rst, "Evasions").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

from xpro.bpf.xdp import in_netns
from xpro.errors import LinkTypeNotSupported, NetnsError, PrivilegeError

__all__ = ["ARPHRD_ETHER", "ARPHRD_LOOPBACK", "ARPHRD_NONE", "ETHERNET_LINK_TYPES", "Link",
           "NetnsError", "iproute", "link_index", "link_info", "link_type_name",
           "link_type_problem", "require_ethernet", "require_root"]

#: The link types (``ifi_type`` of a netlink link message) of ``<linux/if_arp.h>``.
ARPHRD_NAMES: dict[int, str] = {
    0: "ARPHRD_NETROM", 1: "ARPHRD_ETHER", 2: "ARPHRD_EETHER", 3: "ARPHRD_AX25",
    4: "ARPHRD_PRONET", 5: "ARPHRD_CHAOS", 6: "ARPHRD_IEEE802", 7: "ARPHRD_ARCNET",
    8: "ARPHRD_APPLETLK", 15: "ARPHRD_DLCI", 19: "ARPHRD_ATM", 23: "ARPHRD_METRICOM",
    24: "ARPHRD_IEEE1394", 27: "ARPHRD_EUI64", 32: "ARPHRD_INFINIBAND",
    256: "ARPHRD_SLIP", 257: "ARPHRD_CSLIP", 258: "ARPHRD_SLIP6", 259: "ARPHRD_CSLIP6",
    260: "ARPHRD_RSRVD", 264: "ARPHRD_ADAPT", 270: "ARPHRD_ROSE", 271: "ARPHRD_X25",
    272: "ARPHRD_HWX25", 280: "ARPHRD_CAN", 290: "ARPHRD_MCTP", 512: "ARPHRD_PPP",
    513: "ARPHRD_CISCO", 516: "ARPHRD_LAPB", 517: "ARPHRD_DDCMP", 518: "ARPHRD_RAWHDLC",
    519: "ARPHRD_RAWIP", 768: "ARPHRD_TUNNEL", 769: "ARPHRD_TUNNEL6", 770: "ARPHRD_FRAD",
    771: "ARPHRD_SKIP", 772: "ARPHRD_LOOPBACK", 773: "ARPHRD_LOCALTLK", 774: "ARPHRD_FDDI",
    775: "ARPHRD_BIF", 776: "ARPHRD_SIT", 777: "ARPHRD_IPDDP", 778: "ARPHRD_IPGRE",
    779: "ARPHRD_PIMREG", 780: "ARPHRD_HIPPI", 781: "ARPHRD_ASH", 782: "ARPHRD_ECONET",
    783: "ARPHRD_IRDA", 784: "ARPHRD_FCPP", 785: "ARPHRD_FCAL", 786: "ARPHRD_FCPL",
    787: "ARPHRD_FCFABRIC", 800: "ARPHRD_IEEE802_TR", 801: "ARPHRD_IEEE80211",
    802: "ARPHRD_IEEE80211_PRISM", 803: "ARPHRD_IEEE80211_RADIOTAP",
    804: "ARPHRD_IEEE802154", 805: "ARPHRD_IEEE802154_MONITOR", 820: "ARPHRD_PHONET",
    821: "ARPHRD_PHONET_PIPE", 822: "ARPHRD_CAIF", 823: "ARPHRD_IP6GRE",
    824: "ARPHRD_NETLINK", 825: "ARPHRD_6LOWPAN", 826: "ARPHRD_VSOCKMON",
    0xFFFF: "ARPHRD_VOID", 0xFFFE: "ARPHRD_NONE",
}
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 0xFFFE
#: Link types whose frames start with an Ethernet header, in XDP too: Ethernet
#: (veth, tap, bridges, VLANs, macvlan, gretap, vxlan...) and the loopback device,
#: which builds an Ethernet header (zero MAC addresses) for every packet.
ETHERNET_LINK_TYPES = frozenset({ARPHRD_ETHER, ARPHRD_LOOPBACK})

_WHAT = {
    ARPHRD_NONE: "a layer-3 device such as a tun device or WireGuard",
    519: "a raw-IP device",
    512: "a PPP link",
    768: "an IPv4 tunnel (ipip)",
    769: "an IPv6 tunnel (ip6tnl)",
    776: "an IPv6-in-IPv4 tunnel (sit)",
    778: "a GRE tunnel",
    823: "a GRE tunnel over IPv6 (ip6gre)",
}


def require_root(what: str = "this",
                 why: str = "network namespaces, veth pairs and XDP") -> None:
    """Raise :class:`PrivilegeError` unless the process runs as root (``why``:
    what it needs root for, in the message)."""
    if os.geteuid() != 0:
        raise PrivilegeError(f"{what} needs root ({why}): run it with sudo")


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
    """An interface as netlink reports it (``link_type``: its ``ARPHRD_*`` number)."""

    name: str
    netns: str | None
    index: int
    mac: str
    mtu: int
    up: bool
    link_type: int = ARPHRD_ETHER

    @property
    def link_type_name(self) -> str:
        return link_type_name(self.link_type)


def link_type_name(link_type: int) -> str:
    """``ARPHRD_ETHER`` for 1, and so on (the number for a type not in the header)."""
    return ARPHRD_NAMES.get(link_type, f"ARPHRD type {link_type}")


def link_type_problem(ifname: str, link_type: int, netns: str | None = None, *,
                      role: str = "attach to") -> tuple[str, str] | None:
    """Why xpro cannot work on an interface of ``link_type``, and what to do
    instead; None if it can (:data:`ETHERNET_LINK_TYPES`)."""
    if link_type in ETHERNET_LINK_TYPES:
        return None
    where = f" in network namespace {netns!r}" if netns else ""
    what = _WHAT.get(link_type, "a link whose frames do not start with an Ethernet header")
    problem = (f"cannot {role} {ifname}{where}: its link type is {link_type_name(link_type)} "
               f"({link_type}), {what}, and its frames have no Ethernet header; xpro parses "
               "every frame from an Ethernet header, so it would misread each packet here "
               "(most as not IP, passed whatever their rate)")
    fix = ("attach xpro to the Ethernet interface the traffic arrives on (for a tunnel, the "
           "underlay interface that carries it), or carry the traffic over an Ethernet "
           "device (tap instead of tun, gretap or vxlan instead of gre or ipip)")
    return problem, fix


def require_ethernet(ifname: str, netns: str | None = None, *, role: str = "attach to"
                     ) -> Link:
    """``ifname``'s link, or :class:`xpro.errors.LinkTypeNotSupported` if its frames
    have no Ethernet header (:data:`ETHERNET_LINK_TYPES`)."""
    link = link_info(ifname, netns)
    problem = link_type_problem(ifname, link.link_type, netns, role=role)
    if problem is not None:
        raise LinkTypeNotSupported(f"{problem[0]}.  Instead, {problem[1]}")
    return link


def link_info(ifname: str, netns: str | None = None) -> Link:
    """Index, MAC address, MTU, state and link type of ``ifname`` in ``netns``."""
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
            link_type=int(msg["ifi_type"]),
        )
