"""xpro.config: defaults, layers, messages, secrets, conversions, docs."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xpro import config as C
from xpro.cli import cli
from xpro.config import Config, InvalidConfig, load_config
from xpro.config import kinds as K
from xpro.core.layout import DST_ADDR_PORT, MALFORMED_PASS, MODE_ENFORCE, MODE_MONITOR
from xpro.core.model import NS_PER_S, R_DEN, FilterParams, Prefix, SyncParams
from xpro.core.params import Sizes
from xpro.errors import ConfigError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLE = ROOT / "examples" / "xpro.toml"


def write(tmp_path: Path, text: str, name: str = "xpro.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(path: Path | None = None, *, env: dict[str, str] | None = None,
             overrides: dict[str, str] | None = None) -> tuple[str, ...]:
    with pytest.raises(InvalidConfig) as exc:
        load_config(path, env=env or {}, overrides=overrides)
    return exc.value.problems


# ---------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------


def test_defaults_are_valid_and_match_the_runtime_defaults() -> None:
    cfg = C.default_config()
    assert cfg.thresholds.t_t1 == 10.0
    assert cfg.thresholds.t_f1 == 100
    assert cfg.sync.period == 1.0
    assert cfg.filter.warn_period == cfg.sync.period
    assert cfg.store.url == "memory://"
    assert cfg.proxy.backend == "native"
    assert cfg.metrics.listen == "127.0.0.1:9477"
    assert cfg.control.socket == "/run/xpro/control.sock"
    assert cfg.proxy.pin_dir == "/sys/fs/bpf/xpro"
    # The model's, the merge's and the loader's defaults are one set of values.
    assert cfg.filter_params() == FilterParams()
    assert cfg.sync_params() == SyncParams()
    assert cfg.sizes() == Sizes()
    assert all(src.startswith("default") for src in cfg.sources.values())
    assert cfg.store_password is None
    assert cfg.path is None


def test_every_key_has_docs_and_an_env_var() -> None:
    keys = [o.key for o in C.SCHEMA]
    assert len(keys) == len(set(keys))
    assert len({o.flag for o in C.SCHEMA}) == len(keys)
    for opt in C.SCHEMA:
        assert opt.doc, opt.key
        assert opt.why, opt.key
        assert opt.env == "XPRO_" + opt.key.upper().replace(".", "_")
    assert set(C.SECTIONS) == {"thresholds", "sync", "known", "filter", "tables", "store",
                               "proxy", "metrics", "control", "log", "afxdp"}


def test_config_is_immutable_and_hashable() -> None:
    cfg = C.default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.thresholds.t_f1 = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.thresholds = cfg.thresholds  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.sources["x"] = "y"  # type: ignore[index]
    assert hash(cfg) == hash(C.default_config())
    assert cfg == C.default_config()


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------


def test_precedence_defaults_toml_env_cli(tmp_path: Path) -> None:
    path = write(tmp_path, "[thresholds]\nt_f1 = 150\nt_f2 = 20000\nt_w = 5e5\n"
                           "[sync]\nperiod = 0.5\n")
    env = {"XPRO_THRESHOLDS_T_F1": "200", "XPRO_THRESHOLDS_T_F2": "30000",
           "HOME": "/root", "XPRO_DEBUG": "1"}
    cfg = load_config(path, env=env, overrides={"thresholds.t_f1": "300"})
    assert cfg.thresholds.t_f1 == 300  # CLI over env over file
    assert cfg.thresholds.t_f2 == 30000  # env over file
    assert cfg.thresholds.t_w == 500_000  # file (an integral float is an integer)
    assert cfg.sync.period == 0.5  # file
    assert cfg.thresholds.t_t1 == 10.0  # default
    assert cfg.filter.warn_period == 0.5  # derived from sync.period
    assert cfg.sources["thresholds.t_f1"] == "command line"
    assert cfg.sources["thresholds.t_f2"] == "env XPRO_THRESHOLDS_T_F2"
    assert cfg.sources["thresholds.t_w"] == f"{path}:4"
    assert cfg.sources["thresholds.t_t1"] == "default"
    assert cfg.sources["filter.warn_period"] == "default (sync.period)"
    assert cfg.path == path.resolve()


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[store]\nmesh = 'blue'\n")
    assert load_config(None, env={"XPRO_CONFIG": str(path)}).store.mesh == "blue"


def test_text_forms_of_every_kind() -> None:
    cfg = load_config(None, env={
        "XPRO_FILTER_DENY": "192.0.2.0/24, 2001:db8::/32,198.51.100.7",
        "XPRO_FILTER_EVENTS": "off",
        "XPRO_PROXY_INTERFACES": "eth0,eth1",
        "XPRO_STORE_URL": "redis://10.0.0.5:6379",
        "XPRO_TABLES_FLOWS": "2_000_000",
        "XPRO_FILTER_DESTINATION": "addr+port",
        "XPRO_METRICS_LISTEN": "[::1]:9100",
    })
    assert cfg.filter.deny == ("192.0.2.0/24", "2001:db8::/32", "198.51.100.7/32")
    assert cfg.filter.events is False
    assert cfg.proxy.interfaces == ("eth0", "eth1")
    assert cfg.store.url == "redis://10.0.0.5:6379"
    assert cfg.tables.flows == 2_000_000
    assert cfg.filter.destination == "addr+port"
    assert cfg.metrics.listen == "[::1]:9100"
    assert load_config(None, env={"XPRO_FILTER_DENY": ""}).filter.deny == ()
    assert load_config(None, env={"XPRO_METRICS_LISTEN": ""}).metrics.listen == ""


def test_relative_paths_follow_their_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "ca.pem").write_text("pem")
    path = write(tmp_path / "etc", "[store]\ntls_ca = 'ca.pem'\n[proxy]\npin_dir = 'pins'\n")
    cfg = load_config(path, env={})
    assert cfg.store.tls_ca == str(tmp_path / "etc" / "ca.pem")
    assert cfg.proxy.pin_dir == str(tmp_path / "etc" / "pins")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, env={"XPRO_PROXY_PIN_DIR": "here"})
    assert cfg.proxy.pin_dir == str(tmp_path / "here")


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


BAD_TOML = [
    pytest.param(
        "[thresholds]\nt_f1 = -5\n",
        "{p}:2: thresholds.t_f1 = -5 (XPRO_THRESHOLDS_T_F1): must be an integer from 0 to "
        "4294967295 packets/s", id="out-of-range"),
    pytest.param(
        "[thresholds]\nt_f1 = 'many'\n",
        '{p}:2: thresholds.t_f1 = "many" (XPRO_THRESHOLDS_T_F1): must be an integer from 0 '
        "to 4294967295 packets/s", id="bad-type"),
    pytest.param(
        "[thresholds]\nt_f1 = 1.5\n",
        "thresholds.t_f1 = 1.5 (XPRO_THRESHOLDS_T_F1): must be an integer", id="fraction"),
    pytest.param(
        "[thresholds]\nt_t2 = 0\n",
        "{p}:2: thresholds.t_t2 = 0 (XPRO_THRESHOLDS_T_T2): must be a number from 0.01 to "
        "86400 s", id="seconds-range"),
    pytest.param(
        "[thresholds]\nr = 1\n",
        "thresholds.r = 1 (XPRO_THRESHOLDS_R): must be a number greater than 1 and at most "
        "1000", id="r-not-above-one"),
    pytest.param(
        "[filter]\nevents = 'yes'\n",
        'filter.events = "yes" (XPRO_FILTER_EVENTS): must be true or false', id="bool"),
    pytest.param(
        "[filter]\nmode = 'enforced'\n",
        'filter.mode = "enforced" (XPRO_FILTER_MODE): must be one of "enforce" or "monitor" '
        '(did you mean "enforce"?)', id="choice"),
    pytest.param(
        "[tables]\ndestinations = 1000\n",
        "tables.destinations = 1000 (XPRO_TABLES_DESTINATIONS): must be a power of two from "
        "64 to 16777216 destinations", id="power-of-two"),
    pytest.param(
        "[thresholds]\nt_f3 = 1\ntf1 = 1\n",
        "{p}:3: unknown key thresholds.tf1 (XPRO_THRESHOLDS_TF1); did you mean "
        "thresholds.t_f1?", id="unknown-key"),
    pytest.param(
        "[filter]\nalow = []\n",
        "{p}:2: unknown key filter.alow (XPRO_FILTER_ALOW); did you mean filter.allow?",
        id="unknown-key-2"),
    pytest.param(
        "[thresholds]\nperiod = 2\n",
        "unknown key thresholds.period (XPRO_THRESHOLDS_PERIOD); did you mean sync.period "
        "(in [sync])?", id="key-in-wrong-section"),
    pytest.param(
        "[treshold]\nt_f1 = 1\n",
        "{p}:1: unknown section [treshold]; did you mean [thresholds]?", id="unknown-section"),
    pytest.param(
        "t_f1 = 1\n",
        "{p}:1: unknown key t_f1 at the top level (keys belong in a section); did you mean "
        "thresholds.t_f1 (in [thresholds])?", id="top-level-key"),
    pytest.param(
        "thresholds = 3\n",
        "thresholds = 3: must be a table [thresholds]", id="section-not-table"),
    pytest.param(
        "[filter]\nallow = ['10.0.0.300/8']\n",
        'filter.allow = ["10.0.0.300/8"] (XPRO_FILTER_ALLOW): item 1: "10.0.0.300/8" is not '
        "an IP prefix", id="bad-prefix"),
    pytest.param(
        "[filter]\ndeny = ['192.0.2.0/24', '10.1.2.3/8']\n",
        'item 2: "10.1.2.3/8" has host bits set (did you mean "10.0.0.0/8"?)',
        id="host-bits"),
    pytest.param(
        "[filter]\ndeny = ['10.0.0.0/8', '::ffff:10.0.0.0/104']\n",
        'item 2: "::ffff:10.0.0.0/104" is listed twice', id="duplicate-prefix"),
    pytest.param(
        "[filter]\ndeny = '10.0.0.0/8'\n",
        'filter.deny = "10.0.0.0/8" (XPRO_FILTER_DENY): must be a list of prefixes',
        id="prefix-not-list"),
    pytest.param(
        "[proxy]\ninterfaces = ['eth0', 'a/b', 'averyveryverylongname']\n",
        'item 2: "a/b" is not an interface name', id="ifname"),
    pytest.param(  # 8 characters, 16 bytes: the kernel's IFNAMSIZ counts bytes
        "[afxdp]\negress = 'éééééééé'\n",
        'afxdp.egress = "éééééééé" (XPRO_AFXDP_EGRESS): must be "" or an interface name '
        "(at most 15 bytes", id="egress-bytes"),
    pytest.param(
        "[metrics]\nlisten = 'localhost'\n",
        'metrics.listen = "localhost" (XPRO_METRICS_LISTEN): must be an address "HOST:PORT"',
        id="listen-no-port"),
    pytest.param(
        "[metrics]\nlisten = '127.0.0.1:70000'\n",
        "(the port from 1 to 65535)", id="listen-port"),
    pytest.param(
        "[store]\nurl = 'localhost:6379'\n",
        'store.url = "localhost:6379" (XPRO_STORE_URL): must be a store URL', id="url"),
    pytest.param(
        "[store]\nmesh = 'a b'\n",
        "must be 1-64 letters, digits, '_', '.' or '-'", id="mesh"),
    pytest.param(
        "[store]\ntls_ca = '/nonexistent/ca.pem'\n",
        '{p}:2: store.tls_ca = "/nonexistent/ca.pem" (XPRO_STORE_TLS_CA): no such file: '
        "/nonexistent/ca.pem", id="missing-file"),
    pytest.param(
        "[control]\nsocket = '/" + "x" * 120 + "'\n",
        "must be a path of at most 107 bytes", id="socket-path-too-long"),
    pytest.param(
        "[sync]\nttl = 5\n",
        "sync.ttl = 5.0 (XPRO_SYNC_TTL; {p}:2), thresholds.t_t1 = 10.0 "
        "(XPRO_THRESHOLDS_T_T1; default): sync.ttl must exceed thresholds.t_t1",
        id="cross-ttl"),
    pytest.param(
        "[sync]\nperiod = 10\n[thresholds]\nt_t4 = 5\n",
        "thresholds.t_t4 = 5.0 (XPRO_THRESHOLDS_T_T4; {p}:4), sync.period = 10.0 "
        "(XPRO_SYNC_PERIOD; {p}:2): thresholds.t_t4 must be at least sync.period",
        id="cross-t4"),
    pytest.param(
        "[thresholds]\nr = 1.0001\n",
        "thresholds.r is applied as a multiple of 1/1024", id="cross-r"),
    pytest.param(
        "[filter]\nallow = ['10.0.0.0/8']\ndeny = ['10.0.0.0/8']\n",
        '"10.0.0.0/8" in both filter.allow and filter.deny', id="cross-allow-deny"),
    pytest.param(
        "[filter]\nmonitor = ['2001:db8::/32']\nenforce = ['2001:db8::/32']\n",
        "in both filter.monitor and filter.enforce: a destination has one mode",
        id="cross-modes"),
    pytest.param(
        "[tables]\nprefixes = 1\n[filter]\nmonitor = ['10.0.0.0/8']\nenforce = ['10.1.0.0/16']\n",
        "filter.monitor + filter.enforce hold 2 prefixes, more than tables.prefixes",
        id="cross-prefix-room"),
    pytest.param(
        "[afxdp]\ncoap_names = ['svc.example', 'bad name', 'svc.example:0']\n",
        '{p}:2: afxdp.coap_names = ["svc.example", "bad name", "svc.example:0"] '
        '(XPRO_AFXDP_COAP_NAMES): item 2: "bad name" is not a host name', id="coap-name"),
    pytest.param(
        "[afxdp]\ncoap_names = ['Svc.Example.', 'svc.example:5683']\n",
        'item 2: "svc.example:5683" is the same name as item 1 (both are "svc.example")',
        id="coap-name-twice"),
    pytest.param(
        "[proxy]\nbackend = 'afxdp'\n[afxdp]\nparsers = ['coap']\n",
        'afxdp.coap_names = [] (XPRO_AFXDP_COAP_NAMES; default): the coap parser keys only '
        "the targets listed in afxdp.coap_names", id="cross-coap-names"),
    pytest.param(  # passed, then the daemon failed at start
        "[proxy]\nbackend = 'afxdp'\n",
        'proxy.backend = "afxdp" sends the frames it passes out of afxdp.egress',
        id="cross-afxdp-egress"),
    pytest.param(  # passed, then the etcd store refused the option at every connect
        "[store]\nurl = 'etcds://10.0.0.5:2379'\ntls_verify = false\n",
        "store.tls_verify = false is for rediss:// only", id="cross-etcd-verify"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_TOML)
def test_bad_file_gives_its_message(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    found = problems(path)
    want = expected.format(p=path)
    assert any(want in p for p in found), found


def test_every_problem_of_a_file_is_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, "[thresholds]\nt_f1 = -5\nt_f2 = 'x'\nt_zz = 1\n"
                           "[filter]\nmode = 'off'\n[sync]\nttl = 2\n")
    with pytest.raises(InvalidConfig) as exc:
        load_config(path, env={})
    found = exc.value.problems
    assert len(found) == 5, found
    assert [p.split(":")[1] for p in found[:4]] == ["2", "3", "4", "6"]
    assert "sync.ttl must exceed thresholds.t_t1" in found[4]
    text = str(exc.value)
    assert text.startswith("5 configuration problems:\n")
    assert isinstance(exc.value, ConfigError)


def test_bad_value_skips_rules_and_defaults_on_that_key(tmp_path: Path) -> None:
    # The file's ttl breaks a rule, but the environment's ttl is what counts,
    # and it is itself bad: one message about it, no rule noise.
    path = write(tmp_path, "[sync]\nttl = 5\n")
    found = problems(path, env={"XPRO_SYNC_TTL": "x"})
    assert found == ('environment: sync.ttl = "x" (XPRO_SYNC_TTL): must be a number from 1 '
                     "to 604800 s",)


def test_bad_toml_gives_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "[thresholds]\nt_f1 = 100\nt_f2 = \n")
    assert problems(path) == (f"{path}:3:8: not valid TOML: Invalid value",)
    path = write(tmp_path, "[thresholds]\nt_f1 = 1\nt_f1 = 2\n")
    (msg,) = problems(path)
    assert msg.startswith(f"{path}:3:")


def test_unreadable_files(tmp_path: Path) -> None:
    assert problems(tmp_path / "missing.toml")[0].startswith(
        f"{tmp_path / 'missing.toml'}: cannot read the config file (No such file")
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[store]\n\nmesh = '\xe9'\n")
    assert problems(path) == (f"{path}:3: not UTF-8 text",)


def test_environment_and_command_line_messages() -> None:
    found = problems(env={"XPRO_THRESHOLDS_T_F1": "-5", "XPRO_THRESHOLDS_TF2": "1",
                          "XPRO_STORE_PASSWORD": "not a key, not an error"},
                     overrides={"thresholds.tf1": "1", "filter.mode": "loud"})
    assert found == (  # the environment in the order of the names
        "environment: unknown variable XPRO_THRESHOLDS_TF2; did you mean "
        "XPRO_THRESHOLDS_T_F2?",
        'environment: thresholds.t_f1 = "-5" (XPRO_THRESHOLDS_T_F1): must be an integer '
        "from 0 to 4294967295 packets/s",
        "command line: unknown key thresholds.tf1; did you mean thresholds.t_f1?",
        'command line: filter.mode = "loud" (XPRO_FILTER_MODE): must be one of "enforce" or '
        '"monitor"',
    )


def test_a_variable_one_typo_from_a_configuration_variable_is_warned_about() -> None:
    """Outside every section's prefix an ``XPRO_*`` name may be click's or a
    plugin's, so it is not refused; but one that is a typo of a configuration
    variable (the section misspelled) would silently change nothing: it is
    a warning that names the variable meant.  Other ``XPRO_*`` names are not."""
    cfg = load_config(None, env={"XPRO_THRESHOLD_T_F1": "50", "XPRO_SNYC_PERIOD": "2",
                                 "XPRO_LAB_RUN_DURATION": "3", "XPRO_DEBUG": "1",
                                 "XPRO_ADMIN_PASSWORD": "x", "XPRO_TEST_TIMEOUT": "9"})
    assert cfg.thresholds.t_f1 == 100  # ignored, as before
    assert cfg.notes == (
        "environment: XPRO_SNYC_PERIOD is not a configuration variable and is ignored; did "
        "you mean XPRO_SYNC_PERIOD?",
        "environment: XPRO_THRESHOLD_T_F1 is not a configuration variable and is ignored; "
        "did you mean XPRO_THRESHOLDS_T_F1?")
    assert set(cfg.notes) <= set(cfg.warnings())
    assert load_config(None, env={"XPRO_LAB_RUN_DURATION": "3", "XPRO_DEBUG": "1"}).notes == ()
    r = CliRunner().invoke(cli, ["config", "show"], env={"XPRO_THRESHOLD_T_F1": "50"})
    assert r.exit_code == 0, r.output
    assert "warning: environment: XPRO_THRESHOLD_T_F1 is not a configuration variable" in r.stderr


def test_tls_cert_needs_its_key(tmp_path: Path) -> None:
    cert = write(tmp_path, "pem", "cert.pem")
    found = problems(env={"XPRO_STORE_TLS_CERT": str(cert)})
    assert found == (
        f'store.tls_cert = "{cert}" (XPRO_STORE_TLS_CERT; env XPRO_STORE_TLS_CERT), '
        "store.tls_key = (unset) (XPRO_STORE_TLS_KEY; default): store.tls_cert and "
        "store.tls_key go together: set both or neither",
    )


def test_bad_hostname_default_says_to_set_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "bad host")
    (msg,) = problems()
    assert msg.startswith(
        'default (the short host name): proxy.name = "bad host" (XPRO_PROXY_NAME)')
    assert msg.endswith("; set proxy.name")
    assert load_config(None, env={"XPRO_PROXY_NAME": "p1"}).proxy.name == "p1"


# ---------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------


def _everything_shown(cfg: Config) -> str:
    return "\n".join([
        repr(cfg), str(cfg), cfg.to_toml(), C.dumps(cfg, sources=False),
        json.dumps(cfg.effective_config()), json.dumps(cfg.effective_config(with_sources=True)),
        json.dumps(dict(cfg.sources)), repr(cfg.store), repr(cfg.store_password),
        "\n".join(str(c) for c in cfg.diff(C.default_config())),
    ])


def test_password_from_environment_is_masked() -> None:
    cfg = load_config(None, env={"XPRO_STORE_PASSWORD": "s3cret-pw"})
    assert cfg.store_password is not None
    assert cfg.store_password.reveal() == "s3cret-pw"
    shown = _everything_shown(cfg)
    assert "s3cret-pw" not in shown
    assert "password: set (env XPRO_STORE_PASSWORD), not shown" in cfg.to_toml()
    assert C.Change("store.password", "(unset)", "***", live=False) in \
        C.default_config().diff(cfg)


def test_password_file_and_env_precedence(tmp_path: Path) -> None:
    pw = write(tmp_path, "from-file-pw\n", "store.password")
    cfg = load_config(None, env={"XPRO_STORE_PASSWORD_FILE": str(pw)})
    assert cfg.store_password is not None
    assert cfg.store_password.reveal() == "from-file-pw"
    assert "from-file-pw" not in _everything_shown(cfg)
    assert cfg.store_options() == {"password_file": str(pw),
                                   "password": C.Secret("from-file-pw")}
    assert "from-file-pw" not in repr(cfg.store_options())
    cfg = load_config(None, env={"XPRO_STORE_PASSWORD_FILE": str(pw),
                                 "XPRO_STORE_PASSWORD": "from-env-pw"})
    assert cfg.store_password is not None
    assert cfg.store_password.reveal() == "from-env-pw"
    empty = write(tmp_path, "\n", "empty")
    assert problems(env={"XPRO_STORE_PASSWORD_FILE": str(empty)}) == (
        f'env XPRO_STORE_PASSWORD_FILE: store.password_file = "{empty}" '
        "(XPRO_STORE_PASSWORD_FILE): its first line is empty (the password is the file's "
        "first line)",)


def test_a_password_file_is_read_to_its_first_line_by_every_reader(tmp_path: Path) -> None:
    """The docs say "its first line": the loader and the stores read the whole
    file, so a note on a second line became part of the password (and the
    daemon failed to authenticate with what `xpro store user` had set, which
    took the first line)."""
    from xpro.stores._common import resolve_password

    pw = write(tmp_path, "s3cret\r\n# rotated 2026-12-07\n", "store.password")
    cfg = load_config(None, env={"XPRO_STORE_PASSWORD_FILE": str(pw)})
    assert cfg.store_password is not None
    assert cfg.store_password.reveal() == "s3cret"
    assert resolve_password(None, {"password_file": str(pw)}) == "s3cret"
    blank = write(tmp_path, "\nsecret\n", "blank")  # not "no password": refused
    with pytest.raises(ConfigError, match="first line is empty"):
        resolve_password(None, {"password_file": str(blank)})


def test_password_in_url_is_masked() -> None:
    cfg = load_config(None, env={"XPRO_STORE_URL": "redis://user:hunter22@10.0.0.5:6379/0"})
    assert cfg.store_url == "redis://user:hunter22@10.0.0.5:6379/0"
    assert "hunter22" not in _everything_shown(cfg)
    assert cfg.effective_config()["store"]["url"] == "redis://user:***@10.0.0.5:6379/0"


# ---------------------------------------------------------------------------
# Conversions
# ---------------------------------------------------------------------------


def test_filter_params_exact(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [thresholds]
        t_t1 = 2.5
        t_t2 = 0.1
        t_t3 = 0.3
        t_f1 = 250
        t_f2 = 4294967295
        [filter]
        mode = "monitor"
        destination = "addr+port"
        malformed = "pass"
        events = false
        warn_period = 0.7
        allow = ["192.0.2.0/24", "2001:db8:1::/48"]
        deny = ["198.51.100.7"]
        monitor = ["203.0.113.0/24"]
        enforce = ["203.0.113.128/25", "2001:db8::/32"]
    """)
    fp = load_config(path, env={}).filter_params()
    assert fp == FilterParams(
        t_t1=2_500_000_000, t_t2=100_000_000, t_t3=300_000_000, t_f1=250, t_f2=2**32 - 1,
        warn_period=700_000_000, mode=MODE_MONITOR, dst_mode=DST_ADDR_PORT,
        malformed_policy=MALFORMED_PASS, events=False,
        allow=frozenset({Prefix.parse("192.0.2.0/24"), Prefix.parse("2001:db8:1::/48")}),
        deny=frozenset({Prefix.parse("198.51.100.7/32")}),
        dst_policy={Prefix.parse("203.0.113.0/24"): MODE_MONITOR,
                    Prefix.parse("203.0.113.128/25"): MODE_ENFORCE,
                    Prefix.parse("2001:db8::/32"): MODE_ENFORCE},
    )
    assert Prefix.parse("198.51.100.7/32").length == 128


