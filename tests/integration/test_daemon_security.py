"""The daemon end to end, as an attacker would look at it (docs/security.rst).

* A known random store password, on a real redis-server with ``requirepass``
  and the proxy's own ACL user (``xpro store user``), never appears in any
  output: the daemon's log (debug level, through store outages, a refused
  function load and a reload), ``xpro status`` (text and JSON), ``xpro config
  show --running`` (TOML and JSON), ``xpro flows``/``explain``, the metrics
  endpoint, the alerts, ``xpro config check``.  The password over plain
  ``redis://`` is warned about, once.
* The running daemon holds no capability once attached (native XDP): every
  thread's effective, permitted, inheritable, ambient and bounding sets are
  empty, while it goes on filtering, syncing, reloading and detaches cleanly.
"""

from __future__ import annotations

import errno
import json
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.integration.test_daemon import (  # noqa: F401
    XPRO,
    Daemon,
    afxdp_daemon,
    daemons,
    pair,
    traffic,
)
from xpro.bpf import xdp_query
from xpro.daemon.privileges import read_capabilities
from xpro.lab.namespaces import NsPair
from xpro.lab.servers import RedisServer, ServerSet, find_binary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ADMIN = "adm1n-" + secrets.token_hex(6)


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[RedisServer]:
    if find_binary("redis-server") is None:
        pytest.skip("redis-server not installed: apt-get install redis-server")
    servers = ServerSet(prefix="xpro-daemon-sec-")
    try:
        yield servers.redis(password=ADMIN)
    finally:
        servers.close()


