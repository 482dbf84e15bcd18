"""The reduced program of the ``offload`` backend: offload-safe, and exact.

Three kinds of test:

* a static check of the compiled object ``xpro_offload.bpf.o`` against the
  limits of XDP hardware offload (:func:`offload_violations`), and the same
  checker run on the full program, which it must reject (so it can fail);
* the program itself through ``BPF_PROG_TEST_RUN``: keys in its drop maps are
  dropped, everything else passes, for every frame shape the full program's
  parser knows;
* :func:`xpro.backends.offload.drop_set` against the full kernel program:
  after a random trace (fake clock; the differential suite's closure traces
  too), the reduced program under the drop set drops the next packet of
  every flow, known pair and new source exactly when the full program would
  at that moment.

The offload limits checked here, and their sources, are in docs/backends.rst.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
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

from tests.kernel.harness import KernelFilter, SetKnown, Step, SyncRound, set_known, sync_round
from tests.kernel.test_differential import closure_traces, params
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
    reduced.configure(L.DST_ADDR)  # whole addresses, address keys
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


def test_a_closed_destination_drops_every_source_but_its_known_ones(
        prog: ReducedProgram) -> None:
    """The closed check comes first: an unknown source is dropped (counted on the
    destination's entry) even with its own flow in the drop set; a known pair
    goes on to the flow and destination checks, as in the full program."""
    to_d = [frame(f"10.1.0.{i}", "10.2.0.9") for i in range(1, 6)]
    elsewhere = frame("10.1.0.1", "10.2.0.8")
    keys = _keys(to_d)
    want = DropSet(keys.flows[3:5], np.zeros(0, L.DST_KEY), closed=_dsts(to_d[:1]).dsts,
                   known=keys.flows[[0, 4]])  # 10.1.0.1 and .5 known, .4 and .5 over T_F1
    assert prog.set_drops(want) == (5, 0)
    before = prog.counters()
    assert [_run(prog, f) for f in to_d] == [XDP_PASS] + [XDP_DROP] * 4
    assert _run(prog, elsewhere) == XDP_PASS
    d = prog.counters() - before
    assert d[OffReason.CLOSED, 0] == 3  # the unknown ones, 10.1.0.4 among them
    assert d[OffReason.FLOW, 0] == 1  # 10.1.0.5: known, its own flow is in the set
    assert prog.hits("closed_dsts") == {model.parse(to_d[0], 0).dst: 3}
    # Opened again: the known pairs go with it, every source passes.
    assert prog.set_drops(DropSet(np.zeros(0, L.FLOW_KEY), np.zeros(0, L.DST_KEY))) == (0, 5)
    assert len(prog.known_pairs) == 0
    assert _run(prog, to_d[1]) == XDP_PASS


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


def test_flow_keys_are_source_prefixes_as_in_the_full_program(prog: ReducedProgram) -> None:
    """With source prefixes configured, a drop entry (the full program's masked
    key) drops every address of its prefix, and no other."""
    prog.configure(L.DST_ADDR, 24, 64)
    p = model.FilterParams(source_prefix_v4=24, source_prefix_v6=64)
    v4 = [frame("10.1.7.1", "10.2.0.1"), frame("10.1.7.200", "10.2.0.1"),
          frame("10.1.8.1", "10.2.0.1")]
    v6 = [frame("2001:db8:1:2::1", "2001:db8:9::1"), frame("2001:db8:1:2:ffff::9", "2001:db8:9::1"),
          frame("2001:db8:1:3::1", "2001:db8:9::1")]
    keys = [model.flow_key(model.parse(f, 0), p) for f in (v4[0], v6[0])]
    prog.set_drops(DropSet(np.frombuffer(b"".join(keys), dtype=L.FLOW_KEY),
                           np.zeros(0, L.DST_KEY)))
    assert [_run(prog, f) for f in v4 + v6] == [XDP_DROP, XDP_DROP, XDP_PASS] * 2
    prog.configure(L.DST_ADDR)  # back to whole addresses: the set goes with the layout
    assert len(prog.drop_flows) == 0


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
    assert (m["closed_dsts"].key_size, m["closed_dsts"].value_size) == (
        L.DST_KEY.itemsize, OFF_HIT.itemsize)
    assert (m["known_pairs"].key_size, m["known_pairs"].value_size) == (L.FLOW_KEY.itemsize, 4)
    assert m["off_cfg"].value_size == OFF_CFG.itemsize
    assert m["off_stats"].max_entries == len(OffReason)
    assert reduced.program.name == OFFLOAD_PROGRAM


def test_closed_drops_on_the_nic_are_counted_into_the_full_program() -> None:
    """What the NIC dropped to a closed destination goes into the full program's
    closed-drops record (created when there is none, added with the sync's
    baseline kept otherwise, marked dirty) and into the aggregate's c*."""
    from xpro.backends.offload import OffloadBackend

    p = model.FilterParams(t_f1=10**6, t_f2=100, t_t3=0, t_t1=10 * S)
    with XdpFilter(p, sizes=Sizes(flows=256, dsts=16, prefixes=16, known=16)) as full:
        full.set_clock(T0)
        full.next_epoch()
        fr = [frame(f"10.0.0.{i}", "10.9.9.1") for i in range(1, 4)]
        for f in fr:
            full.program.test_run(f, data_out=False)
        dkey = model.parse(fr[0], 0).dst
        ck = model.closed_key(dkey)
        OffloadBackend._count_closed(full, {dkey: 50}, T0 + S)
        exists, rec = full.read(np.frombuffer(ck, dtype=L.FLOW_KEY))
        assert exists[0]
        assert (int(rec[0]["c"]), int(rec[0]["ts1"]), int(rec[0]["ts2"])) == (50, T0 + S, T0 + S)
        assert int(rec[0]["base_c"]) == 0  # all of it this proxy's, at the next round
        OffloadBackend._count_closed(full, {dkey: 7}, T0 + 2 * S)
        exists, rec = full.read(np.frombuffer(ck, dtype=L.FLOW_KEY))
        assert (int(rec[0]["c"]), int(rec[0]["ts2"])) == (57, T0 + 2 * S)
        _, agg = full.read_dsts_of(np.frombuffer(dkey, dtype=L.DST_KEY))
        assert (int(agg[0]["c"]), int(agg[0]["ts2"])) == (3 + 57, T0 + 2 * S)
        assert ck in {k.tobytes() for k in full.peek_dirty(full.epoch)}


# --- drop_set() against the full program -----------------------------------------

SRCS = [f"10.0.0.{i}" for i in range(1, 9)]
DSTS = [f"10.9.9.{i}" for i in range(1, 4)]


@pytest.fixture(scope="module")
def kernel() -> Iterator[KernelFilter]:
    k = KernelFilter()
    try:
        yield k
    finally:
        k.close()


def _drive(k: KernelFilter, p: model.FilterParams, trace: list[Step]) -> model.Filter:
    """Run ``trace`` through the full program and the model in step (known classes
    and sync rounds written to both); they must end in the same state (the
    differential suite checks them packet by packet).  Returns the model."""
    k.reset(p)
    m = model.Filter(p)
    for st_ in trace:
        if isinstance(st_, SetKnown):
            set_known(k, m, st_)
        elif isinstance(st_, SyncRound):
            sync_round(k, m, st_.now)
        elif len(st_[0]) >= 14:
            k.packet(*st_)
            m.packet(*st_)
    assert k.all_flows() == m.flows
    assert k.all_dsts() == m.dsts
    assert k.all_known() == m.known
    return m


def _next_verdict(m: model.Filter, fr: bytes, now: int) -> model.Verdict:
    """The model's verdict for ``fr`` arriving at ``now``, on copies of the records
    it would touch: ``m`` is left as it was, so every probe sees the same state."""
    c = model.Filter(m.params)
    c.known = m.known
    parsed = model.parse(fr, m.params.dst_mode)
    if parsed.status is model.ParseStatus.OK:
        akey = model.address_key(parsed.dst)  # addr+port: the address's own aggregate
        for key in (model.flow_key(parsed, m.params), model.closed_key(parsed.dst),
                    model.closed_key(akey)):
            if key in m.flows:
                c.flows[key] = model.replace(m.flows[key])
        for dkey in (parsed.dst, akey):
            if dkey in m.dsts:
                c.dsts[dkey] = dataclasses.replace(m.dsts[dkey])
    return c.packet(fr, now)


def _nic_drops(want: DropSet, key: bytes) -> tuple[bool, bool]:
    """What the reduced program does with a packet of ``key`` under ``want``:
    (dropped, dropped as closed), in its order (closed, flows, destinations)."""
    dst = key[16:]
    closed = dst in {k.tobytes() for k in want.closed}
    if closed and key not in {k.tobytes() for k in want.known}:
        return True, True
    return (key in {k.tobytes() for k in want.flows}
            or dst in {k.tobytes() for k in want.dsts}), False


def _new_source(fr: bytes, i: int) -> bytes:
    """``fr`` from a source no trace uses (198.51.100.i, 2001:db8:77::i+1)."""
    off, eth = 14, fr[12:14]
    while eth in (b"\x81\x00", b"\x88\xa8"):
        eth, off = fr[off + 2 : off + 4], off + 4
    b = bytearray(fr)
    if eth == b"\x08\x00":
        b[off + 12 : off + 16] = bytes((198, 51, 100, i % 250 + 1))
    else:
        b[off + 8 : off + 24] = ipaddress.IPv6Address(f"2001:db8:77::{i + 1:x}").packed
    return bytes(b)


def check_drop_set(k: KernelFilter, m: model.Filter, trace: list[Step], now: int) -> DropSet:
    """drop_set() of the full program's maps at ``now`` against the full program's
    rule: for the next packet of every flow with a record, of every known pair,
    and from a new source to every destination, the NIC drops it under the
    drop set exactly when the full program (the model in its state) would.
    Allow-listed and deny-listed sources aside: the NIC never drops what the
    full program passes, but leaves some of what it drops to it."""
    p = m.params
    fk, fv = k.xdp.read_flows()
    dk, dv = k.xdp.read_dsts()
    kk, kc = k.xdp.read_known()
    want = drop_set(fk, fv, dk, dv, p, now, kk, kc)
    assert not any(model.is_closed_key(f.tobytes()) for f in want.flows)
    assert not {c.tobytes() for c in want.closed} & {d.tobytes() for d in want.dsts}
    assert {f.tobytes()[16:] for f in want.known} <= {c.tobytes() for c in want.closed}
    frames: dict[bytes, bytes] = {}  # key -> a frame of it
    for st_ in trace:
        fr = st_.frame if isinstance(st_, SetKnown) else st_[0] if isinstance(st_, tuple) \
            else None
        if fr is not None and len(fr) >= 14:
            parsed = model.parse(fr, p.dst_mode)
            if parsed.status is model.ParseStatus.OK:
                frames.setdefault(model.flow_key(parsed, p), fr)
    by_dst: dict[bytes, bytes] = {}
    for key, fr in frames.items():
        by_dst.setdefault(key[16:], fr)
    probes = [frames[f.tobytes()] for f in fk if f.tobytes() in frames]
    probes += [frames[f.tobytes()] for f in kk if f.tobytes() in frames]
    probes += [_new_source(fr, i) for i, fr in enumerate(by_dst.values())]
    shown = set()
    for fr in probes:
        parsed = model.parse(fr, p.dst_mode)
        key = model.flow_key(parsed, p)  # the reduced program masks the source as well
        full = _next_verdict(m, fr, now)
        nic, as_closed = _nic_drops(want, key)
        shown.add((nic, full.reason.name))
        listed = (p.allow or any(q.contains(parsed.src) for q in p.deny))
        # addr+port: the addresses' aggregates are not offloaded, nor the keys
        # that drop every source (they count in their address too): the NIC
        # leaves those drops to the full program.
        if listed or p.dst_mode == L.DST_ADDR_PORT:
            assert full.action == XDP_DROP or not nic, (fr.hex(), full)
        else:
            assert nic == (full.action == XDP_DROP), (fr.hex(), full, nic)
            # A closed drop on the NIC is counted back into the closed-drops record:
            # it must be one there too (an unknown source's, not a heavy one's).
            assert not as_closed or full.reason is L.Reason.DST_CLOSED, (fr.hex(), full)
            if (full.reason is L.Reason.DST_CLOSED and key not in m.known
                    and parsed.dst not in {d.tobytes() for d in want.dsts}):
                assert as_closed, (fr.hex(), full)
    for nic, reason in sorted(shown):
        event(f"{'nic drops' if nic else 'nic passes'} {reason}")
    return want


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
        kernel: KernelFilter, trace: list[tuple[int, int, int, int]], t_f1: int, t_f2: int,
        t_t1_s: int, gap_ms: int, monitor_dst: int | None, allow: bool) -> None:
    """Flows of a few sources, each n packets at one time: flows over T_F1,
    destinations over T_F2 and closed (a new source's packet is then a closed
    drop), in enforce or monitor mode, with or without an allow list."""
    policy = {model.Prefix.parse(f"{DSTS[monitor_dst]}/32"): L.MODE_MONITOR} \
        if monitor_dst is not None else {}
    params = model.FilterParams(t_t1=t_t1_s * S, t_t2=1 * S, t_t3=1 * S, t_f1=t_f1, t_f2=t_f2,
                                events=False, dst_policy=policy,
                                allow=frozenset({model.Prefix.parse(SRCS[0] + "/32")})
                                if allow else frozenset())
    steps: list[Step] = []
    now = T0
    for s, d, n, step_ms in trace:  # n packets of one flow, then the clock moves on
        steps += [(frame(SRCS[s], DSTS[d]), now)] * n
        now += step_ms * MS
    m = _drive(kernel, params, steps)
    want = check_drop_set(kernel, m, steps, now + gap_ms * MS)
    if allow:
        assert not len(want.dsts)
        assert not len(want.closed)


