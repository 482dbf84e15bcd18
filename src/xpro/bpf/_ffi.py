"""The cffi ABI-mode binding to the system libbpf.so.1: cdef, dlopen, check().

Every declaration xpro uses is here, copied from libbpf 1.1.2's
``<bpf/libbpf.h>`` and ``<bpf/bpf.h>`` (enums passed as ``int``, unnamed
padding bit-fields given names).  Struct layouts must match the library
exactly; ``tests/kernel/test_loader.py`` compares them with the C compiler's.

:func:`check` is the one place where an errno becomes an xpro exception.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import logging
import os
import platform
import threading
from typing import Any

from cffi import FFI

from xpro.errors import (
    AttachError,
    BpffsError,
    BpfLoadError,
    DatapathError,
    InterfaceBusy,
    LibbpfMissing,
    ModeNotSupported,
    NoSuchInterface,
    PrivilegeError,
)

__all__ = [
    "ENOTSUPP",
    "VERIFIER_LOG_TAIL",
    "check",
    "ffi",
    "libbpf_version",
    "libc",
    "load",
    "num_possible_cpus",
]

CDEF = r"""
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef int __s32;
typedef long long __s64;

/* ---- libbpf.h ---------------------------------------------------------- */
__u32 libbpf_major_version(void);
__u32 libbpf_minor_version(void);
const char *libbpf_version_string(void);
int libbpf_strerror(int err, char *buf, size_t size);
int libbpf_num_possible_cpus(void);

/* enum libbpf_print_level level; va_list is passed as a pointer on x86_64 */
typedef int (*libbpf_print_fn_t)(int level, const char *fmt, void *ap);
libbpf_print_fn_t libbpf_set_print(libbpf_print_fn_t fn);

struct bpf_object;
struct bpf_program;
struct bpf_map;
struct ring_buffer;

struct bpf_object_open_opts {
    size_t sz;
    const char *object_name;
    bool relaxed_maps;
    const char *pin_root_path;
    __u32 _removed_attach_prog_fd;          /* __u32 :32; */
    const char *kconfig;
    const char *btf_custom_path;
    char *kernel_log_buf;
    size_t kernel_log_size;
    __u32 kernel_log_level;
};

struct bpf_object *bpf_object__open_file(const char *path,
                                         const struct bpf_object_open_opts *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *object);
const char *bpf_object__name(const struct bpf_object *obj);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj,
                                             struct bpf_program *prog);
struct bpf_map *bpf_object__next_map(const struct bpf_object *obj,
                                     const struct bpf_map *map);

const char *bpf_program__name(const struct bpf_program *prog);
const char *bpf_program__section_name(const struct bpf_program *prog);
bool bpf_program__autoload(const struct bpf_program *prog);
int bpf_program__set_autoload(struct bpf_program *prog, bool autoload);
int bpf_program__fd(const struct bpf_program *prog);
int bpf_program__type(const struct bpf_program *prog);     /* enum bpf_prog_type */
void bpf_program__set_ifindex(struct bpf_program *prog, __u32 ifindex);
int bpf_map__set_ifindex(struct bpf_map *map, __u32 ifindex);
int bpf_program__set_log_level(struct bpf_program *prog, __u32 log_level);
int bpf_program__set_log_buf(struct bpf_program *prog, char *log_buf, size_t log_size);

int bpf_map__fd(const struct bpf_map *map);
const char *bpf_map__name(const struct bpf_map *map);
int bpf_map__type(const struct bpf_map *map);             /* enum bpf_map_type */
__u32 bpf_map__max_entries(const struct bpf_map *map);
int bpf_map__set_max_entries(struct bpf_map *map, __u32 max_entries);
__u32 bpf_map__map_flags(const struct bpf_map *map);
__u32 bpf_map__key_size(const struct bpf_map *map);
__u32 bpf_map__value_size(const struct bpf_map *map);
bool bpf_map__is_internal(const struct bpf_map *map);
int bpf_map__set_pin_path(struct bpf_map *map, const char *path);
const char *bpf_map__pin_path(const struct bpf_map *map);
bool bpf_map__is_pinned(const struct bpf_map *map);

struct bpf_xdp_attach_opts {
    size_t sz;
    int old_prog_fd;
};
struct bpf_xdp_query_opts {
    size_t sz;
    __u32 prog_id;
    __u32 drv_prog_id;
    __u32 hw_prog_id;
    __u32 skb_prog_id;
    __u8 attach_mode;
};
int bpf_xdp_attach(int ifindex, int prog_fd, __u32 flags,
                   const struct bpf_xdp_attach_opts *opts);
