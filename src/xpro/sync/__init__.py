"""The sync (Algorithm 1): one round (:class:`Syncer`) and the loop that runs it."""

from xpro.sync.loop import SyncLoop
from xpro.sync.round import Syncer

__all__ = ["SyncLoop", "Syncer"]
