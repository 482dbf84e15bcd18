"""xpro.core.layout matches bpf/xpro_shared.h, checked against the object's BTF."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import numpy as np
import pytest

from xpro.bpf import object_path
from xpro.core import layout as L

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool not installed"),
]

DTYPES = {
    "xpro_dst_key": L.DST_KEY,
    "xpro_flow_key": L.FLOW_KEY,
    "xpro_flow": L.FLOW,
    "xpro_dst": L.DST_REC,
    "xpro_stat": L.STAT,
    "xpro_lpm_key": L.LPM_KEY,
    "xpro_config": L.CONFIG,
    "xpro_apply": L.APPLY,
    "xpro_known_filter": L.KNOWN_FILTER,
}


@pytest.fixture(scope="module")
def btf() -> dict[str, Any]:
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", str(object_path())],
                         check=True, capture_output=True, text=True).stdout
    types = json.loads(out)["types"]
    return {t["name"]: t for t in types if t["kind"] == "STRUCT" and "name" in t}


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_struct_matches_btf(btf: dict[str, Any], name: str) -> None:
    dt: np.dtype = DTYPES[name]
    t = btf[name]
    assert t["size"] == dt.itemsize == L.SIZES[name]
    members = [(m["name"], m["bits_offset"] // 8) for m in t["members"]]
    assert members == [(n, dt.fields[n][1]) for n in dt.names]


def test_sizes_of_structs_outside_btf() -> None:
    # Pinned by _Static_assert in bpf/xpro.bpf.c.
    assert L.EVENT.itemsize == L.SIZES["xpro_event"] == 72
    assert L.APPLY.itemsize == L.SIZES["xpro_apply"] == 88
    assert L.EVENT.fields["c"][1] == 56


def test_reasons_match_header() -> None:
    header = (object_path().parent / "xpro_shared.h").read_text()
    for r in L.Reason:
        assert re.search(rf"XPRO_R_{r.name}\s*=\s*{r.value}\s*,", header), r
    assert re.search(rf"XPRO_R_MAX\s*=\s*{L.N_REASONS}\s*,", header)
