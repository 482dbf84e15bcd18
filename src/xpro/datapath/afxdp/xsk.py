"""AF_XDP sockets through libxdp's xsk API (cffi, ABI mode over ``libxdp.so.1``).

libxdp creates and deletes the UMEM and the sockets (``xsk_umem__create``,
``xsk_socket__create[_shared]``, ``xsk_socket__update_xskmap``); the rings it
maps are then driven from Python over numpy views of the mmapped ring memory,
which is exactly what the header's static inline helpers
(``xsk_ring_prod__reserve``/``submit``, ``xsk_ring_cons__peek``/``release``)
do: write descriptors, then publish the new producer index (or read them,
then publish the new consumer index).  A whole batch moves with one numpy
assignment and one index store, never a Python loop per frame.

The declarations follow libxdp 1.3.1's ``<xdp/xsk.h>`` (Debian 12 ships the
library without headers).  x86-64 is a TSO machine, so plain stores in
program order are the release stores the header uses.

libxdp's own XDP program (and its dispatcher) are never loaded: sockets are
created with ``XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD`` and registered in xpro's
redirect program's XSKMAP (docs/platform.rst: the dispatcher cannot run here).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import mmap
import select
import time
from typing import Any

import numpy as np
import numpy.typing as npt
from cffi import FFI

from xpro.bpf import check, in_netns
from xpro.errors import DatapathError

__all__ = [
    "DESC",
    "XDP_COPY",
    "XDP_USE_NEED_WAKEUP",
    "XDP_ZEROCOPY",
    "ConsRing",
    "ProdRing",
    "Umem",
    "XskSocket",
    "libxdp",
]

Array = npt.NDArray[Any]

CDEF = r"""
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;

struct xsk_ring_prod {
    __u32 cached_prod;
    __u32 cached_cons;
    __u32 mask;
    __u32 size;
    __u32 *producer;
    __u32 *consumer;
    void *ring;
    __u32 *flags;
};

struct xsk_ring_cons {
    __u32 cached_prod;
    __u32 cached_cons;
    __u32 mask;
    __u32 size;
    __u32 *producer;
    __u32 *consumer;
    void *ring;
    __u32 *flags;
};

struct xsk_umem;
struct xsk_socket;

struct xsk_umem_config {
    __u32 fill_size;
    __u32 comp_size;
    __u32 frame_size;
    __u32 frame_headroom;
    __u32 flags;
};

struct xsk_socket_config {
    __u32 rx_size;
    __u32 tx_size;
    __u32 libxdp_flags;
    __u32 xdp_flags;
    __u16 bind_flags;
};

int xsk_umem__create(struct xsk_umem **umem, void *umem_area, __u64 size,
                     struct xsk_ring_prod *fill, struct xsk_ring_cons *comp,
                     const struct xsk_umem_config *config);
int xsk_socket__create(struct xsk_socket **xsk, const char *ifname, __u32 queue_id,
                       struct xsk_umem *umem, struct xsk_ring_cons *rx,
                       struct xsk_ring_prod *tx, const struct xsk_socket_config *config);
int xsk_socket__create_shared(struct xsk_socket **xsk_ptr, const char *ifname,
                              __u32 queue_id, struct xsk_umem *umem,
                              struct xsk_ring_cons *rx, struct xsk_ring_prod *tx,
                              struct xsk_ring_prod *fill, struct xsk_ring_cons *comp,
                              const struct xsk_socket_config *config);
int xsk_umem__delete(struct xsk_umem *umem);
void xsk_socket__delete(struct xsk_socket *xsk);
int xsk_socket__fd(const struct xsk_socket *xsk);
int xsk_umem__fd(const struct xsk_umem *umem);
int xsk_socket__update_xskmap(struct xsk_socket *xsk, int xsks_map_fd);

long sendto(int sockfd, const void *buf, size_t len, int flags,
            const void *dest_addr, unsigned int addrlen);
long recvfrom(int sockfd, void *buf, size_t len, int flags,
              void *src_addr, void *addrlen);
int getsockopt(int sockfd, int level, int optname, void *optval, unsigned int *optlen);

