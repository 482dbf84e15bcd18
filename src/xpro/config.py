"""xpro's configuration: one schema, four layers, one error report.

The schema is the typed section classes below: every field is declared once
with :func:`option` (its kind, default, description and the reason for the
default).  Everything else comes from it: the defaults, TOML parsing, the
``XPRO_<SECTION>_<KEY>`` environment variables, command-line overrides, the
validation messages, :meth:`Config.effective_config`, and the reference page
of the documentation (``docs/_ext/xpro_config.py``).

Layers, later ones win::

    defaults  <  TOML file  <  XPRO_* environment  <  command line

:func:`load_config` reads every layer, checks every value and every rule
between values, and raises one :class:`InvalidConfig` that lists every
problem found (the key as written in TOML, its environment variable, the bad
value and what is allowed), not just the first.  A :class:`Config` is
immutable; the runtime objects come from :meth:`Config.filter_params`,
:meth:`Config.sync_params` and :meth:`Config.sizes`.

The store password is never a config key: it comes from
``XPRO_STORE_PASSWORD`` or from the file named by ``store.password_file``, is
held as a :class:`Secret`, and is masked in every output.
"""

from __future__ import annotations

import dataclasses
import difflib
import hmac
import inspect
import ipaddress
import math
import os
import re
import socket
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from xpro.errors import ConfigError
from xpro.kernel import Sizes
from xpro.layout import (
    DST_ADDR,
    DST_ADDR_PORT,
    MALFORMED_DROP,
    MALFORMED_PASS,
    MODE_ENFORCE,
    MODE_MONITOR,
)
from xpro.model import NS_PER_S, R_DEN, FilterParams, Prefix, SyncParams

