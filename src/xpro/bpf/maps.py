"""BPF maps as Python mappings, global data over mmap, and ring buffers.

Keys and values are raw bytes until a map is typed with numpy dtypes
(:meth:`Map.typed`); then lookups return copies as ``np.void`` (structured
dtypes) or numpy scalars, and batch operations work on structured arrays.
"""

from __future__ import annotations

import enum
import errno
import logging
import mmap
import os
import sys
from collections.abc import Callable, ItemsView, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import numpy.typing as npt

from xpro.bpf._ffi import ENOTSUPP, check, ffi, load, num_possible_cpus
from xpro.errors import DatapathError

if TYPE_CHECKING:
    from xpro.bpf.object import BpfObject

log = logging.getLogger(__name__)

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_F_MMAPABLE",
    "BPF_NOEXIST",
    "GlobalData",
    "Map",
    "MapType",
    "RingBuffer",
]

#: Flags of update_elem / update_batch.
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
#: Map flag of mmapable array maps (libbpf sets it on .data/.bss).
BPF_F_MMAPABLE = 1 << 10

#: Anything that can name a key or value: bytes, a numpy scalar or 1-element
#: array of the map's dtype, a tuple of field values, or an int.
KeyLike: TypeAlias = Any
DTypeLike: TypeAlias = npt.DTypeLike


class MapType(enum.IntEnum):
    """``enum bpf_map_type`` (linux/bpf.h)."""

    UNSPEC = 0
    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERF_EVENT_ARRAY = 4
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    STACK_TRACE = 7
    CGROUP_ARRAY = 8
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11
    ARRAY_OF_MAPS = 12
    HASH_OF_MAPS = 13
    DEVMAP = 14
    SOCKMAP = 15
    CPUMAP = 16
    XSKMAP = 17
    SOCKHASH = 18
    CGROUP_STORAGE = 19
    REUSEPORT_SOCKARRAY = 20
    PERCPU_CGROUP_STORAGE = 21
    QUEUE = 22
    STACK = 23
    SK_STORAGE = 24
    DEVMAP_HASH = 25
    STRUCT_OPS = 26
    RINGBUF = 27
    INODE_STORAGE = 28
    TASK_STORAGE = 29
    BLOOM_FILTER = 30
    USER_RINGBUF = 31
    CGRP_STORAGE = 32


_PERCPU = frozenset(
    {
        MapType.PERCPU_HASH,
        MapType.PERCPU_ARRAY,
        MapType.LRU_PERCPU_HASH,
        MapType.PERCPU_CGROUP_STORAGE,
    }
)
_ARRAYS = frozenset({MapType.ARRAY, MapType.PERCPU_ARRAY})
_BATCH = frozenset(
    {
        MapType.HASH,
        MapType.PERCPU_HASH,
        MapType.LRU_HASH,
        MapType.LRU_PERCPU_HASH,
        MapType.ARRAY,
        MapType.PERCPU_ARRAY,
    }
)
_NO_BATCH_ERRNOS = frozenset({errno.EOPNOTSUPP, ENOTSUPP, errno.EINVAL})


def _map_type(value: int) -> MapType | int:
    try:
        return MapType(value)
    except ValueError:
        return value


