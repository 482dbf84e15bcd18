"""A fast frame generator: ``BPF_PROG_TEST_RUN`` with live frames.

:class:`LiveGenerator` loads a small XDP program (``bpf/xpro_livegen.bpf.c``)
and runs it with ``BPF_F_TEST_XDP_LIVE_FRAMES`` on prebuilt frames, with the
sender's interface as the ingress interface.  Every repetition becomes a real
frame that the program sends back out of that interface with ``XDP_TX``: on a
veth it arrives at the peer, in another namespace, like any received frame.
This is the generator that reaches flood rates on this machine (millions of
frames per second from one core, docs/platform.rst); xdp-trafficgen fails
on this kernel and an ``AF_PACKET`` loop in Python stays below half a million.

Two things to know about the receiving side:

* a veth drops frames sent to it this way unless its peer (the receiving end)
  runs an XDP program or has GRO on (:func:`xpro.lab.namespaces.set_gro`);
* the frames must carry valid checksums (:func:`xpro.lab.frames.udp_frame`
  builds them); the spoofing rewrite keeps them valid.

With ``spoof`` the program rewrites the source address of every frame within a
prefix, at random or sequentially, and updates the IPv4 header checksum and
the UDP/TCP (ICMPv6) checksum incrementally.  With ``random_dport`` it also
draws the destination port of every UDP or TCP frame at random (frames of
other protocols, and later fragments, keep theirs: they have none), with the
same incremental update.

A test run of an XDP program with ``repeat > 1`` adds the program to the
kernel's XDP dispatcher and removes it again, and each change waits for an
RCU grace period (``bpf_dispatcher_change_prog`` -> ``synchronize_rcu``:
about 25 ms per call on this machine, more when it is busy, and the calls of
several threads queue behind each other).  A program that is attached
somewhere stays in the dispatcher, and then a call costs microseconds.  So,
while it is open, the generator attaches its own program in skb mode to the
sending interface (``hold=True``, the default): the program sends only frames
that carry the generator's mark (4 bytes of XDP metadata) and passes every
frame the interface really receives, untouched.  When the interface already
has an XDP program, the generator runs without the hold (``held`` is False,
``hold_error`` says why) and pays the fixed cost per call: paced bursts are
then about 25 ms of frames instead of one millisecond.

``rate=None`` sends in calls of at least 50 ms (and ten times the fixed cost);
a rate sends what the clock says is due, in bursts of at least a millisecond
of frames: the count is exact, and the rate holds to a few percent over any
interval of a few bursts.  :attr:`LiveGenerator.calls` logs when each call
ended and how many frames it sent, so a caller can place the frames in time
even when a busy machine made the generator fall behind and catch up.

Frames the receiver *forwards* need ``forwarded=True``.  A kernel call runs
its frames in batches (64 by default), each from pages of the call's own
page pool, and a page whose frame has been consumed comes back to that pool
and is sent again in a later batch of the same call, as the consumer left
it.  A frame that was routed on has a new Ethernet header and a lower TTL,
and the routing wrote the link-layer header with 16-byte alignment, over the
last 2 bytes of the generator's mark: the program passes such a frame into
the sending namespace's stack instead of sending it, and no counter shows it
(a lab run under load lost 2 to 11 % of a flood that way, in the generator's
catch-up calls).  With ``forwarded`` no paced call sends more than one batch,
so no page is used twice.  :meth:`LiveGenerator.send` makes one call of any
length: a child process that runs it floods without a gap until it is
terminated (the kernel checks for signals between batches).

The kernel resolves the ingress interface in the calling thread's network
namespace: :meth:`LiveGenerator.run` switches the thread into ``netns`` for the
run (only the network namespace, see :func:`xpro.lab.namespaces.in_netns`), so the
generator works in this process as well as in a child made by
:class:`xpro.lab.namespaces.NsProcess` (see :func:`send_live`).
"""

from __future__ import annotations

import ipaddress
import math
import socket
import struct
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import numpy as np

from xpro.bpf import (
    BPF_F_TEST_XDP_LIVE_FRAMES,
    XDP_TX,
    BpfObject,
    TestRunResult,
    XdpLink,
    XdpMode,
    object_path,
)
from xpro.bpf.xdp import attach_xdp
from xpro.errors import AttachError, XproError
from xpro.lab.namespaces import in_netns

__all__ = [
    "CONFIG",
    "DPORT_KEEP",
    "DPORT_RANDOM",
    "MAX_BATCH",
    "MAX_FRAME",
    "SPOOF_ORDERS",
    "LiveGenError",
    "LiveGenerator",
    "send_live",
]

