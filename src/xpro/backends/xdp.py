"""The kernel data paths: ``native`` (driver XDP), ``generic`` (skb XDP) and ``auto``.

All three load the full program (:class:`xpro.datapath.xdp.XdpFilter`) and attach it
with a BPF link per interface.  With a ``pin_dir`` the maps are pinned there
and each link as ``pin_dir/link-IFNAME``: a daemon that dies, even by SIGKILL,
leaves the filter running on the pinned state, and the next one adopts it
(the new program replaces the old one in the same link, atomically, so no
packet goes unfiltered).  An interface whose frames have no Ethernet header
is refused (:func:`xpro.datapath.host.require_ethernet`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

from xpro.backends import Attachment, Backend
from xpro.bpf import BpfObject, Map, XdpLink, XdpMode, is_bpffs, object_path
from xpro.bpf.xdp import attach_xdp, in_netns, prog_name, resolve_interface, xdp_query
from xpro.core.text import printable
from xpro.datapath.host import link_info, require_ethernet
from xpro.datapath.xdp import XdpFilter
from xpro.errors import AttachError, BpffsError, ModeNotSupported, XproError
from xpro.hooks.specs import hookimpl

log = logging.getLogger("xpro.backends")

__all__ = ["AutoBackend", "GenericBackend", "NativeBackend", "XdpBackend", "detach_pinned",
           "link_pin"]

#: Largest MTU a single-buffer XDP program takes on veth here (docs/platform.rst); above
#: it the multi-buffer program ``xpro_xdp_frags`` is attached, which needs a driver
#: with XDP scatter-gather.
SINGLE_BUFFER_MTU = 3498


def link_pin(pin_dir: Path, ifname: str) -> Path:
    """Where the link of ``ifname`` is pinned."""
    return pin_dir / f"link-{ifname}"


class XdpBackend(Backend):
    """The full program in one XDP mode (subclasses fix the mode)."""

    mode: ClassVar[XdpMode] = XdpMode.NATIVE

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filter: XdpFilter | None = None
        self._links: dict[str, XdpLink] = {}

    def _program_name(self) -> str:
        """``xpro_xdp_frags`` when an interface's MTU needs multi-buffer frames."""
        frags = self.options.get("frags")
        if frags is None:
            frags = any(self._mtu(i) > SINGLE_BUFFER_MTU
                        for i in self.options.get("interfaces", ()))
        return "xpro_xdp_frags" if frags else "xpro_xdp"

    def _mtu(self, ifname: str) -> int:
        try:
            return link_info(ifname, self.netns).mtu
        except Exception:  # attach() reports a missing interface clearly
            return 0

    def load(self) -> XdpFilter:
        if self.filter is None:
            self.filter = XdpFilter(self.params, sizes=self.sizes, pin_dir=self.pin_dir,
                                    program=self._program_name())
        return self.filter

    def _modes(self, ifname: str) -> list[tuple[XdpMode, str]]:
        """The modes to try on ``ifname``, in order, each with why."""
        return [(self.mode, f"--backend {self.name}")]

    def attach(self, ifname: str) -> Attachment:
        with in_netns(self.netns):
            resolve_interface(ifname, self.netns)  # NoSuchInterface, naming the namespace
        require_ethernet(ifname, self.netns)  # the program parses an Ethernet header
        filt = self.load()
        adopted = self._adopt(ifname, filt)
        if adopted is not None:
            return adopted
        errors: list[str] = []
        for mode, why in self._modes(ifname):
            try:
                link = self._attach_one(filt, ifname, mode)
            except ModeNotSupported as exc:
                errors.append(str(exc))
                continue
            if self.pin_dir is not None:
                link.pin(link_pin(self.pin_dir, ifname))
            self._links[ifname] = link
            att = Attachment(ifname, mode.label, link.prog_id, False,
                             why if not errors else f"{why}: {errors[-1]}")
            self.attachments[ifname] = att
            log.info("attached to %s in %s mode (%s)", ifname, mode.label, att.why)
            return att
        raise ModeNotSupported("; ".join(errors))

    def _attach_one(self, filt: XdpFilter, ifname: str, mode: XdpMode) -> XdpLink:
        """Attach the single-buffer program, or the multi-buffer one where the
        MTU (of the interface or, on veth, of its peer) needs it (ERANGE)."""
        try:
            return attach_xdp(filt.program, ifname, mode, netns=self.netns)
        except AttachError as exc:
            cause = exc.__cause__
            if (mode is not XdpMode.NATIVE or filt.program_frags is filt.program
                    or not isinstance(cause, OSError) or cause.errno != errno.ERANGE):
                raise
            log.info("%s: the MTU needs multi-buffer frames; attaching xpro_xdp_frags", ifname)
            return attach_xdp(filt.program_frags, ifname, mode, netns=self.netns)

    def _adopt(self, ifname: str, filt: XdpFilter) -> Attachment | None:
        """Take over the link a previous daemon pinned for ``ifname``, if any."""
        if self.pin_dir is None:
            return None
        path = link_pin(self.pin_dir, ifname)
        if not path.exists():
            return None
        link = XdpLink.from_pin(path)
        with in_netns(self.netns):
            ifindex, _ = resolve_interface(ifname, self.netns)
        q = xdp_query(ifname, self.netns)
        held = next((m for m in XdpMode if q[m.label] == link.prog_id and link.prog_id), None)
        if link.ifindex != ifindex or held is None:
            # The interface went away (or was recreated) since: the pin is stale.
            log.warning("pinned link %s no longer holds %s; attaching afresh", path, ifname)
            link.unpin()
            link.close()
            return None
        if held not in [m for m, _ in self._modes(ifname)]:
            log.warning("%s runs the pinned filter in %s mode, %s was asked: re-attaching",
                        ifname, held.label, self.name)
            link.detach()
            link.unpin()
            link.close()
            return None
        old = link.prog_id
        try:
            link.update_program(filt.program)
        except AttachError:  # a jumbo MTU: the old program was the multi-buffer one
            link.update_program(filt.program_frags)
        link.pin_path = os.fspath(path)
        self._links[ifname] = link
        att = Attachment(ifname, held.label, link.prog_id, True,
                         f"adopted the pinned link (program {old} replaced by {link.prog_id})")
        self.attachments[ifname] = att
        log.info("adopted %s on %s in %s mode", path, ifname, held.label)
        return att

    def start(self) -> None:
        """Every interface holds this program now: the filter may use what
        an older program attached until now could not read
        (:meth:`XdpFilter.handed_over`)."""
        if self.filter is not None:
            self.filter.handed_over()

    def close(self, *, keep: bool = False) -> None:
        for ifname, link in list(self._links.items()):
            try:
                if not keep:
                    link.detach()
                    link.unpin()
            except AttachError as exc:  # the interface may be gone already
                log.warning("detaching from %s: %s", ifname, exc)
                link.unpin()
            finally:
                link.close()
        self._links.clear()
        self.attachments.clear()
        if self.filter is not None:
            if not keep:
                self.filter.obj.unpin_maps()
            self.filter.close()
            self.filter = None


