"""The configuration schema: every option, its section, its rules; the Config value."""

from __future__ import annotations

import dataclasses
import hmac
import inspect
import socket
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, TypeVar

from xpro.config.kinds import (
    ENV_PREFIX,
    Boolean,
    Choice,
    FilePath,
    HostNames,
    Integer,
    Kind,
    Listen,
    Names,
    Number,
    Prefixes,
    Text,
    Url,
    _toml_str,
    mask_url,
    plaintext_password_warning,
    remember_secret,
    split_url,
)
from xpro.core.hostnames import COAP_PORT
from xpro.core.layout import (
    DST_ADDR,
    DST_ADDR_PORT,
    MALFORMED_DROP,
    MALFORMED_PASS,
    MODE_ENFORCE,
    MODE_MONITOR,
)
from xpro.core.model import NS_PER_S, R_DEN, V4_SPACE, FilterParams, Prefix, SyncParams
from xpro.core.params import KnownPolicy, Sizes

__all__ = [
    "RULES",
    "SCHEMA",
    "SECTIONS",
    "U32_MAX",
    "AfxdpConfig",
    "Change",
    "Config",
    "ControlConfig",
    "FilterConfig",
    "KnownConfig",
    "LogConfig",
    "MetricsConfig",
    "Option",
    "ProxyConfig",
    "Rule",
    "Secret",
    "StoreConfig",
    "SyncConfig",
    "TablesConfig",
    "ThresholdsConfig",
    "TomlValue",
    "option",
    "seconds_to_ns",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


#: A value as TOML holds it (what :meth:`Config.effective_config` returns).
TomlValue = str | int | float | bool | list[str]

U32_MAX = 2**32 - 1



# ---------------------------------------------------------------------------
# The schema
# ---------------------------------------------------------------------------

_SPEC = "xpro.config"


@dataclass(frozen=True)
class _Spec:
    kind: Kind[Any]
    default: Any
    doc: str
    why: str
    derive: Callable[[Mapping[str, Any]], Any] | None
    default_doc: str
    flag: str
    live: bool


def option(kind: Kind[Any], default: Any = None, *, doc: str, why: str = "",
           derive: Callable[[Mapping[str, Any]], Any] | None = None, default_doc: str = "",
           flag: str = "", live: bool = True) -> Any:
    """Declare one key of a section (the only place a key is declared).

    ``default`` is the value when no layer sets it; ``None`` means unset
    (optional paths).  ``derive`` computes a default from the other values
    (``default_doc`` then says how).  ``why`` justifies the default in the
    reference.  ``flag`` names the command-line flag (``--section-key`` if
    empty).  ``live`` says whether a reload applies it to a running daemon
    (else it takes a restart).
    """
    return field(metadata={_SPEC: _Spec(kind, default, inspect.cleandoc(doc),
                                        inspect.cleandoc(why), derive, default_doc, flag, live)})


def _seconds(lo: float, hi: float) -> Number:
    return Number(lo, hi, "s")


_PPS = Integer(0, U32_MAX, "packets/s")


class _Section:
    """Shared behaviour of the section classes: a masked repr."""

    def __repr__(self) -> str:
        name = type(self).__name__
        parts = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            spec: _Spec = f.metadata[_SPEC]
            v = getattr(self, f.name)
            parts.append(f"{f.name}={'None' if v is None else spec.kind.show(v)}")
        return f"{name}({', '.join(parts)})"


@dataclass(frozen=True, repr=False)
class ThresholdsConfig(_Section):
    """The paper's thresholds (Algorithm 1 and 2), under the paper's names.

    Times are seconds, rates are packets per second.  Every threshold can be
    changed at run time (``xpro config reload``): the program keeps its state.
    """

    t_t1: float = option(
        _seconds(0.01, 86400), 10.0, flag="--t-t1",
        doc="""T_T1, the reset time: a flow (or destination) idle for longer
        than this starts a new window; the sync also lets a proxy's window
        replace the master's when it starts more than T_T1 later.""",
        why="""Long enough that a client's pauses between bursts (think time,
        retries) stay in one window, short enough that a source is forgotten
        within seconds once it stops.  Ten sync periods: a window spans
        several syncs, so every proxy's count reaches it.""")
    t_t2: float = option(
        _seconds(0.01, 86400), 1.0, flag="--t-t2",
        doc="""T_T2, the per-source measuring time: a source's rate is judged
        only once its window is longer than this.""",
        why="""A burst is not a rate: a handshake and a request, or a page
        with its objects, come within a second and must not be judged as a
        flood.  One second is also hundreds of ticks of the coarse kernel
        clock (1-4 ms), so its resolution does not matter.""")
    t_t3: float = option(
        _seconds(0.01, 86400), 1.0, flag="--t-t3",
        doc="""T_T3, the per-destination measuring time: a destination's
        aggregate rate is judged only once its window is longer than this.""",
        why="As T_T2, for the sum over the destination's sources.")
    t_t4: float = option(
        _seconds(0.01, 86400), 5.0, flag="--t-t4",
        doc="""T_T4, the window limit of the sync: a merged window longer than
        this is shortened by the factor r (and its master count divided by
        r), so old packets weigh less and less.""",
        why="""Keeps the rate a moving measure of the last few seconds: a
        source that flooded and stopped is judged on what it does now within
        seconds.  Several sync periods, so shortening happens on a window
        that every proxy has contributed to.""")
    t_f1: int = option(
        _PPS, 100, flag="--t-f1",
        doc="""T_F1, the per-source limit: a source sending faster than this
        to one destination key (over a window longer than T_T2, summed over
        every proxy) is dropped.""",
        why="""A client of a request/response service (an HTTP API, DNS,
        CoAP) sends far fewer than 100 packets/s to one address, while one
        bot of a flood sends thousands.  Raise it for services that many
        users reach through one NAT address, or that serve bulk downloads:
        a client acknowledges about every second segment, so 100 packets/s
        caps a TCP download near 2 Mbit/s.""")
    t_f2: int = option(
        _PPS, 10_000, flag="--t-f2",
        doc="""T_F2, the per-destination limit: when the packets admitted to
        one destination key (from all sources, over a window longer than
        T_T3, summed over every proxy) exceed this rate, further packets to
        it are dropped.""",
        why="""Set it to what the service behind the proxies can take.  Ten
        thousand packets/s is a hundred clients at the full per-source rate;
        a spoofed flood of many sources, each under T_F1, is stopped here.""")
    t_f2_address: int = option(
        _PPS, derive=lambda v: v["thresholds.t_f2"], default_doc="thresholds.t_f2",
        flag="--t-f2-address",
        doc="""With ``filter.destination = "addr+port"``: the limit of an
        address's own aggregate, the packets admitted to every port and
        protocol of one address (fragments and portless protocols included),
        judged beside each (address, port, protocol) key's.  Over it, the
        address is closed to sources that are not known clients of any of its
        ports (docs/semantics.rst, "Address aggregates").  Unused with
        ``filter.destination = "addr"``.""",
        why="""T_F2 is what one destination can take, and with ``addr+port``
        keys the host behind one address takes the sum over its ports: a
        spoofed flood spread over random ports and protocols keeps every key
        under T_F2 but not the address.  Raise it for an address that serves
        several busy services.""")
    t_w: int = option(
        Integer(1, 10**12, "packets/s"), 1_000_000, flag="--t-w",
        doc="""T_W, the workload limit of a proxy: when the packets per second
        its program sees (dropped ones included) exceed it, the proxy raises
        an overload alert.""",
        why="""About a quarter of what one core drops with native XDP: well
        before a proxy saturates, the operator hears that it is taking a
        flood and can add proxies.""")
    r: float = option(
        Number(1.0, 1000.0, lo_open=True), 2.0, flag="--r",
        doc="""r, the shortening factor of the sync (> 1): a window longer than
        T_T4 keeps 1/r of its length, and the master count is divided by r.""",
        why="""Halving is the paper's example: history decays fast enough to
        forgive a source that stopped, and slowly enough that a steady flood
        stays over the limit.""")


@dataclass(frozen=True, repr=False)
class SyncConfig(_Section):
    """The sync (Algorithm 1): how often a proxy merges with the master store."""

    period: float = option(
        _seconds(0.05, 60), 1.0, flag="--sync-period",
        doc="""Seconds between two sync rounds.  Each round publishes this
        proxy's workload and merges the flows that changed.""",
        why="""A flood spread over many proxies is seen everywhere within about
        a second, and a round costs only the records that changed (a few
        hundred thousand a second on one Redis).""")
    ttl: float = option(
        _seconds(1, 7 * 86400), 60.0, flag="--sync-ttl",
        doc="""Seconds a record may stay idle before it is removed from the
        maps and the master.  Must exceed ``thresholds.t_t1`` and
        ``sync.period``.""",
        why="""An idle record older than T_T1 starts a new window anyway, so it
        only has to outlive T_T1; a minute keeps recent flows visible to
        ``xpro flows`` and ``xpro explain`` and keeps the master small.""")
    clock_alert: float = option(
        _seconds(0.01, 86400), 1.0, flag="--sync-clock-alert",
        doc="""Seconds this proxy's clock may be off the mesh's (measured each
        round against the store's clock, docs/sync.rst "Clocks") before a
        ``clock_skew`` alert is raised; one more when it is back within.""",
        why="""The sync corrects a skew from 50 ms up to a day, so filtering
        goes on; but NTP keeps clocks within milliseconds, and a second off
        says a time daemon has stopped or a clock was stepped: worth an
        operator's look before the skew grows past what is corrected.""")
    pull: str = option(
        Choice(("candidates", "all")), "candidates", flag="--sync-pull", live=False,
        doc="""What a round pulls besides the merge's replies: ``candidates``
        (flows near or over T_F1, the destinations' aggregates from the master,
        the known clients of closed destinations) or ``all`` (every record any
        proxy changed, as before).  Every built-in store serves candidates; a
        third-party store that does not is pulled in full (docs/sync.rst,
        "What a round pulls").""",
        why="""The full pull costs every proxy every other proxy's changes,
        O(P^2 x N) at the master; the candidates are what can change a verdict
        before the next round (docs/performance.rst).""")
    near: float = option(
        Number(0.0, 1.0, lo_open=True), 0.5, flag="--sync-near",
        doc="""From which fraction of T_F1 a flow is a candidate: its mesh-wide
        count over its window (at least T_T2) at least ``near`` x T_F1.""",
        why="""Half of T_F1: a flow pulled by every proxy has room to double
        before the next round (a flood that more than doubles per period is
        over T_F1 at the proxies that see it, which merge it); the lab's
        sweep (0.8-2 x T_F1) drops the same with it as with the full pull
        (docs/sync.rst).""")


@dataclass(frozen=True, repr=False)
class KnownConfig(_Section):
    """Known clients: who is still served while a destination is closed.

    A destination over T_F2 is *closed*: packets from sources that are not
    known clients are dropped before they reach a flow record.  A known client
    is a source whose flow to the destination was established before it
    closed (docs/semantics.rst, "Closed destinations and known clients").
    """

    min_age: float = option(
        _seconds(0.0, 3600), 2.0, flag="--known-min-age",
        doc="""Seconds a flow's window must span (first to last packet) for its
        source to become a known client of the destination.""",
        why="""Longer than a spoofed flood's sources live (each sends a packet
        or two), shorter than any real session.  Measured with the lab's
        spoofed flood (docs/evaluation.rst): clients that started two seconds
        before the flood were all kept; a spoofed /16 produced none.""")
    min_packets: int = option(
        Integer(1, 1 << 32, "packets"), 8, flag="--known-min-packets",
        doc="""Packets a flow's window must hold (mesh-wide) for its source to
        become a known client.""",
        why="""A source spoofed at random from a /16 or wider sends about one
        packet per window even at a million packets per second; eight packets
        over two seconds is a very slow real client.""")


@dataclass(frozen=True, repr=False)
class FilterConfig(_Section):
    """What the XDP program does with the packets (the Semantics page says how)."""

    mode: Literal["enforce", "monitor"] = option(
        Choice(("enforce", "monitor")), "enforce", flag="--mode",
        doc="""``enforce`` drops what breaks a limit; ``monitor`` counts it
        (``mon_src_rate``, ``mon_dst_rate``, ``mon_dst_closed``) and passes it.  Destination
        prefixes in ``monitor``/``enforce`` override it.""",
        why="""A filter is installed to filter.  Roll new thresholds out in
        monitor mode first, watch ``xpro status``, then switch.""")
    destination: Literal["addr", "addr+port"] = option(
        Choice(("addr", "addr+port")), "addr", flag="--destination",
        doc="""The destination key of a flow: the address, or the address plus
        protocol and port (one service behind the proxy).""",
        why="""A flood against any port of a host loads the same host; one key
        per address also keeps the tables small.""")
    malformed: Literal["drop", "pass"] = option(
        Choice(("drop", "pass")), "drop", flag="--malformed",
        doc="Truncated or malformed IP packets: drop (and count) or pass (and count).",
        why="No legitimate stack sends them, and the host behind would drop them anyway.")
    allow: tuple[str, ...] = option(
        Prefixes(), (), flag="--allow",
        doc="""Source prefixes that always pass, before any other rule (and win
        over ``deny``).""",
        why="Empty: an empty list costs nothing per packet.")
    deny: tuple[str, ...] = option(
        Prefixes(), (), flag="--deny",
        doc="Source prefixes that are always dropped (also in monitor mode).",
        why="Empty: an empty list costs nothing per packet.")
    source_prefix_v6: int = option(
        Integer(32, 128, "bits"), 64, flag="--source-prefix-v6",
        doc="""The bits of an IPv6 source its flows are keyed on: every source
        of one ``/64`` (the default) is one source to the per-source rule, and
        the allow and deny lists still match the full address.  ``128`` keys
        each address apart; ``56`` or ``48`` make a whole site one source.
        Set it alike on every proxy of a mesh (docs/semantics.rst, "Source
        prefixes").""",
        why="""A /64 is the smallest network an IPv6 host is given (RFC 4291,
        RFC 6177), and any host of it can send from all of its 2^64
        addresses: keyed by address, a flood that takes a new address per
        packet is never over T_F1.  Shorter than /32 (a whole provider) is
        refused.""")
    source_prefix_v4: int = option(
        Integer(16, 32, "bits"), 32, flag="--source-prefix-v4",
        doc="""The bits of an IPv4 source its flows are keyed on: ``32`` keys
        each address apart; ``24`` makes every source of a /24 one source to
        the per-source rule (against an attacker who holds a /24).  The allow
        and deny lists still match the full address.""",
        why="""An IPv4 host rarely holds more than its address, and many
        clients share a /24 behind carrier-grade NAT or a campus: one address
        is one source.  Shorter than /16 is refused.""")
    monitor: tuple[str, ...] = option(
        Prefixes(), (), flag="--monitor",
        doc="""Destination prefixes in monitor mode whatever ``mode`` says (a
        service being rolled out).""",
        why="Empty: ``mode`` applies to every destination.")
    enforce: tuple[str, ...] = option(
        Prefixes(), (), flag="--enforce",
        doc="Destination prefixes in enforce mode whatever ``mode`` says.",
        why="Empty: ``mode`` applies to every destination.")
    events: bool = option(
        Boolean(), True, flag="--events",
        doc="""Send overload warnings from the program to the daemon (ring
        buffer), which turns them into alerts.""",
        why="Operators want to hear of a flood; warnings are rate-limited by ``warn_period``.")
    warn_period: float = option(
        _seconds(0.01, 3600), derive=lambda v: v["sync.period"], default_doc="sync.period",
        flag="--warn-period",
        doc="""At most one overload warning per flow (or destination) per this
        many seconds, so an attack cannot become an event storm.""",
        why="""One warning per flow per sync round: each round can report what
        it saw, no more.""")


@dataclass(frozen=True, repr=False)
class TablesConfig(_Section):
    """Sizes of the kernel maps, fixed when the program loads (a restart changes them)."""

    flows: int = option(
        Integer(1024, 1 << 27, "flows"), 1 << 20, flag="--tables-flows", live=False,
        doc="""Entries of the flow table (an LRU hash; the sync's side tables
        are sized alike).  A spoofed flood evicts old flows; it never blocks
        the program.  The memory is taken when the program loads.""",
        why="""A million flows cover the active sources of a large service and
        cost about 400 MB of kernel memory with the sync's tables (measured
        on this build: 160 bytes per entry in the flow table).  Size it above
        the number of active flows: a thrashing LRU costs about six times a
        hit.""")
    destinations: int = option(
        Integer(64, 1 << 24, "destinations", power_of_two=True), 1 << 16,
        flag="--tables-destinations", live=False,
        doc="Entries of the per-destination aggregate table (a power of two).",
        why="""Sixty-five thousand destination keys: a /16 of protected
        addresses, or many services in ``addr+port`` mode.""")
    prefixes: int = option(
        Integer(1, 1 << 20, "prefixes"), 16384, flag="--tables-prefixes", live=False,
        doc="""Entries of each prefix table (allow, deny, destination policy):
        the most prefixes each list may hold.""",
        why="Room for large imported deny lists; an LPM trie grows only as it is filled.")
    known: int = option(
        Integer(1024, 1 << 24, "known clients"), 1 << 18, flag="--tables-known", live=False,
        doc="""Entries of the known-client table (a hash apart from the flow
        table, so a flood cannot evict it): the established (source,
        destination) pairs that keep being served while their destination is
        closed.""",
        why="""A quarter of a million established clients across the protected
        destinations, about 25 MB of kernel memory.  When it is full the
        clients beyond it are not known: they are counted
        (``xpro_known_clients_overflow``) and treated like new sources.""")
    known_filters: int = option(
        Integer(1, 1 << 16, "filter slots", power_of_two=True), 4096,
        flag="--tables-known-filters", live=False,
        doc="""Slots of the filters of known sources (2 KiB each, allocated at
        load; a power of two).  Each destination key's filter is in the slot
        its key hashes to: while a destination is closed, the filter spares
        most spoofed sources the lookup in the known-client table
        (docs/performance.rst, "The known sources' filter").""",
        why="""8 MiB: room for four thousand destination keys with known
        clients before two share a slot.  A shared slot is still correct (its
        filter holds both destinations' sources); it only lets more spoofed
        sources through to the lookup.""")


@dataclass(frozen=True, repr=False)
class StoreConfig(_Section):
    """The master store the proxies share.

    The password is not a key: it comes from ``XPRO_STORE_PASSWORD`` or from
    the file named by ``password_file``, and is never shown.
    """

    url: str = option(
        Url(), "memory://", flag="--store", live=False,
        doc="""Where the master records live: ``memory://`` (in this process),
        ``redis://HOST:PORT``, ``rediss://`` (TLS), ``redis+cluster://``
        (``rediss+cluster://`` with TLS), ``etcd://HOST:PORT[,HOST:PORT...]``,
        ``etcds://`` (TLS).""",
        why="""Runs out of the box as a single proxy; a mesh of proxies needs a
        shared store (Redis for large meshes).""")
    mesh: str = option(
        Text(r"[A-Za-z0-9_.-]{1,64}", "1-64 letters, digits, '_', '.' or '-'"), "xpro",
        flag="--mesh", live=False,
        doc="""The mesh's name: the namespace of its records in the store, so
        several meshes can share one store.""",
        why="One mesh per store is the common case.")
    username: str | None = option(
        Text(r"[A-Za-z0-9_.@+-]{1,128}", "1-128 letters, digits, '_', '.', '@', '+' or '-'"),
        flag="--store-username", live=False,
        doc="""The user this proxy authenticates as (a Redis ACL user, an etcd
        user).  ``xpro store init --proxy NAME`` creates one per proxy with
        only the rights the sync needs on this mesh's keys.  A user name in
        ``url`` wins over it.""",
        why="""Unset: Redis's ``default`` user, etcd's ``root`` when a password
        is set.  Give every proxy its own user (docs/security.rst).""")
    password_file: str | None = option(
        FilePath(must_exist=True), flag="--store-password-file", live=False,
        doc="""A file holding the store password (one line, read at load).
        ``XPRO_STORE_PASSWORD`` wins over it.""",
        why="Unset: no password.")
    tls_ca: str | None = option(
        FilePath(must_exist=True), flag="--store-tls-ca", live=False,
        doc="CA certificates (PEM) to verify the store's certificate with.",
        why="Unset: the system's CA store.")
    tls_cert: str | None = option(
        FilePath(must_exist=True), flag="--store-tls-cert", live=False,
        doc="Client certificate (PEM), with ``tls_key``.",
        why="Unset: no client certificate.")
    tls_key: str | None = option(
        FilePath(must_exist=True), flag="--store-tls-key", live=False,
        doc="Private key (PEM) of ``tls_cert``.",
        why="Unset: no client certificate.")
    tls_verify: bool = option(
        Boolean(), True, flag="--store-tls-verify", live=False,
        doc="Verify the store's certificate and host name (TLS URLs).",
        why="Turning it off lets anyone on the path impersonate the store.")


_PROXY_NAME = Text(r"[A-Za-z0-9_.-]{1,64}", "1-64 letters, digits, '_', '.' or '-'")


@dataclass(frozen=True, repr=False)
class ProxyConfig(_Section):
    """This proxy: its name in the mesh, where it attaches, how it stops."""

    name: str = option(
        _PROXY_NAME, derive=lambda v: socket.gethostname().split(".")[0],
        default_doc="the short host name", flag="--name", live=False,
        doc="This proxy's name in the mesh (heartbeats, ``xpro status``).  Unique per mesh.",
        why="One daemon per proxy host, so the host name is unique and recognisable.")
    interfaces: tuple[str, ...] = option(
        Names(), (), flag="--interface", live=False,
        doc="Interfaces to attach the XDP program to (the command line repeats ``--interface``).",
        why="Empty: the daemon needs to be told where the traffic comes in.")
    backend: Literal["native", "generic", "offload", "afxdp", "auto"] = option(
        Choice(("native", "generic", "offload", "afxdp", "auto")), "native",
        flag="--backend", live=False,
        doc="""The data path: ``native`` (driver XDP), ``generic`` (skb XDP),
        ``offload`` (SmartNIC), ``afxdp`` (userspace), ``auto`` (the best the
        interface supports).""",
        why="""Native XDP drops at the driver, twice as fast as generic here;
        an interface without it gives a clear error rather than a silent
        slow path (choose ``auto`` to fall back).""")
    pin_dir: str = option(
        FilePath(off="nothing pinned"), "/sys/fs/bpf/xpro", flag="--pin-dir", live=False,
        doc="""The bpffs directory where maps and links are pinned, so a
        restarted daemon adopts the running filter and its state.  ``""``
        pins nothing: the filter goes with the process.""",
        why="The conventional bpffs mount point, one directory for xpro.")
    netns: str = option(
        Text(r"[A-Za-z0-9_.-]{0,64}", '"" or a network namespace name (/var/run/netns/NAME)'),
        "", flag="--netns", live=False,
        doc="""The network namespace of the interfaces (a name under
        ``/var/run/netns``).  The daemon switches only its network namespace,
        not its mount namespace, so bpffs and the control socket stay where
        they are.""",
        why="Empty: the daemon's own namespace, the usual case on a proxy host.")
    drop_capabilities: bool = option(
        Boolean(), True, flag="--drop-capabilities", live=False,
        doc="""Once every interface is attached, ``xpro run`` drops every
        capability the backend no longer needs (``native``, ``generic``,
        ``auto`` and ``afxdp``: all of them; ``offload`` keeps CAP_NET_ADMIN,
        and CAP_SYS_ADMIN with ``netns``, to detach its reduced program; a
        plugin's backend keeps everything), from the bounding set too
        (docs/security.rst).""",
        why="""A daemon that parses packets and talks to the network should not
        hold the rights to load kernel code or reconfigure the host once it no
        longer needs them.  Turn it off only to find out whether a problem is
        caused by it.""")
    on_exit: Literal["detach", "keep"] = option(
        Choice(("detach", "keep")), "detach", flag="--on-exit",
        doc="""On a clean stop (SIGTERM): ``detach`` removes the program and its
        pins; ``keep`` leaves it filtering from the pinned state for the next
        daemon to adopt.""",
        why="""Stopping a service should undo it: a filter left alone has no
        sync and no one watching.  Use ``keep`` for restarts and upgrades
        under attack (a killed daemon always keeps filtering).""")


@dataclass(frozen=True, repr=False)
class MetricsConfig(_Section):
    """The Prometheus text endpoint."""

    listen: str = option(
        Listen(), "127.0.0.1:9477", flag="--metrics-listen", live=False,
        doc='Address of the metrics endpoint (``"HOST:PORT"``); ``""`` turns it off.',
        why="""Localhost only: the daemon runs as root, so exposing it is a
        choice; a local Prometheus agent or a proxy can scrape it.""")


@dataclass(frozen=True, repr=False)
class ControlConfig(_Section):
    """The daemon's control socket (``xpro config reload``, ``xpro status``)."""

    socket: str = option(
        FilePath(max_len=107, off="no control socket"), "/run/xpro/control.sock",
        flag="--control-socket", live=False,
        doc="""Path of the unix socket the CLI talks to the daemon through (root
        only); ``""`` turns it off.""",
        why="The runtime directory systemd gives the service; a root-only socket.")


@dataclass(frozen=True, repr=False)
class AfxdpConfig(_Section):
    """The ``afxdp`` backend: the userspace data path (see the AF_XDP page)."""

    egress: str = option(
        Text(r"[^\s/:]{0,15}",
             '"" or an interface name (at most 15 bytes, no space, \'/\' or \':\')',
             max_bytes=15), "", flag="--afxdp-egress",
        live=False,
        doc="""The interface passed packets leave by (the service side); required
        with ``backend = "afxdp"``, in the same network namespace as the
        interfaces.""",
        why="No default: it is where the service is, which only the operator knows.")
    egress_dst_mac: str = option(
        Text(r"(|[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5})", '"" or a MAC address', "MAC"), "",
        flag="--afxdp-egress-dst-mac", live=False,
        doc="""The MAC address forwarded frames are sent to on the egress interface
        (the service or the next hop).""",
        why="Empty: frames keep their destination MAC address.")
    parsers: tuple[str, ...] = option(
        Names("parser name", "PARSER", '["coap"]'), (), flag="--afxdp-parser", live=False,
        doc="""Destination parsers (plugins, ``xpro plugins`` lists them) that take
        a packet's destination from its payload, such as ``coap`` (Proxy-Uri,
        Uri-Host).""",
        why="None: destinations are the IP addresses, as in the kernel program.")
    coap_names: tuple[str, ...] = option(
        HostNames(COAP_PORT), (), flag="--afxdp-coap-name",
        doc="""The CoAP targets (``host`` or ``host:port``) that get a destination
        key of their own with the ``coap`` parser.  A request naming any other
        target keys on its IP destination, so a flood that invents a target
        name per request stays one destination.  Names are kept in canonical
        form: ``"Victim.Example."`` is ``"victim.example"``, and a port of 5683
        is left out.""",
        why="""None: a target the operator did not name cannot be told from one a
        bot invented; list the services behind the proxy (required with the
        ``coap`` parser).""")
    xdp_mode: Literal["native", "generic"] = option(
        Choice(("native", "generic")), "native", flag="--afxdp-xdp-mode", live=False,
        doc="The XDP mode of the small program that redirects packets to the sockets.",
        why="Native where the driver has it; generic for the others.")


@dataclass(frozen=True, repr=False)
class LogConfig(_Section):
    """The daemon's log: one event per line on standard error."""

    format: Literal["json", "text"] = option(
        Choice(("json", "text")), "json", flag="--log-format",
        doc="""``json``: one JSON object per line (``ts``, ``level``, ``logger``,
        ``event`` and the event's fields), for a log pipeline; ``text``: the
        same events for a human reading a terminal.""",
        why="The journal and log shippers keep JSON fields searchable.")
    level: Literal["debug", "info", "warning", "error"] = option(
        Choice(("debug", "info", "warning", "error")), "info", flag="--log-level",
        doc="The least severe level logged.",
        why="Attach, reload, store outages and alerts are info or above; rounds are debug.")


class Change(NamedTuple):
    """One key that differs between two configs (values as shown, secrets masked)."""

    key: str
    old: str
    new: str
    live: bool

    def __str__(self) -> str:
        return f"{self.key}: {self.old} -> {self.new}"


class Secret:
    """A string that never shows itself (repr, str, logs)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        remember_secret(value)  # and never in a log line or a message either

    def reveal(self) -> str:
        """The secret itself: hand it to the client that needs it, nowhere else."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


_MODES = {"enforce": MODE_ENFORCE, "monitor": MODE_MONITOR}
_DST_MODES = {"addr": DST_ADDR, "addr+port": DST_ADDR_PORT}
_MALFORMED = {"drop": MALFORMED_DROP, "pass": MALFORMED_PASS}


def seconds_to_ns(seconds: float) -> int:
    """Seconds to integer nanoseconds, exactly as written (0.1 -> 100000000)."""
    return int((Decimal(repr(float(seconds))) * NS_PER_S).to_integral_value())


_SECTION_META = {"xpro.section": True}


@dataclass(frozen=True, repr=False)
class Config:
    """An effective configuration: immutable, validated, with where each value came from.

    Build it with :func:`load_config` (or :func:`default_config`).
    ``sources`` maps each key (``"thresholds.t_f1"``) to where its value came
    from; ``path`` is the file read, if any.  Neither takes part in equality.
    """

    thresholds: ThresholdsConfig = field(metadata=_SECTION_META)
    sync: SyncConfig = field(metadata=_SECTION_META)
    known: KnownConfig = field(metadata=_SECTION_META)
    filter: FilterConfig = field(metadata=_SECTION_META)
    tables: TablesConfig = field(metadata=_SECTION_META)
    store: StoreConfig = field(metadata=_SECTION_META)
    proxy: ProxyConfig = field(metadata=_SECTION_META)
    metrics: MetricsConfig = field(metadata=_SECTION_META)
    control: ControlConfig = field(metadata=_SECTION_META)
    log: LogConfig = field(metadata=_SECTION_META)
    afxdp: AfxdpConfig = field(metadata=_SECTION_META)
    store_password: Secret | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    path: Path | None = field(default=None, compare=False)
    #: What loading noticed but did not refuse (:meth:`warnings`).
    notes: tuple[str, ...] = field(default=(), compare=False)

    # --- values ------------------------------------------------------------

    def get(self, key: str) -> Any:
        """The value of a dotted key (``"thresholds.t_f1"``)."""
        section, _, name = key.partition(".")
        if key not in _BY_KEY:
            raise KeyError(key)
        return getattr(getattr(self, section), name)

    def effective_config(self, *, with_sources: bool = False) -> dict[str, dict[str, Any]]:
        """The values as a TOML-able dict, ``{section: {key: value}}``.

        Unset optional keys are left out, the store password is never
        included and a password in the store URL is masked.  With
        ``with_sources`` each value becomes ``{"value": ..., "source": ...}``.
        """
        out: dict[str, dict[str, Any]] = {}
        for opt in SCHEMA:
            v = self.get(opt.key)
            if v is None:
                continue
            tv = opt.kind.to_toml(v)
            if isinstance(opt.kind, Url):
                tv = mask_url(typing.cast(str, tv))
            entry: Any = {"value": tv, "source": self.sources.get(opt.key, "")} \
                if with_sources else tv
            out.setdefault(opt.section, {})[opt.name] = entry
        return out

    def to_toml(self, *, sources: bool = True) -> str:
        """The effective config as TOML text, each value's source as a comment."""
        from xpro.config.loader import dumps  # the loader builds on this module

        return dumps(self, sources=sources)

    def diff(self, other: Config) -> tuple[Change, ...]:
        """The keys whose values differ from ``self`` to ``other``, in schema order."""
        out: list[Change] = []
        for opt in SCHEMA:
            a, b = self.get(opt.key), other.get(opt.key)
            if a != b:
                out.append(Change(opt.key, opt.show(a), opt.show(b), opt.live))
        if self.store_password != other.store_password:
            out.append(Change("store.password", "***" if self.store_password else "(unset)",
                              "***" if other.store_password else "(unset)", False))
        return tuple(out)

    def __repr__(self) -> str:
        body = ", ".join(repr(getattr(self, s)) for s in SECTIONS)
        pw = ", store_password=Secret('***')" if self.store_password else ""
        return f"Config({body}{pw})"

    def warnings(self) -> tuple[str, ...]:
        """What is allowed but unsafe or likely a mistake (``xpro config check``
        and ``config show`` print it).

        :attr:`notes` (``xpro run`` logs them): an ``XPRO_*`` variable that is
        ignored but a typo away from a configuration variable; TLS files with
        a plaintext URL.  Then a store password sent over a plaintext URL
        (``redis://``, ``etcd://``; the stores log it when they connect).
        """
        try:
            in_url = split_url(self.store.url).password is not None
        except ValueError:
            in_url = False
        w = plaintext_password_warning(self.store.url,
                                       in_url or self.store_password is not None)
        return (*self.notes, *_list_warnings(self.filter.allow, self.filter.deny),
                *((w,) if w else ()))

    # --- runtime objects ------------------------------------------------------

    def filter_params(self) -> FilterParams:
        """What the kernel program reads: times in ns, modes as layout constants."""
        t, f = self.thresholds, self.filter
        policy: dict[Prefix, int] = {Prefix.parse(p): MODE_MONITOR for p in f.monitor}
        policy.update({Prefix.parse(p): MODE_ENFORCE for p in f.enforce})
        return FilterParams(
            t_t1=seconds_to_ns(t.t_t1), t_t2=seconds_to_ns(t.t_t2), t_t3=seconds_to_ns(t.t_t3),
            t_f1=t.t_f1, t_f2=t.t_f2,
            t_f2_address=None if t.t_f2_address == t.t_f2 else t.t_f2_address,
            warn_period=seconds_to_ns(f.warn_period),
            mode=_MODES[f.mode], dst_mode=_DST_MODES[f.destination],
            malformed_policy=_MALFORMED[f.malformed], events=f.events,
            allow=frozenset(Prefix.parse(p) for p in f.allow),
            deny=frozenset(Prefix.parse(p) for p in f.deny),
            dst_policy=policy,
            source_prefix_v4=f.source_prefix_v4, source_prefix_v6=f.source_prefix_v6,
        )

    def sync_params(self) -> SyncParams:
        """What the merge uses: T_T1 and T_T4 in ns, r as a fixed-point factor."""
        t = self.thresholds
        return SyncParams.from_factor(seconds_to_ns(t.t_t1), seconds_to_ns(t.t_t4), t.r)

    def backend_options(self) -> dict[str, Any]:
        """The settings of the configured backend that come from its own section."""
        if self.proxy.backend != "afxdp":
            return {}
        a = self.afxdp
        out: dict[str, Any] = {"xdp_mode": a.xdp_mode, "parsers": list(a.parsers),
                               "coap_names": list(a.coap_names)}
        if a.egress:
            out["egress"] = a.egress
        if a.egress_dst_mac:
            out["egress_dst_mac"] = a.egress_dst_mac
        return out

    def sizes(self) -> Sizes:
        """The kernel map sizes (:class:`xpro.datapath.xdp.Sizes`)."""
        return Sizes(flows=self.tables.flows, dsts=self.tables.destinations,
                     prefixes=self.tables.prefixes, known=self.tables.known,
                     known_filters=self.tables.known_filters)

    def known_policy(self) -> KnownPolicy:
        """Who becomes a known client of a destination (:class:`xpro.sync.known.KnownPolicy`)."""
        return KnownPolicy(min_age=seconds_to_ns(self.known.min_age),
                           min_packets=self.known.min_packets, capacity=self.tables.known)

    @property
    def period_ns(self) -> int:
        """``sync.period`` in ns (for :class:`xpro.sync.Syncer`)."""
        return seconds_to_ns(self.sync.period)

    @property
    def ttl_ns(self) -> int:
        """``sync.ttl`` in ns (for :class:`xpro.sync.Syncer`)."""
        return seconds_to_ns(self.sync.ttl)

    @property
    def store_url(self) -> str:
        """The store URL as configured (it may hold a password: do not log it)."""
        return self.store.url

    def store_options(self) -> dict[str, Any]:
        """Options for :func:`xpro.stores.base.open_store` (only those that are set).

        The password goes as a :class:`Secret` (``password``), so a printed
        options mapping never shows it.
        """
        s = self.store
        opts: dict[str, Any] = {}
        if s.username is not None:
            opts["username"] = s.username
        if self.store_password is not None:
            opts["password"] = self.store_password
        for name, value in (("ca", s.tls_ca), ("cert", s.tls_cert), ("key", s.tls_key),
                            ("password_file", s.password_file)):
            if value is not None:
                opts[name] = value
        if not s.tls_verify:
            opts["verify"] = False
        return opts


# --- the schema as data ------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One key of the schema, as the loader and the docs see it."""

    section: str
    name: str
    kind: Kind[Any]
    default: Any
    doc: str
    why: str
    derive: Callable[[Mapping[str, Any]], Any] | None
    default_doc: str
    flag: str
    live: bool

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}_{self.name.upper()}"

    def show(self, value: Any) -> str:
        """A value of this key for messages and logs (secrets masked)."""
        return "(unset)" if value is None else self.kind.show(value)


