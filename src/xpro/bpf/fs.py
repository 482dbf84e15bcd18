"""bpffs: where maps and links are pinned so they outlive the daemon."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from xpro.bpf._ffi import ffi, libc
from xpro.errors import BpffsError

__all__ = ["BPFFS_ROOT", "ensure_bpffs", "is_bpffs", "require_bpffs"]

#: The conventional bpffs mount point.
BPFFS_ROOT = Path("/sys/fs/bpf")

_BPF_FS_MAGIC = 0xCAFE4A11


def is_bpffs(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` exists and lies on a bpffs mount."""
    buf = ffi.new("char[256]")  # struct statfs is 120 bytes; f_type comes first
    if libc.statfs(os.fsencode(path), buf) != 0:
        return False
    return int(ffi.cast("long *", buf)[0]) & 0xFFFFFFFF == _BPF_FS_MAGIC


def ensure_bpffs(path: str | os.PathLike[str] = BPFFS_ROOT) -> Path:
    """Mount bpffs at ``path`` unless it is mounted there already; return the path."""
    target = Path(path)
    if is_bpffs(target):
        return target
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BpffsError(
            f"bpffs is not mounted at {target} and the directory cannot be created "
            f"({exc.strerror}); mount it as root: `mount -t bpf bpf {target}`"
        ) from exc
    if libc.mount(b"bpf", os.fsencode(target), b"bpf", 0, b"mode=0700") != 0:
        code = ffi.errno or errno.EPERM
        hint = " (needs root or CAP_SYS_ADMIN)" if code in (errno.EPERM, errno.EACCES) else ""
        raise BpffsError(
            f"bpffs is not mounted at {target} and mounting it failed: "
            f"{os.strerror(code)}{hint}; mount it as root: `mount -t bpf bpf {target}` "
            f"(or add `bpf {target} bpf defaults 0 0` to /etc/fstab)"
        ) from OSError(code, os.strerror(code))
    return target


def require_bpffs(path: str | os.PathLike[str], what: str) -> None:
    """Raise BpffsError unless ``path`` is a directory on bpffs."""
    if not is_bpffs(path):
        raise BpffsError(
            f"{what}: {os.fspath(path)} is not on a bpffs mount; pins live in bpffs: "
            "mount it with `mount -t bpf bpf /sys/fs/bpf` (xpro.bpf.ensure_bpffs()) and "
            "pin below it"
        )
