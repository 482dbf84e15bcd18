"""Fixtures of the lab's end-to-end tests: run ``xpro lab`` and check it left nothing.

Every lab a test builds is checked after the test: no namespace, no link
with its alias, no pinned directory may remain (the lab removes them itself;
the check is what proves it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from xpro.cli.lab import lab
from xpro.lab.namespaces import list_netns
from xpro.lab.topology import LAB_PREFIX, PIN_ROOT


def lab_leftovers() -> dict[str, list[str]]:
    """Lab namespaces, root-namespace links with a lab alias, lab pin directories."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = [str(m.get_attr("IFLA_IFNAME")) for m in ipr.get_links()
                 if str(m.get_attr("IFLA_IFALIAS") or "").startswith(LAB_PREFIX)]
    return {
        "namespaces": list_netns(LAB_PREFIX),
        "links": links,
        "pins": sorted(str(p) for p in PIN_ROOT.glob(f"{LAB_PREFIX}*")),
    }


@pytest.fixture
def clean_lab() -> Iterator[None]:
    """Assert that the test left no lab namespace, link or pin behind it."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    before = lab_leftovers()
    yield
    after = lab_leftovers()
    for kind, names in after.items():
        new = sorted(set(names) - set(before[kind]))
        assert not new, f"the lab left {kind} behind: {new}"


@pytest.fixture
def run_lab(tmp_path: Path, clean_lab: None) -> Callable[..., dict[str, Any]]:
    """Run ``xpro lab ARGS... --json`` and return its JSON object."""

    def run(*args: str) -> dict[str, Any]:
        result = CliRunner().invoke(
            lab, [*args, "--json", "--no-live", "--out", str(tmp_path)],
            catch_exceptions=False)
        assert result.exit_code == 0, result.output
        obj: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        for p in obj["plot"]:
            assert Path(p).stat().st_size > 1000
        return obj

    return run
