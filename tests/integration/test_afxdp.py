"""The afxdp data path on real veth pairs: AF_XDP sockets, the userspace filter, forwarding.

Topology (namespaces made per test, removed afterwards)::

    peer ──veth── proxy [xpro_redirect -> AF_XDP -> UserFilter] ──veth── service

* the generated traces of the kernel's differential tests, sent as real
  frames from the peer and filtered behind real AF_XDP sockets with a fake
  clock, agree with the reference model (counters after every step, records
  and warnings at the end), closures, known clients and sync rounds included;
* end to end, with the real clock: a flood is cut after T_T2 while a
  legitimate stream reaches a UDP socket in the service namespace whole, in
  native and in generic mode.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.contrib.coap import CoAP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.kernel.harness import SetKnown, Step, SyncRound, set_known, sync_round
from tests.kernel.test_differential import closure_traces, params, traces
from tests.unit.test_afxdp_filter import _dst, _event, _flow
from xpro.backends.afxdp import AfxdpBackend
from xpro.bpf import XdpMode
from xpro.core import layout as L
from xpro.core import model
from xpro.core.params import Sizes
from xpro.core.state import OP_CREATE, OP_DELETE, OP_DST, OP_FLOW, OP_READ, apply_entries
from xpro.datapath.afxdp.filter import UserFilter, parsed_destination_addr
from xpro.datapath.xdp import XdpFilter
from xpro.errors import DatapathError
from xpro.lab.frames import Stream, UdpCounter, send_in_netns, udp_frame
from xpro.lab.namespaces import Topology, add_address, in_netns, link_info, sysctl
from xpro.parsers.coap import COAP_PORT, parse_coap

pytestmark = pytest.mark.integration

S = model.NS_PER_S
PORT = 9000
EXAMPLES = int(os.environ.get("XPRO_AFXDP_EXAMPLES", "25"))


@dataclass
class Path:
    topo: Topology
    backend: AfxdpBackend
    filt: UserFilter
    peer_ns: str
    peer_if: str
    svc_ns: str
    svc_mac: str
    peer_mac: str
    tx: socket.socket

    def send(self, frames: list[bytes]) -> None:
        for fr in frames:
            self.tx.send(fr)


def peer_proxy_service(topo: Topology) -> SimpleNamespace:
    """peer --veth-- proxy --veth-- service (10.88.0.2) in ``topo``'s namespaces:
    their names (``peer``, ``proxy``, ``svc``), the interfaces (``peer_if``,
    ``ingress``, ``egress``, ``svc_if``) and the MACs of the peer and the
    service (``peer_mac``, ``svc_mac``)."""
    peer, proxy, svc = (topo.namespace(r) for r in ("peer", "proxy", "svc"))
    # The peer's kernel would send router solicitations and MLD reports of
    # its own into the filter: only the test's frames may arrive there.
    for key in ("all", "default"):
        sysctl(peer, f"net.ipv6.conf.{key}.disable_ipv6", 1)
    peer_if, ingress = topo.veth(peer, proxy)
    egress, svc_if = topo.veth(proxy, svc)
    add_address(svc_if, "10.88.0.2/24", svc)
    return SimpleNamespace(peer=peer, proxy=proxy, svc=svc, peer_if=peer_if, ingress=ingress,
                           egress=egress, svc_if=svc_if, peer_mac=link_info(peer_if, peer).mac,
                           svc_mac=link_info(svc_if, svc).mac)


def make_path(p: model.FilterParams, mode: XdpMode = XdpMode.NATIVE,
              parsers: list[Any] | None = None, coap_names: list[str] | None = None) -> Path:
    """peer -- proxy (afxdp) -- service, up and running; :func:`close_path` removes it."""
    topo = Topology().open()
    backend: AfxdpBackend | None = None
    try:
        net = peer_proxy_service(topo)
        peer, proxy, svc = net.peer, net.proxy, net.svc
        peer_if, ingress, egress, svc_mac = net.peer_if, net.ingress, net.egress, net.svc_mac
        backend = AfxdpBackend(params=p, sizes=Sizes(flows=4096, dsts=1024), netns=proxy,
                               options={"egress": egress, "egress_dst_mac": svc_mac,
                                        "xdp_mode": mode.label, "frames": 16384,
                                        "ring_size": 4096, "batch": 1024,
                                        "parsers": parsers or [],
                                        "coap_names": coap_names or []})
        filt = backend.load()
        backend.attach(ingress)
        backend.start()
        with in_netns(peer):
            tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        tx.bind((peer_if, 0))
    except BaseException:
        if backend is not None:
            backend.close()
        topo.close()
        raise
    return Path(topo, backend, filt, peer, peer_if, svc, svc_mac,
                net.peer_mac, tx)


def close_path(path: Path) -> None:
    path.tx.close()
    try:
        path.backend.stop()
    finally:
        path.backend.close()
        path.topo.close()


@pytest.fixture
def path_factory() -> Iterator[Any]:
    made: list[Path] = []

    def make(p: model.FilterParams, mode: XdpMode = XdpMode.NATIVE,
             parsers: list[Any] | None = None, coap_names: list[str] | None = None) -> Path:
        made.append(make_path(p, mode, parsers, coap_names))
        return made[-1]

    yield make
    for path in made:
        close_path(path)


def _wait_total(filt: UserFilter, total: int, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while int(filt.counters()[:, 0].sum()) < total:
        if time.monotonic() > end:
            raise AssertionError(f"the afxdp path saw {int(filt.counters()[:, 0].sum())} of "
                                 f"{total} frames")
        time.sleep(0.0005)


@pytest.fixture(scope="module")
def shared_path() -> Iterator[Path]:
    """One topology for every generated trace (set-up costs more than a trace)."""
    path = make_path(model.FilterParams())
    yield path
    close_path(path)


class _Daemon:
    """What the kernel harness's ``set_known`` and ``sync_round`` need of a filter:
    the daemon's writes go to the path's :class:`UserFilter` as to ``XdpFilter``."""

    def __init__(self, filt: UserFilter) -> None:
        self.xdp = filt

    def dst(self, dkey: bytes) -> model.DstRecord | None:
        exists, recs = self.xdp.read_dsts_of(np.frombuffer(dkey, dtype=L.DST_KEY))
        return _dst(recs[0]) if exists[0] else None


def run_real(path: Path, p: model.FilterParams, trace: list[Step]) -> None:
    """Send ``trace`` through the path's real sockets, one tick (the frames of one
    time) at a time, the daemon's steps (known classes, sync rounds) written to
    the running filter between ticks; the counters must equal the model's after
    every tick, the records and warnings at the end."""
    filt = path.filt
    events: list[model.Event] = []
    q = filt.events(lambda ev: events.append(_event(ev)))
    daemon = _Daemon(filt)
    try:
        filt.clear()
        filt.configure(p)
        m = model.Filter(p)
        # Frames shorter than the 60-byte Ethernet minimum stay as they are:
        # AF_PACKET on a veth sends them unpadded.
        trace = [st_ for st_ in trace if not isinstance(st_, tuple) or len(st_[0]) >= 14]
        i = 0
        total = 0
        while i < len(trace):
            st_ = trace[i]
            if isinstance(st_, SetKnown):
                set_known(daemon, m, st_)  # type: ignore[arg-type]
                i += 1
                continue
            if isinstance(st_, SyncRound):
                sync_round(daemon, m, st_.now)  # type: ignore[arg-type]
                i += 1
                continue
            t = st_[1]
            j = i
            tick: list[bytes] = []
            while j < len(trace):
                nxt = trace[j]
                if not isinstance(nxt, tuple) or nxt[1] != t:
                    break
                tick.append(nxt[0])
                j += 1
            filt.set_clock(t)
            for fr in tick:
                m.packet(fr, t)
            path.send(tick)
            total += len(tick)
            _wait_total(filt, total)
            assert filt.counters().astype(int).tolist() == m.stats, f"after step {j - 1}"
            i = j
        q.consume()
        keys, vals = filt.read_flows()
        assert {keys[k].tobytes(): _flow(vals[k]) for k in range(len(keys))} == m.flows
        dk, dv = filt.read_dsts()
        assert {dk[k].tobytes(): _dst(v) for k, v in enumerate(dv)} == m.dsts
        kk, kv = filt.read_known()
        assert {kk[k].tobytes(): int(kv[k]) for k in range(len(kk))} == m.known
        assert events == m.events
    finally:
        q.close()
        filt.set_clock(0)


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(p=params(), trace=traces())
def test_real_sockets_agree_with_model(shared_path: Path, p: model.FilterParams,
                                       trace: list[tuple[bytes, int]]) -> None:
    run_real(shared_path, p, list(trace))


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(p=params(), trace=closure_traces())
def test_real_sockets_agree_with_model_on_closed_destinations(
        shared_path: Path, p: model.FilterParams, trace: list[Step]) -> None:
    """The closure traces: spoofed bursts close a destination behind real sockets,
    known and heavy sources are written into the running filter's known table,
    sync rounds apply the model's aggregates (kc included) between ticks."""
    run_real(shared_path, p, trace)