#: ``struct livegen_cfg`` of bpf/xpro_livegen.bpf.c (the program's ``.data``).
CONFIG = np.dtype([("spoof", "<u4"), ("mask", "<u4"), ("base", "V16"), ("seq", "<u8"),
                   ("dport", "<u4"), ("pad", "<u4")])

#: ``dport`` values (LIVEGEN_DPORT_*): keep the frame's, or draw one at random.
DPORT_KEEP, DPORT_RANDOM = 0, 1

#: ``spoof_order`` values and their ``LIVEGEN_SPOOF_*`` codes.
SPOOF_ORDERS = {"sequential": 1, "random": 2}

#: The mark in front of every frame to send (LIVEGEN_MAGIC, as XDP metadata).
_MARK = struct.pack("<I", 0x6E65676C)

#: The largest frame live mode takes: a page less XDP headroom, skb_shared_info
#: and the mark.
MAX_FRAME = 4096 - 256 - 320 - len(_MARK)

#: The kernel's limit on frames per batch in live mode.
MAX_BATCH = 256

_PROGRAM = "xpro_livegen"
_ETH_P_IP = 0x0800
_ETH_P_IPV6 = 0x86DD
#: The shortest burst of a paced run, in seconds of frames at the asked rate.
_BURST_S = 0.001
#: An unpaced run's kernel calls last at least this long (and ten times their fixed cost).
_FAST_CALL_S = 0.05
#: Frames in the first call of an unpaced run (it measures the rate) and in the shortest one.
_FIRST_CHUNK = 1 << 14
#: Frames in one kernel call, at most.
_MAX_CHUNK = 1 << 26
#: The kernel's batch in live mode when ``batch_size`` is 0.
_DEFAULT_BATCH = 64


class LiveGenError(XproError):
    """The generator cannot be set up or a run failed."""


def _spoof_config(
    spoof: str, order: str, frames: Sequence[bytes]
) -> tuple[int, int, bytes]:
    """(spoof code, mask, 16-byte base) for the prefix ``spoof``; checks the frames fit it."""
    if order not in SPOOF_ORDERS:
        raise LiveGenError(f"spoof_order must be one of {sorted(SPOOF_ORDERS)}, not {order!r}")
    try:
        net = ipaddress.ip_network(spoof, strict=False)
    except ValueError as exc:
        raise LiveGenError(f"spoof: not a prefix: {spoof!r} ({exc})") from None
    host_bits = net.max_prefixlen - net.prefixlen
    if host_bits > 32:
        raise LiveGenError(
            f"spoof: {spoof} varies {host_bits} bits of the source; at most the last 32 can "
            "vary (an IPv6 prefix must be /96 or longer)"
        )
    ethertype = _ETH_P_IP if net.version == 4 else _ETH_P_IPV6
    for i, f in enumerate(frames):
        if struct.unpack_from("!H", f, 12)[0] != ethertype:
            raise LiveGenError(
                f"spoof: frame {i} is not an untagged IPv{net.version} frame, so its source "
                f"cannot be drawn from {spoof}"
            )
    mask = (1 << host_bits) - 1
    base = net.network_address.packed.ljust(16, b"\0")
    return SPOOF_ORDERS[order], mask, base


