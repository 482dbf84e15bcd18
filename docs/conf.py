"""Sphinx configuration for the xpro documentation.

Built with warnings as errors by ``scripts/test``:
``sphinx-build -W --keep-going -b html docs docs/_build/html``.
No network access is needed (no intersphinx, the default theme).
"""

from __future__ import annotations

import sys
from pathlib import Path

import xpro

project = "xpro"
author = "xpro developers"
copyright = "xpro developers"
version = xpro.__version__
release = xpro.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx_click",  # the CLI reference, generated from the click commands (docs/cli.rst)
]

# The CLI reference documents xpro's own commands, including `xpro plugins`,
# which the built-in plugin module adds (and no third-party plugin's).
from xpro import cli as _cli  # noqa: E402
from xpro.plugins.builtin import plugins_command as _plugins  # noqa: E402

_plugins.xpro_add_cli_commands(_cli.cli)
# The built-ins are imported on first use (docs/cli.rst, "Start-up");
# sphinx-click reads the group's loaded commands, so load them all.
_ctx = _cli.click.Context(_cli.cli)
_cli.cli.commands.update({n: _cli.cli.get_command(_ctx, n) for n in _cli.BUILTIN_COMMANDS})

# docs/_ext: the configuration reference, generated from xpro.config.
sys.path.insert(0, str(Path(__file__).parent / "_ext"))
extensions.append("xpro_config")

root_doc = "index"
exclude_patterns = ["_build"]
templates_path: list[str] = []
html_static_path: list[str] = []
html_theme = "alabaster"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
nitpicky = False
# Keep numpy's long type aliases short in signatures (expanded, DTypeLike
# mentions `type`, which is ambiguous next to Map.type and Program.type).
autodoc_type_aliases = {"DTypeLike": "numpy.typing.DTypeLike", "KeyLike": "xpro.bpf.maps.KeyLike"}
