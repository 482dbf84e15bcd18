"""Network namespaces, veth pairs and processes inside namespaces, over netlink.

The demo, the tests and the lab build their topologies with this module.  It
talks netlink through pyroute2 and never parses the output of ``ip``.

Two rules shape it:

* Whatever a :class:`Topology` creates, it removes, also when the body raises
  or the user presses Ctrl-C (signals are held back while it cleans up).
  Names are unique per run (``xpro-`` and a random suffix), and each run holds
  a lock file while it lives, so parallel runs never collide and
  :func:`cleanup_stale` removes only what dead runs left behind.
* Code runs "inside" a namespace in a forked child that switches only its
  *network* namespace (``setns``).  ``ip netns exec`` also enters a new mount
  namespace, which hides bpffs (docs/platform.rst); a child made here still
  sees the pinned maps of the parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import multiprocessing
import multiprocessing.connection
import os
import secrets
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, ParamSpec, Self, TypeVar

from pyroute2 import netns as _pnetns
from pyroute2.netlink.exceptions import NetlinkError

from xpro.bpf.xdp import in_netns
from xpro.datapath.host import Link, NetnsError, link_info, require_root
from xpro.datapath.host import iproute as _iproute
from xpro.datapath.host import link_index as _index
from xpro.errors import XproError

__all__ = [
    "PREFIX",
    "Link",
    "NetnsError",
    "NsPair",
    "NsProcess",
    "Topology",
    "add_address",
    "add_route",
    "cleanup_stale",
    "create_netns",
    "delete_link",
    "delete_netns",
    "driver_stats",
    "in_netns",
    "link_info",
    "list_netns",
    "netns_pair",
    "require_root",
    "run_in_netns",
    "set_gro",
    "set_link",
    "sysctl",
]

#: Prefix of every namespace and interface alias this module creates.
PREFIX = "xpro-"

#: Lock files of live runs (one per :class:`Topology`).
LOCK_DIR = Path("/run/xpro/netns")

NETNS_DIR = Path("/run/netns")

P = ParamSpec("P")
T = TypeVar("T")

_IFNAMSIZ = 15  # usable bytes of an interface name
_IFA_F_NODAD = 0x02  # no duplicate address detection: IPv6 usable at once
_CLONE_NEWNET = 0x40000000


def _nl_error(action: str, exc: Exception) -> NetnsError:
    code = getattr(exc, "code", None)
    if code == errno.EPERM:
        return NetnsError(f"{action}: operation not permitted (are you root?)")
    text = os.strerror(code) if isinstance(code, int) else str(exc)
    return NetnsError(f"{action}: {text}")


# -- namespaces ---------------------------------------------------------------


def list_netns(prefix: str = "") -> list[str]:
    """Names of the named network namespaces (``/run/netns``) that start with ``prefix``."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def _fork_call(fn: Callable[..., object], *args: Any) -> None:
    """Run ``fn(*args)`` in a plain forked child and wait; its failure is an OSError here.

    Signals are blocked across the fork, so the child can never take a
    KeyboardInterrupt and unwind into the parent's code; the child ignores
    them and always ends in ``os._exit``.  Unlike :class:`NsProcess` this works
    inside a daemonic multiprocessing child too.
    """
    rfd, wfd = os.pipe()
    with _signals_held():
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                os.close(rfd)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                try:
                    fn(*args)
                    code = 0
                except BaseException as exc:
                    err = getattr(exc, "errno", None) or getattr(exc, "code", None) or 0
                    text = getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
                    os.write(wfd, f"{err if isinstance(err, int) else 0}:{text}".encode())
            finally:
                os._exit(code)
    os.close(wfd)
    try:
        with os.fdopen(rfd, "rb") as f:
            message = f.read().decode(errors="replace")
    finally:
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        err, _, text = message.partition(":")
        raise OSError(int(err or 0) or errno.EIO, text or f"child exit status {status}")


def _unshare_and_attach(name: str) -> None:
    # In a forked child: a new network namespace, bound to /run/netns/NAME.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    _pnetns.attach(name, os.getpid())


