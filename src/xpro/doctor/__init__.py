"""``xpro doctor``: is this host ready to run an xpro proxy?

Every check looks at the real thing: BPF features are probed by loading tiny
programs and maps (libbpf's ``libbpf_probe_*``), the packaged object is loaded
as the daemon would load it, driver XDP support comes from the kernel's own
report (the ``netdev`` generic netlink family, ``xdp-features``) or, when
asked, from attaching a trivial ``XDP_PASS`` program in native mode and
detaching it at once, the store is pinged, the clock state is read with
``adjtimex(2)``.  Nothing is guessed from driver names.

Library use::

    from xpro.config import load_config
    from xpro.doctor import run_checks

    for finding in run_checks(load_config("/etc/xpro/xpro.toml")):
        print(finding.format())

Each :class:`Finding` says what was checked, ``ok``/``warn``/``fail``, what
was found and, unless ``ok``, what to do.  The command exits 0 when no check
failed (warnings alone exit 0), 1 when one did, 2 for a usage or
configuration error.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import resource
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from xpro.backends.xdp import SINGLE_BUFFER_MTU
from xpro.bpf._ffi import ffi, libc, load
from xpro.bpf.xdp import prog_name
from xpro.config import Config, mask_url
from xpro.core.text import printable
from xpro.datapath.host import link_type_name, link_type_problem
from xpro.errors import BpfLoadError, ConfigError, PluginError, PrivilegeError, XproError

__all__ = [
    "SINGLE_BUFFER_MTU",
    "Finding",
    "Status",
    "check_bpf_features",
    "check_bpf_object",
    "check_bpffs",
    "check_clock",
    "check_interface",
    "check_kernel",
    "check_lockdown",
    "check_memory",
    "check_mesh_clock",
    "check_pins",
    "check_privileges",
    "check_store",
    "clock_tolerance",
    "exit_code",
    "format_findings",
    "run_checks",
    "to_json",
]

Status = Literal["ok", "warn", "fail"]


#: Seconds a store ping may take before the store counts as unreachable.
STORE_TIMEOUT = 2.0

#: Clock skew tolerated between proxies, as a fraction of the shortest of
#: t_t2, t_t3 and sync.period (see the clock-sync finding).
SKEW_FRACTION = 0.01


@dataclass(frozen=True)
class Finding:
    """One result of ``xpro doctor``: ``check`` (a stable name such as
    ``"bpffs"`` or ``"xdp:eth0"``), ``status``, what was found and what to do."""

    check: str
    status: Status
    message: str
    fix: str = ""

    def format(self) -> str:
        """Two lines at most: ``STATUS check: message`` and ``fix: ...``."""
        label = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[self.status]
        # Names and messages may quote what an operator typed (an interface,
        # a URL): no control character reaches the terminal.
        def safe(t: str) -> str:  # line by line: a verifier log keeps its lines
            return "\n      ".join(printable(line, 2000) for line in t.split("\n"))

        text = f"{label}  {printable(self.check, 200)}: {safe(self.message)}"
        if self.fix:
            text += f"\n      fix: {safe(self.fix)}"
        return text

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def exit_code(findings: Sequence[Finding]) -> int:
    """0 unless a finding failed (warnings alone are 0), then 1."""
    return 1 if any(f.status == "fail" for f in findings) else 0


def format_findings(findings: Sequence[Finding]) -> str:
    """The report as text: one finding per line (plus its fix), and a summary."""
    counts = {s: sum(f.status == s for f in findings) for s in ("ok", "warn", "fail")}
    lines = [f.format() for f in findings]
    verdict = "not ready" if counts["fail"] else "ready"
    lines.append(f"{verdict}: {counts['ok']} ok, {counts['warn']} warnings, "
                 f"{counts['fail']} failed")
    return "\n".join(lines)


def to_json(findings: Sequence[Finding]) -> str:
    """The report as one JSON object: ``ok``, ``summary`` and ``findings``."""
    counts = {s: sum(f.status == s for f in findings) for s in ("ok", "warn", "fail")}
    return json.dumps({"ok": exit_code(findings) == 0, "summary": counts,
                       "findings": [f.to_dict() for f in findings]}, indent=2)


# ---------------------------------------------------------------------------
# Constants of the probes (the calls are declared in xpro.bpf._ffi, whose
# layouts tests/kernel/test_loader.py checks against the headers)
# ---------------------------------------------------------------------------

# linux/bpf.h
_PROG_XDP = 6
_PROG_TRACING = 26
_BPF_XDP = 37
_BPF_F_XDP_HAS_FRAGS = 1 << 5
_MAPS = {"LRU hash": 9, "LPM trie": 11, "ring buffer": 27, "per-CPU array": 6, "array": 2,
         "hash": 1}
_MAP_SINCE = {"LRU hash": "4.10", "LPM trie": "4.11", "ring buffer": "5.8",
              "per-CPU array": "4.6", "array": "3.19", "hash": "3.19"}
_HELPERS = {"bpf_ktime_get_coarse_ns": (160, "5.11"), "bpf_ktime_get_tai_ns": (208, "6.1"),
            "bpf_jiffies64": (118, "5.5"), "bpf_ringbuf_reserve": (131, "5.8")}
# linux/if_link.h
_XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
_XDP_FLAGS_DRV_MODE = 1 << 2
_XDP_FLAGS_REPLACE = 1 << 4
# linux/capability.h
_CAPS = {"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_ADMIN": 21, "CAP_SYS_RESOURCE": 24,
         "CAP_PERFMON": 38, "CAP_BPF": 39}
# linux/timex.h
_STA_UNSYNC = 0x0040
_TIME_ERROR = 5
# netdev generic netlink family (Documentation/netlink/specs/netdev.yaml)
_NETDEV_CMD_DEV_GET = 1
_XDP_ACT = {"basic": 1, "redirect": 2, "ndo-xmit": 4, "xsk-zerocopy": 8, "hw-offload": 16,
            "rx-sg": 32, "ndo-xmit-sg": 64}

def _lib() -> Any:
    """The loader's libbpf handle (logging routed, a clear error if it is missing)."""
    return load()


