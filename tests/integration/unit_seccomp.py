"""The unit's ``SystemCallFilter=`` as a seccomp filter a test can run a process under.

Where systemd is not PID 1 (containers, CI), the unit cannot be started; this
builds the same filter from the unit's lines -- groups expanded by
``systemd-analyze syscall-filter``, numbers from the kernel headers, lines
combined as systemd combines them (the first line decides allow or deny
list, the later ones add or remove) -- and installs it with
``prctl(PR_SET_SECCOMP)`` in the child before ``exec``.  x86_64 only.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path

UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000
# classic BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_RET_KILL_PROCESS = 0x80000000
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


def available() -> str | None:
    """Why the filter cannot be built here, or None."""
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze not installed (apt-get install systemd)"
    if not UNISTD.exists():
        return "kernel headers missing (apt-get install linux-libc-dev)"
    if platform.machine() != "x86_64":
        return "x86_64 only"
    return None


@cache
def _group(name: str) -> frozenset[str]:
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        calls |= _group(item) if item.startswith("@") else {item}
    return frozenset(calls)


def _expand(items: list[str]) -> set[str]:
    out: set[str] = set()
    for item in items:
        out |= _group(item) if item.startswith("@") else {item}
    return out


def allowed_syscalls(unit_text: str) -> set[str]:
    """The system calls the unit's ``SystemCallFilter=`` lines allow."""
    lines = [m[1].strip() for m in re.finditer(r"^SystemCallFilter=(.*)$", unit_text, re.M)]
    if not lines or lines[0].startswith("~"):
        raise ValueError("expected an allow list first")
    allowed = _expand(lines[0].split())
    for line in lines[1:]:
        if line.startswith("~"):
            allowed -= _expand(line[1:].split())
        else:
            allowed |= _expand(line.split())
    return allowed


def syscall_numbers() -> dict[str, int]:
    nums = {}
    for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)", UNISTD.read_text()):
        nums[m[1]] = int(m[2])
    return nums


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def build_filter(allowed: set[str]) -> bytes:
    """A seccomp program: other architectures die, x32 and unlisted calls get EPERM."""
    nums = syscall_numbers()
    prog = [
        _insn(_LD_W_ABS, 0, 0, 4),                      # arch
        _insn(_JEQ_K, 1, 0, _AUDIT_ARCH_X86_64),
        _insn(_RET_K, 0, 0, _SECCOMP_RET_KILL_PROCESS),
        _insn(_LD_W_ABS, 0, 0, 0),                      # nr
        _insn(_JGE_K, 0, 1, _X32_BIT),
        _insn(_RET_K, 0, 0, _SECCOMP_RET_ERRNO | errno.EPERM),
    ]
    for nr in sorted({nums[n] for n in allowed if n in nums}):
        prog.append(_insn(_JEQ_K, 0, 1, nr))
        prog.append(_insn(_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
    prog.append(_insn(_RET_K, 0, 0, _SECCOMP_RET_ERRNO | errno.EPERM))
    return b"".join(prog)


def preexec(allowed: set[str]) -> Callable[[], None]:
    """A ``preexec_fn`` that installs the filter in the child (no new privileges too)."""
    prog = build_filter(allowed)
    n = len(prog) // 8
    buf = ctypes.create_string_buffer(prog, len(prog))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Fprog(n, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)

    def install() -> None:
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
        if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")

    install.keep = (buf, fprog)  # type: ignore[attr-defined]
    return install
