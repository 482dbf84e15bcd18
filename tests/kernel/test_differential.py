"""The kernel program and the reference model agree, packet by packet.

Hypothesis generates traces -- many sources and destinations, IPv4 and IPv6,
VLAN tags, fragments and extension headers, malformed and non-IP frames,
timestamps from a fake clock, random thresholds and both modes -- and runs
each through ``BPF_PROG_TEST_RUN`` and through :class:`xpro.core.model.Filter`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kernel.harness import KernelFilter, run_differential
from tests.packets import arp_frame, frame
from xpro.core import model

pytestmark = pytest.mark.kernel

S = model.NS_PER_S
MS = S // 1000
T0 = 1_700_000_000 * S
EXAMPLES = int(os.environ.get("XPRO_DIFF_EXAMPLES", "1000"))

SRC4 = [f"10.0.0.{i}" for i in range(1, 7)]
DST4 = [f"10.9.9.{i}" for i in range(1, 4)]
SRC6 = [f"2001:db8::{i}" for i in range(1, 7)]
DST6 = [f"2001:db8:9::{i}" for i in range(1, 4)]
PREFIXES = ["10.0.0.0/30", "10.0.0.4/32", "10.0.0.0/8", "2001:db8::/125", "2001:db8::6/128",
            "0.0.0.0/0", "::/0"]
DST_PREFIXES = ["10.9.9.1/32", "10.9.9.0/30", "2001:db8:9::/64", "2001:db8:9::2/128"]


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
        t_t3=draw(st.one_of(st.integers(0, 2 * S), st.just(0))),
        t_f1=draw(st.one_of(st.integers(0, 300), st.integers(0, 2**32 - 1))),
        t_f2=draw(st.one_of(st.integers(0, 1000), st.integers(0, 2**32 - 1))),
        warn_period=draw(st.integers(0, 2 * S)),
        mode=draw(st.integers(0, 1)),
        dst_mode=draw(st.integers(0, 1)),
        malformed_policy=draw(st.integers(0, 1)),
        events=draw(st.booleans()),
        allow=frozenset(model.Prefix.parse(p) for p in allow),
        deny=frozenset(model.Prefix.parse(p) for p in deny),
        dst_policy={model.Prefix.parse(p): m for p, m in policy.items()},
    )


step = st.one_of(
    st.integers(0, 5 * MS), st.integers(0, 5 * MS), st.integers(0, 5 * MS),
    st.integers(0, 300 * MS), st.integers(0, 7 * S),
)
shape = st.sampled_from(["plain"] * 12 + ["frag", "ext", "arp", "short", "trunc"])


@st.composite
def traces(draw: st.DrawFn) -> list[tuple[bytes, int]]:
    t = T0 + draw(st.integers(0, S))
    out = []
    for _ in range(draw(st.integers(1, 80))):
        t += draw(step)
        f = _frame(draw(st.booleans()), draw(st.integers(0, 5)), draw(st.integers(0, 2)),
                   draw(st.sampled_from(["udp", "udp", "tcp", "icmp"])),
                   draw(st.sampled_from([53, 80, 443])), draw(st.integers(0, 2)), draw(shape))
        out.append((f, t))
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