struct xdp_statistics {
    __u64 rx_dropped;
    __u64 rx_invalid_descs;
    __u64 tx_invalid_descs;
    __u64 rx_ring_full;
    __u64 rx_fill_ring_empty_descs;
    __u64 tx_ring_empty_descs;
};
"""

ffi = FFI()
ffi.cdef(CDEF)

#: ``struct xdp_desc`` of the RX and TX rings.
DESC = np.dtype([("addr", "<u8"), ("len", "<u4"), ("options", "<u4")])

#: Bind flags (``<linux/if_xdp.h>``).
XDP_SHARED_UMEM = 1 << 0
XDP_COPY = 1 << 1
XDP_ZEROCOPY = 1 << 2
XDP_USE_NEED_WAKEUP = 1 << 3

#: ``*ring->flags`` bit: the kernel waits for a syscall to look at the ring.
XDP_RING_NEED_WAKEUP = 1 << 0

XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD = 1 << 0
XDP_PACKET_HEADROOM = 256

_MSG_DONTWAIT = 0x40
_SOL_XDP = 283
_XDP_STATISTICS = 7
_BUSY_RETRIES = 100
_BUSY_WAIT = 0.02  # s


@functools.cache
def libxdp() -> Any:
    """The dlopen'ed ``libxdp.so.1`` (DatapathError if it is missing)."""
    try:
        return ffi.dlopen("libxdp.so.1")
    except OSError as exc:
        raise DatapathError(
            "libxdp.so.1 is needed by the afxdp backend: apt-get install libxdp1 "
            f"({exc})") from exc


@functools.cache
def _libc() -> Any:
    return ffi.dlopen(None)


class _Ring:
    """numpy views of one mmapped ring: its producer and consumer indices,
    flags word and entries.  The kernel owns one index, we own the other."""

    def __init__(self, cring: Any, dtype: np.dtype[Any]) -> None:
        self._c = cring  # keeps the cffi struct (and so the views' source) alive
        self.size = int(cring.size)
        self.mask = int(cring.mask)
        if self.size == 0 or cring.ring == ffi.NULL:
            raise DatapathError("ring not set up by libxdp")
        self.producer: Array = np.frombuffer(ffi.buffer(cring.producer, 4), dtype=np.uint32)
        self.consumer: Array = np.frombuffer(ffi.buffer(cring.consumer, 4), dtype=np.uint32)
        self.flags: Array = np.frombuffer(ffi.buffer(cring.flags, 4), dtype=np.uint32)
        self.ring: Array = np.frombuffer(ffi.buffer(cring.ring, self.size * dtype.itemsize),
                                         dtype=dtype)

    def needs_wakeup(self) -> bool:
        return bool(int(self.flags[0]) & XDP_RING_NEED_WAKEUP)


class ProdRing(_Ring):
    """A ring we produce into (fill, TX): ``put`` = reserve + write + submit."""

    def __init__(self, cring: Any, dtype: np.dtype[Any]) -> None:
        super().__init__(cring, dtype)
        self.prod = int(self.producer[0])

    def free(self) -> int:
        return self.size - ((self.prod - int(self.consumer[0])) & 0xFFFFFFFF)

    def put(self, values: Array) -> int:
        """Publish as many of ``values`` as fit; returns how many."""
        n = min(len(values), self.free())
        if n <= 0:
            return 0
        idx = (self.prod + np.arange(n, dtype=np.int64)) & self.mask
        self.ring[idx] = values[:n]
        self.prod = (self.prod + n) & 0xFFFFFFFF
        self.producer[0] = self.prod  # the release store: entries first, then the index
        return n

    def pending(self) -> int:
        """Entries published and not yet consumed by the kernel."""
        return (self.prod - int(self.consumer[0])) & 0xFFFFFFFF


class ConsRing(_Ring):
    """A ring we consume from (RX, completion): ``take`` = peek + copy + release."""

    def __init__(self, cring: Any, dtype: np.dtype[Any]) -> None:
        super().__init__(cring, dtype)
        self.cons = int(self.consumer[0])

    def available(self) -> int:
        return (int(self.producer[0]) - self.cons) & 0xFFFFFFFF

    def take(self, limit: int) -> Array:
        """Up to ``limit`` entries, copied out and released to the kernel."""
        n = min(self.available(), limit)
        if n <= 0:
            return self.ring[:0].copy()
        idx = (self.cons + np.arange(n, dtype=np.int64)) & self.mask
        out: Array = self.ring[idx]  # fancy indexing copies
        self.cons = (self.cons + n) & 0xFFFFFFFF
        self.consumer[0] = self.cons
        return out


