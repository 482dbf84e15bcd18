"""The kernel program and the reference model agree, packet by packet.

Hypothesis generates traces -- many sources and destinations, IPv4 and IPv6,
sources that share prefixes of several lengths (and an IPv6 packet from a
mapped IPv4 address), VLAN tags (a third one among them), fragments and
extension headers, malformed and non-IP frames, timestamps from a fake
clock, random thresholds, source prefix lengths and both modes -- and runs
each through ``BPF_PROG_TEST_RUN`` and through :class:`xpro.core.model.Filter`.
A second generator adds closed destinations: bursts of spoofed sources that
close a destination, known and heavy sources written to both at random
points, idle gaps that reopen it, and sync rounds that write the model's
exact aggregates (with kc) into both.  In ``addr+port`` mode it also sprays
spoofed sources over random ports and protocols of one address (the address
aggregate closes while no key does) and writes known classes for addresses.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kernel.harness import KernelFilter, SetKnown, Step, SyncRound, run_differential
from tests.packets import arp_frame, frame
from xpro.core import model
from xpro.core.layout import DST_ADDR_PORT, Known, Reason

pytestmark = pytest.mark.kernel

S = model.NS_PER_S
MS = S // 1000
T0 = 1_700_000_000 * S
EXAMPLES = int(os.environ.get("XPRO_DIFF_EXAMPLES", "1000"))
#: The closure traces are longer (bursts and sprays of up to 40 frames):
#: half as many keep the suite within its time (docs/quickstart.rst).
CLOSURE_EXAMPLES = max(1, EXAMPLES // 2)

# Sources within a few prefixes: they share a /24 (/64) or not, a /30 (/125)
# or not, so that each prefix length draws different flows from them.
SRC4 = ["10.0.0.1", "10.0.0.2", "10.0.0.5", "10.0.0.129", "10.0.1.1", "10.1.0.1", "192.0.2.1"]
DST4 = [f"10.9.9.{i}" for i in range(1, 4)]
SRC6 = ["2001:db8::1", "2001:db8::2", "2001:db8::1:5", "2001:db8::8000:0:0:1",
        "2001:db8:0:1::1", "2001:db8:1::6", "::ffff:10.0.0.1"]
DST6 = [f"2001:db8:9::{i}" for i in range(1, 4)]
N_SRC = len(SRC4)
PREFIXES = ["10.0.0.0/30", "10.0.0.5/32", "10.0.0.0/8", "2001:db8::/125", "2001:db8:1::6/128",
            "2001:db8::/64", "0.0.0.0/0", "::/0"]
DST_PREFIXES = ["10.9.9.1/32", "10.9.9.0/30", "2001:db8:9::/64", "2001:db8:9::2/128"]
N_SPOOF = 256  # spoofed sources of the bursts


@functools.cache
def _frame(v6: bool, s: int, d: int, proto: str, dport: int, vlans: int, shape: str) -> bytes:
    src, dst = (SRC6[s], DST6[d]) if v6 else (SRC4[s], DST4[d])
    if shape == "frag":
        return frame(src, dst, proto=proto, dport=dport, vlans=vlans, frag=True)
    if shape == "ext" and v6:
        return frame(src, dst, proto=proto, dport=dport, vlans=vlans, ext=("hop", "dest"))
    if shape == "arp":
        return arp_frame()
    if shape == "short":  # cut inside the L4 header: malformed in addr+port mode only
        f = bytearray(frame(src, dst, proto=proto, dport=dport, vlans=vlans, payload=0))
        ip = 14 + 4 * vlans
        if v6:
            f[ip + 4 : ip + 6] = (2).to_bytes(2, "big")
            return bytes(f[: ip + 42])
        f[ip + 2 : ip + 4] = (22).to_bytes(2, "big")
        f[ip + 10 : ip + 12] = b"\0\0"  # the checksum is not checked by the filter
        return bytes(f[: ip + 22])
    if shape == "trunc":
        return frame(src, dst, proto=proto, dport=dport, vlans=vlans)[: 14 + 4 * vlans + 10]
    return frame(src, dst, proto=proto, dport=dport, vlans=vlans)


#: The destination port of :func:`_spray_template`'s frames, after the
#: source port (40000): four bytes no address of these frames holds.
_PORTS = (40000).to_bytes(2, "big") + (0xABCD).to_bytes(2, "big")


@functools.cache
def _spray_template(v6: bool, i: int, d: int, proto: str) -> bytes:
    src = f"2001:db8:5:{i % 4}::{i + 1:x}" if v6 else f"172.16.{i // 250}.{i % 250 + 1}"
    dst = DST6[d] if v6 else DST4[d]
    if proto == "frag":
        return frame(src, dst, dport=0xABCD, frag=True)
    return frame(src, dst, proto=proto, dport=0xABCD)


def _sprayed(v6: bool, i: int, d: int, proto: str, dport: int) -> bytes:
    """A spoofed source's packet to any port and protocol of one address: its
    frame built once per source, the port written in (scapy building every
    frame was most of these tests' time; the filter checks no checksum)."""
    fr = _spray_template(v6, i, d, proto)
    at = fr.find(_PORTS)
    if at < 0:  # ICMP: no port
        return fr
    return fr[:at + 2] + dport.to_bytes(2, "big") + fr[at + 4:]


def _spoofed(v6: bool, i: int, d: int, proto: str, dport: int) -> bytes:
    """A spoofed source's packet (no fragment), as :func:`_sprayed` builds it."""
    return _sprayed(v6, i, d, proto, dport)


@st.composite
def params(draw: st.DrawFn) -> model.FilterParams:
    allow = draw(st.frozensets(st.sampled_from(PREFIXES), max_size=2)) if draw(
        st.integers(0, 9)) == 0 else frozenset()
    deny = draw(st.frozensets(st.sampled_from(PREFIXES), max_size=2)) if draw(
        st.integers(0, 9)) == 0 else frozenset()
    policy = draw(st.dictionaries(st.sampled_from(DST_PREFIXES), st.integers(0, 1),
                                  max_size=2)) if draw(st.integers(0, 5)) == 0 else {}
    return model.FilterParams(
        t_t1=draw(st.one_of(st.integers(0, 6 * S), st.sampled_from([0, 500 * MS, 2 * S]))),
        t_t2=draw(st.one_of(st.integers(0, 2 * S), st.just(0))),
        t_t3=draw(st.one_of(st.integers(0, 2 * S), st.just(0), st.integers(0, 50 * MS))),
        t_f1=draw(st.one_of(st.integers(0, 300), st.integers(0, 2**32 - 1))),
        t_f2=draw(st.one_of(st.integers(0, 1000), st.integers(0, 2**32 - 1))),
        t_f2_address=draw(st.one_of(st.none(), st.integers(0, 1500),
                                    st.integers(0, 2**32 - 1))),
        warn_period=draw(st.integers(0, 2 * S)),
        mode=draw(st.integers(0, 1)),
        dst_mode=draw(st.integers(0, 1)),
        malformed_policy=draw(st.integers(0, 1)),
        events=draw(st.booleans()),
        allow=frozenset(model.Prefix.parse(p) for p in allow),
        deny=frozenset(model.Prefix.parse(p) for p in deny),
        dst_policy={model.Prefix.parse(p): m for p, m in policy.items()},
        source_prefix_v4=draw(st.one_of(st.sampled_from([32, 32, 24, 30]), st.integers(0, 32))),
        source_prefix_v6=draw(st.one_of(st.sampled_from([64, 64, 128, 48, 112, 125]),
                                        st.integers(0, 128))),
    )


step = st.one_of(
    st.integers(0, 5 * MS), st.integers(0, 5 * MS), st.integers(0, 5 * MS),
    st.integers(0, 300 * MS), st.integers(0, 7 * S),
    # Now and then the clock is stepped back, by less or more than T_T1
    # (docs/semantics.rst, "Clock and time").
    st.integers(-8 * S, -1),
)
SHAPES = ["plain"] * 12 + ["frag", "ext", "arp", "short", "trunc"]
#: VLAN tags: none mostly, one, two, or three (one more than the parser walks: malformed).
VLANS = [0, 0, 0, 0, 1, 2, 3]
PROTOS = ["udp", "udp", "tcp", "icmp"]
DPORTS = [53, 80, 443]
SPRAY_KINDS = ["udp", "tcp", "icmp", "frag"]
#: Everything a frame of :func:`_frame` is made of, from one draw (:func:`_pick`).
FRAME_CHOICES = ((False, True), range(N_SRC), range(3), PROTOS, DPORTS, VLANS, SHAPES)


def _pick(draw: st.DrawFn, choices: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
    """One element of each of ``choices``, from ONE integer draw.

    A draw per element made drawing the traces most of these tests' time
    (hypothesis keeps a record of every draw).  Hypothesis favours small
    integers, so the integer goes through a bijection of [0, n) (times a
    prime coprime with n) before its digits pick the elements: every element
    keeps its share, and 0 is still the first of each.  The cost: shrinking
    works on the one integer, so a failing frame shrinks to a frame with the
    choices that matter and arbitrary others, not to the first of each.
    """
    n = math.prod(len(c) for c in choices)
    assert math.gcd(_SPREAD, n) == 1, n  # else not a bijection
    i = draw(st.integers(0, n - 1)) * _SPREAD % n
    out = []
    for c in choices:
        i, r = divmod(i, len(c))
        out.append(c[r])
    return tuple(out)


_SPREAD = 1_000_003  # prime, and above every product of these lengths


@st.composite
def traces(draw: st.DrawFn) -> list[tuple[bytes, int]]:
    t = T0 + draw(st.integers(0, S))
    out = []
    for _ in range(draw(st.integers(1, 80))):
        t += draw(step)
        out.append((_frame(*_pick(draw, FRAME_CHOICES)), t))
    return out


@st.composite
def closure_traces(draw: st.DrawFn) -> list[Step]:
    """Packets as :func:`traces` draws them, and bursts of spoofed sources to
    one destination (closing it when T_F2 is low and T_T3 short), known and
    heavy classes written or removed, idle gaps, and sync rounds."""
    t = T0 + draw(st.integers(0, S))
    out: list[Step] = []
    sent: list[bytes] = []  # frames of the "packet" steps: the known classes hit them
    v6, d = draw(st.booleans()), draw(st.integers(0, 2))
    for _ in range(draw(st.integers(1, 40))):
        op = draw(st.sampled_from(["packet"] * 5 + ["burst", "burst", "spray", "known",
                                                    "known", "sync", "gap"]))
        if draw(st.integers(0, 3)) == 0:  # mostly one destination: it closes, it reopens
            v6, d = draw(st.booleans()), draw(st.integers(0, 2))
        proto, dport = _pick(draw, (PROTOS, DPORTS))
        if op == "packet":
            for _ in range(draw(st.integers(1, 5))):
                t += draw(step)
                s, vlans, shape = _pick(draw, (range(N_SRC), VLANS, SHAPES))
                sent.append(_frame(v6, s, d, proto, dport, vlans, shape))
                out.append((sent[-1], t))
        elif op == "burst":
            first, gap = draw(st.integers(0, N_SPOOF - 1)), draw(st.integers(0, 2 * MS))
            for j in range(draw(st.integers(5, 40))):
                t += gap
                out.append((_spoofed(v6, (first + j) % N_SPOOF, d, proto, dport), t))
        elif op == "spray":  # one address, a port and protocol (or a fragment) each
            first, gap = draw(st.integers(0, N_SPOOF - 1)), draw(st.integers(0, 2 * MS))
            for j in range(draw(st.integers(5, 40))):
                t += gap
                kind, port = _pick(draw, (SPRAY_KINDS, range(1, 65536)))
                out.append((_sprayed(v6, (first + j) % N_SPOOF, d, kind, port), t))
        elif op == "known":
            src = _frame(v6, draw(st.integers(0, N_SRC - 1)), d, proto, dport, 0, "plain")
            reuse: bool = draw(st.booleans())
            if sent and reuse:
                src = draw(st.sampled_from(sent))
            cls = draw(st.sampled_from([0, Known.CLIENT, Known.CLIENT, Known.HEAVY, Known.HEAVY]))
            out.append(SetKnown(src, int(cls), address=draw(st.booleans())))
        elif op == "sync":
            out.append(SyncRound(t))
        else:
            t += draw(st.integers(0, 8 * S))
    return out


@pytest.fixture(scope="module")
def kernel() -> Iterator[KernelFilter]:
    k = KernelFilter()
    yield k
    k.close()


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(p=params(), trace=traces())
def test_kernel_agrees_with_model(kernel: KernelFilter, p: model.FilterParams,
                                  trace: list[tuple[bytes, int]]) -> None:
    run_differential(kernel, p, trace)


@settings(max_examples=CLOSURE_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(p=params(), trace=closure_traces())
def test_kernel_agrees_with_model_on_closed_destinations(
        kernel: KernelFilter, p: model.FilterParams, trace: list[Step]) -> None:
    run_differential(kernel, p, trace)


def test_heavy_flood_many_flows(kernel: KernelFilter) -> None:
    """A long, dense trace: a flood, a legitimate stream, many small sources."""
    p = model.FilterParams(t_f1=100, t_t2=S, t_f2=2000, t_t3=S, t_t1=2 * S)
    trace = []
    bot = frame("10.0.0.66", "10.9.9.9")
    legit = frame("2001:db8::7", "2001:db8:9::9", proto="tcp", dport=443)
    small = [frame(f"10.1.{i // 200}.{i % 200 + 1}", "10.9.9.9") for i in range(600)]
    for i in range(6000):
        t = T0 + i * S // 2000
        trace.append((bot, t))
        trace.append((small[i % 600], t))
        if i % 50 == 0:
            trace.append((legit, t))
    run_differential(kernel, p, trace)


def test_flow_back_under_limit_after_destination_idle(kernel: KernelFilter) -> None:
    """ts1* takes a flow's start only when the flow starts or resets.

    A flow dropped over T_F1 keeps its record alive but stops feeding the
    aggregate; the destination goes idle and restarts its window with another
    source; when the old flow falls back under T_F1 it must not drag ts1*
    back to its own, much older, start.
    """
    p = model.FilterParams(t_f1=10, t_t2=0, t_t1=S, t_t3=0, t_f2=2**32 - 1)
    a = frame("10.0.0.1", "10.9.9.9")
    b = frame("10.0.0.2", "10.9.9.9")
    trace = [(a, T0 + i * MS) for i in range(100)]
    trace += [(a, T0 + 100 * MS + k * 500 * MS) for k in range(1, 40)]
    trace.append((b, T0 + 5 * S + 1))
    trace.sort(key=lambda x: x[1])
    run_differential(kernel, p, trace)


def test_a_clock_stepped_back_an_hour_keeps_the_limits(kernel: KernelFilter) -> None:
    """A source at 2 x T_F1 and 50 sources to a destination at 2 x T_F2; after 3 s the
    proxy's clock is stepped back an hour.  Before the fix, every record's
    window then started an hour ahead of the clock and nothing was judged for
    that hour: 0 of the packets after the step were dropped.  Now the step
    starts new windows, which are judged after T_T2/T_T3 as always
    (docs/semantics.rst, "Clock and time")."""
    p = model.FilterParams(t_f1=100, t_t2=S, t_f2=100, t_t3=S, t_t1=10 * S)
    bot = frame("10.0.0.66", "10.9.9.9")
    crowd = [frame(f"10.1.0.{i + 1}", "10.9.9.8") for i in range(50)]
    trace: list[Step] = []
    for start in (T0, T0 + 3 * S - 3600 * S):  # 3 s, then the clock is an hour back
        for i in range(600):  # 3 s at 200/s: the bot, and the crowd (4/s each)
            t = start + i * 5 * MS
            trace.append((bot, t))
            trace.append((crowd[i % 50], t))
    run_differential(kernel, p, trace)
    reasons = _reasons(p, trace)
    # Dropped after T_T2 (the bot: over T_F1, then its destination closes
    # too) and after T_T3 (the crowd, over T_F2 together).
    after_bot = reasons[bot][600:]
    assert sum(r != Reason.PASS for r in after_bot) >= 350, after_bot
    after_crowd = [r for c in crowd for r in reasons[c][12:]]
    assert sum(r != Reason.PASS for r in after_crowd) >= 350, after_crowd


def _spoof8(i: int) -> bytes:
    """A source of a /8-wide spoofed flood (one packet each)."""
    return frame(f"11.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "10.9.9.9")


def _reasons(p: model.FilterParams, trace: list[Step]) -> dict[bytes, list[Reason]]:
    """The model's reasons for each packet of ``trace``, by frame (the kernel's are
    the same: :func:`run_differential` checked them one by one)."""
    m = model.Filter(p)
    out: dict[bytes, list[Reason]] = {}
    for st_ in trace:
        if isinstance(st_, SetKnown):
            fk = model.flow_key(model.parse(st_.frame, p.dst_mode), p)
            if st_.address:
                fk = fk[:16] + model.address_key(fk[16:])
            m.known[fk] = st_.cls
        elif isinstance(st_, tuple):
            out.setdefault(st_[0], []).append(m.packet(*st_).reason)
    return out


def test_spoofed_flood_to_a_closed_destination_creates_no_records(kernel: KernelFilter) -> None:
    """Once closed, a /8-style spoofed flood adds no flow record but the one
    closed-drops record; a known client keeps passing, every unknown source
    is dropped as DST_CLOSED."""
    p = model.FilterParams(t_f1=10**6, t_t2=S, t_f2=1000, t_t3=100 * MS, t_t1=2 * S)
    client = frame("192.0.2.7", "10.9.9.9")
    # 2000 pps from new sources: closed after T_T3 ...
    trace: list[Step] = [SetKnown(client, Known.CLIENT), (client, T0)]
    trace += [(_spoof8(i), T0 + i * S // 2000) for i in range(1, 400)]
    # ... and the flood goes on, from 5000 more new sources in a second, with
    # the client at 10 pps among them.
    t1 = T0 + 200 * MS
    late = [_spoof8(1000 + i) for i in range(5000)]
    for i, fr in enumerate(late):
        t = t1 + i * S // 5000
        trace.append((fr, t))
        if i % 500 == 0:
            trace.append((client, t))
    run_differential(kernel, p, trace)

    reasons = _reasons(p, trace)
    assert set(reasons[client]) == {Reason.PASS}
    assert len(reasons[client]) == 11
    assert {r for fr in late for r in reasons[fr]} == {Reason.DST_CLOSED}
    flows = kernel.all_flows()
    dkey = model.parse(client, 0).dst
    drops = flows[model.closed_key(dkey)]
    assert not {model.parse(fr, 0).key for fr in late} & flows.keys()
    opened = [fr for fr, rs in reasons.items() if rs == [Reason.PASS]]
    assert len(flows) == len(opened) + 1 + 1  # (the client is among the opened)
    assert drops.c == kernel.stat(Reason.DST_CLOSED)[0] >= 5000
    assert kernel.stat(Reason.SRC_RATE)[0] == kernel.stat(Reason.DST_RATE)[0] == 0


def test_known_clients_over_t_f2_get_dst_rate(kernel: KernelFilter) -> None:
    """A closed destination serves its known clients until their own total is
    over T_F2 (kc over the aggregate window): then DST_RATE, for them too."""
    p = model.FilterParams(t_f1=10**6, t_t2=S, t_f2=100, t_t3=500 * MS, t_t1=2 * S)
    clients = [frame(f"192.0.2.{i}", "10.9.9.9") for i in range(1, 5)]
    trace: list[Step] = [SetKnown(c, Known.CLIENT) for c in clients]
    trace += [(_spoof8(i), T0 + i * MS) for i in range(600)]  # 1000 pps: closed at 0.5 s
    # Four known clients, 100 pps each from T0 + 0.6 s: kc = 400 * (t - 0.6 s)
    # is over T_F2 * (t - T0) from t = T0 + 0.8 s.
    t = T0 + 600 * MS
    for i in range(400):
        t += 2500 * MS // 1000
        trace.append((clients[i % 4], t))
    run_differential(kernel, p, trace)

    reasons = _reasons(p, trace)
    served = [r for c in clients for r in reasons[c]]
    assert set(served) == {Reason.PASS, Reason.DST_RATE}
    assert 60 <= served.count(Reason.PASS) <= 100
    for c in clients:  # passed until the total was over, dropped from then on
        rs = reasons[c]
        first = rs.index(Reason.DST_RATE)
        assert set(rs[:first]) == {Reason.PASS}
        assert set(rs[first:]) == {Reason.DST_RATE}
    d = kernel.dst(model.parse(clients[0], 0).dst)
    assert d is not None
    assert d.kc == 400
    assert model.rate_exceeds(d.kc, t - d.ts1, p.t_f2)


def test_heavy_source_of_a_closed_destination(kernel: KernelFilter) -> None:
    """A heavy source goes through its flow record: over T_F1 it is SRC_RATE,
    under it DST_CLOSED (never a closed drop, never served)."""
    p = model.FilterParams(t_f1=50, t_t2=200 * MS, t_f2=100, t_t3=100 * MS, t_t1=2 * S)
    heavy = frame("192.0.2.9", "10.9.9.9")
    trace: list[Step] = [SetKnown(heavy, Known.HEAVY)]
    trace += [(_spoof8(i), T0 + i * MS) for i in range(300)]  # closed at 0.1 s
    trace += [(heavy, T0 + 300 * MS + i * MS) for i in range(400)]  # 1000 pps
    run_differential(kernel, p, trace)
    rs = _reasons(p, trace)[heavy]
    first = rs.index(Reason.SRC_RATE)
    assert set(rs[:first]) == {Reason.DST_CLOSED}
    assert set(rs[first:]) == {Reason.SRC_RATE}
    drops = kernel.flow(model.closed_key(model.parse(heavy, 0).dst))
    assert drops is not None
    assert drops.c == kernel.stat(Reason.DST_CLOSED)[0] - first


def _rotating(v6: bool, i: int) -> bytes:
    """The ``i``-th packet of an attacker that takes a new source address of its
    own network (a /64, or a /24) for every packet."""
    if v6:
        return frame(f"2001:db8:bad:1:{i >> 16 & 0xFFFF:x}:{i & 0xFFFF:x}::1", "2001:db8:9::9")
    return frame(f"198.51.100.{i % 254 + 1}", "10.9.9.9")


@pytest.mark.parametrize(("v6", "prefix", "whole"), [(True, 64, 128), (False, 24, 32)],
                         ids=["ipv6-64", "ipv4-24"])
def test_source_rotating_through_its_prefix(kernel: KernelFilter, v6: bool, prefix: int,
                                            whole: int) -> None:
    """An attacker that sends each packet from a new address of its /64 (/24), at
    4 x T_F1: one source to the per-source rule keyed on the prefix, dropped as
    SRC_RATE once T_T2 is over; keyed on whole addresses, never over T_F1."""
    base = model.FilterParams(t_f1=100, t_t2=S, t_t1=10 * S, t_f2=2**32 - 1, t_t3=S)
    assert (base.source_prefix_v6, base.source_prefix_v4) == (64, 32)  # the defaults
    trace: list[Step] = [(_rotating(v6, i), T0 + i * S // 400) for i in range(1200)]  # 3 s

    p = _keyed(base, v6, prefix)
    run_differential(kernel, p, trace)
    rs = _run_reasons(p, trace)
    assert set(rs[:401]) == {Reason.PASS}  # a window up to T_T2: not judged yet
    assert set(rs[401:]) == {Reason.SRC_RATE}
    flows = kernel.all_flows()
    assert len(flows) == 1
    (key,) = flows
    want = "2001:db8:bad:1::/64" if v6 else "198.51.100.0/24"
    assert model.source_text(key[:16], p) == want
    assert kernel.stat(Reason.SRC_RATE)[0] == rs.count(Reason.SRC_RATE)

    p = _keyed(base, v6, whole)
    run_differential(kernel, p, trace)
    assert set(_run_reasons(p, trace)) == {Reason.PASS}
    assert kernel.stat(Reason.SRC_RATE)[0] == 0


def _keyed(p: model.FilterParams, v6: bool, bits: int) -> model.FilterParams:
    """``p`` with the source prefix of one family set to ``bits``."""
    if v6:
        return dataclasses.replace(p, source_prefix_v6=bits)
    return dataclasses.replace(p, source_prefix_v4=bits)


def _run_reasons(p: model.FilterParams, trace: list[Step]) -> list[Reason]:
    """The model's reason for each packet of ``trace``, in order."""
    m = model.Filter(p)
    return [m.packet(*st_).reason for st_ in trace if isinstance(st_, tuple)]


def test_lists_match_the_full_source_before_the_prefix(kernel: KernelFilter) -> None:
    """The allow and deny lists see the whole address: one denied address of a
    /64 is dropped, its neighbours are not, and an allowed one passes though
    its /64 is over T_F1; the others share one record."""
    bad, good = "2001:db8:7::66", "2001:db8:7::1"
    p = model.FilterParams(t_f1=10, t_t2=0, t_f2=2**32 - 1, t_t3=S,
                           deny=frozenset({model.Prefix.parse(f"{bad}/128")}),
                           allow=frozenset({model.Prefix.parse(f"{good}/128")}))
    others = [frame(f"2001:db8:7::{i:x}", "2001:db8:9::9") for i in range(2, 60)]
    trace: list[Step] = []
    for i in range(300):
        t = T0 + i * MS
        trace += [(frame(bad, "2001:db8:9::9"), t), (frame(good, "2001:db8:9::9"), t),
                  (others[i % len(others)], t)]
    run_differential(kernel, p, trace)
    rs = _run_reasons(p, trace)
    assert set(rs[0::3]) == {Reason.DENY}
    assert set(rs[1::3]) == {Reason.ALLOW}
    assert Reason.SRC_RATE in rs[2::3]
    assert list(kernel.all_flows()) == [model.mask_source(
        model.parse(others[0], 0).src, True, 32, 64) + model.parse(others[0], 0).dst]


def atomic_fragment_case() -> tuple[model.FilterParams, list[Step]]:
    """addr+port: a flood from many sources closes (address, 53, udp); the
    same flood as IPv6 atomic fragments, then as real first fragments (M 1),
    from new sources (the AF_XDP suite runs it too)."""
    p = model.FilterParams(t_f1=2**32 - 1, t_f2=100, t_t2=0, t_t3=100 * MS,
                           dst_mode=DST_ADDR_PORT, t_f2_address=2**32 - 1)
    dst = "2001:db8:9::9"
    trace: list[Step] = []
    t = T0
    for i in range(400):  # 2000 packets/s from 400 sources: over T_F2
        t = T0 + i * S // 2000
        trace.append((frame(f"2001:db8:5::{i + 1:x}", dst), t))
    for i in range(100):
        t += S // 2000
        trace.append((frame(f"2001:db8:6::{i + 1:x}", dst, ext=("frag",)), t))
        trace.append((frame(f"2001:db8:7::{i + 1:x}", dst, frag=True), t))
    return p, trace


def test_an_atomic_fragment_is_judged_on_its_port(kernel: KernelFilter) -> None:
    """An atomic fragment (offset 0, M 0) is a whole datagram delivered to its
    port: it is dropped with the port's closed key (it was keyed on the
    address's fragment bucket, and walked past it); a real fragment still
    keys on the address alone."""
    p, trace = atomic_fragment_case()
    run_differential(kernel, p, trace)
    rs = _run_reasons(p, trace)
    assert Reason.DST_CLOSED in rs[:400] or Reason.DST_RATE in rs[:400]
    assert set(rs[400::2]) <= {Reason.DST_CLOSED, Reason.DST_RATE}, set(rs[400::2])
    assert Reason.PASS in rs[401::2]


def mapped_source_case() -> tuple[model.FilterParams, list[Step]]:
    """An IPv4 allow and deny list; IPv6 packets from mapped addresses in them,
    and IPv4 packets from the allowed one (the AF_XDP suite runs it too)."""
    p = model.FilterParams(t_f1=10, t_t2=0, t_f2=2**32 - 1, t_t3=S,
                           allow=frozenset({model.Prefix.parse("10.0.0.0/8")}),
                           deny=frozenset({model.Prefix.parse("10.66.0.0/16")}))
    mapped, v4 = frame("::ffff:10.0.0.1", "2001:db8:9::9"), frame("10.0.0.1", "10.9.9.9")
    denied = frame("::ffff:10.66.0.1", "2001:db8:9::9")
    trace: list[Step] = []
    for i in range(300):
        t = T0 + i * MS
        trace += [(mapped, t), (v4, t), (denied, t)]
    return p, trace


def test_an_ipv6_packet_from_a_mapped_address_is_not_allowed_by_an_ipv4_entry(
        kernel: KernelFilter) -> None:
    """The lists hold IPv4 as ``::ffff:a.b.c.d``: an IPv6 packet from
    ``::ffff:10.0.0.1`` matched ``allow = 10.0.0.0/8`` and skipped every rate
    rule, a trusted range claimed from IPv6.  It is judged like any IPv6
    source now (the deny list still applies to it); the IPv4 packet from
    10.0.0.1 is allowed as before."""
    p, trace = mapped_source_case()
    run_differential(kernel, p, trace)
    rs = _run_reasons(p, trace)
    assert Reason.ALLOW not in rs[0::3]
    assert Reason.SRC_RATE in rs[0::3]
    assert set(rs[1::3]) == {Reason.ALLOW}
    assert set(rs[2::3]) == {Reason.DENY}


# --- addr+port: the address aggregate (docs/semantics.rst, "Address aggregates")


def _spray(i: int, dst: str = "10.9.9.9") -> bytes:
    """The ``i``-th packet of a spoofed flood to every port and protocol of ``dst``:
    a new source each, UDP and TCP to a port of their own, ICMP, fragments."""
    src = f"11.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
    kind = i % 4
    if kind == 3:
        return frame(src, dst, frag=True)
    if kind == 2:
        return frame(src, dst, proto="icmp")
    # 200 ports (the harness's table holds 1024 destination keys), each far
    # under any limit here.
    return frame(src, dst, proto="udp" if kind == 0 else "tcp", dport=1024 + i % 400)


def _spray_trace(client: bytes, other: bytes) -> list[Step]:
    """2000 pps sprayed over the ports of 10.9.9.9 for 1.5 s, with a known client
    on its usual port and a client of another address at 10 pps each."""
    trace: list[Step] = [SetKnown(client, Known.CLIENT, address=True)]
    for i in range(3000):
        t = T0 + i * S // 2000
        trace.append((_spray(i + 1), t))
        if i % 200 == 0:
            trace += [(client, t), (other, t)]
    return trace


def test_spray_over_ports_closes_the_address(kernel: KernelFilter) -> None:
    """addr+port: a spoofed flood over random ports, protocols and fragments of
    one address keeps every (address, port, protocol) key far under T_F2 but
    crosses the address's limit: from then on every sprayed packet is a closed
    drop counted in the address's one closed-drops record, the address's
    known client passes on its usual port, another address is untouched."""
    p = model.FilterParams(t_f1=10**6, t_t2=S, t_f2=1000, t_t3=200 * MS, t_t1=2 * S,
                           dst_mode=1)
    client = frame("192.0.2.7", "10.9.9.9", dport=9000)
    other = frame("192.0.2.8", "10.9.9.10", dport=9000)
    trace = _spray_trace(client, other)
    run_differential(kernel, p, trace)

    rs = _reasons(p, trace)
    sprayed = [rs[_spray(i + 1)][0] for i in range(3000)]
    # 2000 pps over T_F2 = 1000 once the window is over T_T3: closed at 0.2 s.
    first = sprayed.index(Reason.DST_CLOSED) if Reason.DST_CLOSED in sprayed else None
    assert first is not None
    assert set(sprayed[:first]) <= {Reason.PASS, Reason.DST_RATE}
    assert set(sprayed[first + 1:]) == {Reason.DST_CLOSED}
    assert 350 <= first <= 450
    assert set(rs[client]) == {Reason.PASS}
    assert set(rs[other]) == {Reason.PASS}
    dsts = kernel.all_dsts()
    akey = model.address_key(model.parse(client, 1).dst)
    assert model.is_address_key(akey)
    port_keys = [k for k in dsts if not model.is_address_key(k)]
    # Every key under T_F2: a port sees a packet or two, ICMP and the
    # fragments (keyed on the address, port and protocol 0) a quarter each.
    busy = {k for k in port_keys if dsts[k].c > 2}
    assert len(busy) == 4  # ICMP, fragments, the two clients' keys
    assert all(dsts[k].c <= 120 for k in busy)
    drops = kernel.flow(model.closed_key(akey))
    assert drops is not None
    assert drops.c == kernel.stat(Reason.DST_CLOSED)[0]
    assert model.closed_key(akey)[35] == 3
    # The flood made no record of its own once closed.
    assert len(kernel.all_flows()) == first + 3  # + client, other, drops


def test_address_limit_of_its_own(kernel: KernelFilter) -> None:
    """``t_f2_address`` above the flood's rate: the address stays open."""
    p = model.FilterParams(t_f1=10**6, t_t2=S, t_f2=1000, t_t3=200 * MS, t_t1=2 * S,
                           dst_mode=1, t_f2_address=5000)
    client = frame("192.0.2.7", "10.9.9.9", dport=9000)
    other = frame("192.0.2.8", "10.9.9.10", dport=9000)
    trace = _spray_trace(client, other)
    run_differential(kernel, p, trace)
    assert kernel.stat(Reason.DST_CLOSED)[0] == kernel.stat(Reason.DST_RATE)[0] == 0


def test_known_client_of_another_port_passes_a_closed_address(kernel: KernelFilter) -> None:
    """A source known at the address (its flow to one port) is served on every
    port of the closed address; a source known only at its key is not (the
    address judges it by the address's table), and a known client over the
    limit on its own gets DST_RATE (known at its key too, as the sync writes
    it: its key closes first)."""
    p = model.FilterParams(t_f1=10**6, t_t2=S, t_f2=100, t_t3=100 * MS, t_t1=2 * S,
                           dst_mode=1)
    client = frame("192.0.2.7", "10.9.9.9", dport=9000)
    client_other_port = frame("192.0.2.7", "10.9.9.9", proto="tcp", dport=22)
    key_only = frame("192.0.2.9", "10.9.9.9", dport=9000)
    trace: list[Step] = [SetKnown(client, Known.CLIENT, address=True),
                         SetKnown(client, Known.CLIENT), SetKnown(key_only, Known.CLIENT)]
    trace += [(_spray(i + 1), T0 + i * MS) for i in range(300)]  # 1000 pps: closed
    t = T0 + 300 * MS
    trace += [(client, t), (client_other_port, t + MS), (key_only, t + 2 * MS)]
    # The client alone at 1000 pps: kc over T_F2 * window soon.
    trace += [(client, t + 3 * MS + i * MS) for i in range(400)]
    run_differential(kernel, p, trace)
    rs = _reasons(p, trace)
    assert rs[client_other_port] == [Reason.PASS]
    assert rs[key_only] == [Reason.DST_CLOSED]
    assert rs[client][0] is Reason.PASS
    assert rs[client][-1] is Reason.DST_RATE


def test_addr_mode_has_no_address_aggregate(kernel: KernelFilter) -> None:
    """``addr`` mode is unchanged: the spray is one key, judged by T_F2 alone;
    no address aggregate or its closed-drops record exists (t_f2_address,
    unused, set low)."""
    p = model.FilterParams(t_f1=10**6, t_t2=S, t_f2=1000, t_t3=200 * MS, t_t1=2 * S,
                           dst_mode=0, t_f2_address=1)
    client = frame("192.0.2.7", "10.9.9.9", dport=9000)
    other = frame("192.0.2.8", "10.9.9.10", dport=9000)
    trace = _spray_trace(client, other)
    run_differential(kernel, p, trace)
    assert not any(model.is_address_key(k) for k in kernel.all_dsts())
    assert not any(model.is_address_key(k[16:]) for k in kernel.all_flows())
    assert set(kernel.all_dsts()) == {model.parse(client, 0).dst, model.parse(other, 0).dst}