@dataclass(frozen=True)
class Rule:
    """A rule between keys: ``check`` returns None when it holds, else what is wrong."""

    keys: tuple[str, ...]
    check: Callable[[Mapping[str, Any]], str | None]
    doc: str


def _build_schema() -> tuple[tuple[Option, ...], dict[str, str]]:
    hints = typing.get_type_hints(Config)
    options: list[Option] = []
    sections: dict[str, str] = {}
    for sf in dataclasses.fields(Config):
        if not sf.metadata.get("xpro.section"):
            continue
        cls = hints[sf.name]
        sections[sf.name] = inspect.cleandoc(cls.__doc__ or "")
        for f in dataclasses.fields(cls):
            spec: _Spec = f.metadata[_SPEC]
            flag = spec.flag or f"--{sf.name}-{f.name}".replace("_", "-")
            options.append(Option(sf.name, f.name, spec.kind, spec.default, spec.doc, spec.why,
                                  spec.derive, spec.default_doc, flag, spec.live))
    return tuple(options), sections


#: Every key, in the order of the reference.
SCHEMA: tuple[Option, ...]
#: Section name -> its description.
SECTIONS: Mapping[str, str]
SCHEMA, _sections = _build_schema()
SECTIONS = MappingProxyType(_sections)
_BY_KEY: dict[str, Option] = {o.key: o for o in SCHEMA}
_BY_ENV: dict[str, Option] = {o.env: o for o in SCHEMA}
_SECTION_CLASSES: dict[str, type[Any]] = {
    f.name: typing.get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config) if f.metadata.get("xpro.section")
}


