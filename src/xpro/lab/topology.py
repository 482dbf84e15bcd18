"""The lab's network: an "internet", N proxies and one protected service, in namespaces.

::

                          ┌── p0 ──┐
     net ── veth (out) ───┤  XDP   ├── veth (in) ──┐
     (every bot and       │ forward│               │
      client sends  ...   └────────┘        ...    svc  10.200.0.1 (protected)
      from here)          ┌── pN-1 ┐               │    10.200.0.2 (another service)
          ── veth (out) ──┤  XDP   ├── veth (in) ──┘
                          └────────┘

* ``net`` is the internet side.  It holds the outer end of every proxy's
  outside veth; the senders write prebuilt frames there with any source
  address (bots, clients, spoofed sources are addresses, not namespaces), so
  which proxy a packet goes through is which link it is written to.
* Each proxy namespace ``p{i}`` has the filter attached (native XDP by
  default; :func:`xpro.lab.mesh.placement` for the other data paths) to its
  outside interface and forwards what passes (``ip_forward``) to the service
  over its own inside veth.
* The service addresses sit on the loopback of ``svc`` and are the same
  behind every proxy (anycast style), so every proxy sees the same
  destination key, as in the paper's mesh.  Replies are not needed: the
  service only counts.  Reverse-path filtering is off everywhere (sources are
  spoofed by design).

GRO is on at the receiving end of every veth: a veth drops frames written to
its peer unless the receiver has an XDP program or GRO (docs/platform.rst), and the
baselines run without XDP.

Names: every namespace is ``xpro-lab{run}-{role}``, every interface carries
the alias ``xpro-lab{run}``, pinned objects go under
``/sys/fs/bpf/xpro-lab{run}-p{i}``; the run holds
``/run/xpro/netns/xpro-lab{run}.lock`` while it lives.  :func:`lab_down`
removes whatever dead runs left behind, and stops live ones if asked.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import signal
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from xpro.lab.namespaces import (
    LOCK_DIR,
    PREFIX,
    Topology,
    add_address,
    add_route,
    cleanup_stale,
    link_info,
    list_netns,
    run_in_netns,
)

__all__ = [
    "LAB_PREFIX",
    "PIN_ROOT",
    "Addressing",
    "Lab",
    "ProxySite",
    "build_lab",
    "lab_down",
    "link_drops",
    "live_runs",
]

#: Prefix of every lab namespace, alias, lock and pin directory.
LAB_PREFIX = f"{PREFIX}lab"
#: Where the proxies of a lab run pin their maps and links (one directory each).
PIN_ROOT = Path("/sys/fs/bpf")

_NUD_PERMANENT = 0x80


@dataclass(frozen=True)
class Addressing:
    """The lab's address plan (the same in every run: namespaces are private)."""

    ipv6: bool = False

    @property
    def service(self) -> str:
        """The protected service (the destination under attack)."""
        return "fd00:200::1" if self.ipv6 else "10.200.0.1"

    @property
    def other_service(self) -> str:
        """A second service behind the same proxies (not attacked)."""
        return "fd00:200::2" if self.ipv6 else "10.200.0.2"

    @property
    def bots(self) -> str:
        return "fd00:b::/48" if self.ipv6 else "10.128.0.0/16"

    @property
    def clients(self) -> str:
        return "fd00:c::/48" if self.ipv6 else "10.100.0.0/16"

    @property
    def crowd(self) -> str:
        """New legitimate clients of a flash crowd."""
        return "fd00:d::/48" if self.ipv6 else "10.101.0.0/16"

    @property
    def new_clients(self) -> str:
        """Clients of the protected service that first show up during an attack."""
        return "fd00:e::/48" if self.ipv6 else "10.102.0.0/16"

    @property
    def rotation(self) -> str:
        """Where each attacker of ``v6-rotation`` owns a /64: always IPv6."""
        return "fd00:a::/48"

    def rotation_net(self, k: int) -> str:
        """The ``k``-th (0-based) /64 of :attr:`rotation`."""
        net = ipaddress.ip_network(self.rotation)
        if not 0 <= k < 1 << (64 - net.prefixlen):
            raise ValueError(f"{self.rotation} has no /64 number {k}")
        return f"{net.network_address + (k << 64)}/64"

    @property
    def spoofed(self) -> str:
        """Where random spoofed sources are drawn from."""
        return "fd00:5::/64" if self.ipv6 else "10.160.0.0/11"

    @staticmethod
    def host(network: str, k: int) -> str:
        """The ``k``-th host (0-based) of ``network``.

        In an IPv6 network of a /64 or wider every host gets a /64 of its own,
        as real hosts do: flows are keyed on the source's /64 by default
        (docs/semantics.rst, "Source addresses"), so hosts sharing one /64
        would be one source.
        """
        net = ipaddress.ip_network(network)
        if net.version == 6 and net.prefixlen <= 64:
            return str(net.network_address + (k << 64) + 1)
        return str(net.network_address + 1 + k)


