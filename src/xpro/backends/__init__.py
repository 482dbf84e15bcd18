"""Data-path backends: how the filter reaches the packets of an interface.

A backend is a plugin (``xpro_add_backends``); the built-ins register through
the ``xpro`` entry points exactly as a third-party backend would, and the
daemon finds them by name in :func:`xpro.plugins.backends`, never by import.

The life of a backend, as :class:`xpro.daemon.Proxy` drives it::

    backend = cls(params=..., sizes=..., pin_dir=..., netns=..., options=...)
    filt = backend.load()            # the flow state the sync reads and writes
    for ifname in interfaces:
        backend.attach(ifname)       # or adopt what a previous daemon pinned
    backend.start()                  # userspace data paths start their threads
    ...                              # filt.configure(params), backend.reconfigure(options)
                                     # on reload
    backend.stop()
    backend.close(keep=False)        # detach and unpin; keep=True leaves it filtering

``load()`` returns a :class:`xpro.datapath.xdp.FilterState`: the interface of
:class:`xpro.datapath.xdp.XdpFilter` that :class:`xpro.sync.Syncer` and the daemon
use, so the sync works unchanged over every data path.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from xpro.core.model import FilterParams
from xpro.core.params import Sizes
from xpro.core.state import FilterState

__all__ = ["Attachment", "Backend", "Sample"]


@dataclass(frozen=True)
class Sample:
    """One counter value a backend exports: ``xpro_backend_<name>_total{labels}``."""

    name: str
    help: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Attachment:
    """Where a backend attached, and how."""

    ifname: str
    mode: str  # native | generic | offload | afxdp
    prog_id: int = 0
    adopted: bool = False  # taken over from a previous daemon's pins
    why: str = ""  # why this mode (``auto``), or what else runs beside it

    def to_dict(self) -> dict[str, Any]:
        return {"interface": self.ifname, "mode": self.mode, "prog_id": self.prog_id,
                "adopted": self.adopted, "why": self.why}


class Backend(abc.ABC):
    """One data path for one proxy.

    :param params: the filter's thresholds and modes at start.
    :param sizes: the map sizes (fixed at load).
    :param pin_dir: the bpffs directory for pinned maps and links (``None``:
        nothing pinned, everything goes with the process).
    :param netns: the network namespace of the interfaces (``None``: this one).
    :param options: backend-specific settings (``egress`` for ``afxdp``, ...).
    """

    #: The name ``--backend`` selects.
    name: ClassVar[str] = ""
    #: One line for ``xpro plugins`` and the docs.
    summary: ClassVar[str] = ""

    def __init__(self, *, params: FilterParams, sizes: Sizes | None = None,
                 pin_dir: str | Path | None = None, netns: str | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        self.params = params
        self.sizes = sizes or Sizes()
        self.pin_dir = Path(pin_dir) if pin_dir is not None else None
        self.netns = netns
        self.options = dict(options or {})
        self.attachments: dict[str, Attachment] = {}

    @abc.abstractmethod
    def load(self) -> FilterState:
        """Load (or adopt from ``pin_dir``) the flow state; returns it."""

    @abc.abstractmethod
    def attach(self, ifname: str) -> Attachment:
        """Start filtering ``ifname``: adopt our own pinned attachment, refuse a foreign one.

        A data path that parses Ethernet frames refuses an interface whose
        frames have none (:func:`xpro.datapath.host.require_ethernet`); every
        built-in backend does.
        """

    def metrics(self) -> list[Sample]:
        """Counters of the backend's own (the offloaded program's, the sockets'),
        for the Prometheus endpoint; none by default."""
        return []

    def reconfigure(self, options: Mapping[str, Any]) -> None:  # noqa: B027
        """Apply the live settings of a reloaded configuration
        (:meth:`xpro.config.Config.backend_options`); none by default."""

    def start(self) -> None:  # noqa: B027  (optional: userspace data paths run threads)
        """Start whatever runs beside the kernel (userspace paths).

        A userspace path that stops for good afterwards (its thread failed)
        calls :attr:`on_failure` with why, from its own thread."""

    #: Set by the daemon before :meth:`start`: called with why the data path
    #: stopped filtering for good (docs/operations.rst, "When the data path
    #: fails"), never after :meth:`stop`.  The kernel paths never call it:
    #: their program runs without the daemon.
    on_failure: Callable[[str], None] | None = None

    def stop(self) -> None:  # noqa: B027
        """Stop what :meth:`start` started."""

    @abc.abstractmethod
    def close(self, *, keep: bool = False) -> None:
        """Release everything: detach and unpin, or with ``keep`` leave the
        filter running from its pins for the next daemon to adopt."""
