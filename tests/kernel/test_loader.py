"""xpro.bpf against the real kernel: load, maps, global data, test_run, ring
buffers, pins, verifier errors, XDP attach in native and generic mode.

Layouts come from the shared header that ships with the object (the flat
structs are parsed from it), so these tests follow the C side.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import xpro.bpf as xb
from tests.kernel.conftest import VethNetns
from xpro.bpf import (
    BPF_EXIST,
    BPF_NOEXIST,
    XDP_DROP,
    XDP_PASS,
    BpfObject,
    MapType,
    RingBuffer,
    XdpLink,
    XdpMode,
    detach_xdp,
    in_netns,
    object_path,
    xdp_query,
)
from xpro.bpf._ffi import ffi, load
from xpro.datapath.xdp import CLOCK_MONOTONIC_COARSE
from xpro.errors import (
    AttachError,
    BpffsError,
    BpfLoadError,
    DatapathError,
    InterfaceBusy,
    ModeNotSupported,
    NoSuchInterface,
)

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
CLEAN = {"native": 0, "generic": 0, "offload": 0, "prog_id": 0, "attach_mode": 0}
LINK_MODES = [XdpMode.NATIVE, XdpMode.GENERIC]

# ---- layouts from the header ---------------------------------------------------------------------


def _header() -> str:
    shipped = object_path().parent / "xpro_shared.h"
    return (shipped if shipped.exists() else REPO / "bpf" / "xpro_shared.h").read_text()


_CTYPES = {
    "__u8": "u1",
    "__u16": "<u2",
    "__u32": "<u4",
    "__u64": "<u8",
    "__s32": "<i4",
    "__s64": "<i8",
}


def header_dtype(struct_name: str) -> np.dtype[Any]:
    """The numpy dtype of a flat ``struct NAME`` of the header (C alignment)."""
    body = re.search(rf"struct {struct_name} \{{(.*?)\n\}};", _header(), re.S)
    assert body, struct_name
    fields: list[tuple[Any, ...]] = []
    for ctype, name, n in re.findall(
        r"^\s*(__[us]\d+)\s+(\w+)(?:\[(\d+)\])?;", body.group(1), re.M
    ):
        fields.append((name, _CTYPES[ctype], int(n)) if n else (name, _CTYPES[ctype]))
    return np.dtype(fields, align=True)


def header_const(name: str) -> int:
    m = re.search(rf"\b{name}\s*=?\s*\(?(\d+)", _header())
    assert m, name
    return int(m.group(1))


# struct xpro_dst_key / xpro_flow_key nest structs: spelled out here.
DST_KEY = np.dtype([("addr", "u1", 16), ("port", ">u2"), ("proto", "u1"), ("pad", "u1")])
FLOW_KEY = np.dtype([("src", "u1", 16), ("dst", DST_KEY)])
LPM_KEY = np.dtype([("prefixlen", "<u4"), ("addr", "u1", 16)])


@pytest.fixture(scope="module")
def layouts() -> dict[str, np.dtype[Any]]:
    return {n: header_dtype(n) for n in ("xpro_flow", "xpro_config", "xpro_stat")}


def small_sizes() -> dict[str, int]:
    """Small tables so each load is quick (only for maps the object has)."""
    probe = BpfObject(object_path())  # opened, not loaded
    names = set(probe.maps)
    probe.close()
    want = {"flows": 8192, "dirty0": 8192, "dsts": 1024}
    return {k: v for k, v in want.items() if k in names}


def open_xpro(**kw: Any) -> BpfObject:
    kw.setdefault("max_entries", small_sizes())
    return BpfObject(object_path(), **kw)


@pytest.fixture
def xpro(layouts: dict[str, np.dtype[Any]]) -> Iterator[BpfObject]:
    with open_xpro(types={"flows": (FLOW_KEY, layouts["xpro_flow"])}) as obj:
        yield obj


# ---- packets -------------------------------------------------------------------------------------


def _csum(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp4(
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    sport: int = 4242,
    dport: int = 53,
    payload: bytes = b"x" * 18,
) -> bytes:
    """An Ethernet + IPv4 + UDP frame with valid IPv4 checksum."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        1,
        0,
        64,
        17,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip + udp


def mapped(addr: str) -> bytes:
    return b"\0" * 10 + b"\xff\xff" + socket.inet_aton(addr)


def flow_keys(n: int) -> np.ndarray[Any, np.dtype[Any]]:
    keys = np.zeros(n, dtype=FLOW_KEY)
    idx = np.arange(n, dtype=">u4")
    keys["src"][:, 10:12] = 0xFF
    keys["src"][:, 12:16] = idx.view(np.uint8).reshape(n, 4)
    keys["dst"]["addr"][:, 15] = 7
    keys["dst"]["port"] = 443
    keys["dst"]["proto"] = 6
    return keys


