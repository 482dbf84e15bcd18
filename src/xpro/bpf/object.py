"""BPF objects and programs: open, load (with the verifier log), test_run."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from xpro.bpf._ffi import check, ffi, load
from xpro.bpf.fs import require_bpffs
from xpro.bpf.maps import DTypeLike, GlobalData, Map, MapType, RingBuffer
from xpro.bpf.xdp import XdpLink, XdpMode, attach_xdp
from xpro.errors import DatapathError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "BPF_F_TEST_XDP_LIVE_FRAMES",
    "XDP_ABORTED",
    "XDP_DROP",
    "XDP_PASS",
    "XDP_REDIRECT",
    "XDP_TX",
    "BpfObject",
    "Program",
    "TestRunResult",
    "object_path",
]

#: test_run flag: run XDP on live frames that really go out (XDP_TX/REDIRECT).
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1

#: XDP verdicts (enum xdp_action).
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)

#: Bytes of verifier log kept per program while loading (the kernel keeps the tail).
LOG_BUF_SIZE = 1 << 20

_BPF_PROG_TYPE_XDP = 6
_XDP_HEADROOM = 256
_INTERNAL_MAP = re.compile(r"\.(data|bss|rodata|kconfig)(\..*)?$")


def _pin_name(m: Map) -> str:
    """The file name of a map's pin: bpffs refuses names with a dot (``xpro.data``)."""
    return m.name.replace(".", "_")


def object_path(name: str = "xpro") -> Path:
    """The packaged BPF object ``xpro/_objects/{name}.bpf.o``."""
    path = Path(str(files("xpro").joinpath("_objects", f"{name}.bpf.o")))
    if not path.is_file():
        raise DatapathError(
            f"the BPF object {path.name} is missing from the xpro package ({path}); it is "
            "compiled when xpro is installed: reinstall xpro with clang available: "
            "apt-get install clang libbpf-dev && pip install --force-reinstall xpro "
            "(from a source checkout: pip install -e .)"
        )
    return path


class TestRunResult(NamedTuple):
    """What ``BPF_PROG_TEST_RUN`` returned."""

    retval: int
    """The program's return value (an XDP verdict for XDP programs)."""
    data: bytes | None
    """The packet after the program (None if not requested)."""
    duration_ns: int
    """Mean run time per repetition, in ns."""


setattr(TestRunResult, "__test__", False)  # noqa: B010 - not a pytest test class


_new_result = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hot path


class _RunState:
    """Preallocated test_run arguments of one program in one thread.

    Only what changed since the previous call is written into the opts
    struct: test_run is called once per packet by differential tests.
    """

    __slots__ = ("ctx", "cur", "inbuf", "insize", "opts", "out", "outsize")

    def __init__(self) -> None:
        self.opts = ffi.new("struct bpf_test_run_opts *")
        self.opts.sz = ffi.sizeof("struct bpf_test_run_opts")
        self.opts.repeat = 1
        self.insize = 0
        self.inbuf: Any = ffi.NULL
        self.outsize = 0
        self.out: Any = ffi.NULL
        self.ctx: Any = None
        self.cur: tuple[int, int, bool, int, int] = (-1, 1, False, 0, 0)

    def grow(self, n: int) -> None:
        """Room for an ``n``-byte packet in, and for what the program makes of it."""
        self.insize = max(n, 2 * self.insize, 256)
        self.inbuf = ffi.new("char[]", self.insize)
        self.opts.data_in = self.inbuf
        self.outsize = self.insize + 4096  # headroom/tail growth by the program
        self.out = ffi.new("char[]", self.outsize)
        self.cur = (-1, *self.cur[1:])


