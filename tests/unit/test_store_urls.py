"""Store URLs, options and secrets: parsed without a server (connections are lazy)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from xpro.errors import ConfigError, PluginError
from xpro.plugins import open_store, stores
from xpro.stores.etcd import EtcdStore
from xpro.stores.memory import MemoryStore
from xpro.stores.redis import RedisStore

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _no_env_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XPRO_STORE_PASSWORD", raising=False)


def test_schemes_are_registered_through_entry_points() -> None:
    names = stores().names()
    for scheme in ("memory", "redis", "rediss", "redis+cluster", "etcd", "etcds"):
        assert scheme in names
    with pytest.raises(PluginError, match="no store named 'nope'"):
        open_store("nope://x")
    with pytest.raises(ConfigError, match="no scheme"):
        open_store("hostonly")


def test_redis_urls() -> None:
    s = open_store("redis://u:p%40ss@10.0.0.1:7000/3?buckets=128&timeout=2", mesh="m1")
    assert isinstance(s, RedisStore)
    assert s.nodes == [("10.0.0.1", 7000)]
    assert s.db == 3
    assert not s.cluster
    assert not s.tls
    assert s.buckets == 128
    assert s.timeout == 2.0
    assert s._username == "u"
    assert s._password == "p@ss"
    c = open_store("redis+cluster://a:1,b:2,[::1]:3", mesh="m1")
    assert isinstance(c, RedisStore)
    assert c.cluster
    assert c.buckets == 256
    assert c.nodes == [("a", 1), ("b", 2), ("::1", 3)]
    t = open_store("rediss://h:6380?ca=/x/ca.pem&verify=false")
    assert isinstance(t, RedisStore)
    assert t.tls
    assert t._tls_opts["verify"] is False
    assert RedisStore.from_url("redis://").nodes == [("127.0.0.1", 6379)]
    for bad, msg in [("redis://a:1,b:2", "several hosts"), ("redis://h:x", "bad port"),
                     ("redis://h:1/zz", "database"), ("redis+cluster://h:1/2", "databases"),
                     ("redis://h?bogus=1", "unknown"), ("redis://h?buckets=0", "out of range"),
                     ("redis://h?verify=maybe", "true or false")]:
        with pytest.raises(ConfigError, match=msg):
            open_store(bad)
    with pytest.raises(ConfigError, match="mesh name"):
        open_store("redis://h", mesh="a{b}")


def test_etcd_urls() -> None:
    s = open_store("etcd://root:pw@h1:1,h2,[::1]:3?timeout=1", mesh="m")
    assert isinstance(s, EtcdStore)
    assert s.endpoints == [("h1", 1), ("h2", 2379), ("::1", 3)]
    assert s._username == "root"
    assert s._password == "pw"
    assert not s.tls
    assert open_store("etcds://h:1?ca=/x").tls  # type: ignore[attr-defined]
    for bad in ("etcd://h:1/path", "etcd://h:port", "etcd://h?x=1"):
        with pytest.raises(ConfigError):
            open_store(bad)


def test_secrets_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pf = tmp_path / "pw"
    pf.write_text("from-file\n")
    s = RedisStore.from_url(f"redis://h:1?password_file={pf}")
    assert s._password == "from-file"
    monkeypatch.setenv("XPRO_STORE_PASSWORD", "from-env")
    assert RedisStore.from_url(f"redis://h:1?password_file={pf}")._password == "from-env"
    assert RedisStore.from_url("redis://:in-url@h:1")._password == "in-url"
    e = EtcdStore.from_url("etcd://h:1")
    assert e._password == "from-env"
    assert e._username == "root"
    monkeypatch.delenv("XPRO_STORE_PASSWORD")
    with pytest.raises(ConfigError, match="cannot read"):
        RedisStore.from_url(f"redis://h:1?password_file={tmp_path / 'missing'}")


def test_secrets_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for url in ("redis://user:hunter2@h:1", "rediss://:hunter2@h:1",
                "redis+cluster://u:hunter2@a:1,b:2", "etcd://root:hunter2@h:1"):
        s = open_store(url)
        assert "hunter2" not in repr(s)
        assert "hunter2" not in str(s)
        assert "***" in repr(s)
        logging.getLogger("test").info("store %s", s)
    assert "hunter2" not in caplog.text


def test_memory_urls() -> None:
    a = open_store("memory://", mesh="m")
    b = open_store("memory://default", mesh="m")
    c = open_store("memory://other", mesh="m")
    assert isinstance(a, MemoryStore)
    assert isinstance(b, MemoryStore)
    assert isinstance(c, MemoryStore)
    assert a._state is b._state
    assert a._state is not c._state
    assert open_store("memory://", mesh="n")._state is not a._state  # type: ignore[attr-defined]
    with pytest.raises(ConfigError):
        open_store("memory://x/y")


@pytest.mark.parametrize("url", ["redis://h:x", "redis://127.0.0.1:99999", "etcd://127.0.0.1:99999",
                                 "etcd://h:0", "rediss+cluster://a:7000,b:²", "redis://[::1",
                                 "etcd://[::1]x"])
def test_a_bad_port_or_host_is_a_config_error_everywhere(url: str) -> None:
    """Refused by ``config check`` and by the store, with the item named; etcd
    once took port 99999 as 34463 (the port modulo 65536)."""
    from xpro.config import load_config

    with pytest.raises(ConfigError, match=r"bad (port|host)"):
        load_config(None, env={}, overrides={"store.url": url})
    with pytest.raises(ConfigError, match=r"bad (port|host)"):
        open_store(url)


def test_host_lists_keep_their_ports_and_defaults() -> None:
    from xpro.config.kinds import split_hosts

    assert split_hosts("a:7000, [::1]:7001,[::2],b,", 6379) == [
        ("a", 7000), ("::1", 7001), ("::2", 6379), ("b", 6379)]


@pytest.mark.parametrize("url", ["memory://a:b", "memory://:pw@x", "memory://u@x", "memory://a,b",
                                 "memory://x/y", "memory://[x"])
def test_a_memory_url_is_memory_or_memory_name_everywhere(url: str) -> None:
    """What ``config check`` passes the store takes, and the reverse: a
    password or a port in a memory:// URL would be silently unused."""
    from xpro.config import load_config

    with pytest.raises(ConfigError, match="memory://NAME"):
        load_config(None, env={}, overrides={"store.url": url})
    with pytest.raises(ConfigError, match="memory://NAME"):
        open_store(url)
    assert isinstance(open_store("memory://t-0a1.b_c"), MemoryStore)