@dataclass(frozen=True)
class ProxySite:
    """One proxy namespace and its links."""

    index: int
    netns: str
    outside: str  # the filtered interface (in ``netns``)
    outside_mac: str
    net_if: str  # its peer in the ``net`` namespace: senders write here
    net_mac: str
    inside: str  # towards the service
    pin_dir: Path
    svc_if: str = ""  # the service's end of ``inside`` (in the service namespace)
    svc_mac: str = ""

    @property
    def name(self) -> str:
        return f"p{self.index}"


@dataclass
class Lab:
    """A built lab topology; :meth:`close` removes every namespace and link."""

    topology: Topology
    net_ns: str
    svc_ns: str
    proxies: list[ProxySite] = field(default_factory=list)

    @property
    def run(self) -> str:
        return self.topology.run

    @property
    def tag(self) -> str:
        return self.topology.tag

    def close(self) -> None:
        for site in self.proxies:
            _remove_pins(site.pin_dir)
        self.topology.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drops_here(ifnames: list[str]) -> int:
    from pyroute2 import IPRoute

    total = 0
    with IPRoute() as ipr:
        for name in ifnames:
            found = ipr.link_lookup(ifname=name)
            if found:
                st = ipr.get_links(found[0])[0].get_attr("IFLA_STATS64")
                total += int(st["rx_dropped"]) + int(st["tx_dropped"])
    return total


def link_drops(lab: Lab) -> int:
    """Frames the lab's veths themselves dropped (full queues), summed over every end.

    Not a filter's doing: a veth drops what its peer cannot take in time
    (its ring is full), which happens when the 2 cores are saturated.  That
    includes the frames the live-frames generator sent (``XDP_TX`` on the
    ``net`` end) that the proxy's ring had no room for: the driver counts
    those apart (``tx_queue_N_xdp_xmit_errors``), not as dropped.
    """
    from xpro.lab.namespaces import driver_stats

    total = _drops_here_in(lab.net_ns, [s.net_if for s in lab.proxies])
    for s in lab.proxies:
        total += _drops_here_in(s.netns, [s.outside, s.inside])
        total += sum(v for k, v in driver_stats(s.net_if, lab.net_ns).items()
                     if k.startswith("tx_queue_") and k.endswith("_xdp_xmit_errors"))
    return total


def _drops_here_in(netns: str, ifnames: list[str]) -> int:
    from xpro.lab.namespaces import in_netns

    with in_netns(netns):
        return _drops_here(ifnames)


def _write_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        Path("/proc/sys", *key.split(".")).write_text(value)


def _set_gro_many(ifnames: list[str]) -> None:
    from pyroute2.ethtool import Ethtool

    eth = Ethtool()
    try:
        for ifname in ifnames:
            features = eth.get_features(ifname)
            features.features["rx-gro"].enable = True
            eth.set_features(ifname, features)
    finally:
        eth.close()