def _gt(a: str, b: str, why: str) -> Rule:
    def check(v: Mapping[str, Any]) -> str | None:
        return None if v[a] > v[b] else f"{a} must exceed {b}: {why}"
    return Rule((a, b), check, f"``{a}`` > ``{b}``: {why}")


def _ge(a: str, b: str, why: str) -> Rule:
    def check(v: Mapping[str, Any]) -> str | None:
        return None if v[a] >= v[b] else f"{a} must be at least {b}: {why}"
    return Rule((a, b), check, f"``{a}`` ≥ ``{b}``: {why}")


def _r_above_one(v: Mapping[str, Any]) -> str | None:
    if round(v["thresholds.r"] * R_DEN) > R_DEN:
        return None
    return (f"thresholds.r is applied as a multiple of 1/{R_DEN}: it must be at least "
            f"{1 + 1 / R_DEN:.4f} to shorten anything")


def _list_warnings(allow: Sequence[str], deny: Sequence[str]) -> tuple[str, ...]:
    """What the allow and deny lists say that the filter will not do as written."""
    out = []
    a = [(p, Prefix.parse(p)) for p in allow]
    for d in deny:
        dp = Prefix.parse(d)
        hit = [(p, ap) for p, ap in a if ap.holds(dp) and ap != dp]
        if hit:
            p, ap = hit[0]
            out.append(f"filter.deny {_toml_str(d)} lies inside filter.allow "
                       f"{_toml_str(p)}: the allow list is checked first, so this entry "
                       "drops nothing"
                       + (" but IPv6 packets from IPv4-mapped sources (::ffff:a.b.c.d), "
                          "which the allow list never passes" if ap.is_v4 else ""))
    for name, items in (("filter.allow", allow), ("filter.deny", deny)):
        for p in items:
            pp = Prefix.parse(p)
            if not pp.is_v4 and pp.holds(V4_SPACE):
                out.append(f"{name} {_toml_str(p)} also holds every IPv4 source: the filter "
                           "keeps IPv4 addresses as ::ffff:a.b.c.d (for IPv6 only, write "
                           "the IPv6 prefixes you mean, such as 2000::/3)")
    return tuple(out)