def test_t_f2_address_defaults_to_t_f2_and_is_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "[thresholds]\nt_f2 = 5000\n")
    assert load_config(path, env={}).filter_params().t_f2_addr == 5000
    path = write(tmp_path, "[thresholds]\nt_f2 = 5000\nt_f2_address = 20000\n")
    fp = load_config(path, env={}).filter_params()
    assert (fp.t_f2, fp.t_f2_addr) == (5000, 20000)
    path = write(tmp_path, "[thresholds]\nt_f2_address = -1\n")
    (msg,) = problems(path)
    assert "thresholds.t_f2_address" in msg
    assert "must be an integer from 0 to 4294967295 packets/s" in msg


@pytest.mark.parametrize(("seconds", "ns"), [
    (0.01, 10_000_000), (0.1, 100_000_000), (1.1, 1_100_000_000), (86400, 86400 * NS_PER_S),
    (0.123456789, 123_456_789), (3.3, 3_300_000_000),
])
def test_seconds_to_ns_is_exact(seconds: float, ns: int) -> None:
    assert C.seconds_to_ns(seconds) == ns


def test_sync_params_and_sizes() -> None:
    cfg = load_config(None, env={}, overrides={
        "thresholds.t_t1": "7", "thresholds.t_t4": "3.5", "thresholds.r": "1.5",
        "tables.flows": "3000", "tables.destinations": "1024", "tables.prefixes": "10",
        "sync.period": "0.25", "sync.ttl": "30",
    })
    assert cfg.sync_params() == SyncParams(t_t1=7 * NS_PER_S, t_t4=3_500_000_000,
                                           r_q=round(1.5 * R_DEN))
    assert cfg.sync_params().r_q == 1536
    assert cfg.sizes() == Sizes(flows=3000, dsts=1024, prefixes=10)
    assert cfg.period_ns == 250_000_000
    assert cfg.ttl_ns == 30 * NS_PER_S


