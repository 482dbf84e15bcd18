"""The CoAP destination parser: targets from Proxy-Uri / Uri-Host, and no crash on garbage.

Valid messages are built with scapy's CoAP layer (an encoder written
independently of the parser); malformed ones are random bytes and valid
messages cut, flipped and spliced by hypothesis.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.contrib.coap import CoAP

from xpro.core.hostnames import canonical_host, join
from xpro.datapath.afxdp.filter import parsed_destination_addr
from xpro.hooks.registry import Registry
from xpro.parsers import coap as coap_mod
from xpro.parsers.coap import (
    COAP_PORT,
    canonical_name,
    parse_coap,
    parse_options,
    xpro_add_destination_parsers,
)

pytestmark = pytest.mark.unit


def coap(options: list[tuple[str, bytes]], payload: bytes = b"", code: int = 1,
         token: bytes = b"") -> bytes:
    msg = CoAP(type=0, code=code, msg_id=0x1234, token=token, options=options)
    if payload:
        msg.paymark = b"\xff"
        return bytes(msg / payload)
    return bytes(msg)


@pytest.mark.parametrize(("options", "want"), [
    ([("Uri-Host", b"sensor.example")], "sensor.example"),
    ([("Uri-Host", b"Sensor.Example"), ("Uri-Port", b"\x16\x34")], "sensor.example:5684"),
    ([("Uri-Host", b"2001:db8::1"), ("Uri-Port", b"\x16\x33")], "2001:db8::1"),
    ([("Uri-Host", b"2001:DB8:0::1"), ("Uri-Port", b"\x16\x34")], "[2001:db8::1]:5684"),
    ([("Proxy-Uri", b"coap://svc.example/temp")], "svc.example"),
    ([("Proxy-Uri", b"coaps://SVC.example:61616/a?b=c")], "svc.example:61616"),
    ([("Proxy-Uri", b"coap://[2001:db8::7]:1234/x")], "[2001:db8::7]:1234"),
    ([("Uri-Host", b"other"), ("Proxy-Uri", b"coap://svc.example/")], "svc.example"),
    # a Proxy-Uri longer than 268 bytes: the length takes the 14 nibble (two extra bytes)
    ([("Proxy-Uri", b"coap://long.example/" + b"p" * 400)], "long.example"),
    ([("Uri-Path", b"temp")], None),  # well formed, names no target
    ([("Proxy-Uri", b"no-scheme-here")], None),
])
def test_targets(options: list[tuple[str, bytes]], want: str | None) -> None:
    assert parse_coap(coap(options, payload=b"22.5", token=b"\x01\x02")) == want
    assert parse_coap(coap(options)) == want


def test_extended_deltas() -> None:
    """Option numbers that need the 13 and 14 delta nibbles (hand-encoded)."""
    # Uri-Host (3), then option 3+13+10=26 (delta 13: extended byte 10),
    # then option 26+269+1000 (delta 14: two extended bytes), then a payload.
    msg = (bytes([0x40, 0x01, 0x00, 0x01])
           + bytes([0x34]) + b"host"
           + bytes([0xD1, 10]) + b"x"
           + bytes([0xE2]) + (1000).to_bytes(2, "big") + b"yz"
           + b"\xff" + b"payload")
    assert parse_options(msg) == [(3, b"host"), (26, b"x"), (26 + 269 + 1000, b"yz")]
    assert parse_coap(msg) == "host"


@pytest.mark.parametrize("raw", [
    b"",
    b"\x40",
    b"\x80\x01\x00\x01" + bytes([0x34]) + b"host",  # version 2
    b"\x49\x01\x00\x01" + b"123456789" + bytes([0x34]) + b"host",  # token length 9
    b"\x40\x01\x00\x01" + bytes([0x3F]) + b"host",  # length nibble 15
    b"\x40\x01\x00\x01" + bytes([0xF4]) + b"host",  # delta nibble 15
    b"\x40\x01\x00\x01" + bytes([0x38]) + b"host",  # value past the end
    b"\x40\x01\x00\x01" + bytes([0x34]) + b"host" + b"\xff",  # marker without payload
    b"\x40\x01\x00\x01" + bytes([0xD4]),  # extended delta byte missing
    b"\x40\x00\x00\x01" + bytes([0x34]) + b"host",  # an Empty message with options
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01",
])
def test_malformed_or_not_coap(raw: bytes) -> None:
    assert parse_coap(raw) is None


def _host_name(h: str) -> bool:
    """A name of letters, digits and inner hyphens, without the "??--" of encodings."""
    return all(label[-1] != "-" and label[2:4] != "--" for label in h.split("."))


host = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}",
                     fullmatch=True).filter(_host_name)


@settings(max_examples=300, deadline=None)
@given(h=host, port=st.none() | st.integers(1, 65535), payload=st.binary(max_size=40),
       token=st.binary(max_size=8), path=st.lists(st.binary(min_size=1, max_size=30),
                                                  max_size=3))
def test_uri_host_roundtrip(h: str, port: int | None, payload: bytes, token: bytes,
                            path: list[bytes]) -> None:
    opts = [("Uri-Host", h.encode())]
    if port is not None:
        opts.append(("Uri-Port", port.to_bytes(2, "big").lstrip(b"\0")))
    opts += [("Uri-Path", p) for p in path]
    want = h if port in (None, COAP_PORT) else f"{h}:{port}"
    assert parse_coap(coap(opts, payload=payload, token=token)) == want


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(raw: bytes) -> None:
    out = parse_coap(raw)
    assert out is None or isinstance(out, str)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    base = bytearray(coap([("Uri-Host", draw(host).encode()), ("Uri-Port", b"\x16\x34"),
                           ("Proxy-Uri", b"coap://svc.example:" + b"9" * draw(st.integers(0, 8)))],
                          payload=draw(st.binary(max_size=20)), token=draw(st.binary(max_size=8))))
    for _ in range(draw(st.integers(1, 6))):
        how = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        i = draw(st.integers(0, max(len(base) - 1, 0)))
        if how == "flip" and base:
            base[i] ^= draw(st.integers(1, 255))
        elif how == "cut":
            del base[i:]
        elif how == "insert":
            base[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif base:
            del base[i]
    return bytes(base)


@settings(max_examples=1000, deadline=None)
@given(mutated())
def test_mutated_messages_never_raise(raw: bytes) -> None:
    out = parse_coap(raw)
    assert out is None or isinstance(out, str)
    if out is not None:  # whatever it returns is a plausible host[:port]
        assert "/" not in out
        assert " " not in out


@st.composite
def header(draw: st.DrawFn) -> bytes:
    """A first byte (version, type, token length), a code (often Empty), a message
    ID and a token of the length the first byte says (valid or not)."""
    b0 = draw(st.sampled_from([0x40, 0x41, 0x48, 0x50, 0x49, 0x80, 0x00]) | st.integers(0, 255))
    code = draw(st.sampled_from([0, 1, 2, 0x45]) | st.integers(0, 255))
    return bytes([b0, code]) + draw(st.binary(min_size=2, max_size=2)) + draw(
        st.binary(min_size=b0 & 0x0F, max_size=b0 & 0x0F))


@st.composite
def message(draw: st.DrawFn) -> bytes:
    """A request that names a target, one mutated, or any bytes."""
    return draw(st.one_of(
        st.builds(lambda h, t: coap([("Uri-Host", h.encode())], token=t), host,
                  st.binary(max_size=8)),
        mutated(), st.binary(max_size=60)))


@settings(max_examples=1000, deadline=None)
@given(raw=message(), other_header=header(), at=st.integers(0, 40), xor=st.integers(1, 255))
def test_the_memory_never_changes_a_target(raw: bytes, other_header: bytes, at: int,
                                           xor: int) -> None:
    """parse_coap remembers targets by the bytes after the token: it must give what
    the parse gives, for the message, for one with another header and token in
    front of the same bytes, and for one whose bytes after the token differ in
    one byte (in every order: any may be remembered first)."""
    head = 4 + (raw[0] & 0x0F) if raw else 0
    other = other_header + raw[head:]
    changed = bytearray(raw)
    if head + at < len(raw):
        changed[head + at] ^= xor
    msgs = [raw, other, bytes(changed)]
    for k in range(3):
        coap_mod._memo.clear()
        for msg in msgs[k:] + msgs[:k] + msgs:
            assert parse_coap(msg) == coap_mod._target(msg)


def test_the_memory_is_bounded() -> None:
    coap_mod._memo.clear()
    for i in range(coap_mod._MEMO_MAX + 10):
        assert parse_coap(coap([("Uri-Host", f"h{i}.example".encode())])) == f"h{i}.example"
    assert 0 < len(coap_mod._memo) <= coap_mod._MEMO_MAX


def test_registered_by_the_hook() -> None:
    reg: Registry[object] = Registry("destination parser")
    xpro_add_destination_parsers(reg)
    parser = reg.get("coap")
    assert parser is parse_coap
    assert COAP_PORT in parse_coap.udp_ports  # type: ignore[attr-defined]


# --- canonical names: the spellings of one target are one name ---------------------

#: Characters a spelling may write in full width (UTS #46 maps them back).
_FULL_WIDTH = {c: chr(0xFF41 + i) for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}
_FULL_WIDTH.update({c: chr(0xFF10 + i) for i, c in enumerate("0123456789")})
#: The dots UTS #46 maps to ".": ideographic, full-width and half-width ideographic.
_DOTS = [".", "\u3002", "\uff0e", "\uff61", "%2E", "%2e"]


@st.composite
def spelled_host(draw: st.DrawFn, name: str) -> str:
    """``name`` in another case, its characters percent-encoded or in full width,
    its dots any of UTS #46's dots, and maybe a trailing dot."""
    out = []
    for ch in name:
        if ch == ".":
            out.append(draw(st.sampled_from(_DOTS)))
            continue
        how = draw(st.sampled_from(["same", "upper", "percent", "PERCENT", "wide", "wide%"]))
        if how == "upper":
            out.append(ch.upper())
        elif how in ("percent", "PERCENT"):  # an unreserved character percent-encoded
            code = f"%{ord(ch):02x}"
            out.append(code.upper() if how == "PERCENT" else code)
        elif how.startswith("wide") and ch in _FULL_WIDTH:
            wide = _FULL_WIDTH[ch]
            out.append(wide if how == "wide" else
                       "".join(f"%{b:02X}" for b in wide.encode()))  # as UTF-8 bytes
        else:
            out.append(ch)
    if draw(st.booleans()):
        out.append(draw(st.sampled_from([".", "\u3002"])))
    return "".join(out)