__all__ = [
    "ENV_PREFIX",
    "PASSWORD_ENV",
    "PATH_ENV",
    "RULES",
    "SCHEMA",
    "SECTIONS",
    "Change",
    "Config",
    "ControlConfig",
    "FilterConfig",
    "Flag",
    "InvalidConfig",
    "Kind",
    "MetricsConfig",
    "Option",
    "ProxyConfig",
    "Rule",
    "Secret",
    "StoreConfig",
    "SyncConfig",
    "TablesConfig",
    "ThresholdsConfig",
    "cli_flags",
    "click_options",
    "default_config",
    "dumps",
    "load_config",
    "mask_url",
    "overrides_from_click",
    "seconds_to_ns",
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
    """A string matching ``pattern`` (described by ``what``)."""

    pattern: str
    what: str

    def type_doc(self) -> str:
        return "string"

    def from_toml(self, raw: object) -> str:
        if not isinstance(raw, str) or not re.fullmatch(self.pattern, raw):
            raise _Bad(f"must be {self.allowed()}")
        return raw

    def from_text(self, text: str) -> str:
        return self.from_toml(text.strip())

    def allowed(self) -> str:
        return self.what

    def range_doc(self) -> str:
        return self.what

    def metavar(self) -> str:
        return "NAME"


_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_URL_PASSWORD_RE = re.compile(r"(?<=://)([^:/@]*):([^@/]*)@")


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return _URL_PASSWORD_RE.sub(r"\1:***@", url)


@dataclass(frozen=True)
class Url(Kind[str]):
    def type_doc(self) -> str:
        return "string (URL)"

    def from_toml(self, raw: object) -> str:
        if not isinstance(raw, str) or not _URL_RE.fullmatch(raw):
            raise _Bad(f"must be {self.allowed()}")
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
            elif not _HOST_RE.fullmatch(host):
                ipaddress.IPv4Address(host)
        except ValueError:
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
        p = Path(value).expanduser()
        if not p.is_absolute():
            p = (base or Path.cwd()) / p
        s = os.path.normpath(p)
        if len(s.encode()) > self.max_len:
            raise _Bad(f"must be {self.allowed()}")
        if self.must_exist and not os.access(s, os.R_OK):
            why = "no such file" if not os.path.exists(s) else "not readable"
            raise _Bad(f"{why}: {s}")
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
class Prefixes(Kind[tuple[str, ...]]):
    """A list of IPv4/IPv6 prefixes, kept in normal form ("10.0.0.0/8")."""

    is_list = True

    def type_doc(self) -> str:
        return "list of strings (prefixes)"

    @staticmethod
    def _one(text: str) -> tuple[str, Prefix]:
        t = text.strip()
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

    def from_toml(self, raw: object) -> tuple[str, ...]:
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise _Bad(f"must be {self.allowed()}")
        return self._many(raw)

    def from_text(self, text: str) -> tuple[str, ...]:
        return self._many([t for t in text.split(",") if t.strip()])

    def to_toml(self, value: tuple[str, ...]) -> TomlValue:
        return list(value)

    def allowed(self) -> str:
        return 'a list of prefixes such as ["10.0.0.0/8", "2001:db8::/32"]'

    def range_doc(self) -> str:
        return "IPv4 or IPv6 prefixes; a bare address is a /32 or /128"

    def metavar(self) -> str:
        return "PREFIX,..."


_IFNAME_RE = re.compile(r"[^\s/:]{1,15}")


@dataclass(frozen=True)
class Names(Kind[tuple[str, ...]]):
    """A list of network interface names."""

    is_list = True

    def type_doc(self) -> str:
        return "list of strings"

    def _many(self, items: Sequence[str]) -> tuple[str, ...]:
        bad = [f"item {i + 1}: {_toml_str(x)} is not an interface name (1-15 characters, "
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

    def from_toml(self, raw: object) -> tuple[str, ...]:
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise _Bad(f"must be {self.allowed()}")
        return self._many(raw)

    def from_text(self, text: str) -> tuple[str, ...]:
        return self._many([t.strip() for t in text.split(",") if t.strip()])

    def to_toml(self, value: tuple[str, ...]) -> TomlValue:
        return list(value)

    def allowed(self) -> str:
        return 'a list of interface names such as ["eth0", "eth1"]'

    def range_doc(self) -> str:
        return "interface names (1-15 characters)"

    def metavar(self) -> str:
        return "IFNAME,..."


# ---------------------------------------------------------------------------
# The schema
# ---------------------------------------------------------------------------

_SPEC = "xpro.config"


@dataclass(frozen=True)
class _Spec:
    kind: Kind[Any]
    default: Any
    doc: str
    why: str
    derive: Callable[[Mapping[str, Any]], Any] | None
    default_doc: str
    flag: str
    live: bool


def option(kind: Kind[Any], default: Any = None, *, doc: str, why: str = "",
           derive: Callable[[Mapping[str, Any]], Any] | None = None, default_doc: str = "",
           flag: str = "", live: bool = True) -> Any:
    """Declare one key of a section (the only place a key is declared).

    ``default`` is the value when no layer sets it; ``None`` means unset
    (optional paths).  ``derive`` computes a default from the other values
    (``default_doc`` then says how).  ``why`` justifies the default in the
    reference.  ``flag`` names the command-line flag (``--section-key`` if
    empty).  ``live`` says whether a reload applies it to a running daemon
    (else it takes a restart).
    """
    return field(metadata={_SPEC: _Spec(kind, default, inspect.cleandoc(doc),
                                        inspect.cleandoc(why), derive, default_doc, flag, live)})


def _seconds(lo: float, hi: float) -> Number:
    return Number(lo, hi, "s")


_PPS = Integer(0, U32_MAX, "packets/s")


class _Section:
    """Shared behaviour of the section classes: a masked repr."""

    def __repr__(self) -> str:
        name = type(self).__name__
        parts = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            spec: _Spec = f.metadata[_SPEC]
            v = getattr(self, f.name)
            parts.append(f"{f.name}={'None' if v is None else spec.kind.show(v)}")
        return f"{name}({', '.join(parts)})"


@dataclass(frozen=True, repr=False)
class ThresholdsConfig(_Section):
    """The paper's thresholds (Algorithm 1 and 2), under the paper's names.

    Times are seconds, rates are packets per second.  Every threshold can be
    changed at run time (``xpro config reload``): the program keeps its state.
    """

    t_t1: float = option(
        _seconds(0.01, 86400), 10.0, flag="--t-t1",
        doc="""T_T1, the reset time: a flow (or destination) idle for longer
        than this starts a new window; the sync also lets a proxy's window
        replace the master's when it starts more than T_T1 later.""",
        why="""Long enough that a client's pauses between bursts (think time,
        retries) stay in one window, short enough that a source is forgotten
        within seconds once it stops.  Ten sync periods: a window spans
        several syncs, so every proxy's count reaches it.""")
    t_t2: float = option(
        _seconds(0.01, 86400), 1.0, flag="--t-t2",
        doc="""T_T2, the per-source measuring time: a source's rate is judged
        only once its window is longer than this.""",
        why="""A burst is not a rate: a handshake and a request, or a page
        with its objects, come within a second and must not be judged as a
        flood.  One second is also hundreds of ticks of the coarse kernel
        clock (1-4 ms), so its resolution does not matter.""")
    t_t3: float = option(
        _seconds(0.01, 86400), 1.0, flag="--t-t3",
        doc="""T_T3, the per-destination measuring time: a destination's
        aggregate rate is judged only once its window is longer than this.""",
        why="As T_T2, for the sum over the destination's sources.")
    t_t4: float = option(
        _seconds(0.01, 86400), 5.0, flag="--t-t4",
        doc="""T_T4, the window limit of the sync: a merged window longer than
        this is shortened by the factor r (and its master count divided by
        r), so old packets weigh less and less.""",
        why="""Keeps the rate a moving measure of the last few seconds: a
        source that flooded and stopped is judged on what it does now within
        seconds.  Several sync periods, so shortening happens on a window
        that every proxy has contributed to.""")
    t_f1: int = option(
        _PPS, 100, flag="--t-f1",
        doc="""T_F1, the per-source limit: a source sending faster than this
        to one destination key (over a window longer than T_T2, summed over
        every proxy) is dropped.""",
        why="""A client of a request/response service (an HTTP API, DNS,
        CoAP) sends far fewer than 100 packets/s to one address, while one
        bot of a flood sends thousands.  Raise it for services that many
        users reach through one NAT address, or that serve bulk downloads:
        a client acknowledges about every second segment, so 100 packets/s
        caps a TCP download near 2 Mbit/s.""")
    t_f2: int = option(
        _PPS, 10_000, flag="--t-f2",
        doc="""T_F2, the per-destination limit: when the packets admitted to
        one destination key (from all sources, over a window longer than
        T_T3, summed over every proxy) exceed this rate, further packets to
        it are dropped.""",
        why="""Set it to what the service behind the proxies can take.  Ten
        thousand packets/s is a hundred clients at the full per-source rate;
        a spoofed flood of many sources, each under T_F1, is stopped here.""")
    t_w: int = option(
        Integer(1, 10**12, "packets/s"), 1_000_000, flag="--t-w",
        doc="""T_W, the workload limit of a proxy: when the packets per second
        its program sees (dropped ones included) exceed it, the proxy raises
        an overload alert.""",
        why="""About a quarter of what one core drops with native XDP: well
        before a proxy saturates, the operator hears that it is taking a
        flood and can add proxies.""")
    r: float = option(
        Number(1.0, 1000.0, lo_open=True), 2.0, flag="--r",
        doc="""r, the shortening factor of the sync (> 1): a window longer than
        T_T4 keeps 1/r of its length, and the master count is divided by r.""",
        why="""Halving is the paper's example: history decays fast enough to
        forgive a source that stopped, and slowly enough that a steady flood
        stays over the limit.""")


@dataclass(frozen=True, repr=False)
class SyncConfig(_Section):
    """The sync (Algorithm 1): how often a proxy merges with the master store."""

    period: float = option(
        _seconds(0.05, 60), 1.0, flag="--sync-period",
        doc="""Seconds between two sync rounds.  Each round publishes this
        proxy's workload and merges the flows that changed.""",
        why="""A flood spread over many proxies is seen everywhere within about
        a second, and a round costs only the records that changed (a few
        hundred thousand a second on one Redis).""")
    ttl: float = option(
        _seconds(1, 7 * 86400), 60.0, flag="--sync-ttl",
        doc="""Seconds a record may stay idle before it is removed from the
        maps and the master.  Must exceed ``thresholds.t_t1`` and
        ``sync.period``.""",
        why="""An idle record older than T_T1 starts a new window anyway, so it
        only has to outlive T_T1; a minute keeps recent flows visible to
        ``xpro flows`` and ``xpro explain`` and keeps the master small.""")


@dataclass(frozen=True, repr=False)
class FilterConfig(_Section):
    """What the XDP program does with the packets (the Semantics page says how)."""

    mode: Literal["enforce", "monitor"] = option(
        Choice(("enforce", "monitor")), "enforce", flag="--mode",
        doc="""``enforce`` drops what breaks a limit; ``monitor`` counts it
        (``mon_src_rate``, ``mon_dst_rate``) and passes it.  Destination
        prefixes in ``monitor``/``enforce`` override it.""",
        why="""A filter is installed to filter.  Roll new thresholds out in
        monitor mode first, watch ``xpro status``, then switch.""")
    destination: Literal["addr", "addr+port"] = option(
        Choice(("addr", "addr+port")), "addr", flag="--destination",
        doc="""The destination key of a flow: the address, or the address plus
        protocol and port (one service behind the proxy).""",
        why="""A flood against any port of a host loads the same host; one key
        per address also keeps the tables small.""")
    malformed: Literal["drop", "pass"] = option(
        Choice(("drop", "pass")), "drop", flag="--malformed",
        doc="Truncated or malformed IP packets: drop (and count) or pass (and count).",
        why="No legitimate stack sends them, and the host behind would drop them anyway.")
    allow: tuple[str, ...] = option(
        Prefixes(), (), flag="--allow",
        doc="""Source prefixes that always pass, before any other rule (and win
        over ``deny``).""",
        why="Empty: an empty list costs nothing per packet.")
    deny: tuple[str, ...] = option(
        Prefixes(), (), flag="--deny",
        doc="Source prefixes that are always dropped (also in monitor mode).",
        why="Empty: an empty list costs nothing per packet.")
    monitor: tuple[str, ...] = option(
        Prefixes(), (), flag="--monitor",
        doc="""Destination prefixes in monitor mode whatever ``mode`` says (a
        service being rolled out).""",
        why="Empty: ``mode`` applies to every destination.")
    enforce: tuple[str, ...] = option(
        Prefixes(), (), flag="--enforce",
        doc="Destination prefixes in enforce mode whatever ``mode`` says.",
        why="Empty: ``mode`` applies to every destination.")
    events: bool = option(
        Boolean(), True, flag="--events",
        doc="""Send overload warnings from the program to the daemon (ring
        buffer), which turns them into alerts.""",
        why="Operators want to hear of a flood; warnings are rate-limited by ``warn_period``.")
    warn_period: float = option(
        _seconds(0.01, 3600), derive=lambda v: v["sync.period"], default_doc="sync.period",
        flag="--warn-period",
        doc="""At most one overload warning per flow (or destination) per this
        many seconds, so an attack cannot become an event storm.""",
        why="""One warning per flow per sync round: each round can report what
        it saw, no more.""")


@dataclass(frozen=True, repr=False)
class TablesConfig(_Section):
    """Sizes of the kernel maps, fixed when the program loads (a restart changes them)."""

    flows: int = option(
        Integer(1024, 1 << 27, "flows"), 1 << 20, flag="--tables-flows", live=False,
        doc="""Entries of the flow table (an LRU hash; the sync's side tables
        are sized alike).  A spoofed flood evicts old flows; it never blocks
        the program.  The memory is taken when the program loads.""",
        why="""A million flows cover the active sources of a large service and
        cost about 400 MB of kernel memory with the sync's tables (measured
        on this build: 160 bytes per entry in the flow table).  Size it above
        the number of active flows: a thrashing LRU costs about six times a
        hit.""")
    destinations: int = option(
        Integer(64, 1 << 24, "destinations", power_of_two=True), 1 << 16,
        flag="--tables-destinations", live=False,
        doc="Entries of the per-destination aggregate table (a power of two).",
        why="""Sixty-five thousand destination keys: a /16 of protected
        addresses, or many services in ``addr+port`` mode.""")
    prefixes: int = option(
        Integer(1, 1 << 20, "prefixes"), 16384, flag="--tables-prefixes", live=False,
        doc="""Entries of each prefix table (allow, deny, destination policy):
        the most prefixes each list may hold.""",
        why="Room for large imported deny lists; an LPM trie grows only as it is filled.")


@dataclass(frozen=True, repr=False)
class StoreConfig(_Section):
    """The master store the proxies share.

    The password is not a key: it comes from ``XPRO_STORE_PASSWORD`` or from
    the file named by ``password_file``, and is never shown.
    """

    url: str = option(
        Url(), "memory://", flag="--store", live=False,
        doc="""Where the master records live: ``memory://`` (in this process),
        ``redis://HOST:PORT``, ``rediss://`` (TLS), ``redis+cluster://``,
        ``etcd://HOST:PORT[,HOST:PORT...]``.""",
        why="""Runs out of the box as a single proxy; a mesh of proxies needs a
        shared store (Redis for large meshes).""")
    mesh: str = option(
        Text(r"[A-Za-z0-9_.-]{1,64}", "1-64 letters, digits, '_', '.' or '-'"), "xpro",
        flag="--mesh", live=False,
        doc="""The mesh's name: the namespace of its records in the store, so
        several meshes can share one store.""",
        why="One mesh per store is the common case.")
    password_file: str | None = option(
        FilePath(must_exist=True), flag="--store-password-file", live=False,
        doc="""A file holding the store password (one line, read at load).
        ``XPRO_STORE_PASSWORD`` wins over it.""",
        why="Unset: no password.")
    tls_ca: str | None = option(
        FilePath(must_exist=True), flag="--store-tls-ca", live=False,
        doc="CA certificates (PEM) to verify the store's certificate with.",
        why="Unset: the system's CA store.")
    tls_cert: str | None = option(
        FilePath(must_exist=True), flag="--store-tls-cert", live=False,
        doc="Client certificate (PEM), with ``tls_key``.",
        why="Unset: no client certificate.")
    tls_key: str | None = option(
        FilePath(must_exist=True), flag="--store-tls-key", live=False,
        doc="Private key (PEM) of ``tls_cert``.",
        why="Unset: no client certificate.")
    tls_verify: bool = option(
        Boolean(), True, flag="--store-tls-verify", live=False,
        doc="Verify the store's certificate and host name (TLS URLs).",
        why="Turning it off lets anyone on the path impersonate the store.")


_PROXY_NAME = Text(r"[A-Za-z0-9_.-]{1,64}", "1-64 letters, digits, '_', '.' or '-'")


@dataclass(frozen=True, repr=False)
class ProxyConfig(_Section):
    """This proxy: its name in the mesh, where it attaches, how it stops."""

    name: str = option(
        _PROXY_NAME, derive=lambda v: socket.gethostname().split(".")[0],
        default_doc="the short host name", flag="--name", live=False,
        doc="This proxy's name in the mesh (heartbeats, ``xpro status``).  Unique per mesh.",
        why="One daemon per proxy host, so the host name is unique and recognisable.")
    interfaces: tuple[str, ...] = option(
        Names(), (), flag="--interface", live=False,
        doc="Interfaces to attach the XDP program to (the command line repeats ``--interface``).",
        why="Empty: the daemon needs to be told where the traffic comes in.")
    backend: Literal["native", "generic", "offload", "afxdp", "auto"] = option(
        Choice(("native", "generic", "offload", "afxdp", "auto")), "native",
        flag="--backend", live=False,
        doc="""The data path: ``native`` (driver XDP), ``generic`` (skb XDP),
        ``offload`` (SmartNIC), ``afxdp`` (userspace), ``auto`` (the best the
        interface supports).""",
        why="""Native XDP drops at the driver, twice as fast as generic here;
        an interface without it gives a clear error rather than a silent
        slow path (choose ``auto`` to fall back).""")
    pin_dir: str = option(
        FilePath(off="nothing pinned"), "/sys/fs/bpf/xpro", flag="--pin-dir", live=False,
        doc="""The bpffs directory where maps and links are pinned, so a
        restarted daemon adopts the running filter and its state.  ``""``
        pins nothing: the filter goes with the process.""",
        why="The conventional bpffs mount point, one directory for xpro.")
    netns: str = option(
        Text(r"[A-Za-z0-9_.-]{0,64}", '"" or a network namespace name (/var/run/netns/NAME)'),
        "", flag="--netns", live=False,
        doc="""The network namespace of the interfaces (a name under
        ``/var/run/netns``).  The daemon switches only its network namespace,
        not its mount namespace, so bpffs and the control socket stay where
        they are.""",
        why="Empty: the daemon's own namespace, the usual case on a proxy host.")
    on_exit: Literal["detach", "keep"] = option(
        Choice(("detach", "keep")), "detach", flag="--on-exit",
        doc="""On a clean stop (SIGTERM): ``detach`` removes the program and its
        pins; ``keep`` leaves it filtering from the pinned state for the next
        daemon to adopt.""",
        why="""Stopping a service should undo it: a filter left alone has no
        sync and no one watching.  Use ``keep`` for restarts and upgrades
        under attack (a killed daemon always keeps filtering).""")


@dataclass(frozen=True, repr=False)
class MetricsConfig(_Section):
    """The Prometheus text endpoint."""

    listen: str = option(
        Listen(), "127.0.0.1:9477", flag="--metrics-listen", live=False,
        doc='Address of the metrics endpoint (``"HOST:PORT"``); ``""`` turns it off.',
        why="""Localhost only: the daemon runs as root, so exposing it is a
        choice; a local Prometheus agent or a proxy can scrape it.""")


@dataclass(frozen=True, repr=False)
class ControlConfig(_Section):
    """The daemon's control socket (``xpro config reload``, ``xpro status``)."""

    socket: str = option(
        FilePath(max_len=107, off="no control socket"), "/run/xpro/control.sock",
        flag="--control-socket", live=False,
        doc="""Path of the unix socket the CLI talks to the daemon through (root
        only); ``""`` turns it off.""",
        why="The runtime directory systemd gives the service; a root-only socket.")


@dataclass(frozen=True, repr=False)
class AfxdpConfig(_Section):
    """The ``afxdp`` backend: the userspace data path (see the AF_XDP page)."""

    egress: str = option(
        Text(r"[^\s/:]{0,15}", '"" or an interface name'), "", flag="--afxdp-egress",
        live=False,
        doc="""The interface passed packets leave by (the service side); required
        with ``backend = "afxdp"``, in the same network namespace as the
        interfaces.""",
        why="No default: it is where the service is, which only the operator knows.")
    egress_dst_mac: str = option(
        Text(r"(|[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5})", '"" or a MAC address'), "",
        flag="--afxdp-egress-dst-mac", live=False,
        doc="""The MAC address forwarded frames are sent to on the egress interface
        (the service or the next hop).""",
        why="Empty: frames keep their destination MAC address.")
    parsers: tuple[str, ...] = option(
        Names(), (), flag="--afxdp-parser", live=False,
        doc="""Destination parsers (plugins, ``xpro plugins`` lists them) that take
        a packet's destination from its payload, e.g. ``coap`` (Proxy-Uri,
        Uri-Host).""",
        why="None: destinations are the IP addresses, as in the kernel program.")
    xdp_mode: Literal["native", "generic"] = option(
        Choice(("native", "generic")), "native", flag="--afxdp-xdp-mode", live=False,
        doc="The XDP mode of the small program that redirects packets to the sockets.",
        why="Native where the driver has it; generic for the others.")


@dataclass(frozen=True, repr=False)
class LogConfig(_Section):
    """The daemon's log: one event per line on standard error."""

    format: Literal["json", "text"] = option(
        Choice(("json", "text")), "json", flag="--log-format",
        doc="""``json``: one JSON object per line (``ts``, ``level``, ``logger``,
        ``event`` and the event's fields), for a log pipeline; ``text``: the
        same events for a human reading a terminal.""",
        why="The journal and log shippers keep JSON fields searchable.")
    level: Literal["debug", "info", "warning", "error"] = option(
        Choice(("debug", "info", "warning", "error")), "info", flag="--log-level",
        doc="The least severe level logged.",
        why="Attach, reload, store outages and alerts are info or above; rounds are debug.")


class Change(NamedTuple):
    """One key that differs between two configs (values as shown, secrets masked)."""

    key: str
    old: str
    new: str
    live: bool

    def __str__(self) -> str:
        return f"{self.key}: {self.old} -> {self.new}"


class Secret:
    """A string that never shows itself (repr, str, logs)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: hand it to the client that needs it, nowhere else."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


_MODES = {"enforce": MODE_ENFORCE, "monitor": MODE_MONITOR}
_DST_MODES = {"addr": DST_ADDR, "addr+port": DST_ADDR_PORT}
_MALFORMED = {"drop": MALFORMED_DROP, "pass": MALFORMED_PASS}


def seconds_to_ns(seconds: float) -> int:
    """Seconds to integer nanoseconds, exactly as written (0.1 -> 100000000)."""
    return int((Decimal(repr(float(seconds))) * NS_PER_S).to_integral_value())


_SECTION_META = {"xpro.section": True}


@dataclass(frozen=True, repr=False)
class Config:
    """An effective configuration: immutable, validated, with where each value came from.

    Build it with :func:`load_config` (or :func:`default_config`).
    ``sources`` maps each key (``"thresholds.t_f1"``) to where its value came
    from; ``path`` is the file read, if any.  Neither takes part in equality.
    """

    thresholds: ThresholdsConfig = field(metadata=_SECTION_META)
    sync: SyncConfig = field(metadata=_SECTION_META)
    filter: FilterConfig = field(metadata=_SECTION_META)
    tables: TablesConfig = field(metadata=_SECTION_META)
    store: StoreConfig = field(metadata=_SECTION_META)
    proxy: ProxyConfig = field(metadata=_SECTION_META)
    metrics: MetricsConfig = field(metadata=_SECTION_META)
    control: ControlConfig = field(metadata=_SECTION_META)
    log: LogConfig = field(metadata=_SECTION_META)
    afxdp: AfxdpConfig = field(metadata=_SECTION_META)
    store_password: Secret | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    path: Path | None = field(default=None, compare=False)

    # --- values ------------------------------------------------------------

    def get(self, key: str) -> Any:
        """The value of a dotted key (``"thresholds.t_f1"``)."""
        section, _, name = key.partition(".")
        if key not in _BY_KEY:
            raise KeyError(key)
        return getattr(getattr(self, section), name)

    def effective_config(self, *, with_sources: bool = False) -> dict[str, dict[str, Any]]:
        """The values as a TOML-able dict, ``{section: {key: value}}``.

        Unset optional keys are left out, the store password is never
        included and a password in the store URL is masked.  With
        ``with_sources`` each value becomes ``{"value": ..., "source": ...}``.
        """
        out: dict[str, dict[str, Any]] = {}
        for opt in SCHEMA:
            v = self.get(opt.key)
            if v is None:
                continue
            tv = opt.kind.to_toml(v)
            if isinstance(opt.kind, Url):
                tv = mask_url(typing.cast(str, tv))
            entry: Any = {"value": tv, "source": self.sources.get(opt.key, "")} \
                if with_sources else tv
            out.setdefault(opt.section, {})[opt.name] = entry
        return out

    def to_toml(self, *, sources: bool = True) -> str:
        """The effective config as TOML text, each value's source as a comment."""
        return dumps(self, sources=sources)

    def diff(self, other: Config) -> tuple[Change, ...]:
        """The keys whose values differ from ``self`` to ``other``, in schema order."""
        out: list[Change] = []
        for opt in SCHEMA:
            a, b = self.get(opt.key), other.get(opt.key)
            if a != b:
                out.append(Change(opt.key, opt.show(a), opt.show(b), opt.live))
        if self.store_password != other.store_password:
            out.append(Change("store.password", "***" if self.store_password else "(unset)",
                              "***" if other.store_password else "(unset)", False))
        return tuple(out)

    def __repr__(self) -> str:
        body = ", ".join(repr(getattr(self, s)) for s in SECTIONS)
        pw = ", store_password=Secret('***')" if self.store_password else ""
        return f"Config({body}{pw})"

    # --- runtime objects ------------------------------------------------------

    def filter_params(self) -> FilterParams:
        """What the kernel program reads: times in ns, modes as layout constants."""
        t, f = self.thresholds, self.filter
        policy: dict[Prefix, int] = {Prefix.parse(p): MODE_MONITOR for p in f.monitor}
        policy.update({Prefix.parse(p): MODE_ENFORCE for p in f.enforce})
        return FilterParams(
            t_t1=seconds_to_ns(t.t_t1), t_t2=seconds_to_ns(t.t_t2), t_t3=seconds_to_ns(t.t_t3),
            t_f1=t.t_f1, t_f2=t.t_f2,
            warn_period=seconds_to_ns(f.warn_period),
            mode=_MODES[f.mode], dst_mode=_DST_MODES[f.destination],
            malformed_policy=_MALFORMED[f.malformed], events=f.events,
            allow=frozenset(Prefix.parse(p) for p in f.allow),
            deny=frozenset(Prefix.parse(p) for p in f.deny),
            dst_policy=policy,
        )

    def sync_params(self) -> SyncParams:
        """What the merge uses: T_T1 and T_T4 in ns, r as a fixed-point factor."""
        t = self.thresholds
        return SyncParams.from_factor(seconds_to_ns(t.t_t1), seconds_to_ns(t.t_t4), t.r)

    def backend_options(self) -> dict[str, Any]:
        """The settings of the configured backend that come from its own section."""
        if self.proxy.backend != "afxdp":
            return {}
        a = self.afxdp
        out: dict[str, Any] = {"xdp_mode": a.xdp_mode, "parsers": list(a.parsers)}
        if a.egress:
            out["egress"] = a.egress
        if a.egress_dst_mac:
            out["egress_dst_mac"] = a.egress_dst_mac
        return out

    def sizes(self) -> Sizes:
        """The kernel map sizes (:class:`xpro.kernel.Sizes`)."""
        return Sizes(flows=self.tables.flows, dsts=self.tables.destinations,
                     prefixes=self.tables.prefixes)

    @property
    def period_ns(self) -> int:
        """``sync.period`` in ns (for :class:`xpro.sync.Syncer`)."""
        return seconds_to_ns(self.sync.period)

    @property
    def ttl_ns(self) -> int:
        """``sync.ttl`` in ns (for :class:`xpro.sync.Syncer`)."""
        return seconds_to_ns(self.sync.ttl)

    @property
    def store_url(self) -> str:
        """The store URL as configured (it may hold a password: do not log it)."""
        return self.store.url

    def store_options(self) -> dict[str, Any]:
        """Options for :func:`xpro.store.open_store` (only those that are set)."""
        s = self.store
        opts: dict[str, Any] = {}
        for name, value in (("ca", s.tls_ca), ("cert", s.tls_cert), ("key", s.tls_key),
                            ("password_file", s.password_file)):
            if value is not None:
                opts[name] = value
        if not s.tls_verify:
            opts["verify"] = False
        return opts


# --- the schema as data ------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One key of the schema, as the loader and the docs see it."""

    section: str
    name: str
    kind: Kind[Any]
    default: Any
    doc: str
    why: str
    derive: Callable[[Mapping[str, Any]], Any] | None
    default_doc: str
    flag: str
    live: bool

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}_{self.name.upper()}"

    def show(self, value: Any) -> str:
        """A value of this key for messages and logs (secrets masked)."""
        return "(unset)" if value is None else self.kind.show(value)


@dataclass(frozen=True)
class Rule:
    """A rule between keys: ``check`` returns None when it holds, else what is wrong."""

    keys: tuple[str, ...]
    check: Callable[[Mapping[str, Any]], str | None]
    doc: str


def _build_schema() -> tuple[tuple[Option, ...], dict[str, str]]:
    hints = typing.get_type_hints(Config)
    options: list[Option] = []
    sections: dict[str, str] = {}
    for sf in dataclasses.fields(Config):
        if not sf.metadata.get("xpro.section"):
            continue
        cls = hints[sf.name]
        sections[sf.name] = inspect.cleandoc(cls.__doc__ or "")
        for f in dataclasses.fields(cls):
            spec: _Spec = f.metadata[_SPEC]
            flag = spec.flag or f"--{sf.name}-{f.name}".replace("_", "-")
            options.append(Option(sf.name, f.name, spec.kind, spec.default, spec.doc, spec.why,
                                  spec.derive, spec.default_doc, flag, spec.live))
    return tuple(options), sections


#: Every key, in the order of the reference.
SCHEMA: tuple[Option, ...]
#: Section name -> its description.
SECTIONS: Mapping[str, str]
SCHEMA, _sections = _build_schema()
SECTIONS = MappingProxyType(_sections)
_BY_KEY: dict[str, Option] = {o.key: o for o in SCHEMA}
_BY_ENV: dict[str, Option] = {o.env: o for o in SCHEMA}
_SECTION_CLASSES: dict[str, type[Any]] = {
    f.name: typing.get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config) if f.metadata.get("xpro.section")
}


