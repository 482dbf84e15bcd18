"""Build hook: compile the XDP programs in bpf/ into the package.

`pip install .` on a machine with clang compiles bpf/*.bpf.c (CO-RE, BTF)
into src/xpro/_objects/; the objects ship inside the wheel, so no compiler is
needed at run time.  Without clang, prebuilt objects already in
src/xpro/_objects/ are used as they are.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
BPF_DIR = HERE / "bpf"
OUT_DIR = HERE / "src" / "xpro" / "_objects"


def _multiarch_include() -> list[str]:
    try:
        triplet = subprocess.run(
            ["gcc", "-print-multiarch"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        triplet = ""
    inc = Path("/usr/include") / triplet if triplet else None
    return [f"-I{inc}"] if inc and inc.is_dir() else []


def compile_bpf() -> None:
    sources = sorted(BPF_DIR.glob("*.bpf.c"))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    clang = os.environ.get("CLANG") or shutil.which("clang")
    if clang is None:
        missing = [s.name for s in sources if not (OUT_DIR / s.name.replace(".c", ".o")).exists()]
        if missing:
            sys.exit(
                "xpro: clang is needed to build the XDP programs "
                f"({', '.join(missing)}) and no prebuilt object is present. "
                "Install clang and libbpf-dev (apt-get install clang libbpf-dev) and retry."
            )
        return
    for src in sources:
        obj = OUT_DIR / src.name.replace(".c", ".o")
        headers = list(BPF_DIR.glob("*.h"))
        if obj.exists() and all(obj.stat().st_mtime >= p.stat().st_mtime for p in [src, *headers]):
            continue
        cmd = [
            clang, "-O2", "-g", "-Wall", "-Werror", "-target", "bpf",
            "-D__TARGET_ARCH_x86", *_multiarch_include(), f"-I{BPF_DIR}",
            "-c", str(src), "-o", str(obj),
        ]
        print("xpro: " + " ".join(cmd))
        subprocess.run(cmd, check=True)
    # The shared header ships too: xpro.layout is checked against it.
    shutil.copy2(BPF_DIR / "xpro_shared.h", OUT_DIR / "xpro_shared.h")


class BuildPyWithBpf(build_py):
    def run(self) -> None:
        compile_bpf()
        super().run()


setup(cmdclass={"build_py": BuildPyWithBpf})
