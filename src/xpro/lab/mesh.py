"""What filters the lab's traffic: the xpro mesh, or a baseline, on every proxy.

* :class:`XproMesh`: one :class:`xpro.daemon.Proxy` per proxy namespace, all
  in this process, on the data path ``backend`` (:func:`placement` says
  where each backend sits in the lab; ``native`` by default).  With
  ``sync=True`` they share one master store (``memory://`` by default: the
  same URL in one process is one master); with ``sync=False``
  each proxy gets a master of its own, so it runs exactly the same program
  and sync loop but never hears of the others (each proxy alone).
* :class:`DaemonMesh`: one ``xpro run`` process per proxy, against a server
  store (the lab starts ``redis-server`` or ``etcd`` itself), with maps and
  links pinned, so a daemon can be SIGKILLed and restarted mid-attack.
* :class:`HashlimitMesh`: no XDP; an iptables ``hashlimit`` rule per proxy
  (per source and destination, above T_F1, in the raw table), the per-proxy
  rate limit an operator would set up without xpro.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xpro.errors import XproError
from xpro.lab.namespaces import run_in_netns
from xpro.lab.topology import Lab, ProxySite

__all__ = [
    "BACKENDS",
    "DaemonMesh",
    "HashlimitMesh",
    "LabError",
    "Mesh",
    "Placement",
    "Thresholds",
    "XproMesh",
    "placement",
]

#: The data paths the lab runs the mesh on (``xpro lab run --backend``).
BACKENDS = ("native", "generic", "afxdp", "offload")


class LabError(XproError):
    """The lab could not build, start or measure something."""


class LabOptionError(LabError):
    """The lab's options cannot hold together (a usage error: exit 2); raised
    before anything is built."""

    exit_code = 2


@dataclass(frozen=True)
class Thresholds:
    """The thresholds the lab's proxies run with (the config's names and units)."""

    t_f1: int = 100
    t_f2: int = 10_000
    t_t1: float = 10.0
    t_t2: float = 1.0
    t_t3: float = 1.0
    t_t4: float = 5.0
    period: float = 0.5

    def overrides(self) -> dict[str, str]:
        return {
            "thresholds.t_f1": str(self.t_f1), "thresholds.t_f2": str(self.t_f2),
            "thresholds.t_t1": str(self.t_t1), "thresholds.t_t2": str(self.t_t2),
            "thresholds.t_t3": str(self.t_t3), "thresholds.t_t4": str(self.t_t4),
            "sync.period": str(self.period),
        }

    def flags(self) -> list[str]:
        return ["--t-f1", str(self.t_f1), "--t-f2", str(self.t_f2), "--t-t1", str(self.t_t1),
                "--t-t2", str(self.t_t2), "--t-t3", str(self.t_t3), "--t-t4", str(self.t_t4),
                "--sync-period", str(self.period)]


@dataclass(frozen=True)
class Placement:
    """Where one proxy's data path sits in the lab: the proxy's config and backend options."""

    netns: str
    interface: str
    options: Mapping[str, Any]


def placement(lab: Lab, site: ProxySite, backend: str) -> Placement:
    """Where ``backend`` runs for the proxy ``site`` of ``lab``.

    * ``native``, ``generic``: the full program on the proxy's outside
      interface, in that mode; what passes is forwarded by the proxy's kernel.
    * ``afxdp``: the redirect program on the outside interface; Algorithm 2
      runs in this process and sends passed frames out of the proxy's inside
      interface, addressed to the service's end of it (``egress``,
      ``egress_dst_mac``): the lab's forwarding is otherwise the kernel's.
    * ``offload``: there is no offload NIC here, so the backend's driver-mode
      emulation: the reduced program (driver mode) on the proxy's outside
      interface, the full program on the service's end of the proxy's inside
      link.  Every packet of the proxy crosses the reduced program first, as
      it would cross the NIC before the host; what the reduced program drops
      the full program never sees.
    """
    if backend in ("native", "generic"):
        return Placement(site.netns, site.outside, {})
    if backend == "afxdp":
        return Placement(site.netns, site.outside,
                         {"egress": site.inside, "egress_dst_mac": site.svc_mac,
                          "xdp_mode": "native"})
    if backend == "offload":
        return Placement(lab.svc_ns, site.svc_if,
                         {"offload_driver_mode": True, "offload_interface": site.outside,
                          "offload_netns": site.netns})
    raise LabError(f"backend: one of {', '.join(BACKENDS)}, not {backend!r}")


class Mesh:
    """A data path on every proxy of a lab: start, read counters, stop."""

    name = ""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def counters(self) -> dict[str, int]:
        """Packets by verdict reason, summed over the proxies (empty if unknown)."""
        return {}

    def __enter__(self) -> Mesh:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class XproMesh(Mesh):
    """In-process proxies, one per site (see the module docstring)."""

    lab: Lab
    thresholds: Thresholds
    store: str = ""
    sync: bool = True
    backend: str = "native"
    mesh: str = "lab"
    extra: Mapping[str, str] = field(default_factory=dict)
    proxies: list[Any] = field(default_factory=list)

    @property
    def name(self) -> str:  # type: ignore[override]
        return "sync" if self.sync else "no-sync"

    def start(self) -> None:
        from xpro.config import load_config
        from xpro.daemon import Proxy

        base = self.store or f"memory://{self.lab.tag}-{os.urandom(3).hex()}"
        try:
            for site in self.lab.proxies:
                where = placement(self.lab, site, self.backend)
                url = base if self.sync or not base.startswith("memory://") else (
                    f"{base}-{site.name}")
                mesh = self.mesh if self.sync else f"{self.mesh}-{site.name}"
                cfg = load_config(None, env={}, overrides={
                    "proxy.name": site.name, "proxy.netns": where.netns,
                    "proxy.interfaces": where.interface, "proxy.backend": self.backend,
                    "proxy.pin_dir": "", "store.url": url, "store.mesh": mesh,
                    "metrics.listen": "", "control.socket": "",
                    # the afxdp placement's options are configuration keys too
                    **({f"afxdp.{k}": v for k, v in where.options.items()}
                       if self.backend == "afxdp" else {}),
                    **self.thresholds.overrides(), **dict(self.extra),
                })
                self.proxies.append(Proxy(cfg, backend_options=where.options).start())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        while self.proxies:
            p = self.proxies.pop()
            with contextlib.suppress(Exception):
                p.stop(keep=False)

    def counters(self) -> dict[str, int]:
        """By the full program's reasons; on ``offload`` also what the reduced
        program dropped in front of it (``offload_flow``, ``offload_dst``),
        which the full program never saw."""
        total: dict[str, int] = {}
        for p in self.proxies:
            for reason, v in p.counters().items():
                total[reason] = total.get(reason, 0) + v["packets"]
            if self.backend == "offload" and p.backend is not None:
                from xpro.backends.offload import OffReason

                for arr in p.backend.counters().values():
                    for key, r in (("offload_flow", OffReason.FLOW),
                                   ("offload_dst", OffReason.DST)):
                        total[key] = total.get(key, 0) + int(arr[r, 0])
        return total


def _iptables(args: list[str]) -> None:
    exe = shutil.which("iptables")
    if exe is None:
        raise LabError("iptables is not installed (Debian: apt install iptables)")
    r = subprocess.run([exe, "-w", *args], capture_output=True, text=True, check=False)
    if r.returncode:
        raise LabError(f"iptables {' '.join(args)}: {r.stderr.strip()}")


def _ip6tables(args: list[str]) -> None:
    exe = shutil.which("ip6tables")
    if exe is None:
        raise LabError("ip6tables is not installed (Debian: apt install iptables)")
    r = subprocess.run([exe, "-w", *args], capture_output=True, text=True, check=False)
    if r.returncode:
        raise LabError(f"ip6tables {' '.join(args)}: {r.stderr.strip()}")


@dataclass
class HashlimitMesh(Mesh):
    """iptables ``hashlimit`` per proxy: drop a (source, destination) above T_F1 there."""

    lab: Lab
    thresholds: Thresholds
    name = "hashlimit"
    _added: list[ProxySite] = field(default_factory=list)

    def _rule(self, site: ProxySite, family: int) -> list[str]:
        burst = max(1, int(self.thresholds.t_f1 * self.thresholds.t_t2))
        return ["PREROUTING", "-i", site.outside, "-m", "hashlimit",
                "--hashlimit-name", f"xl{family}{site.index}",
                "--hashlimit-mode", "srcip,dstip",
                "--hashlimit-above", f"{self.thresholds.t_f1}/second",
                "--hashlimit-burst", str(burst), "-j", "DROP"]

    def start(self) -> None:
        try:
            for site in self.lab.proxies:
                self._added.append(site)
                run_in_netns(site.netns, _iptables, ["-t", "raw", "-A", *self._rule(site, 4)])
                run_in_netns(site.netns, _ip6tables, ["-t", "raw", "-A", *self._rule(site, 6)])
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        # The rules go with the namespaces; flush now so a reused lab starts clean.
        while self._added:
            site = self._added.pop()
            with contextlib.suppress(Exception):
                run_in_netns(site.netns, _iptables, ["-t", "raw", "-F"])
            with contextlib.suppress(Exception):
                run_in_netns(site.netns, _ip6tables, ["-t", "raw", "-F"])


def xpro_command() -> list[str]:
    """How to run the ``xpro`` command of this installation."""
    exe = Path(sys.executable).with_name("xpro")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "xpro"]


@dataclass
class DaemonMesh(Mesh):
    """One ``xpro run`` process per proxy, against a server store, with pins."""

    lab: Lab
    thresholds: Thresholds
    store: str
    mesh: str = "lab"
    log_dir: Path | None = None
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    name = "daemons"

    def socket(self, site: ProxySite) -> str:
        return f"/run/xpro/{self.lab.tag}-{site.name}.sock"

    def argv(self, site: ProxySite) -> list[str]:
        return [*xpro_command(), "run", "--netns", site.netns, "--interface", site.outside,
                "--store", self.store, "--mesh", self.mesh, "--name", site.name,
                "--backend", "native", "--pin-dir", str(site.pin_dir),
                "--control-socket", self.socket(site), "--metrics-listen", "",
                *self.thresholds.flags()]

    def launch(self, site: ProxySite) -> None:
        log = subprocess.DEVNULL if self.log_dir is None else open(  # noqa: SIM115
            self.log_dir / f"{site.name}.log", "ab")
        try:
            self.procs[site.index] = subprocess.Popen(
                self.argv(site), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # type: ignore[union-attr]

    def wait_attached(self, site: ProxySite, timeout: float = 20.0) -> None:
        """Wait until the daemon of ``site`` answers on its control socket."""
        deadline = time.monotonic() + timeout
        sock = Path(self.socket(site))
        while time.monotonic() < deadline:
            p = self.procs.get(site.index)
            if p is not None and p.poll() is not None:
                raise LabError(f"xpro run for {site.name} exited ({p.returncode})")
            if sock.exists() and (site.pin_dir / f"link-{site.outside}").exists():
                return
            time.sleep(0.1)
        raise LabError(f"xpro run for {site.name} did not attach within {timeout} s")

    def start(self) -> None:
        try:
            for site in self.lab.proxies:
                self.launch(site)
            for site in self.lab.proxies:
                self.wait_attached(site)
        except BaseException:
            self.stop()
            raise

    def kill(self, site: ProxySite) -> None:
        """SIGKILL the daemon of ``site`` (its filter goes on from the pins)."""
        p = self.procs.pop(site.index)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)

    def restart(self, site: ProxySite) -> None:
        self.launch(site)

    def stop(self) -> None:
        for p in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self.procs.clear()
        from xpro.backends.xdp import detach_pinned

        for site in self.lab.proxies:
            detach_pinned(site.pin_dir)
            with contextlib.suppress(FileNotFoundError):
                Path(self.socket(site)).unlink()