class LiveGenerator:
    """Send ``frames`` out of ``ifname`` (in ``netns``) with live-frames test runs.

    ``rate`` is frames per second over all frames (None: as fast as possible).
    Frames take turns per kernel call: each call sends one frame a number of
    times (a burst).  ``spoof`` is a prefix (``"10.200.0.0/16"``,
    ``"fd00:66::/112"``) the source of every frame is drawn from, in
    ``spoof_order`` (``"random"`` or ``"sequential"``); every frame must then
    be untagged IP of that family.  ``random_dport``: every UDP or TCP frame
    gets a random destination port (the others are sent as they are).
    ``batch_size`` is the kernel's batch in live mode (frames per page-pool
    round, at most 256; 0 is its default, 64).
    ``forwarded``: the receiver may forward the frames, so a call sends at
    most one batch (paced runs only; see the module's notes).
    ``hold`` attaches the program in skb mode to ``ifname`` from the first
    run until :meth:`close`, which makes each kernel call cheap; frames the
    interface receives pass it untouched (see the module's notes).

    Use as a context manager, or call :meth:`close`::

        with LiveGenerator(pair.peer_if, pair.peer_ns, [frame], rate=50_000) as gen:
            sent = gen.run(2.0)
    """

    def __init__(
        self,
        ifname: str,
        netns: str | None,
        frames: Sequence[bytes],
        *,
        rate: float | None = None,
        spoof: str | None = None,
        spoof_order: str = "random",
        random_dport: bool = False,
        batch_size: int = 0,
        hold: bool = True,
        forwarded: bool = False,
    ) -> None:
        self.ifname = ifname
        self.netns = netns
        self.frames = [bytes(f) for f in frames]
        if not self.frames:
            raise LiveGenError("no frames to send")
        for i, f in enumerate(self.frames):
            if not 14 <= len(f) <= MAX_FRAME:
                raise LiveGenError(
                    f"frame {i} is {len(f)} bytes; live frames are 14 to {MAX_FRAME} bytes"
                )
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise LiveGenError(f"rate must be a positive number of frames/s, not {rate}")
        if not 0 <= batch_size <= MAX_BATCH:
            raise LiveGenError(f"batch_size must be 0 to {MAX_BATCH}, not {batch_size}")
        if forwarded and rate is None:
            raise LiveGenError("forwarded needs a rate: unpaced calls are many batches long")
        self.forwarded = forwarded
        self.calls: list[tuple[float, int]] = []
        """The kernel calls of the last run: (:func:`time.monotonic` at its end, frames)."""
        self.rate = rate
        self.spoof = spoof
        self.random_dport = random_dport
        self.batch_size = batch_size
        cfg = (0, 0, b"\0" * 16)
        if spoof is not None:
            cfg = _spoof_config(spoof, spoof_order, self.frames)
        self.elapsed = 0.0
        """Seconds the last :meth:`run` or :meth:`send` took."""
        self.hold = hold
        self.hold_error: str | None = None
        """Why the program could not be held on the interface (None: held, or not tried)."""
        self._link: XdpLink | None = None
        self._data = [_MARK + f for f in self.frames]
        self._obj: BpfObject | None = BpfObject(object_path(_PROGRAM), programs=[_PROGRAM])
        try:
            self._obj.load()
            self._prog = self._obj.programs[_PROGRAM]
            self._cfg = self._obj.global_data(".data", CONFIG)
            self._cfg.view[()] = (cfg[0], cfg[1], cfg[2], 0,
                                  DPORT_RANDOM if random_dport else DPORT_KEEP, 0)
        except BaseException:
            self.close()
            raise

    def run(self, duration: float) -> int:
        """Send for ``duration`` seconds; returns the number of frames sent.

        Paced, that is ``int(rate * duration)`` frames (the last burst may end
        a few tens of milliseconds late); unpaced, whatever the kernel took in
        that time (the run ends within one call's fixed cost of ``duration``,
        see the module's notes).
        """
        self._check_open()
        if duration < 0:
            raise LiveGenError(f"duration must not be negative, not {duration}")
        self.calls = []
        with in_netns(self.netns):
            ctxs = self._contexts()
            self._hold()
            if self.rate is None:
                return self._run_fast(duration, ctxs)
            return self._run_paced(duration, self.rate, ctxs)

    def send(self, count: int, frame: int = 0) -> int:
        """Send ``count`` copies of ``frames[frame]`` in one kernel call, unpaced.

        The call returns when all are sent, or raises when a signal interrupts
        it (the kernel checks between batches): a child process that runs
        ``send(2**31)`` floods until it is terminated.
        """
        self._check_open()
        if not 0 < count < 1 << 31:
            raise LiveGenError(f"count must be 1 to 2**31-1, not {count}")
        if self.forwarded:
            raise LiveGenError("send() is one call of any length: not for forwarded frames")
        self.calls = []
        with in_netns(self.netns):
            ctxs = self._contexts()
            self._hold()
            t0 = time.perf_counter()
            self._send(frame, count, ctxs)
            self.elapsed = time.perf_counter() - t0
        return count

    def preview(self, count: int = 1, frame: int = 0) -> list[bytes]:
        """What the next ``count`` frames made from ``frames[frame]`` look like.

        Runs the program without live frames (nothing is sent) and returns its
        output frames: with ``spoof``, each with the next source address and
        updated checksums (with ``random_dport``, a new destination port).  A
        sequential spoof advances as if they were sent.
        """
        self._check_open()
        data = self._data[frame]
        ctx = struct.pack("<6I", len(_MARK), len(data), 0, 0, 0, 0)
        out: list[bytes] = []
        for _ in range(count):
            res = self._prog.test_run(data, ctx=ctx)
            if res.retval != XDP_TX or res.data is None:
                raise LiveGenError(f"the generator program returned {res.retval}, not XDP_TX")
            out.append(res.data[len(_MARK):])  # the output starts at the metadata
        return out

    @property
    def held(self) -> bool:
        """Whether the program is held on the interface (kernel calls are cheap)."""
        return self._link is not None

    def _hold(self) -> None:
        """Attach the program in skb mode to the interface (this thread's namespace), once."""
        if not self.hold or self._link is not None or self.hold_error is not None:
            return
        try:
            self._link = attach_xdp(self._prog, self.ifname, XdpMode.GENERIC)
        except AttachError as exc:
            self.hold_error = str(exc)

    def _check_open(self) -> None:
        if self._obj is None:
            raise LiveGenError("the generator is closed")

    def _contexts(self) -> list[bytes]:
        """One ``struct xdp_md`` per frame, for the interface in this thread's namespace."""
        try:
            ifindex = socket.if_nametoindex(self.ifname)
        except OSError:
            where = f"network namespace {self.netns!r}" if self.netns else "this namespace"
            raise LiveGenError(f"no interface {self.ifname!r} in {where}") from None
        # data (after the metadata: the mark), data_end (the length of all),
        # data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
        return [struct.pack("<6I", len(_MARK), len(d), 0, ifindex, 0, 0) for d in self._data]

    def _send(self, i: int, n: int, ctxs: list[bytes]) -> TestRunResult:
        res = self._prog.test_run(self._data[i], repeat=n, ctx=ctxs[i],
                                  flags=BPF_F_TEST_XDP_LIVE_FRAMES,
                                  batch_size=self.batch_size)
        self.calls.append((time.monotonic(), n))
        return res

    def _run_fast(self, duration: float, ctxs: list[bytes]) -> int:
        # Calls last at least _FAST_CALL_S and ten times their fixed cost (the
        # wall time beyond the kernel's own in-loop time: microseconds when the
        # program is held, ~25 ms when not; see the module's notes), sized by
        # the rate of the previous call; the last one is cut to the time left,
        # and none starts when less than the fixed cost is left.
        nframes = len(self.frames)
        sent = 0
        i = 0
        n = _FIRST_CHUNK
        start = time.perf_counter()
        end = start + duration
        now = start
        fixed = math.inf
        while True:
            res = self._send(i, n, ctxs)
            sent += n
            i = (i + 1) % nframes
            t = time.perf_counter()
            wall = max(t - now, 1e-6)
            # The kernel's in-loop time leaves out the fixed cost, and also the
            # time the thread was preempted: on a busy machine one call can
            # look a hundred milliseconds "fixed".  The smallest seen is the
            # estimate (a preemption is not a cost every call pays, and taking
            # it as one ended runs a fifth early).  The rate is taken over the
            # wall time, which errs on the short side when the machine gets busier.
            fixed = min(fixed, max(wall - res.duration_ns * n / 1e9, 0.0))
            now = t
            left = end - now
            if left <= fixed:
                break
            call = min(max(_FAST_CALL_S, 10 * fixed), left - fixed)
            n = max(_FIRST_CHUNK, min(int(n / wall * call), _MAX_CHUNK))
        self.elapsed = now - start
        return sent

    def _run_paced(self, duration: float, rate: float, ctxs: list[bytes]) -> int:
        # Sends what is due by the clock, at least a burst (_BURST_S of frames)
        # per call; without the hold, a call's fixed cost makes the bursts
        # about 25 ms of frames.
        nframes = len(self.frames)
        total = int(rate * duration)
        burst = max(1, int(rate * _BURST_S))
        most = (self.batch_size or _DEFAULT_BATCH) if self.forwarded else _MAX_CHUNK
        sent = 0
        i = 0
        start = time.perf_counter()
        while sent < total:
            elapsed = time.perf_counter() - start
            due = min(total, int(elapsed * rate))
            n = due - sent
            if n < burst and due < total:
                delay = start + (sent + burst) / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                continue
            n = min(n, most)
            self._send(i, n, ctxs)
            sent += n
            i = (i + 1) % nframes
        self.elapsed = time.perf_counter() - start
        return sent

    def close(self) -> None:
        """Detach the program from the interface and unload it.  Idempotent."""
        if self._link is not None:
            link, self._link = self._link, None
            try:
                link.detach()
            except XproError:
                pass  # the interface (or its namespace) is gone already
            finally:
                link.close()
        if self._obj is not None:
            self._obj.close()
            self._obj = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def send_live(
    ifname: str,
    netns: str | None,
    frames: Sequence[bytes],
    duration: float,
    *,
    rate: float | None = None,
    spoof: str | None = None,
    spoof_order: str = "random",
    random_dport: bool = False,
    batch_size: int = 0,
    forwarded: bool = False,
) -> tuple[int, float]:
    """Load a generator, run it for ``duration`` s, unload it: ``(frames sent, seconds)``.

    The arguments pickle, so this runs as the target of
    :class:`xpro.lab.namespaces.NsProcess` or :meth:`xpro.lab.namespaces.Topology.spawn`
    (pass ``netns=None`` there when the child is already in the namespace).
    """
    with LiveGenerator(ifname, netns, frames, rate=rate, spoof=spoof,
                       spoof_order=spoof_order, random_dport=random_dport,
                       batch_size=batch_size, forwarded=forwarded) as gen:
        sent = gen.run(duration)
        return sent, gen.elapsed