class Program:
    """One program of a :class:`BpfObject`."""

    def __init__(self, owner: BpfObject, ptr: Any) -> None:
        self._lib = load()
        self._owner = owner
        self._ptr: Any = ptr
        self.name: str = ffi.string(self._lib.bpf_program__name(ptr)).decode()
        self.section: str = ffi.string(self._lib.bpf_program__section_name(ptr)).decode()
        self._fd = -1
        self._tls = threading.local()
        self._log_buf: Any = None

    def __repr__(self) -> str:
        return f"<Program {self.name!r} SEC({self.section!r}) fd={self._fd}>"

    @property
    def fd(self) -> int:
        """The program's file descriptor (after load)."""
        if self._fd < 0:
            if self._ptr is None:
                raise DatapathError(f"program {self.name!r} is closed")
            if not self.autoload:
                raise DatapathError(f"program {self.name!r} was not loaded (not in programs=...)")
            raise DatapathError(f"program {self.name!r} is not loaded yet: call load() first")
        return self._fd

    @property
    def autoload(self) -> bool:
        """Whether load() loads this program."""
        return self._ptr is not None and bool(self._lib.bpf_program__autoload(self._ptr))

    @property
    def type(self) -> int:
        """``enum bpf_prog_type`` (6 is XDP)."""
        if self._ptr is None:
            return _BPF_PROG_TYPE_XDP if self._fd >= 0 else 0
        return int(self._lib.bpf_program__type(self._ptr))

    @property
    def id(self) -> int:
        """The kernel's id of the loaded program (as xdp_query reports it)."""
        info = ffi.new("struct xpro_prog_info *")
        size = ffi.new("__u32 *", ffi.sizeof("struct xpro_prog_info"))
        check(
            self._lib.bpf_obj_get_info_by_fd(self.fd, info, size),
            f"read info of program {self.name!r}",
        )
        return int(info.id)

    def test_run(
        self,
        data: bytes,
        *,
        repeat: int = 1,
        ctx: bytes | None = None,
        flags: int = 0,
        batch_size: int = 0,
        data_out: bool = True,
    ) -> TestRunResult:
        """Run the program on ``data`` with ``BPF_PROG_TEST_RUN``.

        ``repeat`` runs it that many times (duration is the mean); ``ctx`` is
        the input context (``struct xdp_md`` for XDP); with
        ``BPF_F_TEST_XDP_LIVE_FRAMES`` in ``flags`` the frames really go out
        and no data comes back.
        """
        fd = self._fd if self._fd >= 0 else self.fd
        try:
            st: _RunState = self._tls.st
        except AttributeError:
            st = self._tls.st = _RunState()
        o = st.opts
        n = len(data)
        if n > st.insize:
            st.grow(n)
        ffi.memmove(st.inbuf, data, n)
        want = data_out and not flags & BPF_F_TEST_XDP_LIVE_FRAMES
        cur = (n, repeat, want, flags, batch_size)
        if cur != st.cur:
            o.data_size_in = n
            o.repeat = repeat
            o.flags = flags
            o.batch_size = batch_size
            o.data_out = st.out if want else ffi.NULL
            st.cur = cur
        # The kernel checks data_size_out even without a buffer, and writes
        # the packet size back into it: reset it on every call.
        o.data_size_out = st.outsize if want else 0
        if ctx is not None or st.ctx is not None:
            st.ctx = ffi.new("char[]", ctx) if ctx is not None else None
            o.ctx_in = st.ctx if ctx is not None else ffi.NULL
            o.ctx_size_in = len(ctx) if ctx is not None else 0
        rc = self._lib.bpf_prog_test_run_opts(fd, o)
        if rc < 0:
            if rc == -errno.ENOSPC and want:
                raise DatapathError(
                    f"test_run of {self.name!r}: the output packet ({o.data_size_out} "
                    f"bytes) is larger than the {st.outsize}-byte buffer"
                )
            check(rc, f"test_run of program {self.name!r}")
        return _new_result(
            TestRunResult,
            (o.retval, ffi.unpack(st.out, o.data_size_out) if want else None, o.duration),
        )

    def attach_xdp(
        self,
        interface: str | int,
        mode: XdpMode = XdpMode.NATIVE,
        *,
        netns: str | None = None,
        replace: bool = False,
    ) -> XdpLink:
        """Attach to ``interface`` (name or ifindex) at the XDP hook.

        Native and generic use a BPF link (pinnable, see :class:`XdpLink`);
        offload uses netlink.  Raises InterfaceBusy if another program holds
        the interface, unless ``replace``.  ``netns`` names the network
        namespace of the interface.
        """
        return attach_xdp(self, interface, mode, netns=netns, replace=replace)

    def _on_load(self) -> None:
        self._fd = int(self._lib.bpf_program__fd(self._ptr))

    def _on_close(self) -> None:
        self._fd = -1
        self._ptr = None
        self._log_buf = None


class _Maps(Mapping[str, Map]):
    """name -> Map; internal maps also answer to their section name (".data")."""

    def __init__(self, maps: dict[str, Map], aliases: dict[str, str]) -> None:
        self._maps = maps
        self._aliases = aliases

    def __getitem__(self, name: str) -> Map:
        m = self._maps.get(name)
        if m is None:
            m = self._maps.get(self._aliases.get(name, ""))
        if m is None:
            raise KeyError(f"no map {name!r}; the object has {sorted(self._maps)}")
        return m

    def __iter__(self) -> Iterator[str]:
        return iter(self._maps)

    def __len__(self) -> int:
        return len(self._maps)

    def __contains__(self, name: object) -> bool:
        return name in self._maps or name in self._aliases