def test_store_options(tmp_path: Path) -> None:
    ca, cert, key = (write(tmp_path, "pem", n) for n in ("ca.pem", "c.pem", "k.pem"))
    cfg = load_config(None, env={"XPRO_STORE_TLS_CA": str(ca), "XPRO_STORE_TLS_CERT": str(cert),
                                 "XPRO_STORE_TLS_KEY": str(key),
                                 "XPRO_STORE_TLS_VERIFY": "false"})
    assert cfg.store_options() == {"ca": str(ca), "cert": str(cert), "key": str(key),
                                   "verify": False}
    assert C.default_config().store_options() == {}


# ---------------------------------------------------------------------------
# Output, diff, round trip
# ---------------------------------------------------------------------------


def test_effective_config_is_toml_and_loads_back(tmp_path: Path) -> None:
    cfg = load_config(None, env={"XPRO_THRESHOLDS_T_F1": "200",
                                 "XPRO_FILTER_DENY": "192.0.2.0/24"})
    eff = cfg.effective_config()
    assert eff["thresholds"]["t_f1"] == 200
    assert eff["filter"]["deny"] == ["192.0.2.0/24"]
    assert "password_file" not in eff["store"]
    sourced = cfg.effective_config(with_sources=True)
    assert sourced["thresholds"]["t_f1"] == {"value": 200,
                                             "source": "env XPRO_THRESHOLDS_T_F1"}
    text = cfg.to_toml()
    assert "t_f1 = 200  # env XPRO_THRESHOLDS_T_F1" in text
    assert "# password_file = (unset)" in text
    assert tomllib.loads(text) == eff
    again = load_config(write(tmp_path, text), env={})
    assert again == cfg
    assert again.sources["thresholds.t_f1"] == f"{tmp_path / 'xpro.toml'}:6"