def _gt(a: str, b: str, why: str) -> Rule:
    def check(v: Mapping[str, Any]) -> str | None:
        return None if v[a] > v[b] else f"{a} must exceed {b}: {why}"
    return Rule((a, b), check, f"``{a}`` > ``{b}``: {why}")


def _ge(a: str, b: str, why: str) -> Rule:
    def check(v: Mapping[str, Any]) -> str | None:
        return None if v[a] >= v[b] else f"{a} must be at least {b}: {why}"
    return Rule((a, b), check, f"``{a}`` ≥ ``{b}``: {why}")


def _r_above_one(v: Mapping[str, Any]) -> str | None:
    if round(v["thresholds.r"] * R_DEN) > R_DEN:
        return None
    return (f"thresholds.r is applied as a multiple of 1/{R_DEN}: it must be at least "
            f"{1 + 1 / R_DEN:.4f} to shorten anything")


def _disjoint(a: str, b: str, why: str) -> Rule:
    def check(v: Mapping[str, Any]) -> str | None:
        both = [p for p in v[a] if Prefix.parse(p) in {Prefix.parse(q) for q in v[b]}]
        if not both:
            return None
        return f"{', '.join(_toml_str(p) for p in both)} in both {a} and {b}: {why}"
    return Rule((a, b), check, f"no prefix in both ``{a}`` and ``{b}``: {why}")


