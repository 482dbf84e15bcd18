"""Fixtures of the BPF loader tests: bpffs pin dirs, test programs, a veth in a netns.

Everything a fixture creates (pins, namespaces, interfaces) is removed in its
teardown, also when the test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PROGS = Path(__file__).resolve().parent / "progs"


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (loads BPF programs): run the suite with sudo")


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    """A fresh, uniquely named directory on bpffs, removed with what was pinned in it."""
    _need_root()
    from xpro.bpf import ensure_bpffs

    path = ensure_bpffs() / f"xpro-test-{uuid.uuid4().hex[:12]}"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def compile_prog(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Compile ``tests/kernel/progs/NAME.bpf.c`` with clang; returns the object path."""
    clang = os.environ.get("CLANG") or shutil.which("clang")
    out_dir = tmp_path_factory.mktemp("progs")
    multiarch = Path("/usr/include/x86_64-linux-gnu")

    def build(name: str) -> Path:
        if clang is None:
            pytest.skip("clang is needed to build the test programs in tests/kernel/progs")
        obj = out_dir / f"{name}.bpf.o"
        if not obj.exists():
            cmd = [clang, "-O2", "-g", "-Wall", "-target", "bpf"]
            if multiarch.is_dir():
                cmd.append(f"-I{multiarch}")
            cmd += ["-c", str(PROGS / f"{name}.bpf.c"), "-o", str(obj)]
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        return obj

    return build


@dataclass(frozen=True)
class VethNetns:
    """A veth pair ``a`` <-> ``b``, both up, inside the network namespace ``netns``."""

    netns: str
    a: str
    b: str

    def set_mtu(self, mtu: int) -> None:
        from pyroute2 import IPRoute

        from xpro.bpf import in_netns

        with in_netns(self.netns):
            ipr = IPRoute()
        try:
            for name in (self.b, self.a):
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], mtu=mtu)
        finally:
            ipr.close()


@pytest.fixture
def veth_netns() -> Iterator[VethNetns]:
    """A uniquely named netns holding an up veth pair; deleted (with the veths) after."""
    _need_root()
    from pyroute2 import IPRoute, netns

    from xpro.bpf import in_netns

    name = f"xpload-{uuid.uuid4().hex[:10]}"
    env = VethNetns(name, "xpa0", "xpb0")
    netns.create(name)
    try:
        with in_netns(name):
            ipr = IPRoute()  # its netlink socket belongs to the namespace
        try:
            ipr.link("add", ifname=env.a, kind="veth", peer={"ifname": env.b})
            for ifname in (env.a, env.b):
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
        finally:
            ipr.close()
        yield env
    finally:
        netns.remove(name)
