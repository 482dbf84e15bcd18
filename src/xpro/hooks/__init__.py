"""Everything a plugin author imports: the hook markers and the registry.

``@hookimpl`` marks a plugin's implementation of a hook of :mod:`xpro.hooks.specs`;
registration hooks receive a :class:`~xpro.hooks.registry.Registry`.
"""

from xpro.hooks.registry import Registry
from xpro.hooks.specs import hookimpl, hookspec

__all__ = ["Registry", "hookimpl", "hookspec"]