TRUNCATED_IPV4 = udp4()[: 14 + 10]  # Ethernet + half an IPv4 header

# ---- the binding itself --------------------------------------------------------------------------


def test_cdef_layouts_match_libbpf_headers(tmp_path: Path) -> None:
    """Every struct the cdef declares has the C compiler's size and offsets."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None or not Path("/usr/include/bpf/libbpf.h").exists():
        pytest.skip("needs a C compiler and libbpf-dev headers")
    checks = {
        "bpf_object_open_opts": [
            "object_name",
            "relaxed_maps",
            "pin_root_path",
            "kconfig",
            "btf_custom_path",
            "kernel_log_buf",
            "kernel_log_size",
            "kernel_log_level",
        ],
        "bpf_link_create_opts": [
            "flags",
            "iter_info",
            "iter_info_len",
            "target_btf_id",
            "kprobe_multi.cookies",
        ],
        "bpf_test_run_opts": [
            "data_in",
            "data_out",
            "data_size_in",
            "data_size_out",
            "ctx_in",
            "ctx_out",
            "ctx_size_in",
            "ctx_size_out",
            "retval",
            "repeat",
            "duration",
            "flags",
            "cpu",
            "batch_size",
        ],
        "bpf_xdp_query_opts": [
            "prog_id",
            "drv_prog_id",
            "hw_prog_id",
            "skb_prog_id",
            "attach_mode",
        ],
        "bpf_xdp_attach_opts": ["old_prog_fd"],
        "bpf_map_batch_opts": ["elem_flags", "flags"],
        "bpf_link_update_opts": ["flags", "old_prog_fd"],
        "ring_buffer_opts": [],
        "bpf_prog_load_opts": ["attempts", "expected_attach_type", "prog_flags",
                               "prog_ifindex", "fd_array", "log_level", "log_size", "log_buf"],
        "timex": ["modes", "offset", "maxerror", "esterror", "status", "time", "tick",
                  "tai"],
    }
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <sys/timex.h>",
        "#include <bpf/libbpf.h>",
        "#include <bpf/bpf.h>",
        "#include <linux/bpf.h>",
        "int main(void) {",
    ]
    for s, fields in checks.items():
        lines.append(f'printf("{s} %zu\\n", sizeof(struct {s}));')
        lines += [f'printf("{s}.{f} %zu\\n", offsetof(struct {s}, {f}));' for f in fields]
    kernel_info = {
        "xpro_prog_info": ("bpf_prog_info", ["id", "name"]),
        "xpro_map_info": ("bpf_map_info", ["key_size", "max_entries", "name"]),
        "xpro_link_info": ("bpf_link_info", ["prog_id", "xdp.ifindex"]),
    }
    for mine, (real, fields) in kernel_info.items():
        lines += [f'printf("{mine}.{f} %zu\\n", offsetof(struct {real}, {f}));' for f in fields]
    lines += ["return 0; }"]
    src = tmp_path / "probe.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "probe"
    subprocess.run(
        [cc, "-I/usr/include/x86_64-linux-gnu", str(src), "-o", str(exe)],
        check=True,
        capture_output=True,
    )
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        what, value = line.rsplit(" ", 1)
        if "." in what:
            s, field = what.split(".", 1)
            assert ffi.offsetof(f"struct {s}", *field.split(".")) == int(value), what
        else:
            assert ffi.sizeof(f"struct {what}") == int(value), what


def test_object_path_is_the_packaged_object() -> None:
    path = object_path()
    assert path.name == "xpro.bpf.o"
    assert path.parent.name == "_objects"
    with pytest.raises(DatapathError, match="reinstall xpro with clang"):
        object_path("no-such-object")


def test_libbpf_version_and_cpus() -> None:
    assert re.fullmatch(r"1\.\d+", xb.libbpf_version())
    assert xb.num_possible_cpus() >= 1


# ---- load and metadata ---------------------------------------------------------------------------


def test_load_gives_maps_and_programs(xpro: BpfObject) -> None:
    assert xpro.loaded
    flows = xpro.maps["flows"]
    assert flows.type == MapType.LRU_HASH
    assert flows.key_size == FLOW_KEY.itemsize == 36
    assert flows.value_size == header_dtype("xpro_flow").itemsize
    assert flows.max_entries == 8192
    assert flows.fd >= 0
    assert xpro.maps["dsts"].key_size == DST_KEY.itemsize == 20
    stats = xpro.maps["stats"]
    assert stats.type == MapType.PERCPU_ARRAY
    assert stats.max_entries == header_const("XPRO_R_MAX")
    assert stats.value_size == header_dtype("xpro_stat").itemsize
    for name in ("allow_src", "deny_src", "dst_policy"):
        assert xpro.maps[name].type == MapType.LPM_TRIE
        assert xpro.maps[name].key_size == LPM_KEY.itemsize
    assert xpro.maps["events"].type == MapType.RINGBUF
    data = xpro.maps[".data"]
    assert data is xpro.maps[data.name]  # also under libbpf's name, e.g. "xpro.data"
    assert data.type == MapType.ARRAY
    assert data.value_size == header_dtype("xpro_config").itemsize
    assert data.map_flags & xb.maps.BPF_F_MMAPABLE
    progs = xpro.programs
    assert {"xpro_xdp", "xpro_xdp_frags"} <= set(progs)
    assert progs["xpro_xdp"].section == "xdp"
    assert progs["xpro_xdp_frags"].section == "xdp.frags"
    assert progs["xpro_xdp"].type == 6  # BPF_PROG_TYPE_XDP
    assert progs["xpro_xdp"].id > 0
    assert xpro.load() is xpro  # idempotent


def test_programs_selects_what_loads() -> None:
    with open_xpro(programs=["xpro_xdp"]) as obj:
        assert obj.programs["xpro_xdp"].fd >= 0
        with pytest.raises(DatapathError, match="not loaded"):
            _ = obj.programs["xpro_xdp_frags"].fd
    with pytest.raises(DatapathError, match="no program"):
        BpfObject(object_path(), programs=["nope"])


def test_unloaded_and_closed_maps_say_so() -> None:
    obj = open_xpro()
    with pytest.raises(DatapathError, match="not loaded"):
        _ = obj.maps["flows"].fd
    obj.load()
    flows = obj.maps["flows"]
    obj.close()
    with pytest.raises(DatapathError, match="closed"):
        flows[b"\0" * 36]
    with pytest.raises(KeyError, match="no map"):
        obj.maps["nope"]


# ---- maps ----------------------------------------------------------------------------------------


def test_map_crud(xpro: BpfObject, layouts: dict[str, np.dtype[Any]]) -> None:
    flows = xpro.maps["flows"]
    vdt = layouts["xpro_flow"]
    key = flow_keys(1)[0]
    value = np.zeros((), dtype=vdt)
    value["ts1"], value["ts2"], value["c"] = 10, 20, 3

    assert key not in flows
    with pytest.raises(KeyError):
        flows[key]
    assert flows.get(key) is None
    flows[key] = value
    assert key in flows
    got = flows[key]
    assert isinstance(got, np.void)
    assert (int(got["ts1"]), int(got["ts2"]), int(got["c"])) == (10, 20, 3)
    got["c"] = 99  # a copy: the map is unchanged
    assert int(flows[key]["c"]) == 3

    with pytest.raises(KeyError):
        flows.update_elem(key, value, BPF_NOEXIST)
    value["c"] = 4
    flows.update_elem(key, value, BPF_EXIST)
    assert int(flows[key]["c"]) == 4
    other = flow_keys(2)[1]
    with pytest.raises(KeyError):
        flows.update_elem(other, value, BPF_EXIST)
    flows.update_elem(other, value, BPF_NOEXIST)

    # key forms: np.void, 1-element array, raw bytes
    assert int(flows[flow_keys(2)[1:2]]["c"]) == 4
    assert int(flows[key.tobytes()]["c"]) == 4
    assert len(flows) == 2
    assert sorted(k.tobytes() for k in flows) == sorted(k.tobytes() for k in flow_keys(2))
    assert {k.tobytes(): int(v["c"]) for k, v in flows.items()} == {
        k.tobytes(): 4 for k in flow_keys(2)
    }
    del flows[key]
    with pytest.raises(KeyError):
        del flows[key]
    assert len(flows) == 1
    flows.clear()
    assert len(flows) == 0

    with pytest.raises(ValueError, match="36 bytes"):
        flows[b"short"]


def test_untyped_map_uses_bytes(xpro: BpfObject) -> None:
    dsts = xpro.maps["dsts"]
    assert dsts.key_dtype is None
    k, v = bytes(range(20)), bytes(range(dsts.value_size))
    dsts[k] = v
    assert dsts[k] == v
    assert list(dsts) == [k]
    with pytest.raises(DatapathError, match="do not match"):
        dsts.typed(FLOW_KEY, "u1")


def test_batch_update_lookup_delete(xpro: BpfObject, layouts: dict[str, np.dtype[Any]]) -> None:
    flows = xpro.maps["flows"]
    n = 3000
    keys = flow_keys(n)
    values = np.zeros(n, dtype=layouts["xpro_flow"])
    values["c"] = np.arange(n)
    values["ts1"] = 1000 + np.arange(n)
    assert flows.update_batch(keys, values) == n
    assert len(flows) == n

    for chunk in (8192, 256):  # one syscall, then many
        got_k, got_v = flows.lookup_batch(chunk=chunk)
        assert got_k.dtype == FLOW_KEY
        assert got_v.dtype == layouts["xpro_flow"]
        assert got_k.shape == got_v.shape == (n,)
        order = np.argsort(got_v["c"])
        assert np.array_equal(got_k[order].tobytes(), keys.tobytes())
        assert np.array_equal(got_v["ts1"][order], values["ts1"])

    # delete half, plus keys that are not there (skipped, not an error)
    absent = flow_keys(n + 10)[n:]
    assert flows.delete_batch(np.concatenate([keys[::2], absent])) == n // 2
    assert len(flows) == n - n // 2
    got_k, _ = flows.lookup_batch()
    assert sorted(k.tobytes() for k in got_k) == sorted(k.tobytes() for k in keys[1::2])
    flows.clear()
    k0, v0 = flows.lookup_batch()
    assert k0.shape == v0.shape == (0,)


@pytest.mark.parametrize("name", ["flows", "dirty0"])  # LRU hash, hash
def test_take_batch_returns_every_entry_and_empties_the_map(xpro: BpfObject, name: str) -> None:
    m = xpro.maps[name]
    n = 3000
    keys = flow_keys(n)
    values = np.zeros((n, m.value_size), dtype=np.uint8)
    values[:, :4] = np.arange(n, dtype="<u4").view(np.uint8).reshape(n, 4)
    for chunk in (8192, 256):  # one syscall, then many
        assert m.update_batch(keys, values) == n
        got_k, got_v = m.take_batch(chunk=chunk)
        assert len(m) == 0
        got_k = np.asarray(got_k).view(np.uint8).reshape(n, -1)
        got_v = np.asarray(got_v).view(np.uint8).reshape(n, -1)
        order = np.argsort(got_v[:, :4].copy().view("<u4").ravel())
        assert got_k[order].tobytes() == keys.tobytes()
    k0, v0 = m.take_batch()
    assert len(k0) == len(v0) == 0
    with pytest.raises(DatapathError, match="array elements cannot be deleted"):
        xpro.maps["stats"].take_batch()

    # An error after the first chunks puts back what was taken before it is
    # raised, the entries of the failing call included: the kernel reports
    # those with the error (a bucket lock it could not take, a buffer it
    # could not grow), here made up on the third call.
    for err in (errno.EBUSY, errno.ENOMEM):
        assert m.update_batch(keys, values) == n
        failing, calls = fails_on_third_call(m._lib.bpf_map_lookup_and_delete_batch, err)
        with pytest.raises(DatapathError, match="lookup and delete"):
            m._read_batch(failing, 256, "batch lookup and delete", put_back=True)
        assert calls[0] == 3
        assert len(m) == n
        m.clear()


def fails_on_third_call(real: Callable[..., int], err: int
                        ) -> tuple[Callable[..., int], list[int]]:
    """``real``, whose third call returns ``-err`` after doing its work."""
    calls = [0]

    def failing(*a: Any) -> int:
        calls[0] += 1
        rc = int(real(*a))
        return -err if calls[0] == 3 else rc

    return failing, calls


def test_lpm_trie_batch_falls_back_to_iteration(xpro: BpfObject) -> None:
    allow = xpro.maps["allow_src"].typed(LPM_KEY, "<u4")
    keys = np.zeros(5, dtype=LPM_KEY)
    keys["prefixlen"] = 128
    keys["addr"][:, 15] = np.arange(5)
    assert allow.update_batch(keys, np.arange(5, dtype="<u4")) == 5
    got_k, got_v = allow.lookup_batch()
    assert sorted(zip(got_k["addr"][:, 15].tolist(), got_v.tolist(), strict=True)) == [
        (i, i) for i in range(5)
    ]
    assert allow.delete_batch(keys[:2]) == 2
    assert len(allow) == 3


def test_percpu_values_and_sum(xpro: BpfObject, layouts: dict[str, np.dtype[Any]]) -> None:
    stats = xpro.maps["stats"].typed("<u4", layouts["xpro_stat"])
    malformed = header_const("XPRO_R_MALFORMED")
    ncpus = xb.num_possible_cpus()
    for _ in range(3):
        assert xpro.programs["xpro_xdp"].test_run(TRUNCATED_IPV4).retval == XDP_DROP
    per_cpu = stats[malformed]
    assert per_cpu.shape == (ncpus,)
    assert stats.sum(malformed) == {"packets": 3, "bytes": 3 * len(TRUNCATED_IPV4)}
    keys, values = stats.lookup_batch()
    assert values.shape == (stats.max_entries, ncpus)
    assert int(values[keys == malformed]["packets"].sum()) == 3
    # writes: one value for every CPU, or one per CPU
    stats[malformed] = np.zeros((), dtype=layouts["xpro_stat"])
    assert stats.sum(malformed) == {"packets": 0, "bytes": 0}
    v = np.zeros(ncpus, dtype=layouts["xpro_stat"])
    v["packets"] = 1
    stats[malformed] = v
    assert stats.sum(malformed)["packets"] == ncpus
    stats.clear()
    assert stats.sum(malformed)["packets"] == 0


# ---- global data ---------------------------------------------------------------------------------


def test_global_data_write_changes_the_running_program(
    xpro: BpfObject, layouts: dict[str, np.dtype[Any]]
) -> None:
    gd = xpro.global_data(".data", layouts["xpro_config"])
    prog = xpro.programs["xpro_xdp"]
    assert gd.view.shape == ()
    assert int(gd.read()["malformed_policy"]) == header_const("XPRO_MALFORMED_DROP")
    assert prog.test_run(TRUNCATED_IPV4).retval == XDP_DROP
    gd.view["malformed_policy"] = header_const("XPRO_MALFORMED_PASS")
    assert prog.test_run(TRUNCATED_IPV4).retval == XDP_PASS
    rec = gd.read()
    rec["malformed_policy"] = header_const("XPRO_MALFORMED_DROP")
    gd.write(rec)
    assert prog.test_run(TRUNCATED_IPV4).retval == XDP_DROP


def test_fake_clock_in_global_data_shows_in_flows(
    xpro: BpfObject, layouts: dict[str, np.dtype[Any]]
) -> None:
    cfg = xpro.global_data(dtype=layouts["xpro_config"]).view
    flows = xpro.maps["flows"]
    cfg["fake_now"] = 123_456_789_000
    assert xpro.programs["xpro_xdp"].test_run(udp4()).retval == XDP_PASS
    cfg["fake_now"] = 123_456_789_500
    xpro.programs["xpro_xdp"].test_run(udp4())
    (key,), (rec,) = flows.lookup_batch()
    assert bytes(key["src"]) == mapped("10.0.0.1")
    assert bytes(key["dst"]["addr"]) == mapped("10.0.0.2")
    assert (int(rec["ts1"]), int(rec["ts2"]), int(rec["c"])) == (
        123_456_789_000,
        123_456_789_500,
        2,
    )


def test_the_real_clock_is_the_coarse_clock_read_once_a_tick(
    xpro: BpfObject, layouts: dict[str, np.dtype[Any]]
) -> None:
    # The program keeps the coarse clock per CPU for a jiffy (coarse_now in
    # bpf/xpro.bpf.c): what it stamps must still be the clock, and move on.
    xpro.global_data(dtype=layouts["xpro_config"]).view["fake_now"] = 0
    flows, prog = xpro.maps["flows"], xpro.programs["xpro_xdp"]
    tick = time.clock_getres(CLOCK_MONOTONIC_COARSE)
    tick_ns = round(tick * 1e9)
    stamps = []
    for _ in range(3):
        before = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)
        # the first run after the sleep reads the clock, the next ones in
        # its jiffy take what it kept
        assert prog.test_run(udp4(), repeat=3).retval == XDP_PASS
        after = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)
        (rec,) = flows.lookup_batch()[1]
        ts2 = int(rec["ts2"])
        assert before - tick_ns <= ts2 <= after
        stamps.append(ts2)
        time.sleep(max(0.05, 5 * tick))
    gaps = np.diff(stamps)
    assert (gaps >= 0.05e9 - tick_ns).all(), gaps


# ---- test_run ------------------------------------------------------------------------------------


def test_test_run_returns_verdict_data_and_duration(xpro: BpfObject) -> None:
    prog = xpro.programs["xpro_xdp"]
    frame = udp4()
    r = prog.test_run(frame)
    assert isinstance(r, xb.TestRunResult)
    assert r.retval == XDP_PASS
    assert r.data == frame
    assert r.duration_ns >= 0
    r = prog.test_run(frame, repeat=1000, data_out=False)
    assert r.data is None
    assert r.retval == XDP_PASS
    big = udp4(payload=b"y" * 1400)  # the preallocated buffers grow
    assert prog.test_run(big).data == big
    ctx = struct.pack("<6I", 0, 0, 0, 0, 0, 0)  # struct xdp_md with defaults
    assert prog.test_run(frame, ctx=ctx).retval == XDP_PASS
    assert prog.test_run(frame).data == frame


def test_test_run_of_unloaded_program_says_so() -> None:
    obj = open_xpro()
    try:
        with pytest.raises(DatapathError, match="not loaded"):
            obj.programs["xpro_xdp"].test_run(udp4())
    finally:
        obj.close()


# ---- ring buffers --------------------------------------------------------------------------------

SAMPLE = np.dtype([("seq", "<u8"), ("len", "<u4"), ("head", "u1", 4)])


def test_ring_buffer_delivers_samples(compile_prog: Callable[[str], Path]) -> None:
    got: list[Any] = []
    with BpfObject(compile_prog("ringbuf")) as obj:
        prog = obj.programs["sampler"]
        with RingBuffer(obj.maps["samples"], got.append, SAMPLE) as rb:
            assert rb.poll(0) == 0
            for i in range(5):
                prog.test_run(bytes([i]) * (20 + i))
            assert rb.poll(1000) == 5
        assert [int(s["seq"]) for s in got] == [0, 1, 2, 3, 4]
        assert [int(s["len"]) for s in got] == [20, 21, 22, 23, 24]
        assert list(got[3]["head"]) == [3, 3, 3, 3]
        raw: list[bytes] = []
        with obj.ring_buffer("samples", raw.append) as rb:
            prog.test_run(b"\x09" * 30)
            assert rb.consume() == 1
        assert len(raw[0]) == 16
        assert raw[0][8:12] == struct.pack("<I", 30)
        # global data of a small object, and a hash map with int keys
        state = obj.global_data(
            ".data", np.dtype([("seq", "<u8"), ("verdict", "<u4"), ("pad", "<u4")])
        )
        assert int(state.read()["seq"]) == 6
        state.view["verdict"] = XDP_DROP
        assert prog.test_run(b"\0" * 20).retval == XDP_DROP
        by_len = obj.maps["by_len"].typed("<u4", "<u8")
        assert int(by_len[20]) == 2
        # live frames: the program runs once per frame and nothing comes back
        with obj.ring_buffer("samples", raw.append) as rb:
            assert rb.consume() == 1  # the sample of the XDP_DROP run above
            r = prog.test_run(b"\0" * 60, repeat=7, flags=xb.BPF_F_TEST_XDP_LIVE_FRAMES)
            assert r.data is None
            assert rb.consume() == 7
        assert int(by_len[60]) == 7


def test_ring_buffer_callback_exception_is_reraised(
    compile_prog: Callable[[str], Path],
) -> None:
    seen: list[bytes] = []

    def callback(sample: bytes) -> None:
        seen.append(sample)
        if len(seen) == 1:
            raise RuntimeError("callback failed")

    with BpfObject(compile_prog("ringbuf")) as obj:
        rb = obj.ring_buffer("samples", callback)
        for _ in range(3):
            obj.programs["sampler"].test_run(b"\0" * 20)
        with pytest.raises(RuntimeError, match="callback failed"):
            rb.poll(1000)
        assert rb.consume() == 2  # the rest is still there
        assert len(seen) == 3
    with (
        pytest.raises(DatapathError, match="not a ring buffer"),
        BpfObject(compile_prog("ringbuf")) as obj,
    ):
        RingBuffer(obj.maps["by_len"], callback)


def test_xpro_overload_warning_reaches_the_ring_buffer(
    xpro: BpfObject, layouts: dict[str, np.dtype[Any]]
) -> None:
    cfg = xpro.global_data(dtype=layouts["xpro_config"]).view
    cfg["t_f1"], cfg["t_t2"], cfg["events"] = 1, 0, 1
    event = np.dtype(
        {
            "names": ["ts", "kind", "src"],
            "formats": ["<u8", "<u4", ("u1", 16)],
            "offsets": [0, 8, 16],
            "itemsize": 32,
        }
    )
    events: list[Any] = []
    rb = xpro.ring_buffer("events", events.append, event)
    t0 = 1_000_000_000_000
    for i in range(50):
        cfg["fake_now"] = t0 + i * 10_000_000  # 100 packets/s against T_F1 = 1/s
        xpro.programs["xpro_xdp"].test_run(udp4(src="10.9.9.9"))
        rb.poll(0)
        if events:
            break
    assert events, "no overload warning"
    assert int(events[0]["kind"]) == header_const("XPRO_EV_SRC_OVERLOAD")
    assert bytes(events[0]["src"]) == mapped("10.9.9.9")


# ---- pins ----------------------------------------------------------------------------------------


def test_pin_dir_reuses_maps_after_close(pin_dir: Path, layouts: dict[str, np.dtype[Any]]) -> None:
    types = {"flows": (FLOW_KEY, layouts["xpro_flow"])}
    key = flow_keys(1)[0]
    value = np.zeros((), dtype=layouts["xpro_flow"])
    value["c"] = 4242
    with open_xpro(pin_dir=pin_dir, types=types) as obj:
        obj.maps["flows"][key] = value
        obj.global_data(dtype=layouts["xpro_config"]).view["t_f1"] = 777
        pinned = sorted(os.listdir(pin_dir))
    assert "flows" in pinned
    assert all("." not in name for name in pinned)  # bpffs refuses dots
    # The pins hold the maps while no program does.
    with xb.Map.from_pin(pin_dir / "flows") as m:
        assert m.type == MapType.LRU_HASH
        assert len(m) == 1

    with open_xpro(pin_dir=pin_dir, types=types) as obj:
        assert int(obj.maps["flows"][key]["c"]) == 4242
        assert int(obj.global_data(dtype=layouts["xpro_config"]).read()["t_f1"]) == 777

    sizes = small_sizes()
    sizes["flows"] = 2 * sizes["flows"]
    with pytest.raises(DatapathError, match="cannot be reused for map 'flows'"):
        BpfObject(object_path(), pin_dir=pin_dir, max_entries=sizes).load()

    obj = open_xpro(pin_dir=pin_dir)
    obj.unpin_maps()
    obj.close()
    assert not pin_dir.exists()


def test_pin_dir_must_be_on_bpffs(tmp_path: Path) -> None:
    with pytest.raises(BpffsError, match="bpffs"):
        open_xpro(pin_dir=tmp_path / "pins")


def test_ensure_bpffs_mounts_and_is_idempotent(tmp_path: Path) -> None:
    assert xb.is_bpffs(xb.ensure_bpffs())
    target = tmp_path / "bpffs"
    assert not xb.is_bpffs(target)
    try:
        assert xb.ensure_bpffs(target) == target
        assert xb.is_bpffs(target)
        assert xb.ensure_bpffs(target) == target  # already mounted: nothing to do
    finally:
        if xb.is_bpffs(target):
            subprocess.run(["umount", str(target)], check=True)


# ---- verifier errors and logging -----------------------------------------------------------------


def test_verifier_rejection_carries_the_log(
    compile_prog: Callable[[str], Path],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    obj = BpfObject(compile_prog("bad_oob"))
    try:
        with (
            caplog.at_level(logging.DEBUG, logger="xpro.libbpf"),
            pytest.raises(BpfLoadError) as info,
        ):
            obj.load()
    finally:
        obj.close()
    msg = str(info.value)
    assert "verifier" in msg
    assert "invalid access to packet" in msg
    assert "invalid access to packet" in info.value.verifier_log
    assert len(msg.splitlines()) <= 45  # the tail, not the whole log
    # libbpf's own lines went to logging, none raw to stderr
    assert any(r.name == "xpro.libbpf" and "bad_oob" in r.getMessage() for r in caplog.records)
    assert "libbpf:" not in capfd.readouterr().err


# ---- network namespaces --------------------------------------------------------------------------


def test_in_netns_switches_only_this_thread_and_back(veth_netns: VethNetns) -> None:
    before = os.stat("/proc/thread-self/ns/net").st_ino
    with in_netns(veth_netns.netns):
        assert os.stat("/proc/thread-self/ns/net").st_ino != before
        assert socket.if_nametoindex(veth_netns.a) > 0
        assert xb.is_bpffs("/sys/fs/bpf")  # the mount namespace did not change
    assert os.stat("/proc/thread-self/ns/net").st_ino == before
    with pytest.raises(ZeroDivisionError), in_netns(veth_netns.netns):
        _ = 1 / 0
    assert os.stat("/proc/thread-self/ns/net").st_ino == before
    with pytest.raises(AttachError, match="does not exist"), in_netns("xpro-no-such-netns"):
        pass


# ---- XDP attach ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", LINK_MODES, ids=lambda m: m.label)
def test_attach_busy_pin_adopt_detach(
    mode: XdpMode, veth_netns: VethNetns, pin_dir: Path, xpro: BpfObject
) -> None:
    ns, ifname = veth_netns.netns, veth_netns.a
    prog = xpro.programs["xpro_xdp"]
    assert xdp_query(ifname, netns=ns) == CLEAN
    link = prog.attach_xdp(ifname, mode, netns=ns)
    try:
        q = xdp_query(ifname, netns=ns)
        assert q[mode.label] == prog.id == link.prog_id
        with in_netns(ns):
            assert link.ifindex == socket.if_nametoindex(ifname)

        # a second attach, in any mode, is refused with who holds it and what to do
        for other in LINK_MODES:
            with pytest.raises(InterfaceBusy) as busy:
                xpro.programs["xpro_xdp_frags"].attach_xdp(ifname, other, netns=ns)
            msg = str(busy.value)
            assert f"id {prog.id}" in msg
            assert "xpro_xdp" in msg
            assert "xpro detach" in msg
            assert "replace=True" in msg

        pin_dir.mkdir()
        link.pin(pin_dir / "link")
    finally:
        link.close()
    # pinned: closing the fd and the object leaves the program attached
    xpro.close()
    assert xdp_query(ifname, netns=ns)[mode.label] == q[mode.label]

    adopted = XdpLink.from_pin(pin_dir / "link")
    assert adopted.prog_id == q[mode.label]
    adopted.detach()
    assert xdp_query(ifname, netns=ns) == CLEAN
    adopted.unpin()
    adopted.close()
    assert not (pin_dir / "link").exists()


@pytest.mark.parametrize("mode", LINK_MODES, ids=lambda m: m.label)
def test_unpinned_link_goes_with_its_fd(
    mode: XdpMode, veth_netns: VethNetns, xpro: BpfObject
) -> None:
    with xpro.programs["xpro_xdp"].attach_xdp(veth_netns.a, mode, netns=veth_netns.netns):
        assert xdp_query(veth_netns.a, netns=veth_netns.netns)[mode.label]
    assert xdp_query(veth_netns.a, netns=veth_netns.netns) == CLEAN


def test_update_program_and_replace(veth_netns: VethNetns, xpro: BpfObject) -> None:
    ns, ifname = veth_netns.netns, veth_netns.a
    main, frags = xpro.programs["xpro_xdp"], xpro.programs["xpro_xdp_frags"]
    link = main.attach_xdp(ifname, netns=ns)
    try:
        link.update_program(frags)
        assert xdp_query(ifname, netns=ns)["native"] == frags.id
        # replace=True swaps the program in place of the existing link
        again = main.attach_xdp(ifname, XdpMode.NATIVE, netns=ns, replace=True)
        assert xdp_query(ifname, netns=ns)["native"] == main.id
        again.close()
        # replace=True across modes: detach, then attach
        generic = frags.attach_xdp(ifname, XdpMode.GENERIC, netns=ns, replace=True)
        q = xdp_query(ifname, netns=ns)
        assert (q["native"], q["generic"]) == (0, frags.id)
        generic.close()
    finally:
        link.close()
    assert xdp_query(ifname, netns=ns) == CLEAN


def test_detach_xdp_removes_netlink_and_link_attachments(
    veth_netns: VethNetns, xpro: BpfObject
) -> None:
    ns, ifname = veth_netns.netns, veth_netns.a
    prog = xpro.programs["xpro_xdp"]
    lib = load()
    with in_netns(ns):  # what `ip link set dev IF xdpgeneric ...` would do
        ifindex = socket.if_nametoindex(ifname)
        assert lib.bpf_xdp_attach(ifindex, prog.fd, xb.XDP_FLAGS_SKB_MODE, ffi.NULL) == 0
    assert xdp_query(ifname, netns=ns)["generic"] == prog.id
    with pytest.raises(InterfaceBusy):
        prog.attach_xdp(ifname, XdpMode.NATIVE, netns=ns)
    assert detach_xdp(ifname, netns=ns) == [prog.id]
    assert xdp_query(ifname, netns=ns) == CLEAN

    link = prog.attach_xdp(ifname, XdpMode.NATIVE, netns=ns)
    try:
        assert detach_xdp(ifname, mode=XdpMode.GENERIC, netns=ns) == []
        assert detach_xdp(ifname, netns=ns) == [prog.id]
        assert xdp_query(ifname, netns=ns) == CLEAN
        assert link.ifindex == 0  # the link is defunct
    finally:
        link.close()


def test_offload_on_veth_is_not_supported(veth_netns: VethNetns, xpro: BpfObject) -> None:
    with pytest.raises(ModeNotSupported) as info:
        xpro.programs["xpro_xdp"].attach_xdp(veth_netns.a, XdpMode.OFFLOAD, netns=veth_netns.netns)
    msg = str(info.value)
    assert "veth" in msg
    assert veth_netns.a in msg
    assert xdp_query(veth_netns.a, netns=veth_netns.netns) == CLEAN


def test_missing_interface(veth_netns: VethNetns, xpro: BpfObject) -> None:
    with pytest.raises(NoSuchInterface) as info:
        xpro.programs["xpro_xdp"].attach_xdp("xpno0", netns=veth_netns.netns)
    assert "xpno0" in str(info.value)
    assert veth_netns.netns in str(info.value)
    with pytest.raises(NoSuchInterface):
        xdp_query("xpno0", netns=veth_netns.netns)
    # the veth exists only inside its namespace
    with pytest.raises(NoSuchInterface):
        xdp_query(veth_netns.a)


def test_native_attach_with_jumbo_mtu_needs_frags(veth_netns: VethNetns, xpro: BpfObject) -> None:
    veth_netns.set_mtu(9000)
    with pytest.raises(AttachError, match=r"MTU.*xdp\.frags"):
        xpro.programs["xpro_xdp"].attach_xdp(veth_netns.a, XdpMode.NATIVE, netns=veth_netns.netns)
    with xpro.programs["xpro_xdp_frags"].attach_xdp(
        veth_netns.a, XdpMode.NATIVE, netns=veth_netns.netns
    ):
        assert xdp_query(veth_netns.a, netns=veth_netns.netns)["native"]
