"""The registry a registration hook fills: named implementations of one kind."""

from __future__ import annotations

from typing import Generic, TypeVar

from xpro.errors import PluginError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named implementations of one kind (stores by scheme, backends by name, parsers).

    Rejects duplicate names, so two plugins cannot silently shadow each other.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}
        #: The plugin whose hook is registering now (for error messages).
        self.current_plugin = "?"

    def add(self, name: str, item: T) -> None:
        """Register ``item`` as ``name``; :class:`~xpro.errors.PluginError` if taken."""
        if name in self._items:
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by {self._owners[name]} and by "
                f"{self.current_plugin}; uninstall one of them"
            )
        self._items[name] = item
        self._owners[name] = self.current_plugin

    def get(self, name: str) -> T:
        """The item registered as ``name``; :class:`~xpro.errors.PluginError` if none."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise PluginError(f"no {self.kind} named {name!r} (known: {known})") from None

    def owner(self, name: str) -> str:
        """The plugin that registered ``name``."""
        self.get(name)
        return self._owners[name]

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