def _static_neighbours(ifname: str, entries: list[tuple[str, str]]) -> None:
    """Permanent ARP/NDP entries: no packet waits for (or is lost to) address resolution."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        for dst, mac in entries:
            ipr.neigh("replace", dst=dst, lladdr=mac, ifindex=idx, state=_NUD_PERMANENT)


def _no_rp_filter(ifnames: list[str]) -> dict[str, str]:
    keys = {"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0"}
    keys.update({f"net.ipv4.conf.{i}.rp_filter": "0" for i in ifnames})
    return keys


def build_lab(proxies: int = 4, *, run: str | None = None) -> Lab:
    """Build the lab for ``proxies`` proxies (both address families, always)."""
    topo = Topology(prefix=PREFIX, run=f"lab{run or secrets.token_hex(3)}")
    try:
        topo.open()
        net = topo.namespace("net")
        svc = topo.namespace("svc")
        lab = Lab(topo, net, svc)
        v4, v6 = Addressing(False), Addressing(True)
        svc_ifs: list[str] = []
        for i in range(proxies):
            ns = topo.namespace(f"p{i}")
            net_if, outside = topo.veth(net, ns)
            inside, svc_if = topo.veth(ns, svc)
            svc_ifs.append(svc_if)
            add_address(outside, f"10.0.{i}.1/24", ns)
            add_address(net_if, f"10.0.{i}.2/24", net)
            add_address(outside, f"fd00:0:{i}::1/64", ns)
            add_address(inside, f"10.99.{i}.1/24", ns)
            add_address(svc_if, f"10.99.{i}.2/24", svc)
            add_address(inside, f"fd00:99:{i}::1/64", ns)
            add_address(svc_if, f"fd00:99:{i}::2/64", svc)
            add_route("10.200.0.0/24", ns, gateway=f"10.99.{i}.2")
            add_route("fd00:200::/64", ns, gateway=f"fd00:99:{i}::2")
            run_in_netns(ns, _write_sysctls, {
                "net.ipv4.ip_forward": "1",
                "net.ipv6.conf.all.forwarding": "1",
                **_no_rp_filter([outside, inside]),
            })
            run_in_netns(ns, _set_gro_many, [outside])
            svc_mac = link_info(svc_if, svc).mac
            run_in_netns(ns, _static_neighbours, inside,
                         [(f"10.99.{i}.2", svc_mac), (f"fd00:99:{i}::2", svc_mac)])
            lab.proxies.append(ProxySite(
                index=i, netns=ns, outside=outside,
                outside_mac=link_info(outside, ns).mac,
                net_if=net_if, net_mac=link_info(net_if, net).mac, inside=inside,
                pin_dir=PIN_ROOT / f"{topo.tag}-p{i}", svc_if=svc_if, svc_mac=svc_mac,
            ))
        for addr in (v4.service, v4.other_service):
            add_address("lo", f"{addr}/32", svc)
        for addr in (v6.service, v6.other_service):
            add_address("lo", f"{addr}/128", svc)
        run_in_netns(svc, _write_sysctls, _no_rp_filter(svc_ifs))
        run_in_netns(svc, _set_gro_many, svc_ifs)
    except BaseException:
        topo.close()
        raise
    return lab


def _remove_pins(pin_dir: Path) -> list[str]:
    if not pin_dir.exists():
        return []
    from xpro.backends.xdp import detach_pinned

    return detach_pinned(pin_dir)


def live_runs() -> dict[str, int]:
    """Lab runs whose owner still holds the lock: run tag -> owner pid."""
    found: dict[str, int] = {}
    if not LOCK_DIR.is_dir():
        return found
    import fcntl

    for p in LOCK_DIR.glob(f"{LAB_PREFIX}*.lock"):
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 32, 0).decode(errors="replace").strip()
                found[p.name[: -len(".lock")]] = int(text) if text.isdigit() else 0
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return found


def lab_down(*, stop_live: bool = False, only: Collection[str] | None = None,
             timeout: float = 15.0) -> list[str]:
    """Remove what lab runs left behind: namespaces, links, pinned filters.

    Runs still alive are left alone, unless ``stop_live``: then their owner
    gets SIGTERM (it cleans up after itself) and whatever remains after
    ``timeout`` seconds is removed once it has exited.  ``only`` limits the
    stopping to those run tags (``xpro-lab{run}``).  Returns what was removed
    or stopped.
    """
    done: list[str] = []
    if stop_live:
        live = {t: p for t, p in live_runs().items() if only is None or t in only}
        for tag, pid in live.items():
            if pid > 0 and pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                    done.append(f"stopped {tag} (pid {pid})")
        deadline = time.monotonic() + timeout
        while live and time.monotonic() < deadline:
            live = {t: p for t, p in live_runs().items() if t in live}
            time.sleep(0.2)
    alive = set(live_runs())
    for d in sorted(PIN_ROOT.glob(f"{LAB_PREFIX}*")):
        tag = d.name.rsplit("-", 1)[0]
        if d.is_dir() and tag not in alive:
            _remove_pins(d)
            done.append(f"removed pins {d}")
    done += cleanup_stale(LAB_PREFIX)
    leftovers = [n for n in list_netns(LAB_PREFIX) if n.rsplit("-", 1)[0] not in alive]
    done += [f"could not remove {n}" for n in leftovers]
    return done