@pytest.mark.parametrize("mode", [pytest.param(XdpMode.NATIVE, id="native"),
                                  pytest.param(XdpMode.GENERIC, id="generic")])
def test_flood_cut_legitimate_forwarded_to_the_service(path_factory: Any, mode: XdpMode) -> None:
    p = model.FilterParams(t_f1=100, t_t2=S // 2, t_t1=10 * S, t_f2=10**6, t_t3=S)
    path: Path = path_factory(p, mode)
    att = path.backend.attachments
    assert [a.mode for a in att.values()] == ["afxdp"]
    bot = udp_frame(src_mac=path.peer_mac, dst_mac="02:00:00:00:00:99", src="10.77.0.66",
                    dst="10.88.0.2", dport=PORT)
    legit = udp_frame(src_mac=path.peer_mac, dst_mac="02:00:00:00:00:99", src="10.77.0.7",
                      dst="10.88.0.2", dport=PORT)
    with UdpCounter(path.svc_ns, PORT) as rx:
        sent = send_in_netns(path.peer_ns, path.peer_if,
                             [Stream("bot", bot, 5000), Stream("legit", legit, 50)], 2.0)
    got = rx.counts
    assert sent == {"bot": 10_000, "legit": 100}
    # Nothing was lost on the way: the kernel found room in the rings for every frame
    # (the rings take a stall of the loop of most of a second on a loaded machine).
    drops = path.backend.path.kernel_drops()  # type: ignore[union-attr]
    assert drops == {"rx_dropped": 0, "rx_ring_full": 0, "rx_fill_ring_empty_descs": 0}
    assert got.get("10.77.0.7") == 100  # every legitimate datagram reached the service
    # the bot passes until it is judged (T_T2 = 0.5 s of 2 s), then at most T_F1 a
    # second; batches are stamped when the loop takes them, so allow for stalls
    assert 0 < got.get("10.77.0.66", 0) < 10_000 // 2
    c = path.filt.counters()
    assert int(c[L.Reason.SRC_RATE, 0]) > 4000
    st = path.backend.path.stats  # type: ignore[union-attr]
    assert st.tx == int(c[L.Reason.PASS, 0]) + int(c[L.Reason.NON_IP, 0])
    assert st.tx_ring_full == 0
    keys, vals = path.filt.read_flows()
    srcs = {L.addr_str(bytes(k["src"])): int(v["c"]) for k, v in zip(keys, vals, strict=True)}
    assert srcs["10.77.0.66"] == 10_000
    assert srcs["10.77.0.7"] == 100


def test_stop_and_close_remove_everything(path_factory: Any) -> None:
    from xpro.bpf import xdp_query

    path: Path = path_factory(model.FilterParams())
    ingress = next(iter(path.backend.attachments))
    proxy = path.backend.netns
    assert xdp_query(ingress, proxy)["native"] != 0
    path.backend.stop()
    path.backend.close()
    assert xdp_query(ingress, proxy)["native"] == 0
    assert path.backend.path is None
    # closing twice (the fixture does it again) is harmless
    path.backend.close()


def test_a_batch_the_filter_fails_on_is_dropped_and_the_loop_goes_on(
        path_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame that makes the filter raise (a bug an attacker found) costs its
    batch, dropped and counted, not the data path: the next frames are judged
    and forwarded, and no UMEM frame is lost."""
    path: Path = path_factory(model.FilterParams())
    afxdp = path.backend.path
    assert afxdp is not None
    judge = path.filt.process
    poison = socket.inet_aton("10.77.13.13")  # a source the filter raises on

    def process(data: Any, addrs: Any, lens: Any, **kw: Any) -> Any:
        if any(bytes(data[a + 26:a + 30]) == poison for a in addrs):
            raise ValueError("a bug this frame found")
        return judge(data, addrs, lens, **kw)

    monkeypatch.setattr(path.filt, "process", process)
    free = afxdp.umem.top
    mac = {"src_mac": path.peer_mac, "dst_mac": "02:00:00:00:00:99"}
    bad = udp_frame(**mac, src="10.77.13.13", dst="10.88.0.2", dport=PORT)
    good = udp_frame(**mac, src="10.77.0.7", dst="10.88.0.2", dport=PORT)
    with UdpCounter(path.svc_ns, PORT) as rx:
        path.send([bad])
        end = time.monotonic() + 5
        while afxdp.stats.filter_errors == 0 and time.monotonic() < end:
            time.sleep(0.001)
        path.send([good] * 20)
        _wait_total(path.filt, 20)
        time.sleep(0.3)
    assert afxdp.stats.filter_errors == 1
    assert afxdp.stats.dropped == 1
    assert rx.counts.get("10.77.0.7") == 20  # the loop went on
    assert afxdp.failure is None
    assert afxdp.umem.top == free  # the failed batch's frame came back
    names = {s.name: s.value for s in path.backend.metrics()}
    assert names["afxdp_filter_errors"] == 1
    assert names["afxdp_tx"] == 20


def test_a_filter_that_fails_on_every_batch_is_a_failed_loop(
        path_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a frame's bug but a broken filter: every batch dropped would be a
    silent outage, so after FILTER_FAILING_S of nothing but failures the loop
    fails and says why (and the daemon exits for its service manager)."""
    from xpro.datapath.afxdp import datapath

    path: Path = path_factory(model.FilterParams())
    got: list[str] = []
    path.backend.on_failure = got.append
    path.backend.start()
    monkeypatch.setattr(datapath, "FILTER_FAILING_S", 0.3)

    def broken(*a: Any, **kw: Any) -> Any:
        raise MemoryError("tables gone")

    monkeypatch.setattr(path.filt, "process", broken)
    frame = udp_frame(src_mac=path.peer_mac, dst_mac="02:00:00:00:00:99", src="10.77.0.7",
                      dst="10.88.0.2", dport=PORT)
    end = time.monotonic() + 5
    while not got and time.monotonic() < end:
        path.send([frame])
        time.sleep(0.05)
    assert len(got) == 1
    assert got[0].startswith("the afxdp loop failed: the filter failed on every batch for ")
    assert got[0].endswith("(the last: MemoryError: tables gone)")
    afxdp = path.backend.path
    assert afxdp is not None
    assert afxdp.stats.filter_errors >= 2
    with pytest.raises(DatapathError):
        path.backend.stop()


def test_a_loop_that_fails_says_why(path_factory: Any) -> None:
    """The egress interface goes away: the loop fails on its next passed frame
    and says so through ``on_failure`` and ``failure()`` (the daemon then
    stops, tests/integration/test_daemon.py)."""
    import subprocess

    path: Path = path_factory(model.FilterParams())
    got: list[str] = []
    path.backend.on_failure = got.append
    path.backend.start()  # again: it hands the callback to the running path
    afxdp = path.backend.path
    assert afxdp is not None
    assert afxdp.failure is None
    subprocess.run(["ip", "-n", path.backend.netns or "", "link", "del", afxdp.egress],
                   check=True)
    path.send([udp_frame(src_mac=path.peer_mac, dst_mac="02:00:00:00:00:99", src="10.77.0.7",
                         dst="10.88.0.2", dport=PORT)])
    end = time.monotonic() + 5
    while not got and time.monotonic() < end:
        time.sleep(0.01)
    why = f"the afxdp loop failed: wake TX of the AF_XDP socket on {afxdp.egress}"
    assert len(got) == 1
    assert got[0].startswith(why)
    assert afxdp.failure == got[0]
    with pytest.raises(DatapathError, match="the afxdp loop failed"):
        path.backend.stop()


def _coap_frame(path: Path, src: str, host: bytes) -> bytes:
    return bytes(Ether(src=path.peer_mac, dst="02:00:00:00:00:99")
                 / IP(src=src, dst="10.88.0.2") / UDP(sport=40000, dport=COAP_PORT)
                 / CoAP(type=0, code=1, msg_id=1, options=[("Uri-Host", host)]))


def test_coap_name_spray_is_one_flow(path_factory: Any) -> None:
    """One source spraying requests over 100 invented target names, through real
    AF_XDP sockets: none is listed, so all key on the proxy's address, one flow,
    cut by the per-source rule after T_T2 like any flood; the listed target of
    a quiet client is keyed apart and reaches the service whole."""
    p = model.FilterParams(t_f1=100, t_t2=S // 2, t_t1=10 * S, t_f2=10**6, t_t3=S)
    path: Path = path_factory(p, parsers=[parse_coap], coap_names=["svc.example"])
    spray = [Stream(f"n{i}", _coap_frame(path, "10.77.0.66", f"n{i}.invented.example".encode()),
                    20) for i in range(100)]  # 2000 requests a second in all
    quiet = Stream("quiet", _coap_frame(path, "10.77.0.11", b"SVC.example."), 10)
    with UdpCounter(path.svc_ns, COAP_PORT) as rx:
        sent = send_in_netns(path.peer_ns, path.peer_if, [*spray, quiet], 2.0)
    got = rx.counts
    assert sum(sent.values()) == 4000 + 20
    assert got.get("10.77.0.11") == 20
    assert got.get("10.77.0.66", 0) < 2000  # at most the first T_T2 and a little more
    c = path.filt.counters()
    assert int(c[L.Reason.SRC_RATE, 0]) > 2000
    keys, vals = path.filt.read_flows()
    flows = {(L.addr_str(bytes(k["src"])), bytes(k["dst"]["addr"]).ljust(16, b"\0")): int(v["c"])
             for k, v in zip(keys, vals, strict=True)}
    assert flows == {("10.77.0.66", L.addr16("10.88.0.2")): 4000,
                     ("10.77.0.11", parsed_destination_addr("svc.example")): 20}


@pytest.mark.parametrize("keyed", [pytest.param(True, id="coap-parser"),
                                   pytest.param(False, id="no-parser")])
def test_coap_targets_limited_apart(path_factory: Any, keyed: bool) -> None:
    """A CoAP flood at one target behind the proxy does not close the other target.

    Both targets share the proxy's address: only the ``coap`` destination
    parser tells them apart.  Without it (the control) the quiet target's
    requests fall under the flood's destination limit too.
    """
    p = model.FilterParams(t_f1=10**6, t_f2=50, t_t3=S // 4, t_t1=10 * S)
    path: Path = path_factory(p, parsers=[parse_coap] if keyed else None,
                              coap_names=["a.example", "b.example"])
    flood = _coap_frame(path, "10.77.0.10", b"a.example")
    quiet = _coap_frame(path, "10.77.0.11", b"b.example")
    with UdpCounter(path.svc_ns, COAP_PORT) as rx:
        sent = send_in_netns(path.peer_ns, path.peer_if,
                             [Stream("flood", flood, 2000), Stream("quiet", quiet, 10)], 2.0)
    got = rx.counts
    assert sent == {"flood": 4000, "quiet": 20}
    assert got.get("10.77.0.10", 0) < 1000  # the flood's target is limited either way
    c = path.filt.counters()
    # over T_F2, then closed to its unknown sources (docs/semantics.rst)
    assert int(c[L.Reason.DST_RATE, 0] + c[L.Reason.DST_CLOSED, 0]) > 3000
    if keyed:
        assert got.get("10.77.0.11") == 20  # the other target is untouched
        keys, _ = path.filt.read_dsts()
        addrs = {bytes(k["addr"]).ljust(16, b"\0") for k in keys}
        assert {parsed_destination_addr("a.example"),
                parsed_destination_addr("b.example")} <= addrs
    else:
        assert got.get("10.77.0.11", 0) < 10


# --- the control program's semantics: UserFilter.apply against xpro_apply ------------

SRCS = [f"10.0.0.{i}" for i in range(1, 5)]
DSTS = ["10.9.9.1", "10.9.9.2"]
T0 = 1_700_000_000 * S


@pytest.fixture(scope="module")
def kernel_filter() -> Iterator[XdpFilter]:
    with XdpFilter(model.FilterParams(), sizes=Sizes(flows=1024, dsts=64, prefixes=16)) as k:
        yield k


@st.composite
def apply_batches(draw: st.DrawFn) -> tuple[list[tuple[int, int, int]], list[dict[str, int]]]:
    """Packets that seed both filters, then a batch of control operations."""
    seed = draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1),
                                   st.integers(0, 3 * S)), max_size=12))
    ops = draw(st.lists(st.fixed_dictionaries({
        "src": st.integers(0, 3), "dst": st.integers(0, 1),
        # closed-drops keys (src 0, pad 1 or 3), address keys, and keys no
        # proxy writes (a closed-drops pad with a source, a pad over 3)
        "pad": st.sampled_from([0, 0, 0, 1, 1, 2, 3, 5]), "zero_src": st.booleans(),
        "op": st.sampled_from([OP_READ, OP_FLOW, OP_FLOW | OP_CREATE, OP_FLOW | OP_DELETE,
                               OP_DST, OP_DST | OP_CREATE, OP_DST | OP_DELETE, 0]),
        "gen": st.integers(0, 2), "c_delta": st.integers(-3, 50),
        "ts1": st.sampled_from([0, T0, T0 + S, T0 + 5 * S]),
        "ts2": st.sampled_from([0, T0, T0 + 2 * S, T0 + 9 * S]),
        "base_c": st.one_of(st.integers(0, 60), st.just(2**64 - 3)),  # DST: a kc delta
    }), max_size=24))
    return seed, ops