class _Programs(Mapping[str, Program]):
    def __init__(self, progs: dict[str, Program]) -> None:
        self._progs = progs

    def __getitem__(self, name: str) -> Program:
        try:
            return self._progs[name]
        except KeyError:
            raise KeyError(f"no program {name!r}; the object has {sorted(self._progs)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._progs)

    def __len__(self) -> int:
        return len(self._progs)


class BpfObject:
    """A BPF ELF object opened with libbpf; ``load()`` puts it into the kernel.

    ``programs`` restricts which programs load; ``max_entries`` resizes maps;
    ``pin_dir`` pins every map as ``pin_dir/NAME`` and, at the next load with the
    same ``pin_dir``, reuses the pinned maps (state survives a daemon restart);
    ``types`` attaches numpy dtypes to maps (see :meth:`Map.typed`); ``name``
    overrides the object name.  Use as a context manager to load and close.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        programs: Iterable[str] | None = None,
        max_entries: Mapping[str, int] | None = None,
        pin_dir: str | os.PathLike[str] | None = None,
        name: str | None = None,
        types: Mapping[str, tuple[DTypeLike, DTypeLike]] | None = None,
    ) -> None:
        self._lib = load()
        self.path = Path(path)
        if not self.path.is_file():
            raise DatapathError(f"BPF object {self.path} not found")
        self.pin_dir = Path(pin_dir) if pin_dir is not None else None
        self._obj: Any = None
        self._loaded = False
        self._children: list[GlobalData | RingBuffer] = []

        opts = ffi.new("struct bpf_object_open_opts *")
        opts.sz = ffi.sizeof("struct bpf_object_open_opts")
        c_name = ffi.new("char[]", name.encode()) if name else ffi.NULL
        opts.object_name = c_name
        obj = self._lib.bpf_object__open_file(os.fsencode(self.path), opts)
        if obj == ffi.NULL:
            check(-(ffi.errno or errno.EINVAL), f"open BPF object {self.path}")
        self._obj = obj
        try:
            self._setup(programs, max_entries, types)
        except BaseException:
            self.close()
            raise

    def _setup(
        self,
        programs: Iterable[str] | None,
        max_entries: Mapping[str, int] | None,
        types: Mapping[str, tuple[DTypeLike, DTypeLike]] | None,
    ) -> None:
        lib = self._lib
        self.name: str = ffi.string(lib.bpf_object__name(self._obj)).decode()
        progs: dict[str, Program] = {}
        p = lib.bpf_object__next_program(self._obj, ffi.NULL)
        while p != ffi.NULL:
            prog = Program(self, p)
            progs[prog.name] = prog
            p = lib.bpf_object__next_program(self._obj, p)
        maps: dict[str, Map] = {}
        aliases: dict[str, str] = {}
        mp = lib.bpf_object__next_map(self._obj, ffi.NULL)
        while mp != ffi.NULL:
            m = Map(self, mp)
            maps[m.name] = m
            if lib.bpf_map__is_internal(mp):
                sec = _INTERNAL_MAP.search(m.name)
                if sec:
                    aliases[sec.group(0)] = m.name
            mp = lib.bpf_object__next_map(self._obj, mp)
        self._progs = progs
        self._maps = maps
        self.programs: Mapping[str, Program] = _Programs(progs)
        self.maps: Mapping[str, Map] = _Maps(maps, aliases)

        if programs is not None:
            wanted = set(programs)
            unknown = wanted - progs.keys()
            if unknown:
                raise DatapathError(
                    f"{self.path.name} has no program {sorted(unknown)}; it has {sorted(progs)}"
                )
            for prog in progs.values():
                check(
                    lib.bpf_program__set_autoload(prog._ptr, prog.name in wanted),
                    f"select program {prog.name!r}",
                )
        for mname, n in (max_entries or {}).items():
            self.maps[mname].set_max_entries(n)
        for mname, (kdt, vdt) in (types or {}).items():
            self.maps[mname].typed(kdt, vdt)
        if self.pin_dir is not None:
            self._set_pin_paths(self.pin_dir)

    def _set_pin_paths(self, pin_dir: Path) -> None:
        try:
            pin_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            check(
                -(exc.errno or errno.EACCES),
                f"create the pin directory {pin_dir}",
                path=str(pin_dir),
            )
        require_bpffs(pin_dir, "pin maps")
        for m in self._maps.values():
            check(
                self._lib.bpf_map__set_pin_path(m._ptr, os.fsencode(pin_dir / _pin_name(m))),
                f"set the pin path of map {m.name!r}",
            )

    # ---- lifecycle ---------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> BpfObject:
        """Create the maps (or reuse pinned ones) and load the programs; idempotent."""
        if self._loaded:
            return self
        if self._obj is None:
            raise DatapathError(f"BPF object {self.path.name} is closed")
        lib = self._lib
        if self.pin_dir is not None:
            self._check_pinned_compatible()
        for prog in self._progs.values():
            if prog.autoload:
                prog._log_buf = ffi.new("char[]", LOG_BUF_SIZE)
                check(
                    lib.bpf_program__set_log_buf(prog._ptr, prog._log_buf, LOG_BUF_SIZE),
                    f"set the log buffer of {prog.name!r}",
                )
        rc = lib.bpf_object__load(self._obj)
        if rc < 0:
            log = self._verifier_log()
            check(rc, f"load BPF object {self.path.name}", verifier_log=log)
        for prog in self._progs.values():
            if prog._log_buf is not None:
                lib.bpf_program__set_log_buf(prog._ptr, ffi.NULL, 0)
                prog._log_buf = None
            if prog.autoload:
                prog._on_load()
        for m in self._maps.values():
            m._on_load()
        self._loaded = True
        return self

    def _verifier_log(self) -> str:
        logs = []
        for prog in self._progs.values():
            if prog._log_buf is not None:
                text = ffi.string(prog._log_buf, LOG_BUF_SIZE).decode("utf-8", "replace")
                if text.strip():
                    logs.append(f"-- program {prog.name} (SEC {prog.section}) --\n{text}")
        return "\n".join(logs)

    def _check_pinned_compatible(self) -> None:
        """Say clearly which pinned map differs, instead of libbpf's EINVAL."""
        for m in self._maps.values():
            path = self.pin_dir / _pin_name(m) if self.pin_dir else None
            if path is None or not path.exists():
                continue
            try:
                pinned = Map.from_pin(path)
            except DatapathError:
                continue  # libbpf will report it
            with pinned:
                want: tuple[int, ...] = (
                    m.type,
                    m.key_size,
                    m.value_size,
                    m.max_entries,
                    m.map_flags,
                )
                have: tuple[int, ...] = (
                    pinned.type,
                    pinned.key_size,
                    pinned.value_size,
                    pinned.max_entries,
                    pinned.map_flags,
                )
            if m.type == MapType.RINGBUF:
                want, have = want[:3], have[:3]  # libbpf rounds ring sizes itself
            if want != have:
                fields = ("type", "key_size", "value_size", "max_entries", "map_flags")
                diff = ", ".join(
                    f"{f} {h} (pinned) vs {w}"
                    for f, w, h in zip(fields, want, have, strict=False)
                    if w != h
                )
                raise DatapathError(
                    f"the map pinned at {path} cannot be reused for map {m.name!r}: {diff}; "
                    f"remove the old pins (rm {path}, or BpfObject.unpin_maps()) to start "
                    "with empty maps, or open the object with the old sizes"
                )

    def close(self) -> None:
        """Close the object: programs not attached or pinned are unloaded."""
        for child in self._children:
            child.close()
        self._children.clear()
        if self._obj is not None:
            for prog in self._progs.values() if hasattr(self, "_progs") else ():
                prog._on_close()
            for m in self._maps.values() if hasattr(self, "_maps") else ():
                m._on_close()
            self._lib.bpf_object__close(self._obj)
            self._obj = None
        self._loaded = False

    def __enter__(self) -> BpfObject:
        try:
            return self.load()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_obj", None) is not None:
            with contextlib.suppress(Exception):  # never raise from a finalizer
                self.close()

    def __repr__(self) -> str:
        state = "loaded" if self._loaded else ("closed" if self._obj is None else "open")
        return f"<BpfObject {self.name!r} {self.path} {state}>"

    # ---- pins, global data, ring buffers ---------------------------------------------

    def pins(self) -> dict[str, tuple[str, int, int, int]]:
        """Each map's pin file name in a ``pin_dir`` -> what a pin of it is: its
        kernel name, type, key size and value size (known once the object is
        opened: no privilege, nothing loaded; sizes of entries are left out,
        a configuration sets them)."""
        return {_pin_name(m): (m.name[:15], m.type, m.key_size, m.value_size)
                for m in self._maps.values()}

    def unpin_maps(self) -> None:
        """Remove this object's map pins (and ``pin_dir`` if it is then empty)."""
        if self.pin_dir is None:
            return
        for m in self._maps.values():
            with contextlib.suppress(FileNotFoundError):
                (self.pin_dir / _pin_name(m)).unlink()
        with contextlib.suppress(OSError):  # other pins (e.g. a link) may live there
            self.pin_dir.rmdir()

    def global_data(self, section: str = ".data", dtype: DTypeLike | None = None) -> GlobalData:
        """Map the ``section`` global-data map into memory (see :class:`GlobalData`)."""
        if not self._loaded:
            raise DatapathError("global data can be mapped only after load()")
        gd = GlobalData(self.maps[section], dtype)
        self._children.append(gd)
        return gd

    def ring_buffer(
        self, name: str, callback: Callable[[Any], object], dtype: DTypeLike | None = None
    ) -> RingBuffer:
        """A :class:`RingBuffer` over map ``name``, closed with the object."""
        rb = RingBuffer(self.maps[name], callback, dtype)
        self._children.append(rb)
        return rb