def test_diff_lists_changed_keys() -> None:
    a = C.default_config()
    b = load_config(None, env={"XPRO_THRESHOLDS_T_F1": "200", "XPRO_TABLES_FLOWS": "4096",
                               "XPRO_SYNC_PERIOD": "2"})
    changes = a.diff(b)
    assert [c.key for c in changes] == ["thresholds.t_f1", "sync.period",
                                        "filter.warn_period", "tables.flows"]
    assert changes[0] == C.Change("thresholds.t_f1", "100", "200", live=True)
    assert str(changes[1]) == "sync.period: 1.0 -> 2.0"
    assert not changes[3].live
    assert a.diff(a) == ()
    assert a.get("tables.flows") == 1 << 20
    with pytest.raises(KeyError):
        a.get("tables.nothing")


def _value_strategy(opt: C.Option) -> st.SearchStrategy[Any]:
    kind = opt.kind
    if isinstance(kind, K.Integer):
        if kind.power_of_two:
            return st.integers(kind.lo.bit_length() - 1, kind.hi.bit_length() - 1).map(
                lambda b: 1 << b)
        return st.integers(kind.lo, kind.hi)
    if isinstance(kind, K.Number):
        return st.floats(kind.lo, kind.hi, exclude_min=kind.lo_open, allow_nan=False)
    if isinstance(kind, K.Choice):
        return st.sampled_from(kind.choices)
    if isinstance(kind, K.Boolean):
        return st.booleans()
    if isinstance(kind, K.Text):  # the pattern counts characters, the bound bytes
        text = st.from_regex(kind.pattern, fullmatch=True)
        if kind.max_bytes is not None:
            bound = kind.max_bytes
            text = text.filter(lambda s: len(s.encode()) <= bound)
        return text
    if isinstance(kind, K.Url):
        return st.builds("{}://{}:{}".format, st.sampled_from(["redis", "rediss", "etcd"]),
                         st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
                         st.integers(1, 65535)) | st.just("memory://")
    if isinstance(kind, K.Listen):
        return st.builds("{}:{}".format, st.ip_addresses(v=4).map(str),
                         st.integers(1, 65535)) | st.just("")
    if isinstance(kind, K.FilePath):
        return st.from_regex(r"(/[a-z0-9_]{1,12}){1,4}", fullmatch=True)
    if isinstance(kind, K.Prefixes):
        nets = st.builds(lambda a, n: str(ipaddress.ip_network(f"{a}/{n}", strict=False)),
                         st.ip_addresses(v=4) | st.ip_addresses(v=6), st.integers(8, 32))
        return st.lists(nets, max_size=4, unique_by=Prefix.parse).map(tuple)
    if isinstance(kind, K.Names):
        return st.lists(st.from_regex(r"[a-z][a-z0-9]{0,14}", fullmatch=True), max_size=3,
                        unique=True).map(tuple)
    if isinstance(kind, K.HostNames):  # canonical names, as the loader keeps them
        names = st.builds(lambda h, p: h if p == kind.default_port else f"{h}:{p}",
                          st.from_regex(r"[a-z][a-z0-9]{0,14}(\.[a-z]{1,8}){0,2}",
                                        fullmatch=True),
                          st.sampled_from([kind.default_port, 5684, 61616]))
        return st.lists(names, max_size=3, unique=True).map(tuple)
    raise AssertionError(f"no strategy for {opt.key}")


