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

from xpro.config.flags import Flag, cli_flags, click_options, overrides_from_click
from xpro.config.kinds import (
    ENV_PREFIX,
    PASSWORD_ENV,
    PATH_ENV,
    Kind,
    mask_url,
)
from xpro.config.loader import InvalidConfig, default_config, dumps, load_config
from xpro.config.schema import (
    RULES,
    SCHEMA,
    SECTIONS,
    Change,
    Config,
    ControlConfig,
    FilterConfig,
    KnownConfig,
    MetricsConfig,
    Option,
    ProxyConfig,
    Rule,
    Secret,
    StoreConfig,
    SyncConfig,
    TablesConfig,
    ThresholdsConfig,
    seconds_to_ns,
)

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
    "KnownConfig",
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
