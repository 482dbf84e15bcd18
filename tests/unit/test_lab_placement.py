"""Where each data path sits in the lab (:func:`xpro.lab.mesh.placement`), and ``--backend``."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from xpro.cli.lab import lab
from xpro.lab.mesh import BACKENDS, LabError, placement
from xpro.lab.namespaces import Topology
from xpro.lab.topology import Lab, ProxySite

pytestmark = pytest.mark.unit

SITE = ProxySite(index=1, netns="xpro-labx-p1", outside="out1", outside_mac="02:00:00:00:00:01",
                 net_if="net1", net_mac="02:00:00:00:00:02", inside="in1",
                 pin_dir=Path("/sys/fs/bpf/xpro-labx-p1"), svc_if="svc1",
                 svc_mac="02:00:00:00:00:03")
LAB = Lab(Topology(run="labx"), "xpro-labx-net", "xpro-labx-svc", [SITE])


@pytest.mark.parametrize("backend", ["native", "generic"])
def test_the_kernel_paths_filter_the_outside_interface(backend: str) -> None:
    p = placement(LAB, SITE, backend)
    assert (p.netns, p.interface, dict(p.options)) == ("xpro-labx-p1", "out1", {})


def test_afxdp_sends_passed_frames_to_the_service_side() -> None:
    p = placement(LAB, SITE, "afxdp")
    assert (p.netns, p.interface) == ("xpro-labx-p1", "out1")
    assert p.options["egress"] == "in1"
    assert p.options["egress_dst_mac"] == "02:00:00:00:00:03"


def test_offload_puts_the_reduced_program_in_front_of_the_full_one() -> None:
    p = placement(LAB, SITE, "offload")
    # the full program on the service's end of the proxy's link ...
    assert (p.netns, p.interface) == ("xpro-labx-svc", "svc1")
    # ... the reduced one on the interface every packet crosses before it
    assert p.options["offload_driver_mode"] is True
    assert p.options["offload_interface"] == "out1"
    assert p.options["offload_netns"] == "xpro-labx-p1"


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(LabError, match="native, generic, afxdp, offload"):
        placement(LAB, SITE, "dpdk")


def test_every_backend_is_a_choice_of_run_and_demo() -> None:
    for cmd in ("run", "demo"):
        out = CliRunner().invoke(lab, [cmd, "--help"])
        assert "--backend" in out.output
        for b in BACKENDS:
            assert b in out.output