def _fits(lists: tuple[str, ...]) -> Rule:
    def check(v: Mapping[str, Any]) -> str | None:
        n = sum(len(v[k]) for k in lists)
        if n <= v["tables.prefixes"]:
            return None
        return (f"{' + '.join(lists)} hold {n} prefixes, more than tables.prefixes: "
                "raise tables.prefixes")
    names = " and ".join(f"``{k}``" for k in lists)
    verb = "have" if len(lists) > 1 else "has"
    return Rule((*lists, "tables.prefixes"), check,
                f"{names} {'together ' if len(lists) > 1 else ''}{verb} at most "
                "``tables.prefixes`` entries: each list is a kernel table of that size")


def _tls_pair(v: Mapping[str, Any]) -> str | None:
    if (v["store.tls_cert"] is None) == (v["store.tls_key"] is None):
        return None
    return "store.tls_cert and store.tls_key go together: set both or neither"


#: Rules between keys, checked after every value is valid.
RULES: tuple[Rule, ...] = (
    _gt("sync.ttl", "thresholds.t_t1",
        "an idle record must outlive its window, or the sync drops flows that still count"),
    _gt("sync.ttl", "sync.period", "a record must live through at least one sync round"),
    _ge("thresholds.t_t4", "sync.period",
        "a window is shortened at a sync, so T_T4 below the period shortens every round"),
    Rule(("thresholds.r",), _r_above_one,
         f"``thresholds.r`` ≥ 1 + 1/{R_DEN} (it is applied in steps of 1/{R_DEN})"),
    _disjoint("filter.allow", "filter.deny", "allow wins, so the deny entry would never apply"),
    _disjoint("filter.monitor", "filter.enforce", "a destination has one mode"),
    _fits(("filter.allow",)),
    _fits(("filter.deny",)),
    _fits(("filter.monitor", "filter.enforce")),
    Rule(("store.tls_cert", "store.tls_key"), _tls_pair,
         "``store.tls_cert`` and ``store.tls_key`` are set together"),
)


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