@st.composite
def spelled_request(draw: st.DrawFn, name: str, port: int) -> bytes:
    """A request for ``name`` on ``port``, the target spelled and carried any way
    the proxy takes it: Uri-Host (with or without Uri-Port and Proxy-Scheme) or a
    Proxy-Uri (scheme in any case, the port explicit or the scheme's)."""
    spelled = draw(spelled_host(name))
    path = draw(st.sampled_from(["", "/", "/temp", "?q=1", "/a/b?c=d"]))
    via = draw(st.sampled_from(["uri-host", "proxy-uri"]))
    if via == "uri-host":
        opts = [("Uri-Host", spelled.encode())]
        implicit = {5683: "coap", 5684: "coaps"}.get(port)
        if implicit and draw(st.booleans()):
            if implicit == "coaps" or draw(st.booleans()):
                opts.append(("Proxy-Scheme", draw(st.sampled_from(
                    [implicit, implicit.upper()])).encode()))
        else:
            opts.append(("Uri-Port", port.to_bytes(2, "big")))
        return coap(opts)
    schemes = ["coap", "COAP", "Coap"] + (["coaps", "COAPS"] if port == 5684 else [])
    scheme = draw(st.sampled_from(schemes))
    default = 5684 if scheme.lower() == "coaps" else 5683
    if port != default or draw(st.booleans()):
        zeros = "0" * draw(st.integers(0, 2))
        authority = f"{spelled}:{zeros}{port}"
    else:
        authority = spelled
    return coap([("Proxy-Uri", f"{scheme}://{authority}{path}".encode())])


