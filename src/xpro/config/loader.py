"""Loading a configuration: TOML file < XPRO_* environment < flags; dumping it."""

from __future__ import annotations

import contextlib
import difflib
import errno
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from xpro.config.kinds import (
    ENV_PREFIX,
    PASSWORD_ENV,
    PATH_ENV,
    PLAINTEXT_SCHEMES,
    FilePath,
    Url,
    _Bad,
    _toml_str,
    _toml_value,
    mask_url,
    read_password_file,
    remember_secret,
    split_url,
)
from xpro.config.schema import (
    _BY_ENV,
    _BY_KEY,
    _SECTION_CLASSES,
    RULES,
    SCHEMA,
    SECTIONS,
    Config,
    Option,
    Secret,
)
from xpro.core.text import printable
from xpro.errors import ConfigError

__all__ = ["U32_MAX", "InvalidConfig", "TomlValue", "default_config", "dumps", "load_config"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


#: A value as TOML holds it (what :meth:`Config.effective_config` returns).
TomlValue = str | int | float | bool | list[str]

U32_MAX = 2**32 - 1



# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


class InvalidConfig(ConfigError):
    """One or more configuration problems; ``problems`` lists each one."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            msg = self.problems[0]
        else:
            msg = f"{len(self.problems)} configuration problems:\n" + "\n".join(
                f"  {p}" for p in self.problems)
        super().__init__(msg)


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _suggest_key(section: str, name: str) -> str:
    """A did-you-mean for ``name`` written in ``section``: a key of that section
    first, then one of the same name (or close) in another section."""
    here = [o.name for o in SCHEMA if o.section == section]
    close = difflib.get_close_matches(name, here, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {section}.{close[0]}?"
    by_name = {o.name: o.key for o in SCHEMA}
    close = difflib.get_close_matches(name, by_name, n=1, cutoff=0.75)
    if close:
        return f"; did you mean {by_name[close[0]]} (in [{by_name[close[0]].split('.')[0]}])?"
    return _suggest(f"{section}.{name}" if section else name, _BY_KEY)


_KEY_LINE = re.compile(r"\s*([A-Za-z0-9_-]+(?:\s*\.\s*[A-Za-z0-9_-]+)*)\s*=")
_TABLE_LINE = re.compile(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")


def _key_lines(text: str) -> dict[str, int]:
    """Where each dotted key is written (bare keys; good enough to point at a line)."""
    out: dict[str, int] = {}
    table = ""
    in_array = 0
    for n, line in enumerate(text.splitlines(), 1):
        if in_array:
            in_array += line.count("[") - line.count("]")
            continue
        if m := _TABLE_LINE.match(line):
            table = m[1]
            out.setdefault(table, n)
            continue
        if m := _KEY_LINE.match(line):
            key = re.sub(r"\s+", "", m[1])
            out.setdefault(f"{table}.{key}" if table else key, n)
            rest = line[m.end():].split("#")[0]
            in_array = max(0, rest.count("[") - rest.count("]"))
    return out


#: The variables click gives the options of the ``xpro store`` commands
#: (``XPRO_STORE_INIT_ADMIN_USER``...): under the ``store`` section's prefix,
#: and not configuration.  Named one by one, so a typo of a store key
#: (``XPRO_STORE_USER_NAME``) is still refused; tests/unit/test_cli.py checks
#: the set against the commands.
COMMAND_ENV_NAMES = frozenset({
    "XPRO_STORE_COMPACT_KEEP_REVISIONS",
    "XPRO_STORE_INIT_ENABLE_AUTH", "XPRO_STORE_INIT_PROXIES", "XPRO_STORE_INIT_SECRETS_DIR",
    "XPRO_STORE_USER_ADD", "XPRO_STORE_USER_DELETE", "XPRO_STORE_USER_PASSWORD_FILE",
    "XPRO_STORE_USER_USER",
})

#: How close (difflib's ratio) an ``XPRO_*`` name outside every section's
#: prefix must be to a configuration variable to be warned about:
#: ``XPRO_THRESHOLD_T_F1`` (0.97) and ``XPRO_SYNC_PERIOD`` spelled
#: ``XPRO_SNYC_PERIOD`` (0.94) are; click's ``XPRO_LAB_RUN_DURATION`` is not.
NEAR_ENV_NAME = 0.85

#: A configuration file is a few kilobytes; more is not one (a device, a log).
MAX_CONFIG_BYTES = 1 << 20


def _read_config(path: Path) -> bytes:
    """The file's bytes: a regular file of at most MAX_CONFIG_BYTES.  Not a
    device (``/dev/zero`` never ends), nor a FIFO or a pipe (one with no
    writer would hang the start; ``--config <(...)`` would be read empty at
    the daemon's next reload, and every live key would go back to its
    default): opened without blocking and refused before a read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file: write the configuration to a "
                                        "file, which a reload reads again")
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_CONFIG_BYTES >> 20} MiB: not a "
                                   "configuration file")
    return data


