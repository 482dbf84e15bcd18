"""The reduced program of the ``offload`` backend: offload-safe, and exact.

Three kinds of test:

* a static check of the compiled object ``xpro_offload.bpf.o`` against the
  limits of XDP hardware offload (:func:`offload_violations`), and the same
  checker run on the full program, which it must reject (so it can fail);
* the program itself through ``BPF_PROG_TEST_RUN``: keys in its drop maps are
  dropped, everything else passes, for every frame shape the full program's
  parser knows;
* :func:`xpro.backends.offload.drop_set` against the full kernel program:
  after a random trace (fake clock), every flow and destination it names is
  one the full program drops at that moment, and no other.

The offload limits checked here, and their sources, are in docs/backends.rst.
"""

from __future__ import annotations

import ipaddress
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.packets import arp_frame, frame
from xpro.backends.offload import (
    OFFLOAD_OBJECT,
    OFFLOAD_PROGRAM,
    DropSet,
    OffReason,
    ReducedProgram,
    drop_set,
)
from xpro.bpf import XDP_DROP, XDP_PASS, BpfObject, MapType, object_path
from xpro.core import layout as L
from xpro.core import model
from xpro.core.params import Sizes
from xpro.datapath.xdp import XdpFilter

pytestmark = pytest.mark.kernel

S = model.NS_PER_S
MS = S // 1000
T0 = 1_700_000_000 * S

# --- the static check ------------------------------------------------------------

#: Map types an offload NIC holds (nfp: kernel/bpf/offload.c accepts only these two
#: for a device-bound map, and the nfp driver's map_alloc the same).
OFFLOAD_MAP_TYPES = frozenset({MapType.HASH, MapType.ARRAY})
#: Helpers the reduced program may call: the map helpers nfp's verifier
#: (nfp_bpf_check_helper_call) accepts when the firmware has them.  It also
#: knows xdp_adjust_head/tail, get_prandom_u32 and perf_event_output, which the
#: drop set does not need, so they are refused here too.
OFFLOAD_HELPERS = {1: "map_lookup_elem", 2: "map_update_elem", 3: "map_delete_elem"}
#: A bound on the program's size in BPF instructions.  nfp's code store holds a
#: few thousand NFP instructions and its JIT emits several per BPF instruction;
#: 1024 keeps the reduced program well inside (it is ~600 today).
MAX_INSNS = 1024
#: nfp: key and value, each rounded up to 8 bytes, must fit max_elem_sz, which
#: the firmware reports; 64 bytes is the figure documented for the Agilio cards.
MAX_ELEM_BYTES = 64

HELPER_NAMES = {5: "ktime_get_ns", 12: "tail_call", 93: "spin_lock", 94: "spin_unlock",
                125: "ktime_get_boot_ns", 130: "ringbuf_output", 131: "ringbuf_reserve",
                132: "ringbuf_submit", 160: "ktime_get_coarse_ns", 181: "loop",
                189: "xdp_get_buff_len", 208: "ktime_get_tai_ns"}

_BPF_JMP, _BPF_JMP32, _BPF_STX = 0x05, 0x06, 0x03
_BPF_ATOMIC = 0xC0
_LD_IMM64 = 0x18
_GLOBAL_DATA = (".data", ".bss", ".rodata")


@dataclass(frozen=True)
class Insn:
    code: int
    dst: int
    src: int
    off: int
    imm: int


def _insns(data: bytes) -> list[tuple[int, Insn]]:
    """(slot, instruction) pairs; the second slot of a 16-byte ld_imm64 is skipped."""
    out: list[tuple[int, Insn]] = []
    slot = 0
    while slot * 8 < len(data):
        code, regs, off, imm = struct.unpack_from("<BBhi", data, slot * 8)
        out.append((slot, Insn(code, regs & 0xF, regs >> 4, off, imm)))
        slot += 2 if code == _LD_IMM64 else 1
    return out


