"""The command line: version, help, and the checks `xpro demo` makes before any root work."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from xpro import __version__
from xpro.cli import cli, main

pytestmark = pytest.mark.unit


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["version"])
    assert result.exit_code == 0
    assert result.stdout == f"xpro {__version__}\n"


def test_main_is_the_console_script(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"xpro {__version__}\n"


def test_module_runs_as_console_script() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from xpro.cli import main; main()", "version"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == f"xpro {__version__}"


def test_help_lists_commands(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "demo" in result.stdout
    assert "version" in result.stdout


def test_demo_help_has_examples(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0
    assert "sudo xpro demo" in result.stdout
    assert "--flood-rate" in result.stdout


@pytest.mark.usefixtures("not_root")
def test_demo_needs_root(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["demo"])
    assert result.exit_code == 77
    assert result.stderr.startswith("error: xpro demo needs root")
    assert "sudo" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.usefixtures("not_root")
def test_debug_shows_the_traceback(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--debug", "demo"])
    assert result.exit_code == 77
    assert "Traceback" in result.stderr
    assert "PrivilegeError" in result.stderr


@pytest.mark.usefixtures("not_root")
def test_debug_from_the_environment(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["demo"], env={"XPRO_DEBUG": "1"}, auto_envvar_prefix="XPRO")
    assert result.exit_code == 77
    assert "Traceback" in result.stderr


@pytest.mark.usefixtures("not_root")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--flood-rate", "0"], "--flood-rate"),
        (["--legit-rate", "abc"], "--legit-rate"),
        (["--duration", "0.5"], "--duration"),
        (["--duration", "61"], "--duration"),
        (["--t-f1", "0"], "--t-f1"),
        (["--mode", "offload"], "--mode"),
        (["--flood-rate", "19990", "--legit-rate", "11"], "20000"),
    ],
)
def test_demo_rejects_bad_input(runner: CliRunner, args: list[str], message: str) -> None:
    # Checked before the root check: a non-root user sees the usage error.
    result = runner.invoke(cli, ["demo", *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.usefixtures("not_root")
def test_demo_option_from_the_environment(runner: CliRunner) -> None:
    result = runner.invoke(
        cli, ["demo"], env={"XPRO_DEMO_DURATION": "0"}, auto_envvar_prefix="XPRO"
    )
    assert result.exit_code == 2
    assert "--duration" in result.stderr


def test_unknown_command(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["frobnicate"])
    assert result.exit_code == 2
    assert "No such command" in result.stderr


def test_every_built_in_command_loads_under_its_name(runner: CliRunner) -> None:
    from xpro.cli import BUILTIN_COMMANDS

    ctx = click.Context(cli)
    for name in BUILTIN_COMMANDS:
        cmd = cli.get_command(ctx, name)
        assert cmd is not None
        assert cmd.name == name
    assert set(BUILTIN_COMMANDS) <= set(cli.list_commands(ctx))
    listing = runner.invoke(cli, ["--help"]).stdout
    for name in BUILTIN_COMMANDS:
        assert f"\n  {name} " in listing


def test_a_control_command_imports_neither_the_data_paths_nor_the_plugins() -> None:
    """``xpro status`` is what an operator types during an attack: it imports
    the command and the control client, not the lab, the data paths (and
    pyroute2) or the plugins, whose import took 0.7 s of its 1.1 s."""
    code = """if True:
        import sys
        from xpro.cli import main
        try:
            main(["status", "--socket", "/nonexistent/xpro.sock"])
        except SystemExit as exc:
            print("exit", exc.code)
        heavy = ["pyroute2", "xpro.datapath.host", "xpro.plugins.host", "xpro.lab",
                 "xpro.daemon.proxy", "xpro.bpf"]
        print("loaded", [m for m in heavy if m in sys.modules])
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert "no xpro daemon listens on /nonexistent/xpro.sock" in out.stderr
    assert out.stdout.splitlines() == ["exit 3", "loaded []"]


@pytest.mark.parametrize("argv", [["plugins", "--json"], ["--debug", "plugins", "--json"],
                                  ["--", "plugins", "--json"]])
def test_a_plugin_command_is_reached_through_main(argv: list[str]) -> None:
    """Plugins are loaded for a name that is not built in (``xpro plugins`` is
    the built-in plugin module's command, added through its entry point)."""
    code = f"from xpro.cli import main; main({argv!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert '"name": "plugins_cli"' in out.stdout


def test_help_before_a_built_in_name_still_lists_the_plugins_commands() -> None:
    out = subprocess.run([sys.executable, "-c", "from xpro.cli import main; main()",
                          "--help", "status"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert "\n  plugins " in out.stdout
    assert "\n  status " in out.stdout


def test_a_mistyped_command_is_told_the_built_in_it_resembles(runner: CliRunner) -> None:
    if not hasattr(click, "NoSuchCommand"):
        pytest.skip("click < 8.4 suggests no command")
    result = runner.invoke(cli, ["stauts"])
    assert result.exit_code == 2
    assert "Did you mean 'status'?" in result.output


def test_the_store_commands_options_come_from_the_environment_too() -> None:
    """``XPRO_STORE_INIT_SECRETS_DIR`` and the like are click's variables for the
    options of ``xpro store`` commands: the configuration, whose ``store``
    section has the same prefix, must not refuse them as unknown keys, and
    must still refuse a typo of one of its own (``XPRO_STORE_USER_NAME``)."""
    from xpro.cli.store import store
    from xpro.config.loader import COMMAND_ENV_NAMES

    assert isinstance(store, click.Group)
    auto = {f"XPRO_STORE_{name.upper()}_{p.name.upper()}"
            for name, cmd in store.commands.items() for p in cmd.params
            if isinstance(p, click.Option) and p.envvar is None and p.allow_from_autoenv
            and p.name}
    assert set(COMMAND_ENV_NAMES) == auto
    env = {**os.environ, "XPRO_STORE_INIT_SECRETS_DIR": "/nonexistent/secrets"}
    r = subprocess.run([sys.executable, "-m", "xpro", "store", "init", "--store",
                        "redis://127.0.0.1:1", "--proxy", "e1"],
                       env=env, capture_output=True, text=True, check=False, timeout=60)
    assert "unknown variable" not in r.stderr
    assert "127.0.0.1:1" in r.stderr  # it went on to the store, unreachable
    r = subprocess.run([sys.executable, "-m", "xpro", "config", "show"],
                       env={**os.environ, "XPRO_STORE_USER_NAME": "x"},
                       capture_output=True, text=True, check=False, timeout=60)
    assert r.returncode == 2
    assert "unknown variable XPRO_STORE_USER_NAME" in r.stderr


@pytest.mark.parametrize("args", [["explain", "garbage", "192.0.2.1"],
                                  ["explain", "192.0.2.1", "[2001:db8::1"],
                                  ["explain", "fe80::1%eth0", "192.0.2.1"],
                                  ["flows", "--src", "garbage"],
                                  ["flows", "--dst", "10.0.0.0/33"]])
def test_a_typed_address_is_checked_before_the_daemon_is_asked(
        runner: CliRunner, args: list[str]) -> None:
    """A typo is a usage error (exit 2), with or without a daemon; asking one
    first answered "no daemon" (exit 3) for a mistyped address."""
    r = runner.invoke(cli, [*args, "--socket", "/nonexistent/xpro.sock"])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output


def test_store_user_refuses_delete_with_add(runner: CliRunner) -> None:
    r = runner.invoke(cli, ["store", "user", "e1", "--add", "--delete", "--store",
                            "redis://127.0.0.1:1"])
    assert r.exit_code == 2
    assert "--delete removes the user" in r.output
