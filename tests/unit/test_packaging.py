"""The systemd units and the example config in ``packaging/``.

The units are checked by ``systemd-analyze verify`` (when installed), and
their command lines are parsed by the real ``xpro`` CLI (click), so a unit
cannot name a command, a flag or a config key that does not exist.  The
example config is loaded by the real loader, and the paths the unit and the
config must agree on (control socket, pins) are compared.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from xpro.cli import cli
from xpro.config import SCHEMA, load_config

pytestmark = pytest.mark.unit

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
UNITS = ["xpro.service", "xpro@.service"]
INSTANCE = "edge1"


def read_unit(name: str, instance: str = INSTANCE) -> configparser.ConfigParser:
    text = (PACKAGING / name).read_text().replace("%i", instance)
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def environment(name: str, instance: str = INSTANCE) -> dict[str, str]:
    """The unit's ``Environment=`` settings (repeated keys, so read line by line)."""
    env = {}
    for line in (PACKAGING / name).read_text().replace("%i", instance).splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = value
    return env


def exec_start(unit: configparser.ConfigParser) -> list[str]:
    return shlex.split(unit["Service"]["ExecStart"])


def parse_with_cli(argv: list[str]) -> click.Context:
    """Parse ``argv`` (without the program) as the real ``xpro`` CLI would, not run it."""
    group_ctx = cli.make_context("xpro", list(argv), resilient_parsing=False)
    name = argv[0]
    cmd = cli.get_command(group_ctx, name)
    assert cmd is not None, f"xpro has no command {name!r} (the unit runs it)"
    return cmd.make_context(name, list(argv[1:]), parent=group_ctx)


@pytest.mark.parametrize("name", UNITS)
def test_exec_start_parses_with_the_real_cli(name: str) -> None:
    argv = exec_start(read_unit(name))
    assert argv[0].endswith("/bin/xpro")
    assert argv[1] == "run"
    ctx = parse_with_cli(argv[1:])
    config = ctx.params["config_path"]
    assert config == ("/etc/xpro/xpro.toml" if name == "xpro.service"
                      else f"/etc/xpro/{INSTANCE}.toml")


@pytest.mark.parametrize("name", UNITS)
def test_unit_settings_the_daemon_relies_on(name: str) -> None:
    svc = read_unit(name)["Service"]
    assert svc["Type"] == "notify"  # `xpro run` sends READY=1 once attached
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["KillSignal"] == "SIGTERM"
    assert svc["Restart"] == "on-failure"
    assert svc["LimitMEMLOCK"] == "infinity"
    assert int(svc["LimitNOFILE"]) >= 65536
    caps = set(svc["CapabilityBoundingSet"].split())
    assert {"CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_PERFMON"} <= caps
    assert "/sys/fs/bpf" in svc["ReadWritePaths"].split()
    families = set(svc["RestrictAddressFamilies"].split())
    assert {"AF_UNIX", "AF_NETLINK", "AF_INET", "AF_INET6", "AF_XDP"} <= families


def test_example_config_loads_and_matches_the_unit() -> None:
    config = load_config(PACKAGING / "xpro.toml", env={})
    svc = read_unit("xpro.service")["Service"]
    assert Path(config.control.socket).parent == Path("/run") / svc["RuntimeDirectory"]
    assert Path(config.proxy.pin_dir).is_relative_to("/sys/fs/bpf")
    assert exec_start(read_unit("xpro.service"))[-1] == "/etc/xpro/xpro.toml"


def test_template_gives_each_instance_its_own_paths() -> None:
    unit = read_unit("xpro@.service")
    env = environment("xpro@.service")
    known = {o.env for o in SCHEMA}
    assert set(env) <= known, f"unknown XPRO_* variables: {set(env) - known}"
    config = load_config(PACKAGING / "xpro.toml", env=env)
    runtime = Path("/run") / unit["Service"]["RuntimeDirectory"]
    assert Path(config.control.socket).parent == runtime
    assert runtime.name == INSTANCE
    assert config.proxy.pin_dir == f"/sys/fs/bpf/xpro-{INSTANCE}"
    other = load_config(PACKAGING / "xpro.toml", env=environment("xpro@.service", "edge2"))
    assert other.control.socket != config.control.socket
    assert other.proxy.pin_dir != config.proxy.pin_dir


def _xpro_binary() -> str:
    found = Path(sys.executable).parent / "xpro"
    return str(found) if found.exists() else (shutil.which("xpro") or "")


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    binary = _xpro_binary()
    if not binary:
        pytest.skip("the xpro console script is not installed")
    # The installed path differs (/opt/xpro/bin/xpro); verify checks it exists.
    text = (PACKAGING / name).read_text().replace("/opt/xpro/bin/xpro", binary)
    target = tmp_path / name.replace("@.", f"@{INSTANCE}.")
    target.write_text(text)
    r = subprocess.run([analyze, "verify", str(target)], capture_output=True, text=True,
                       timeout=60, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    problems = [line for line in out.splitlines() if re.search(
        r"Unknown (key|lvalue|section)|Failed to parse|Invalid|is not executable|"
        r"[Ii]gnoring", line) and target.name in line]
    assert not problems, "\n".join(problems)


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key is reported."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = (PACKAGING / "xpro.service").read_text().replace(
        "/opt/xpro/bin/xpro", _xpro_binary() or "/bin/true").replace(
        "LimitMEMLOCK=", "LimitMEMLOK=")
    target = tmp_path / "xpro.service"
    target.write_text(text)
    r = subprocess.run([analyze, "verify", str(target)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert "LimitMEMLOK" in r.stdout + r.stderr


@pytest.mark.parametrize("name", UNITS)
def test_the_unit_filters_system_calls_but_leaves_bpf(name: str) -> None:
    """SystemCallFilter=: services' calls plus bpf and capset, never @mount (the
    daemon runs under this very filter in tests/integration/test_daemon_security.py)."""
    text = (PACKAGING / name).read_text()
    lines = re.findall(r"^SystemCallFilter=(.*)$", text, re.M)
    assert lines[0].split() == ["@system-service", "bpf"]
    denied = lines[1].removeprefix("~").split()
    assert lines[1].startswith("~")
    assert {"@mount", "@privileged", "@module", "@clock", "@debug"} <= set(denied)
    assert set(lines[2].split()) == {"bpf", "capset"}  # back from @privileged
    assert read_unit(name)["Service"]["SystemCallErrorNumber"] == "EPERM"
    caps = read_unit(name)["Service"]["CapabilityBoundingSet"].split()
    assert "CAP_SETPCAP" in caps  # to shrink the bounding set once attached