def _disjoint(a: str, b: str, why: str) -> Rule:
    def check(v: Mapping[str, Any]) -> str | None:
        both = [p for p in v[a] if Prefix.parse(p) in {Prefix.parse(q) for q in v[b]}]
        if not both:
            return None
        return f"{', '.join(_toml_str(p) for p in both)} in both {a} and {b}: {why}"
    return Rule((a, b), check, f"no prefix in both ``{a}`` and ``{b}``: {why}")


def _fits(lists: tuple[str, ...]) -> Rule:
    def check(v: Mapping[str, Any]) -> str | None:
        n = sum(len(v[k]) for k in lists)
        if n <= v["tables.prefixes"]:
            return None
        return (f"{' + '.join(lists)} hold {n} prefixes, more than tables.prefixes: "
                "raise tables.prefixes")
    names = " and ".join(f"``{k}``" for k in lists)
    verb = "have" if len(lists) > 1 else "has"
    return Rule((*lists, "tables.prefixes"), check,
                f"{names} {'together ' if len(lists) > 1 else ''}{verb} at most "
                "``tables.prefixes`` entries: each list is a kernel table of that size")


def _tls_pair(v: Mapping[str, Any]) -> str | None:
    if (v["store.tls_cert"] is None) == (v["store.tls_key"] is None):
        return None
    return "store.tls_cert and store.tls_key go together: set both or neither"