class NativeBackend(XdpBackend):
    name = "native"
    summary = "the full program in driver mode (XDP_FLAGS_DRV_MODE)"
    mode = XdpMode.NATIVE


class GenericBackend(XdpBackend):
    name = "generic"
    summary = "the full program in skb mode, for drivers without native XDP"
    mode = XdpMode.GENERIC


class AutoBackend(XdpBackend):
    """Native where the driver has it, else generic, saying which and why."""

    name = "auto"
    summary = "native where the driver supports it, else generic"

    def _modes(self, ifname: str) -> list[tuple[XdpMode, str]]:
        return [(XdpMode.NATIVE, "auto: the driver supports native XDP"),
                (XdpMode.GENERIC, "auto: the driver has no native XDP, fell back to generic")]


#: The programs of xpro's that a pinned link can hold (their kernel names).
XPRO_PROGRAMS = frozenset({"xpro_xdp", "xpro_xdp_frags", "xpro_offload"})


def _is_ours(p: Path, ours: dict[str, tuple[str, int, int, int]]) -> bool:
    """Whether the pin ``p`` is one of the filter's maps: its name, and the map
    it holds (kernel name, type, key and value sizes)."""
    want = ours.get(p.name)
    if want is None:
        return False
    try:
        with Map.from_pin(p) as m:
            return (m.name, m.type, m.key_size, m.value_size) == want
    except XproError:
        return False


def detach_pinned(pin_dir: str | Path, netns: str | None = None) -> list[str]:
    """Remove what a daemon left in ``pin_dir``: detach its links, remove its pins.

    Returns what was done, for ``xpro detach``.  Interfaces already gone are
    skipped.  Only xpro's own pins go: a map pin whose name *and* map (kernel
    name, type, key and value sizes) are one of the filter's, and a link
    ``link-IF`` that holds one of xpro's programs; anything else in the
    directory (another program's pins, when ``pin_dir`` is shared or
    mistyped as ``/sys/fs/bpf``; a map of an older build) stays and is
    listed.  A directory that is not on bpffs holds no pins: it is refused,
    untouched.
    """
    d = Path(pin_dir)
    done: list[str] = []
    hint = ("give the [proxy] pin_dir the daemon ran with (--pin-dir or --config; by "
            "default /sys/fs/bpf/xpro)")
    try:
        if not d.is_dir():
            return done
    except OSError as exc:  # a name too long, a loop of links...
        raise BpffsError(f"{printable(d, 200)}: {exc.strerror}; nothing was removed: {hint}"
                         ) from None
    if not is_bpffs(d):
        raise BpffsError(f"{printable(d, 200)} is not on bpffs, so it holds no pin of xpro's; "
                         f"nothing was removed: {hint}")
    with contextlib.closing(BpfObject(object_path())) as obj:
        ours = obj.pins()
    left: list[str] = []
    for p in sorted(d.glob("link-*")):
        try:
            link = XdpLink.from_pin(p)
        except XproError as exc:  # not a link
            log.warning("%s: %s", p, exc)
            continue
        with contextlib.closing(link):
            # A link of xpro's holds one of its programs (the info of a map
            # pinned under that name could read as a link's: its program
            # is then no program of xpro's either).
            if prog_name(link.prog_id) not in XPRO_PROGRAMS:
                continue
            if link.ifindex:
                with contextlib.suppress(AttachError):
                    link.detach()
            done.append(f"detached {p.name[5:]} (link {p})")
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    for p in sorted(d.iterdir()):
        if not _is_ours(p, ours):
            left.append(p.name)
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            done.append(f"removed {p}")
    if left:
        done.append(f"left in {d}, not xpro's: {', '.join(left)}")
    with contextlib.suppress(OSError):
        d.rmdir()
    return done


@hookimpl
def xpro_add_backends(registry: Any) -> None:
    for cls in (NativeBackend, GenericBackend, AutoBackend):
        registry.add(cls.name, cls)

