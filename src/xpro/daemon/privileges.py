"""Dropping the capabilities a running daemon no longer needs (libc ``capset``, ``prctl``).

The daemon starts as root (or with the unit's capability set): loading the
XDP program, creating and pinning maps, attaching to interfaces, entering a
network namespace all need privileges.  Once every interface is attached,
what is left to do -- reading and writing maps through descriptors it holds,
running the control program (``BPF_PROG_TEST_RUN``), reading the ring
buffer, the store, the metrics and control sockets, and detaching through
its link descriptors at the end -- needs none on Linux 6.x, measured by
trying (docs/security.rst lists what each backend keeps and why).

:func:`drop_to` then keeps only what the backend still needs at run time:

1. the bounding set loses every other capability (so not even an ``exec``
   of a root program gets them back) and the secure bits are locked
   (``SECBIT_NOROOT``: uid 0 confers nothing on exec) -- both need
   CAP_SETPCAP, which the unit grants for this alone and which goes too;
2. the ambient set is cleared;
3. effective and permitted are cut to the kept set, inheritable emptied.

Capabilities are per thread: the daemon drops them on its main thread
before it starts any other, and every thread it starts later inherits the
reduced sets.  Threads that already run are named in a warning.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from xpro.errors import XproError

__all__ = ["CAPABILITIES", "Capabilities", "CapabilityError", "drop_to", "read_capabilities",
           "runtime_capabilities"]

log = logging.getLogger("xpro.daemon.privileges")

#: Capability numbers (linux/capability.h).
CAPABILITIES: dict[str, int] = {name: i for i, name in enumerate((
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"))}
_NAMES = {v: k for k, v in CAPABILITIES.items()}

#: What each of xpro's backends still needs once attached (measured on Linux
#: 6.18 by running with less: tests/integration/test_daemon_security.py).
#: The XDP backends and afxdp need nothing: maps, the control program and the
#: ring buffer are used through descriptors the daemon holds, links are
#: detached through theirs.  ``offload``'s refresh only writes maps too, but
#: its reduced program is detached at the end by netlink (CAP_NET_ADMIN),
#: inside the interfaces' network namespace if there is one (setns:
#: CAP_SYS_ADMIN).
_RUNTIME: dict[str, frozenset[str]] = {
    "native": frozenset(),
    "generic": frozenset(),
    "auto": frozenset(),
    "afxdp": frozenset(),
    "offload": frozenset({"CAP_NET_ADMIN"}),
}
_IN_NETNS: dict[str, frozenset[str]] = {"offload": frozenset({"CAP_SYS_ADMIN"})}

_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24
_PR_GET_SECUREBITS = 27
_PR_SET_SECUREBITS = 28
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
#: SECBIT_NOROOT, _NO_SETUID_FIXUP, _KEEP_CAPS, _NO_CAP_AMBIENT_RAISE: locked,
#: NOROOT and NO_CAP_AMBIENT_RAISE set.
_SECUREBITS = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 5) | (1 << 6) | (1 << 7)
_CAP_V3 = 0x20080522


class CapabilityError(XproError):
    """Capabilities could not be read or changed (the kernel refused: an operation
    that failed, exit 1; a missing privilege is :class:`xpro.errors.PrivilegeError`)."""


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _err(what: str) -> CapabilityError:
    e = ctypes.get_errno()
    return CapabilityError(f"{what}: {os.strerror(e)}")


@dataclass(frozen=True)
class Capabilities:
    """A thread's capability sets, as names."""

    effective: frozenset[str]
    permitted: frozenset[str]
    inheritable: frozenset[str]
    bounding: frozenset[str]
    ambient: frozenset[str]

    def to_dict(self) -> dict[str, list[str]]:
        return {k: sorted(getattr(self, k)) for k in
                ("effective", "permitted", "inheritable", "bounding", "ambient")}


def _names(mask: int) -> frozenset[str]:
    return frozenset(_NAMES.get(i, f"CAP_{i}") for i in range(64) if mask >> i & 1)


def read_capabilities(status: str | Path = "/proc/thread-self/status") -> Capabilities:
    """The sets of a thread (``/proc/PID/task/TID/status``; default: the caller)."""
    fields = {}
    for line in Path(status).read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            fields[key] = int(value.strip(), 16)
    return Capabilities(_names(fields["CapEff"]), _names(fields["CapPrm"]),
                        _names(fields["CapInh"]), _names(fields["CapBnd"]),
                        _names(fields.get("CapAmb", 0)))


def runtime_capabilities(backend: str, *, netns: bool = False) -> frozenset[str] | None:
    """What ``backend`` needs once attached (``netns``: its interfaces are in another
    network namespace); None for a backend xpro does not know (a plugin's: its
    needs are unknown, nothing is dropped)."""
    base = _RUNTIME.get(backend)
    if base is None:
        return None
    return base | _IN_NETNS.get(backend, frozenset()) if netns else base


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return max(CAPABILITIES.values())


def drop_to(keep: Iterable[str]) -> Capabilities:
    """Keep only ``keep`` (names such as ``"CAP_BPF"``) in every set of the calling
    thread (and of the threads it starts from now on); returns the sets after."""
    wanted = frozenset(keep)
    unknown = wanted - set(CAPABILITIES)
    if unknown:
        raise CapabilityError(f"unknown capabilities {sorted(unknown)}")
    libc = _libc()
    before = read_capabilities()
    others = _other_threads()
    if others:
        log.warning("capabilities are dropped on this thread only; %d thread(s) started "
                    "earlier keep theirs: %s", len(others), ", ".join(others),
                    extra={"event": "capabilities_threads"})
    keep_mask = sum(1 << CAPABILITIES[n] for n in wanted)
    if "CAP_SETPCAP" in before.effective:
        for cap in range(_last_cap() + 1):
            if not keep_mask >> cap & 1 and libc.prctl(_PR_CAPBSET_READ, cap, 0, 0, 0) == 1 \
                    and libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise _err(f"dropping {_NAMES.get(cap, cap)} from the bounding set")
        bits = libc.prctl(_PR_GET_SECUREBITS, 0, 0, 0, 0)
        if bits >= 0 and bits & _SECUREBITS != _SECUREBITS \
                and libc.prctl(_PR_SET_SECUREBITS, bits | _SECUREBITS, 0, 0, 0) != 0:
            log.warning("could not lock the secure bits: %s", os.strerror(ctypes.get_errno()))
    else:
        log.warning("no CAP_SETPCAP: the bounding set stays as it is (%s); the unit "
                    "grants CAP_SETPCAP for this", ", ".join(sorted(before.bounding)) or "empty",
                    extra={"event": "capabilities_bounding_kept"})
    if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        raise _err("clearing the ambient capabilities")
    have = sum(1 << CAPABILITIES[n] for n in before.permitted if n in CAPABILITIES)
    mask = keep_mask & have
    hdr = _Header(_CAP_V3, 0)
    data = (_Data * 2)()
    for i in range(2):
        part = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = part
        data[i].inheritable = 0
    if libc.capset(ctypes.byref(hdr), data) != 0:
        raise _err("capset")
    return read_capabilities()


def _other_threads() -> list[str]:
    me = threading.get_native_id()
    out = []
    for task in Path("/proc/self/task").iterdir():
        if int(task.name) == me:
            continue
        try:
            out.append(f"{(task / 'comm').read_text().strip()} ({task.name})")
        except OSError:
            continue
    return out
