"""Store URLs and secrets: one mask, one parser, one redaction (docs/security.rst).

``mask_url`` must hide any password -- ``@``, ``:``, ``/``, ``?``, ``#``,
``%``-encoded or not, with or without a user, before IPv6 hosts and lists of
etcd endpoints -- and the stores must take the URL apart by the same rule,
so that what is masked is exactly what is sent.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from xpro.config import InvalidConfig, Secret, load_config, mask_url
from xpro.config.kinds import PLAINTEXT_SCHEMES, plaintext_password_warning, redact, split_url
from xpro.core.text import printable
from xpro.errors import ConfigError
from xpro.stores.etcd import EtcdStore
from xpro.stores.redis import RedisStore

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _no_env_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XPRO_STORE_PASSWORD", raising=False)


SCHEMES = ["redis", "rediss", "redis+cluster", "rediss+cluster", "etcd", "etcds"]
_HOST = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
_ENDPOINT = st.tuples(_HOST, st.one_of(st.just(""), st.integers(1, 65535).map(
    lambda p: f":{p}"))).map("".join)
_HOSTS = st.lists(_ENDPOINT, min_size=1, max_size=3).map(",".join)
#: Passwords: anything but line breaks, with the characters that broke the old mask.
_PASSWORD = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
            min_size=1, max_size=40),
    st.lists(st.sampled_from(list("@:/?#%[] ab1")), min_size=1, max_size=20).map("".join),
)
_USER = st.one_of(st.just(""), st.from_regex(r"[A-Za-z0-9_.+-]{1,12}", fullmatch=True))
_TAIL = st.sampled_from(["", "/", "/3", "?buckets=128", "/0?timeout=2&verify=false"])


@settings(max_examples=400)
@given(scheme=st.sampled_from(SCHEMES), user=_USER, password=_PASSWORD, hosts=_HOSTS,
       tail=_TAIL, encode=st.booleans())
@example(scheme="redis", user="", password="p@ss", hosts="h:1", tail="", encode=False)
@example(scheme="redis", user="u", password="a:b@c/d?e#f", hosts="[::1]:6379", tail="/2",
         encode=False)
@example(scheme="etcd", user="root", password="pw", hosts="a:1,b:2,[::1]:3", tail="",
         encode=True)
@example(scheme="redis", user="u", password="%41%", hosts="h", tail="", encode=True)
def test_mask_url_hides_any_password(scheme: str, user: str, password: str, hosts: str,
                                     tail: str, encode: bool) -> None:
    written = quote(password, safe="") if encode else password
    url = f"{scheme}://{user}:{written}@{hosts}{tail}"
    masked = mask_url(url)
    # Exactly the password goes, the rest stays as written.
    assert masked == f"{scheme}://{user}:***@{hosts}{tail}"
    # And the parser the stores use sees the same boundaries.
    parts = split_url(url)
    assert parts.scheme == scheme
    assert parts.username == (user or None)
    assert parts.hosts == hosts
    if encode:
        assert parts.password == password
    assert mask_url(masked) == masked


@given(scheme=st.sampled_from(SCHEMES), user=_USER, hosts=_HOSTS, tail=_TAIL)
def test_mask_url_leaves_urls_without_password(scheme: str, user: str, hosts: str,
                                               tail: str) -> None:
    url = f"{scheme}://{user}@{hosts}{tail}" if user else f"{scheme}://{hosts}{tail}"
    assert mask_url(url) == url
    assert split_url(url).password is None


@settings(max_examples=200)
@given(password=st.text(st.characters(blacklist_categories=("Cs",),
                                      blacklist_characters="\n\r"), min_size=4, max_size=30))
def test_redact_scrubs_every_form_a_secret_takes(password: str) -> None:
    Secret(password)  # remembered
    for form in (password, quote(password, safe=""), json.dumps(password), repr(password),
                 json.dumps({"error": f"AUTH {password} failed"}), printable(password)):
        out = redact(f"before {form} after")
        assert password not in out
        assert out.startswith("before ")
        assert out.endswith(" after")


def test_stores_parse_what_the_mask_hides() -> None:
    r = RedisStore.from_url("redis://u:p@ss:w/rd?x#y@[::1]:7000/2?buckets=8")
    assert (r._username, r._password, r.nodes, r.db, r.buckets) == (
        "u", "p@ss:w/rd?x#y", [("::1", 7000)], 2, 8)
    assert "p@ss" not in repr(r)
    e = EtcdStore.from_url("etcd://root:a@b,c@h1:1,h2:2,[::1]:3")
    assert (e._username, e._password) == ("root", "a@b,c")
    assert e.endpoints == [("h1", 1), ("h2", 2), ("::1", 3)]
    with pytest.raises(ConfigError, match="bad port") as err:
        RedisStore.from_url("redis://u:hunter22/x@h:port")
    assert "hunter22" not in str(err.value)


def test_a_refused_url_is_shown_masked() -> None:
    with pytest.raises(InvalidConfig) as err:
        load_config(None, env={"XPRO_STORE_URL": "redis://u:hun ter22@h:1 x"})
    assert "hun ter22" not in str(err.value)
    assert "redis://u:***@h:1 x" in str(err.value)
    # A password may hold white space; the rest of the URL may not.
    cfg = load_config(None, env={"XPRO_STORE_URL": "rediss://u:a b@h:1"})
    assert cfg.effective_config()["store"]["url"] == "rediss://u:***@h:1"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_password_over_plaintext_is_warned_once(scheme: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="xpro")
    url = f"{scheme}://u:warnme-{scheme}@h:1"
    store = RedisStore if scheme.startswith("redis") else EtcdStore
    store.from_url(url)
    store.from_url(url)
    hits = [r for r in caplog.records if getattr(r, "event", "") == "store_plaintext_password"]
    plain = scheme in PLAINTEXT_SCHEMES
    assert len(hits) == (1 if plain else 0)
    if plain:
        text = hits[0].getMessage()
        assert f"{scheme}://u:***@h:1" in text
        assert f"{PLAINTEXT_SCHEMES[scheme]}://" in text
        assert "warnme" not in caplog.text
    # No password, no warning.
    assert plaintext_password_warning(f"{scheme}://h:1", False) is None


def test_config_warns_of_a_plaintext_password() -> None:
    cfg = load_config(None, env={"XPRO_STORE_URL": "etcd://h:2379",
                                 "XPRO_STORE_PASSWORD": "pw-over-etcd"})
    (w,) = cfg.warnings()
    assert "etcds://" in w
    assert "pw-over-etcd" not in w
    assert load_config(None, env={"XPRO_STORE_URL": "etcds://h:2379",
                                  "XPRO_STORE_PASSWORD": "x"}).warnings() == ()
    assert load_config(None, env={"XPRO_STORE_URL": "redis://h:1"}).warnings() == ()
    assert load_config(None, env={"XPRO_STORE_URL": "redis://:p4ss@h:1"}).warnings()


def test_store_username_key_is_validated() -> None:
    cfg = load_config(None, env={"XPRO_STORE_USERNAME": "xpro-mesh-p1"})
    assert cfg.store_options() == {"username": "xpro-mesh-p1"}
    with pytest.raises(InvalidConfig) as err:
        load_config(None, env={"XPRO_STORE_USERNAME": "a b"})
    assert "store.username" in str(err.value)
    assert "1-128 letters, digits" in str(err.value)