class Umem:
    """A UMEM: ``nframes`` frames of ``frame_size`` bytes in one anonymous mapping.

    ``netns`` must be the network namespace of the interfaces its sockets
    bind to: libxdp binds the first socket on the UMEM's own fd.

    ``data`` is the whole area as a uint8 array (frames are read and rewritten
    in place); ``fill``/``comp`` are the fill and completion rings of the first
    socket bound to it.  ``free[:top]`` are the frame addresses userspace holds.
    """

    def __init__(self, nframes: int = 8192, frame_size: int = 4096, *,
                 fill_size: int = 4096, comp_size: int = 4096, netns: str | None = None) -> None:
        lib = libxdp()
        if frame_size & (frame_size - 1):
            raise DatapathError(f"AF_XDP frame size must be a power of two, not {frame_size}")
        self.nframes = nframes
        self.frame_size = frame_size
        self.size = nframes * frame_size
        self._mm = mmap.mmap(-1, self.size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        self.data: Array = np.frombuffer(self._mm, dtype=np.uint8)
        self._area = ffi.from_buffer(self._mm)
        self._fill_c = ffi.new("struct xsk_ring_prod *")
        self._comp_c = ffi.new("struct xsk_ring_cons *")
        cfg = ffi.new("struct xsk_umem_config *")
        cfg.fill_size, cfg.comp_size = fill_size, comp_size
        cfg.frame_size, cfg.frame_headroom, cfg.flags = frame_size, 0, 0
        pp = ffi.new("struct xsk_umem **")
        # The UMEM's socket becomes the first XSK: it must live in the
        # interfaces' network namespace (bind resolves the ifindex there).
        with in_netns(netns):
            rc = lib.xsk_umem__create(pp, self._area, self.size, self._fill_c, self._comp_c, cfg)
        check(rc, f"create an AF_XDP UMEM of {nframes} x {frame_size} bytes")
        self.netns = netns
        self.ptr: Any = pp[0]
        self.fill = ProdRing(self._fill_c, np.dtype("<u8"))
        self.comp = ConsRing(self._comp_c, np.dtype("<u8"))
        # the frames userspace holds: a stack, free[:top]
        self.free: Array = np.arange(nframes, dtype=np.uint64) * np.uint64(frame_size)
        self.top = nframes
        self._first_taken = False
        self.sockets: list[XskSocket] = []

    def frame_base(self, addrs: Array) -> Array:
        """The frame each address lies in (aligned mode: mask off the offset)."""
        out: Array = np.asarray(addrs, dtype=np.uint64) & np.uint64(~(self.frame_size - 1)
                                                                     & 0xFFFFFFFFFFFFFFFF)
        return out

    def take_frames(self, n: int) -> Array:
        """Up to ``n`` frames userspace holds (to give to a fill ring)."""
        n = min(n, self.top)
        self.top -= n
        out: Array = self.free[self.top : self.top + n].copy()
        return out

    def give_frames(self, addrs: Array) -> None:
        """Frames back from the kernel (RX, TX completion) or the filter."""
        n = len(addrs)
        if n:
            if self.top + n > self.nframes:
                raise DatapathError("AF_XDP frame accounting: more frames returned than exist")
            self.free[self.top : self.top + n] = self.frame_base(addrs)
            self.top += n

    def close(self) -> None:
        for s in list(self.sockets):
            s.close()
        if self.ptr is not None:
            rc = libxdp().xsk_umem__delete(self.ptr)
            if rc == 0:
                self.ptr = None
        del self.data
        del self._area
        with contextlib.suppress(BufferError):  # a caller still holds a view: freed with it
            self._mm.close()

    def __enter__(self) -> Umem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class XskSocket:
    """An AF_XDP socket on (``ifname``, ``queue``) over a shared :class:`Umem`.

    The first socket of a UMEM uses its fill/completion rings; every further
    one (another queue, or the egress interface) gets its own, created by
    ``xsk_socket__create_shared``.  ``rx_size=0`` or ``tx_size=0`` leaves that
    ring out.  ``netns`` is the network namespace of the interface.
    """

    def __init__(self, umem: Umem, ifname: str, queue: int = 0, *, netns: str | None = None,
                 rx_size: int = 4096, tx_size: int = 4096,
                 bind_flags: int = XDP_COPY | XDP_USE_NEED_WAKEUP) -> None:
        lib = libxdp()
        self.umem = umem
        self.ifname = ifname
        self.queue = queue
        cfg = ffi.new("struct xsk_socket_config *")
        cfg.rx_size, cfg.tx_size = rx_size, tx_size
        cfg.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD
        cfg.xdp_flags = 0
        cfg.bind_flags = bind_flags
        self._rx_c = ffi.new("struct xsk_ring_cons *") if rx_size else ffi.NULL
        self._tx_c = ffi.new("struct xsk_ring_prod *") if tx_size else ffi.NULL
        pp = ffi.new("struct xsk_socket **")
        what = f"create an AF_XDP socket on {ifname} queue {queue}"
        with in_netns(netns):
            if not umem._first_taken:
                rc = lib.xsk_socket__create(pp, ifname.encode(), queue, umem.ptr, self._rx_c,
                                            self._tx_c, cfg)
                shared = False
            else:
                # this socket's own fill/completion rings, sized as the UMEM's.  A
                # queue a closed socket held stays busy until the kernel's
                # deferred release has run: retry EBUSY for a while.
                for _ in range(_BUSY_RETRIES):
                    self._fill_c = ffi.new("struct xsk_ring_prod *")
                    self._comp_c = ffi.new("struct xsk_ring_cons *")
                    rc = lib.xsk_socket__create_shared(pp, ifname.encode(), queue, umem.ptr,
                                                       self._rx_c, self._tx_c, self._fill_c,
                                                       self._comp_c, cfg)
                    if rc != -errno.EBUSY:
                        break
                    time.sleep(_BUSY_WAIT)
                shared = True
        check(rc, what, ifname=ifname, netns=netns)
        umem._first_taken = True
        self.ptr: Any = pp[0]
        self.fd = int(lib.xsk_socket__fd(self.ptr))
        if shared:
            self.fill = ProdRing(self._fill_c, np.dtype("<u8"))
            self.comp = ConsRing(self._comp_c, np.dtype("<u8"))
        else:
            self.fill, self.comp = umem.fill, umem.comp
        self.rx: ConsRing | None = ConsRing(self._rx_c, DESC) if rx_size else None
        self.tx: ProdRing | None = ProdRing(self._tx_c, DESC) if tx_size else None
        umem.sockets.append(self)

    def register(self, xskmap_fd: int) -> None:
        """Put this socket into an XSKMAP at its queue index (libxdp does the update)."""
        check(libxdp().xsk_socket__update_xskmap(self.ptr, xskmap_fd),
              f"register the AF_XDP socket of {self.ifname} queue {self.queue} in the XSKMAP")

    def kick_tx(self) -> None:
        """Tell the kernel the TX ring has frames (copy mode always needs it)."""
        rc = _libc().sendto(self.fd, ffi.NULL, 0, _MSG_DONTWAIT, ffi.NULL, 0)
        if rc < 0:
            err = ffi.errno
            if err not in (errno.EAGAIN, errno.EBUSY, errno.ENOBUFS, errno.ENETDOWN):
                check(-err, f"wake TX of the AF_XDP socket on {self.ifname}")

    def kick_rx(self) -> None:
        """Tell the kernel the fill ring has frames again (needed with need_wakeup)."""
        rc = _libc().recvfrom(self.fd, ffi.NULL, 0, _MSG_DONTWAIT, ffi.NULL, ffi.NULL)
        if rc < 0:
            err = ffi.errno
            if err not in (errno.EAGAIN, errno.EBUSY, errno.ENETDOWN):
                check(-err, f"wake RX of the AF_XDP socket on {self.ifname}")

    def statistics(self) -> dict[str, int]:
        """The kernel's counters for this socket (``XDP_STATISTICS``): frames it
        dropped because the RX ring was full or the fill ring empty, ..."""
        st = ffi.new("struct xdp_statistics *")
        size = ffi.new("unsigned int *", ffi.sizeof("struct xdp_statistics"))
        rc = _libc().getsockopt(self.fd, _SOL_XDP, _XDP_STATISTICS, st, size)
        if rc < 0:
            check(-ffi.errno, f"read the statistics of the AF_XDP socket on {self.ifname}")
        return {f: int(getattr(st, f)) for f in ("rx_dropped", "rx_invalid_descs",
                                                 "tx_invalid_descs", "rx_ring_full",
                                                 "rx_fill_ring_empty_descs",
                                                 "tx_ring_empty_descs")}

    def close(self) -> None:
        if self.ptr is not None:
            libxdp().xsk_socket__delete(self.ptr)
            self.ptr = None
            self.rx = None
            self.tx = None
            if self in self.umem.sockets:
                self.umem.sockets.remove(self)


def wait_readable(fds: list[int], timeout_ms: int) -> bool:
    """Block until one of the sockets has RX entries (or the timeout); GIL released."""
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    return bool(p.poll(timeout_ms))