@dataclass
class _Loader:
    env: Mapping[str, str]
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    bases: dict[str, Path | None] = field(default_factory=dict)
    #: Keys some layer gave a bad value: no default, no rule checks.
    broken: set[str] = field(default_factory=set)

    def bad(self, where: str, opt: Option | None, key: str, shown: str, text: str) -> None:
        env = f" ({opt.env})" if opt else ""
        self.problems.append(f"{where}: {key} = {shown}{env}: {text}")
        self.broken.add(key)

    def set(self, opt: Option, value: Any, source: str, base: Path | None) -> None:
        self.values[opt.key] = value
        self.sources[opt.key] = source
        self.bases[opt.key] = base

    # --- the layers ----------------------------------------------------------

    def file(self, path: Path) -> None:
        try:
            data = path.read_bytes()
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
                if name.startswith(prefixes) and name != PASSWORD_ENV:
                    self.problems.append(f"environment: unknown variable {name}"
                                         f"{_suggest(name, _BY_ENV)}")
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

    def password(self) -> Secret | None:
        pw = self.env.get(PASSWORD_ENV)
        if pw:
            self.sources["store.password"] = f"env {PASSWORD_ENV}"
            return Secret(pw)
        pf = self.values.get("store.password_file")
        if pf is None:
            return None
        try:
            text = Path(pf).read_text().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not UTF-8 text"
            self.bad(self.sources["store.password_file"], _BY_KEY["store.password_file"],
                     "store.password_file", _toml_str(pf), f"cannot read it ({why})")
            return None
        if not text:
            self.bad(self.sources["store.password_file"], _BY_KEY["store.password_file"],
                     "store.password_file", _toml_str(pf), "the file is empty")
            return None
        self.sources["store.password"] = f"file {pf}"
        return Secret(text)


