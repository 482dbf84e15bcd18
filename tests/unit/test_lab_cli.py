"""xpro lab: the commands and their help (no root)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from xpro.cli.lab import _stem, lab
from xpro.lab.scenarios import SCENARIOS

pytestmark = pytest.mark.unit

NAMES = ("distributed", "spoofed-flood", "port-spray", "v6-rotation", "heavy-hitter", "pulse",
         "flash-crowd", "proxy-crash", "store-outage")


def test_every_scenario_of_the_issue_is_there() -> None:
    assert set(SCENARIOS) == set(NAMES)
    assert {n for n, s in SCENARIOS.items() if s.server_store} == {"proxy-crash",
                                                                   "store-outage"}


def test_list() -> None:
    out = CliRunner().invoke(lab, ["list"])
    assert out.exit_code == 0
    assert [line.split()[0] for line in out.output.splitlines()] == list(NAMES)


@pytest.mark.parametrize("cmd", [[], ["run"], ["demo"], ["up"], ["down"], ["list"]])
def test_help_has_examples(cmd: list[str]) -> None:
    out = CliRunner().invoke(lab, [*cmd, "--help"])
    assert out.exit_code == 0
    assert "Example" in out.output


def test_run_options() -> None:
    out = CliRunner().invoke(lab, ["run", "--help"])
    for opt in ("--proxies", "--bots", "--clients", "--duration", "--ipv6", "--store",
                "--json", "--sweep"):
        assert opt in out.output


def test_unknown_scenario_is_refused() -> None:
    out = CliRunner().invoke(lab, ["run", "no-such"])
    assert out.exit_code == 2


@pytest.mark.parametrize(("name", "backend", "stem"), [
    ("distributed", "native", "lab_distributed"),
    ("distributed", "afxdp", "lab_distributed_afxdp"),
    ("distributed_sweep", "native", "lab_distributed_sweep"),
    ("distributed_sweep", "generic", "lab_distributed_sweep_generic"),
])
def test_plots_of_other_backends_do_not_overwrite_native(tmp_path: Path, name: str,
                                                         backend: str, stem: str) -> None:
    assert _stem(tmp_path, name, backend) == tmp_path / stem


@pytest.mark.parametrize(("args", "why"), [
    (["distributed", "--spread"], "--spread is for the spoofed-flood scenario"),
    (["spoofed-flood", "--spread", "--proxies", "1"], "at least 2 proxies"),
    (["spoofed-flood", "--spread", "--flood-rate", "100000"], "under T_F2"),
    (["spoofed-flood", "--spread", "--t-f2", "1000000000"], "more than the lab sends"),
    (["port-spray", "--duration", "3", "--attack-start", "5"],
     "--attack-start (5 s) must be before the end of the run (--duration 3 s)"),
    (["distributed", "--store", "foo://"], "--store: memory://, redis:// or etcd://"),
])
def test_spread_is_checked_before_anything_is_built(args: list[str], why: str) -> None:
    from xpro.lab.mesh import LabError

    out = CliRunner().invoke(lab, ["run", *args])
    assert isinstance(out.exception, LabError), out.output
    assert why in str(out.exception)
    assert out.exception.exit_code == 2  # a usage error


@pytest.mark.parametrize(("args", "why"), [
    (["port-spray", "--flood-rate", "5000"], "the address must go over T_F2"),
    (["port-spray", "--flood-rate", "1000000"], "every key stay under"),
    (["port-spray", "--clients", "200", "--client-rate", "20"], "every key stay under"),
    (["v6-rotation", "--bots", "30"], "must stay under 0.8 x T_F2"),
    (["v6-rotation", "--bots", "0"], "at least one attacker"),
])
def test_evasion_plans_are_checked_before_anything_is_built(args: list[str], why: str) -> None:
    from xpro.lab.mesh import LabError

    out = CliRunner().invoke(lab, ["run", *args])
    assert isinstance(out.exception, LabError), out.output
    assert why in str(out.exception)
    assert out.exception.exit_code == 2  # a usage error
