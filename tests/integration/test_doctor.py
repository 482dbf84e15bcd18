"""``xpro doctor`` against real interfaces, programs and servers.

Every test builds its own namespaces with :class:`xpro.lab.namespaces.Topology` (removed
afterwards, also on failure): veth pairs (native XDP), an interface whose
driver has no native XDP (``dummy`` where the kernel has it, else ``ifb`` or a
bridge: this kernel has no modules and no dummy driver), a veth held by
another XDP program, a tun device (no Ethernet header), and a real
``redis-server`` on loopback.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tests.links import add_link
from xpro.bpf import BpfObject, XdpMode, object_path, xdp_query
from xpro.bpf.xdp import in_netns
from xpro.cli.doctor import doctor_command
from xpro.config import Config, default_config, load_config
from xpro.core import layout
from xpro.datapath.xdp import XdpFilter
from xpro.doctor import (
    Finding,
    check_interface,
    check_mesh_clock,
    check_pins,
    check_store,
    run_checks,
)
from xpro.errors import DatapathError
from xpro.lab.namespaces import Topology
from xpro.lab.servers import BinaryMissing, ServerSet

pytestmark = pytest.mark.integration

OTHER_PROG = r"""
#include <linux/bpf.h>
#define SEC(name) __attribute__((section(name), used))
SEC("xdp") int other_fw(struct xdp_md *ctx) { return XDP_PASS; }
char LICENSE[] SEC("license") = "GPL";
"""


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


def config_with(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "xpro.toml"
    path.write_text(text)
    return load_config(path, env={})


@pytest.fixture
def topo() -> Iterator[Topology]:
    with Topology() as t:
        yield t


@pytest.fixture
def veth(topo: Topology) -> tuple[str, str]:
    """(namespace, interface): the proxy end of a veth pair, MTU 1500."""
    peer, proxy = topo.namespace("peer"), topo.namespace("proxy")
    _, ifname = topo.veth(peer, proxy)
    return proxy, ifname


def _no_native_interface(netns: str) -> str:
    """An interface of a kind without native XDP, created in ``netns`` (gone with it)."""
    with in_netns(netns):
        ipr = IPRoute()
    try:
        for kind in ("dummy", "ifb", "bridge"):
            name = f"xpd{kind[:5]}"
            try:
                ipr.link("add", ifname=name, kind=kind)
            except NetlinkError:
                continue  # this kernel has no driver of that kind
            return name
    finally:
        ipr.close()
    pytest.skip("no dummy, ifb or bridge driver in this kernel")


@pytest.fixture
def other_prog(tmp_path: Path) -> Iterator[BpfObject]:
    """A foreign XDP program (not xpro's), compiled here with clang."""
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang is needed to build the foreign test program")
    src, obj_path = tmp_path / "other.bpf.c", tmp_path / "other.bpf.o"
    src.write_text(OTHER_PROG)
    cmd = [clang, "-O2", "-target", "bpf", "-c", str(src), "-o", str(obj_path)]
    if Path("/usr/include/x86_64-linux-gnu").is_dir():
        cmd.insert(1, "-I/usr/include/x86_64-linux-gnu")
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    obj = BpfObject(obj_path, programs=["other_fw"])
    try:
        obj.load()
        yield obj
    finally:
        obj.close()


# --- native XDP support -------------------------------------------------------


@pytest.mark.parametrize("attach_probe", [False, True], ids=["xdp-features", "attach-probe"])
def test_veth_supports_native_xdp(veth: tuple[str, str], attach_probe: bool) -> None:
    netns, ifname = veth
    found = by_check(check_interface(ifname, default_config(), netns=netns,
                                     attach_probe=attach_probe))
    assert found[f"interface:{ifname}"].status == "ok"
    assert "driver veth" in found[f"interface:{ifname}"].message
    xdp = found[f"xdp:{ifname}"]
    assert xdp.status == "ok", xdp.format()
    method = "attach probe" if attach_probe else "xdp-features"
    assert method in xdp.message
    for check in ("mtu", "lro", "attached"):
        assert found[f"{check}:{ifname}"].status == "ok", found[f"{check}:{ifname}"].format()
    # the probe left nothing behind
    q = xdp_query(ifname, netns)
    assert (q["native"], q["generic"]) == (0, 0)


@pytest.mark.parametrize("attach_probe", [False, True], ids=["xdp-features", "attach-probe"])
def test_interface_without_native_xdp(topo: Topology, tmp_path: Path,
                                      attach_probe: bool) -> None:
    netns = topo.namespace("proxy")
    ifname = _no_native_interface(netns)
    native = by_check(check_interface(ifname, default_config(), netns=netns,
                                      attach_probe=attach_probe))[f"xdp:{ifname}"]
    assert native.status == "fail", native.format()
    assert "generic" in native.fix
    auto = config_with(tmp_path, '[proxy]\nbackend = "auto"\n')
    assert by_check(check_interface(ifname, auto, netns=netns, attach_probe=attach_probe)
                    )[f"xdp:{ifname}"].status == "warn"
    generic = config_with(tmp_path, '[proxy]\nbackend = "generic"\n')
    assert by_check(check_interface(ifname, generic, netns=netns, attach_probe=attach_probe)
                    )[f"xdp:{ifname}"].status == "ok"


@pytest.mark.parametrize("attach_probe", [False, True], ids=["xdp-features", "attach-probe"])
def test_large_mtu_needs_the_multi_buffer_program(topo: Topology, attach_probe: bool) -> None:
    peer, proxy = topo.namespace("peer"), topo.namespace("proxy")
    _, ifname = topo.veth(peer, proxy, mtu=9000)
    found = by_check(check_interface(ifname, default_config(), netns=proxy,
                                     attach_probe=attach_probe))
    mtu = found[f"mtu:{ifname}"]
    assert mtu.status == "ok", mtu.format()
    assert "9000" in mtu.message
    assert "xpro_xdp_frags" in mtu.message
    if attach_probe:
        # the kernel refused the single-buffer program and took the multi-buffer one
        assert "multi-buffer programs only" in found[f"xdp:{ifname}"].message
        assert "Numerical result out of range" in found[f"xdp:{ifname}"].message


# --- the link type ----------------------------------------------------------------------


def test_a_link_without_ethernet_headers_fails_and_says_what_to_do(topo: Topology) -> None:
    netns = topo.namespace("proxy")
    tun = add_link(topo, netns, "tun")
    found = by_check(check_interface(tun, default_config(), netns=netns))
    lt = found[f"linktype:{tun}"]
    assert lt.status == "fail", lt.format()
    assert "ARPHRD_NONE" in lt.message
    assert "no Ethernet header" in lt.message
    assert "Ethernet interface the traffic arrives on" in lt.fix
    assert "tap instead of tun" in lt.fix


def test_ethernet_and_loopback_links_are_ok(veth: tuple[str, str]) -> None:
    netns, ifname = veth
    for name, kind in ((ifname, "ARPHRD_ETHER"), ("lo", "ARPHRD_LOOPBACK")):
        lt = by_check(check_interface(name, default_config(), netns=netns))[f"linktype:{name}"]
        assert lt.status == "ok", lt.format()
        assert kind in lt.message


# --- a program already attached ---------------------------------------------------


def test_interface_held_by_another_program_is_named(veth: tuple[str, str],
                                                    other_prog: BpfObject) -> None:
    netns, ifname = veth
    link = other_prog.programs["other_fw"].attach_xdp(ifname, XdpMode.NATIVE, netns=netns)
    try:
        prog_id = xdp_query(ifname, netns)["native"]
        found = by_check(check_interface(ifname, default_config(), netns=netns,
                                         attach_probe=True))
        # the doctor left the foreign program in place
        assert xdp_query(ifname, netns)["native"] == prog_id
    finally:
        link.detach()
        link.close()
    held = found[f"attached:{ifname}"]
    assert held.status == "fail"
    assert f"other_fw (id {prog_id}, native mode)" in held.message
    assert f"xpro detach --interface {ifname} --netns {netns}" in held.fix
    xdp = found[f"xdp:{ifname}"]
    assert "attach probe" not in xdp.message  # never probed over someone else's program
    assert xdp.status == "ok"


def test_an_xpro_filter_attached_is_fine(veth: tuple[str, str]) -> None:
    netns, ifname = veth
    obj = BpfObject(object_path(), programs=["xpro_xdp"],
                    max_entries={"flows": 1024, "dsts": 64}, types=layout.MAP_TYPES)
    try:
        obj.load()
        link = obj.programs["xpro_xdp"].attach_xdp(ifname, XdpMode.GENERIC, netns=netns)
        try:
            held = by_check(check_interface(ifname, default_config(), netns=netns)
                            )[f"attached:{ifname}"]
        finally:
            link.detach()
            link.close()
    finally:
        obj.close()
    assert held.status == "ok", held.format()
    assert "xpro_xdp" in held.message
    assert "generic mode" in held.message


# --- the store ------------------------------------------------------------------------


@pytest.fixture
def servers() -> Iterator[ServerSet]:
    with ServerSet(prefix="xpro-doctor-") as s:
        yield s


def test_reachable_redis_is_ok_and_a_stopped_one_fails(servers: ServerSet) -> None:
    try:
        redis = servers.redis()
    except BinaryMissing as exc:
        pytest.skip(str(exc))
    ok = check_store(default_config(), redis.url)
    assert ok.status == "ok", ok.format()
    assert "answers" in ok.message
    redis.stop()
    down = check_store(default_config(), redis.url)
    assert down.status == "fail"
    assert "does not answer" in down.message
    assert redis.url.split("://")[1] in down.message


def test_mesh_clock_names_a_proxy_off_the_others(servers: ServerSet) -> None:
    """Three proxies published offsets to the store's clock: two agree with
    this host, one is 5 s off.  The check measures this host's own offset and
    names the proxy off the median; without it, all is well."""
    import time

    from xpro.plugins import open_store

    try:
        redis = servers.redis()
    except BinaryMissing as exc:
        pytest.skip(str(exc))
    config = default_config()
    with open_store(redis.url, mesh=config.store.mesh) as store:
        now = time.clock_gettime_ns(time.CLOCK_TAI)
        mine = store.clock()
        assert mine is not None
        base = mine - now  # this host's offset, as the proxies on it measure it
        store.heartbeat("p-a", 10.0, now, offset=base)
        store.heartbeat("p-b", 10.0, now, offset=base + 2_000_000)
        ok = check_mesh_clock(config, redis.url)
        assert ok.status == "ok", ok.format()
        assert "every live proxy within" in ok.message
        store.heartbeat("p-late\x1b[31m", 10.0, now - 5 * 10**9, offset=base + 5 * 10**9)
        store.heartbeat("p-c", 10.0, now, offset=base)
        off = check_mesh_clock(config, redis.url)
    assert off.status == "warn", off.format()
    assert "p-late\\x1b[31m +5.0" in off.message  # named, escaped
    assert "p-a" not in off.message.split("beyond")[1]


# --- everything, through the command ---------------------------------------------------


def test_command_on_a_ready_veth_with_redis(veth: tuple[str, str],
                                            servers: ServerSet) -> None:
    netns, ifname = veth
    try:
        redis = servers.redis()
    except BinaryMissing as exc:
        pytest.skip(str(exc))
    result = CliRunner().invoke(
        doctor_command, ["--netns", netns, "--interface", ifname, "--store", redis.url,
                         "--json"], env={"XPRO_CONFIG": ""}, catch_exceptions=False)
    doc = json.loads(result.stdout)
    found = {f["check"]: f for f in doc["findings"]}
    for check in ("privileges", "libbpf", "bpf-features", "bpf-object", "bpffs",
                  f"interface:{ifname}", f"xdp:{ifname}", f"mtu:{ifname}", f"lro:{ifname}",
                  f"attached:{ifname}", "store", "memory"):
        assert found[check]["status"] == "ok", found[check]
    failed = [f for f in doc["findings"] if f["status"] == "fail"]
    assert result.exit_code == (1 if failed else 0)
    # whatever else fails on this host (an unsynchronised clock, say) says what to do
    assert all(f["fix"] for f in failed)


def test_run_checks_uses_the_configured_interfaces(veth: tuple[str, str],
                                                   tmp_path: Path) -> None:
    netns, ifname = veth
    cfg = config_with(tmp_path, f'[proxy]\ninterfaces = ["{ifname}", "xpnosuch0"]\n')
    found = by_check(run_checks(cfg, netns=netns))
    assert found[f"xdp:{ifname}"].status == "ok"
    assert found["interface:xpnosuch0"].status == "fail"
    assert netns in found["interface:xpnosuch0"].message


def test_pinning_off_is_a_warning_not_a_bpffs_failure(tmp_path: Path) -> None:
    """pin_dir = "" turns pinning off: doctor says so, and does not probe the
    current directory as if it were the pin directory."""
    cfg = config_with(tmp_path, '[proxy]\npin_dir = ""\n')
    found = by_check(run_checks(cfg))
    assert found["bpffs"].status == "warn"
    assert "pinning is off" in found["bpffs"].message
    assert "pins" not in found


# --- pins left by a previous daemon ---------------------------------------------------


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    path = Path("/sys/fs/bpf") / f"xpro-doctor-{secrets.token_hex(4)}"
    try:
        yield path
    finally:
        if path.exists():
            for p in path.iterdir():
                p.unlink()
            path.rmdir()


def test_pinned_maps_of_other_sizes_are_reported(pin_dir: Path, tmp_path: Path) -> None:
    cfg = config_with(tmp_path, f'[proxy]\npin_dir = "{pin_dir}"\n'
                      "[tables]\nflows = 4096\ndestinations = 64\nprefixes = 16\n")
    assert by_check([check_pins(cfg)])["pins"].message.startswith("nothing pinned")
    XdpFilter(cfg.filter_params(), sizes=cfg.sizes(), pin_dir=pin_dir).close()
    same = check_pins(cfg)
    assert same.status == "ok", same.format()
    assert "adopts" in same.message
    bigger = config_with(tmp_path, f'[proxy]\npin_dir = "{pin_dir}"\n'
                         "[tables]\nflows = 8192\ndestinations = 64\nprefixes = 16\n")
    other = check_pins(bigger)
    assert other.status == "fail"
    assert "flows has 4,096 entries, the config asks for 8,192" in other.message
    assert "xpro detach" in other.fix
    # and the real loader agrees: these pins cannot be adopted with the new sizes
    with pytest.raises(DatapathError, match="cannot be reused"):
        XdpFilter(bigger.filter_params(), sizes=bigger.sizes(), pin_dir=pin_dir)


# --- without the privileges ------------------------------------------------------------


def test_without_privileges_every_check_still_reports() -> None:
    """As root stripped of CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN: each check says
    so (never that the kernel lacks a feature), nothing crashes, nothing leaks."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop capabilities")
    code = ("import sys; from xpro.cli.doctor import doctor_command; "
            "doctor_command.main(args=sys.argv[1:], prog_name='xpro doctor')")
    r = subprocess.run([setpriv, "--inh-caps=-all",
                        "--bounding-set=-bpf,-sys_admin,-net_admin,-perfmon",
                        sys.executable, "-W", "error", "-c", code, "--json",
                        "--interface", "lo"],
                       capture_output=True, text=True, timeout=120, check=False,
                       env={k: v for k, v in os.environ.items() if not k.startswith("XPRO_")})
    assert r.returncode == 1, r.stderr
    assert r.stderr == ""  # no traceback, no libbpf chatter
    found = {f["check"]: f for f in json.loads(r.stdout)["findings"]}
    assert found["privileges"]["status"] == "fail"
    assert "CAP_BPF" in found["privileges"]["message"]
    assert found["bpf-features"]["status"] == "fail"
    assert found["bpf-features"]["message"].startswith("not probed")
    assert found["bpf-object"]["status"] == "fail"
    assert "root" in found["bpf-object"]["fix"]
    assert found["memory"]["status"] == "warn"
    assert "tracing" not in found["lockdown"]["message"]