@settings(max_examples=int(os.environ.get("XPRO_DIFF_EXAMPLES", "300")), deadline=None,
          database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                HealthCheck.function_scoped_fixture])
@given(p=params(), trace=closure_traces(),
       gap=st.sampled_from([0, 1, 5 * MS, 100 * MS, S, 3 * S]))
def test_drop_set_is_what_the_full_program_drops_on_closed_destinations(
        kernel: KernelFilter, p: model.FilterParams, trace: list[Step], gap: int) -> None:
    """The differential suite's closure traces (spoofed bursts, known and heavy
    sources, sync rounds): closed destinations with their known pairs, the
    heavy sources in the flow set, destinations whose known clients are over
    T_F2 dropped whole, closed-drops records never in the flow set."""
    m = _drive(kernel, p, trace)
    times = [st_[1] if isinstance(st_, tuple) else st_.now for st_ in trace
             if not isinstance(st_, SetKnown)]
    check_drop_set(kernel, m, trace, max(times, default=T0) + gap)




@pytest.mark.parametrize(("allowed", "host", "others", "kept"), [
    # an allowed host inside a /64 (/24) flow whose other hosts are over T_F1
    ("2001:db8::5/128", "2001:db8::5", ["2001:db8::7", "2001:db8::8"], False),
    ("10.1.2.5/32", "10.1.2.5", ["10.1.2.7", "10.1.2.8"], False),
    # an allowed host next to the flow, not in it: the flow stays offloaded
    ("2001:db8:0:1::5/128", None, ["2001:db8::7"], True),
    ("10.1.3.5/32", None, ["10.1.2.7"], True),
    # an IPv4 entry and IPv6 sources in ::/64, which holds the mapped space
    ("192.0.2.1/32", None, ["::7", "::8"], True),
])
def test_a_flow_that_holds_an_allowed_address_is_not_dropped_on_the_nic(
        allowed: str, host: str | None, others: list[str], kept: bool) -> None:
    """The allow list matches full addresses, flows are source prefixes (/24
    and /64 here): an allowed address shares the record of its prefix.  The
    NIC matches records, so a flow put in its drop set for the other hosts'
    rate dropped the allowed host too, which the full program passes."""
    p = model.FilterParams(t_f1=100, source_prefix_v4=24, source_prefix_v6=64,
                           allow=frozenset({model.Prefix.parse(allowed)}))
    dst = "2001:db8:9::1" if ":" in others[0] else "10.9.9.1"
    m = model.Filter(p)
    now = T0
    for i in range(2000):  # the others: 1000 packets/s together for 2 s
        now = T0 + i * S // 1000
        m.packet(frame(others[i % len(others)], dst), now)
    keys = sorted({model.flow_key(model.parse(frame(o, dst), 0), p) for o in others})
    fk = np.frombuffer(b"".join(keys), dtype=L.FLOW_KEY)
    fv = np.zeros(len(keys), dtype=L.FLOW)
    for i, k in enumerate(keys):
        r = m.flows[k]
        fv["ts1"][i], fv["ts2"][i], fv["c"][i] = r.ts1, r.ts2, r.c
    want = drop_set(fk, fv, np.zeros(0, dtype=L.DST_KEY), np.zeros(0, dtype=L.DST), p, now)
    assert len(want.flows) == (len(keys) if kept else 0), want.flows
    if host is not None:  # what the NIC must not drop: the full program passes it
        key = model.flow_key(model.parse(frame(host, dst), 0), p)
        assert key in keys
        assert m.packet(frame(host, dst), now).reason is L.Reason.ALLOW
