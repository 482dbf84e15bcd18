"""The reference model on its own: parsing, Algorithm 2, merge."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.packets import arp_frame, frame
from xpro.core import model
from xpro.core.layout import DST_ADDR, DST_ADDR_PORT, XDP_PASS, Known, Reason, addr16

pytestmark = pytest.mark.unit

S = model.NS_PER_S
T0 = 1_700_000_000 * S


def test_parse_ipv4_addr_mode() -> None:
    p = model.parse(frame("10.0.0.1", "10.9.9.9", dport=80), DST_ADDR)
    assert p.status is model.ParseStatus.OK
    assert p.src == addr16("10.0.0.1")
    assert p.dst == addr16("10.9.9.9") + b"\0\0\0\0"


@pytest.mark.parametrize("vlans", [0, 1, 2])
def test_parse_addr_port_mode_with_vlans(vlans: int) -> None:
    p = model.parse(frame("2001:db8::1", "2001:db8::2", proto="tcp", dport=443, vlans=vlans),
                    DST_ADDR_PORT)
    assert p.status is model.ParseStatus.OK
    assert p.dst == addr16("2001:db8::2") + model.port_bytes(443) + bytes([6, 0])


def test_parse_fragment_keys_on_addresses_only() -> None:
    p = model.parse(frame("10.0.0.1", "10.0.0.2", frag=True), DST_ADDR_PORT)
    assert p.dst == addr16("10.0.0.2") + b"\0\0\0\0"
    p6 = model.parse(frame("2001:db8::1", "2001:db8::2", ext=("hop",), frag=True),
                     DST_ADDR_PORT)
    assert p6.dst == addr16("2001:db8::2") + b"\0\0\0\0"


def test_an_atomic_fragment_is_keyed_on_its_port() -> None:
    """An IPv6 fragment header with offset 0 and M 0 (RFC 6946) wraps a whole
    datagram, delivered to its port: keyed on the port, or a flood sent as
    atomic fragments walked past a closed port's key."""
    p6 = model.parse(frame("2001:db8::1", "2001:db8::2", ext=("hop", "frag")), DST_ADDR_PORT)
    assert p6.dst == addr16("2001:db8::2") + model.port_bytes(53) + bytes([17, 0])


def test_parse_ipv6_extension_chain_bound() -> None:
    ok = frame("2001:db8::1", "2001:db8::2", ext=("hop",) + ("dest",) * 7)
    assert model.parse(ok, DST_ADDR_PORT).status is model.ParseStatus.OK
    deep = frame("2001:db8::1", "2001:db8::2", ext=("hop",) + ("dest",) * 8)
    assert model.parse(deep, DST_ADDR_PORT).status is model.ParseStatus.MALFORMED


def test_parse_non_ip_and_truncation() -> None:
    assert model.parse(arp_frame(), DST_ADDR).status is model.ParseStatus.NON_IP
    assert model.parse(b"\0" * 13, DST_ADDR).status is model.ParseStatus.NON_IP
    f = frame("10.0.0.1", "10.0.0.2")
    assert model.parse(f[:30], DST_ADDR).status is model.ParseStatus.MALFORMED
    # The UDP header cut off: malformed only when the port is needed.
    cut = bytearray(f[: 14 + 20 + 2])
    cut[16:18] = (22).to_bytes(2, "big")  # tot_len = IP header + 2 bytes
    assert model.parse(bytes(cut), DST_ADDR).status is model.ParseStatus.OK
    assert model.parse(bytes(cut), DST_ADDR_PORT).status is model.ParseStatus.MALFORMED


def test_rate_exceeds_is_exact() -> None:
    assert not model.rate_exceeds(100, S, 100)
    assert model.rate_exceeds(101, S, 100)
    big = (2**64 - 1, 2**63, 2**32 - 1)
    assert model.rate_exceeds(*big) is (big[0] * S > big[2] * big[1])


def _run(f: model.Filter, frames: list[tuple[bytes, int]]) -> list[model.Verdict]:
    return [f.packet(fr, t) for fr, t in frames]


def test_heavy_hitter_dropped_after_t_t2_legit_passes() -> None:
    f = model.Filter(model.FilterParams(t_f1=100, t_t2=S, t_f2=10**6))
    bot = frame("10.0.0.66", "10.9.9.9")
    legit = frame("10.0.0.7", "10.9.9.9")
    out = []
    for i in range(3000):  # 1000 pps for 3 s
        t = T0 + i * S // 1000
        out.append(f.packet(bot, t))
        if i % 100 == 0:  # 10 pps
            assert f.packet(legit, t).action == XDP_PASS
    assert all(v.action == XDP_PASS for v in out[:1000])  # within T_T2
    assert all(v.reason is Reason.SRC_RATE for v in out[1100:])
    assert len([e for e in f.events if e.kind == model.EventKind.SRC_OVERLOAD]) == 2  # once/s


