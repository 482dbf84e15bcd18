"""The command line: version, help, and the checks `xpro demo` makes before any root work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from xpro import __version__
from xpro.cli import cli, main
from xpro.config.kinds import read_password_file

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


# What an operator's mistake may not do (found by fuzzing the CLI, 2026-12-07).


def test_store_user_never_overwrites_a_file(runner: CliRunner, tmp_path: Path) -> None:
    """A file whose first line is empty is refused, not replaced by a new
    password.  A new password file is kept when the store call fails (the
    store may hold it already: a cluster's nodes, an etcd user before its
    grant), and the message says to give it again."""
    victim = tmp_path / "victim"
    victim.write_text("\nimportant line 2\n")
    r = runner.invoke(cli, ["store", "user", "p1", "--password-file", str(victim),
                            "--store", "redis://127.0.0.1:1"])
    assert r.exit_code == 2, r.output
    assert "its first line is empty" in r.output
    assert victim.read_text() == "\nimportant line 2\n"
    new = tmp_path / "p1.password"
    r = runner.invoke(cli, ["store", "user", "p1", "--password-file", str(new),
                            "--store", "redis://127.0.0.1:1"])
    assert r.exit_code == 1, r.output
    assert "127.0.0.1:1" in r.output
    assert f"the new password stays in {new}: give the same file again" in r.output
    first = new.read_text()
    r = runner.invoke(cli, ["store", "user", "p1", "--password-file", str(new),
                            "--store", "redis://127.0.0.1:1"])
    assert new.read_text() == first  # taken again, not replaced
    assert "stays in" not in r.output


def test_store_user_names_the_proxy_when_it_is_the_bad_name(runner: CliRunner,
                                                            tmp_path: Path) -> None:
    r = runner.invoke(cli, ["store", "user", "../x", "--password-file",
                            str(tmp_path / "pw"), "--store", "redis://127.0.0.1:1"])
    assert r.exit_code == 2, r.output
    assert "proxy name '../x' cannot name a store user" in r.output


@pytest.mark.parametrize("kind", ["fifo", "zero", "dir", "big"])
def test_a_password_file_that_is_not_a_small_file_is_refused_at_once(
        runner: CliRunner, tmp_path: Path, kind: str) -> None:
    """A FIFO hung every reader of a password file; /dev/zero filled memory."""
    path = tmp_path / "pw"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        path = Path("/dev/zero")
    elif kind == "dir":
        path.mkdir()
    else:
        path.write_bytes(b"x" * (2 << 20))
    r = runner.invoke(cli, ["config", "show", "--store-password-file", str(path)])
    assert r.exit_code == 2, r.output
    assert "store.password_file" in r.output
    assert "Traceback" not in r.output
    with pytest.raises(OSError, match=r"not a regular file|larger than"):
        read_password_file(path)


@pytest.mark.parametrize(("args", "needle"), [
    (["--pin-dir", "~nosuchuser-xpro/x"], "cannot expand '~nosuchuser-xpro'"),
    (["--store-tls-ca", "/tmp"], "not a regular file: /tmp"),
    (["--store-password-file", "/tmp/\udcff-xpro-none"], "no such file"),
])
def test_paths_that_cannot_be_used_are_one_line_each(
        runner: CliRunner, args: list[str], needle: str) -> None:
    _config_show_refuses(runner, args, needle)


def _config_show_refuses(runner: CliRunner, args: list[str], needle: str) -> None:
    """``xpro config show ARGS`` is a usage error (2) whose message has ``needle``."""
    r = runner.invoke(cli, ["config", "show", *args])
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert "Traceback" not in r.output


def test_toml_nested_without_end_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    for depth in (400, 5000):
        f = tmp_path / f"deep{depth}.toml"
        f.write_text("[filter]\nallow = " + "[" * depth + "]" * depth + "\n")
        r = runner.invoke(cli, ["config", "check", str(f)])
        assert r.exit_code == 2, r.output
        assert "Traceback" not in r.output
        assert r.output.count("\n") == 1, r.output


@pytest.mark.parametrize(("url", "needle"), [
    ("foo://bar", "no store named 'foo'"),
    ("redis://h/abc", "database 'abc' is not a number"),
    ("redis://h?db=x", "unknown redis:// store option(s) db"),
])
def test_config_check_refuses_a_store_url_the_daemon_would(
        runner: CliRunner, tmp_path: Path, url: str, needle: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(f'[store]\nurl = "{url}"\n')
    r = runner.invoke(cli, ["config", "check", str(f)])
    assert r.exit_code == 2, r.output
    assert f"{f}:2: store.url: " in r.output
    assert needle in r.output


def test_no_control_sequence_reaches_the_terminal(runner: CliRunner, tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[thresholds]\n"\\u001b[31mRED" = 1\n["\\u009b31mSEC"]\nx = 1\n')
    r = runner.invoke(cli, ["config", "check", str(f)])
    assert r.exit_code == 2
    assert "\x1b" not in r.output
    assert "\x9b" not in r.output
    assert "unknown key thresholds.\\x1b[31mRED" in r.output


@pytest.mark.parametrize("args", [["lab", "run", "spoofed-flood", "--flood-rate", "nan"],
                                  ["lab", "run", "distributed", "--ratio", "nan"],
                                  ["demo", "--duration", "nan"],
                                  ["top", "--interval", "nan"]])
def test_nan_is_not_a_number_in_range(runner: CliRunner, args: list[str]) -> None:
    r = runner.invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert "'nan' is not a number in the range" in r.output


def test_store_init_on_an_unreachable_cluster_is_one_line(runner: CliRunner) -> None:
    """The cluster client connects in its constructor, which ran outside the
    store's error handling: a traceback."""
    r = runner.invoke(cli, ["store", "init", "--store", "redis+cluster://127.0.0.1:1"])
    assert r.exit_code == 1, r.output
    assert "redis store at 127.0.0.1:1 unavailable" in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