def _errstr(rc: int) -> str:
    """A negative libbpf return as the loader words it (the kernel's ENOTSUPP, 524,
    has no name in errno)."""
    from xpro.bpf._ffi import _errname, _strerror

    return f"{_strerror(-rc)} ({_errname(-rc)})"


# ---------------------------------------------------------------------------
# Host checks
# ---------------------------------------------------------------------------


def _cap_eff() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _release() -> tuple[int, ...]:
    """The kernel release as numbers: (6, 18) for ``6.18.44-...``."""
    parts = []
    for piece in os.uname().release.split("-")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_privileges() -> Finding:
    """Root, or the capabilities the daemon uses."""
    eff = _cap_eff()
    have = {name for name, bit in _CAPS.items() if eff >> bit & 1}
    bpf_ok = "CAP_BPF" in have or "CAP_SYS_ADMIN" in have
    net_ok = "CAP_NET_ADMIN" in have
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    if bpf_ok and net_ok and "CAP_SYS_ADMIN" not in have:
        return Finding("privileges", "warn",
                       f"running as {who} with {', '.join(sorted(have))} but without "
                       "CAP_SYS_ADMIN: a restarted daemon cannot find pinned links to adopt "
                       "them, and cannot enter [proxy] netns",
                       "grant CAP_SYS_ADMIN too (the systemd unit does)")
    if bpf_ok and net_ok:
        return Finding("privileges", "ok",
                       f"running as {who} with {', '.join(sorted(have))}")
    missing = [c for c, ok in (("CAP_BPF", bpf_ok), ("CAP_NET_ADMIN", net_ok)) if not ok]
    return Finding("privileges", "fail",
                   f"running as {who} without {' and '.join(missing)}: BPF programs cannot "
                   "be loaded or attached (the BPF checks below fail for this reason)",
                   "run as root (sudo xpro doctor), or under the systemd unit, which grants "
                   "CAP_BPF CAP_NET_ADMIN CAP_SYS_ADMIN CAP_PERFMON CAP_SYS_RESOURCE "
                   "CAP_NET_RAW")


def check_kernel() -> list[Finding]:
    """The kernel release and the BPF JIT."""
    out = []
    release = os.uname().release
    if _release() < (6, 1):
        out.append(Finding("kernel", "warn", f"Linux {release}: xpro is built for 6.1 or "
                           "later (bpf-features below says what is missing here)",
                           "upgrade the kernel (Debian 12's is 6.1)"))
    else:
        out.append(Finding("kernel", "ok", f"Linux {release} (6.1 or later; the features "
                           "themselves are probed below)"))
    try:
        jit = Path("/proc/sys/net/core/bpf_jit_enable").read_text().strip()
    except OSError:
        jit = ""
    if jit in ("1", "2"):
        out.append(Finding("bpf-jit", "ok", "the BPF JIT is on"))
    elif jit == "0":
        out.append(Finding("bpf-jit", "warn",
                           "the BPF JIT is off: programs run in the interpreter, several "
                           "times slower per packet",
                           "sysctl -w net.core.bpf_jit_enable=1 (and set it in "
                           "/etc/sysctl.d/)"))
    else:
        out.append(Finding("bpf-jit", "ok", "the BPF JIT is always on (no "
                           "net.core.bpf_jit_enable switch: CONFIG_BPF_JIT_ALWAYS_ON)"))
    return out


def check_libbpf() -> Finding:
    try:
        from xpro.bpf import libbpf_version

        return Finding("libbpf", "ok", f"libbpf.so.1 {libbpf_version()} loaded")
    except XproError as exc:
        return Finding("libbpf", "fail", str(exc), "apt-get install libbpf1")


def _load_errno() -> int:
    """0 if this process may load an XDP program (a trivial one is loaded and
    closed), else the errno: libbpf's probes report "unsupported" for a probe
    the kernel refused for want of privilege, so ask first."""
    try:
        os.close(_trivial_prog(frags=False))
    except OSError as exc:
        return exc.errno or errno.EPERM
    return 0


def check_bpf_features() -> Finding:
    """Probe what the program needs by loading tiny programs and maps."""
    lib = _lib()
    code = _load_errno()
    if code in (errno.EPERM, errno.EACCES):
        return Finding("bpf-features", "fail",
                       f"not probed: loading even a trivial XDP program is refused "
                       f"({os.strerror(code)}), for want of privilege",
                       "run as root, or with CAP_BPF and CAP_NET_ADMIN")
    missing: list[str] = []
    errors: list[str] = []
    rc = lib.libbpf_probe_bpf_prog_type(_PROG_XDP, ffi.NULL)
    if rc == 0:
        missing.append("XDP programs (4.8)")
    elif rc < 0:
        errors.append(f"XDP programs: {_errstr(rc)}")
    for name, mtype in _MAPS.items():
        rc = lib.libbpf_probe_bpf_map_type(mtype, ffi.NULL)
        if rc == 0:
            missing.append(f"{name} maps ({_MAP_SINCE[name]})")
        elif rc < 0:
            errors.append(f"{name} maps: {_errstr(rc)}")
    for name, (helper, since) in _HELPERS.items():
        rc = lib.libbpf_probe_bpf_helper(_PROG_XDP, helper, ffi.NULL)
        if rc == 0:
            missing.append(f"{name}() in XDP ({since})")
        elif rc < 0:
            errors.append(f"{name}(): {_errstr(rc)}")
    probed = ("XDP programs; hash, LRU hash, LPM trie, array, per-CPU array and ring buffer "
              "maps; bpf_ktime_get_coarse_ns, bpf_ktime_get_tai_ns, bpf_jiffies64 and "
              "bpf_ringbuf_reserve in XDP")
    if missing:
        return Finding("bpf-features", "fail",
                       "this kernel lacks " + "; ".join(missing) + " (the kernel version "
                       "that added each is in parentheses)",
                       "run a kernel of 6.1 or later built with CONFIG_BPF_SYSCALL, "
                       "CONFIG_XDP_SOCKETS and CONFIG_BPF_JIT")
    if errors:
        return Finding("bpf-features", "fail",
                       "the probes could not run: " + "; ".join(errors),
                       "run as root (probing loads programs), and check "
                       "kernel.unprivileged_bpf_disabled and the lockdown state")
    return Finding("bpf-features", "ok", f"supported (probed with libbpf): {probed}")