def _text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


_ROUND_TRIP_KEYS = [o for o in C.SCHEMA
                    if not (isinstance(o.kind, K.FilePath) and o.kind.must_exist)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.data())
def test_round_trip_effective_config_to_toml_to_load(data: st.DataObject) -> None:
    chosen = data.draw(st.lists(st.sampled_from(_ROUND_TRIP_KEYS), unique_by=lambda o: o.key))
    values = {o.key: data.draw(_value_strategy(o), label=o.key) for o in chosen}
    try:
        cfg = load_config(None, env={}, overrides={k: _text(v) for k, v in values.items()})
    except InvalidConfig as exc:
        # Each value is valid alone; only a rule between keys may refuse them.
        if any(p.startswith("command line:") for p in exc.problems):
            raise
        assume(False)
        raise
    for key, value in values.items():
        got = cfg.get(key)
        if isinstance(value, float):
            assert math.isclose(got, value, rel_tol=0, abs_tol=0), key
        else:
            assert got == value, key
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "effective.toml"
        path.write_text(cfg.to_toml())
        again = load_config(path, env={})
    assert again == cfg
    assert again.effective_config() == cfg.effective_config()
    assert again.filter_params() == cfg.filter_params()
    assert again.sync_params() == cfg.sync_params()


# ---------------------------------------------------------------------------
# The command line helper
# ---------------------------------------------------------------------------