class Map(MutableMapping[Any, Any]):
    """One BPF map: dict-like access (bcc style) plus batch operations.

    Obtain maps from :attr:`BpfObject.maps` or :meth:`Map.from_pin`.  Lookups
    copy values out; ``len()`` and iteration walk the map with
    ``bpf_map_get_next_key`` (use :meth:`lookup_batch` for big maps).
    """

    def __init__(self, owner: BpfObject | None, ptr: Any, *, name: str | None = None) -> None:
        self._lib = load()
        self._owner = owner
        self._ptr = ptr
        self._fd = -1
        self._own_fd = False
        self._name = name if name is not None else ffi.string(self._lib.bpf_map__name(ptr)).decode()
        self._info: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
        self._ncpus = 1
        self._key_dtype: np.dtype[Any] | None = None
        self._value_dtype: np.dtype[Any] | None = None
        self._state = "open"
        if ptr is not None:
            self._refresh_from_libbpf()

    # ---- construction / lifecycle ------------------------------------------

    @classmethod
    def from_fd(cls, fd: int, *, own: bool = True) -> Map:
        """Wrap a map file descriptor (closed with the Map when ``own``)."""
        lib = load()
        info = ffi.new("struct xpro_map_info *")
        size = ffi.new("__u32 *", ffi.sizeof("struct xpro_map_info"))
        check(lib.bpf_obj_get_info_by_fd(fd, info, size), "read map info")
        m = cls(None, None, name=ffi.string(info.name).decode())
        m._info = (info.type, info.key_size, info.value_size, info.max_entries, info.map_flags)
        m._fd = fd
        m._own_fd = own
        m._state = "loaded"
        m._ncpus = num_possible_cpus() if m._info[0] in _PERCPU else 1
        return m

    @classmethod
    def from_pin(cls, path: str | os.PathLike[str]) -> Map:
        """Open a map pinned in bpffs (e.g. to inspect a running daemon's flows)."""
        fd = check(
            load().bpf_obj_get(os.fsencode(path)), f"open pinned map {path}", path=os.fspath(path)
        )
        try:
            return cls.from_fd(fd)
        except BaseException:
            os.close(fd)
            raise

    def _refresh_from_libbpf(self) -> None:
        lib, p = self._lib, self._ptr
        self._info = (
            int(lib.bpf_map__type(p)),
            int(lib.bpf_map__key_size(p)),
            int(lib.bpf_map__value_size(p)),
            int(lib.bpf_map__max_entries(p)),
            int(lib.bpf_map__map_flags(p)),
        )

    def _on_load(self) -> None:
        self._refresh_from_libbpf()
        self._fd = int(self._lib.bpf_map__fd(self._ptr))
        self._ncpus = num_possible_cpus() if self._info[0] in _PERCPU else 1
        self._state = "loaded"

    def _on_close(self) -> None:
        if self._own_fd and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self._ptr = None
        self._state = "closed"

    def close(self) -> None:
        """Close a map opened with :meth:`from_pin`/:meth:`from_fd` (no-op otherwise)."""
        if self._owner is None:
            self._on_close()

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        t = self.type
        tname = t.name if isinstance(t, MapType) else str(t)
        return (
            f"<Map {self._name!r} {tname} key={self.key_size} value={self.value_size} "
            f"max_entries={self.max_entries} {self._state}>"
        )

    # ---- metadata ------------------------------------------------------------

    @property
    def name(self) -> str:
        """The map's name (libbpf's name for internal maps, e.g. ``xpro_bpf.data``)."""
        return self._name

    @property
    def fd(self) -> int:
        """The map's file descriptor (only after load)."""
        if self._fd < 0:
            if self._state == "closed":
                raise DatapathError(f"map {self._name!r} is closed")
            raise DatapathError(f"map {self._name!r} is not loaded yet: call load() first")
        return self._fd

    def _live(self) -> tuple[int, int, int, int, int]:
        if self._ptr is not None and self._state == "open":
            self._refresh_from_libbpf()
        return self._info

    @property
    def type(self) -> MapType | int:
        """The map type (a :class:`MapType` when known)."""
        return _map_type(self._live()[0])

    @property
    def key_size(self) -> int:
        return self._live()[1]

    @property
    def value_size(self) -> int:
        return self._live()[2]

    @property
    def max_entries(self) -> int:
        return self._live()[3]

    @property
    def map_flags(self) -> int:
        return self._live()[4]

    @property
    def percpu(self) -> bool:
        """True for per-CPU maps: values have one element per possible CPU."""
        return self._live()[0] in _PERCPU

    @property
    def ncpus(self) -> int:
        """Values per key: the possible CPUs for per-CPU maps, else 1."""
        return num_possible_cpus() if self.percpu else 1

    @property
    def key_dtype(self) -> np.dtype[Any] | None:
        return self._key_dtype

    @property
    def value_dtype(self) -> np.dtype[Any] | None:
        return self._value_dtype

    def set_max_entries(self, n: int) -> None:
        """Resize before load."""
        if self._ptr is None or self._state != "open":
            raise DatapathError(f"map {self._name!r}: max_entries can only change before load")
        check(
            self._lib.bpf_map__set_max_entries(self._ptr, n),
            f"set max_entries of map {self._name!r} to {n}",
        )
        self._refresh_from_libbpf()

    def typed(self, key_dtype: DTypeLike, value_dtype: DTypeLike) -> Map:
        """Attach numpy dtypes for keys and values; returns this map.

        The dtypes' item sizes must equal the map's key and value sizes (for
        per-CPU maps: the size of one CPU's value).
        """
        kdt, vdt = np.dtype(key_dtype), np.dtype(value_dtype)
        ks, vs = self.key_size, self.value_size
        if kdt.itemsize != ks or vdt.itemsize != vs:
            raise DatapathError(
                f"map {self._name!r}: dtypes of {kdt.itemsize}/{vdt.itemsize} bytes do not "
                f"match its key/value sizes {ks}/{vs}; the Python layout and the C header "
                "disagree"
            )
        self._key_dtype, self._value_dtype = kdt, vdt
        return self

    # ---- conversions -----------------------------------------------------------

    @property
    def _stride(self) -> int:
        """Bytes of one CPU's value in per-CPU buffers (value size rounded up to 8)."""
        vs = self._info[2]
        return (vs + 7) & ~7 if self._info[0] in _PERCPU else vs

    @property
    def _value_bytes(self) -> int:
        """Bytes of one key's value in syscall buffers."""
        return self._stride * self._ncpus

    def _key_in(self, key: KeyLike) -> bytes:
        return _to_bytes(key, self._info[1], self._key_dtype, "key", self._name)

    def _value_in(self, value: KeyLike) -> bytes:
        vs = self._info[2]
        if self._info[0] not in _PERCPU:
            return _to_bytes(value, vs, self._value_dtype, "value", self._name)
        stride, n = self._stride, self._ncpus
        if isinstance(value, (bytes, bytearray, memoryview)) and len(value) == stride * n:
            return bytes(value)
        if isinstance(value, (np.ndarray, np.generic)):
            arr = _conform(np.asarray(value), self._value_dtype)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            arr = np.frombuffer(bytes(value), dtype=np.uint8)
        else:
            if self._value_dtype is None:
                raise TypeError(f"map {self._name!r}: pass per-CPU values as bytes or arrays")
            arr = np.asarray(value, dtype=self._value_dtype)
        raw = np.ascontiguousarray(arr).view(np.uint8)
        if raw.size not in (vs, vs * n):
            raise ValueError(
                f"map {self._name!r}: a per-CPU value is {vs} or {n} x {vs} bytes, got {raw.size}"
            )
        arr = raw.view((np.void, vs))
        arr = np.broadcast_to(arr.reshape(-1), (n,))
        out = np.zeros((n, stride), dtype=np.uint8)
        out[:, :vs] = np.ascontiguousarray(arr).view(np.uint8).reshape(n, vs)
        return out.tobytes()

    def _key_out(self, raw: bytes) -> Any:
        if self._key_dtype is None:
            return raw
        return np.frombuffer(raw, dtype=self._key_dtype).copy()[0]

    def _value_out(self, buf: Any) -> Any:
        """Turn a filled cffi value buffer into the Python value."""
        vs = self._info[2]
        if self._info[0] in _PERCPU:
            raw = np.frombuffer(ffi.buffer(buf, self._value_bytes), dtype=np.uint8)
            per = raw.reshape(self._ncpus, self._stride)[:, :vs].copy()
            dt = self._value_dtype if self._value_dtype is not None else np.dtype((np.void, vs))
            return per.view(dt).reshape(self._ncpus)
        if self._value_dtype is None:
            return ffi.buffer(buf, vs)[:]
        arr = np.empty(1, dtype=self._value_dtype)
        ffi.memmove(ffi.from_buffer(arr), buf, vs)
        return arr[0]

    # ---- element access ----------------------------------------------------------

    def __getitem__(self, key: KeyLike) -> Any:
        k = self._key_in(key)
        buf = ffi.new("char[]", self._value_bytes)
        rc = self._lib.bpf_map_lookup_elem(self.fd, k, buf)
        if rc < 0:
            if rc == -errno.ENOENT:
                raise KeyError(key)
            check(rc, f"look up a key in map {self._name!r}")
        return self._value_out(buf)

    def __setitem__(self, key: KeyLike, value: KeyLike) -> None:
        self.update_elem(key, value, BPF_ANY)

    def __delitem__(self, key: KeyLike) -> None:
        rc = self._lib.bpf_map_delete_elem(self.fd, self._key_in(key))
        if rc < 0:
            if rc == -errno.ENOENT:
                raise KeyError(key)
            if rc == -errno.EINVAL and self._info[0] in _ARRAYS:
                raise DatapathError(f"map {self._name!r}: array elements cannot be deleted")
            check(rc, f"delete a key from map {self._name!r}")

    def __contains__(self, key: object) -> bool:
        buf = ffi.new("char[]", self._value_bytes)
        rc = self._lib.bpf_map_lookup_elem(self.fd, self._key_in(key), buf)
        if rc == -errno.ENOENT:
            return False
        check(rc, f"look up a key in map {self._name!r}")
        return True

    def update_elem(self, key: KeyLike, value: KeyLike, flags: int = BPF_ANY) -> None:
        """Create or update one element; ``flags`` is BPF_ANY, BPF_NOEXIST or BPF_EXIST.

        Raises KeyError when BPF_NOEXIST finds the key or BPF_EXIST does not.
        """
        rc = self._lib.bpf_map_update_elem(self.fd, self._key_in(key), self._value_in(value), flags)
        if rc < 0:
            if rc == -errno.EEXIST and flags == BPF_NOEXIST:
                raise KeyError(f"key exists (BPF_NOEXIST): {key!r}")
            if rc == -errno.ENOENT and flags == BPF_EXIST:
                raise KeyError(key)
            if rc == -errno.E2BIG:
                raise DatapathError(
                    f"map {self._name!r} is full ({self.max_entries} entries); raise its "
                    "max_entries"
                )
            check(rc, f"update map {self._name!r}")

    def _raw_keys(self) -> Iterator[bytes]:
        lib, fd, ks = self._lib, self.fd, self._info[1]
        bufs = (ffi.new("char[]", ks), ffi.new("char[]", ks))
        prev: Any = ffi.NULL
        i = 0
        while True:
            nxt = bufs[i]
            rc = lib.bpf_map_get_next_key(fd, prev, nxt)
            if rc == -errno.ENOENT:
                return
            check(rc, f"iterate map {self._name!r}")
            yield ffi.buffer(nxt, ks)[:]
            prev, i = nxt, i ^ 1

    def __iter__(self) -> Iterator[Any]:
        for raw in self._raw_keys():
            yield self._key_out(raw)

    def __len__(self) -> int:
        return sum(1 for _ in self._raw_keys())

    def items(self) -> ItemsView[Any, Any]:
        """(key, value) pairs; keys that vanish during the walk are skipped."""
        return _Items(self)

    def _iter_items(self) -> Iterator[tuple[Any, Any]]:
        lib, fd = self._lib, self.fd
        buf = ffi.new("char[]", self._value_bytes)
        for raw in self._raw_keys():
            rc = lib.bpf_map_lookup_elem(fd, raw, buf)
            if rc == -errno.ENOENT:
                continue
            check(rc, f"look up a key in map {self._name!r}")
            yield self._key_out(raw), self._value_out(buf)

    def clear(self) -> None:
        """Delete every element (array maps: set every value to zero)."""
        if self._info[0] in _ARRAYS:
            zero = bytes(self._value_bytes)
            for i in range(self._info[3]):
                check(
                    self._lib.bpf_map_update_elem(
                        self.fd, i.to_bytes(4, sys.byteorder), zero, BPF_ANY
                    ),
                    f"clear map {self._name!r}",
                )
            return
        keys = list(self._raw_keys())
        if keys:
            self.delete_batch(
                np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), self._info[1])
            )

    def sum(self, key: KeyLike) -> dict[str, Any]:
        """Per-field sums over the CPUs of one per-CPU value (typed maps)."""
        values = self[key]
        if not isinstance(values, np.ndarray) or self._value_dtype is None:
            raise DatapathError(f"map {self._name!r}: sum() needs a typed per-CPU map")
        names = values.dtype.names
        if names is None:
            return {"value": values.sum(axis=0).tolist()}
        return {n: values[n].sum(axis=0).tolist() for n in names}

    # ---- batches ----------------------------------------------------------------

    def _batch_opts(self, elem_flags: int = 0) -> Any:
        opts = ffi.new("struct bpf_map_batch_opts *")
        opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
        opts.elem_flags = elem_flags
        return opts

    def _wrap_keys(self, raw: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
        n, ks = raw.shape[0], self._info[1]
        dt = self._key_dtype if self._key_dtype is not None else np.dtype((np.void, ks))
        return np.ascontiguousarray(raw).view(dt).reshape(n)

    def _wrap_values(self, raw: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
        n, vs = raw.shape[0], self._info[2]
        dt = self._value_dtype if self._value_dtype is not None else np.dtype((np.void, vs))
        if self._info[0] in _PERCPU:
            per = raw.reshape(n, self._ncpus, self._stride)[:, :, :vs].copy()
            return per.view(dt).reshape(n, self._ncpus)
        return np.ascontiguousarray(raw).view(dt).reshape(n)

    def lookup_batch(self, chunk: int = 8192) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """Every (key, value) as two arrays: keys (n,), values (n,) or (n, ncpus).

        Uses ``bpf_map_lookup_batch`` ``chunk`` entries per syscall; map types
        without batch support (LPM trie, ...) are walked key by key.
        """
        if self._info[0] not in _BATCH:
            return self._lookup_by_iteration()
        got = self._read_batch(self._lib.bpf_map_lookup_batch, chunk, "batch lookup")
        return got if got is not None else self._lookup_by_iteration()

    def take_batch(self, chunk: int = 8192) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """Every (key, value), removed from the map, as :meth:`lookup_batch` reads them.

        One pass of ``bpf_map_lookup_and_delete_batch`` (each bucket read and
        emptied under its lock), about half the time of a lookup followed by a
        delete of the keys found (docs/performance.rst); an entry added
        meanwhile is either taken or left, never lost.  Where the kernel has
        no such batch, the lookup and then the delete of what it found.
        """
        if self._info[0] in _ARRAYS:
            raise DatapathError(f"map {self._name!r}: array elements cannot be deleted")
        if self._info[0] in _BATCH:
            got = self._read_batch(self._lib.bpf_map_lookup_and_delete_batch, chunk,
                                   "batch lookup and delete", put_back=True)
            if got is not None:
                return got
        keys, values = self.lookup_batch(chunk)
        self.delete_batch(keys)
        return keys, values

    def _read_batch(self, fn: Any, chunk: int, what: str, *, put_back: bool = False
                    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any]] | None:
        """The batch walk of :meth:`lookup_batch` with ``fn``; None if the kernel
        refuses the batch before the first entry (the caller falls back).  With
        ``put_back`` (``fn`` deletes what it returns), an error after the
        first entries writes them back before it is raised: none is lost."""
        fd = self.fd
        ks, vb = self._info[1], self._value_bytes
        tokens = (ffi.new("char[]", max(ks, 8)), ffi.new("char[]", max(ks, 8)))
        count = ffi.new("__u32 *")
        opts = self._batch_opts()
        in_tok: Any = ffi.NULL
        t = 0
        kparts: list[npt.NDArray[np.uint8]] = []
        vparts: list[npt.NDArray[np.uint8]] = []
        while True:
            kbuf = np.empty((chunk, ks), dtype=np.uint8)
            vbuf = np.empty((chunk, vb), dtype=np.uint8)
            count[0] = chunk
            rc = fn(fd, in_tok, tokens[t], ffi.from_buffer(kbuf), ffi.from_buffer(vbuf), count,
                    opts)
            n = int(count[0])
            if rc < 0 and rc != -errno.ENOENT:
                if rc == -errno.ENOSPC and n == 0:
                    chunk *= 2  # a hash bucket holds more entries than one chunk
                    continue
                if n:  # entries that came with the error (taken, if fn deletes)
                    kparts.append(kbuf[:n])
                    vparts.append(vbuf[:n])
                if -rc in _NO_BATCH_ERRNOS and not kparts:
                    return None
                if put_back and kparts:
                    self._put_back(np.concatenate(kparts), np.concatenate(vparts), what)
                check(rc, f"{what} in map {self._name!r}")
            if n:
                kparts.append(kbuf[:n])
                vparts.append(vbuf[:n])
            if rc == -errno.ENOENT or n == 0:  # ENOENT with a count: the normal end
                break
            in_tok, t = tokens[t], t ^ 1
        keys = np.concatenate(kparts) if kparts else np.empty((0, ks), dtype=np.uint8)
        vals = np.concatenate(vparts) if vparts else np.empty((0, vb), dtype=np.uint8)
        return self._wrap_keys(keys), self._wrap_values(vals)

    def _put_back(self, kraw: npt.NDArray[np.uint8], vraw: npt.NDArray[np.uint8],
                  what: str) -> None:
        """Write entries read as raw rows back, one by one (an error path):
        an entry written meanwhile stays as it is (BPF_NOEXIST).  Those that
        cannot be written back are said in the log, with the first reason."""
        failed, first = 0, 0
        for k, v in zip(kraw, vraw, strict=True):
            rc = self._lib.bpf_map_update_elem(self.fd, ffi.from_buffer(k),
                                               ffi.from_buffer(v), BPF_NOEXIST)
            if rc < 0 and rc != -errno.EEXIST:
                failed, first = failed + 1, first or rc
        if failed:
            log.error("map %r: %d of the %d entries a failed %s had taken could not be "
                      "written back (%s)", self._name, failed, len(kraw), what,
                      os.strerror(-first))

    def _lookup_by_iteration(self) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        lib, fd = self._lib, self.fd
        ks, vb = self._info[1], self._value_bytes
        kraw, vraw = bytearray(), bytearray()
        buf = ffi.new("char[]", vb)
        for raw in self._raw_keys():
            rc = lib.bpf_map_lookup_elem(fd, raw, buf)
            if rc == -errno.ENOENT:
                continue
            check(rc, f"look up a key in map {self._name!r}")
            kraw += raw
            vraw += ffi.buffer(buf, vb)
        n = len(kraw) // ks
        keys = np.frombuffer(bytes(kraw), dtype=np.uint8).reshape(n, ks)
        vals = np.frombuffer(bytes(vraw), dtype=np.uint8).reshape(n, vb)
        return self._wrap_keys(keys), self._wrap_values(vals)

    def _keys_raw(self, keys: Any) -> npt.NDArray[np.uint8]:
        """Keys (array of the key dtype, (n, key_size) uint8, or a list) as (n, ks) bytes."""
        ks = self._info[1]
        if not isinstance(keys, np.ndarray):
            raw = np.frombuffer(b"".join(self._key_in(k) for k in keys), dtype=np.uint8)
            return raw.reshape(-1, ks)
        if keys.dtype == np.uint8 and keys.ndim == 2 and keys.shape[1] == ks:
            return np.ascontiguousarray(keys)
        keys = _conform(keys, self._key_dtype)
        if keys.dtype.itemsize != ks:
            if self._key_dtype is None:
                raise ValueError(
                    f"map {self._name!r}: keys of {keys.dtype.itemsize} bytes, the map's are {ks}"
                )
            keys = np.asarray(keys, dtype=self._key_dtype)
        return np.ascontiguousarray(keys.reshape(-1)).view(np.uint8).reshape(-1, ks)

    def _values_raw(self, values: Any, n: int) -> npt.NDArray[np.uint8]:
        """Values as (n, bytes per key) in the syscall layout (per-CPU: padded)."""
        vs, vb = self._info[2], self._value_bytes
        if not isinstance(values, np.ndarray):
            raw = np.frombuffer(b"".join(self._value_in(v) for v in values), dtype=np.uint8)
        elif values.dtype == np.uint8 and values.ndim == 2 and values.shape[1] == vb:
            raw = np.ascontiguousarray(values)
        else:
            values = _conform(values, self._value_dtype)
            if values.dtype.itemsize != vs:
                if self._value_dtype is None:
                    raise ValueError(
                        f"map {self._name!r}: values of {values.dtype.itemsize} "
                        f"bytes, the map's are {vs}"
                    )
                values = np.asarray(values, dtype=self._value_dtype)
            per = np.ascontiguousarray(values).view(np.uint8)
            if self._info[0] in _PERCPU:
                per = np.broadcast_to(per.reshape(n, -1, vs), (n, self._ncpus, vs))
                out = np.zeros((n, self._ncpus, self._stride), dtype=np.uint8)
                out[:, :, :vs] = per
                raw = out
            else:
                raw = per
        if raw.size != n * vb:
            raise ValueError(f"map {self._name!r}: {n} keys but {raw.size / vb:g} values")
        return raw.reshape(n, vb)

    def update_batch(self, keys: Any, values: Any, flags: int = BPF_ANY) -> int:
        """Write many elements in one syscall; returns how many were written."""
        kraw = self._keys_raw(keys)
        n = int(kraw.shape[0])
        if n == 0:
            return 0
        vraw = self._values_raw(values, n)
        if self._info[0] not in _BATCH:
            for i in range(n):
                self.update_elem(kraw[i].tobytes(), vraw[i].tobytes(), flags)
            return n
        count = ffi.new("__u32 *", n)
        rc = self._lib.bpf_map_update_batch(
            self.fd, ffi.from_buffer(kraw), ffi.from_buffer(vraw), count, self._batch_opts(flags)
        )
        if rc < 0:
            if rc in (-errno.E2BIG, -errno.ENOSPC):
                raise DatapathError(
                    f"map {self._name!r} is full after {count[0]} of {n} updates "
                    f"(max_entries {self.max_entries}); raise its max_entries"
                )
            check(rc, f"batch update of map {self._name!r} ({count[0]} of {n} written)")
        return int(count[0])

    def delete_batch(self, keys: Any) -> int:
        """Delete many keys; keys that are absent are skipped. Returns how many went."""
        kraw = self._keys_raw(keys)
        n, ks = int(kraw.shape[0]), int(kraw.shape[1])
        if n == 0:
            return 0
        if self._info[0] in _ARRAYS:
            raise DatapathError(f"map {self._name!r}: array elements cannot be deleted")
        if self._info[0] not in _BATCH:
            return self._delete_each(kraw)
        lib, fd, opts = self._lib, self.fd, self._batch_opts()
        base = ffi.from_buffer(kraw)
        count = ffi.new("__u32 *")
        done = off = 0
        while off < n:
            count[0] = n - off
            rc = lib.bpf_map_delete_batch(fd, base + off * ks, count, opts)
            deleted = int(count[0])
            done += deleted
            if rc == 0:
                break
            if rc == -errno.ENOENT:
                off += deleted + 1  # skip the absent key and go on
                continue
            if -rc in _NO_BATCH_ERRNOS and done == 0:
                return self._delete_each(kraw)
            check(rc, f"batch delete in map {self._name!r}")
        return done

    def _delete_each(self, kraw: npt.NDArray[np.uint8]) -> int:
        done = 0
        for row in kraw:
            rc = self._lib.bpf_map_delete_elem(self.fd, row.tobytes())
            if rc == -errno.ENOENT:
                continue
            check(rc, f"delete a key from map {self._name!r}")
            done += 1
        return done


class _Items(ItemsView[Any, Any]):
    def __init__(self, m: Map) -> None:
        super().__init__(m)
        self._m = m

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self._m._iter_items()


def _conform(arr: npt.NDArray[Any], dtype: np.dtype[Any] | None) -> npt.NDArray[Any]:
    """``arr`` cast to the map's ``dtype`` when it holds the same kind of data.

    Structured arrays are cast field by field: numpy may return an equal
    layout in another byte order (``np.concatenate`` makes ``>u2`` native),
    whose raw bytes would be a different key.  Plain numbers are cast too;
    uint8 arrays stay raw bytes.
    """
    if dtype is None or arr.dtype == dtype:
        return arr
    if arr.dtype.names is not None and dtype.names is not None:
        return arr.astype(dtype)
    if arr.dtype.names is None and dtype.names is None and arr.dtype != np.uint8:
        return arr.astype(dtype)
    return arr


def _to_bytes(obj: Any, size: int, dtype: np.dtype[Any] | None, what: str, name: str) -> bytes:
    """A key or value as exactly ``size`` bytes."""
    if isinstance(obj, bytes):
        raw = obj
    elif isinstance(obj, (bytearray, memoryview)):
        raw = bytes(obj)
    elif isinstance(obj, (np.ndarray, np.generic)):
        raw = _conform(np.asarray(obj), dtype).tobytes()
    elif isinstance(obj, int) and dtype is None:
        raw = obj.to_bytes(size, sys.byteorder, signed=obj < 0)
    elif dtype is not None:
        raw = np.asarray(obj, dtype=dtype).tobytes()
    else:
        raise TypeError(
            f"map {name!r}: cannot use {type(obj).__name__} as a {what}; "
            "pass bytes or type the map with Map.typed()"
        )
    if len(raw) != size:
        raise ValueError(f"map {name!r}: a {what} is {size} bytes, got {len(raw)}")
    return raw


class GlobalData:
    """A global-data section (``.data``, ``.bss``) mapped into this process.

    ``view`` is a 0-d numpy array over the shared mapping: assigning a field
    (``gd.view["t_f1"] = 50``) changes what the running program reads at once.
    """

    def __init__(self, m: Map, dtype: DTypeLike | None = None) -> None:
        if not m.map_flags & BPF_F_MMAPABLE:
            raise DatapathError(
                f"map {m.name!r} is not mmapable; update the section through the map instead"
            )
        size = m.value_size
        dt = np.dtype(dtype) if dtype is not None else np.dtype((np.void, size))
        if dt.itemsize > size:
            raise DatapathError(
                f"global data {m.name!r} is {size} bytes but the dtype is {dt.itemsize}; "
                "the Python layout and the C struct disagree"
            )
        self.map = m
        self.dtype = dt
        self._mm: mmap.mmap | None = mmap.mmap(
            m.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        self._view: npt.NDArray[Any] | None = np.ndarray((), dtype=dt, buffer=self._mm)

    @property
    def view(self) -> npt.NDArray[Any]:
        """The live 0-d structured array over the section."""
        if self._view is None:
            raise DatapathError(f"global data {self.map.name!r} is closed")
        return self._view

    def read(self) -> Any:
        """A copy of the whole section (``np.void`` for structured dtypes)."""
        return self.view.copy()[()]

    def write(self, record: Any) -> None:
        """Overwrite the section with ``record`` (np.void, tuple or bytes)."""
        if isinstance(record, (bytes, bytearray, memoryview)):
            record = np.frombuffer(bytes(record), dtype=self.dtype)[0]
        self.view[()] = record

    def close(self) -> None:
        """Unmap (if no other numpy view of it is alive)."""
        self._view = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                return  # a caller still holds a view; the mapping dies with it
            self._mm = None

    def __enter__(self) -> GlobalData:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SAMPLE_FN = ffi.typeof("ring_buffer_sample_fn")


class RingBuffer:
    """Consume a ``BPF_MAP_TYPE_RINGBUF`` map with a Python callback.

    ``callback`` gets each sample as bytes, or as an ``np.void`` copy when
    ``dtype`` is given.  An exception raised by it stops the current poll and is
    re-raised from :meth:`poll`/:meth:`consume`.
    """

    def __init__(
        self, m: Map, callback: Callable[[Any], object], dtype: DTypeLike | None = None
    ) -> None:
        if m.type != MapType.RINGBUF:
            raise DatapathError(f"map {m.name!r} is not a ring buffer")
        self._lib = load()
        self.map = m
        self._user_cb = callback
        self._dtype = np.dtype(dtype) if dtype is not None else None
        self._error: BaseException | None = None
        self._cb = ffi.callback(_SAMPLE_FN, self._on_sample)
        rb = self._lib.ring_buffer__new(m.fd, self._cb, ffi.NULL, ffi.NULL)
        if rb == ffi.NULL:
            check(-(ffi.errno or errno.EINVAL), f"open ring buffer {m.name!r}")
        self._rb: Any = rb

    def _on_sample(self, _ctx: Any, data: Any, size: int) -> int:
        try:
            item: Any
            if self._dtype is None:
                item = ffi.buffer(data, size)[:]
            else:
                arr = np.zeros(1, dtype=self._dtype)
                ffi.memmove(ffi.from_buffer(arr), data, min(size, self._dtype.itemsize))
                item = arr[0]
            self._user_cb(item)
        except BaseException as exc:  # re-raised by poll()/consume()
            self._error = exc
            return -1
        return 0

    def _done(self, rc: int, what: str) -> int:
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc
        if rc == -errno.EINTR:
            return 0
        return check(rc, f"{what} ring buffer {self.map.name!r}")

    def poll(self, timeout_ms: int = 0) -> int:
        """Wait up to ``timeout_ms`` for samples, handle them; returns how many."""
        return self._done(self._lib.ring_buffer__poll(self._handle, timeout_ms), "poll")

    def consume(self) -> int:
        """Handle every available sample without waiting; returns how many."""
        return self._done(self._lib.ring_buffer__consume(self._handle), "consume")

    def fileno(self) -> int:
        """An epoll fd that becomes readable when samples arrive (for selectors)."""
        return int(self._lib.ring_buffer__epoll_fd(self._handle))

    @property
    def _handle(self) -> Any:
        if self._rb is None:
            raise DatapathError(f"ring buffer {self.map.name!r} is closed")
        return self._rb

    def close(self) -> None:
        """Free the ring buffer manager."""
        if self._rb is not None:
            self._lib.ring_buffer__free(self._rb)
            self._rb = None

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