def _has_loop(insns: list[tuple[int, Insn]]) -> bool:
    """Whether the control-flow graph of one program has a cycle (iterative DFS)."""
    slots = {s for s, _ in insns}
    succ: dict[int, list[int]] = {}
    order = [s for s, _ in insns]
    nxt = dict(zip(order, [*order[1:], -1], strict=True))
    for s, i in insns:
        cls, op = i.code & 0x07, i.code & 0xF0
        if cls in (_BPF_JMP, _BPF_JMP32) and op == 0x90:  # exit
            succ[s] = []
        elif cls == _BPF_JMP and op == 0x00:  # ja
            succ[s] = [s + 1 + i.off]
        elif cls in (_BPF_JMP, _BPF_JMP32) and op != 0x80:  # conditional
            succ[s] = [nxt[s], s + 1 + i.off]
        else:
            succ[s] = [nxt[s]]
        succ[s] = [t for t in succ[s] if t in slots]
    color = dict.fromkeys(slots, 0)  # 0 new, 1 on the stack, 2 done
    for root in order:
        if color[root]:
            continue
        stack = [(root, iter(succ[root]))]
        color[root] = 1
        while stack:
            node, it = stack[-1]
            for t in it:
                if color[t] == 1:
                    return True
                if color[t] == 0:
                    color[t] = 1
                    stack.append((t, iter(succ[t])))
                    break
            else:
                color[node] = 2
                stack.pop()
    return False