int bpf_xdp_detach(int ifindex, __u32 flags, const struct bpf_xdp_attach_opts *opts);
int bpf_xdp_query(int ifindex, int flags, struct bpf_xdp_query_opts *opts);

typedef int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size);
struct ring_buffer_opts {
    size_t sz;
};
struct ring_buffer *ring_buffer__new(int map_fd, ring_buffer_sample_fn sample_cb,
                                     void *ctx, const struct ring_buffer_opts *opts);
void ring_buffer__free(struct ring_buffer *rb);
int ring_buffer__poll(struct ring_buffer *rb, int timeout_ms);
int ring_buffer__consume(struct ring_buffer *rb);
int ring_buffer__epoll_fd(const struct ring_buffer *rb);

/* ---- bpf.h ------------------------------------------------------------- */
int bpf_map_update_elem(int fd, const void *key, const void *value, __u64 flags);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);

struct bpf_map_batch_opts {
    size_t sz;
    __u64 elem_flags;
    __u64 flags;
};
int bpf_map_delete_batch(int fd, const void *keys, __u32 *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys,
                         void *values, __u32 *count, const struct bpf_map_batch_opts *opts);
int bpf_map_update_batch(int fd, const void *keys, const void *values, __u32 *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_map_lookup_and_delete_batch(int fd, void *in_batch, void *out_batch, void *keys,
                                    void *values, __u32 *count,
                                    const struct bpf_map_batch_opts *opts);

int bpf_obj_pin(int fd, const char *pathname);
int bpf_obj_get(const char *pathname);

struct bpf_link_create_opts {
    size_t sz;
    __u32 flags;
    void *iter_info;                        /* union bpf_iter_link_info * */
    __u32 iter_info_len;
    __u32 target_btf_id;
    union {
        struct {
            __u64 bpf_cookie;
        } perf_event;
        struct {
            __u32 flags;
            __u32 cnt;
            const char **syms;
            const unsigned long *addrs;
            const __u64 *cookies;
        } kprobe_multi;
        struct {
            __u64 cookie;
        } tracing;
    };
};
int bpf_link_create(int prog_fd, int target_fd, int attach_type,
                    const struct bpf_link_create_opts *opts);
int bpf_link_detach(int link_fd);

struct bpf_link_update_opts {
    size_t sz;
    __u32 flags;
    __u32 old_prog_fd;
};
int bpf_link_update(int link_fd, int new_prog_fd, const struct bpf_link_update_opts *opts);

int bpf_prog_get_fd_by_id(__u32 id);
int bpf_link_get_fd_by_id(__u32 id);
int bpf_link_get_next_id(__u32 start_id, __u32 *next_id);
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, __u32 *info_len);

struct bpf_test_run_opts {
    size_t sz;
    const void *data_in;
    void *data_out;
    __u32 data_size_in;
    __u32 data_size_out;
    const void *ctx_in;
    void *ctx_out;
    __u32 ctx_size_in;
    __u32 ctx_size_out;
    __u32 retval;
    int repeat;
    __u32 duration;
    __u32 flags;
    __u32 cpu;
    __u32 batch_size;
};
int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts);

/* ---- linux/bpf.h: leading fields of the info structs (the kernel accepts a
 * shorter info_len and fills only what fits) ------------------------------ */
struct xpro_prog_info {
    __u32 type;
    __u32 id;
    __u8 tag[8];
    __u32 jited_prog_len;
    __u32 xlated_prog_len;
    __u64 jited_prog_insns;
    __u64 xlated_prog_insns;
    __u64 load_time;
    __u32 created_by_uid;
    __u32 nr_map_ids;
    __u64 map_ids;
    char name[16];
};
struct xpro_map_info {
    __u32 type;
    __u32 id;
    __u32 key_size;
    __u32 value_size;
    __u32 max_entries;
    __u32 map_flags;
    char name[16];
};
struct xpro_link_info {
    __u32 type;
    __u32 id;
    __u32 prog_id;
    __u32 _pad;                             /* the union is 8-byte aligned */
    union {
        __u64 _align;
        struct {
            __u32 ifindex;
        } xdp;
    };
};

/* ---- feature probes and a raw program load (xpro doctor) ------------------- */

int libbpf_probe_bpf_prog_type(int prog_type, const void *opts);
int libbpf_probe_bpf_map_type(int map_type, const void *opts);
int libbpf_probe_bpf_helper(int prog_type, int helper_id, const void *opts);

