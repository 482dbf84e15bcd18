"""Passwords and TLS against real servers: the secret paths work and never leak."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.stores._util import S, keys, locals_, now_ns, read_all
from tests.stores.conftest import ETCD, Server, Servers, free_port
from xpro.config import Secret
from xpro.core.model import SyncParams
from xpro.errors import StoreError, StoreUnavailable
from xpro.lab.servers import TlsFiles
from xpro.plugins import open_store
from xpro.stores import _redis_lua
from xpro.stores.base import Store
from xpro.stores.etcd import EtcdStore

pytestmark = pytest.mark.integration

P = SyncParams()
SECRET = "s3cret-pw"


@pytest.fixture(autouse=True)
def _no_env_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XPRO_STORE_PASSWORD", raising=False)


def roundtrip(url: str, **options: object) -> None:
    s = open_store(url, mesh="auth", options=options or None)
    try:
        t = now_ns() - S
        s.merge(keys(10, 3), locals_([(t, t, 1, 1, 0)] * 10), P)
        assert len(read_all(s)) == 10
        s.heartbeat("p", 1.0, t)
        assert "p" in s.proxies()
    finally:
        s.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: apt-get install openssl")
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=xpro test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return d / "ca.pem", d / "server.pem", d / "server.key"


def test_redis_password_from_url_env_and_file(server_factory: Servers, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    srv = server_factory.redis(extra=("--requirepass", SECRET), ready=_ready_with(SECRET))
    base = f"127.0.0.1:{srv.port}"
    caplog.set_level(logging.DEBUG)
    roundtrip(f"redis://:{SECRET}@{base}")
    pf = tmp_path / "pw"
    pf.write_text(SECRET + "\n")
    roundtrip(f"redis://{base}", password_file=str(pf))
    monkeypatch.setenv("XPRO_STORE_PASSWORD", SECRET)
    roundtrip(f"redis://{base}")
    monkeypatch.setenv("XPRO_STORE_PASSWORD", "wrong")
    s = open_store(f"redis://{base}", mesh="auth")
    with pytest.raises(StoreUnavailable, match="credentials") as err:
        s.ping()
    assert SECRET not in str(err.value)
    assert "wrong" not in str(err.value)
    assert SECRET not in caplog.text


def _ready_with(password: str, **kw: object) -> object:
    def ready(srv: Server) -> bool:
        r = redis.Redis(host="127.0.0.1", port=srv.port, password=password, socket_timeout=1,
                        **kw)  # type: ignore[arg-type]
        try:
            return bool(r.ping())
        finally:
            r.close()

    return ready


def test_redis_tls(server_factory: Servers, certs: tuple[Path, Path, Path]) -> None:
    ca, cert, key = certs
    port = free_port()
    srv = server_factory.redis(
        port=port,
        extra=("--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
               "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
               "--tls-auth-clients", "no"),
        ready=_ready_with(None, ssl=True, ssl_ca_certs=str(ca)),  # type: ignore[arg-type]
    )
    roundtrip(f"rediss://127.0.0.1:{srv.port}", ca=str(ca))
    # The server's certificate is checked: another CA is refused.
    s = open_store(f"rediss://127.0.0.1:{srv.port}", mesh="tls",
                   options={"ca": str(cert)})
    with pytest.raises(StoreUnavailable):
        s.ping()


@pytest.mark.skipif(ETCD is None, reason="etcd not installed: apt-get install etcd-server")
def test_etcd_password(server_factory: Servers) -> None:
    (srv,) = server_factory.etcd(1)
    ep = f"http://127.0.0.1:{srv.port}"
    ctl = shutil.which("etcdctl")
    if ctl is None:
        pytest.skip("etcdctl not installed: apt-get install etcd-client")
    env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
    for args in (["user", "add", f"root:{SECRET}"], ["auth", "enable"]):
        subprocess.run([ctl, "--endpoints", ep, *args], check=True, capture_output=True,
                       env=env, timeout=30)
    roundtrip(f"etcd://root:{SECRET}@127.0.0.1:{srv.port}")
    s = open_store(f"etcd://root:wrong@127.0.0.1:{srv.port}", mesh="auth",
                   options={"retry_time": 0.2})
    with pytest.raises(StoreUnavailable, match="authentication failed") as err:
        s.ping()
    assert "wrong" not in str(err.value)
    assert "wrong" not in repr(s)


def test_etcd_tls(server_factory: Servers, certs: tuple[Path, Path, Path]) -> None:
    ca, _, _ = certs
    (srv,) = server_factory.etcd(1, tls=certs)
    roundtrip(f"etcds://127.0.0.1:{srv.port}", ca=str(ca))


# --------------------------------------------------------------------------
# Least privilege: `xpro store init` with the administrator's credentials, then
# each proxy runs with a user of its own (docs/security.rst)
# --------------------------------------------------------------------------

ADMIN = "adm1n-Secret@pw"
XPRO = [sys.executable, "-m", "xpro"]


def xpro_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*XPRO, *args], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, **(env or {})})
    assert done.returncode == 0, f"xpro {' '.join(args)}: {done.returncode}\n{done.stderr}"
    return done


def pull_candidates(store: Store) -> None:
    """A merge judged by a rule, its candidate, partial and known client pulled
    (every command the candidate pull runs inside the functions)."""
    from tests.stores._util import keys, locals_
    from xpro.core import model
    from xpro.core.pull import PullRule

    k = keys(1, 77)
    k["dst"]["pad"] = 0
    t = now_ns() - 20 * S
    rule = PullRule(t_f1=100, t_t2=S, t_t1=10 * S, min_age=S, min_packets=8)
    sp = model.SyncParams(t_t1=10 * S, t_t4=5 * S)
    store.merge(k, locals_([(t, t + 3 * S, 900, 900, 0)]), sp, rule=rule)  # 300/s: over
    ck, _, ak, parts, _ = store.pull(None)
    assert k.tobytes() in {x.tobytes() for x in ck}
    mine = ak["dst"] == k["dst"]
    assert int(parts["c"][mine].sum()) == 0  # over T_F1: not in the destination's aggregate
    kk, _ = store.clients(k["dst"])
    assert len(kk) == 0  # over T_F1: not a known client
    # Its window shortened (19 s > T_T4): 450 packets over 9.5 s, under T_F1.
    store.merge(k, locals_([(t, t + 19 * S, 900, 0, 0)]), sp, rule=rule)
    kk, _ = store.clients(k["dst"])
    assert [x.tobytes() for x in kk] == [k.tobytes()]
    _, _, ak, parts, _ = store.pull(None)
    assert int(parts["c"][ak["dst"] == k["dst"]].sum()) == 450


def sync_a_round(store: Store, mesh: str) -> None:
    """A proxy's round through ``store``: real XDP program, real Syncer."""
    if os.geteuid() != 0:
        pytest.skip("loads BPF programs: needs root")
    from tests.packets import frame
    from xpro.core import model
    from xpro.core.params import Sizes
    from xpro.datapath.xdp import XdpFilter
    from xpro.sync import Syncer

    t0 = now_ns()
    filt = XdpFilter(model.FilterParams(t_t1=1000 * S, t_f1=2**32 - 1, t_f2=2**32 - 1),
                     sizes=Sizes(flows=1024, dsts=64, prefixes=8))
    try:
        filt.set_clock(t0)
        f = frame("10.0.2.1", "10.9.9.9")
        filt.program.test_run(f, repeat=25, data_out=False)
        sync = Syncer(filt, store, "p1", model.SyncParams(t_t1=1000 * S, t_t4=10_000 * S))
        stats = sync.round(t0 + 1)
        assert stats.merged == 1
        assert "p1" in stats.peers
        sync.round(t0 + 2)
    finally:
        filt.close()
    got = read_all(store)
    assert [c for _, _, c in got.values()] == [25]