def _coap_names(v: Mapping[str, Any]) -> str | None:
    if v["proxy.backend"] != "afxdp" or "coap" not in v["afxdp.parsers"] or v[
            "afxdp.coap_names"]:
        return None
    return ("the coap parser keys only the targets listed in afxdp.coap_names (any other "
            "request keys on its IP destination): list the CoAP services behind this proxy")


def _afxdp_egress(v: Mapping[str, Any]) -> str | None:
    if v["proxy.backend"] != "afxdp" or v["afxdp.egress"]:
        return None
    return ('proxy.backend = "afxdp" sends the frames it passes out of afxdp.egress: name '
            "the interface on the service's side")


def _etcd_verify(v: Mapping[str, Any]) -> str | None:
    try:
        scheme = split_url(v["store.url"]).scheme
    except ValueError:
        return None
    if v["store.tls_verify"] or not scheme.startswith("etcd"):
        return None
    return ("store.tls_verify = false is for rediss:// only: the etcd store always checks the "
            "server's certificate; give the CA that signed it with store.tls_ca")


#: Rules between keys, checked after every value is valid.
RULES: tuple[Rule, ...] = (
    _gt("sync.ttl", "thresholds.t_t1",
        "an idle record must outlive its window, or the sync drops flows that still count"),
    _gt("sync.ttl", "sync.period", "a record must live through at least one sync round"),
    _ge("thresholds.t_t4", "sync.period",
        "a window is shortened at a sync, so T_T4 below the period shortens every round"),
    Rule(("thresholds.r",), _r_above_one,
         f"``thresholds.r`` ≥ 1 + 1/{R_DEN} (it is applied in steps of 1/{R_DEN})"),
    _disjoint("filter.allow", "filter.deny", "allow wins, so the deny entry would never apply"),
    _disjoint("filter.monitor", "filter.enforce", "a destination has one mode"),
    _fits(("filter.allow",)),
    _fits(("filter.deny",)),
    _fits(("filter.monitor", "filter.enforce")),
    Rule(("store.tls_cert", "store.tls_key"), _tls_pair,
         "``store.tls_cert`` and ``store.tls_key`` are set together"),
    Rule(("proxy.backend", "afxdp.parsers", "afxdp.coap_names"), _coap_names,
         "with ``backend = \"afxdp\"`` and the ``coap`` parser, ``afxdp.coap_names`` lists "
         "at least one target: the parser keys only those"),
    Rule(("proxy.backend", "afxdp.egress"), _afxdp_egress,
         "with ``backend = \"afxdp\"``, ``afxdp.egress`` names the interface passed frames "
         "leave by"),
    Rule(("store.url", "store.tls_verify"), _etcd_verify,
         "``store.tls_verify = false`` only with ``rediss://``: the etcd store always "
         "verifies the server"),
)