def create_netns(name: str) -> None:
    """Create the named network namespace ``name``; it must not exist yet."""
    if name in list_netns():
        raise NetnsError(f"network namespace {name!r} already exists")
    try:
        # Our own child (pyroute2's netns.create forks one that can run the
        # parent's code on when a signal hits it at the wrong moment).
        _fork_call(_unshare_and_attach, name)
    except OSError as exc:
        delete_netns(name)
        raise NetnsError(f"creating network namespace {name!r}: {exc.strerror or exc}") from exc
    if name not in list_netns():
        raise NetnsError(f"creating network namespace {name!r} failed (are you root?)")


def delete_netns(name: str) -> None:
    """Remove the named namespace; a namespace that is already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        _pnetns.remove(name)


# -- links --------------------------------------------------------------------


def add_veth(
    name_a: str,
    name_b: str,
    netns_a: str | None = None,
    netns_b: str | None = None,
    *,
    mtu: int | None = None,
    alias: str | None = None,
) -> None:
    """Create the veth pair ``name_a``/``name_b`` with each end in its namespace.

    ``None`` is this process's namespace (normally the root one).  ``alias``
    is stored as the interface alias of both ends (:func:`cleanup_stale` finds
    leftovers by it).
    """
    for name in (name_a, name_b):
        if not 0 < len(name.encode()) <= _IFNAMSIZ:
            raise NetnsError(f"interface name {name!r} must be 1 to {_IFNAMSIZ} bytes")
    peer: dict[str, Any] = {"ifname": name_b}
    if netns_b is not None:
        peer["net_ns_fd"] = netns_b
    extra: dict[str, Any] = {}
    if mtu is not None:
        extra["mtu"] = mtu
        peer["mtu"] = mtu
    try:
        # Created here, then end a moves: a pair created inside netns_a would
        # put a peer without a namespace there too, not here.
        with _iproute(None) as ipr:
            ipr.link("add", ifname=name_a, kind="veth", peer=peer, **extra)
            if netns_a is not None:
                ipr.link("set", index=_index(ipr, name_a, None), net_ns_fd=netns_a)
    except NetlinkError as exc:
        delete_link(name_a)
        raise _nl_error(f"creating veth {name_a}/{name_b}", exc) from exc
    if alias is not None:
        set_link(name_a, netns_a, alias=alias)
        set_link(name_b, netns_b, alias=alias)


def set_link(
    ifname: str,
    netns: str | None = None,
    *,
    up: bool | None = None,
    mtu: int | None = None,
    mac: str | None = None,
    alias: str | None = None,
) -> None:
    """Change state, MTU, MAC address or alias of an interface."""
    changes: dict[str, Any] = {}
    if up is not None:
        changes["state"] = "up" if up else "down"
    if mtu is not None:
        changes["mtu"] = mtu
    if mac is not None:
        changes["address"] = mac
    if alias is not None:
        changes["IFLA_IFALIAS"] = alias
    if not changes:
        return
    try:
        with _iproute(netns) as ipr:
            ipr.link("set", index=_index(ipr, ifname, netns), **changes)
    except NetlinkError as exc:
        raise _nl_error(f"setting {sorted(changes)} on {ifname}", exc) from exc


def delete_link(ifname: str, netns: str | None = None) -> bool:
    """Delete an interface (a veth takes its peer with it); False if it was not there."""
    if netns is not None and netns not in list_netns():
        return False
    with _iproute(netns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return False
        try:
            ipr.link("del", index=found[0])
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise _nl_error(f"deleting {ifname}", exc) from exc
    return True


def add_address(ifname: str, address: str, netns: str | None = None) -> None:
    """Add ``address`` (``"10.0.0.1/24"``, ``"fd00::1/64"``) to ``ifname``.

    IPv6 addresses skip duplicate address detection, so they work at once.
    """
    iface = ipaddress.ip_interface(address)
    kwargs: dict[str, Any] = {
        "address": str(iface.ip),
        "prefixlen": iface.network.prefixlen,
    }
    if iface.version == 6:
        kwargs["IFA_FLAGS"] = _IFA_F_NODAD
    try:
        with _iproute(netns) as ipr:
            ipr.addr("add", index=_index(ipr, ifname, netns), **kwargs)
    except NetlinkError as exc:
        raise _nl_error(f"adding {address} to {ifname}", exc) from exc


def add_route(
    dst: str,
    netns: str | None = None,
    *,
    gateway: str | None = None,
    ifname: str | None = None,
) -> None:
    """Add a route to ``dst`` (a prefix or ``"default"``) via a gateway or a device."""
    if gateway is None and ifname is None:
        raise NetnsError("a route needs a gateway or an interface")
    kwargs: dict[str, Any] = {}
    if dst == "default":
        family = ipaddress.ip_address(gateway).version if gateway else 4
        kwargs["dst"] = "0.0.0.0/0" if family == 4 else "::/0"
    else:
        kwargs["dst"] = str(ipaddress.ip_network(dst, strict=False))
    if gateway is not None:
        kwargs["gateway"] = gateway
    try:
        with _iproute(netns) as ipr:
            if ifname is not None:
                kwargs["oif"] = _index(ipr, ifname, netns)
            ipr.route("add", **kwargs)
    except NetlinkError as exc:
        raise _nl_error(f"adding route to {dst}", exc) from exc


# -- running code inside a namespace ------------------------------------------


def _enter(netns: str) -> None:
    # flags=0: fail rather than create a namespace that is missing.
    _pnetns.setns(netns, flags=0)


def _child_main(
    conn: multiprocessing.connection.Connection,
    netns: str | None,
    target: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    # The parent decides when a child stops (Ctrl-C reaches the whole process
    # group; the parent's cleanup then terminates its children).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        if netns is not None:
            _enter(netns)
        value = target(*args, **kwargs)
        conn.send((True, value, ""))
    except BaseException as exc:
        tb = traceback.format_exc()
        try:
            conn.send((False, exc, tb))
        except Exception:
            conn.send((False, XproError(f"{type(exc).__name__}: {exc}"), tb))
    finally:
        conn.close()


class NsProcess(Generic[T]):
    """A forked child that runs ``target(*args, **kwargs)`` inside a network namespace.

    ``netns=None`` stays in the parent's namespace.  The child's return value
    (or exception) comes back pickled through a pipe::

        with NsProcess("xpro-ab12cd-proxy", receive, port=9000) as child:
            ...
            counts = child.result(timeout=10)
    """

    def __init__(
        self,
        netns: str | None,
        target: Callable[..., T],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        self.netns = netns
        ctx = multiprocessing.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        self._send: multiprocessing.connection.Connection | None = send
        self._proc = ctx.Process(
            target=_child_main,
            args=(send, netns, target, args, kwargs),
            name=f"xpro-ns:{netns or 'root'}:{getattr(target, '__name__', 'target')}",
            daemon=True,
        )
        self._done = False
        self._value: Any = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def start(self) -> Self:
        if self.netns is not None and self.netns not in list_netns():
            raise NetnsError(f"network namespace {self.netns!r} does not exist")
        with _signals_held():  # the child sets its handlers, then unblocks
            self._proc.start()
        if self._send is not None:
            self._send.close()  # only the child writes
            self._send = None
        return self

    def is_alive(self) -> bool:
        return self._proc.is_alive()

    def result(self, timeout: float | None = None) -> T:
        """Wait for the child; return its value or raise its exception."""
        if not self._done:
            if not self._recv.poll(timeout):
                raise TimeoutError(f"{self._proc.name} did not finish within {timeout} s")
            try:
                ok, value, tb = self._recv.recv()
            except EOFError:
                self._proc.join(5)
                raise NetnsError(
                    f"{self._proc.name} died without a result (exit code {self._proc.exitcode})"
                ) from None
            self._proc.join(5)
            self._done = True
            self._value = (ok, value, tb)
        ok, value, tb = self._value
        if not ok:
            if isinstance(value, BaseException):
                value.add_note(f"in network namespace {self.netns!r}, child traceback:\n{tb}")
                raise value
            raise NetnsError(str(value))
        result: T = value
        return result

    def stop(self, grace: float = 2.0) -> None:
        """Terminate the child if it still runs (SIGTERM, then SIGKILL after ``grace``)."""
        proc = self._proc
        if proc.pid is not None and proc.is_alive():
            proc.terminate()
            proc.join(grace)
            if proc.is_alive():
                proc.kill()
                proc.join(grace)
        elif proc.pid is not None:
            proc.join(0)
        self._recv.close()
        if self._send is not None:
            self._send.close()
            self._send = None

    def __enter__(self) -> Self:
        if self._proc.pid is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_in_netns(
    netns: str | None,
    target: Callable[P, T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run ``target(*args, **kwargs)`` in a forked child inside ``netns`` and return its value.

    Arguments and the return value must pickle; exceptions in the child are
    raised here, with the child's traceback as a note.  Only the network
    namespace changes: files, mounts (bpffs) and the rest are the parent's.
    """
    child: NsProcess[T] = NsProcess(netns, target, *args, **kwargs)
    with child:
        return child.result()


