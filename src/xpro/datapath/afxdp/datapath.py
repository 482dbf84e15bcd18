"""The AF_XDP data path: redirect, receive a batch, filter it, forward what passes.

::

    ingress IF ──[xpro_redirect: XSKMAP by RX queue]──► one AF_XDP socket per queue
                                                          │  batch of descriptors
                                                          ▼
                                      UserFilter.process (numpy, Algorithm 2)
                                      │ passed                     │ dropped
                                      ▼                            ▼
                     TX ring of an AF_XDP socket on EGRESS    back to the fill ring

All sockets share one UMEM, so a passed frame is forwarded without a copy in
userspace: its RX descriptor goes as is into the egress socket's TX ring, and
the frame returns to the fill ring when the kernel completes it.  On veth
AF_XDP works in copy mode only (docs/platform.rst), and the kernel sends at most
32 frames per TX wake-up in that mode: the loop wakes TX until the ring drains.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from xpro.bpf import BpfObject, XdpLink, XdpMode, object_path
from xpro.bpf.xdp import attach_xdp
from xpro.core import layout as L
from xpro.datapath.afxdp.filter import UserFilter
from xpro.datapath.afxdp.xsk import DESC, Umem, XskSocket, wait_readable
from xpro.datapath.host import link_info
from xpro.errors import ConfigError, DatapathError

__all__ = ["AfxdpPath", "PathStats"]

log = logging.getLogger("xpro.datapath.afxdp")

Array = npt.NDArray[Any]

_TX_WAKE_BUDGET = 32  # frames the kernel sends per wake-up in copy mode
#: A filter that failed on every batch for this long has failed for good.
FILTER_FAILING_S = 5.0
_BUSY_RETRIES = 100


def _mac_bytes(mac: str) -> Array:
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ConfigError(f"afxdp: not a MAC address: {mac!r}")
    return np.frombuffer(raw, dtype=np.uint8)


@dataclass
class PathStats:
    """Frames the data path moved (the filter's own counters say why)."""

    rx: int = 0
    tx: int = 0
    dropped: int = 0
    tx_ring_full: int = 0  # passed frames lost because the egress could not keep up
    batches: int = 0
    filter_errors: int = 0  # batches the filter raised on: their frames dropped
    queues: dict[str, int] = field(default_factory=dict)


class AfxdpPath:
    """Redirect ``ingress`` to AF_XDP sockets, filter with ``filt``, send passed frames
    out of ``egress`` (both interfaces in ``netns``).

    ``egress_dst_mac`` rewrites the destination MAC of forwarded frames (the
    service's interface) and sets the source MAC to the egress interface's.
    """

    def __init__(self, filt: UserFilter, egress: str, *, netns: str | None = None,
                 nframes: int = 32768, frame_size: int = 2048, ring_size: int = 16384,
                 batch: int = 4096, mode: XdpMode = XdpMode.NATIVE,
                 egress_dst_mac: str | None = None, queues: int | None = None) -> None:
        self.filt = filt
        self.egress = egress
        self.netns = netns
        self.batch = batch
        self.mode = mode
        self.ring_size = ring_size
        self.max_queues = queues
        self.stats = PathStats()
        self._obj = BpfObject(object_path("xpro_redirect"), programs=["xpro_redirect"])
        self._links: dict[str, XdpLink] = {}
        self._rx: list[XskSocket] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._failing_since: float | None = None  # the first failed batch since a good one
        #: Called (from the loop's thread) with why the loop stopped for good.
        self.on_failure: Callable[[str], None] | None = None
        try:
            self._obj.load()
            self.umem, self.tx = self._egress_socket(nframes, frame_size)
            self._dst_mac = _mac_bytes(egress_dst_mac) if egress_dst_mac else None
            self._src_mac = _mac_bytes(link_info(egress, netns).mac) if egress_dst_mac else None
        except BaseException:
            self.close()
            raise

    def _egress_socket(self, nframes: int, frame_size: int) -> tuple[Umem, XskSocket]:
        """The UMEM and the TX socket on the egress (the UMEM's first socket).

        A queue that a just-closed socket held stays busy until the kernel's
        deferred release has run: on EBUSY, start over with a fresh UMEM.
        """
        for attempt in range(_BUSY_RETRIES):
            umem = Umem(nframes, frame_size, fill_size=self.ring_size,
                        comp_size=self.ring_size, netns=self.netns)
            try:
                return umem, XskSocket(umem, self.egress, 0, netns=self.netns, rx_size=0,
                                       tx_size=self.ring_size)
            except DatapathError as exc:
                umem.close()
                cause = exc.__cause__
                if not (isinstance(cause, OSError) and cause.errno == errno.EBUSY
                        and attempt + 1 < _BUSY_RETRIES):
                    raise
                time.sleep(0.02)
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def program(self) -> Any:
        return self._obj.programs["xpro_redirect"]

    def attach(self, ifname: str) -> tuple[int, int]:
        """Attach the redirect program to ``ifname`` and open a socket per RX queue.

        Returns (program id, number of queues).  Queues are opened from 0 up
        until the device refuses one (EINVAL: no such queue) or ``queues``.
        """
        if ifname == self.egress:
            raise ConfigError(f"afxdp: {ifname} is the egress interface; the ingress must "
                              "be another one (passed frames leave by the egress)")
        xskmap = self._obj.maps["xsks"]
        socks: list[XskSocket] = []
        limit = self.max_queues or xskmap.max_entries
        for q in range(limit):
            try:
                s = XskSocket(self.umem, ifname, q, netns=self.netns, rx_size=self.ring_size,
                              tx_size=0)
            except DatapathError as exc:
                cause = exc.__cause__
                if q > 0 and isinstance(cause, OSError) and cause.errno == errno.EINVAL:
                    break
                for s in socks:
                    s.close()
                raise
            socks.append(s)
        for s in socks:
            s.register(xskmap.fd)
            s.fill.put(self.umem.take_frames(s.fill.free()))
        self._rx += socks
        self.stats.queues[ifname] = len(socks)
        # sockets first, then the program: no frame is redirected to an empty queue
        link = attach_xdp(self.program, ifname, self.mode, netns=self.netns)
        self._links[ifname] = link
        return link.prog_id, len(socks)

    # --- the loop ------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="xpro-afxdp", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.on_failure = None  # a failure from now on is the stop's to report
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._error is not None:
            why, exc, self._error = self.failure, self._error, None
            raise DatapathError(why) from exc

    @property
    def failure(self) -> str | None:
        """Why the loop stopped for good (no frame of the ingress is forwarded
        any more), or None while it runs."""
        return None if self._error is None else f"the afxdp loop failed: {self._error}"

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self.poll_once():
                    wait_readable([s.fd for s in self._rx], 20)
        except BaseException as exc:  # reported by stop() and on_failure
            log.exception("afxdp loop failed")
            self._error = exc
            report = self.on_failure
            if report is not None:
                report(f"the afxdp loop failed: {exc}")

    def poll_once(self) -> int:
        """Take one batch from every RX socket, filter, forward; returns frames handled."""
        handled = 0
        for s in self._rx:
            rx = s.rx
            assert rx is not None
            d = rx.take(self.batch)
            if len(d):
                handled += len(d)
                self._handle(d)
        self._reclaim()
        for s in self._rx:
            if s.fill.free():
                s.fill.put(self.umem.take_frames(s.fill.free()))
            if s.fill.needs_wakeup():
                s.kick_rx()
        return handled

    def _handle(self, d: Array) -> None:
        st = self.stats
        st.batches += 1
        st.rx += len(d)
        addrs = d["addr"].astype(np.int64)
        try:
            action, _ = self.filt.process(self.umem.data, addrs, d["len"],
                                            frame_size=self.umem.frame_size)
        except Exception as exc:
            # A batch the filter cannot judge is dropped, counted and logged,
            # and the loop goes on: one hostile frame that found a bug must
            # neither pass its batch unfiltered nor stop the data path
            # (docs/afxdp.rst, "When the filter fails").
            st.filter_errors += 1
            st.dropped += len(d)
            self.umem.give_frames(d["addr"])
            n = st.filter_errors
            if n & (n - 1) == 0:  # the first, then every power of two
                log.exception("the filter failed on a batch of %d frames (%d batches so "
                              "far): dropped", len(d), n,
                              extra={"event": "afxdp_filter_error"})
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
            elif now - self._failing_since >= FILTER_FAILING_S:
                # not a frame that found a bug: the filter fails on everything
                raise DatapathError(f"the filter failed on every batch for "
                                    f"{now - self._failing_since:.0f} s (the last: "
                                    f"{type(exc).__name__}: {exc})") from exc
            return
        self._failing_since = None
        ok = action == L.XDP_PASS
        drop = d["addr"][~ok]
        st.dropped += len(drop)
        self.umem.give_frames(drop)
        if not ok.any():
            return
        out = np.ascontiguousarray(d[ok], dtype=DESC)
        if self._dst_mac is not None and self._src_mac is not None:
            a = out["addr"].astype(np.int64)[:, None]
            self.umem.data[a + np.arange(6)] = self._dst_mac
            self.umem.data[a + np.arange(6, 12)] = self._src_mac
        self._send(out)

    def _send(self, out: Array) -> None:
        tx = self.tx.tx
        assert tx is not None
        sent = 0
        for _ in range(1 + 2 * len(out) // _TX_WAKE_BUDGET):
            sent += tx.put(out[sent:])
            self.tx.kick_tx()
            self._reclaim()
            if sent == len(out) and tx.pending() == 0:
                break
        self.stats.tx += sent
        if sent < len(out):
            self.stats.tx_ring_full += len(out) - sent
            self.umem.give_frames(out["addr"][sent:])

    def _reclaim(self) -> None:
        c = self.tx.comp.take(self.tx.comp.size)
        self.umem.give_frames(c)

    # --- teardown ------------------------------------------------------------

    def kernel_drops(self) -> dict[str, int]:
        """What the kernel dropped before the filter saw it, summed over the RX
        sockets: ``rx_dropped`` (no frame in the fill ring), ``rx_ring_full``."""
        out = {"rx_dropped": 0, "rx_ring_full": 0, "rx_fill_ring_empty_descs": 0}
        for s in self._rx:
            st = s.statistics()
            for k in out:
                out[k] += st[k]
        return out

    def detach(self) -> None:
        for ifname, link in list(self._links.items()):
            try:
                link.detach()
            except DatapathError as exc:
                log.warning("detaching the redirect program from %s: %s", ifname, exc)
            finally:
                link.close()
        self._links.clear()

    def close(self) -> None:
        with contextlib.suppress(DatapathError):
            self.stop()
        self.detach()
        for s in self._rx:
            s.close()
        self._rx.clear()
        tx = getattr(self, "tx", None)
        if tx is not None:
            tx.close()
        umem = getattr(self, "umem", None)
        if umem is not None:
            umem.close()
        self._obj.close()