def test_destination_limit_catches_many_small_sources_not_bots() -> None:
    p = model.FilterParams(t_f1=100, t_f2=500, t_t2=S, t_t3=S)
    f = model.Filter(p)
    srcs = [frame(f"10.1.{i // 250}.{i % 250 + 1}", "10.9.9.9") for i in range(1000)]
    verdicts = _run(f, [(srcs[i % 1000], T0 + i * S // 1000) for i in range(3000)])
    # 1000 pps to one destination, each source at 1 pps: only T_F2 fires, and
    # from the next packet on the destination is closed to them all.
    # (The crossing packet itself is usually DST_CLOSED already: the closed
    # check uses the same clock as the dst check, with one packet fewer.)
    first = next(i for i, v in enumerate(verdicts) if v.reason is not Reason.PASS)
    assert first > 1000
    assert verdicts[first].reason in (Reason.DST_RATE, Reason.DST_CLOSED)
    assert {v.reason for v in verdicts[first + 1 :]} == {Reason.DST_CLOSED}


def test_closed_destination_serves_known_clients_only() -> None:
    p = model.FilterParams(t_f1=10**6, t_f2=100, t_t2=S, t_t3=S // 2, t_t1=2 * S)
    f = model.Filter(p)
    client = frame("192.0.2.7", "10.9.9.9")
    heavy = frame("192.0.2.8", "10.9.9.9")
    ckey, hkey = (model.parse(x, 0).key for x in (client, heavy))
    f.known.update({ckey: Known.CLIENT, hkey: Known.HEAVY})
    spoofed = [frame(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "10.9.9.9")
               for i in range(1, 1001)]
    # 1000 spoofed sources at 1 ms: closed after T_T3.
    vs = _run(f, [(spoofed[i], T0 + i * S // 1000) for i in range(1000)])
    assert vs[-1].reason is Reason.DST_CLOSED
    dkey = model.parse(client, 0).dst
    n_flows = len(f.flows)
    assert f.packet(client, T0 + S).reason is Reason.PASS
    assert f.packet(heavy, T0 + S).reason is Reason.DST_CLOSED
    assert f.packet(spoofed[0], T0 + S).reason is Reason.DST_CLOSED
    # The client's and the heavy source's records are new; the spoofed source's is not.
    assert len(f.flows) == n_flows + 2
    d = f.dsts[dkey]
    assert d.kc == 1
    drops = f.flows[model.closed_key(dkey)]
    assert drops.c == f.stats[Reason.DST_CLOSED][0] - 1  # the heavy one is not in it
    # The client alone over T_F2 (kc over the aggregate window): DST_RATE.
    t = T0 + S
    for i in range(1, 400):
        v = f.packet(client, t + i * S // 1000)
    assert v.reason is Reason.DST_RATE
    # Idle longer than T_T1: open again, to anyone.
    assert f.packet(spoofed[5], t + 3 * S).reason is Reason.PASS
    assert f.dsts[dkey].kc == 0


def test_monitor_mode_passes_and_counts() -> None:
    p = model.FilterParams(t_f1=10, t_t2=0, mode=1)
    f = model.Filter(p)
    bot = frame("10.0.0.66", "10.9.9.9")
    vs = _run(f, [(bot, T0 + i * S // 1000) for i in range(50)])
    assert all(v.action == XDP_PASS for v in vs)
    assert f.stats[Reason.MON_SRC_RATE][0] > 0


def test_allow_beats_deny_and_rates() -> None:
    p = model.FilterParams(t_f1=0, t_t2=0, allow=frozenset({model.Prefix.parse("10.0.0.0/24")}),
                           deny=frozenset({model.Prefix.parse("10.0.0.0/8")}))
    f = model.Filter(p)
    assert f.packet(frame("10.0.0.1", "10.9.9.9"), T0).reason is Reason.ALLOW
    assert f.packet(frame("10.1.0.1", "10.9.9.9"), T0).reason is Reason.DENY


def test_idle_reset_marks_the_flow() -> None:
    f = model.Filter(model.FilterParams(t_t1=S))
    fr = frame("10.0.0.1", "10.9.9.9")
    f.packet(fr, T0)
    f.packet(fr, T0 + 2 * S)
    (rec,) = f.flows.values()
    assert (rec.ts1, rec.c, rec.gen) == (T0 + 2 * S, 1, 1)
    # The sync saw the record at gen 0 with c' = 1: the reset reads as mark.
    assert model.local_view(rec, model.Synced(c=1, gen=0)) == model.Local(
        T0 + 2 * S, T0 + 2 * S, 1, 1, 1)
    assert model.local_view(rec, model.Synced(c=0, gen=1)).mark == 0


# --- merge (Algorithm 1) --------------------------------------------------

SP = model.SyncParams(t_t1=10 * S, t_t4=5 * S, r_q=2 * model.R_DEN)


def test_merge_local_only_clears_dc_and_mark() -> None:
    loc, mas = model.merge(model.Local(T0, T0 + S, 7, 7, 1), None, SP)
    assert loc == model.Local(T0, T0 + S, 7, 0, 0)
    assert mas == model.Master(T0, T0 + S, 7)


def test_merge_master_only_creates_local() -> None:
    loc, mas = model.merge(None, model.Master(T0, T0 + S, 9), SP)
    assert loc == model.Local(T0, T0 + S, 9, 0, 0)
    assert mas == model.Master(T0, T0 + S, 9)


def test_merge_marked_reset_replaces_master_window() -> None:
    loc, mas = model.merge(model.Local(T0 + 20 * S, T0 + 21 * S, 3, 3, 1),
                           model.Master(T0, T0 + S, 500), SP)
    assert mas == model.Master(T0 + 20 * S, T0 + 21 * S, 3)
    assert loc == model.Local(T0 + 20 * S, T0 + 21 * S, 3, 0, 0)


def test_merge_long_window_is_shortened_by_r() -> None:
    loc, mas = model.merge(model.Local(T0, T0 + 8 * S, 10, 4, 0),
                           model.Master(T0, T0 + 7 * S, 100), SP)
    # ts1' = ts2' - (ts2' - ts1) / 2 = T0 + 4 s; c = 100 / 2 + 4
    assert loc == model.Local(T0 + 4 * S, T0 + 8 * S, 54, 0, 0)
    assert mas == model.Master(T0 + 4 * S, T0 + 8 * S, 54)


times = st.integers(T0, T0 + 4 * S)


@given(ts1=times, d1=st.integers(0, 4 * S), mts1=times, d2=st.integers(0, 4 * S),
       c=st.integers(0, 10**9), dc=st.integers(0, 10**6))
def test_merge_conserves_counts_within_t_t4(ts1: int, d1: int, mts1: int, d2: int,
                                            c: int, dc: int) -> None:
    """Without a window shortening, the master gains exactly this proxy's dc."""
    local = model.Local(ts1, ts1 + d1, c, dc, 0)
    master = model.Master(mts1, mts1 + d2, c)
    loc, mas = model.merge(local, master, model.SyncParams(t_t1=10 * S, t_t4=10 * S))
    assert mas is not None
    assert loc is not None
    assert mas.c == c + dc == loc.c
    assert loc.dc == 0
    assert loc.mark == 0
    assert mas.ts1 <= mas.ts2 or mas.ts1 <= local.ts2


def _fkey(src: int, dst: bytes = b"\x0a" * 16) -> bytes:
    return bytes(15) + bytes((src,)) + dst + b"\0\0\0\0"


def test_recompute_dst_skips_idle_and_over_limit_flows() -> None:
    p = model.FilterParams(t_t1=10 * S, t_t2=S, t_f1=100)
    flows = [
        (_fkey(1), model.FlowRecord(ts1=T0, ts2=T0 + 5 * S, c=50)),       # live, 10 pps
        (_fkey(2), model.FlowRecord(ts1=T0, ts2=T0 + 5 * S, c=10_000)),   # over T_F1
        (_fkey(3), model.FlowRecord(ts1=T0 - 100 * S, ts2=T0 - 50 * S, c=5)),  # idle
    ]
    d = model.recompute_dst(flows, T0 + 5 * S, p)
    assert d == model.DstRecord(ts1=T0, ts2=T0 + 5 * S, c=50)


def test_recompute_dst_counts_closed_drops_and_known_clients() -> None:
    p = model.FilterParams(t_t1=10 * S, t_t2=S, t_f1=100)
    dkey = _fkey(0)[16:]
    known = {_fkey(1): Known.CLIENT, _fkey(2): Known.CLIENT, _fkey(3): Known.HEAVY}
    recs = [
        (_fkey(1), model.FlowRecord(ts1=T0, ts2=T0 + 5 * S, c=50)),      # known client
        (_fkey(2), model.FlowRecord(ts1=T0, ts2=T0 + 5 * S, c=10_000)),  # known, over T_F1
        (_fkey(3), model.FlowRecord(ts1=T0, ts2=T0 + 5 * S, c=30)),      # heavy, under here
        (_fkey(4), model.FlowRecord(ts1=T0, ts2=T0 + 5 * S, c=20)),      # unknown
        # closed drops at 2000 pps: never left out for T_F1
        (model.closed_key(dkey), model.FlowRecord(ts1=T0 - S, ts2=T0 + 5 * S, c=12_000)),
    ]
    d = model.recompute_dst(recs, T0 + 5 * S, p, known)
    assert d == model.DstRecord(ts1=T0 - S, ts2=T0 + 5 * S, c=50 + 30 + 20 + 12_000, kc=50)
    assert model.closed_key(dkey)[:16] == bytes(16)
    assert model.closed_key(dkey)[16:35] == dkey[:19]
    assert model.is_closed_key(model.closed_key(dkey))
    assert not model.is_closed_key(_fkey(1))