def _write_sysctl(key: str, value: str) -> None:
    Path("/proc/sys", *key.split(".")).write_text(value)


def sysctl(netns: str | None, key: str, value: str | int) -> None:
    """Set a ``net.*`` sysctl (dotted name) inside ``netns``."""
    run_in_netns(netns, _write_sysctl, key, str(value))


def _set_gro(ifname: str, on: bool) -> None:
    from pyroute2.ethtool import Ethtool

    eth = Ethtool()
    try:
        features = eth.get_features(ifname)
        features.features["rx-gro"].enable = on
        eth.set_features(ifname, features)
    finally:
        eth.close()


def set_gro(ifname: str, netns: str | None = None, *, on: bool = True) -> None:
    """``ethtool -K IF gro on|off``: a veth with GRO on takes frames without an XDP program."""
    run_in_netns(netns, _set_gro, ifname, on)


def _driver_stats(ifname: str) -> dict[str, int]:
    from pyroute2.ethtool.ioctl import IoctlEthtool

    eth = IoctlEthtool(ifname)
    try:
        return {str(name): int(value) for name, value in eth.get_statistics()}
    finally:
        eth.close()


def driver_stats(ifname: str, netns: str | None = None) -> dict[str, int]:
    """``ethtool -S IF``: the driver's own counters, by name (a veth's include
    ``tx_queue_N_xdp_xmit`` and ``tx_queue_N_xdp_xmit_errors``, the frames sent
    to it with XDP that its peer's ring took or had no room for)."""
    return run_in_netns(netns, _driver_stats, ifname)


