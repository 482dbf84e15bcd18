"""The kernel backends on real interfaces: native, generic, auto, busy interfaces, adoption."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from xpro.backends.xdp import AutoBackend, GenericBackend, NativeBackend, detach_pinned, link_pin
from xpro.bpf import BpfObject, XdpMode, object_path, xdp_query
from xpro.core.model import FilterParams
from xpro.core.params import Sizes
from xpro.errors import BpffsError, InterfaceBusy, ModeNotSupported, NoSuchInterface
from xpro.lab.namespaces import NsPair, netns_pair, set_link
from xpro.plugins import PluginHost

pytestmark = pytest.mark.integration

SIZES = Sizes(flows=4096, dsts=256, prefixes=16)


@pytest.fixture
def pair() -> Iterator[NsPair]:
    with netns_pair() as p:
        yield p


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    d = Path(f"/sys/fs/bpf/xpro-test-be-{secrets.token_hex(3)}")
    yield d
    detach_pinned(d)


def backend(cls: type, pair: NsPair, pin_dir: Path | None = None) -> NativeBackend:
    return cls(params=FilterParams(), sizes=SIZES, pin_dir=pin_dir, netns=pair.proxy_ns,  # type: ignore[no-any-return]
               options={"interfaces": (pair.proxy_if,)})


def test_builtin_backends_register_through_entry_points() -> None:
    reg = PluginHost().collect("backend", "xpro_add_backends")
    for name in ("native", "generic", "auto"):
        assert name in reg
        assert reg.owner(name) == "backend_xdp"


@pytest.mark.parametrize(("cls", "mode"), [(NativeBackend, "native"),
                                           (GenericBackend, "generic")])
def test_attach_and_close_detaches(pair: NsPair, cls: type, mode: str) -> None:
    b = backend(cls, pair)
    att = b.attach(pair.proxy_if)
    assert att.mode == mode
    assert not att.adopted
    assert xdp_query(pair.proxy_if, pair.proxy_ns)[mode] == att.prog_id
    b.close()
    assert not any(xdp_query(pair.proxy_if, pair.proxy_ns).values())


def test_auto_chooses_native_on_veth_and_generic_where_the_driver_has_none(
        pair: NsPair) -> None:
    b = backend(AutoBackend, pair)
    try:
        att = b.attach(pair.proxy_if)
        assert att.mode == "native"
        assert "supports native" in att.why
    finally:
        b.close()
    # Loopback has no native XDP: auto falls back and says why.
    b = backend(AutoBackend, pair)
    try:
        att = b.attach("lo")
        assert att.mode == "generic"
        assert "no native XDP" in att.why
    finally:
        b.close()
    n = backend(NativeBackend, pair)
    try:
        with pytest.raises(ModeNotSupported, match="lo"):
            n.attach("lo")
    finally:
        n.close()


def test_an_interface_held_by_another_program_is_named_not_replaced(pair: NsPair) -> None:
    with BpfObject(object_path()) as other:
        link = other.programs["xpro_xdp"].attach_xdp(pair.proxy_if, XdpMode.NATIVE,
                                                      netns=pair.proxy_ns)
        try:
            b = backend(NativeBackend, pair)
            with pytest.raises(InterfaceBusy) as exc:
                b.attach(pair.proxy_if)
            b.close()
            msg = str(exc.value)
            assert f"XDP program id {link.prog_id}" in msg
            assert "xpro_xdp" in msg
            assert xdp_query(pair.proxy_if, pair.proxy_ns)["native"] == link.prog_id
        finally:
            link.detach()
            link.close()


def test_no_such_interface_names_the_namespace(pair: NsPair) -> None:
    b = backend(NativeBackend, pair)
    try:
        with pytest.raises(NoSuchInterface, match=pair.proxy_ns):
            b.attach("xpro-nope0")
    finally:
        b.close()


def test_keep_then_adopt_replaces_the_program_in_place(pair: NsPair, pin_dir: Path) -> None:
    b = backend(NativeBackend, pair, pin_dir)
    first = b.attach(pair.proxy_if)
    filt = b.load()
    filt.flows[bytes(36)] = bytes(filt.flows.value_size)  # a record to survive
    b.close(keep=True)
    assert link_pin(pin_dir, pair.proxy_if).exists()
    assert xdp_query(pair.proxy_if, pair.proxy_ns)["native"] == first.prog_id

    b2 = backend(NativeBackend, pair, pin_dir)
    att = b2.attach(pair.proxy_if)
    assert att.adopted
    assert att.prog_id != first.prog_id
    assert xdp_query(pair.proxy_if, pair.proxy_ns)["native"] == att.prog_id
    assert b2.load().flows.get(bytes(36)) is not None
    b2.close()
    assert not pin_dir.exists()
    assert not any(xdp_query(pair.proxy_if, pair.proxy_ns).values())


def test_adopting_in_another_mode_reattaches(pair: NsPair, pin_dir: Path) -> None:
    b = backend(GenericBackend, pair, pin_dir)
    b.attach(pair.proxy_if)
    b.close(keep=True)
    b2 = backend(NativeBackend, pair, pin_dir)
    att = b2.attach(pair.proxy_if)
    assert att.mode == "native"
    assert not att.adopted
    q = xdp_query(pair.proxy_if, pair.proxy_ns)
    assert q["native"] == att.prog_id
    assert not q["generic"]
    b2.close()


def test_a_jumbo_veth_peer_gets_the_multi_buffer_program(pair: NsPair) -> None:
    """veth refuses a single-buffer program when the *peer's* MTU is large (ERANGE)."""
    set_link(pair.peer_if, pair.peer_ns, mtu=9000)
    b = backend(NativeBackend, pair)
    try:
        att = b.attach(pair.proxy_if)
        assert att.mode == "native"
        assert att.prog_id == b.load().program_frags.id != b.load().program.id
    finally:
        b.close()