def offload_violations(path: Path) -> list[str]:
    """Everything in the BPF object at ``path`` outside the offload-safe set (empty: fine).

    Instructions and relocations are read from the ELF file (pyelftools);
    maps as libbpf sees them after open (type, flags, sizes, internal maps for
    global data), without loading anything.
    """
    bad: list[str] = []
    with path.open("rb") as fh:
        elf = ELFFile(fh)
        names = {i: s.name for i, s in enumerate(elf.iter_sections())}
        symtab = elf.get_section_by_name(".symtab")
        assert symtab is None or isinstance(symtab, SymbolTableSection)
        for sec in elf.iter_sections():
            if sec.name.startswith(_GLOBAL_DATA) and sec["sh_size"]:
                bad.append(f"global data section {sec.name} (needs direct map-value access)")
            if isinstance(sec, RelocationSection) and symtab is not None:
                target = names.get(sec["sh_info"], "")
                tsec = elf.get_section(sec["sh_info"]) if sec["sh_info"] else None
                if tsec is None or not tsec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
                    continue
                for rel in sec.iter_relocations():
                    sym = symtab.get_symbol(rel["r_info_sym"])
                    where = names.get(sym["st_shndx"], "") if isinstance(
                        sym["st_shndx"], int) else str(sym["st_shndx"])
                    if where.startswith(_GLOBAL_DATA):
                        bad.append(f"{target}: reference to global data {sym.name or where} "
                                   f"at offset {rel['r_offset']}")
                    elif where == "SHN_UNDEF":
                        bad.append(f"{target}: reference to extern {sym.name} (kfunc/kconfig)")
        for sec in elf.iter_sections():
            if not (sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR) or not sec["sh_size"]:
                continue
            insns = _insns(sec.data())
            if len(insns) > MAX_INSNS:
                bad.append(f"{sec.name}: {len(insns)} instructions, above the bound {MAX_INSNS}")
            for slot, i in insns:
                cls = i.code & 0x07
                if i.code == 0x85:
                    if i.src == 1:
                        bad.append(f"{sec.name}+{slot}: bpf-to-bpf call (inline it)")
                    elif i.src != 0:
                        bad.append(f"{sec.name}+{slot}: kfunc call")
                    elif i.imm not in OFFLOAD_HELPERS:
                        name = HELPER_NAMES.get(i.imm, f"#{i.imm}")
                        bad.append(f"{sec.name}+{slot}: helper {name} ({i.imm})")
                elif cls == _BPF_STX and i.code & 0xE0 == _BPF_ATOMIC and i.imm != 0:
                    bad.append(f"{sec.name}+{slot}: atomic operation {i.imm:#x} "
                               "(only an add without fetch)")
                elif i.code == 0x8D:
                    bad.append(f"{sec.name}+{slot}: indirect call")
            if _has_loop(insns):
                bad.append(f"{sec.name}: a loop in the control flow (unroll it)")
    obj = BpfObject(path)
    try:
        for m in obj.maps.values():
            t = MapType(m.type) if m.type in MapType._value2member_map_ else m.type
            if t not in OFFLOAD_MAP_TYPES:
                bad.append(f"map {m.name}: type {getattr(t, 'name', t)}")
            if m.map_flags:
                bad.append(f"map {m.name}: flags {m.map_flags:#x}")
            if t in OFFLOAD_MAP_TYPES and (
                    -(-m.key_size // 8) * 8 + -(-m.value_size // 8) * 8 > MAX_ELEM_BYTES):
                bad.append(f"map {m.name}: key {m.key_size} + value {m.value_size} bytes "
                           f"exceed {MAX_ELEM_BYTES}")
    finally:
        obj.close()
    return bad


def test_reduced_program_is_offload_safe() -> None:
    assert offload_violations(object_path(OFFLOAD_OBJECT)) == []


def test_checker_rejects_the_full_program() -> None:
    bad = offload_violations(object_path())
    text = "\n".join(bad)
    for what in ("type LRU_HASH", "type LPM_TRIE", "type RINGBUF", "type PERCPU_ARRAY",
                 "helper ktime_get_coarse_ns", "helper ringbuf_reserve", "helper loop",
                 "global data section .data", "atomic operation 0x1", "flags 0x1"):
        assert what in text, f"{what!r} not reported in:\n{text}"


def test_checker_counts_instructions_and_finds_loops() -> None:
    # A straight line, a forward branch, a back edge (jump to itself).
    ret = struct.pack("<BBhi", 0xB7, 0, 0, 2) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    fwd = struct.pack("<BBhi", 0x15, 1, 1, 0) + ret + struct.pack("<BBhi", 0x95, 0, 0, 0)
    back = struct.pack("<BBhi", 0x15, 1, -1, 0) + ret
    wide = struct.pack("<BBhi", _LD_IMM64, 1, 0, 7) + bytes(8) + ret
    assert not _has_loop(_insns(ret))
    assert not _has_loop(_insns(fwd))
    assert _has_loop(_insns(back))
    assert [s for s, _ in _insns(wide)] == [0, 2, 3]


_BAD_SRC = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

__u32 limit SEC(".data") = 4;

static __attribute__((noinline)) int helper(struct xdp_md *ctx)
{
	return ctx->data_end - ctx->data > 100;
}

SEC("xdp")
int bad(struct xdp_md *ctx)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&counts, &k);
	volatile __u32 n = bpf_ktime_get_ns() & 7;

	for (__u32 i = 0; i < n && i < limit; i++)
		k += helper(ctx);
	if (v)
		*v = __sync_fetch_and_add(v, k);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
"""


def test_checker_finds_each_kind_of_violation(tmp_path: Path) -> None:
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang is needed to build the test program")
    src, obj = tmp_path / "bad.bpf.c", tmp_path / "bad.bpf.o"
    src.write_text(_BAD_SRC)
    cmd = [clang, "-O2", "-g", "-target", "bpf", "-c", str(src), "-o", str(obj)]
    if Path("/usr/include/x86_64-linux-gnu").is_dir():
        cmd.insert(1, "-I/usr/include/x86_64-linux-gnu")
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    text = "\n".join(offload_violations(obj))
    for what in ("type PERCPU_HASH", "helper ktime_get_ns", "bpf-to-bpf call",
                 "a loop in the control flow", "global data section .data",
                 "reference to global data", "atomic operation 0x1"):
        assert what in text, f"{what!r} not reported in:\n{text}"


# --- the reduced program, through BPF_PROG_TEST_RUN ------------------------------


@pytest.fixture(scope="module")
def reduced() -> Iterator[ReducedProgram]:
    prog = ReducedProgram(ifindex=None, flows_max=256, dsts_max=64)
    try:
        yield prog
    finally:
        prog.close()


@pytest.fixture
def prog(reduced: ReducedProgram) -> ReducedProgram:
    reduced.set_dst_mode(L.DST_ADDR)
    reduced.set_drops(DropSet(np.zeros(0, L.FLOW_KEY), np.zeros(0, L.DST_KEY)))
    return reduced


def _keys(frames: list[bytes], dst_mode: int = L.DST_ADDR) -> DropSet:
    parsed = [model.parse(f, dst_mode) for f in frames]
    flows = np.frombuffer(b"".join(p.key for p in parsed), dtype=L.FLOW_KEY)
    return DropSet(flows, np.zeros(0, L.DST_KEY))


def _dsts(frames: list[bytes], dst_mode: int = L.DST_ADDR) -> DropSet:
    parsed = [model.parse(f, dst_mode) for f in frames]
    dsts = np.frombuffer(b"".join(p.dst for p in parsed), dtype=L.DST_KEY)
    return DropSet(np.zeros(0, L.FLOW_KEY), dsts)


def _run(p: ReducedProgram, f: bytes) -> int:
    return p.program.test_run(f, data_out=False).retval


SHAPES = {
    "v4": frame("10.1.0.1", "10.2.0.1"),
    "v4-vlan": frame("10.1.0.1", "10.2.0.1", vlans=1),
    "v4-qinq": frame("10.1.0.1", "10.2.0.1", vlans=2),
    "v4-frag": frame("10.1.0.1", "10.2.0.1", frag=True),
    "v4-tcp": frame("10.1.0.1", "10.2.0.1", proto="tcp"),
    "v6": frame("2001:db8::1", "2001:db8:9::1"),
    "v6-ext": frame("2001:db8::1", "2001:db8:9::1", ext=("hop", "dest")),
    "v6-frag": frame("2001:db8::1", "2001:db8:9::1", ext=("frag",)),
    "v6-vlan": frame("2001:db8::1", "2001:db8:9::1", vlans=1),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_flow_in_the_drop_set_is_dropped_and_no_other(prog: ReducedProgram,
                                                       shape: str) -> None:
    f = SHAPES[shape]
    v6 = shape.startswith("v6")
    other_src = frame("2001:db8::2" if v6 else "10.1.0.2", "2001:db8:9::1" if v6 else "10.2.0.1")
    other_dst = frame("2001:db8::1" if v6 else "10.1.0.1", "2001:db8:9::2" if v6 else "10.2.0.2")
    assert _run(prog, f) == XDP_PASS
    assert prog.set_drops(_keys([f])) == (1, 0)
    assert _run(prog, f) == XDP_DROP
    assert _run(prog, other_src) == XDP_PASS
    assert _run(prog, other_dst) == XDP_PASS
    assert prog.hits("drop_flows") == {model.parse(f, 0).key: 1}


def test_a_destination_in_the_drop_set_drops_every_source(prog: ReducedProgram) -> None:
    to_d = [frame(f"10.1.0.{i}", "10.2.0.9") for i in range(1, 6)]
    elsewhere = frame("10.1.0.1", "10.2.0.8")
    assert prog.set_drops(_dsts(to_d[:1])) == (1, 0)
    before = prog.counters()
    assert [_run(prog, f) for f in to_d] == [XDP_DROP] * 5
    assert _run(prog, elsewhere) == XDP_PASS
    d = prog.counters() - before
    assert d[OffReason.DST].tolist() == [5, sum(len(f) for f in to_d)]
    assert d[OffReason.PASS].tolist() == [1, len(elsewhere)]
    assert prog.hits("drop_dsts") == {model.parse(to_d[0], 0).dst: 5}


def test_addr_port_keys_follow_the_configured_mode(prog: ReducedProgram) -> None:
    dns = frame("10.1.0.1", "10.2.0.1", dport=53)
    other_port = frame("10.1.0.1", "10.2.0.1", dport=54)
    tcp = frame("10.1.0.1", "10.2.0.1", dport=53, proto="tcp")
    prog.set_dst_mode(L.DST_ADDR_PORT)
    prog.set_drops(_dsts([dns], L.DST_ADDR_PORT))
    assert [_run(prog, f) for f in (dns, other_port, tcp)] == [XDP_DROP, XDP_PASS, XDP_PASS]
    # Back to address keys: the set is emptied (its keys have the other layout).
    prog.set_dst_mode(L.DST_ADDR)
    assert len(prog.drop_dsts) == 0
    assert _run(prog, dns) == XDP_PASS


def test_non_ip_and_malformed_frames_pass_to_the_full_program(prog: ReducedProgram) -> None:
    truncated = SHAPES["v4"][:24]
    prog.set_drops(_dsts([SHAPES["v4"]]))
    before = prog.counters()
    assert _run(prog, arp_frame()) == XDP_PASS
    assert _run(prog, truncated) == XDP_PASS
    d = prog.counters() - before
    assert d[OffReason.NON_IP, 0] == 1
    assert d[OffReason.MALFORMED, 0] == 1


def test_set_drops_adds_and_removes_only_the_difference(prog: ReducedProgram) -> None:
    fr = [frame(f"10.1.1.{i}", "10.2.0.1") for i in range(1, 9)]
    assert prog.set_drops(_keys(fr[:5])) == (5, 0)
    _run(prog, fr[0])
    assert prog.set_drops(_keys(fr[3:])) == (3, 3)
    assert {bytes(k.tobytes()) for k in prog.entries(prog.drop_flows)[0]} == {
        model.parse(f, 0).key for f in fr[3:]}
    assert [_run(prog, f) for f in fr] == [XDP_PASS] * 3 + [XDP_DROP] * 5
    # Hits are counted per entry, since the last read.
    assert prog.hits("drop_flows") == {model.parse(f, 0).key: 1 for f in fr[3:]}
    _run(prog, fr[4])
    assert prog.hits("drop_flows") == {model.parse(fr[4], 0).key: 1}


def test_map_layouts_match_the_python_dtypes(reduced: ReducedProgram) -> None:
    from xpro.backends.offload import OFF_CFG, OFF_HIT

    m = reduced.obj.maps
    assert (m["drop_flows"].key_size, m["drop_flows"].value_size) == (
        L.FLOW_KEY.itemsize, OFF_HIT.itemsize)
    assert (m["drop_dsts"].key_size, m["drop_dsts"].value_size) == (
        L.DST_KEY.itemsize, OFF_HIT.itemsize)
    assert m["off_cfg"].value_size == OFF_CFG.itemsize
    assert m["off_stats"].max_entries == len(OffReason)
    assert reduced.program.name == OFFLOAD_PROGRAM


# --- drop_set() against the full program -----------------------------------------

SRCS = [f"10.0.0.{i}" for i in range(1, 9)]
DSTS = [f"10.9.9.{i}" for i in range(1, 4)]


@pytest.fixture(scope="module")
def full() -> Iterator[XdpFilter]:
    f = XdpFilter(model.FilterParams(), sizes=Sizes(flows=4096, dsts=256, prefixes=16))
    try:
        yield f
    finally:
        f.close()


def _reason(full: XdpFilter, fr: bytes) -> L.Reason:
    before = full.counters()[:, 0].copy()
    full.program.test_run(fr, data_out=False)
    changed = np.flatnonzero(full.counters()[:, 0] - before)
    assert len(changed) == 1
    return L.Reason(int(changed[0]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(
    trace=st.lists(st.tuples(st.integers(0, len(SRCS) - 1), st.integers(0, len(DSTS) - 1),
                             st.integers(1, 60), st.integers(0, 400)), min_size=1, max_size=25),
    t_f1=st.sampled_from([5, 20, 100]),
    t_f2=st.sampled_from([30, 200, 10**6]),
    t_t1_s=st.sampled_from([2, 10]),
    gap_ms=st.integers(0, 3000),
    monitor_dst=st.sampled_from([None, 0, 2]),
    allow=st.booleans(),
)
def test_drop_set_is_what_the_full_program_drops_now(
        full: XdpFilter, trace: list[tuple[int, int, int, int]], t_f1: int, t_f2: int,
        t_t1_s: int, gap_ms: int, monitor_dst: int | None, allow: bool) -> None:
    policy = {model.Prefix.parse(f"{DSTS[monitor_dst]}/32"): L.MODE_MONITOR} \
        if monitor_dst is not None else {}
    params = model.FilterParams(t_t1=t_t1_s * S, t_t2=1 * S, t_t3=1 * S, t_f1=t_f1, t_f2=t_f2,
                                events=False, dst_policy=policy,
                                allow=frozenset({model.Prefix.parse(SRCS[0] + "/32")})
                                if allow else frozenset())
    full.flows.clear()
    full.dsts.clear()
    full.configure(params)
    now = T0
    for s, d, n, step_ms in trace:  # n packets of one flow, then the clock moves on
        full.set_clock(now)
        fr = frame(SRCS[s], DSTS[d])
        for _ in range(n):
            full.program.test_run(fr, data_out=False)
        now += step_ms * MS
    now += gap_ms * MS
    full.set_clock(now)
    fk, fv = full.read_flows()
    dk, dv = full.read_dsts()
    want = drop_set(fk, fv, dk, dv, params, now)
    drop_flows = {k.tobytes() for k in want.flows}
    drop_dsts = {k.tobytes() for k in want.dsts}
    if allow:
        assert not drop_dsts
    event(f"flows dropped: {min(len(drop_flows), 2)}+, destinations: {min(len(drop_dsts), 1)}+")

    # 1. Every flow with a record: its next packet is dropped by the source rule
    #    exactly when drop_set names it -- or, to a destination already closed
    #    to unknown sources, as closed (a drop changes no destination record,
    #    but for c* of a destination that is closed already).
    keys = [k.tobytes() for k in fk if not model.is_closed_key(k.tobytes())]  # no source's
    flows_first = sorted(keys, key=lambda k: k not in drop_flows)
    for k in flows_first:
        if k not in drop_flows:
            break
        src, dst = _addr(k[:16]), _addr(k[16:32])
        assert _reason(full, frame(src, dst)) in (L.Reason.SRC_RATE, L.Reason.DST_CLOSED), (
            src, dst)
    # 2. A new source to each destination: dropped by the destination rule (as
    #    over T_F2, or as closed) exactly when drop_set names the destination
    #    (allow-listed sources excepted).
    for i, dst in enumerate(DSTS):
        dkey = model.parse(frame("10.0.1.1", dst), 0).dst
        r = _reason(full, frame(f"10.0.1.{i + 1}", dst))
        if not allow:  # with an allow list the NIC leaves destinations alone
            dropped = r in (L.Reason.DST_RATE, L.Reason.DST_CLOSED)
            assert dropped == (dkey in drop_dsts), (dst, r)
    # 3. The flows not in the set are not dropped by the source rule.
    for k in flows_first:
        if k in drop_flows:
            continue
        r = _reason(full, frame(_addr(k[:16]), _addr(k[16:32])))
        assert r not in (L.Reason.SRC_RATE,), (_addr(k[:16]), r)


def _addr(a16: bytes) -> str:
    ip = ipaddress.IPv6Address(a16)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)
