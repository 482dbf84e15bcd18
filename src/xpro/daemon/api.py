"""What the control socket and the metrics endpoint read of a running proxy.

:class:`ProxyView` is the part of :class:`xpro.daemon.proxy.Proxy` they use,
as a protocol, so neither imports the daemon that starts them.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from xpro.backends import Backend
    from xpro.config import Change, Config
    from xpro.core.explain import Explanation
    from xpro.core.state import FilterState
    from xpro.plugins.host import PluginHost
    from xpro.sync import Syncer, SyncLoop

__all__ = ["ProxyView"]


class ProxyView(Protocol):
    """A running proxy, as its control socket and metrics endpoint see it."""

    name: str
    config: Config
    backend: Backend | None
    loop: SyncLoop | None
    alert_counts: collections.Counter[str]
    reloads: int
    plugins: PluginHost
    events_seen: int
    events_failed: int
    failed: str | None

    @property
    def filter(self) -> FilterState: ...
    @property
    def syncer(self) -> Syncer | None: ...
    def status(self, *, top: int = 5) -> dict[str, Any]: ...
    def flows(self, *, src: str | None = None, dst: str | None = None, sort: str = "rate",
              limit: int | None = 20) -> list[dict[str, Any]]: ...
    def destinations(self, *, limit: int | None = 20) -> list[dict[str, Any]]: ...
    def explain(self, src: str, dst: str, *, proto: int = 17) -> Explanation: ...
    def reload(self) -> tuple[Change, ...]: ...
    def metrics_text(self) -> str: ...
    def events_lost(self) -> int | None: ...
