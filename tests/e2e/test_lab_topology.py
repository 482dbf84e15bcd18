"""The lab's network and senders: paced rates arrive as sent, teardown is complete."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest

from tests.e2e.conftest import lab_leftovers
from xpro.lab.namespaces import NsProcess
from xpro.lab.scenarios import SERVICE_ADDRESSES, SERVICE_PORT
from xpro.lab.service import Service
from xpro.lab.topology import Addressing, build_lab, lab_down
from xpro.lab.traffic import ROLES, Bins, Flow, frame, send_flows

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.mark.usefixtures("clean_lab")
@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_rates_through_unfiltered_proxies(ipv6: bool) -> None:
    """No filter: every packet sent reaches the service, at the paced rates."""
    a = Addressing(ipv6)
    rates = {0: 50.0, 1: 500.0, 2: 4000.0}
    with build_lab(2) as lab:
        flows = []
        for k, rate in rates.items():
            site = lab.proxies[k % 2]
            proto = "syn" if k == 1 else "udp"
            src = a.host(a.clients if k == 0 else a.bots, k)
            fr = frame(proto, src_mac=site.net_mac, dst_mac=site.outside_mac, src=src,
                       dst=a.service, sport=1000 + k, dport=80 if proto == "syn" else 9000)
            flows.append(Flow(src, "legit" if k == 0 else "attack", site.index, (fr,), rate,
                              0.0, 3.0))
        legit = [flows[0].source]
        sent_bins, recv_bins = Bins(5.0), Bins(5.0)
        t0 = time.monotonic() + 0.5
        service = Service(lab.svc_ns, SERVICE_PORT, SERVICE_ADDRESSES, legit, t0, 3.0,
                          recv_bins).start()
        try:
            sent = NsProcess(lab.net_ns, send_flows, [s.net_if for s in lab.proxies], flows,
                             t0, sent_bins).start().result(30)
            got = service.result(30)
        finally:
            service.stop()
    for k, rate in rates.items():
        src = flows[k].source
        assert sent[src] == int(rate * 3.0)
        assert got.get(src, 0) == sent[src], (src, got)
    # Paced: every 0.5 s window holds the rate to a few percent.
    attack = ROLES.index("attack")
    per_window = sent_bins.counts[attack, :30].reshape(6, 5).sum(axis=1)
    want = (rates[1] + rates[2]) * 0.5
    assert all(abs(x - want) <= 0.05 * want for x in per_window), per_window
    got_window = recv_bins.counts[attack, :30].reshape(6, 5).sum(axis=1)
    assert all(abs(x - want) <= 0.05 * want for x in got_window), got_window


def _build_and_die(run: str) -> None:
    lab = build_lab(1, run=run)
    lab.proxies[0].pin_dir.mkdir()
    os.kill(os.getpid(), signal.SIGKILL)


def test_lab_down_removes_what_a_killed_run_left() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    run = os.urandom(3).hex()
    child = multiprocessing.get_context("fork").Process(target=_build_and_die, args=(run,))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    tag = f"xpro-lab{run}"
    left = lab_leftovers()
    assert any(n.startswith(tag) for n in left["namespaces"])
    assert any(p.endswith(f"{tag}-p0") for p in left["pins"])
    done = lab_down()
    assert any(tag in d for d in done)
    left = lab_leftovers()
    assert not [n for v in left.values() for n in v if tag in n], left


@pytest.mark.usefixtures("clean_lab")
def test_up_then_down_stop() -> None:
    """``xpro lab up`` keeps a lab with its mesh; ``xpro lab down --stop`` ends it cleanly."""
    import json
    import subprocess
    import sys

    from xpro.lab.topology import live_runs

    with subprocess.Popen([sys.executable, "-m", "xpro.cli.lab", "up", "--proxies", "1"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            text = ""
            while True:
                line = proc.stdout.readline()
                assert line, proc.stderr.read() if proc.stderr else ""
                text += line
                if line.rstrip() == "}":  # the end of the top-level object
                    break
            info = json.loads(text)
            assert info["lab"] in live_runs()
            assert info["proxies"][0]["netns"] in lab_leftovers()["namespaces"]
            done = lab_down(stop_live=True, only={info["lab"]})
            assert any(info["lab"] in d and "stopped" in d for d in done)
            assert proc.wait(20) == 0
            assert info["lab"] not in live_runs()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
                lab_down()
