"""``xpro doctor``: the findings, their text and JSON forms, and the exit codes.

The command runs its real checks here (no check is replaced): the cases are
chosen so that a check must fail whatever the host, an interface that does
not exist and a store port where nothing listens, and the assertions look at
those findings only.  As root the BPF checks run too; without root they
report the missing privilege, which is also a failure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from xpro.cli.doctor import doctor_command
from xpro.config import default_config, load_config
from xpro.doctor import (
    Finding,
    _LoadResult,
    check_bpffs,
    check_interface,
    check_memory,
    check_store,
    clock_tolerance,
    exit_code,
    format_findings,
    to_json,
)
from xpro.lab.servers import free_port

pytestmark = pytest.mark.unit

NO_IF = "xpnosuch0"


def test_format_ok_has_no_fix_line() -> None:
    text = Finding("bpffs", "ok", "mounted").format()
    assert text == "ok    bpffs: mounted"


def test_format_fail_carries_the_fix() -> None:
    text = Finding("lro:eth0", "fail", "LRO is on", "ethtool -K eth0 lro off").format()
    first, second = text.splitlines()
    assert first == "FAIL  lro:eth0: LRO is on"
    assert second.strip() == "fix: ethtool -K eth0 lro off"


def test_exit_code_warnings_alone_are_success() -> None:
    ok = Finding("a", "ok", "")
    warn = Finding("b", "warn", "", "do x")
    fail = Finding("c", "fail", "", "do y")
    assert exit_code([]) == 0
    assert exit_code([ok, warn, warn]) == 0
    assert exit_code([ok, warn, fail]) == 1


def test_summary_line_counts_each_status() -> None:
    text = format_findings([Finding("a", "ok", "x"), Finding("b", "warn", "y", "z"),
                            Finding("c", "fail", "w", "v"), Finding("d", "fail", "u", "t")])
    assert text.splitlines()[-1] == "not ready: 1 ok, 1 warnings, 2 failed"
    assert format_findings([Finding("a", "ok", "x")]).splitlines()[-1] == (
        "ready: 1 ok, 0 warnings, 0 failed")


def test_json_shape() -> None:
    findings = [Finding("a", "ok", "fine"), Finding("b", "fail", "broken", "repair it")]
    doc = json.loads(to_json(findings))
    assert set(doc) == {"ok", "summary", "findings"}
    assert doc["ok"] is False
    assert doc["summary"] == {"ok": 1, "warn": 0, "fail": 1}
    assert doc["findings"] == [
        {"check": "a", "status": "ok", "message": "fine", "fix": ""},
        {"check": "b", "status": "fail", "message": "broken", "fix": "repair it"},
    ]


def test_clock_tolerance_follows_the_shortest_window(tmp_path: Path) -> None:
    cfg = tmp_path / "x.toml"
    cfg.write_text("[thresholds]\nt_t2 = 0.5\nt_t3 = 2.0\n[sync]\nperiod = 1.0\n")
    assert clock_tolerance(load_config(cfg, env={})) == pytest.approx(0.005)
    assert clock_tolerance(default_config()) == pytest.approx(0.01)


def test_bpffs_fails_off_bpffs(tmp_path: Path) -> None:
    cfg = tmp_path / "x.toml"
    cfg.write_text(f'[proxy]\npin_dir = "{tmp_path}/pins"\n')
    f = check_bpffs(load_config(cfg, env={}))
    assert f.status == "fail"
    assert "not on a bpffs mount" in f.message
    assert "mount -t bpf bpf" in f.fix


def test_memory_fails_when_the_tables_exceed_available_memory() -> None:
    cfg = default_config()
    avail = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text()
                 .splitlines() if line.startswith("MemAvailable:"))
    too_big = _LoadResult(Finding("bpf-object", "ok", ""),
                          per_flow=2 * avail / cfg.tables.flows, per_dst=100.0, fixed=0)
    f = check_memory(cfg, too_big)
    assert f.status == "fail"
    assert "tables.flows" in f.fix
    fits = _LoadResult(Finding("bpf-object", "ok", ""), per_flow=1.0, per_dst=1.0, fixed=0)
    assert check_memory(cfg, fits).status == "ok"
    # the known-client table counts too (a hash of its own, allocated at load)
    known = _LoadResult(Finding("bpf-object", "ok", ""), per_flow=1.0, per_dst=1.0,
                        per_known=2 * avail / cfg.tables.known, fixed=0)
    f = check_memory(cfg, known)
    assert f.status == "fail"
    assert "tables.known = 262,144" in f.message
    assert "tables.known" in f.fix
    unknown = check_memory(cfg, _LoadResult(Finding("bpf-object", "fail", "no")))
    assert unknown.status == "warn"


def test_store_that_refuses_connections_fails_fast() -> None:
    port = free_port()
    f = check_store(default_config(), f"redis://127.0.0.1:{port}")
    assert f.status == "fail"
    assert f"127.0.0.1:{port}" in f.message
    assert "does not answer" in f.message


def test_memory_store_is_ok_for_one_proxy() -> None:
    f = check_store(default_config(), "memory://")
    assert f.status == "ok"
    assert "mesh" in f.message


# --- the command ------------------------------------------------------------


def _run(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XPRO_")}
    result = CliRunner().invoke(doctor_command, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_cli_json_with_failing_checks_exits_1() -> None:
    port = free_port()
    code, out, _ = _run("--interface", NO_IF, "--store", f"redis://127.0.0.1:{port}", "--json")
    assert code == 1
    doc = json.loads(out)
    by_check = {f["check"]: f for f in doc["findings"]}
    assert by_check[f"interface:{NO_IF}"]["status"] == "fail"
    assert "ip link" in by_check[f"interface:{NO_IF}"]["fix"]
    assert by_check["store"]["status"] == "fail"
    assert doc["ok"] is False
    assert all(f["status"] in ("ok", "warn", "fail") for f in doc["findings"])
    assert all(f["fix"] for f in doc["findings"] if f["status"] == "fail")


def test_cli_text_output_names_each_failure() -> None:
    code, out, _ = _run("--interface", NO_IF)
    assert code == 1
    assert f"FAIL  interface:{NO_IF}: no interface '{NO_IF}'" in out
    assert out.splitlines()[-1].startswith("not ready:")


def test_cli_missing_config_is_a_user_error_without_traceback(tmp_path: Path) -> None:
    code, out, err = _run("--config", str(tmp_path / "missing.toml"))
    assert code == 2
    assert err.startswith("error: ")
    assert "missing.toml" in err
    assert "Traceback" not in out + err


def test_cli_bad_config_value_is_a_user_error(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[thresholds]\nt_f1 = -3\n")
    code, _, err = _run("--config", str(cfg))
    assert code == 2
    assert "thresholds.t_f1" in err
    assert "Traceback" not in err


def test_cli_unknown_option_is_a_usage_error() -> None:
    code, _, err = _run("--no-such-option")
    assert code == 2
    assert "No such option" in err


def test_missing_network_namespace_is_a_failed_finding() -> None:
    (f,) = check_interface("eth0", default_config(), netns="xpro-no-such-namespace")
    assert f.status == "fail"
    assert f.check == "interface:eth0"
    assert "xpro-no-such-namespace" in f.message
    assert "does not exist" in f.message