@settings(max_examples=500, deadline=None)
@given(data=st.data(), name=host, port=st.sampled_from([5683, 5684, 61616]))
def test_the_spellings_of_one_target_are_one_key(data: st.DataObject, name: str,
                                                 port: int) -> None:
    """Case, a trailing dot, the default port, percent-encoding, full-width letters
    and ideographic dots: however a request spells its target, it is one name
    and one destination key, the one the operator's name for it gets."""
    want = join(name, port)
    for _ in range(3):
        msg = data.draw(spelled_request(name, port), label="request")
        got = parse_coap(msg)
        assert got == want, msg
        assert parsed_destination_addr(got) == parsed_destination_addr(want)
    written = data.draw(spelled_host(name), label="operator's spelling")
    assert canonical_name(written if port == 5683 else f"{written}:{port}") == want
    assert canonical_name(f"{written}:5683") == name


@pytest.mark.parametrize(("options", "want"), [
    # international names: UTS #46, the U-label and the A-label are one name
    ([("Uri-Host", "BÜCHER.example".encode())], "xn--bcher-kva.example"),
    ([("Uri-Host", b"xn--bcher-kva.example")], "xn--bcher-kva.example"),
    ([("Proxy-Uri", b"coap://b%C3%BCcher.example./x")], "xn--bcher-kva.example"),
    ([("Uri-Host", "ｖｉｃｔｉｍ。ｅｘａｍｐｌｅ".encode())], "victim.example"),
    ([("Uri-Host", b"xn--zz.example")], None),  # not a valid A-label
    ([("Uri-Host", b"ab--cd.example")], None),  # "??--" is for encodings
    # addresses: one form each, whatever inet_aton would take
    ([("Uri-Host", b"10.1")], "10.0.0.1"),
    ([("Uri-Host", b"0x0a.0.0.1")], "10.0.0.1"),
    ([("Uri-Host", b"012.0.0.1")], "10.0.0.1"),
    ([("Uri-Host", b"167772161")], "10.0.0.1"),
    ([("Proxy-Uri", b"coap://[::ffff:10.0.0.1]/")], "10.0.0.1"),
    ([("Proxy-Uri", b"coap://[2001:DB8:0:0::1]:5683/")], "2001:db8::1"),
    ([("Uri-Host", b"1.2.3.256")], None),
    ([("Uri-Host", b"example.09")], None),  # ends in a number that is not one
    ([("Proxy-Uri", b"coap://[fe80::1%25eth0]/")], None),  # a zone is not a target
    # the port: the scheme's when none is given, left out when it is 5683
    ([("Proxy-Uri", b"coaps://svc.example/")], "svc.example:5684"),
    ([("Proxy-Uri", b"coap://svc.example:5684/")], "svc.example:5684"),
    ([("Proxy-Uri", b"coaps://svc.example:5683/")], "svc.example"),
    ([("Proxy-Uri", b"http://svc.example/")], "svc.example:80"),
    ([("Proxy-Uri", b"coap://svc.example:/")], "svc.example"),
    ([("Uri-Host", b"svc.example"), ("Proxy-Scheme", b"coaps")], "svc.example:5684"),
    ([("Uri-Host", b"svc.example"), ("Uri-Port", b"")], None),  # port 0
    ([("Proxy-Uri", b"coap://svc.example:65536/")], None),
    ([("Proxy-Uri", b"coap://svc.example:+80/")], None),
    # what a proxy rejects, or a URI that is not one, names nothing
    ([("Uri-Host", b"a.example"), ("Uri-Host", b"b.example")], None),  # repeated
    ([("Proxy-Uri", b"coap://a.example/"), ("Proxy-Uri", b"coap://b.example/")], None),
    ([("Uri-Host", b"svc.example"), ("Uri-Port", b"\x00\x16\x33")], None),  # 3 bytes
    ([("Proxy-Uri", b"coap://user@svc.example/")], None),  # no user information
    ([("Proxy-Uri", b"coap://svc.example/#frag")], None),  # no fragment
    ([("Proxy-Uri", b"coap:svc.example")], None),  # no authority
    ([("Proxy-Uri", b"coap:///path")], None),  # no host
    ([("Proxy-Uri", b"coap://svc example/")], None),
    ([("Proxy-Uri", b"coap://svc.example\t/")], None),
    ([("Proxy-Uri", b"coap://svc..example/")], None),  # an empty label
    ([("Uri-Host", b"svc.example..")], None),  # one trailing dot only
    ([("Uri-Host", b"v%6")], None),  # a broken percent-encoding
    ([("Uri-Host", b"%ff.example")], None),  # not UTF-8
    ([("Uri-Host", b"svc_a.example")], None),
    ([("Uri-Host", "😀.example".encode())], None),
    ([("Proxy-Uri", b"coap://[v1.x]/")], None),  # IPvFuture
])
def test_canonical_targets(options: list[tuple[str, bytes]], want: str | None) -> None:
    assert parse_coap(coap(options)) == want


@pytest.mark.parametrize(("written", "want"), [
    ("Victim.Example.", "victim.example"),
    ("victim.example:5683", "victim.example"),
    ("v%69ctim.example", "victim.example"),
    ("victim.example:5684", "victim.example:5684"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("2001:db8::1", "2001:db8::1"),
    ("[2001:DB8::1]:5684", "[2001:db8::1]:5684"),
    ("BÜCHER.example", "xn--bcher-kva.example"),
    ("victim.example:0", None),
    ("victim.example:65536", None),
    ("victim example", None),
    ("coap://victim.example", None),
    ("", None),
])
def test_operator_names(written: str, want: str | None) -> None:
    assert canonical_name(written) == want


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=80) | st.binary(max_size=80).map(lambda b: b.decode("latin-1")))
def test_canonical_host_never_raises(text: str) -> None:
    out = canonical_host(text)
    assert out is None or (out.isascii() and out == canonical_host(out))
    name = canonical_name(text)
    assert name is None or canonical_name(name) == name