def test_detach_removes_only_xpros_pins(tmp_path: Path, pin_dir: Path) -> None:
    """``xpro detach`` with a mistyped or shared ``--pin-dir``: a directory off
    bpffs is refused untouched (it once lost every file in it), and in a bpffs
    directory another program's pin stays, reported."""
    import subprocess
    import sys

    files = tmp_path / "etc"
    files.mkdir()
    (files / "xpro.toml").write_text("[thresholds]\n")
    with pytest.raises(BpffsError, match=r"not on bpffs.*nothing was removed"):
        detach_pinned(files)
    r = subprocess.run([sys.executable, "-m", "xpro", "detach", "--pin-dir", str(files)],
                       capture_output=True, text=True, check=False, timeout=60)
    assert r.returncode == BpffsError.exit_code, r.stderr
    assert "nothing was removed" in r.stderr
    assert (files / "xpro.toml").read_text() == "[thresholds]\n"

    with BpfObject(object_path(), pin_dir=pin_dir, max_entries=SIZES.max_entries()) as xp:
        ours = set(xp.pins())
    foreign = BpfObject(object_path("xpro_redirect"), pin_dir=pin_dir)
    foreign.load()
    # Another program's map under the name of one of xpro's: a name alone is
    # not enough.  And a per-CPU array pinned as a link: its info reads as an
    # XDP link's (its type, 6, is BPF_LINK_TYPE_XDP), but it holds no program
    # of xpro's.
    impostor = BpfObject(object_path(), pin_dir=pin_dir / "x",
                         max_entries=SIZES.max_entries())
    impostor.load()
    os.rename(pin_dir / "x" / "stats", pin_dir / "link-eth9")
    os.rename(pin_dir / "flows", pin_dir / "old-flows")
    os.rename(pin_dir / "old-flows", pin_dir / "x" / "real-flows")
    os.rename(pin_dir / "xsks", pin_dir / "flows")
    try:
        assert {p.name for p in pin_dir.iterdir()} == ours | {"x", "link-eth9"}
        done = detach_pinned(pin_dir)
        assert {p.name for p in pin_dir.iterdir()} == {"flows", "x", "link-eth9"}
        assert done[-1] == f"left in {pin_dir}, not xpro's: flows, link-eth9, x"
        assert not any(x.startswith("detached") for x in done)
    finally:
        for leftover in (pin_dir / "flows", pin_dir / "link-eth9",
                         *(pin_dir / "x").iterdir()):
            leftover.unlink(missing_ok=True)
        (pin_dir / "x").rmdir()
        foreign.close()
        impostor.close()
