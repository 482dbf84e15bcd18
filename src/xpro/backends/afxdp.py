"""The ``afxdp`` data path: a minimal XDP program hands every frame to AF_XDP
sockets and the daemon runs Algorithm 2 in userspace, over batches.

The fallback for interfaces where the full program cannot run (or for
packets that need inspection the kernel cannot do, through destination
parsers such as :mod:`xpro.parsers.coap`).  The flow state is a
:class:`xpro.datapath.afxdp.filter.UserFilter`, with the kernel's record layouts and
the interface the sync uses, so a mesh can mix afxdp and kernel proxies.

Options (``options=`` / ``[backend.afxdp]``):

``egress`` (required)
    The interface passed frames are sent out of (the service side), in the
    same network namespace.
``egress_dst_mac``
    Rewrite forwarded frames' destination MAC to this (the service's
    interface) and their source MAC to the egress interface's.
``parsers``
    Destination parsers: names registered through
    ``xpro_add_destination_parsers`` (e.g. ``["coap"]``), or callables.
``coap_names`` (and ``NAME`` for a parser whose ``names_option`` is ``NAME``)
    The destinations the parser may key on (``afxdp.coap_names``); a request
    naming any other keys on its IP destination.  Required with the ``coap``
    parser; live (:meth:`AfxdpBackend.reconfigure`).
``xdp_mode``
    ``native`` (default) or ``generic`` for the redirect program.
``queues``, ``frames``, ``frame_size``, ``ring_size``, ``batch``
    At most this many RX queues; UMEM frames (32768) of ``frame_size`` bytes
    (2048: frames up to 1792 bytes; 4096 for larger MTUs); ring entries
    (16384); descriptors per batch (4096: a fill ring larger than the batch
    keeps the kernel receiving while a batch is filtered).

Both the ingress interfaces and ``egress`` must carry Ethernet frames
(:func:`xpro.datapath.host.require_ethernet`): the parser reads an Ethernet
header first, and frames are forwarded as Ethernet frames.

The state lives in this process: nothing is pinned, and :meth:`close`
always removes the redirect program (``keep`` cannot leave the filter
running without the daemon; the interface goes back to the stack).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from xpro.backends import Attachment, Backend, Sample
from xpro.bpf import XdpMode
from xpro.datapath.afxdp.datapath import AfxdpPath
from xpro.datapath.afxdp.filter import DestinationParser, UserFilter
from xpro.datapath.host import require_ethernet
from xpro.errors import ConfigError
from xpro.hooks.specs import hookimpl

__all__ = ["AfxdpBackend"]

log = logging.getLogger("xpro.backends")


class AfxdpBackend(Backend):
    name: ClassVar[str] = "afxdp"
    summary: ClassVar[str] = ("AF_XDP sockets and Algorithm 2 in userspace (vectorised), "
                              "passed frames forwarded out of an egress interface")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filter: UserFilter | None = None
        self.path: AfxdpPath | None = None

    def _parsers(self) -> list[DestinationParser]:
        """The ``parsers`` option: parser callables (the daemon resolves the
        configured names through ``xpro_add_destination_parsers``)."""
        out: list[DestinationParser] = []
        for item in self.options.get("parsers") or []:
            if not callable(item):
                raise ConfigError(f"afxdp: parsers takes parser callables, not {item!r}; "
                                  "resolve names with xpro.plugins.destination_parsers()")
            out.append(item)
        return out

    def _names(self, parsers: list[DestinationParser], options: Mapping[str, Any]
               ) -> dict[DestinationParser, list[str]]:
        """The destinations each parser with a ``names_option`` may key on."""
        out: dict[DestinationParser, list[str]] = {}
        for parser in parsers:
            opt = getattr(parser, "names_option", None)
            if opt is None:
                continue
            listed = options.get(opt)
            what = getattr(parser, "__name__", repr(parser))
            if listed is None:
                raise ConfigError(
                    f"afxdp: the destination parser {what} keys only the destinations listed "
                    f"in {opt} (afxdp.{opt} = [\"svc.example\", ...]); every other request "
                    "keys on its IP destination, so a flood cannot split itself over "
                    "invented names")
            if isinstance(listed, str) or not all(isinstance(n, str) for n in listed):
                raise ConfigError(f"afxdp.{opt}: a list of names, not {listed!r}")
            out[parser] = list(listed)
        return out

    @staticmethod
    def _bad_names(parsers: list[DestinationParser], exc: ValueError) -> ConfigError:
        opts = sorted({str(getattr(p, "names_option", "")) for p in parsers} - {""})
        return ConfigError(f"afxdp.{'/'.join(opts) or 'parsers'}: {exc}")

    def load(self) -> UserFilter:
        if self.filter is None:
            parsers = self._parsers()
            try:
                self.filter = UserFilter(self.params, sizes=self.sizes, parsers=parsers,
                                         names=self._names(parsers, self.options))
            except ValueError as exc:
                raise self._bad_names(parsers, exc) from None
        return self.filter

    def reconfigure(self, options: Mapping[str, Any]) -> None:
        """Take the destination lists of a reloaded configuration (``coap_names``...):
        the filter keys on the new lists from its next batch, no record is lost.
        A list that does not validate raises ConfigError and changes nothing."""
        filt = self.load()
        keys = {getattr(p, "names_option", None) for p in filt.parsers} - {None}
        new = dict(self.options)
        new.update({k: options[k] for k in keys if isinstance(k, str) and k in options})
        try:
            filt.set_names(self._names(filt.parsers, new))
        except ValueError as exc:
            raise self._bad_names(filt.parsers, exc) from None
        self.options = new

    def _path(self) -> AfxdpPath:
        if self.path is None:
            egress = self.options.get("egress")
            if not egress:
                raise ConfigError("the afxdp backend needs an egress interface "
                                  "(options: egress = \"IF\"): passed frames go out of it")
            require_ethernet(egress, self.netns, role="send passed frames out of")
            try:
                mode = XdpMode[str(self.options.get("xdp_mode", "native")).upper()]
            except KeyError:
                raise ConfigError("afxdp: xdp_mode is native or generic") from None
            kw: dict[str, Any] = {}
            for opt, arg in (("frames", "nframes"), ("frame_size", "frame_size"),
                             ("ring_size", "ring_size"), ("batch", "batch"),
                             ("queues", "queues")):
                if self.options.get(opt):
                    kw[arg] = int(self.options[opt])
            self.path = AfxdpPath(self.load(), egress, netns=self.netns, mode=mode,
                                  egress_dst_mac=self.options.get("egress_dst_mac"), **kw)
        return self.path

    def attach(self, ifname: str) -> Attachment:
        path = self._path()
        require_ethernet(ifname, self.netns)
        prog_id, queues = path.attach(ifname)
        att = Attachment(ifname, "afxdp", prog_id, False,
                         f"redirect ({path.mode.label}) to {queues} AF_XDP socket(s), "
                         f"passed frames out of {path.egress}")
        self.attachments[ifname] = att
        log.info("afxdp on %s: %s", ifname, att.why)
        return att

    def start(self) -> None:
        path = self._path()
        path.on_failure = self.on_failure
        path.start()

    def metrics(self) -> list[Sample]:
        """What the loop moved: frames received, forwarded, dropped, lost to a
        full TX ring, and batches the filter failed on (dropped)."""
        if self.path is None:
            return []
        st = self.path.stats
        return [Sample(f"afxdp_{name}", text, {}, float(getattr(st, name)))
                for name, text in (
                    ("rx", "Frames the AF_XDP loop received"),
                    ("tx", "Frames the AF_XDP loop forwarded out of the egress"),
                    ("dropped", "Frames the AF_XDP loop dropped (the filter's verdict, or "
                                "a batch the filter failed on)"),
                    ("tx_ring_full", "Passed frames lost to a full egress TX ring"),
                    ("filter_errors", "Batches the filter raised on (their frames dropped)"))]

    def stop(self) -> None:
        if self.path is not None:
            self.path.stop()

    def close(self, *, keep: bool = False) -> None:
        if keep:
            log.warning("afxdp keeps its state in the daemon: the redirect program is "
                        "removed on exit, the interfaces go back to the stack")
        if self.path is not None:
            self.path.close()
            self.path = None
        self.attachments.clear()
        if self.filter is not None:
            self.filter.close()
            self.filter = None


@hookimpl
def xpro_add_backends(registry: Any) -> None:
    registry.add(AfxdpBackend.name, AfxdpBackend)