def _memlock(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("memlock:"):
            return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class _LoadResult:
    finding: Finding
    #: Bytes of kernel memory per flow-table entry (flows + the sync's tables),
    #: per destination entry, and the fixed rest; None if the load failed.
    per_flow: float | None = None
    per_dst: float | None = None
    #: Per known-client entry (a preallocated hash, apart from the flows).
    per_known: float = 0.0
    fixed: int = 0


#: Kernel memory of one slot of the filters of known sources: 2 KiB of bits
#: in an array allocated at load (``tables.known_filters`` slots).
KNOWN_FILTER_BYTES = 2048


def check_bpf_object(config: Config) -> _LoadResult:
    """Load the packaged object as the daemon does (small tables) and close it."""
    from xpro.bpf import object_path
    from xpro.core.params import Sizes
    from xpro.datapath.xdp import XdpFilter

    try:
        path = object_path()
    except XproError as exc:
        return _LoadResult(Finding("bpf-object", "fail", str(exc),
                                   "reinstall xpro with clang available (pip install "
                                   "--force-reinstall xpro)"))
    flows, dsts, known = 8192, 64, 1024
    sizes = Sizes(flows=flows, dsts=dsts, prefixes=config.tables.prefixes, known=known,
                  known_filters=64)
    per_flow = per_dst = None
    per_known = 0.0
    fixed = 0
    loaded = []
    for program in ("xpro_xdp", "xpro_xdp_frags"):
        try:
            filt = XdpFilter(config.filter_params(), sizes=sizes, program=program)
        except XproError as exc:
            if isinstance(exc, PrivilegeError):
                fix = "run as root, or with CAP_BPF and CAP_NET_ADMIN"
            elif isinstance(exc, BpfLoadError):
                fix = ("the kernel's verifier rejected the program: report it with this "
                       "message, the kernel version and the xpro version")
            else:
                fix = "see the message; xpro doctor --json keeps it whole for a bug report"
            return _LoadResult(Finding("bpf-object", "fail",
                                       f"loading {program} from {path} failed: {exc}", fix))
        try:
            if per_flow is None:
                maps = filt.obj.maps
                per_flow = sum(_memlock(maps[n].fd) for n in ("flows", "dirty0", "dirty1")
                               ) / flows
                per_dst = _memlock(maps["dsts"].fd) / dsts
                per_known = _memlock(maps["known"].fd) / known
                fixed = sum(_memlock(maps[n].fd) for n in maps
                            if n not in ("flows", "dirty0", "dirty1", "dsts", "known",
                                         "known_slots"))
        finally:
            filt.close()
        loaded.append(program)
    return _LoadResult(Finding("bpf-object", "ok",
                               f"{path.name} loads and passes the verifier "
                               f"({' and '.join(loaded)}, with the configured filter)"),
                       per_flow, per_dst, per_known, fixed)


def check_bpffs(config: Config) -> Finding:
    """The pin directory is on bpffs (or will be, when created below a bpffs mount)."""
    from xpro.bpf import is_bpffs

    pin = Path(config.proxy.pin_dir)
    probe = pin
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if is_bpffs(probe):
        where = "exists" if probe == pin else f"will be created below {probe}"
        return Finding("bpffs", "ok", f"the pin directory {pin} {where}, on bpffs: a "
                       "restarted daemon adopts the running filter")
    mount_at = "/sys/fs/bpf" if str(pin).startswith("/sys/fs/bpf/") else str(pin)
    return Finding("bpffs", "fail",
                   f"{pin} ([proxy] pin_dir) is not on a bpffs mount ({probe} is not "
                   "bpffs): maps and links cannot be pinned, so a daemon restart would "
                   "drop the filter and its state",
                   f"mount -t bpf bpf {mount_at}, and at boot: add `bpf {mount_at} bpf "
                   "defaults 0 0` to /etc/fstab (systemd mounts /sys/fs/bpf by itself)")


def check_pins(config: Config) -> Finding:
    """A filter a previous daemon pinned: will the next start adopt it?"""
    from xpro.bpf import Map, is_bpffs

    pin = Path(config.proxy.pin_dir)
    if not pin.is_dir() or not is_bpffs(pin):
        return Finding("pins", "ok", f"nothing pinned in {pin}: the daemon starts fresh")
    links = sorted(p.name.removeprefix("link-") for p in pin.glob("link-*"))
    wrong = []
    found = 0
    for name, want in config.sizes().max_entries().items():
        path = pin / name
        if not path.exists():
            continue
        found += 1
        with Map.from_pin(path) as pinned:
            if pinned.max_entries != want:
                wrong.append(f"{name} has {pinned.max_entries:,} entries, the config "
                             f"asks for {want:,}")
    on = f"; links for {', '.join(links)}" if links else ""
    if wrong:
        return Finding("pins", "fail",
                       f"the maps pinned in {pin} were made with other table sizes "
                       f"({'; '.join(wrong)}): the daemon cannot adopt them{on}",
                       "keep the old [tables] sizes, or remove the pins with `xpro detach` "
                       "(the flow state is lost and rebuilds within t_t2)")
    if not found and not links:
        return Finding("pins", "ok", f"nothing pinned in {pin}: the daemon starts fresh")
    return Finding("pins", "ok", f"{found} maps pinned in {pin}{on}, sized as configured: "
                   "the next daemon adopts them and their state")


def check_lockdown() -> Finding:
    """Kernel lockdown and kernel BTF: what they block, and that XDP is not among it."""
    btf = Path("/sys/kernel/btf/vmlinux").exists()
    notes = []
    tracing = _lib().libbpf_probe_bpf_prog_type(_PROG_TRACING, ffi.NULL)
    if tracing != 1 and _load_errno() == 0:  # (a refusal for want of privilege says nothing)
        why = "" if btf else " (no kernel BTF, /sys/kernel/btf/vmlinux)"
        notes.append(f"tracing and extension programs cannot load here{why}, so the "
                     "libxdp multi-program dispatcher cannot run: one XDP program per "
                     "interface, attached directly, which is what xpro does")
    try:
        text = Path("/sys/kernel/security/lockdown").read_text().strip()
    except OSError:
        state = None
    else:
        state = text[text.find("[") + 1:text.find("]")] if "[" in text else text
    if state is None:
        msg = ("lockdown state not reported (securityfs not mounted or no lockdown LSM); "
               "XDP, maps and ring buffers are not subject to lockdown")
    elif state == "none":
        msg = "lockdown is off"
    else:
        blocks = ("bpf_probe_write_user and unsigned modules" if state == "integrity" else
                  "bpf_probe_read_kernel and other reads of kernel memory, "
                  "bpf_probe_write_user and unsigned modules")
        msg = (f"lockdown is {state!r}: it blocks {blocks}; xpro uses none of these "
               "(XDP, maps, ring buffers)")
    return Finding("lockdown", "ok", "; ".join([msg, *notes]))


# ---------------------------------------------------------------------------
# Interfaces
# ---------------------------------------------------------------------------


def _netdev_features(ifindex: int) -> int | None:
    """The driver's ``xdp-features`` bits (netdev family, Linux 6.3+); None if unknown."""
    from pyroute2.netlink import NLM_F_REQUEST, genlmsg
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.generic import GenericNetlinkSocket

    class NetdevMsg(genlmsg):  # type: ignore[misc]
        prefix = "NETDEV_A_DEV_"
        nla_map = (
            ("NETDEV_A_DEV_UNSPEC", "none"),
            ("NETDEV_A_DEV_IFINDEX", "uint32"),
            ("NETDEV_A_DEV_PAD", "none"),
            ("NETDEV_A_DEV_XDP_FEATURES", "uint64"),
        )

    sock = GenericNetlinkSocket()
    try:
        try:
            sock.bind("netdev", NetdevMsg)
        except NetlinkError:
            return None  # no netdev family: a kernel before 6.3
        msg = NetdevMsg()
        msg["cmd"] = _NETDEV_CMD_DEV_GET
        msg["version"] = 1
        msg["attrs"] = [("NETDEV_A_DEV_IFINDEX", ifindex)]
        try:
            replies = list(sock.nlm_request(msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST))
        except NetlinkError:
            return None
        for r in replies:
            bits = r.get_attr("NETDEV_A_DEV_XDP_FEATURES")
            if bits is not None:
                return int(bits)
        return None
    finally:
        sock.close()


def _feature_names(bits: int) -> str:
    names = [n for n, b in _XDP_ACT.items() if bits & b]
    return ", ".join(names) if names else "none"


def _trivial_prog(frags: bool) -> int:
    """Load ``return XDP_PASS;`` (single- or multi-buffer); returns its fd."""
    insns = struct.pack("<BBhi", 0xB7, 0, 0, 2) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    opts = ffi.new("struct bpf_prog_load_opts *")
    opts.sz = ffi.sizeof("struct bpf_prog_load_opts")
    opts.expected_attach_type = _BPF_XDP
    opts.prog_flags = _BPF_F_XDP_HAS_FRAGS if frags else 0
    buf = ffi.new("char[]", insns)
    fd = int(_lib().bpf_prog_load(_PROG_XDP, b"xpro_probe", b"GPL", buf, 2, opts))
    if fd < 0:
        raise OSError(-fd, f"load the probe program: {_errstr(fd)}")
    return fd


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _kernel_messages() -> Iterator[list[str]]:
    """Collect what libbpf logs (the kernel's extack messages) instead of printing it."""
    logger = logging.getLogger("xpro.libbpf")
    handler = _Collect()
    old = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.propagate = old


@dataclass(frozen=True)
class _Probe:
    rc: int
    kernel_says: str

    def why(self) -> str:
        said = f": {self.kernel_says}" if self.kernel_says else ""
        return f"{_errstr(self.rc)}{said}"


def _attach_probe(ifindex: int, frags: bool) -> _Probe:
    """Attach a trivial program in native mode if nothing holds the interface, then
    detach exactly that program; ``rc`` 0 on success, else the negative errno."""
    lib = _lib()
    fd = _trivial_prog(frags)
    try:
        with _kernel_messages() as said:
            rc = int(lib.bpf_xdp_attach(
                ifindex, fd, _XDP_FLAGS_DRV_MODE | _XDP_FLAGS_UPDATE_IF_NOEXIST, ffi.NULL))
            if rc == 0:
                opts = ffi.new("struct bpf_xdp_attach_opts *")
                opts.sz = ffi.sizeof("struct bpf_xdp_attach_opts")
                opts.old_prog_fd = fd
                lib.bpf_xdp_detach(ifindex, _XDP_FLAGS_DRV_MODE | _XDP_FLAGS_REPLACE, opts)
        text = "; ".join(line.removeprefix("libbpf: Kernel error message: ").strip()
                         for line in said if "error message" in line)
        return _Probe(rc, text)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _Link:
    ifindex: int
    mtu: int
    kind: str
    peer_mtu: int | None
    link_type: int  # ARPHRD_*


def _link(ifname: str) -> _Link:
    """Index, MTU, kind, link type and (veth in the same namespace) the peer's MTU,
    by netlink."""
    from pyroute2 import IPRoute

    ipr = IPRoute()
    try:
        idx = ipr.link_lookup(ifname=ifname)[0]
        msg = ipr.get_links(idx)[0]
        info = msg.get_attr("IFLA_LINKINFO")
        kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""
        peer_mtu = None
        peer = msg.get_attr("IFLA_LINK")
        if kind == "veth" and peer and msg.get_attr("IFLA_LINK_NETNSID") is None:
            with contextlib.suppress(Exception):
                peer_mtu = int(ipr.get_links(peer)[0].get_attr("IFLA_MTU"))
        return _Link(int(idx), int(msg.get_attr("IFLA_MTU")), str(kind), peer_mtu,
                     int(msg["ifi_type"]))
    finally:
        ipr.close()


def _lro(ifname: str) -> bool | None:
    """Whether large receive offload is on (ethtool features); None if unknown."""
    from pyroute2.ethtool import Ethtool

    try:
        eth = Ethtool()
    except Exception:
        return None
    try:
        feature = eth.get_features(ifname).features.get("rx-lro")
    except Exception:
        return None
    finally:
        eth.close()
    return None if feature is None else bool(feature.enable)


def check_interface(ifname: str, config: Config, *, netns: str | None = None,
                    attach_probe: bool = False) -> list[Finding]:
    """Existence, driver, native XDP support, MTU, LRO and a program already attached."""
    from xpro.bpf import interface_driver, xdp_query
    from xpro.bpf.xdp import in_netns

    where = f" in network namespace {netns!r}" if netns else ""
    ipcmd = f"ip -n {netns} link" if netns else "ip link"
    backend = config.proxy.backend
    out: list[Finding] = []
    try:
        with in_netns(netns):
            try:
                link = _link(ifname)
            except IndexError:
                return [Finding(f"interface:{ifname}", "fail", f"no interface {ifname!r}{where}",
                                f"check the name with `{ipcmd}` and [proxy] interfaces")]
            driver = interface_driver(ifname) or "unknown"
            features = _netdev_features(link.ifindex)
            query = xdp_query(link.ifindex)
            lro = _lro(ifname)
            holders = {m: query[m] for m in ("native", "generic", "offload") if query[m]}
            probe: dict[bool, _Probe] = {}
            if attach_probe and not holders:
                probe[False] = _attach_probe(link.ifindex, frags=False)
                if probe[False].rc != 0:
                    probe[True] = _attach_probe(link.ifindex, frags=True)
    except XproError as exc:
        return [Finding(f"interface:{ifname}", "fail", str(exc), f"check `{ipcmd}`")]
    kind = f"{link.kind}, " if link.kind else ""
    out.append(Finding(f"interface:{ifname}", "ok",
                       f"exists{where}: {kind}driver {driver}, MTU {link.mtu}"))

    # --- link type: the parser reads an Ethernet header ---------------------
    problem = link_type_problem(ifname, link.link_type, netns)
    out.append(Finding(f"linktype:{ifname}", "fail", *problem) if problem is not None else
               Finding(f"linktype:{ifname}", "ok",
                       f"link type {link_type_name(link.link_type)}: frames start with an "
                       "Ethernet header"))

    # --- native XDP support -------------------------------------------------
    native_needed = backend in ("native", "auto")
    unsupported_status: Status = "fail" if backend == "native" else (
        "warn" if backend == "auto" else "ok")
    xdp_check = f"xdp:{ifname}"
    if probe:
        single, multi = probe[False], probe.get(True)
        if single.rc == 0:
            out.append(Finding(xdp_check, "ok", f"driver {driver} runs XDP in native mode "
                               "(attach probe: a trivial program attached and detached)"))
        elif multi is not None and multi.rc == 0:
            out.append(Finding(xdp_check, "ok", f"driver {driver} runs XDP in native mode "
                               "with multi-buffer programs only: a single-buffer program was "
                               f"refused ({single.why()}); the daemon loads xpro_xdp_frags "
                               "when the MTU is above the single-buffer limit (attach probe)"))
        else:
            out.append(Finding(xdp_check, unsupported_status,
                               f"driver {driver} refused a native XDP program "
                               f"({single.why()}; multi-buffer: "
                               f"{multi.why() if multi else 'not tried'}) (attach probe)",
                               "" if unsupported_status == "ok" else
                               "use backend = \"generic\" (about half the drop rate) or "
                               "\"auto\", or a NIC whose driver has native XDP"))
    elif features is not None:
        if features & _XDP_ACT["basic"]:
            out.append(Finding(xdp_check, "ok", f"driver {driver} supports native XDP "
                               f"(kernel xdp-features: {_feature_names(features)})"))
        else:
            what = {"native": "the native backend cannot attach here",
                    "auto": "the auto backend falls back to generic XDP (about half the "
                    "drop rate)",
                    }.get(backend, f"fine for the {backend} backend")
            out.append(Finding(xdp_check, unsupported_status,
                               f"driver {driver} has no native XDP (kernel xdp-features: "
                               f"none): {what}",
                               "" if unsupported_status == "ok" else
                               "use backend = \"generic\" or \"auto\", or a NIC whose "
                               "driver has native XDP"))
    elif holders:
        out.append(Finding(xdp_check, "ok" if "native" in holders else "warn",
                           "native XDP support not probed (the interface is held; no "
                           "xdp-features report on this kernel)" +
                           ("; a native program runs on it, so the driver has it"
                            if "native" in holders else "")))
    else:
        out.append(Finding(xdp_check, "warn" if native_needed else "ok",
                           "native XDP support unknown: this kernel does not report "
                           "xdp-features (Linux < 6.3)",
                           "rerun with --attach-probe (attaches a trivial program for an "
                           "instant; on a physical NIC that can reset the link)"
                           if native_needed else ""))

    # --- MTU ------------------------------------------------------------------
    mtu_check = f"mtu:{ifname}"
    mtus = [("MTU", link.mtu)] + ([("the veth peer's MTU", link.peer_mtu)]
                                   if link.peer_mtu is not None else [])
    over = [(who, m) for who, m in mtus if m > SINGLE_BUFFER_MTU]
    if backend in ("generic", "afxdp"):
        out.append(Finding(mtu_check, "ok", f"MTU {link.mtu}: no single-buffer limit in "
                           f"{backend} mode"))
    elif not over:
        out.append(Finding(mtu_check, "ok",
                           f"MTU {link.mtu} is within the single-buffer limit of native XDP "
                           f"(~{SINGLE_BUFFER_MTU} on veth; some drivers allow less: the "
                           "attach reports it)"))
    else:
        sg = features is not None and bool(features & _XDP_ACT["rx-sg"])
        said = ", ".join(f"{who} {m}" for who, m in over)
        frags_probe = probe.get(True)
        if sg or (frags_probe is not None and frags_probe.rc == 0):
            out.append(Finding(mtu_check, "ok",
                               f"{said} exceeds the single-buffer limit (~{SINGLE_BUFFER_MTU}); "
                               "the driver takes multi-buffer XDP (rx-sg), the daemon loads "
                               "xpro_xdp_frags"))
        else:
            out.append(Finding(mtu_check, "fail" if backend == "native" else "warn",
                               f"{said} exceeds the single-buffer limit of native XDP "
                               f"(~{SINGLE_BUFFER_MTU}) and the driver reports no multi-buffer "
                               "XDP (rx-sg)",
                               f"lower the MTU: ip {'-n ' + netns + ' ' if netns else ''}link "
                               f"set dev {ifname} mtu 1500 (or 3498 at most)"))

    # --- LRO ------------------------------------------------------------------
    lro_check = f"lro:{ifname}"
    if lro is None:
        out.append(Finding(lro_check, "ok", "LRO state not reported by the driver (ethtool)"))
    elif lro:
        out.append(Finding(lro_check, "fail" if native_needed else "warn",
                           "large receive offload (LRO) is on: drivers refuse native XDP "
                           "with it, and merged frames break per-packet counting",
                           f"ethtool -K {ifname} lro off"))
    else:
        out.append(Finding(lro_check, "ok", "LRO is off"))

    # --- a program already attached ------------------------------------------
    held_check = f"attached:{ifname}"
    ns_opt = f" --netns {netns}" if netns else ""
    if not holders:
        out.append(Finding(held_check, "ok", "no XDP program attached"))
    else:
        described = []
        foreign = False
        for mode, pid in holders.items():
            name = prog_name(pid)
            foreign |= not name.startswith("xpro_xdp")
            described.append(f"{name} (id {pid}, {mode} mode)")
        text = ", ".join(described)
        if foreign:
            out.append(Finding(held_check, "fail",
                               f"another XDP program holds the interface: {text}; xpro "
                               "cannot attach beside it (one program per interface)",
                               "find its owner (bpftool prog show id ID), then detach it: "
                               f"xpro detach --interface {ifname}{ns_opt}, or "
                               f"ip{' -n ' + netns if netns else ''} link set dev {ifname} "
                               "xdp off"))
        else:
            out.append(Finding(held_check, "ok",
                               f"an xpro filter is attached: {text} (a running daemon, or "
                               "one kept with on_exit = \"keep\"); the next daemon adopts it"))
    return out


# ---------------------------------------------------------------------------
# Store, clock, memory
# ---------------------------------------------------------------------------


def _store_options(url: str, config: Config) -> dict[str, Any]:
    opts = config.store_options()
    scheme = url.split("://", 1)[0].lower()
    if scheme.startswith("redis"):
        opts.update(timeout=STORE_TIMEOUT, connect_timeout=STORE_TIMEOUT, retry_time=0)
    elif scheme.startswith("etcd"):
        opts.update(timeout=STORE_TIMEOUT, retry_time=0, max_retries=1)
    return opts


def check_store(config: Config, url: str | None = None) -> Finding:
    """Ping the master store with a short timeout."""
    from xpro.plugins import open_store

    url = url or config.store.url
    shown = printable(mask_url(url), 200)
    started = time.monotonic()
    try:
        store = open_store(url, mesh=config.store.mesh, options=_store_options(url, config))
    except (ConfigError, PluginError) as exc:
        return Finding("store", "fail", f"{shown} is not a store URL xpro can use: {exc}",
                       "fix [store] url (or --store): memory://, redis[s]://HOST:PORT, "
                       "redis[s]+cluster://HOST:PORT,..., etcd[s]://HOST:PORT,... or a "
                       "plugin's scheme (xpro plugins)")
    try:
        with store:
            store.ping()
    except XproError as exc:
        return Finding("store", "fail", f"{shown} does not answer: {exc}",
                       "start the store or fix [store] url; a running daemon keeps "
                       "filtering on local state while the store is away, but proxies stop "
                       "sharing counts")
    ms = (time.monotonic() - started) * 1e3
    if url.split("://", 1)[0] == "memory":
        return Finding("store", "ok", f"{shown}: in-process store, fine for one proxy; the "
                       "proxies of a mesh need a shared store (redis:// or etcd://)")
    return Finding("store", "ok", f"{shown} answers ({ms:.0f} ms)")




def check_mesh_clock(config: Config, url: str | None = None) -> Finding:
    """This host's clock and the mesh's proxies' against the store's clock.

    Measures this host's offset to the store (the store's clock read between
    two readings of CLOCK_TAI) and compares it, and every live proxy's
    published offset, with the median of them all: what the sync corrects
    (docs/sync.rst, "Clocks").  Beyond ``sync.clock_alert``: a warning naming
    the proxies."""
    from xpro.plugins import open_store

    url = url or config.store.url
    if url.split("://", 1)[0] == "memory":
        return Finding("mesh-clock", "ok", "in-process store: no other proxy's clock to compare")
    try:
        with open_store(url, mesh=config.store.mesh,
                        options=_store_options(url, config)) as store:
            a = time.clock_gettime_ns(time.CLOCK_TAI)
            theirs = store.clock()
            z = time.clock_gettime_ns(time.CLOCK_TAI)
            peers = store.proxies()
    except XproError as exc:
        return Finding("mesh-clock", "warn", f"the store's clock cannot be read: {exc}",
                       "fix the store first (see the store check)")
    if theirs is None:
        return Finding("mesh-clock", "warn", f"{mask_url(url)} has no clock the proxies can "
                       "read (etcd): the mesh's clocks are neither measured nor corrected",
                       "keep every proxy on NTP or PTP (see clock-sync); Redis meshes "
                       "measure and correct offsets")
    mine = theirs - (a + z) // 2
    ttl = config.sync.ttl * 1e9
    live = {name: ps.offset for name, ps in peers.items()
            if ps.offset is not None and abs(ps.last_seen - z) <= ttl + abs(mine)}
    offsets = [*live.values(), mine]
    median = sorted(offsets)[len(offsets) // 2]
    bound = config.sync.clock_alert
    off = {printable(name, 64): (o - median) / 1e9 for name, o in live.items()
           if abs(o - median) > bound * 1e9}
    here = (mine - median) / 1e9
    facts = (f"this host is {here:+.3f} s off the median of {len(offsets)} offsets to the "
             f"store's clock (its own {mine / 1e9:+.3f} s)")
    if off or abs(here) > bound:
        names = ", ".join(f"{n} {s:+.3f} s" for n, s in sorted(off.items()))
        return Finding("mesh-clock", "warn",
                       f"{facts}; beyond sync.clock_alert {bound:g} s: "
                       f"{names or 'this host'}",
                       "fix the time daemon of each proxy named (chronyc tracking); the "
                       "sync corrects up to a day, but a clock that far off was stepped "
                       "or is not synchronised")
    return Finding("mesh-clock", "ok", f"{facts}; every live proxy within "
                   f"sync.clock_alert {bound:g} s")


def clock_tolerance(config: Config) -> float:
    """The clock skew (seconds) between proxies the filter tolerates: 1% of the
    shortest of t_t2, t_t3 and sync.period."""
    t = config.thresholds
    return SKEW_FRACTION * min(t.t_t2, t.t_t3, config.sync.period)


def _sync_finding(config: Config, state: int, tx: Any, *, shared: bool) -> Finding:
    tol = clock_tolerance(config)
    if state < 0:
        return Finding("clock-sync", "warn", "the clock state cannot be read (adjtimex: "
                       f"{os.strerror(ffi.errno)}), e.g. under systemd's ProtectClock=",
                       "run xpro doctor outside the service sandbox")
    why = (f"records carry TAI timestamps that proxies compare: a skew of d seconds "
           f"stretches or shrinks a window by d, so a rate is off by d/t_t2; tolerable "
           f"here: {tol * 1e3:.0f} ms (1% of min(t_t2, t_t3, sync.period))")
    timesyncd = Path("/run/systemd/timesync/synchronized").exists()
    unsynced = state == _TIME_ERROR or bool(tx.status & _STA_UNSYNC)
    if unsynced and not timesyncd:
        alone = "" if shared else "; a single proxy with memory:// compares no clocks"
        return Finding("clock-sync", "fail" if shared else "warn",
                       f"the kernel clock is not synchronised (adjtimex: STA_UNSYNC); {why}"
                       f"{alone}",
                       "run an NTP or PTP client on every proxy: apt-get install chrony "
                       "(or systemd-timesyncd), and check `chronyc tracking`")
    if unsynced:
        return Finding("clock-sync", "ok", f"systemd-timesyncd reports synchronised; {why}")
    est = tx.esterror / 1e6
    source = (f"adjtimex: synchronised, estimated error {est * 1e3:.1f} ms, maximum "
              f"{tx.maxerror / 1e3:.1f} ms")
    if 2 * est > tol:
        return Finding("clock-sync", "warn", f"{source}; two proxies may differ by "
                       f"{2 * est * 1e3:.1f} ms, more than the {tol * 1e3:.0f} ms tolerated; "
                       f"{why}",
                       "use a closer NTP server or PTP, or raise t_t2 and sync.period")
    return Finding("clock-sync", "ok", f"{source}; {why}")


def check_clock(config: Config, *, shared: bool) -> list[Finding]:
    """Clock synchronisation (adjtimex) and the kernel's TAI offset."""
    tx = ffi.new("struct timex *")
    state = int(libc.adjtimex(tx))
    out = [_sync_finding(config, state, tx, shared=shared)]
    tai_gap = round((time.clock_gettime_ns(time.CLOCK_TAI)
                     - time.clock_gettime_ns(time.CLOCK_REALTIME)) / 1e9)
    if tai_gap == 0:
        out.append(Finding("tai-offset", "warn",
                           "the kernel's TAI offset is unset (CLOCK_TAI equals "
                           "CLOCK_REALTIME): fine only if it is unset on every proxy of the "
                           "mesh, since their timestamps are compared",
                           "set it everywhere: chrony with `leapsectz right/UTC` in "
                           "chrony.conf, ptp4l/phc2sys, or ntpd with a leapfile; or leave it "
                           "unset on every proxy"))
    else:
        out.append(Finding("tai-offset", "ok", f"the kernel's TAI offset is {tai_gap} s; "
                           "every proxy must have the same"))
    return out


def _meminfo(key: str) -> int | None:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return None


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def check_memory(config: Config, load: _LoadResult) -> Finding:
    """Kernel memory for the configured table sizes vs MemAvailable and memlock."""
    if load.per_flow is None or load.per_dst is None:
        return Finding("memory", "warn", "not estimated: the BPF object did not load",
                       "fix the bpf-object finding first")
    t = config.tables
    flows, dsts = t.flows, t.destinations
    need = (flows * load.per_flow + dsts * load.per_dst + t.known * load.per_known
            + t.known_filters * KNOWN_FILTER_BYTES + load.fixed)
    avail = _meminfo("MemAvailable") or 0
    what = (f"tables.flows = {flows:,} at {load.per_flow:.0f} bytes each (the LRU flow table "
            f"and the sync's two dirty tables, measured on this kernel) plus "
            f"tables.destinations = {dsts:,}, tables.known = {t.known:,} and "
            f"tables.known_filters = {t.known_filters:,} filter slots: about {_mib(need)} of "
            f"kernel memory, taken when the program loads; "
            f"MemAvailable {_mib(avail)}")
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    release = _release()
    memlock_note = ""
    if release < (5, 11) and soft != resource.RLIM_INFINITY and soft < need:
        return Finding("memory", "fail", f"{what}; RLIMIT_MEMLOCK {_mib(soft)} is too small "
                       "(this kernel charges BPF maps to memlock)",
                       "LimitMEMLOCK=infinity (the systemd unit sets it) or ulimit -l unlimited")
    if release >= (5, 11):
        memlock_note = "; BPF memory is charged to the memory cgroup, not RLIMIT_MEMLOCK"
    if need > avail:
        return Finding("memory", "fail", what + memlock_note,
                       "lower tables.flows (size it above the active flows, not more) or "
                       "tables.known, or add memory")
    if need > avail / 2:
        return Finding("memory", "warn", f"{what}: more than half of what is available"
                       + memlock_note,
                       "lower tables.flows, or make sure the host has memory to spare")
    return Finding("memory", "ok", what + memlock_note)


# ---------------------------------------------------------------------------
# All of it
# ---------------------------------------------------------------------------


def _guard(check: str, fn: Callable[[], list[Finding]]) -> list[Finding]:
    """Run one check; an error inside it becomes a failed finding, never a crash."""
    try:
        return fn()
    except XproError as exc:
        return [Finding(check, "fail", str(exc))]
    except OSError as exc:
        return [Finding(check, "fail", f"{exc.strerror or exc}")]


def run_checks(config: Config, *, interfaces: Sequence[str] | None = None,
               netns: str | None = None, store_url: str | None = None,
               attach_probe: bool = False) -> list[Finding]:
    """Every check, in order; never raises for what it finds.

    ``interfaces`` and ``netns`` default to ``[proxy] interfaces`` and
    ``[proxy] netns``; ``store_url`` to ``[store] url``.  ``attach_probe``
    tests native XDP by attaching a trivial program to each interface that
    no program holds (and detaching it at once) instead of reading the
    driver's xdp-features: exact, but on a physical NIC an attach can reset
    the link for a moment.
    """
    ifaces = list(config.proxy.interfaces if interfaces is None else interfaces)
    if netns is None:
        netns = getattr(config.proxy, "netns", None) or None
    url = store_url or config.store.url
    findings: list[Finding] = []
    findings.append(check_privileges())
    findings += check_kernel()
    libbpf = check_libbpf()
    findings.append(libbpf)
    load = _LoadResult(Finding("bpf-object", "fail", "not loaded: libbpf is missing"))
    if libbpf.status == "ok":
        # libbpf's own log lines would interleave with the report: the
        # findings carry what matters (the error, the verifier's words).
        with _kernel_messages():
            findings += _guard("bpf-features", lambda: [check_bpf_features()])
            try:
                load = check_bpf_object(config)
            except OSError as exc:
                load = _LoadResult(Finding("bpf-object", "fail", str(exc)))
            findings.append(load.finding)
            findings += _guard("lockdown", lambda: [check_lockdown()])
    if not config.proxy.pin_dir:  # "" turns pinning off: nothing to check
        findings.append(Finding("bpffs", "warn", "pinning is off ([proxy] pin_dir = \"\"): "
                                "a daemon restart drops the filter and its state",
                                "set [proxy] pin_dir to a directory on bpffs"))
    else:
        findings += _guard("bpffs", lambda: [check_bpffs(config)])
        if libbpf.status == "ok":
            findings += _guard("pins", lambda: [check_pins(config)])
    if not ifaces:
        findings.append(Finding("interfaces", "warn", "no interface to check",
                                "set [proxy] interfaces, or pass --interface IF"))
    for ifname in ifaces:
        findings += _guard(f"interface:{ifname}", functools.partial(
            check_interface, ifname, config, netns=netns, attach_probe=attach_probe))
    findings += _guard("store", lambda: [check_store(config, url)])
    findings += _guard("mesh-clock", lambda: [check_mesh_clock(config, url)])
    shared = url.split("://", 1)[0] != "memory"
    findings += _guard("clock-sync", lambda: check_clock(config, shared=shared))
    findings.append(check_memory(config, load))
    return findings
