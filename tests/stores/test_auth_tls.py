"""Passwords and TLS against real servers: the secret paths work and never leak."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from tests.stores._util import S, keys, locals_, now_ns, read_all
from tests.stores.conftest import ETCD, Server, Servers, free_port
from xpro.core.model import SyncParams
from xpro.errors import StoreUnavailable
from xpro.plugins import open_store

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