def _toml_value_safe(raw: object) -> str:
    try:
        return _toml_value(raw)
    except TypeError:
        return repr(raw)


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
    if loader.problems:
        raise InvalidConfig(loader.problems)
    sections = {
        name: cls(**{o.name: loader.values[o.key] for o in SCHEMA if o.section == name})
        for name, cls in _SECTION_CLASSES.items()
    }
    return Config(**sections, store_password=password,
                  sources=MappingProxyType(dict(loader.sources)),
                  path=file.resolve() if file is not None else None)


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


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """A command-line flag for one key (for click or any other parser)."""

    key: str
    flag: str
    help: str
    metavar: str
    multiple: bool

    @property
    def dest(self) -> str:
        """The parameter name a parser stores it under."""
        return "config__" + self.key.replace(".", "__")


def cli_flags(keys: Iterable[str] | None = None) -> tuple[Flag, ...]:
    """Flags for ``keys`` (default: every key), from the schema."""
    wanted = list(keys) if keys is not None else [o.key for o in SCHEMA]
    out = []
    for key in wanted:
        opt = _BY_KEY[key]
        first = " ".join(opt.doc.split()).split(". ")[0].rstrip(".").replace("``", "")
        more = " (repeatable, or comma-separated)" if opt.kind.is_list else ""
        out.append(Flag(key, opt.flag, f"{first}{more}.  [{key}, {opt.env}]",
                        opt.kind.metavar(), opt.kind.is_list))
    return tuple(out)