@dataclass
class _Loader:
    env: Mapping[str, str]
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bases: dict[str, Path | None] = field(default_factory=dict)
    #: Keys some layer gave a bad value: no default, no rule checks.
    broken: set[str] = field(default_factory=set)

    def bad(self, where: str, opt: Option | None, key: str, shown: str, text: str) -> None:
        env = f" ({opt.env})" if opt else ""
        if opt is not None and isinstance(opt.kind, Url):
            shown = mask_url(shown)  # a refused URL may still hold a password
        self.problems.append(f"{where}: {key} = {shown}{env}: {text}")
        self.broken.add(key)

    def set(self, opt: Option, value: Any, source: str, base: Path | None) -> None:
        self.values[opt.key] = value
        self.sources[opt.key] = source
        self.bases[opt.key] = base

    # --- the layers ----------------------------------------------------------

    def file(self, path: Path) -> None:
        try:
            data = _read_config(path)
        except OSError as exc:
            raise InvalidConfig([f"{path}: cannot read the config file ({exc.strerror})"]
                                ) from None
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise InvalidConfig([f"{path}:{line}: not UTF-8 text"]) from None
        try:
            doc = tomllib.loads(text)
        except RecursionError:
            raise InvalidConfig([f"{path}: not valid TOML: arrays or tables nested too "
                                 "deep"]) from None
        except tomllib.TOMLDecodeError as exc:
            msg = str(exc)
            m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
            where = f"{path}:{m[1]}:{m[2]}" if m else str(path)
            msg = msg[: m.start()] if m else msg
            raise InvalidConfig([f"{where}: not valid TOML: {msg}"]) from None
        lines = _key_lines(text)
        base = path.parent

        def at(key: str) -> str:
            n = lines.get(key)
            return f"{path}:{n}" if n else str(path)

        for section, body in doc.items():
            if section not in SECTIONS:
                if isinstance(body, dict):
                    close = difflib.get_close_matches(section, list(SECTIONS), n=1)
                    hint = f"; did you mean [{close[0]}]?" if close else ""
                    self.problems.append(f"{at(section)}: unknown section [{section}]{hint}")
                else:
                    self.problems.append(f"{at(section)}: unknown key {section} at the top "
                                         f"level (keys belong in a section)"
                                         f"{_suggest_key('', section)}")
                continue
            if not isinstance(body, dict):
                self.problems.append(f"{at(section)}: {section} = {_toml_value_safe(body)}: "
                                     f"must be a table [{section}]")
                continue
            for name, raw in body.items():
                key = f"{section}.{name}"
                opt = _BY_KEY.get(key)
                if opt is None:
                    env = f"{ENV_PREFIX}{section.upper()}_{name.upper()}"
                    self.problems.append(f"{at(key)}: unknown key {key} ({env})"
                                         f"{_suggest_key(section, name)}")
                    continue
                try:
                    value = opt.kind.from_toml(raw)
                except _Bad as exc:
                    self.bad(at(key), opt, key, _toml_value_safe(raw), str(exc))
                    continue
                self.set(opt, value, at(key), base)

    def environment(self) -> None:
        prefixes = tuple(f"{ENV_PREFIX}{s.upper()}_" for s in SECTIONS)
        for name in sorted(self.env):
            raw = self.env[name]
            opt = _BY_ENV.get(name)
            if opt is None:
                if name in COMMAND_ENV_NAMES or name in (PASSWORD_ENV, PATH_ENV):
                    continue
                if name.startswith(prefixes):
                    self.problems.append(f"environment: unknown variable {name}"
                                         f"{_suggest(name, _BY_ENV)}")
                elif name.startswith(ENV_PREFIX) and (close := difflib.get_close_matches(
                        name, list(_BY_ENV), n=1, cutoff=NEAR_ENV_NAME)):
                    # Outside every section's prefix the name may be click's or a
                    # plugin's (the prefix is shared): not refused, but said.
                    self.notes.append(f"environment: {name} is not a configuration variable "
                                      f"and is ignored; did you mean {close[0]}?")
                continue
            try:
                value = opt.kind.from_text(raw)
            except _Bad as exc:
                self.bad("environment", opt, opt.key, _toml_str(raw), str(exc))
                continue
            self.set(opt, value, f"env {name}", None)

    def overrides(self, overrides: Mapping[str, str]) -> None:
        for key, raw in overrides.items():
            opt = _BY_KEY.get(key)
            if opt is None:
                self.problems.append(f"command line: unknown key {key}{_suggest(key, _BY_KEY)}")
                continue
            try:
                value = opt.kind.from_text(raw)
            except _Bad as exc:
                self.bad("command line", opt, key, _toml_str(raw), str(exc))
                continue
            self.set(opt, value, "command line", None)

    # --- completing and checking --------------------------------------------

    def finish(self) -> None:
        for key in self.broken:
            self.values.pop(key, None)
        for opt in SCHEMA:
            if opt.key in self.values or opt.key in self.broken:
                continue
            if opt.derive is None:
                self.set(opt, opt.default, "default", None)
        for opt in SCHEMA:
            if opt.key in self.values or opt.key in self.broken or opt.derive is None:
                continue
            try:
                value = opt.derive(self.values)
            except KeyError:
                continue  # what it derives from is invalid: already reported
            try:
                value = opt.kind.from_toml(opt.kind.to_toml(value))
            except _Bad as exc:
                self.bad(f"default ({opt.default_doc})", opt, opt.key, opt.show(value),
                         f"{exc}; set {opt.key}")
                continue
            self.set(opt, value, f"default ({opt.default_doc})", None)
        for opt in SCHEMA:  # paths: relative to their file, then checked
            kind = opt.kind
            if isinstance(kind, FilePath) and self.values.get(opt.key) is not None:
                try:
                    self.values[opt.key] = kind.resolve(self.values[opt.key],
                                                        self.bases.get(opt.key))
                except _Bad as exc:
                    self.bad(self.sources[opt.key], opt, opt.key,
                             opt.show(self.values[opt.key]), str(exc))
                    del self.values[opt.key]
        for rule in RULES:
            if not all(k in self.values for k in rule.keys):
                continue
            detail = rule.check(self.values)
            if detail is None:
                continue
            parts = [f"{k} = {_BY_KEY[k].show(self.values[k])} ({_BY_KEY[k].env}; "
                     f"{self.sources[k]})" for k in rule.keys]
            self.problems.append(f"{', '.join(parts)}: {detail}")

    def note_tls(self) -> None:
        """TLS files given with a plaintext URL look like TLS and are not."""
        tls = [k for k in ("store.tls_ca", "store.tls_cert") if self.values[k] is not None]
        try:
            scheme = split_url(self.values["store.url"]).scheme
        except ValueError:
            return
        if tls and scheme in PLAINTEXT_SCHEMES:
            self.notes.append(f"{tls[0]} is set but store.url is {scheme}://, which does not "
                              f"use TLS: the connection is in clear text; use "
                              f"{PLAINTEXT_SCHEMES[scheme]}://")

    def password(self) -> Secret | None:
        pw = self.env.get(PASSWORD_ENV)
        if pw:
            self.sources["store.password"] = f"env {PASSWORD_ENV}"
            return Secret(pw)
        pf = self.values.get("store.password_file")
        if pf is None:
            return None
        try:
            text = read_password_file(pf)
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not UTF-8 text"
            self.bad(self.sources["store.password_file"], _BY_KEY["store.password_file"],
                     "store.password_file", _toml_str(pf), f"cannot read it ({why})")
            return None
        if not text:
            self.bad(self.sources["store.password_file"], _BY_KEY["store.password_file"],
                     "store.password_file", _toml_str(pf),
                     "its first line is empty (the password is the file's first line)")
            return None
        self.sources["store.password"] = f"file {pf}"
        return Secret(text)