# -- topologies ---------------------------------------------------------------


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold back SIGINT/SIGTERM (delivered afterwards) so cleanup runs to the end.

    A thread's signal mask is not enough: the kernel hands a process signal
    to any thread that does not block it (a sync or plugin thread), and
    Python then runs the handler in the main thread anyway.  So while the
    block runs, the Python-level handlers only note the signal; the old
    handlers are put back and the noted signals sent again afterwards.
    Outside the main thread (where handlers cannot be changed) the mask is
    used as before.
    """
    sigs = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread():
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(sigs))
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return
    noted: list[int] = []
    old = {sig: signal.signal(sig, lambda signum, frame: noted.append(signum))
           for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(noted):
            os.kill(os.getpid(), signum)


def _run_id(name: str, prefix: str) -> str:
    return name[len(prefix) :].split("-", 1)[0]


def _lock_path(prefix: str, run: str) -> Path:
    return LOCK_DIR / f"{prefix}{run}.lock"


def _claim_dead_run(prefix: str, run: str) -> int | None:
    """Lock the run's lock file if its owner is gone: return the locked fd.

    Returns -1 when the run has no lock file (dead, nothing to lock) and None
    while its owner still holds the lock.
    """
    path = _lock_path(prefix, run)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _release_dead_run(prefix: str, run: str, fd: int) -> None:
    """Remove a dead run's lock file (still holding its lock), then let go."""
    if fd >= 0:
        with contextlib.suppress(FileNotFoundError):
            _lock_path(prefix, run).unlink()
        os.close(fd)


