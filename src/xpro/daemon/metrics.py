"""The Prometheus endpoint of a proxy (prometheus-client, a custom collector).

Values are read when Prometheus scrapes, from the program's per-CPU counters
and the sync's status, so nothing on the packet path or in the sync loop
pays for metrics.  Each proxy has a registry of its own (several proxies can
run in one process, as the lab does).

=============================================  =======  ====================================
metric                                         type     what
=============================================  =======  ====================================
``xpro_packets_total{reason}``                 counter  packets by verdict reason (pass,
                                                        src_rate...)
``xpro_bytes_total{reason}``                   counter  bytes by verdict reason
``xpro_dropped_packets_total``                 counter  packets dropped, every reason
``xpro_flows``                                 gauge    flows the sync tracks on this proxy
``xpro_sync_rounds_total``                     counter  completed sync rounds
``xpro_sync_errors_total``                     counter  failed sync rounds (store
                                                        unreachable, ...)
``xpro_sync_round_seconds``                    gauge    duration of the last round
``xpro_sync_last_success_age_s``               gauge    seconds since the last completed
                                                        round
``xpro_sync_quarantined_total``                counter  values from the store out of bounds,
                                                        dropped (docs/sync.rst)
``xpro_sync_caps_total{cap}``                  counter  rounds that reached a bound: pull,
                                                        mirror, peers, workload
``xpro_closed_destinations``                   gauge    destinations closed to unknown
                                                        sources (docs/semantics.rst)
``xpro_known_clients``                         gauge    entries of the known-client table
``xpro_known_clients_overflow``                gauge    known clients that did not fit in
                                                        the table at the last round
``xpro_store_up``                              gauge    1 while the master store answers
``xpro_datapath_up``                           gauge    0 once the data path stopped for
                                                        good (an AF_XDP loop that failed;
                                                        the daemon exits)
``xpro_workload_pps{proxy}``                   gauge    W of every proxy of the mesh
                                                        (heartbeats)
``xpro_peer_age_seconds{proxy}``               gauge    age of each proxy's last heartbeat
``xpro_clock_offset_seconds{proxy}``           gauge    each proxy's offset to the store's
                                                        clock (docs/sync.rst, "Clocks")
``xpro_clock_skew_seconds``                    gauge    this proxy's clock behind the mesh's
``xpro_clock_correction_seconds``              gauge    the shift the sync applies to it
``xpro_alerts_total{kind}``                    counter  alerts raised by kind
``xpro_config_reloads_total``                  counter  configuration reloads applied
``xpro_events_total``                          counter  overload warnings read from the
                                                        data path
``xpro_events_failed_total``                   counter  warnings whose handling raised
``xpro_events_lost_total``                     counter  warnings the data path dropped, its
                                                        ring buffer or queue full (only if
                                                        it counts them)
``xpro_info{...}``                             gauge    1, with version, proxy, backend
                                                        labels
``xpro_backend_NAME_total{...}``               counter  a backend's own counters (offload:
                                                        the reduced program's verdicts per
                                                        interface; afxdp: the loop's
                                                        frames, docs/afxdp.rst)
``xpro_plugin_queue_depth``                    gauge    plugin notifications waiting for
                                                        delivery
``xpro_plugin_notifications_dropped_total``    counter  notifications dropped, the queue
                                                        being full, by ``hook``
``xpro_plugin_timeouts_total{plugin}``         counter  hook calls that took longer than
                                                        the limit
``xpro_plugin_calls_skipped_total{plugin}``    counter  calls not made: the plugin was
                                                        still in a call that timed out
``xpro_plugin_errors_total{plugin}``           counter  hook calls that raised
=============================================  =======  ====================================

Label values that come from outside -- proxy names from heartbeats, plugin
names -- pass through :func:`xpro.core.text.printable` (no control
characters; the client library escapes only ``\\``, ``"`` and newlines).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from xpro import __version__
from xpro.core.alert import KINDS
from xpro.core.layout import Reason
from xpro.core.model import NS_PER_S
from xpro.core.params import tai_now
from xpro.core.text import printable
from xpro.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from xpro.daemon.api import ProxyView
    from xpro.plugins.host import HookStats

__all__ = ["MetricsServer", "ProxyCollector", "exposition", "parse_listen", "serve"]

log = logging.getLogger(__name__)

#: The endpoint's server (``shutdown()`` stops it).
MetricsServer = WSGIServer

#: Connections the endpoint serves at once; beyond, a new one is closed at
#: once (docs/operations.rst, "Isolation").  A scraper needs one.
MAX_CLIENTS = 8
#: Seconds a connection may stay silent before it is closed.
CLIENT_TIMEOUT_S = 5.0
#: Seconds a connection may last in all, however it trickles its request.
CLIENT_DEADLINE_S = 15.0


class ProxyCollector(Collector):
    """Reads one :class:`~xpro.daemon.api.ProxyView` at scrape time."""

    def __init__(self, proxy: ProxyView) -> None:
        self.proxy = proxy

    def collect(self) -> Iterator[Metric]:
        p = self.proxy
        info = GaugeMetricFamily("xpro_info", "xpro build and proxy identity",
                                 labels=["version", "proxy", "backend"])
        info.add_metric([__version__, p.name, p.config.proxy.backend], 1)
        yield info
        yield from _plugin_metrics(p.plugins.hook_stats())
        if p.backend is None:
            return
        yield GaugeMetricFamily("xpro_datapath_up", "0 once the data path stopped filtering "
                                "for good (an AF_XDP loop that failed), 1 before",
                                value=0.0 if p.failed else 1.0)
        packets = CounterMetricFamily("xpro_packets", "Packets by verdict reason",
                                      labels=["reason"])
        nbytes = CounterMetricFamily("xpro_bytes", "Bytes by verdict reason", labels=["reason"])
        counts = p.filter.counters()
        for r in Reason:
            packets.add_metric([r.name.lower()], float(counts[r][0]))
            nbytes.add_metric([r.name.lower()], float(counts[r][1]))
        yield packets
        yield nbytes
        dropping = [Reason.DENY, Reason.SRC_RATE, Reason.DST_RATE, Reason.DST_CLOSED]
        if p.config.filter.malformed == "drop":
            dropping.append(Reason.MALFORMED)
        yield CounterMetricFamily("xpro_dropped_packets", "Packets dropped, every reason",
                                  value=float(sum(counts[r][0] for r in dropping)))
        loop, syncer = p.loop, p.syncer
        flows = int(syncer.mirror.alive.sum()) if syncer is not None else 0
        yield GaugeMetricFamily("xpro_flows", "Flows the sync tracks on this proxy",
                                value=flows)
        rounds = loop.status.rounds if loop is not None else 0
        yield CounterMetricFamily("xpro_sync_rounds", "Completed sync rounds", value=rounds)
        yield CounterMetricFamily("xpro_sync_errors", "Failed sync rounds",
                                  value=loop.status.failed_total if loop is not None else 0)
        last = loop.status.last if loop is not None else None
        yield GaugeMetricFamily("xpro_sync_round_seconds", "Duration of the last sync round",
                                value=last.seconds if last is not None else 0.0)
        if loop is not None and loop.status.last_ok:
            yield GaugeMetricFamily("xpro_sync_last_success_age_s",
                                    "Seconds since the last completed sync round",
                                    value=(tai_now() - loop.status.last_ok) / NS_PER_S)
        known = syncer.known if syncer is not None else None
        yield GaugeMetricFamily("xpro_closed_destinations",
                                "Destinations closed to unknown sources (over T_F2)",
                                value=len(known.closed) if known is not None else 0)
        yield GaugeMetricFamily("xpro_known_clients",
                                "Entries of the known-client table (clients and heavy sources)",
                                value=len(known.keys) if known is not None else 0)
        yield GaugeMetricFamily("xpro_known_clients_overflow",
                                "Known clients that did not fit in the table at the last round",
                                value=known.overflow if known is not None else 0)
        yield CounterMetricFamily("xpro_sync_quarantined", "Values from the store out of bounds, "
                                  "dropped", value=syncer.quarantined_total if syncer else 0)
        caps = CounterMetricFamily("xpro_sync_caps", "Sync rounds that reached a bound",
                                   labels=["cap"])
        for cap, n in (syncer.caps_reached.items() if syncer is not None else ()):
            caps.add_metric([cap], float(n))
        yield caps
        up = loop is not None and loop.syncer is not None and loop.status.healthy
        yield GaugeMetricFamily("xpro_store_up", "1 while the master store answers",
                                value=1.0 if up else 0.0)
        w = GaugeMetricFamily("xpro_workload_pps", "Workload W of each proxy (packets/s)",
                              labels=["proxy"])
        age = GaugeMetricFamily("xpro_peer_age_seconds", "Age of each proxy's last heartbeat",
                                labels=["proxy"])
        off = GaugeMetricFamily("xpro_clock_offset_seconds", "Each proxy's offset to the "
                                "store's clock (store minus proxy), as it published it",
                                labels=["proxy"])
        if last is not None:
            for name, peer in sorted(last.peers.items()):
                w.add_metric([printable(name)], peer.workload)
                age.add_metric([printable(name)],
                               max(0.0, (last.started - peer.last_seen) / NS_PER_S))
                if peer.offset is not None:
                    off.add_metric([printable(name)], peer.offset / NS_PER_S)
        yield w
        yield age
        yield off
        if last is not None and last.skew_measured is not None:
            yield GaugeMetricFamily("xpro_clock_skew_seconds", "How far this proxy's clock "
                                    "is behind the mesh's (negative: ahead), measured",
                                    value=last.skew_measured / NS_PER_S)
            yield GaugeMetricFamily("xpro_clock_correction_seconds", "What the sync adds to "
                                    "this proxy's timestamps", value=last.skew / NS_PER_S)
        alerts = CounterMetricFamily("xpro_alerts", "Alerts raised by kind", labels=["kind"])
        for kind in KINDS:
            alerts.add_metric([kind], float(p.alert_counts[kind]))
        yield alerts
        yield CounterMetricFamily("xpro_config_reloads", "Configuration reloads applied",
                                  value=float(p.reloads))
        yield CounterMetricFamily("xpro_events", "Overload warnings read from the data path",
                                  value=float(p.events_seen))
        yield CounterMetricFamily("xpro_events_failed", "Overload warnings whose handling "
                                  "raised", value=float(p.events_failed))
        lost = p.events_lost()
        if lost is not None:
            yield CounterMetricFamily("xpro_events_lost", "Overload warnings the data path "
                                      "dropped: its ring buffer or queue was full",
                                      value=float(lost))
        families: dict[str, CounterMetricFamily] = {}
        for sample in p.backend.metrics():
            fam = families.get(sample.name)
            if fam is None:
                fam = families[sample.name] = CounterMetricFamily(
                    f"xpro_backend_{sample.name}", sample.help, labels=sorted(sample.labels))
            fam.add_metric([sample.labels[k] for k in sorted(sample.labels)], sample.value)
        yield from families.values()


def _plugin_metrics(hs: HookStats) -> Iterator[Metric]:
    yield GaugeMetricFamily("xpro_plugin_queue_depth",
                            "Plugin notifications waiting for delivery", value=hs.queued)
    for name, help_, by, counts in (
            ("notifications_dropped", "Plugin notifications dropped: the queue was full",
             "hook", hs.dropped),
            ("timeouts", "Plugin hook calls that took longer than the limit", "plugin",
             hs.timeouts),
            ("calls_skipped", "Plugin hook calls not made: still in a call that timed out",
             "plugin", hs.skipped),
            ("errors", "Plugin hook calls that raised", "plugin", hs.errors)):
        fam = CounterMetricFamily(f"xpro_plugin_{name}", help_, labels=[by])
        for label, n in sorted(counts.items()):
            fam.add_metric([printable(label)], float(n))
        yield fam


def _registry(proxy: ProxyView) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ProxyCollector(proxy))
    return reg


def exposition(proxy: ProxyView) -> str:
    """The exposition text, as the endpoint serves it."""
    return generate_latest(_registry(proxy)).decode()


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"metrics.listen {listen!r}: write HOST:PORT")
    return host.strip("[]"), int(port)


class _Handler(WSGIRequestHandler):
    """A request: silent, closed after :data:`CLIENT_TIMEOUT_S` without a byte
    and after :data:`CLIENT_DEADLINE_S` in all (one byte every few seconds
    would otherwise hold a slot for ever)."""

    def setup(self) -> None:
        self.request.settimeout(CLIENT_TIMEOUT_S)
        self._deadline = threading.Timer(CLIENT_DEADLINE_S, self._cut)
        self._deadline.daemon = True
        self._deadline.start()
        super().setup()

    def _cut(self) -> None:
        with contextlib.suppress(OSError):
            self.request.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        self._deadline.cancel()
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingWSGIServer):
    """A thread a connection, at most :data:`MAX_CLIENTS` of them.

    prometheus_client's own server takes every connection, each with a
    thread that waits for ever: a local user's idle connections then held
    the daemon's threads and file descriptors until it could open no socket
    (the store's, the control socket's clients)."""

    daemon_threads = True
    # Those beyond the slots are accepted, to be closed at once, rather than
    # left to the kernel's retries (socketserver's backlog is 5).
    request_queue_size = 64

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        #: Connections closed unserved (every slot taken, or no thread).
        self.refused = 0
        self._warned = -60.0
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self._refuse(request, f"{MAX_CLIENTS} connections at once, the most served")
            return
        try:
            super().process_request(request, client_address)
        except Exception as exc:  # no thread to be had: the connection goes, the server stays
            self.slots.release()
            self._refuse(request, f"no thread for a connection ({exc})")

    def _refuse(self, request: Any, why: str) -> None:
        self.refused += 1
        self.shutdown_request(request)
        now = time.monotonic()
        if now - self._warned >= 60:  # a warning a minute at most
            self._warned = now
            log.warning("metrics: %s; closed %d connections so far (a scraper needs one: "
                        "is something holding them open?)", why, self.refused)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that resets or times out: not worth a traceback in the journal.
        log.debug("metrics: a connection from %s failed", client_address, exc_info=True)


def serve(proxy: ProxyView, listen: str) -> MetricsServer:
    """Start the endpoint on ``listen``; returns the server (``shutdown()`` stops it)."""
    host, port = parse_listen(listen)
    try:
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        cls = type("MetricsServer", (_Server,), {"address_family": family})
        server: _Server = make_server(host, port, make_wsgi_app(_registry(proxy)), cls,
                                      handler_class=_Handler)
    except OSError as exc:
        raise ConfigError(f"metrics.listen {listen}: cannot listen ({exc.strerror}); choose "
                          "another port with --metrics-listen, or \"\" to turn metrics off"
                          ) from None
    threading.Thread(target=server.serve_forever, name="xpro-metrics", daemon=True).start()
    return server