def test_click_options_give_overrides() -> None:
    seen: dict[str, Any] = {}

    @click.command()
    @C.click_options()
    def run(**params: Any) -> None:
        seen["overrides"] = C.overrides_from_click(params)
        seen["rest"] = params

    result = CliRunner().invoke(
        run, ["--t-f1", "200", "--interface", "eth0", "--interface", "eth1", "--deny",
              "192.0.2.0/24,198.51.100.0/24", "--set", "sync.ttl=120", "--set",
              "thresholds.t_f1=1", "--store", "redis://r:6379", "--events", "false"],
        env={"XPRO_RUN_T_F1": "999"})
    assert result.exit_code == 0, result.output
    assert seen["rest"] == {}
    assert seen["overrides"] == {
        "sync.ttl": "120", "thresholds.t_f1": "200", "proxy.interfaces": "eth0,eth1",
        "filter.deny": "192.0.2.0/24,198.51.100.0/24", "store.url": "redis://r:6379",
        "filter.events": "false",
    }
    cfg = load_config(None, env={}, overrides=seen["overrides"])
    assert cfg.thresholds.t_f1 == 200
    assert cfg.proxy.interfaces == ("eth0", "eth1")
    assert cfg.sources["thresholds.t_f1"] == "command line"
    help_text = CliRunner().invoke(run, ["--help"]).output
    assert "--t-f1 N" in help_text
    assert "XPRO_THRESHOLDS_T_F1" in help_text
    with pytest.raises(InvalidConfig, match=r"--set sync.ttl: write --set KEY=VALUE"):
        C.overrides_from_click({"config__set": ("sync.ttl",)})