@pytest.mark.parametrize(("args", "needle"), [
    (["--metrics-listen", "0:80"], "metrics.listen"),  # the resolver reads 0.0.0.0
    (["--metrics-listen", "1.2.3:80"], "metrics.listen"),  # and 1.2.0.3
    (["--metrics-listen", "0x0:9100"], "the resolver reads it as 0.0.0.0"),
    (["--allow", "fe80::1%eth0"], "has a zone"),
])
def test_values_the_system_would_read_otherwise_are_refused(
        runner: CliRunner, args: list[str], needle: str) -> None:
    _config_show_refuses(runner, args, needle)


def test_lists_that_do_not_do_what_they_say_are_warned_about(runner: CliRunner) -> None:
    r = runner.invoke(cli, ["config", "show", "--allow", "10.0.0.0/8",
                            "--deny", "10.1.0.0/16,::/0,192.0.2.0/24"])
    assert r.exit_code == 0, r.output
    assert ('warning: filter.deny "10.1.0.0/16" lies inside filter.allow "10.0.0.0/8": the '
            "allow list is checked first, so this entry drops nothing but IPv6 packets from "
            "IPv4-mapped sources") in r.output
    assert 'warning: filter.deny "::/0" also holds every IPv4 source' in r.output
    assert "192.0.2.0/24\" lies" not in r.output


def test_config_check_knows_the_installed_parsers(runner: CliRunner, tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[proxy]\nbackend = "afxdp"\n[afxdp]\negress = "eth1"\n'
                 'parsers = ["nosuch"]\n')
    r = runner.invoke(cli, ["config", "check", str(f)])
    assert r.exit_code == 2, r.output
    assert f"{f}:5: afxdp.parsers: no destination parser 'nosuch'; installed: coap" in r.output
    f.write_text('[proxy]\nbackend = "afxdp"\n[afxdp]\negress = "eth1"\n'
                 'parsers = ["coap"]\ncoap_names = ["victim.example"]\n')
    assert runner.invoke(cli, ["config", "check", str(f)]).exit_code == 0
    # the native backend does not read the afxdp section: nothing to refuse
    f.write_text('[afxdp]\nparsers = ["nosuch"]\n')
    assert runner.invoke(cli, ["config", "check", str(f)]).exit_code == 0


@pytest.mark.parametrize(("args", "needle"), [
    (["config", "show", "--set", "=5"], "--set =5: write --set KEY=VALUE"),
    (["store", "user", "p1", "--user", "", "--store", "redis://127.0.0.1:1"],
     "Invalid value for '--user'"),
    (["store", "user", "p1", "--user", "a b", "--store", "redis://127.0.0.1:1"],
     "Invalid value for '--user'"),
])
def test_empty_or_spaced_names_are_usage_errors(runner: CliRunner, args: list[str],
                                                needle: str) -> None:
    r = runner.invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert needle in r.output


def test_output_to_a_full_disk_is_one_line() -> None:
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "xpro", "config", "show"], stdout=full,
                           stderr=subprocess.PIPE, text=True, check=False, timeout=60)
    assert r.returncode == 1
    assert r.stderr == "error: cannot write the output: No space left on device\n"