def _sorted(keys: Any, vals: Any) -> list[tuple[bytes, bytes]]:
    return sorted((keys[i].tobytes(), vals[i].tobytes()) for i in range(len(keys)))


@settings(max_examples=EXAMPLES * 4, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=apply_batches())
def test_apply_agrees_with_the_control_program(
        kernel_filter: XdpFilter, batch: tuple[list[tuple[int, int, int]], list[dict[str, int]]]
) -> None:
    seed, ops = batch
    p = model.FilterParams(t_t1=2 * S, t_f1=10**6, t_f2=10**6)
    k = kernel_filter
    k.flows.clear()
    k.dsts.clear()
    k.configure(p)
    u = UserFilter(p, sizes=Sizes(flows=1024, dsts=64))
    for s, d, dt in sorted(seed, key=lambda x: x[2]):
        fr = udp_frame(src_mac="02:00:00:00:00:01", dst_mac="02:00:00:00:00:02",
                       src=SRCS[s], dst=DSTS[d])
        k.set_clock(T0 + dt)
        k.program.test_run(fr, data_out=False)
        u.process_frames([fr], T0 + dt)
    keys = [(bytes(16) if o["zero_src"] else L.addr16(SRCS[o["src"]]))
            + L.addr16(DSTS[o["dst"]]) + bytes(3) + bytes((o["pad"],)) for o in ops]
    entries = apply_entries(keys, np.array([o["op"] for o in ops], dtype=np.uint32),
                            gen=np.array([o["gen"] for o in ops], dtype=np.uint32),
                            c_delta=np.array([o["c_delta"] for o in ops], dtype=np.int64),
                            ts1=np.array([o["ts1"] for o in ops], dtype=np.uint64),
                            ts2=np.array([o["ts2"] for o in ops], dtype=np.uint64),
                            base_c=np.array([o["base_c"] for o in ops], dtype=np.uint64))
    out_k = np.zeros(len(entries), dtype=L.APPLY)
    out_u = np.zeros(len(entries), dtype=L.APPLY)
    res_k = k.apply(entries, out=out_k)
    res_u = u.apply(entries, out=out_u)
    assert res_u.tolist() == res_k.tolist()
    assert out_u.tobytes() == out_k.tobytes()
    assert _sorted(*u.read_flows()) == _sorted(*k.read_flows())
    assert _sorted(*u.read_dsts()) == _sorted(*k.read_dsts())