def _lock_run(prefix: str, run: str) -> int:
    """Create and hold the lock file of a new run (robust against a concurrent cleanup)."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    path = _lock_path(prefix, run)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not unlinked by a cleanup between our open and flock
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


@dataclass
class Topology:
    """Namespaces and veth pairs of one run, removed again by :meth:`close`.

    Use it as a context manager::

        with Topology() as topo:
            proxy = topo.namespace("proxy")
            peer = topo.namespace("peer")
            a, b = topo.veth(peer, proxy)

    Namespaces are named ``{prefix}{run}-{role}`` and interfaces
    ``xp{run}{n}`` plus a side letter, with ``run`` a random suffix; while the
    run lives it holds ``/run/xpro/netns/{prefix}{run}.lock``.
    """

    prefix: str = PREFIX
    run: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    links: list[tuple[str, str | None]] = field(default_factory=list)
    children: list[NsProcess[Any]] = field(default_factory=list)
    _lock_fd: int | None = field(default=None, repr=False)
    _nveth: int = field(default=0, repr=False)

    @property
    def tag(self) -> str:
        """``{prefix}{run}``: the alias of this run's interfaces."""
        return f"{self.prefix}{self.run}"

    def open(self) -> Self:
        if self._lock_fd is None:
            require_root("building network namespaces")
            self._lock_fd = _lock_run(self.prefix, self.run)
        return self

    def namespace(self, role: str) -> str:
        """Create the namespace ``{prefix}{run}-{role}`` with loopback up; return its name."""
        self.open()
        name = f"{self.tag}-{role}"
        self.namespaces.append(name)  # recorded first: removed even if set-up fails
        create_netns(name)
        set_link("lo", name, up=True)
        return name

    def veth(
        self,
        netns_a: str | None,
        netns_b: str | None,
        *,
        mtu: int | None = 1500,
        up: bool = True,
    ) -> tuple[str, str]:
        """Create a veth pair, end ``a`` in ``netns_a``, end ``b`` in ``netns_b``; up by default.

        Returns the two interface names.
        """
        self.open()
        base = f"xp{self.run}{self._nveth}"
        self._nveth += 1
        name_a, name_b = f"{base}a", f"{base}b"
        self.links.append((name_a, netns_a))
        add_veth(name_a, name_b, netns_a, netns_b, mtu=mtu, alias=self.tag)
        if up:
            set_link(name_a, netns_a, up=True)
            set_link(name_b, netns_b, up=True)
        return name_a, name_b

    def spawn(
        self, netns: str | None, target: Callable[..., T], *args: Any, **kwargs: Any
    ) -> NsProcess[T]:
        """Start ``target`` in a child inside ``netns``; :meth:`close` stops it if still running."""
        child: NsProcess[T] = NsProcess(netns, target, *args, **kwargs)
        self.children.append(child)
        return child.start()

    def close(self) -> None:
        """Stop children, delete links and namespaces, release the lock.  Idempotent."""
        with _signals_held():
            errors: list[str] = []
            for child in reversed(self.children):
                try:
                    child.stop()
                except Exception as exc:  # keep cleaning up
                    errors.append(f"stopping {child.pid}: {exc}")
            self.children.clear()
            for ifname, ns in reversed(self.links):
                try:
                    delete_link(ifname, ns)
                except Exception as exc:
                    errors.append(f"deleting {ifname}: {exc}")
            self.links.clear()
            for ns in reversed(self.namespaces):
                try:
                    delete_netns(ns)
                except Exception as exc:
                    errors.append(f"deleting namespace {ns}: {exc}")
            self.namespaces.clear()
            if self._lock_fd is not None:
                with contextlib.suppress(FileNotFoundError):
                    _lock_path(self.prefix, self.run).unlink()
                os.close(self._lock_fd)
                self._lock_fd = None
            if errors:
                raise NetnsError("cleanup incomplete: " + "; ".join(errors))

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class NsPair:
    """Two namespaces joined by a veth: the ``peer`` side (clients, bots) and the ``proxy``."""

    topology: Topology
    peer_ns: str
    proxy_ns: str
    peer_if: str
    proxy_if: str
    peer_mac: str
    proxy_mac: str
    peer_addr4: str
    proxy_addr4: str
    peer_addr6: str
    proxy_addr6: str
    subnet4: ipaddress.IPv4Network
    subnet6: ipaddress.IPv6Network