def click_options(keys: Iterable[str] | None = None, *, set_option: bool = True
                  ) -> Callable[[F], F]:
    """A decorator adding one click option per key, plus ``--set KEY=VALUE``.

    Options default to None (an absent flag overrides nothing) and never read
    click's automatic environment variables (the loader reads ``XPRO_*``).
    Turn the parsed values into overrides with :func:`overrides_from_click`.
    """
    import click

    flags = cli_flags(keys)

    def decorate(fn: F) -> F:
        for fl in reversed(flags):
            fn = click.option(fl.flag, fl.dest, default=None, multiple=fl.multiple,
                              metavar=fl.metavar, help=fl.help, allow_from_autoenv=False,
                              show_envvar=False)(fn)
        if set_option:
            fn = click.option("--set", "config__set", multiple=True, metavar="KEY=VALUE",
                              allow_from_autoenv=False,
                              help="Set any config key (repeatable): --set thresholds.t_f1=200"
                              )(fn)
        return fn

    return decorate


def overrides_from_click(params: dict[str, Any]) -> dict[str, str]:
    """Pop the options of :func:`click_options` from ``params``; return the overrides.

    ``--set`` comes first, so a dedicated flag wins over ``--set`` of the
    same key.  A malformed ``--set`` raises :class:`InvalidConfig`.
    """
    out: dict[str, str] = {}
    problems = []
    for item in params.pop("config__set", ()) or ():
        key, eq, value = item.partition("=")
        if not eq:
            problems.append(f"command line: --set {item}: write --set KEY=VALUE")
            continue
        out[key.strip()] = value
    for name in [n for n in params if n.startswith("config__")]:
        value = params.pop(name)
        key = name[len("config__"):].replace("__", ".")
        if value is None or (isinstance(value, tuple) and not value):
            continue
        out[key] = ",".join(value) if isinstance(value, tuple) else str(value)
    if problems:
        raise InvalidConfig(problems)
    return out
