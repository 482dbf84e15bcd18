"""XDP attach modes, links, query and detach, in any network namespace.

Native and generic attachments are BPF links: pin one in bpffs and it
survives the process (a restarted daemon adopts it with
:meth:`XdpLink.from_pin`); unpinned, it goes away with its last fd.  Offload
uses netlink, which outlives the process by itself.

A ``netns`` argument switches only the calling thread's network namespace
(``setns``) for the duration of the call, never the mount namespace, so bpffs
stays visible (docs/platform.rst).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from xpro.bpf._ffi import check, ffi, libc, load
from xpro.bpf.fs import require_bpffs
from xpro.errors import AttachError, DatapathError, NetnsError

if TYPE_CHECKING:
    from xpro.bpf.object import Program

__all__ = [
    "XDP_FLAGS_DRV_MODE",
    "XDP_FLAGS_HW_MODE",
    "XDP_FLAGS_REPLACE",
    "XDP_FLAGS_SKB_MODE",
    "XDP_FLAGS_UPDATE_IF_NOEXIST",
    "XdpLink",
    "XdpMode",
    "attach_xdp",
    "detach_xdp",
    "in_netns",
    "interface_driver",
    "resolve_interface",
    "xdp_query",
]

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_FLAGS_REPLACE = 1 << 4

_BPF_XDP = 37  # enum bpf_attach_type
_BPF_LINK_TYPE_XDP = 6  # enum bpf_link_type
_CLONE_NEWNET = 0x40000000
_SIOCETHTOOL = 0x8946
_ETHTOOL_GDRVINFO = 0x00000003
_NETNS_RUN_DIR = "/var/run/netns"


class XdpMode(enum.Enum):
    """Where the program runs; the value is the XDP_FLAGS_* mode flag."""

    NATIVE = XDP_FLAGS_DRV_MODE
    """In the driver (fast; needs driver support, veth has it)."""
    GENERIC = XDP_FLAGS_SKB_MODE
    """In the stack after the skb is built (any interface, slower)."""
    OFFLOAD = XDP_FLAGS_HW_MODE
    """On the NIC (SmartNICs only)."""

    @property
    def flags(self) -> int:
        return int(self.value)

    @property
    def label(self) -> str:
        return self.name.lower()


# ---- network namespaces and interfaces ----------------------------------------------


def _netns_path(netns: str) -> str:
    return netns if "/" in netns else os.path.join(_NETNS_RUN_DIR, netns)


def _setns(fd: int, what: str) -> None:
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        check(-(ffi.errno or errno.EPERM), what)


@contextlib.contextmanager
def in_netns(netns: str | None) -> Iterator[None]:
    """Run the block with this thread in network namespace ``netns``.

    ``netns`` is a name under /var/run/netns or a path (``/proc/PID/ns/net``);
    None leaves the namespace alone.  Only the network namespace changes.
    """
    if netns is None:
        yield
        return
    path = _netns_path(netns)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(
            f"network namespace {netns!r} does not exist ({path} is missing); "
            "list them with `ip netns list`"
        ) from None
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, f"enter network namespace {netns!r}")
            try:
                yield
            finally:
                _setns(own, "return to the original network namespace")
        finally:
            os.close(own)
    finally:
        os.close(target)


def resolve_interface(interface: str | int, netns: str | None = None) -> tuple[int, str]:
    """(ifindex, name) of an interface of the current thread's network namespace.

    ``netns`` is only used in the error message: call inside :func:`in_netns`.
    """
    try:
        if isinstance(interface, int):
            return interface, socket.if_indextoname(interface)
        return socket.if_nametoindex(interface), interface
    except OSError:
        check(-errno.ENODEV, f"find interface {interface!r}", ifname=str(interface), netns=netns)
        raise  # pragma: no cover - check() raised


def interface_driver(ifname: str) -> str | None:
    """The driver of ``ifname`` (ethtool GDRVINFO, current network namespace)."""
    info = ffi.new("char[196]")  # struct ethtool_drvinfo
    ffi.cast("__u32 *", info)[0] = _ETHTOOL_GDRVINFO
    addr = int(ffi.cast("uintptr_t", info))
    ifreq = struct.pack("16sP", ifname.encode()[:15], addr).ljust(40, b"\0")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s.fileno(), _SIOCETHTOOL, ifreq)
    except OSError:
        return None
    return bytes(ffi.buffer(info, 36)[4:36]).split(b"\0", 1)[0].decode() or None


# ---- queries -------------------------------------------------------------------------


def _query(ifindex: int, ifname: str, netns: str | None) -> dict[str, int]:
    opts = ffi.new("struct bpf_xdp_query_opts *")
    opts.sz = ffi.sizeof("struct bpf_xdp_query_opts")
    check(
        load().bpf_xdp_query(ifindex, 0, opts), f"query XDP on {ifname}", ifname=ifname, netns=netns
    )
    return {
        "native": int(opts.drv_prog_id),
        "generic": int(opts.skb_prog_id),
        "offload": int(opts.hw_prog_id),
        "prog_id": int(opts.prog_id),
        "attach_mode": int(opts.attach_mode),
    }


def xdp_query(interface: str | int, netns: str | None = None) -> dict[str, int]:
    """XDP program ids on an interface: ``native``, ``generic``, ``offload`` (0: none),
    plus ``prog_id`` and ``attach_mode`` (XDP_ATTACHED_*) as the kernel reports them."""
    with in_netns(netns):
        ifindex, ifname = resolve_interface(interface, netns)
        return _query(ifindex, ifname, netns)


def prog_name(prog_id: int) -> str:
    """The name of the loaded BPF program ``prog_id`` (``?`` if it is gone)."""
    lib = load()
    fd = lib.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return "?"
    try:
        info = ffi.new("struct xpro_prog_info *")
        size = ffi.new("__u32 *", ffi.sizeof("struct xpro_prog_info"))
        if lib.bpf_obj_get_info_by_fd(fd, info, size) < 0:
            return "?"
        return str(ffi.string(info.name).decode(errors="replace"))
    finally:
        os.close(fd)


def _link_info(fd: int) -> Any:
    info = ffi.new("struct xpro_link_info *")
    size = ffi.new("__u32 *", ffi.sizeof("struct xpro_link_info"))
    check(load().bpf_obj_get_info_by_fd(fd, info, size), "read BPF link info")
    return info


def _find_xdp_link(ifindex: int, prog_id: int) -> int | None:
    """An fd of the XDP link holding ``prog_id`` on ``ifindex``, if it is a link."""
    lib = load()
    next_id = ffi.new("__u32 *")
    cur = 0
    while lib.bpf_link_get_next_id(cur, next_id) == 0:
        cur = int(next_id[0])
        fd = lib.bpf_link_get_fd_by_id(cur)
        if fd < 0:
            continue  # gone meanwhile
        try:
            info = _link_info(fd)
        except DatapathError:
            os.close(fd)
            continue
        if (
            info.type == _BPF_LINK_TYPE_XDP
            and info.xdp.ifindex == ifindex
            and info.prog_id == prog_id
        ):
            return int(fd)
        os.close(fd)
    return None


def _holder(q: dict[str, int]) -> tuple[XdpMode, int] | None:
    for mode in XdpMode:
        if q[mode.label]:
            return mode, q[mode.label]
    return None


# ---- attach / detach -------------------------------------------------------------------


def attach_xdp(
    prog: Program,
    interface: str | int,
    mode: XdpMode = XdpMode.NATIVE,
    *,
    netns: str | None = None,
    replace: bool = False,
) -> XdpLink:
    """Attach ``prog`` (see :meth:`Program.attach_xdp`)."""
    lib = load()
    prog_fd = prog.fd
    with in_netns(netns):
        ifindex, ifname = resolve_interface(interface, netns)
        what = f"attach XDP program {prog.name!r} to {ifname} in {mode.label} mode"
        held = _holder(_query(ifindex, ifname, netns))
        if held is not None and not replace:
            hmode, hid = held
            check(
                -errno.EBUSY,
                what,
                ifname=ifname,
                netns=netns,
                mode=mode.label,
                holder=f"XDP program id {hid} {prog_name(hid)!r} ({hmode.label} mode)",
            )

        if mode is XdpMode.OFFLOAD:
            flags = mode.flags | (0 if replace else XDP_FLAGS_UPDATE_IF_NOEXIST)
            rc = lib.bpf_xdp_attach(ifindex, prog_fd, flags, ffi.NULL)
            if rc < 0:
                check(
                    rc,
                    what,
                    ifname=ifname,
                    netns=netns,
                    mode=mode.label,
                    driver=interface_driver(ifname),
                )
            return XdpLink(None, ifindex=ifindex, ifname=ifname, netns=netns, mode=mode)

        if held is not None:
            hmode, hid = held
            link_fd = _find_xdp_link(ifindex, hid)
            if link_fd is not None and hmode is mode:
                # Atomic: the interface is never without a program.
                rc = lib.bpf_link_update(link_fd, prog_fd, ffi.NULL)
                if rc < 0:
                    os.close(link_fd)
                    check(rc, what, ifname=ifname, netns=netns, mode=mode.label)
                return XdpLink(link_fd, ifindex=ifindex, ifname=ifname, netns=netns, mode=mode)
            if link_fd is not None:
                try:
                    check(lib.bpf_link_detach(link_fd), f"detach XDP link from {ifname}")
                finally:
                    os.close(link_fd)
            else:
                check(
                    lib.bpf_xdp_detach(ifindex, hmode.flags, ffi.NULL),
                    f"detach XDP program {hid} from {ifname}",
                    ifname=ifname,
                    netns=netns,
                    mode=hmode.label,
                )

        opts = ffi.new("struct bpf_link_create_opts *")
        opts.sz = ffi.sizeof("struct bpf_link_create_opts")
        opts.flags = mode.flags
        fd = lib.bpf_link_create(prog_fd, ifindex, _BPF_XDP, opts)
        if fd < 0:
            check(
                fd,
                what,
                ifname=ifname,
                netns=netns,
                mode=mode.label,
                driver=interface_driver(ifname),
            )
        return XdpLink(int(fd), ifindex=ifindex, ifname=ifname, netns=netns, mode=mode)


def detach_xdp(
    interface: str | int, mode: XdpMode | None = None, netns: str | None = None
) -> list[int]:
    """Remove XDP programs from an interface (all modes, or ``mode``), whether a
    link (pinned or not) or netlink attached them; returns the detached program ids."""
    lib = load()
    removed: list[int] = []
    with in_netns(netns):
        ifindex, ifname = resolve_interface(interface, netns)
        q = _query(ifindex, ifname, netns)
        for m in XdpMode:
            prog_id = q[m.label]
            if not prog_id or (mode is not None and m is not mode):
                continue
            link_fd = _find_xdp_link(ifindex, prog_id)
            if link_fd is not None:
                try:
                    check(
                        lib.bpf_link_detach(link_fd),
                        f"detach XDP link of program {prog_id} from {ifname}",
                    )
                finally:
                    os.close(link_fd)
            else:
                check(
                    lib.bpf_xdp_detach(ifindex, m.flags, ffi.NULL),
                    f"detach XDP program {prog_id} from {ifname}",
                    ifname=ifname,
                    netns=netns,
                    mode=m.label,
                )
            removed.append(prog_id)
    return removed


class XdpLink:
    """An XDP attachment: a BPF link (native, generic) or a netlink one (offload).

    Closing an unpinned link detaches the program; pin it to keep it.
    """

    def __init__(
        self,
        fd: int | None,
        *,
        ifindex: int,
        ifname: str | None = None,
        netns: str | None = None,
        mode: XdpMode | None = None,
        pin_path: str | None = None,
    ) -> None:
        self._lib = load()
        self._fd = fd
        self._ifindex = ifindex
        self.ifname = ifname
        self.netns = netns
        self.mode = mode
        self.pin_path = pin_path

    def __repr__(self) -> str:
        kind = "link" if self._fd is not None else "netlink"
        mode = self.mode.label if self.mode else "?"
        return (
            f"<XdpLink {kind} {self.ifname or self._ifindex} {mode} "
            f"fd={self._fd} pin={self.pin_path}>"
        )

    @classmethod
    def from_pin(cls, path: str | os.PathLike[str]) -> XdpLink:
        """Adopt a link pinned in bpffs (by a previous daemon, say)."""
        lib = load()
        p = os.fspath(path)
        fd = check(lib.bpf_obj_get(os.fsencode(p)), f"open pinned link {p}", path=p)
        try:
            info = _link_info(fd)
            if info.type != _BPF_LINK_TYPE_XDP:
                raise AttachError(f"{p} is a BPF link of type {info.type}, not an XDP link")
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, ifindex=int(info.xdp.ifindex), pin_path=p)

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise AttachError("a netlink (offload) attachment has no link fd")
        if self._fd < 0:
            raise AttachError("the XDP link is closed")
        return self._fd

    @property
    def ifindex(self) -> int:
        """The interface index (0 once a link is detached)."""
        if self._fd is not None and self._fd >= 0:
            return int(_link_info(self._fd).xdp.ifindex)
        return self._ifindex

    @property
    def prog_id(self) -> int:
        """The id of the attached program (0 if none)."""
        if self._fd is not None:
            return int(_link_info(self.fd).prog_id)
        mode = self.mode or XdpMode.OFFLOAD
        with in_netns(self.netns):
            return _query(self._ifindex, self.ifname or str(self._ifindex), self.netns)[mode.label]

    @property
    def id(self) -> int:
        """The link's own id (links only)."""
        return int(_link_info(self.fd).id)

    def pin(self, path: str | os.PathLike[str]) -> None:
        """Pin the link in bpffs so it outlives this process."""
        p = os.fspath(path)
        require_bpffs(os.path.dirname(p) or ".", "pin the XDP link")
        check(self._lib.bpf_obj_pin(self.fd, os.fsencode(p)), f"pin the XDP link at {p}", path=p)
        self.pin_path = p

    def unpin(self) -> None:
        """Remove the pin (the attachment stays while an fd is open)."""
        if self.pin_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.pin_path)
            self.pin_path = None

    def update_program(self, prog: Program) -> None:
        """Swap in another program atomically."""
        if self._fd is not None:
            check(
                self._lib.bpf_link_update(self.fd, prog.fd, ffi.NULL),
                f"replace the program of XDP link {self.ifname or self._ifindex}",
            )
            return
        mode = self.mode or XdpMode.OFFLOAD
        with in_netns(self.netns):
            ifname = self.ifname or str(self._ifindex)
            check(
                self._lib.bpf_xdp_attach(self._ifindex, prog.fd, mode.flags, ffi.NULL),
                f"replace the XDP program of {ifname}",
                ifname=ifname,
                netns=self.netns,
                mode=mode.label,
                driver=interface_driver(ifname),
            )

    def detach(self) -> None:
        """Detach the program from the interface now (even if the link is pinned)."""
        if self._fd is not None:
            check(
                self._lib.bpf_link_detach(self.fd),
                f"detach the XDP link of {self.ifname or self._ifindex}",
            )
            return
        mode = self.mode or XdpMode.OFFLOAD
        with in_netns(self.netns):
            ifname = self.ifname or str(self._ifindex)
            check(
                self._lib.bpf_xdp_detach(self._ifindex, mode.flags, ffi.NULL),
                f"detach XDP from {ifname}",
                ifname=ifname,
                netns=self.netns,
                mode=mode.label,
            )

    def close(self) -> None:
        """Close the link fd: an unpinned link is detached, a pinned one stays."""
        if self._fd is not None and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> XdpLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