# ---------------------------------------------------------------------------
# Docs and the example
# ---------------------------------------------------------------------------


def _ext() -> Any:
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import xpro_config
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    return xpro_config


def test_reference_names_every_key() -> None:
    ext = _ext()
    text = "\n".join(ext.keys_rst())
    summary = "\n".join(ext.summary_rst())
    for opt in C.SCHEMA:
        assert f".. configkey:: {opt.key}\n" in text
        assert f"``{opt.env}``" in text
        assert f"``{opt.flag}``" in text
        assert f":configkey:`{opt.key}`" in summary
    for section in C.SECTIONS:
        assert f"[{section}]" in text
    assert len(ext.rules_rst()) == len(C.RULES)
    page = (DOCS / "configuration.rst").read_text()
    for directive in ("xpro-config-keys", "xpro-config-summary", "xpro-config-rules"):
        assert f".. {directive}::" in page
    assert "../examples/xpro.toml" in page
    assert "configuration" in (DOCS / "index.rst").read_text()


def test_sphinx_renders_the_reference(tmp_path: Path) -> None:
    from sphinx.cmd.build import build_main

    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(DOCS / '_ext')!r})\n"
        "extensions = ['xpro_config']\n"
    )
    (src / "index.rst").write_text(
        "Reference\n=========\n\nKeys\n----\n\n.. xpro-config-summary::\n\n"
        ".. xpro-config-keys::\n\nRules\n-----\n\n.. xpro-config-rules::\n"
    )
    out = tmp_path / "out"
    assert build_main(["-W", "-q", "-b", "text", str(src), str(out)]) == 0
    text = (out / "index.txt").read_text()
    for opt in C.SCHEMA:
        assert opt.key in text
        assert opt.env in text
    assert "Why this default" in text


