"""``xpro explain`` predicts what the model does to the next packet, check by check."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.packets import frame
from xpro.core import model
from xpro.core.explain import explain, known_reason
from xpro.core.layout import (
    DST_ADDR,
    DST_ADDR_PORT,
    MODE_ENFORCE,
    MODE_MONITOR,
    XDP_DROP,
    Known,
    addr16,
)
from xpro.core.params import KnownPolicy

pytestmark = pytest.mark.unit

S = model.NS_PER_S
MS = S // 1000
T0 = 1_700_000_000 * S
SOURCES = ["10.0.0.1", "10.0.0.2", "10.0.1.1"]
DESTS = ["10.9.9.9", "10.9.9.10"]


@st.composite
def scenario(draw: st.DrawFn) -> tuple[model.FilterParams, list[tuple[int, int, int]], int, int]:
    params = model.FilterParams(
        t_t1=draw(st.integers(200, 3000)) * MS,
        t_t2=draw(st.integers(0, 1000)) * MS,
        t_t3=draw(st.integers(0, 1000)) * MS,
        t_f1=draw(st.integers(1, 200)),
        t_f2=draw(st.integers(1, 400)),
        mode=draw(st.sampled_from([MODE_ENFORCE, MODE_MONITOR])),
        dst_mode=draw(st.sampled_from([DST_ADDR, DST_ADDR_PORT])),
        deny=frozenset({model.Prefix.parse("10.0.1.0/24")}) if draw(st.booleans())
        else frozenset(),
        allow=frozenset({model.Prefix.parse("10.0.0.2/32")}) if draw(st.booleans())
        else frozenset(),
        source_prefix_v4=draw(st.sampled_from([32, 24])),  # /24: 10.0.0.1 and .2 are one
    )
    gap = st.one_of(st.integers(0, 400), st.integers(0, 5))  # dense: destinations close
    steps = draw(st.lists(st.tuples(gap, st.integers(0, 2), st.integers(0, 1)),
                          max_size=120))
    return params, steps, draw(st.integers(0, 2)), draw(st.integers(0, 1))


@given(scenario(), st.sampled_from([0, 0, Known.CLIENT, Known.HEAVY]), st.booleans())
@settings(max_examples=300, deadline=None)
def test_explain_predicts_the_models_next_verdict(
        case: tuple[model.FilterParams, list[tuple[int, int, int]], int, int], cls: int,
        draw_key: bool) -> None:
    params, steps, qs, qd = case
    f = model.Filter(params)
    if cls:  # the queried flow is known (its earlier packets too), at its address too
        qk = model.flow_key(model.parse(frame(SOURCES[qs], DESTS[qd], dport=53),
                                        params.dst_mode), params)
        f.known[qk] = cls
        f.known[qk[:16] + model.address_key(qk[16:])] = cls
    now = T0
    for gap_ms, s, d in steps:
        now += gap_ms * MS
        # other ports of the address too (addr+port: its own aggregate)
        f.packet(frame(SOURCES[s], DESTS[d], dport=53 + gap_ms % 3), now)
    now += 7 * MS
    pkt = frame(SOURCES[qs], DESTS[qd], dport=53)
    parsed = model.parse(pkt, params.dst_mode)
    fk = model.flow_key(parsed, params)
    rec = f.flows.get(fk)
    drec = f.dsts.get(parsed.dst)
    arec = f.dsts.get(model.address_key(parsed.dst))
    e = explain(params, parsed.src, parsed.dst[:16], now=now,
                flow=None if rec is None else {"ts1": rec.ts1, "ts2": rec.ts2, "c": rec.c},
                dest=None if drec is None else {"ts1": drec.ts1, "ts2": drec.ts2, "c": drec.c,
                                                "kc": drec.kc},
                flow_key=fk if draw_key else None, known=cls,
                address=None if arec is None else dataclasses.asdict(arec), address_known=cls)
    v = f.packet(pkt, now)
    assert e.reason == v.reason.name
    assert e.verdict == ("drop" if v.action == XDP_DROP else "pass")
    fired = [c.name for c in e.checks if c.fires]
    assert len(fired) <= 1


def test_explain_says_why_in_words() -> None:
    p = model.FilterParams(t_t2=1 * S, t_f1=100)
    src, dst = addr16("198.51.100.7"), addr16("192.0.2.10")
    e = explain(p, src, dst, now=T0 + 3 * S, flow={"ts1": T0, "ts2": T0 + 3 * S - MS,
                                                    "c": 900, "base_c": 600},
                dest={"ts1": T0, "ts2": T0 + 3 * S, "c": 900},
                synced={"ts1": T0, "ts2": T0 + 2 * S, "c": 600},
                src_text="198.51.100.7", dst_text="192.0.2.10")
    assert (e.verdict, e.reason) == ("drop", "SRC_RATE")
    text = e.text()
    assert "DROPPED (SRC_RATE)" in text
    assert "901 packets in 3.000 s = 300.3/s > T_F1 100/s" in text
    assert "300 counted here" in text
    assert "last sync  c=600" in text
    assert e.to_dict()["local"]["local_c"] == 300
    young = explain(p, src, dst, now=T0 + S // 2, flow={"ts1": T0, "ts2": T0, "c": 5},
                    dest=None)
    assert young.verdict == "pass"
    assert "not judged yet" in young.text()
    idle = explain(dataclasses.replace(p, t_t1=2 * S), src, dst, now=T0 + 5 * S,
                   flow={"ts1": T0, "ts2": T0, "c": 10_000}, dest=None)
    assert idle.verdict == "pass"
    assert "the window starts again" in idle.text()


def test_explain_says_why_a_closed_destination_drops_or_serves() -> None:
    p = model.FilterParams(t_t2=1 * S, t_t3=1 * S, t_f1=100, t_f2=1000)
    policy = KnownPolicy(min_age=2 * S, min_packets=8)
    src, dst = addr16("198.51.100.7"), addr16("192.0.2.10")
    now = T0 + 10 * S
    dest = {"ts1": T0, "ts2": now - MS, "c": 50_000, "kc": 300}
    # A source seen for half a second: not a known client, dropped before its record.
    young = {"ts1": now - S // 2, "ts2": now - MS, "c": 20}
    why = known_reason(young, now, p, policy, known=0, closed=True)
    assert "too young or too few packets" in why
    e = explain(p, src, dst, now=now, flow=None, dest=dest, closed_since=now - 3 * S,
                known_why=why, src_text="198.51.100.7", dst_text="192.0.2.10")
    assert (e.verdict, e.reason) == ("drop", "DST_CLOSED")
    text = e.text()
    assert "closed to unknown sources since 3.0 s" in text
    assert "this is an unknown source: its window is 0.5 s with 20 packets" in text
    # An established client: served, judged on the known clients' total.
    old = {"ts1": T0, "ts2": now - MS, "c": 800}
    why = known_reason(old, now, p, policy, known=Known.CLIENT, closed=True)
    assert why.startswith("it was established before the destination closed")
    e = explain(p, src, dst, now=now, flow={**old, "base_c": 800}, dest=dest,
                known=Known.CLIENT, known_why=why)
    assert (e.verdict, e.reason) == ("pass", "PASS")
    assert "this is a known client: it was established" in e.text()
    # A heavy source is never served, whatever its rate now.
    assert known_reason(old, now, p, policy, known=Known.HEAVY, closed=True) == (
        "it is over T_F1 in the mesh")
    # One that qualified only during the closure stays out.
    assert "only after the destination closed" in known_reason(
        old, now, p, policy, known=0, closed=True)


def test_explain_names_the_source_prefix_of_the_flow() -> None:
    """The flow of an address is its prefix's: explain shows which."""
    p = model.FilterParams()
    e = explain(p, addr16("2001:db8:1:2::5"), addr16("2001:db8:9::9"), now=T0, flow=None,
                dest=None, src_text="2001:db8:1:2::5", dst_text="2001:db8:9::9")
    assert e.flow_src == "2001:db8:1:2::/64"
    assert "counted as 2001:db8:1:2::/64" in e.text()
    v4 = explain(p, addr16("192.0.2.7"), addr16("10.9.9.9"), now=T0, flow=None, dest=None)
    assert v4.flow_src == "192.0.2.7"
    assert "counted as" not in v4.text()
    v4 = explain(dataclasses.replace(p, source_prefix_v4=24), addr16("192.0.2.7"),
                 addr16("10.9.9.9"), now=T0, flow=None, dest=None)
    assert v4.flow_src == "192.0.2.0/24"
