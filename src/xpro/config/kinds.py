"""Kinds of configuration values: how one value is parsed, checked, shown and documented."""

from __future__ import annotations

import difflib
import errno
import ipaddress
import json
import math
import os
import re
import socket
import stat
import threading
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote, unquote

from xpro.core.endpoint import port_number, split_bracketed
from xpro.core.hostnames import canonical_target
from xpro.core.model import Prefix
from xpro.core.text import printable

__all__ = [
    "ENV_PREFIX",
    "HOST_LIST_PORTS",
    "MEMORY_NAME_RE",
    "MIN_REDACTED",
    "PASSWORD_ENV",
    "PATH_ENV",
    "PLAINTEXT_SCHEMES",
    "U32_MAX",
    "Boolean",
    "Choice",
    "FilePath",
    "HostNames",
    "Integer",
    "Kind",
    "Listen",
    "Names",
    "Number",
    "Prefixes",
    "StoreUrl",
    "Text",
    "TomlValue",
    "Url",
    "check_memory_url",
    "mask_url",
    "plaintext_password_warning",
    "read_password_file",
    "read_small_file",
    "redact",
    "remember_secret",
    "split_hosts",
    "split_url",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: Every environment variable of a key starts with this.
ENV_PREFIX = "XPRO_"
#: The store password (never a config key, never shown).
PASSWORD_ENV = "XPRO_STORE_PASSWORD"
#: The config file to read when :func:`load_config` is given no path.
PATH_ENV = "XPRO_CONFIG"

#: A value as TOML holds it (what :meth:`Config.effective_config` returns).
TomlValue = str | int | float | bool | list[str]

U32_MAX = 2**32 - 1



# ---------------------------------------------------------------------------
# Kinds of values: how one value is parsed, checked, shown and documented
# ---------------------------------------------------------------------------


class _Bad(Exception):
    """A value was refused; the text completes "KEY = VALUE (ENV): ..."."""


def _toml_str(s: str) -> str:
    """``s`` as a TOML basic string."""
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(v: object) -> str:
    """A TOML literal for one value (str, bool, int, float or a list of those)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)  # finite: values are validated; repr is valid TOML
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


class Kind(Generic[T]):
    """How one kind of value is read from TOML or text, checked and shown."""

    #: Whether the environment form is a comma-separated list.
    is_list = False

    def from_toml(self, raw: object) -> T:
        raise NotImplementedError

    def from_text(self, text: str) -> T:
        """Parse the string form (an environment variable, a command-line flag)."""
        raise NotImplementedError

    def to_toml(self, value: T) -> TomlValue:
        """The value as TOML holds it; ``load(to_toml(v)) == v``."""
        return typing.cast(TomlValue, value)

    def show(self, value: T) -> str:
        """The value for messages, logs and reprs (secrets masked)."""
        return _toml_value(self.to_toml(value))

    def allowed(self) -> str:
        """What is allowed, completing "must be ..."."""
        raise NotImplementedError

    def type_doc(self) -> str:
        """The type as the reference documents it."""
        raise NotImplementedError

    def range_doc(self) -> str:
        """The range or the choices, for the reference."""
        return ""

    def metavar(self) -> str:
        return "VALUE"


@dataclass(frozen=True)
class Integer(Kind[int]):
    """A whole number from ``lo`` to ``hi`` (an integral float such as 1e6 is accepted)."""

    lo: int
    hi: int
    unit: str = ""
    power_of_two: bool = False

    def type_doc(self) -> str:
        return "integer" + (", a power of two" if self.power_of_two else "")

    def _check(self, x: int) -> int:
        if not self.lo <= x <= self.hi or (self.power_of_two and x & (x - 1)):
            raise _Bad(f"must be {self.allowed()}")
        return x

    def from_toml(self, raw: object) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise _Bad(f"must be {self.allowed()}")
        if isinstance(raw, float):
            if not (math.isfinite(raw) and raw.is_integer()):
                raise _Bad(f"must be {self.allowed()}")
            raw = int(raw)
        return self._check(raw)

    def from_text(self, text: str) -> int:
        t = text.strip().replace("_", "")
        try:
            return self._check(int(t))
        except ValueError:
            pass
        try:
            x = float(t)
        except ValueError:
            raise _Bad(f"must be {self.allowed()}") from None
        return self.from_toml(x)

    def allowed(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        a = "a power of two" if self.power_of_two else "an integer"
        return f"{a} from {self.lo} to {self.hi}{unit}"

    def range_doc(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.lo} to {self.hi}{unit}"

    def metavar(self) -> str:
        return "N"


@dataclass(frozen=True)
class Number(Kind[float]):
    """A real number in a range; ``lo_open`` excludes ``lo`` itself."""

    lo: float
    hi: float
    unit: str = ""
    lo_open: bool = False

    def type_doc(self) -> str:
        return "number" + (" (seconds)" if self.unit == "s" else "")

    def _check(self, x: float) -> float:
        low_ok = x > self.lo if self.lo_open else x >= self.lo
        if not (math.isfinite(x) and low_ok and x <= self.hi):
            raise _Bad(f"must be {self.allowed()}")
        return x

    def from_toml(self, raw: object) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise _Bad(f"must be {self.allowed()}")
        return self._check(float(raw))

    def from_text(self, text: str) -> float:
        try:
            x = float(text.strip().replace("_", ""))
        except ValueError:
            raise _Bad(f"must be {self.allowed()}") from None
        return self._check(x)

    def to_toml(self, value: float) -> TomlValue:
        return float(value)

    def allowed(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.lo_open:
            lo, hi = _fmt_num(self.lo), _fmt_num(self.hi)
            return f"a number greater than {lo} and at most {hi}{unit}"
        return f"a number from {_fmt_num(self.lo)} to {_fmt_num(self.hi)}{unit}"

    def range_doc(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        op = "<" if self.lo_open else "≤"
        return f"{_fmt_num(self.lo)} {op} x ≤ {_fmt_num(self.hi)}{unit}"

    def metavar(self) -> str:
        return "SECONDS" if self.unit == "s" else "X"


@dataclass(frozen=True)
class Choice(Kind[str]):
    """One of a few words."""

    choices: tuple[str, ...]

    def type_doc(self) -> str:
        return "string"

    def from_toml(self, raw: object) -> str:
        if not isinstance(raw, str) or raw not in self.choices:
            hint = ""
            if isinstance(raw, str):
                close = difflib.get_close_matches(raw.lower(), self.choices, n=1)
                hint = f" (did you mean {_toml_str(close[0])}?)" if close else ""
            raise _Bad(f"must be {self.allowed()}{hint}")
        return raw

    def from_text(self, text: str) -> str:
        return self.from_toml(text.strip())

    def allowed(self) -> str:
        names = [_toml_str(c) for c in self.choices]
        return "one of " + ", ".join(names[:-1]) + " or " + names[-1]

    def range_doc(self) -> str:
        return ", ".join(f'``"{c}"``' for c in self.choices)

    def metavar(self) -> str:
        return "|".join(self.choices)


@dataclass(frozen=True)
class Boolean(Kind[bool]):
    _TEXT: typing.ClassVar[dict[str, bool]] = {
        "true": True, "false": False, "1": True, "0": False,
        "yes": True, "no": False, "on": True, "off": False,
    }

    def from_toml(self, raw: object) -> bool:
        if not isinstance(raw, bool):
            raise _Bad(f"must be {self.allowed()}")
        return raw

    def from_text(self, text: str) -> bool:
        try:
            return self._TEXT[text.strip().lower()]
        except KeyError:
            raise _Bad(f"must be {self.allowed()} (or 1/0, yes/no, on/off)") from None

    def allowed(self) -> str:
        return "true or false"

    def type_doc(self) -> str:
        return "boolean"

    def range_doc(self) -> str:
        return "``true``, ``false``"

    def metavar(self) -> str:
        return "true|false"


@dataclass(frozen=True)
class Text(Kind[str]):
    """A string matching ``pattern`` (described by ``what``), and at most
    ``max_bytes`` bytes in UTF-8 when that is given (a kernel name counts
    bytes, the pattern characters)."""

    pattern: str
    what: str
    meta: str = "NAME"
    max_bytes: int | None = None

    def type_doc(self) -> str:
        return "string"

    def from_toml(self, raw: object) -> str:
        if (not isinstance(raw, str) or not re.fullmatch(self.pattern, raw)
                or (self.max_bytes is not None and len(raw.encode()) > self.max_bytes)):
            raise _Bad(f"must be {self.allowed()}")
        return raw

    def from_text(self, text: str) -> str:
        return self.from_toml(text.strip())

    def allowed(self) -> str:
        return self.what

    def range_doc(self) -> str:
        return self.what

    def metavar(self) -> str:
        return self.meta


_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


# ---------------------------------------------------------------------------
# Store URLs and secrets: one parser, one mask, one redaction
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreUrl:
    """A store URL taken apart by :func:`split_url` (user and password decoded)."""

    scheme: str
    username: str | None
    password: str | None
    hosts: str
    path: str
    query: str

    def __repr__(self) -> str:
        pw = "None" if self.password is None else "'***'"
        return (f"StoreUrl(scheme={self.scheme!r}, username={self.username!r}, "
                f"password={pw}, hosts={self.hosts!r}, path={self.path!r}, "
                f"query={self.query!r})")


def _userinfo_span(url: str) -> tuple[int, int]:
    """Where the user information lies: ``(start, at)``, ``url[start:at]``; at < 0 if none.

    The user information is everything from ``://`` to the *last* ``@``, so a
    password may hold ``@``, ``:``, ``/``, ``?`` or ``#`` written as they are
    (percent-encoding works too).  The price: an ``@`` after the host, in an
    option value, must be written ``%40``.  :func:`mask_url` and the stores
    take URLs apart with this same rule, so what is masked is what is sent.
    """
    m = _SCHEME_RE.search(url)  # the first one: also in a quoted or prefixed text
    start = m.end() if m else 0
    at = url.rfind("@")
    return start, (at if at >= start else -1)


def split_url(url: str) -> StoreUrl:
    """``SCHEME://[USER[:PASSWORD]@]HOSTS[/PATH][?QUERY]`` taken apart.

    ``HOSTS`` is everything up to the first ``/``, ``?`` or ``#`` after the
    user information (``host:port``, ``[v6]:port``, comma-separated lists:
    each store reads its own).  User and password are percent-decoded; a
    ``%`` in a password must be written ``%25``.  Raises ValueError when the
    URL has no scheme.
    """
    m = _SCHEME_RE.match(url)
    if m is None:
        raise ValueError("a store URL starts with SCHEME://")
    start, at = _userinfo_span(url)
    username = password = None
    rest = url[start:]
    if at >= 0:
        user, sep, pw = url[start:at].partition(":")
        username = unquote(user) or None
        password = unquote(pw) if sep else None
        rest = url[at + 1:]
    rest = rest.split("#", 1)[0]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    hosts, tail = rest[:cut], rest[cut:]
    path, _, query = tail.partition("?")
    return StoreUrl(m[1].lower(), username, password or None, hosts, path, query)


#: Built-in schemes whose host list is ``HOST[:PORT],...``, and their default port.
HOST_LIST_PORTS = {"redis": 6379, "rediss": 6379, "redis+cluster": 6379,
                   "rediss+cluster": 6379, "etcd": 2379, "etcds": 2379}

#: The name in ``memory://NAME``: the stores of one process by that name share state.
MEMORY_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{0,200}")


def check_memory_url(parts: StoreUrl) -> None:
    """Raise ValueError unless ``parts`` is ``memory://`` or ``memory://NAME``
    (no user, password, path or port: nothing there would be used)."""
    if (parts.username or parts.password or parts.path not in ("", "/")
            or not MEMORY_NAME_RE.fullmatch(parts.hosts)):
        raise ValueError("use memory:// or memory://NAME (letters, digits, '_', '.', '-'; "
                         "no user, password, port or path)")


def split_hosts(hosts: str, default_port: int) -> list[tuple[str, int]]:
    """The ``HOST[:PORT]`` and ``[V6][:PORT]`` items of a URL's host list
    (comma-separated; empty items skipped).  Raises ValueError naming the
    item when a port is not a number in 1-65535 or a bracket is not closed."""
    out: list[tuple[str, int]] = []
    for raw in hosts.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.startswith("["):
            host, port_s = split_bracketed(item)
        else:
            host, sep, port_s = item.partition(":")
            port_s = port_s if sep else None
        try:
            out.append((host, default_port if not port_s else port_number(port_s)))
        except ValueError as exc:
            raise ValueError(f"{exc}, in {printable(item, 80)!r}") from None
    return out


def mask_url(url: str) -> str:
    """``url`` with its password, whatever it holds, replaced by ``***``.

    The user name stays (it is not a secret); a URL without a password comes
    back unchanged.
    """
    start, at = _userinfo_span(url)
    if at < 0:
        return url
    user, sep, _ = url[start:at].partition(":")
    if not sep:
        return url
    return f"{url[:start]}{user}:***{url[at:]}"


#: Secrets shorter than this are not scrubbed from free text: every such
#: substring of a log line would go (and a password that short is no secret).
MIN_REDACTED = 4


class _Redactor:
    """The secrets of this process, in every form they take in text."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.forms: tuple[str, ...] = ()

    def add(self, value: str) -> None:
        forms = {value, quote(value, safe=""), quote(value), json.dumps(value)[1:-1],
                 repr(value)[1:-1], value.encode("unicode_escape").decode("ascii"),
                 printable(value)}
        with self.lock:  # longest first: a form inside another goes with it
            self.forms = tuple(sorted(set(self.forms) | forms, key=len, reverse=True))


_REDACTOR = _Redactor()


def remember_secret(value: str | None) -> None:
    """Scrub ``value`` from everything :func:`redact` sees, from now on, in this process.

    Every :class:`~xpro.config.Secret` and every password a store is given
    calls this, so log lines, tracebacks, error messages and replies of the
    control socket never carry it, in any of the forms it takes in text:
    as is, percent-encoded, escaped for JSON, for ``repr`` or for a text log
    (:func:`xpro.core.text.printable`).
    """
    if value and len(value) >= MIN_REDACTED:
        _REDACTOR.add(value)


def redact(text: str) -> str:
    """``text`` with every remembered secret replaced by ``***``."""
    for form in _REDACTOR.forms:
        if form in text:
            text = text.replace(form, "***")
    return text


#: The largest secret or certificate file read (a PEM chain is a few KiB).
SMALL_FILE_MAX = 1 << 20


def read_small_file(path: str | os.PathLike[str], limit: int = SMALL_FILE_MAX) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.  A FIFO, a
    device (``/dev/zero``) or a directory raises OSError at once instead of
    blocking or reading without end; so does a larger file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                return data
            data += chunk
        raise OSError(errno.EFBIG, f"larger than {limit} bytes")
    finally:
        os.close(fd)


def read_password_file(path: str | os.PathLike[str]) -> str:
    """The password in a password file: its first line (without its line end),
    "" if there is none.  A second line (a comment, a note) is not part of it.
    Raises OSError (also for what is not a regular file of at most 1 MiB) or
    UnicodeDecodeError (not UTF-8) for the caller to word."""
    return read_small_file(path).decode().split("\n", 1)[0].rstrip("\r")


#: Schemes that send the password in clear text, and the TLS scheme to use instead.
PLAINTEXT_SCHEMES = {"redis": "rediss", "redis+cluster": "rediss+cluster", "etcd": "etcds"}


def plaintext_password_warning(url: str, has_password: bool) -> str | None:
    """The warning for a password sent over a plaintext store URL, or None."""
    try:
        scheme = split_url(url).scheme
    except ValueError:
        return None
    tls = PLAINTEXT_SCHEMES.get(scheme)
    if not has_password or tls is None:
        return None
    return (f"store {mask_url(url)}: the store password goes over {scheme}:// in clear "
            f"text, so anyone on the path can read it and then write to the mesh; use "
            f"{tls}:// (TLS, with store.tls_ca) -- see the Security page of the docs")


@dataclass(frozen=True)
class Url(Kind[str]):
    def type_doc(self) -> str:
        return "string (URL)"

    def from_toml(self, raw: object) -> str:
        # The password may hold anything but a line break; the rest no white space.
        if not isinstance(raw, str) or "\n" in raw or not _URL_RE.fullmatch(mask_url(raw)):
            raise _Bad(f"must be {self.allowed()}")
        parts = split_url(raw)
        try:  # a plugin's scheme is the plugin's to check
            if parts.scheme in HOST_LIST_PORTS:
                split_hosts(parts.hosts, HOST_LIST_PORTS[parts.scheme])
            elif parts.scheme == "memory":
                check_memory_url(parts)
        except ValueError as exc:
            raise _Bad(str(exc)) from None
        return raw

    def from_text(self, text: str) -> str:
        return self.from_toml(text.strip())

    def show(self, value: str) -> str:
        return _toml_str(mask_url(value))

    def allowed(self) -> str:
        return ('a store URL SCHEME://..., such as "memory://", "redis://HOST:6379", '
                '"redis+cluster://HOST:7000" or "etcd://HOST:2379"')

    def range_doc(self) -> str:
        return ("``memory://``, ``redis[s]://``, ``redis[s]+cluster://``, ``etcd[s]://``, "
                "or a plugin's scheme")

    def metavar(self) -> str:
        return "URL"


def _inet_aton_reads(host: str) -> bool:
    """Whether the C resolver takes ``host`` for an IPv4 address in one of its
    old forms (a number, hex, octal, fewer than four parts)."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*")


@dataclass(frozen=True)
class Listen(Kind[str]):
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6), or "" for off."""

    def type_doc(self) -> str:
        return "string"

    def from_toml(self, raw: object) -> str:
        if not isinstance(raw, str):
            raise _Bad(f"must be {self.allowed()}")
        if raw == "":
            return raw
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", raw)
        if m is None:
            raise _Bad(f"must be {self.allowed()}")
        host, port = (m[1], m[2]) if m[1] else (m[3], m[4])
        try:
            if m[1]:
                ipaddress.IPv6Address(host)
            elif _inet_aton_reads(host) or not _HOST_RE.fullmatch(host):
                # What the resolver reads as an IPv4 address must be one in
                # dotted quads: it reads "0" and "0x0" as 0.0.0.0 (every
                # interface), "1.2.3" as 1.2.0.3.
                ipaddress.IPv4Address(host)
        except ValueError:
            if not m[1] and _inet_aton_reads(host):
                read = socket.inet_ntoa(socket.inet_aton(host))
                raise _Bad(f"{_toml_str(host)} is not an IPv4 address written a.b.c.d: the "
                           f"resolver reads it as {read}") from None
            raise _Bad(f"must be {self.allowed()}") from None
        if not 1 <= int(port) <= 65535:
            raise _Bad(f"must be {self.allowed()} (the port from 1 to 65535)")
        return raw

    def from_text(self, text: str) -> str:
        return self.from_toml(text.strip())

    def allowed(self) -> str:
        return 'an address "HOST:PORT" ("[ADDR]:PORT" for IPv6), or "" to turn it off'

    def range_doc(self) -> str:
        return '``"HOST:PORT"``, ``"[ADDR]:PORT"``, ``""`` (off)'

    def metavar(self) -> str:
        return "HOST:PORT"


@dataclass(frozen=True)
class FilePath(Kind[str]):
    """A path; relative ones are taken from the config file's directory.

    ``must_exist`` checks at load time that it names a readable file;
    ``max_len`` bounds it (a unix socket path fits in ``sun_path``).
    """

    must_exist: bool = False
    max_len: int = 4095
    off: str = ""  # what ``""`` means, when the empty string turns the feature off

    def type_doc(self) -> str:
        return "string (path)"

    def from_toml(self, raw: object) -> str:
        if not isinstance(raw, str) or (not raw and not self.off) or "\0" in raw:
            raise _Bad(f"must be {self.allowed()}")
        return raw

    def from_text(self, text: str) -> str:
        return self.from_toml(text.strip())

    def resolve(self, value: str, base: Path | None) -> str:
        if not value and self.off:
            return value
        try:
            p = Path(value).expanduser()
        except RuntimeError as exc:  # ~user with no such user, ~ with no home
            raise _Bad(f"cannot expand {value.split('/', 1)[0]!r} ({exc}): write the "
                       "path out") from None
        if not p.is_absolute():
            p = (base or Path.cwd()) / p
        s = os.path.normpath(p)
        if len(os.fsencode(s)) > self.max_len:
            raise _Bad(f"must be {self.allowed()}")
        if self.must_exist:
            why = ("no such file" if not os.path.exists(s)
                   else "not a regular file" if not os.path.isfile(s)
                   else "not readable" if not os.access(s, os.R_OK) else "")
            if why:
                raise _Bad(f"{why}: {printable(s)}")
        return s

    def allowed(self) -> str:
        a = "a readable file" if self.must_exist else "a path"
        off = f', or "" ({self.off})' if self.off else ""
        return f"{a} of at most {self.max_len} bytes{off}"

    def range_doc(self) -> str:
        extra = ", must exist" if self.must_exist else ""
        off = f'; ``""``: {self.off}' if self.off else ""
        return f"absolute, or relative to the config file{extra}{off}"

    def metavar(self) -> str:
        return "PATH"


@dataclass(frozen=True)
class _StringList(Kind[tuple[str, ...]]):
    """A list of strings: a TOML array, or comma-separated text; each kind
    checks and normalises the items in ``_many``."""

    is_list = True

    def _many(self, items: Sequence[str]) -> tuple[str, ...]:
        raise NotImplementedError

    def from_toml(self, raw: object) -> tuple[str, ...]:
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise _Bad(f"must be {self.allowed()}")
        return self._many(raw)

    def from_text(self, text: str) -> tuple[str, ...]:
        return self._many([t.strip() for t in text.split(",") if t.strip()])

    def to_toml(self, value: tuple[str, ...]) -> TomlValue:
        return list(value)


@dataclass(frozen=True)
class Prefixes(_StringList):
    """A list of IPv4/IPv6 prefixes, kept in normal form ("10.0.0.0/8")."""

    def type_doc(self) -> str:
        return "list of strings (prefixes)"

    @staticmethod
    def _one(text: str) -> tuple[str, Prefix]:
        t = text.strip()
        if "%" in t:
            raise _Bad(f"{_toml_str(text)} has a zone: a prefix matches addresses on every "
                       "interface (write it without %ZONE)")
        try:
            net = ipaddress.ip_network(t, strict=False)
            prefix = Prefix.parse(t)
        except ValueError:
            raise _Bad(f"{_toml_str(text)} is not an IP prefix (write it as 10.0.0.0/8, "
                       "192.0.2.7 or 2001:db8::/32)") from None
        try:
            ipaddress.ip_network(t, strict=True)
        except ValueError:
            raise _Bad(f"{_toml_str(text)} has host bits set (did you mean "
                       f"{_toml_str(str(net))}?)") from None
        return str(net), prefix

    def _many(self, items: Sequence[str]) -> tuple[str, ...]:
        out: list[str] = []
        seen: set[Prefix] = set()
        bad: list[str] = []
        for i, item in enumerate(items):
            try:
                text, prefix = self._one(item)
            except _Bad as exc:
                bad.append(f"item {i + 1}: {exc}")
                continue
            if prefix in seen:
                bad.append(f"item {i + 1}: {_toml_str(item)} is listed twice")
            seen.add(prefix)
            out.append(text)
        if bad:
            raise _Bad("; ".join(bad))
        return tuple(out)

    def allowed(self) -> str:
        return 'a list of prefixes such as ["10.0.0.0/8", "2001:db8::/32"]'

    def range_doc(self) -> str:
        return "IPv4 or IPv6 prefixes; a bare address is a /32 or /128"

    def metavar(self) -> str:
        return "PREFIX,..."


_IFNAME_RE = re.compile(r"[^\s/:]{1,15}")


@dataclass(frozen=True)
class Names(_StringList):
    """A list of network interface names (or of other names of the same form:
    ``noun``, ``meta`` and ``example`` say which, in messages and help)."""

    noun: str = "interface name"
    meta: str = "IFNAME"
    example: str = '["eth0", "eth1"]'

    def type_doc(self) -> str:
        return "list of strings"

    def _many(self, items: Sequence[str]) -> tuple[str, ...]:
        bad = [f"item {i + 1}: {_toml_str(x)} is not {_a(self.noun)} (1-15 characters, "
               "no space, '/' or ':')" for i, x in enumerate(items)
               if not (_IFNAME_RE.fullmatch(x) and len(x.encode()) <= 15)]
        seen: set[str] = set()
        for i, x in enumerate(items):
            if x in seen:
                bad.append(f"item {i + 1}: {_toml_str(x)} is listed twice")
            seen.add(x)
        if bad:
            raise _Bad("; ".join(bad))
        return tuple(items)

    def allowed(self) -> str:
        return f"a list of {self.noun}s such as {self.example}"

    def range_doc(self) -> str:
        return f"{self.noun}s (1-15 characters)"

    def metavar(self) -> str:
        return f"{self.meta},..."


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


@dataclass(frozen=True)
class HostNames(_StringList):
    """A list of destination names (``host`` or ``host:port``), kept in canonical form
    (:func:`xpro.core.hostnames.canonical_target`: case-folded, no trailing dot,
    percent-decoded, UTS #46, the port left out when it is ``default_port``)."""

    default_port: int
    def type_doc(self) -> str:
        return "list of strings (host names)"

    def _many(self, items: Sequence[str]) -> tuple[str, ...]:
        out: list[str] = []
        first: dict[str, int] = {}
        bad: list[str] = []
        for i, item in enumerate(items):
            name = canonical_target(item, self.default_port)
            if name is None:
                bad.append(f"item {i + 1}: {_toml_str(item)} is not a host name or "
                           'address with an optional port (write it as "svc.example", '
                           f'"svc.example:{self.default_port + 1}" or "[2001:db8::1]")')
                continue
            if name in first:
                bad.append(f"item {i + 1}: {_toml_str(item)} is the same name as item "
                           f"{first[name] + 1} (both are {_toml_str(name)})")
                continue
            first[name] = i
            out.append(name)
        if bad:
            raise _Bad("; ".join(bad))
        return tuple(out)

    def allowed(self) -> str:
        return 'a list of host names such as ["svc.example", "[2001:db8::1]:5684"]'

    def range_doc(self) -> str:
        return (f"host names or addresses, each with an optional port ({self.default_port} "
                "when none is given); kept in canonical form")

    def metavar(self) -> str:
        return "NAME,..."