@pytest.fixture
def tls(certs: tuple[Path, Path, Path]) -> TlsFiles:
    return TlsFiles(*certs)


def test_redis_tls_acl_proxy_user_has_only_what_the_sync_needs(
        server_factory: Servers, tls: TlsFiles, tmp_path: Path) -> None:
    srv = server_factory.redis(tls=tls, password=ADMIN)
    url = f"rediss://127.0.0.1:{srv.port}"
    secrets_dir = tmp_path / "secrets"
    ca = ["--store-tls-ca", str(tls.ca)]
    out = xpro_cli("store", "init", "--store", url, "--mesh", "m1", *ca, "--proxy", "p1",
                   "--secrets-dir", str(secrets_dir), env={"XPRO_ADMIN_PASSWORD": ADMIN})
    pwfile = secrets_dir / "p1.password"
    assert pwfile.stat().st_mode & 0o777 == 0o600
    pw = pwfile.read_text().strip()
    assert pw not in out.stdout + out.stderr
    assert ADMIN not in out.stdout + out.stderr
    assert "function library xpro_v1 loaded" in out.stdout
    # Running init again changes no password (the file is reused).
    xpro_cli("store", "init", "--store", url, "--mesh", "m1", *ca, "--proxy", "p1",
             "--secrets-dir", str(secrets_dir), env={"XPRO_ADMIN_PASSWORD": ADMIN})
    assert pwfile.read_text().strip() == pw

    user = "xpro-m1-p1"
    opts = {"ca": str(tls.ca), "username": user, "password": Secret(pw)}
    proxy = open_store(url, mesh="m1", options=opts)
    try:
        sync_a_round(proxy, "m1")
        roundtrip_store(proxy)
        pull_candidates(proxy)
        assert proxy.expire(now_ns() + S) >= 1
    finally:
        proxy.close()

    raw = redis.Redis(host="127.0.0.1", port=srv.port, username=user, password=pw, ssl=True,
                      ssl_ca_certs=str(tls.ca), protocol=2)
    try:
        denied = redis.exceptions.NoPermissionError
        # It cannot load, replace or remove functions...
        with pytest.raises(denied):
            raw.function_load("#!lua name=evil\nredis.register_function('x', "
                              "function() return 1 end)", replace=True)
        with pytest.raises(denied):
            raw.execute_command("FUNCTION", "DELETE", "xpro_v1")
        with pytest.raises(denied):
            raw.execute_command("FUNCTION", "FLUSH")
        # ...nor run the server's administration or arbitrary scripts...
        for cmd in (("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "*"), ("KEYS", "*"),
                    ("SCAN", "0"), ("ACL", "LIST"), ("EVAL", "return 1", "0"),
                    ("CLIENT", "LIST"), ("SAVE",), ("SHUTDOWN",), ("MONITOR",)):
            with pytest.raises(denied):
                raw.execute_command(*cmd)
        # ...nor touch another mesh's keys, directly or through the functions.
        for cmd in (("HSET", "{xpro:m2:0}:r", "k", "v"), ("HGETALL", "{xpro:m2}:hb"),
                    ("DEL", "{xpro:m2}:cfg"), ("HSET", "other-app-key", "k", "v"),
                    ("FCALL_RO", "xpro_v1_changes", 3, "{xpro:m2:0}:r", "{xpro:m2:0}:l",
                     "{xpro:m2:0}:m", -1)):
            with pytest.raises(denied):
                raw.execute_command(*cmd)
        assert raw.ping()
    finally:
        raw.close()
    other = open_store(url, mesh="m2", options=opts)
    with pytest.raises(StoreUnavailable, match="may not run"):
        roundtrip_store(other)
    other.close()

    # Functions gone (a restart without persistence): the proxy cannot load them,
    # and says what to do; init puts them back.
    srv.command("FUNCTION", "DELETE", "xpro_v1")
    proxy = open_store(url, mesh="m1", options=opts)
    with pytest.raises(StoreUnavailable, match="xpro store init") as err:
        roundtrip_store(proxy)
    assert pw not in str(err.value)
    xpro_cli("store", "init", "--store", url, "--mesh", "m1", *ca,
             env={"XPRO_ADMIN_PASSWORD": ADMIN})
    roundtrip_store(proxy)
    proxy.close()

    # A library replaced by someone with FUNCTION rights (same name, other code)
    # is refused by the proxy, which compares the text at connect: it never
    # merges through code it does not know.
    evil = _redis_lua.CODE + "\n-- changed\n"
    admin = redis.Redis(host="127.0.0.1", port=srv.port, password=ADMIN, ssl=True,
                        ssl_ca_certs=str(tls.ca))
    admin.function_load(evil, replace=True)
    admin.close()
    proxy = open_store(url, mesh="m1", options=opts)
    with pytest.raises(StoreUnavailable, match="from another xpro version"):
        roundtrip_store(proxy)
    proxy.close()


def test_redis_password_rotation_keeps_every_round(server_factory: Servers, tls: TlsFiles,
                                                   tmp_path: Path) -> None:
    srv = server_factory.redis(tls=tls, password=ADMIN)
    url = f"rediss://127.0.0.1:{srv.port}"
    base = ["--store", url, "--mesh", "rot", "--store-tls-ca", str(tls.ca)]
    env = {"XPRO_ADMIN_PASSWORD": ADMIN}
    old, new = tmp_path / "old.pw", tmp_path / "new.pw"
    xpro_cli("store", "init", *base, env=env)
    xpro_cli("store", "user", "p1", *base, "--password-file", str(old), env=env)

    def works(pwfile: Path) -> bool:
        s = open_store(url, mesh="rot", options={"ca": str(tls.ca), "username": "xpro-rot-p1",
                                                 "password": pwfile.read_text().strip()})
        try:
            s.ping()
            return True
        except StoreUnavailable:
            return False
        finally:
            s.close()

    assert works(old)
    xpro_cli("store", "user", "p1", *base, "--password-file", str(new), "--add", env=env)
    assert works(old)
    assert works(new)  # both, while the proxies move over
    xpro_cli("store", "user", "p1", *base, "--password-file", str(new), env=env)
    assert works(new)
    assert not works(old)
    xpro_cli("store", "user", "p1", *base, "--delete", env=env)
    assert not works(new)


@pytest.mark.skipif(ETCD is None, reason="etcd not installed: apt-get install etcd-server")
def test_etcd_tls_auth_proxy_user_has_only_its_prefix(server_factory: Servers, tls: TlsFiles,
                                                      tmp_path: Path) -> None:
    (srv,) = server_factory.etcd(1, tls=tls)
    url = f"etcds://127.0.0.1:{srv.port}"
    admin_pw = tmp_path / "root.pw"
    admin_pw.write_text(ADMIN + "\n")
    secrets_dir = tmp_path / "secrets"
    base = ["--store", url, "--mesh", "m1", "--store-tls-ca", str(tls.ca),
            "--admin-password-file", str(admin_pw)]
    out = xpro_cli("store", "init", *base, "--enable-auth", "--proxy", "p1",
                   "--secrets-dir", str(secrets_dir))
    assert "authentication enabled" in out.stdout
    assert "role xpro-m1 created" in out.stdout
    pw = (secrets_dir / "p1.password").read_text().strip()
    assert pw not in out.stdout + out.stderr
    assert ADMIN not in out.stdout + out.stderr

    # Without credentials nothing is readable any more.
    anon = open_store(url, mesh="m1", options={"ca": str(tls.ca), "retry_time": 0.2})
    with pytest.raises(StoreError):
        anon.ping()
    anon.close()

    opts = {"ca": str(tls.ca), "username": "xpro-m1-p1", "password": Secret(pw),
            "retry_time": 0.2}
    proxy = open_store(url, mesh="m1", options=opts)
    assert isinstance(proxy, EtcdStore)
    try:
        first = proxy.revision()
        sync_a_round(proxy, "m1")
        roundtrip_store(proxy)
        proxy.expire(now_ns() + S)
        # A proxy never compacts the cluster's history: every old revision is
        # still there after its expire (compaction is `xpro store compact`).
        assert history_kept(proxy, first)
        # It cannot write outside its mesh's prefix...
        for key in (b"xpro/m2/r/x", b"xpro/m1", b"other-app/key", b"xpro/m10/r/x"):
            with pytest.raises(StoreUnavailable, match="permission denied"):
                proxy.raw_put(key, b"x")
        # ...nor hand out rights.
        from etcd3.etcdrpc import AuthUserAddRequest  # type: ignore[import-untyped]

        with pytest.raises(StoreError, match="permission denied"):
            proxy.auth_call("UserAdd", AuthUserAddRequest(name="evil", password="x"), "add")
    finally:
        proxy.close()
    other = open_store(url, mesh="m2", options=opts)
    with pytest.raises(StoreUnavailable, match="permission denied"):
        roundtrip_store(other)
    other.close()
    # The administrator compacts.
    out = xpro_cli("store", "compact", *base, "--keep-revisions", "0")
    assert "compacted the history up to revision" in out.stdout
    proxy = open_store(url, mesh="m1", options=opts)
    assert isinstance(proxy, EtcdStore)
    assert not history_kept(proxy, first)
    # What etcd does NOT restrict (docs/security.rst says so): any authenticated
    # user may compact the whole cluster's history -- etcd checks no role for
    # Compact (3.4 as 3.6).  A stolen etcd proxy credential can do this; if a
    # release of etcd ever forbids it, this fails and the docs can say so.
    proxy.heartbeat("p1", 1.0, now_ns())  # one more revision to compact to
    assert proxy.compact(proxy.revision())
    proxy.close()


def history_kept(store: EtcdStore, revision: int) -> bool:
    """Whether ``revision`` can still be read (not compacted away)."""
    import etcd3.etcdrpc as rpc  # type: ignore[import-untyped]

    req = rpc.RangeRequest(key=store.record_key(b""), revision=revision)
    try:
        store._rpc(lambda stub, md: stub.Range(req, timeout=5, metadata=md), "old read")
    except StoreError as exc:
        if "compacted" not in str(exc):
            raise
        return False
    return True


def roundtrip_store(s: Store) -> None:
    t = now_ns() - S
    s.merge(keys(10, 3), locals_([(t, t, 1, 1, 0)] * 10), P)
    assert len(read_all(s)) >= 10
    s.heartbeat("p", 1.0, t)
    assert "p" in s.proxies()
