"""Every constant of ``bpf/xpro_shared.h`` has its Python twin, with the same value.

The header is parsed with regular expressions: each ``#define XPRO_*`` with a
value and each constant of each ``enum`` must appear in :data:`PYTHON` (and
nothing else may), with an equal value.  A constant added on one side only,
or changed on one side only, fails here, before a map is ever misread.  The
structures themselves are checked against the object's BTF in
``tests/kernel/test_layout.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from xpro.core import layout as L
from xpro.core import state as S
from xpro.core.params import Sizes

BPF = Path(__file__).resolve().parents[2] / "bpf"

#: C name -> the Python value it must equal.
PYTHON: dict[str, int] = {
    "XPRO_DST_ADDR": L.DST_ADDR,
    "XPRO_DST_ADDR_PORT": L.DST_ADDR_PORT,
    "XPRO_MODE_ENFORCE": L.MODE_ENFORCE,
    "XPRO_MODE_MONITOR": L.MODE_MONITOR,
    "XPRO_MALFORMED_DROP": L.MALFORMED_DROP,
    "XPRO_MALFORMED_PASS": L.MALFORMED_PASS,
    "XPRO_MAX_VLAN": L.MAX_VLAN,
    "XPRO_MAX_EXTHDR": L.MAX_EXTHDR,
    "XPRO_DST_PAD_CLOSED": L.DST_PAD_CLOSED,
    "XPRO_DST_PAD_ADDR": L.DST_PAD_ADDR,
    "XPRO_DST_PAD_ADDR_CLOSED": L.DST_PAD_ADDR_CLOSED,
    "XPRO_KNOWN_FILTER_WORDS": L.KNOWN_FILTER_WORDS,
    "XPRO_KNOWN_FILTER_BITS": 64 * L.KNOWN_FILTER_WORDS,
    **{f"XPRO_KNOWN_{k.name}": k.value for k in L.Known},
    **{f"XPRO_R_{r.name}": r.value for r in L.Reason},
    "XPRO_R_MAX": L.N_REASONS,
    **{f"XPRO_EV_{k.name}": k.value for k in L.EventKind},
    "XPRO_APPLY_FLOW": S.OP_FLOW,
    "XPRO_APPLY_DST": S.OP_DST,
    "XPRO_APPLY_READ": S.OP_READ,
    "XPRO_APPLY_CREATE": S.OP_CREATE,
    "XPRO_APPLY_DELETE": S.OP_DELETE,
    "XPRO_APPLY_KEEP_BASE": S.OP_KEEP_BASE,
    "XPRO_APPLY_MAX": S.APPLY_MAX,
    "XPRO_APPLY_APPLIED": S.APPLIED,
    "XPRO_APPLY_RACED": S.RACED,
    "XPRO_APPLY_MISSING": S.MISSING,
}

#: Map sizes in bpf/maps.h (defaults the loader overrides) -> the Sizes field.
MAP_SIZES = {
    "XPRO_FLOWS_MAX": "flows",
    "XPRO_DSTS_MAX": "dsts",
    "XPRO_LPM_MAX": "prefixes",
    "XPRO_KNOWN_MAX": "known",
    "XPRO_KNOWN_FILTERS_MAX": "known_filters",
}

_DEFINE = re.compile(r"^\s*#\s*define\s+(XPRO_\w+)[ \t]+([^/\n]+?)\s*(?:/[*/].*)?$", re.M)
_ENUM = re.compile(r"\benum\s+(\w+)\s*\{(.*?)\}\s*;", re.S)
_ENUM_ITEM = re.compile(r"^\s*(\w+)\s*(?:=\s*([^,/]+?))?\s*,?\s*(?:/\*.*)?$")
_VALUE = re.compile(r"^[\s()0-9a-fA-FxX<|]+$")


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group().count("\n"), text, flags=re.S)


def _value(name: str, text: str) -> int:
    """An integer constant expression of the header (digits, hex, <<, |, parentheses)."""
    text = text.strip()
    assert _VALUE.match(text), f"{name}: cannot read the value {text!r}"
    v = eval(text.replace("<<", " << "), {"__builtins__": {}})  # checked: digits and operators
    assert isinstance(v, int), name
    return v


def header_constants(path: Path) -> dict[str, int]:
    """Every ``#define XPRO_* value`` and every enum constant of a C header."""
    text = path.read_text()
    out: dict[str, int] = {}
    for name, value in _DEFINE.findall(text):
        out[name] = _value(name, value)
    for enum_name, body in _ENUM.findall(_strip_comments(text)):
        for line in body.splitlines():
            if not line.strip():
                continue
            m = _ENUM_ITEM.match(line)
            assert m, f"enum {enum_name}: cannot read {line!r}"
            assert m.group(2) is not None, f"enum {enum_name}: {m.group(1)} needs an explicit value"
            assert m.group(1) not in out, f"{m.group(1)} defined twice"
            out[m.group(1)] = _value(m.group(1), m.group(2))
    return out


def test_the_parser_reads_the_header() -> None:
    got = header_constants(BPF / "xpro_shared.h")
    assert "XPRO_SHARED_H" not in got  # the include guard has no value
    assert got["XPRO_APPLY_CREATE"] == 0x10
    assert got["XPRO_R_MAX"] == len(L.Reason)


def mismatches(got: dict[str, int]) -> dict[str, object]:
    """What differs between the header's constants and :data:`PYTHON` (empty: nothing)."""
    out: dict[str, object] = {}
    if extra := sorted(set(got) - set(PYTHON)):
        out["in the header only"] = extra
    if missing := sorted(set(PYTHON) - set(got)):
        out["in Python only"] = missing
    if diverged := {k: (got[k], PYTHON[k]) for k in got.keys() & PYTHON.keys()
                    if got[k] != PYTHON[k]}:
        out["C value, Python value"] = diverged
    return out


def test_every_shared_constant_matches_python() -> None:
    assert mismatches(header_constants(BPF / "xpro_shared.h")) == {}


def test_default_map_sizes_match_python() -> None:
    got = header_constants(BPF / "maps.h")
    defaults = Sizes()
    for name, field in MAP_SIZES.items():
        assert got[name] == getattr(defaults, field), name


@pytest.mark.parametrize(("old", "new", "kind"), [
    ("XPRO_R_DENY = 3,", "XPRO_R_DENY = 4,", "C value, Python value"),
    ("#define XPRO_APPLY_DELETE 0x20", "#define XPRO_APPLY_DELETE 0x22", "C value, Python value"),
    ("#define XPRO_MAX_VLAN 2", "#define XPRO_MAX_VLAN 2\n#define XPRO_NEW 7",
     "in the header only"),
    ("XPRO_APPLY_MISSING = 2,", "", "in Python only"),
])
def test_a_divergence_is_caught(tmp_path: Path, old: str, new: str, kind: str) -> None:
    text = (BPF / "xpro_shared.h").read_text()
    assert old in text
    h = tmp_path / "xpro_shared.h"
    h.write_text(text.replace(old, new))
    assert kind in mismatches(header_constants(h))