struct bpf_prog_load_opts {
    size_t sz;
    int attempts;
    int expected_attach_type;
    __u32 prog_btf_fd;
    __u32 prog_flags;
    __u32 prog_ifindex;
    __u32 kern_version;
    __u32 attach_btf_id;
    __u32 attach_prog_fd;
    __u32 attach_btf_obj_fd;
    const int *fd_array;
    const void *func_info;
    __u32 func_info_cnt;
    __u32 func_info_rec_size;
    const void *line_info;
    __u32 line_info_cnt;
    __u32 line_info_rec_size;
    __u32 log_level;
    __u32 log_size;
    char *log_buf;
};
int bpf_prog_load(int prog_type, const char *prog_name, const char *license,
                  const void *insns, size_t insn_cnt, const struct bpf_prog_load_opts *opts);

/* ---- libc ---------------------------------------------------------------- */
struct xpro_timeval { long tv_sec; long tv_usec; };
struct timex {
    unsigned int modes;
    long offset;
    long freq;
    long maxerror;
    long esterror;
    int status;
    long constant;
    long precision;
    long tolerance;
    struct xpro_timeval time;
    long tick;
    long ppsfreq;
    long jitter;
    int shift;
    long stabil;
    long jitcnt;
    long calcnt;
    long errcnt;
    long stbcnt;
    int tai;
    int _reserved[11];
};
int adjtimex(struct timex *buf);
int vsnprintf(char *str, size_t size, const char *format, void *ap);
int setns(int fd, int nstype);
int mount(const char *source, const char *target, const char *filesystemtype,
          unsigned long mountflags, const void *data);
