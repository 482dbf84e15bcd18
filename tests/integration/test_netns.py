"""xpro.lab.namespaces on the real kernel: namespaces, veth pairs, children, and cleanup."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from xpro.lab import namespaces as netns
from xpro.lab.namespaces import (
    NetnsError,
    NsProcess,
    Topology,
    cleanup_stale,
    list_netns,
    netns_pair,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix() -> Iterator[str]:
    """A prefix of this test's own, so cleanup checks never touch other runs."""
    p = f"xprot{secrets.token_hex(2)}-"
    yield p
    cleanup_stale(p)


def _interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def _root_links_tagged(prefix: str) -> list[str]:
    return [name for name, _ in netns._root_links_with_alias(prefix)]


def test_pair_is_built_and_removed(prefix: str) -> None:
    with netns_pair(prefix=prefix) as pair:
        assert list_netns(prefix) == sorted([pair.peer_ns, pair.proxy_ns])
        peer = netns.link_info(pair.peer_if, pair.peer_ns)
        proxy = netns.link_info(pair.proxy_if, pair.proxy_ns)
        assert peer.up
        assert proxy.up
        assert peer.mtu == proxy.mtu == 1500
        assert pair.proxy_mac == proxy.mac
        assert netns.run_in_netns(pair.proxy_ns, _interfaces) == sorted(["lo", pair.proxy_if])
        # the peer reaches the proxy over IPv4 and IPv6
        assert netns.run_in_netns(pair.peer_ns, _udp_roundtrip, pair.proxy_ns, pair.proxy_addr4)
        assert netns.run_in_netns(pair.peer_ns, _udp_roundtrip, pair.proxy_ns, pair.proxy_addr6)
    assert list_netns(prefix) == []
    assert pair.proxy_if not in _interfaces()


def _udp_roundtrip(proxy_ns: str, addr: str) -> bool:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with netns.in_netns(proxy_ns):
        server = socket.socket(family, socket.SOCK_DGRAM)
    server.bind((addr, 0))
    server.settimeout(5)
    port = server.getsockname()[1]
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        client.sendto(b"ping", (addr, port))
    data, _ = server.recvfrom(16)
    server.close()
    return data == b"ping"


def test_child_sees_bpffs_and_only_the_network_changes(prefix: str) -> None:
    with Topology(prefix=prefix) as topo:
        ns = topo.namespace("a")
        inside = netns.run_in_netns(ns, os.readlink, "/proc/self/ns/net")
        assert inside != os.readlink("/proc/self/ns/net")
        assert netns.run_in_netns(ns, os.readlink, "/proc/self/ns/mnt") == os.readlink(
            "/proc/self/ns/mnt"
        )
        assert netns.run_in_netns(ns, os.path.ismount, "/sys/fs/bpf")


def test_child_exceptions_come_back(prefix: str) -> None:
    with Topology(prefix=prefix) as topo:
        ns = topo.namespace("a")
        with pytest.raises(ValueError, match="invalid literal") as info:
            netns.run_in_netns(ns, int, "x")
        assert any(ns in note for note in info.value.__notes__)


def test_missing_namespace_is_an_error() -> None:
    with pytest.raises(NetnsError, match="does not exist"):
        netns.run_in_netns("xpro-no-such-namespace", os.getpid)
    with pytest.raises(NetnsError, match="does not exist"):
        netns.link_info("lo", "xpro-no-such-namespace")
    assert "xpro-no-such-namespace" not in list_netns()


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_everything_is_removed_on_errors(prefix: str, exc: type[BaseException]) -> None:
    topo = Topology(prefix=prefix)
    children: list[NsProcess[None]] = []

    def body() -> None:
        with topo:
            ns = topo.namespace("a")
            topo.veth(ns, None)  # one end in the root namespace
            children.append(topo.spawn(ns, time.sleep, 60))
            assert _root_links_tagged(prefix)
            raise exc

    with pytest.raises(exc):
        body()
    (child,) = children
    assert list_netns(prefix) == []
    assert _root_links_tagged(prefix) == []
    assert child.pid is not None
    assert not child.is_alive()
    assert not netns._lock_path(prefix, topo.run).exists()


def test_signals_are_held_during_cleanup() -> None:
    reached: list[bool] = []

    def body() -> None:
        with netns._signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            reached.append(True)  # not interrupted inside

    with pytest.raises(KeyboardInterrupt):
        body()
    assert reached == [True]


def _die_leaving_a_run(prefix: str) -> None:
    topo = Topology(prefix=prefix)
    ns = topo.namespace("dead")
    topo.veth(ns, None)
    os._exit(0)  # no cleanup: a crashed run


def test_cleanup_stale_removes_dead_runs_only(prefix: str) -> None:
    with Topology(prefix=prefix) as live:
        live_ns = live.namespace("live")
        with pytest.raises(NetnsError, match="died without a result"):
            NsProcess(None, _die_leaving_a_run, prefix).start().result(timeout=30)
        dead = [n for n in list_netns(prefix) if n != live_ns]
        assert len(dead) == 1
        assert len(_root_links_tagged(prefix)) == 1
        removed = cleanup_stale(prefix)
        assert dead[0] in removed
        assert list_netns(prefix) == [live_ns]
        assert _root_links_tagged(prefix) == []
        assert cleanup_stale(prefix) == []
    assert list_netns(prefix) == []


def test_child_stop_and_timeout(prefix: str) -> None:
    with Topology(prefix=prefix) as topo:
        ns = topo.namespace("a")
        child = topo.spawn(ns, time.sleep, 60)
        with pytest.raises(TimeoutError):
            child.result(timeout=0.1)
        child.stop()
        assert not child.is_alive()


def test_sysctl_and_gro(prefix: str) -> None:
    with netns_pair(prefix=prefix) as pair:
        netns.sysctl(pair.proxy_ns, "net.ipv4.conf.all.rp_filter", 2)
        value = netns.run_in_netns(
            pair.proxy_ns, _read, "/proc/sys/net/ipv4/conf/all/rp_filter"
        )
        assert value.strip() == "2"
        netns.set_gro(pair.proxy_if, pair.proxy_ns, on=True)
        netns.set_gro(pair.proxy_if, pair.proxy_ns, on=False)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()
