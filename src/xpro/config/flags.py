"""The configuration on the command line: one click option per key."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from xpro.config.loader import InvalidConfig
from xpro.config.schema import _BY_KEY, SCHEMA

__all__ = ["U32_MAX", "Flag", "TomlValue", "cli_flags", "click_options", "overrides_from_click"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


#: A value as TOML holds it (what :meth:`Config.effective_config` returns).
TomlValue = str | int | float | bool | list[str]

U32_MAX = 2**32 - 1



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
        if not eq or not key.strip():
            problems.append(f"command line: --set {item}: write --set KEY=VALUE "
                            "(such as --set thresholds.t_f1=200)")
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