@contextlib.contextmanager
def netns_pair(
    *,
    prefix: str = PREFIX,
    subnet4: str = "10.77.0.0/24",
    subnet6: str = "fd00:77::/64",
    mtu: int = 1500,
) -> Iterator[NsPair]:
    """A peer and a proxy namespace joined by a veth, addressed and up; always removed.

    The first host address of each subnet goes to the proxy end, the second to
    the peer end.  Namespaces are private, so every run can use the same subnets.
    """
    net4 = ipaddress.IPv4Network(subnet4)
    net6 = ipaddress.IPv6Network(subnet6)
    with Topology(prefix=prefix) as topo:
        peer_ns = topo.namespace("peer")
        proxy_ns = topo.namespace("proxy")
        peer_if, proxy_if = topo.veth(peer_ns, proxy_ns, mtu=mtu)
        proxy4, peer4 = str(net4[1]), str(net4[2])
        proxy6, peer6 = str(net6[1]), str(net6[2])
        add_address(proxy_if, f"{proxy4}/{net4.prefixlen}", proxy_ns)
        add_address(peer_if, f"{peer4}/{net4.prefixlen}", peer_ns)
        add_address(proxy_if, f"{proxy6}/{net6.prefixlen}", proxy_ns)
        add_address(peer_if, f"{peer6}/{net6.prefixlen}", peer_ns)
        yield NsPair(
            topology=topo,
            peer_ns=peer_ns,
            proxy_ns=proxy_ns,
            peer_if=peer_if,
            proxy_if=proxy_if,
            peer_mac=link_info(peer_if, peer_ns).mac,
            proxy_mac=link_info(proxy_if, proxy_ns).mac,
            peer_addr4=peer4,
            proxy_addr4=proxy4,
            peer_addr6=peer6,
            proxy_addr6=proxy6,
            subnet4=net4,
            subnet6=net6,
        )


def _root_links_with_alias(prefix: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    with _iproute(None) as ipr:
        for msg in ipr.get_links():
            alias = msg.get_attr("IFLA_IFALIAS") or ""
            if alias.startswith(prefix):
                found.append((str(msg.get_attr("IFLA_IFNAME")), str(alias)))
    return found


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Remove namespaces and root-namespace links that dead runs with ``prefix`` left behind.

    A run is dead when nobody holds its lock file.  Live runs (this process's
    or a parallel one's) are never touched.  Returns what was removed.
    """
    require_root("cleaning up network namespaces")
    removed: list[str] = []
    with _signals_held():
        links: dict[str, list[str]] = {}
        for ifname, alias in _root_links_with_alias(prefix):
            links.setdefault(_run_id(alias, prefix), []).append(ifname)
        spaces: dict[str, list[str]] = {}
        for ns in list_netns(prefix):
            spaces.setdefault(_run_id(ns, prefix), []).append(ns)
        locks = {
            p.name[len(prefix) : -len(".lock")]
            for p in (LOCK_DIR.glob(f"{prefix}*.lock") if LOCK_DIR.is_dir() else [])
        }
        for run in sorted(set(links) | set(spaces) | locks):
            fd = _claim_dead_run(prefix, run)
            if fd is None:
                continue  # alive
            try:
                for ifname in links.get(run, []):
                    if delete_link(ifname):
                        removed.append(ifname)
                for ns in spaces.get(run, []):
                    delete_netns(ns)
                    removed.append(ns)
            finally:
                _release_dead_run(prefix, run, fd)
    return removed