def xpro(*args: str, env: dict[str, str] | None = None, check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    import os

    r = subprocess.run([XPRO, *args], capture_output=True, text=True, timeout=60, check=False,
                       env={**os.environ, **(env or {})})
    if check:
        assert r.returncode == 0, f"xpro {' '.join(args)}: {r.returncode}\n{r.stderr}"
    return r


def forms(secret: str) -> list[str]:
    """Every way a password shows up in text: as is, in a URL, in JSON, in a repr."""
    return [secret, quote(secret, safe=""), quote(secret), json.dumps(secret)[1:-1],
            repr(secret)[1:-1]]


def wait_until(d: Daemon, what: str, cond: object, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        st = d.status()
        if cond(st):  # type: ignore[operator]
            return st
        assert time.monotonic() < deadline, f"{what}:\n{json.dumps(st)[:2000]}\n{d.text()[-3000:]}"
        time.sleep(0.3)


def test_the_store_password_appears_in_no_output(tmp_path: Path, pair: NsPair,  # noqa: F811
                                                 acl_redis: RedisServer,
                                                 daemons: list[Daemon]) -> None:  # noqa: F811
    # A known random password with the characters that broke the old mask.
    password = "Pw" + secrets.token_urlsafe(12) + "@:/?#%"
    mesh, user = "sec", "xpro-sec-p1"
    store = f"redis://127.0.0.1:{acl_redis.port}"
    admin_env = {"XPRO_ADMIN_PASSWORD": ADMIN}
    pwfile = tmp_path / "p1.password"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    out = [xpro("store", "init", "--store", store, "--mesh", mesh, env=admin_env),
           xpro("store", "user", "p1", "--store", store, "--mesh", mesh,
                "--password-file", str(pwfile), env=admin_env)]

    # The password in the URL of the config file: the worst case for masking.
    conf = tmp_path / "xpro.toml"
    conf.write_text(f'[store]\nurl = "redis://{user}:{quote(password, safe="")}@127.0.0.1:'
                    f'{acl_redis.port}"\nmesh = "{mesh}"\n[thresholds]\nt_f1 = 100\n'
                    't_t2 = 0.5\n')
    conf.chmod(0o600)
    d = Daemon(tmp_path, pair, store, config=conf)
    i = d.args.index("--store")
    del d.args[i:i + 2]  # the URL (and its password) comes from the file only
    daemons.append(d)
    d.start()
    traffic(pair, 2.0, flood=1500, legit=20).result(timeout=30)

    seen: list[str] = [r.stdout + r.stderr for r in out]

    def look() -> None:
        seen.append(d.cli("status").stdout)
        seen.append(d.cli("status", "--json").stdout)
        seen.append(d.cli("config", "show", "--running").stdout)
        seen.append(d.cli("config", "show", "--running", "--json").stdout)
        seen.append(d.cli("flows", "--json").stdout)
        seen.append(d.cli("explain", str(pair.subnet4[66]), pair.proxy_addr4).stdout)
        seen.append(d.metrics())

    look()
    st = d.status()
    assert st["store"]["url"] == f"redis://{user}:***@127.0.0.1:{acl_redis.port}"  # type: ignore[index]

    # A store outage as the proxy sees it: its user refused, its connections cut.
    acl_redis.command("ACL", "SETUSER", user, "off")
    acl_redis.command("CLIENT", "KILL", "USER", user)
    st = wait_until(d, "the store down", lambda s: not s["sync"]["healthy"])
    assert "credentials" in str(st["sync"]["last_error"])  # type: ignore[index]
    look()
    acl_redis.command("ACL", "SETUSER", user, "on")
    wait_until(d, "the store back", lambda s: s["sync"]["healthy"])

    # The function library gone: the proxy's user may not load it, and says so.
    acl_redis.command("FUNCTION", "DELETE", "xpro_v1")
    st = wait_until(d, "the refused function load",
                    lambda s: "xpro store init" in str(s["sync"].get("last_error")))
    look()
    xpro("store", "init", "--store", store, "--mesh", mesh, env=admin_env)
    wait_until(d, "the store back", lambda s: s["sync"]["healthy"])

    # A reload, a config check of the same file, and a wrong-password store error.
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    check = xpro("config", "check", str(conf))
    assert "rediss://" in check.stderr  # the plaintext warning, printed
    seen.append(check.stdout + check.stderr)
    seen.append(xpro("config", "check", str(conf), "--json").stdout)
    seen.append(xpro("config", "show", "--config", str(conf)).stdout)
    bad = xpro("doctor", "--config", str(conf), "--json", check=False)
    seen.append(bad.stdout + bad.stderr)
    look()
    assert d.stop() == 0
    log = d.text()
    seen.append(log)
    seen.append(d.alerts.read_text() if d.alerts.exists() else "")

    everything = "\n".join(seen)
    for form in forms(password):
        assert form not in everything, f"the password leaked as {form!r}"
    assert ADMIN not in everything
    # What was said instead: the masked URL, and one warning about plaintext.
    assert f"redis://{user}:***@127.0.0.1:{acl_redis.port}" in log
    warned = [e for e in d.events() if e.get("event") == "store_plaintext_password"]
    assert len(warned) == 1, warned
    assert "rediss://" in str(warned[0]["message"])
    assert any(e.get("event") == "started" for e in d.events())


def _tasks(pid: int) -> list[Path]:
    return sorted(Path(f"/proc/{pid}/task").glob("*/status"))


def test_the_running_daemon_keeps_no_capability(tmp_path: Path, pair: NsPair,  # noqa: F811
                                                acl_redis: RedisServer,
                                                daemons: list[Daemon]) -> None:  # noqa: F811
    mesh = "caps"
    pwfile = tmp_path / "p1.password"
    store = f"redis://127.0.0.1:{acl_redis.port}"
    admin_env = {"XPRO_ADMIN_PASSWORD": ADMIN}
    xpro("store", "init", "--store", store, "--mesh", mesh, "--proxy", "p1",
         "--secrets-dir", str(tmp_path), env=admin_env)
    d = Daemon(tmp_path, pair, store, "--mesh", mesh, "--store-username", f"xpro-{mesh}-p1",
               "--store-password-file", str(pwfile), "--t-f1", "100", "--t-t2", "0.5")
    daemons.append(d)
    d.start()
    assert d.proc is not None
    pid = d.proc.pid
    tasks = _tasks(pid)
    assert len(tasks) > 3  # the main thread, the sync, events, metrics, control...
    for task in tasks:
        caps = read_capabilities(task)
        for name in ("effective", "permitted", "inheritable", "ambient", "bounding"):
            assert getattr(caps, name) == frozenset(), (task, name, caps)
    dropped = [e for e in d.events() if e.get("event") == "capabilities_dropped"]
    assert dropped
    assert dropped[0]["kept"] == []
    assert "CAP_BPF" in dropped[0]["dropped"]
    assert "CAP_SYS_ADMIN" in dropped[0]["dropped"]
    st = d.status()
    assert st["capabilities"]["permitted"] == []

    # And everything still works: filtering, the sync (maps, the control
    # program's test runs), the events ring buffer, a reload, a clean detach.
    rounds = st["sync"]["rounds"]
    traffic(pair, 3.0, flood=2000, legit=20).result(timeout=30)
    st = d.status()
    assert st["counters"]["src_rate"]["packets"] > 1000
    assert st["sync"]["healthy"]
    assert st["sync"]["rounds"] > rounds
    assert st["sync"]["last_round"]["merged"] >= 0
    assert st["alerts"].get("src_overload", 0) >= 1  # the ring buffer is read
    d.proc.send_signal(signal.SIGHUP)
    out = json.loads(d.cli("config", "reload", "--json").stdout)
    assert out["changes"] == []
    assert d.stop() == 0
    assert not any(xdp_query(pair.proxy_if, pair.proxy_ns).values())
    assert not Path(d.pin_dir).exists()
    errors = [e for e in d.events() if e.get("level") in ("error", "critical")]
    assert not errors, errors


def test_drop_capabilities_false_keeps_them(tmp_path: Path, pair: NsPair,  # noqa: F811
                                            daemons: list[Daemon]) -> None:  # noqa: F811
    d = Daemon(tmp_path, pair, "memory://", "--drop-capabilities", "false")
    daemons.append(d)
    d.start()
    assert d.proc is not None
    caps = read_capabilities(Path(f"/proc/{d.proc.pid}/status"))
    assert "CAP_BPF" in caps.effective
    assert d.status()["capabilities"] is None
    assert d.stop() == 0


UNIT = Path(__file__).resolve().parents[2] / "packaging" / "xpro.service"


def test_the_units_syscall_filter_leaves_the_daemon_working_and_mount_out(
        tmp_path: Path, pair: NsPair, daemons: list[Daemon]) -> None:  # noqa: F811
    """``SystemCallFilter=`` of packaging/xpro.service, as seccomp, around a real daemon
    (systemd is not PID 1 here: the same filter, built from the same groups)."""
    from tests.integration import unit_seccomp

    why = unit_seccomp.available()
    if why:
        pytest.skip(why)
    allowed = unit_seccomp.allowed_syscalls(UNIT.read_text())
    assert {"bpf", "capset", "setns", "prctl"} <= allowed
    assert not {"mount", "umount2", "move_mount", "fsmount", "pivot_root", "chroot",
                "init_module", "settimeofday", "chown", "setuid", "ptrace"} & allowed
    d = Daemon(tmp_path, pair, "memory://", "--t-f1", "100", "--t-t2", "0.5")
    daemons.append(d)
    real_popen = subprocess.Popen

    def popen(*args: object, **kw: object) -> subprocess.Popen[bytes]:
        return real_popen(*args, preexec_fn=unit_seccomp.preexec(allowed), **kw)  # type: ignore[call-overload,no-any-return]

    subprocess.Popen = popen  # type: ignore[misc,assignment]
    try:
        d.start(wait=False)
    finally:
        subprocess.Popen = real_popen  # type: ignore[misc]
    d.wait_ready()
    assert d.proc is not None
    assert Path(f"/proc/{d.proc.pid}/status").read_text().count("Seccomp:\t2") == 1
    traffic(pair, 2.0, flood=1500).result(timeout=30)
    st = d.status()
    assert st["counters"]["src_rate"]["packets"] > 500
    assert st["sync"]["healthy"]
    assert st["capabilities"]["bounding"] == []
    assert d.stop() == 0
    assert not any(xdp_query(pair.proxy_if, pair.proxy_ns).values())
    # And under the same filter, mount(2) is refused: the hardening made of
    # mounts cannot be undone from inside.
    probe = ("import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
             "rc = libc.mount(b'none', b'/tmp', b'tmpfs', 0, None); "
             "print(rc, ctypes.get_errno())")
    import sys

    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=30, check=True, preexec_fn=unit_seccomp.preexec(allowed))
    assert r.stdout.split() == ["-1", str(errno.EPERM)]


def test_the_afxdp_daemon_keeps_no_capability(tmp_path: Path,
                                             daemons: list[Daemon]) -> None:  # noqa: F811
    """The userspace data path too runs with none: its sockets are bound at attach."""
    from xpro.lab.frames import Stream, UdpCounter, send_in_netns, udp_frame

    with afxdp_daemon(tmp_path, daemons, "--t-f1", "100", "--t-t2", "0.5") as (d, net):
        assert d.proc is not None
        for task in _tasks(d.proc.pid):
            caps = read_capabilities(task)
            assert caps.effective == caps.permitted == caps.bounding == frozenset(), task
        mac = net.peer_mac
        bot = udp_frame(src_mac=mac, dst_mac="02:00:00:00:00:99", src="10.77.0.66",
                        dst="10.88.0.2", dport=9000)
        legit = udp_frame(src_mac=mac, dst_mac="02:00:00:00:00:99", src="10.77.0.7",
                          dst="10.88.0.2", dport=9000)
        with UdpCounter(net.svc, 9000) as rx:
            send_in_netns(net.peer, net.peer_if,
                          [Stream("bot", bot, 2000), Stream("legit", legit, 20)], 2.0)
            time.sleep(0.5)
        assert rx.counts.get("10.77.0.7") == 40  # forwarded, by a thread with no capability
        assert d.status()["counters"]["src_rate"]["packets"] > 1000
        assert d.stop() == 0


def _offload_child(keep: frozenset[str], chain: object, ready: object, go: object,
                   out: object) -> None:
    """In a forked child (capabilities are per thread): attach, drop, work, detach."""
    from tests.integration.test_offload_backend import _backend
    from xpro.core import model
    from xpro.daemon.privileges import drop_to

    s = model.NS_PER_S
    b = _backend(chain, model.FilterParams(t_f1=100, t_t2=s // 2, t_t1=10 * s, t_f2=10**6,  # type: ignore[arg-type]
                                           t_t3=s))
    res: dict[str, object] = {}
    try:
        b.load()
        b.attach(chain.b1)  # type: ignore[attr-defined]
        res["caps"] = sorted(drop_to(keep).permitted)
        b.start()
        ready.set()  # type: ignore[attr-defined]
        go.wait(60)  # type: ignore[attr-defined]
        res["flows"] = b.refresh().flows  # the drop set, rebuilt and installed
    except Exception as exc:
        res["error"] = repr(exc)
        ready.set()  # type: ignore[attr-defined]
    try:
        b.stop()
        b.close()
        res["closed"] = True
    except Exception as exc:
        res["close_error"] = repr(exc)
    out.put(res)  # type: ignore[attr-defined]


def test_offload_refreshes_and_detaches_with_what_it_keeps() -> None:
    """offload keeps CAP_NET_ADMIN and, with a namespace, CAP_SYS_ADMIN: on an
    offload NIC its reduced program is attached by netlink (there is no link
    descriptor to detach through) inside the interfaces' namespace.  Without
    such a NIC the reduced program runs in driver mode in front (as in
    test_offload_backend.py): its refresh and detach work with the kept set."""
    import multiprocessing as mp

    from tests.integration.test_offload_backend import PORT, SVC, Chain
    from xpro.daemon.privileges import runtime_capabilities
    from xpro.lab.frames import Stream, UdpCounter, send_in_netns, udp_frame
    from xpro.lab.namespaces import Topology, add_address, link_info, sysctl

    wanted = runtime_capabilities("offload", netns=True)
    assert wanted == {"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}
    with Topology() as topo:
        peer, router, svc = topo.namespace("peer"), topo.namespace("rtr"), topo.namespace("svc")
        a0, b0 = topo.veth(peer, router)
        a1, b1 = topo.veth(router, svc)
        add_address(a0, "10.77.0.2/24", peer)
        add_address(b0, "10.77.0.1/24", router)
        add_address(a1, "10.78.0.1/24", router)
        add_address(b1, f"{SVC}/24", svc)
        sysctl(router, "net.ipv4.ip_forward", 1)
        chain = Chain(topo, peer, router, svc, a0, b0, a1, b1, link_info(a0, peer).mac,
                      link_info(b0, router).mac)
        ctx = mp.get_context("fork")
        ready, go, out = ctx.Event(), ctx.Event(), ctx.Queue()
        child = ctx.Process(target=_offload_child, args=(wanted, chain, ready, go, out))
        child.start()
        try:
            assert ready.wait(60)
            flood = udp_frame(src_mac=chain.a0_mac, dst_mac=chain.b0_mac, src="10.77.0.66",
                              dst=SVC, dport=PORT)
            with UdpCounter(svc, PORT):
                send_in_netns(peer, a0, [Stream("bot", flood, 2000)], 1.5)
            go.set()
            res = out.get(timeout=60)
        finally:
            child.join(30)
            if child.is_alive():
                child.kill()
        left = {k: v for k, v in xdp_query(b0, router).items() if v}
    assert "error" not in res, res
    assert res["caps"] == ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
    assert res["flows"] == 1  # the flood's flow went to the reduced program's drop set
    assert res.get("closed"), res
    assert not left