def _toml_value_safe(raw: object) -> str:
    """A bad value as the operator wrote it, for a message (80 characters at most)."""
    try:
        text = _toml_value(raw)
    except (TypeError, RecursionError):  # a date; arrays nested without end
        text = "an array nested too deep" if isinstance(raw, list) else printable(repr(raw))
    return text if len(text) <= 80 else text[:77] + "..."


def load_config(path: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, str] | None = None) -> Config:
    """Read the configuration: defaults < TOML file < ``XPRO_*`` env < ``overrides``.

    ``path`` is the TOML file (``None``: the file named by ``XPRO_CONFIG``,
    if set, else none).  ``env`` defaults to ``os.environ``.  ``overrides``
    maps dotted keys to raw strings, as the command line gives them
    (``{"thresholds.t_f1": "200"}``).  Raises :class:`InvalidConfig` listing
    every problem found.
    """
    env = os.environ if env is None else env
    if path is None and env.get(PATH_ENV):
        path = env[PATH_ENV]
    loader = _Loader(env)
    file = Path(path) if path is not None else None
    if file is not None:
        loader.file(file)
    loader.environment()
    loader.overrides(overrides or {})
    loader.finish()
    password = loader.password()
    url = loader.values.get("store.url")
    if isinstance(url, str):
        with contextlib.suppress(ValueError):
            remember_secret(split_url(url).password)  # scrubbed from logs from now on
    if loader.problems:
        raise InvalidConfig(loader.problems)
    loader.note_tls()
    sections = {
        name: cls(**{o.name: loader.values[o.key] for o in SCHEMA if o.section == name})
        for name, cls in _SECTION_CLASSES.items()
    }
    return Config(**sections, store_password=password,
                  sources=MappingProxyType(dict(loader.sources)),
                  path=file.resolve() if file is not None else None,
                  notes=tuple(loader.notes))


def default_config() -> Config:
    """The configuration with every default (no file, no environment)."""
    return load_config(None, env={})


def dumps(config: Config, *, sources: bool = True) -> str:
    """The effective configuration as TOML text (loadable; secrets left out).

    With ``sources`` each value carries a comment saying where it came from,
    and unset keys are listed as comments.
    """
    lines: list[str] = []
    values = config.effective_config()
    for section in SECTIONS:
        if lines:
            lines.append("")
        lines.append(f"[{section}]")
        for opt in (o for o in SCHEMA if o.section == section):
            if opt.name not in values.get(section, {}):
                if sources:
                    lines.append(f"# {opt.name} = (unset)")
                continue
            text = f"{opt.name} = {_toml_value(values[section][opt.name])}"
            if sources:
                text += f"  # {config.sources.get(opt.key, '')}"
            lines.append(text)
        if section == "store" and sources and config.store_password is not None:
            lines.append(f"# password: set ({config.sources.get('store.password', '')}), "
                         "not shown")
    return "\n".join(lines) + "\n"