int statfs(const char *path, void *buf);
"""

ffi = FFI()
ffi.cdef(CDEF)

#: Kernel-internal "operation not supported" that leaks out of bpf(2) for map
#: types without batch operations.
ENOTSUPP = 524

#: Lines of the verifier log kept in a BpfLoadError message.
VERIFIER_LOG_TAIL = 40

_log = logging.getLogger("xpro.libbpf")
_lock = threading.Lock()
_lib: Any = None


def _resolve_all(lib: Any) -> None:
    """Look up every declared symbol now.

    cffi resolves a symbol on first attribute access under its parser lock,
    which is not reentrant: a first access from a finalizer (``__del__`` run by
    the GC while cffi parses a type) would deadlock.
    """
    for name in dir(lib):
        # AttributeError: declared here but not in this library (libc vs libbpf)
        with contextlib.suppress(AttributeError):
            getattr(lib, name)


libc: Any = ffi.dlopen(None)
_resolve_all(libc)


def load() -> Any:
    """Return the loaded libbpf (dlopen on first use), with logging routed."""
    global _lib  # noqa: PLW0603 - a process-wide handle, set once
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            try:
                lib = ffi.dlopen("libbpf.so.1")
            except OSError as exc:
                raise LibbpfMissing(
                    f"cannot load libbpf.so.1 ({exc}); install it: apt-get install libbpf1"
                ) from exc
            _resolve_all(lib)
            lib.libbpf_set_print(_print_cb)
            _lib = lib
    return _lib


def libbpf_version() -> str:
    """The version of the loaded libbpf, e.g. ``"1.1"``."""
    lib = load()
    return f"{lib.libbpf_major_version()}.{lib.libbpf_minor_version()}"


def num_possible_cpus() -> int:
    """The number of possible CPUs: the per-CPU value count of per-CPU maps."""
    n = int(load().libbpf_num_possible_cpus())
    check(n, "count the possible CPUs")
    return n


# ---- libbpf log routing ------------------------------------------------------

_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)
_X86_64 = platform.machine() in ("x86_64", "AMD64")


def _format(fmt: Any, ap: Any) -> str:
    """vsnprintf(fmt, ap); on x86_64 a va_list copy allows a second, larger try."""
    size = 1024
    ap_copy = None
    if _X86_64:
        # va_list is __va_list_tag[1] (24 bytes); va_copy is a plain copy.
        ap_copy = ffi.new("char[24]")
        ffi.memmove(ap_copy, ap, 24)
    buf = ffi.new("char[]", size)
    n = libc.vsnprintf(buf, size, fmt, ap)
    if n >= size and ap_copy is not None:
        size = n + 1
        buf = ffi.new("char[]", size)
        n = libc.vsnprintf(buf, size, fmt, ap_copy)
    if n < 0:
        return ""
    return str(ffi.string(buf, size - 1).decode("utf-8", "replace"))


def _print(level: int, fmt: Any, ap: Any) -> int:
    try:
        pylevel = _LEVELS[level] if 0 <= level < len(_LEVELS) else logging.DEBUG
        if _log.isEnabledFor(pylevel):
            msg = _format(fmt, ap).rstrip("\n")
            if msg:
                _log.log(pylevel, "%s", msg)
    except Exception:  # never let a log line unwind through C
        return 0
    return 0


_print_cb: Any = ffi.callback("libbpf_print_fn_t", _print)


# ---- errors --------------------------------------------------------------------


def _errname(code: int) -> str:
    if code == ENOTSUPP:
        return "ENOTSUPP"
    return _errno.errorcode.get(code, f"errno {code}")


def _strerror(code: int) -> str:
    if code == ENOTSUPP:
        return "Operation not supported"
    return os.strerror(code)


def _where(ifname: str | None, netns: str | None) -> str:
    ns = f"network namespace {netns!r}" if netns else "the current network namespace"
    return f"interface {ifname!r} in {ns}" if ifname else ns


def check(
    rc: int,
    what: str,
    *,
    ifname: str | None = None,
    netns: str | None = None,
    mode: str | None = None,
    driver: str | None = None,
    holder: str | None = None,
    verifier_log: str | None = None,
    path: str | None = None,
) -> int:
    """Return ``rc`` if it is >= 0, else raise the xpro error for ``-rc``.

    ``what`` says what was being done ("attach xpro_xdp to eth0").  The keyword
    arguments give context for the message: the interface, network namespace,
    XDP mode name (``"native"``, ``"generic"``, ``"offload"``) and driver of an
    attach; the program that holds an interface; the verifier log of a load; the
    bpffs path of a pin.  The OSError for the errno is chained as ``__cause__``.
    """
    if rc >= 0:
        return rc
    code = -rc
    cause = OSError(code, _strerror(code))
    base = f"{what}: {_strerror(code)} ({_errname(code)})"
    exc: DatapathError

    if code == _errno.EPERM and path is not None and verifier_log is None and os.geteuid() == 0:
        exc = BpffsError(
            f"{base}; {path} must be on a bpffs mount (mount it with "
            "`mount -t bpf bpf /sys/fs/bpf`, xpro.bpf.ensure_bpffs()) and its name "
            "must not contain a dot"
        )
    elif verifier_log:
        tail = "\n".join(verifier_log.rstrip("\n").splitlines()[-VERIFIER_LOG_TAIL:])
        exc = BpfLoadError(
            f"{base}; the kernel verifier rejected the program. "
            f"Last lines of the verifier log:\n{tail}",
            verifier_log,
        )
    elif code in (_errno.EPERM, _errno.EACCES):
        exc = PrivilegeError(f"{base}; run as root or grant CAP_BPF and CAP_NET_ADMIN")
    elif code in (_errno.ENODEV, _errno.ENXIO) and (ifname is not None or mode is not None):
        exc = NoSuchInterface(
            f"{what}: no {_where(ifname, netns)}; check the name with "
            f"`ip {'-n ' + netns + ' ' if netns else ''}link`"
        )
    elif mode == "offload" and code in (_errno.EINVAL, _errno.EOPNOTSUPP, ENOTSUPP):
        exc = ModeNotSupported(
            f"{base}; {_where(ifname, netns)} (driver {driver or 'unknown'}) does not "
            "support XDP hardware offload; use the native or generic mode "
            "(`--backend native` or `generic`), or a SmartNIC whose driver offloads XDP"
        )
    elif mode is not None and code in (_errno.EOPNOTSUPP, ENOTSUPP):
        exc = ModeNotSupported(
            f"{base}; {_where(ifname, netns)} (driver {driver or 'unknown'}) does not "
            f"support XDP in {mode} mode; use the generic mode (`--backend generic`, "
            "or `--backend auto`, which falls back to it where native is missing)"
        )
    elif mode is not None and code in (_errno.EBUSY, _errno.EEXIST):
        held = holder or "another XDP program"
        where = _where(ifname, netns)
        exc = InterfaceBusy(
            f"{what}: {where} is already held by {held}; detach it first with "
            f"`xpro detach --interface {ifname or 'IF'}"
            f"{f' --netns {netns}' if netns else ''}` (xpro.bpf.detach_xdp) if it is a "
            "leftover; xpro never replaces it silently (from Python: attach with "
            "replace=True)"
        )
    elif mode == "native" and code == _errno.ERANGE:
        exc = AttachError(
            f"{base}; the MTU of {_where(ifname, netns)} or of its veth peer is too "
            "large for a single-buffer XDP program (above ~3498 bytes on veth): lower "
            'the MTU or attach the multi-buffer program (SEC("xdp.frags"), '
            "xpro_xdp_frags)"
        )
    elif mode is not None:
        exc = AttachError(f"{base} ({_where(ifname, netns)}, {mode} mode)")
    elif code == _errno.ENOENT and path is not None:
        exc = DatapathError(f"{what}: {path} does not exist")
    else:
        exc = DatapathError(base)
    raise exc from cause