def test_example_config_loads_and_shows_every_key() -> None:
    cfg = load_config(EXAMPLE, env={})
    text = EXAMPLE.read_text()
    for opt in C.SCHEMA:
        assert f"{opt.name} = " in text, opt.key
    for section in C.SECTIONS:
        assert f"[{section}]" in text
    # Everything the example sets is a default, but the interfaces.
    diff = C.default_config().diff(cfg)
    assert [c.key for c in diff] == ["proxy.interfaces"]


def test_coap_names_are_kept_in_canonical_form(tmp_path: Path) -> None:
    path = write(tmp_path, "[proxy]\nbackend = 'afxdp'\n[afxdp]\negress = 'eth1'\n"
                           "parsers = ['coap']\n"
                           "coap_names = ['Victim.Example.', 'v%69ctim.example:5684', "
                           "'[2001:DB8::1]:5683', 'BÜCHER.example']\n")
    cfg = load_config(path, env={})
    assert cfg.afxdp.coap_names == ("victim.example", "victim.example:5684", "2001:db8::1",
                                    "xn--bcher-kva.example")
    assert cfg.backend_options()["coap_names"] == list(cfg.afxdp.coap_names)
    assert C.SCHEMA[[o.key for o in C.SCHEMA].index("afxdp.coap_names")].live
    env = load_config(None, env={"XPRO_AFXDP_COAP_NAMES": "A.example, b.example."})
    assert env.afxdp.coap_names == ("a.example", "b.example")


def test_a_config_path_that_is_no_file_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO with no writer would hang, /dev/zero never end, a huge file fill
    the memory, a pipe be read empty at the next reload (every live key back
    to its default): each is one error, read no further."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (2 << 20))
    r, w = os.pipe()
    os.write(w, b"[thresholds]\nt_f1 = 42\n")
    os.close(w)
    try:
        for path, why in [(fifo, "not a regular file"), (Path("/dev/zero"), "not a regular file"),
                          (Path(f"/proc/self/fd/{r}"), "not a regular file"),
                          (big, "larger than 1 MiB")]:
            with pytest.raises(ConfigError, match=why):
                load_config(path, env={})
    finally:
        os.close(r)


def test_tls_files_with_a_plaintext_url_are_a_warning(tmp_path: Path) -> None:
    """``tls_ca`` with ``redis://`` looked like TLS and was clear text, with no word."""
    ca = write(tmp_path, "pem", "ca.pem")
    for url, tls in (("redis://10.0.0.5:6379", "rediss"), ("etcd://10.0.0.5:2379", "etcds")):
        cfg = load_config(None, env={"XPRO_STORE_URL": url, "XPRO_STORE_TLS_CA": str(ca)})
        assert cfg.warnings() == (
            f"store.tls_ca is set but store.url is {url.split(':')[0]}://, which does not use "
            f"TLS: the connection is in clear text; use {tls}://",)
        secure = load_config(None, env={"XPRO_STORE_URL": url.replace(url.split(":")[0], tls),
                                        "XPRO_STORE_TLS_CA": str(ca)})
        assert secure.warnings() == ()
