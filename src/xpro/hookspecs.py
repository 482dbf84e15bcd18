"""Every xpro hook, in one place.

Plugins implement these with ``@xpro.hookimpl`` and register through the
``xpro`` entry-point group; xpro's own backends and stores register exactly
the same way (DESIGN.md 7).  New parameters are only ever appended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from xpro.plugins import Registry

hookspec = pluggy.HookspecMarker("xpro")
hookimpl = pluggy.HookimplMarker("xpro")


@hookspec
def xpro_add_stores(registry: Registry[Any]) -> None:
    """Register master-store classes by URL scheme.

    :param registry: call ``registry.add(scheme, cls)`` for each scheme.
    """


@hookspec
def xpro_add_backends(registry: Registry[Any]) -> None:
    """Register data-path backends by name (``native``, ``generic``, ...).

    :param registry: call ``registry.add(name, cls)`` for each backend.
    """
