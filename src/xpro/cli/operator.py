"""The operator commands: ``run``, ``status``, ``top``, ``flows``, ``explain``,
``detach`` and ``config``.

Each is a thin layer over the library (:class:`xpro.daemon.Proxy`,
:mod:`xpro.daemon.control`, :mod:`xpro.config`): it parses, calls, prints.  Exit
codes: 0 success, 1 an operation failed, 2 a usage or configuration error,
3 no daemon listens on the control socket, 77 missing privilege; errors are
one line on stderr, never a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click

from xpro.cli._base import NumberRange
from xpro.config import (
    SCHEMA,
    InvalidConfig,
    click_options,
    dumps,
    load_config,
    overrides_from_click,
)
from xpro.core.text import printable, terminal_safe
from xpro.errors import DatapathError, XproError

__all__ = ["config", "detach", "explain", "flows", "run", "status", "top"]

#: Where the client commands look for the daemon: the schema's control.socket default.
_DEFAULT_SOCKET: str = next(o.default for o in SCHEMA if o.key == "control.socket")


def _socket_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--socket", "sock", metavar="PATH", envvar="XPRO_CONTROL_SOCKET",
        default=_DEFAULT_SOCKET, show_default=True,
        help="The daemon's control socket [XPRO_CONTROL_SOCKET].")(fn)


def _json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON (for scripts) instead of a table.")(fn)


def _ask(sock: str, op: str, **args: Any) -> Any:
    from xpro.daemon.control import request

    return request(sock, op, **args)


@contextlib.contextmanager
def _reading(sock: str, op: str, reply: Any, *, raw: bool = True) -> Iterator[None]:
    """Rendering the daemon's answer to ``op``: an answer this CLI cannot read
    (a daemon of another version, whose replies lack or change fields) is one
    clear error, not a traceback.  ``raw``: the command has ``--json``."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
        from xpro import __version__
        from xpro.core.text import printable

        theirs = reply.get("version") if isinstance(reply, dict) else None
        if theirs == __version__:
            raise  # the same version: a bug of this CLI, not a daemon of another
        runs = f"it runs xpro {printable(str(theirs), 40)}" if theirs else "its version is unknown"
        hint = "; --json prints its answer as it came" if raw else ""
        raise XproError(
            f"the daemon on {printable(sock)} answered {op!r} in a form this xpro "
            f"({__version__}) cannot read ({type(exc).__name__}: {printable(str(exc), 80)}); "
            f"{runs}: restart it with this version after an upgrade{hint}") from None


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


# ---------------------------------------------------------------------------
# xpro run
# ---------------------------------------------------------------------------


def _notify(state: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s, \
            contextlib.suppress(OSError):  # not under systemd after all
        s.sendto(state.encode(), addr)


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="XPRO_CONFIG",
              help="The TOML configuration file [XPRO_CONFIG].")
@click_options()
def run(config_path: str | None, **params: Any) -> None:
    """Run the proxy daemon: attach the filter and sync with the mesh (root).

    Attaches the XDP program to every --interface (native mode by default),
    runs the sync with the master store every sync period, turns the
    program's overload warnings into alerts, serves Prometheus metrics and
    the control socket.  SIGHUP (or `xpro config reload`) reads the
    configuration again and applies what changed with no state lost;
    SIGTERM stops: detach (default) or keep filtering on the pinned state
    (--on-exit keep).  A daemon killed outright leaves the filter running
    from its pins; the next `xpro run` adopts it.

    Every key of the configuration has a flag, an XPRO_* variable and a TOML
    key; flags win over the environment, which wins over the file.

    \b
    Examples:
      sudo xpro run --interface eth0 --store redis://10.0.0.5:6379
      sudo xpro run --config /etc/xpro/xpro.toml --backend auto
    """
    from xpro.daemon import Proxy
    from xpro.daemon.logs import setup_logging
    from xpro.lab.namespaces import require_root

    # Signals first: a SIGHUP that came before its handler would end the process.
    # The main loop sleeps in a read of a pipe that the interpreter's own C
    # handler writes to (signal.set_wakeup_fd) whichever thread the kernel
    # gave the signal to: a signal taken by the sync's thread once left the
    # main thread asleep, its Python handler never run.  The handlers only set
    # a flag (no lock: an Event's, held by the interrupted main thread itself,
    # could deadlock it), one per signal, so a stop is never lost to a reload.
    flags = {"term": False, "reload": False}
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)  # the C handler never blocks on a full pipe

    def on_term(signum: int, frame: FrameType | None) -> None:
        flags["term"] = True

    def on_hup(signum: int, frame: FrameType | None) -> None:
        flags["reload"] = True

    old_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    old = {signal.SIGHUP: signal.signal(signal.SIGHUP, on_hup)}
    try:
        overrides = overrides_from_click(params)

        def noted(cfg: Any) -> Any:
            for note in cfg.notes:  # at start, and at each reload
                logging.getLogger("xpro").warning("%s", note, extra={"event": "config_note"})
            return cfg

        def source() -> Any:
            return noted(load_config(config_path, overrides=overrides))

        config = load_config(config_path, overrides=overrides)
        setup_logging(config.log.format, config.log.level)
        noted(config)
        require_root("xpro run", "it loads, attaches and pins the XDP program, then drops "
                     "every capability; the systemd unit in packaging/ runs it so")
        old.update({s: signal.signal(s, on_term) for s in (signal.SIGTERM, signal.SIGINT)})
        def failed() -> None:  # from the failing thread: wake the loop below
            with contextlib.suppress(OSError):
                os.write(wake_w, b"!")

        proxy = Proxy(config, reload_source=source,
                      drop_capabilities=config.proxy.drop_capabilities, on_failure=failed)
        try:
            proxy.start()
            _notify("READY=1")
            while not flags["term"] and proxy.failed is None:
                os.read(wake_r, 64)  # a signal came; its handler runs right after
                if flags["term"] or not flags["reload"]:
                    continue
                flags["reload"] = False
                _notify("RELOADING=1")
                try:
                    proxy.reload()
                except XproError:
                    pass  # logged; the running configuration stays
                except Exception:  # never take the daemon down
                    logging.getLogger("xpro").exception(
                        "config reload failed; the running configuration stays",
                        extra={"event": "config_invalid"})
                _notify("READY=1")
            _notify("STOPPING=1")
        finally:
            proxy.stop()
        if proxy.failed is not None:
            # Exit 1: the systemd unit (Restart=on-failure) starts a new daemon,
            # which attaches the data path again (docs/operations.rst).
            raise DatapathError(f"{proxy.failed}; the daemon stopped so that its service "
                                "manager starts it again")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_fd)
        os.close(wake_r)
        os.close(wake_w)


# ---------------------------------------------------------------------------
# xpro status / top / flows / explain
# ---------------------------------------------------------------------------


def _fmt_rate(x: float) -> str:
    return f"{x:,.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines)


#: Characters of one string shown in a table; the rest is summarised.
_SHOWN = 200


def _safe(obj: Any) -> Any:
    """``obj`` (a reply of the daemon) with every string made :func:`printable`.

    Peer names, store and plugin errors reach the terminal through here: none
    can move the cursor, clear the screen or start a line of its own."""
    from xpro.core.text import printable

    if isinstance(obj, str):
        return printable(obj, _SHOWN)
    if isinstance(obj, dict):
        return {_safe(k): _safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_safe(v) for v in obj]
    return obj


def _fmt_offset(seconds: float | None) -> str:
    """A clock offset to the store's clock (``-``: not measured)."""
    return "-" if seconds is None else f"{seconds * 1000:+.1f} ms"


def format_status(st: dict[str, Any]) -> str:
    """``xpro status`` as text (every string escaped, :func:`_safe`)."""
    st = _safe(st)
    out = [f"proxy {st['proxy']}  (xpro {st['version']}, pid {st['pid']}, "
           f"up {st['uptime_s']:.0f} s, backend {st['backend']})"]
    if st.get("failed"):
        out.append(f"  DATA PATH STOPPED: {st['failed']} (the daemon exits; its service "
                   "manager starts it again)")
    for att in st.get("interfaces", []):
        extra = f", {att['why']}" if att.get("why") else ""
        out.append(f"  interface {att['interface']}: {att['mode']} XDP, "
                   f"program {att['prog_id']}{extra}")
    sync = st.get("sync", {})
    health = "ok" if sync.get("healthy") else f"DOWN ({sync.get('last_error', '')})"
    out.append(f"  store {st['store']['url']} mesh {st['store']['mesh']}: {health}, "
               f"{sync.get('rounds', 0)} rounds")
    t = st["thresholds"]
    out.append(f"  thresholds: T_F1 {t['t_f1']}/s  T_F2 {t['t_f2']}/s  T_W {t['t_w']}/s  "
               f"T_T1 {t['t_t1']} s  T_T2 {t['t_t2']} s  mode {st['mode']}")
    peers = sync.get("peers", {})
    if peers:
        out += ["", "mesh"]
        out.append(_table(["proxy", "W (packets/s)", "last seen", "alive", "clock offset"], [
            [name, _fmt_rate(p["workload"]), f"{p['age_s']:.1f} s ago",
             "yes" if p["alive"] else "NO", _fmt_offset(p.get("clock_offset_s"))]
            for name, p in peers.items()]))
    clock = sync.get("clock")
    if clock and clock.get("skew_s") is not None:
        skew = clock["skew_s"]
        flag = "  ALERT (over sync.clock_alert)" if abs(skew) > clock["alert_s"] else ""
        fix = (f", corrected by {clock['corrected_s']:+.3f} s" if clock["corrected_s"]
               else ", not corrected")
        out.append(f"  this proxy's clock: {skew:+.3f} s off the mesh's{fix}{flag}")
    if sync.get("quarantined"):
        out.append(f"  {sync['quarantined']} value(s) from the store quarantined in the "
                   "last round (docs/sync.rst)")
    counters = st.get("counters", {})
    if counters:
        out += ["", "verdicts"]
        out.append(_table(["reason", "packets", "bytes"], [
            [name, f"{c['packets']:,}", f"{c['bytes']:,}"] for name, c in counters.items()
            if c["packets"] or name in ("pass", "src_rate", "dst_rate", "dst_closed")]))
    closed = st.get("closed", {})
    if closed.get("destinations"):
        out += ["", f"closed to unknown sources: {closed['destinations']} destination(s); "
                    f"{closed['known_clients']} known clients in the table"
                + (f", {closed['known_overflow']} more did not fit (tables.known)"
                   if closed.get("known_overflow") else "")]
    if st.get("top_destinations"):
        out += ["", "top destinations"]
        out.append(_table(["destination", "packets/s", "count", "state", "known clients",
                           "dropped while closed"], [
            [d["dst"], _fmt_rate(d["rate_pps"]), str(d["count"]),
             _dst_state(d), str(d.get("known_clients", 0)),
             f"{d.get('closed_drops', 0):,}"] for d in st["top_destinations"]]))
    if st.get("top_sources"):
        out += ["", "top sources"]
        out.append(_flows_table(st["top_sources"]))
    if st.get("alerts"):
        out += ["", "alerts: " + ", ".join(f"{k} {v}" for k, v in sorted(st["alerts"].items()))]
    ev = st.get("events") or {}
    if ev.get("failed") or ev.get("lost"):
        out.append(f"overload warnings: {ev.get('seen', 0)} read, {ev.get('failed', 0)} could "
                   f"not be handled, {ev.get('lost') or 0} lost (the data path's buffer was "
                   "full)")
    failed = st.get("plugins_failed") or {}
    hooks = st.get("plugins") or {}
    if failed or hooks.get("dropped"):
        out.append("")
        out += [f"plugin {name}: {why}" for name, why in sorted(failed.items())]
        for kind in ("timeouts", "skipped", "errors"):
            if hooks.get(kind):
                out.append(f"plugin calls {kind}: " + ", ".join(
                    f"{n} {c}" for n, c in sorted(hooks[kind].items())))
        if hooks.get("dropped"):
            out.append("plugin notifications dropped (queue full): " + ", ".join(
                f"{h} {c}" for h, c in sorted(hooks["dropped"].items())))
    return "\n".join(out)


def _dst_state(d: dict[str, Any]) -> str:
    """A destination's state: open, over T_F2, or closed (for how long)."""
    if d.get("closed"):
        since = d.get("closed_since_s")
        return "CLOSED" + (f" {since:.0f} s" if since is not None else "")
    return "over T_F2" if d["over_t_f2"] else "open"


def _flows_table(flows: list[dict[str, Any]]) -> str:
    flows = _safe(flows)
    return _table(["source", "destination", "packets/s", "count", "here", "window",
                   "idle", "over T_F1"], [
        [f["src"], f["dst"], _fmt_rate(f["rate_pps"]), str(f["count"]),
         str(f["local_count"]), f"{f['window_s']:.1f} s", f"{f['idle_s']:.1f} s",
         "yes" if f["over_t_f1"] else ""] for f in flows])


def _markup_safe(obj: Any, escape: Callable[[str], str]) -> Any:
    if isinstance(obj, str):
        return escape(obj)
    if isinstance(obj, dict):
        return {_markup_safe(k, escape): _markup_safe(v, escape) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_markup_safe(v, escape) for v in obj]
    return obj


@click.command()
@_socket_option
@_json_option
def status(sock: str, as_json: bool) -> None:
    """This proxy and the mesh: every proxy's W and liveness, store health,
    top destinations and sources by rate, drops by reason.

    \b
    Examples:
      sudo xpro status
      sudo xpro status --json | jq .sync.peers
    """
    st = _ask(sock, "status")
    if as_json:
        _echo_json(st)
        return
    with _reading(sock, "status", st):
        text = format_status(st)
    click.echo(text)


@click.command()
@_socket_option
@click.option("--interval", type=NumberRange(0.1, 60.0), default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--count", "iterations", type=click.IntRange(1), default=None,
              help="Stop after this many refreshes (default: until Ctrl-C).")
@click.option("--limit", type=click.IntRange(1, 1000), default=15, show_default=True,
              help="Rows of sources shown.")
def top(sock: str, interval: float, iterations: int | None, limit: int) -> None:
    """A live view: verdict rates, the mesh, the busiest sources and destinations.

    \b
    Example:
      sudo xpro top --interval 0.5
    """
    from rich.console import Console, Group
    from rich.live import Live
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    prev: dict[str, int] = {}
    prev_t = time.monotonic()

    def render() -> Group:
        # one read of the flow table a refresh; strings escaped for the terminal and
        # for rich's markup ("[red]" in a peer name is text)
        st = _markup_safe(_safe(_ask(sock, "status", top=limit)), escape)
        with _reading(sock, "status", st, raw=False):
            return _render(st)

    def _render(st: dict[str, Any]) -> Group:
        nonlocal prev, prev_t
        flows = st.get("top_sources", [])
        now = time.monotonic()
        dt = max(now - prev_t, 1e-6)
        counts = {k: v["packets"] for k, v in st.get("counters", {}).items()}
        head = Table(title=f"xpro {st['proxy']} — {st['backend']} on "
                     f"{', '.join(a['interface'] for a in st['interfaces'])}", expand=True)
        for col in ("reason", "packets/s", "total"):
            head.add_column(col, justify="right" if col != "reason" else "left")
        for k, v in counts.items():
            if v or k in ("pass", "src_rate", "dst_rate"):
                head.add_row(k, _fmt_rate((v - prev.get(k, v)) / dt), f"{v:,}")
        prev, prev_t = counts, now
        mesh = Table(title="mesh", expand=True)
        for col in ("proxy", "W packets/s", "last seen", "alive"):
            mesh.add_column(col)
        for name, p in st.get("sync", {}).get("peers", {}).items():
            mesh.add_row(name, _fmt_rate(p["workload"]), f"{p['age_s']:.1f} s",
                         "yes" if p["alive"] else "[red]NO")
        src = Table(title="top sources", expand=True)
        for col in ("source", "destination", "packets/s", "count", "over T_F1"):
            src.add_column(col)
        for f in flows:
            src.add_row(f["src"], f["dst"], _fmt_rate(f["rate_pps"]), str(f["count"]),
                        "[red]yes" if f["over_t_f1"] else "")
        return Group(head, mesh, src)

    n = 0
    with Live(render(), console=console, refresh_per_second=4, transient=False) as live:
        while iterations is None or n < iterations - 1:
            time.sleep(interval)
            live.update(render())
            n += 1


@click.command()
@_socket_option
@_json_option
@click.option("--src", metavar="PREFIX",
              help="Only sources in this prefix (10.0.0.0/8), or the flow an address is "
                   "counted in (its source prefix).")
@click.option("--dst", metavar="PREFIX", help="Only destinations in this prefix.")
@click.option("--sort", type=click.Choice(["rate", "count", "recent", "age"]), default="rate",
              show_default=True, help="Order: highest rate, count, newest, longest window.")
@click.option("--limit", type=click.IntRange(0), default=20, show_default=True,
              help="At most this many rows (0: all, up to 100 000).")
def flows(sock: str, as_json: bool, src: str | None, dst: str | None, sort: str,
          limit: int) -> None:
    """The flow records of this proxy: count, window, rate, what was counted here.

    ``count`` is the mesh-wide count as of the last sync plus what this
    proxy counted since (``here``).

    \b
    Examples:
      sudo xpro flows --dst 192.0.2.10/32 --sort rate --limit 10
      sudo xpro flows --json | jq '.[] | select(.over_t_f1)'
    """
    from xpro.core.model import Prefix

    for what, prefix in (("--src", src), ("--dst", dst)):  # a typo is a usage error (2)
        if prefix is not None:
            try:
                Prefix.parse(prefix)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint=what) from None
    from xpro.daemon.control import MAX_ROWS

    rows = _ask(sock, "flows", src=src, dst=dst, sort=sort, limit=limit or None)
    if (not limit or limit > MAX_ROWS) and isinstance(rows, list) and len(rows) >= MAX_ROWS:
        click.echo(f"note: the first {len(rows)} flows, the most the daemon sends; narrow "
                   "with --src or --dst", err=True)
    if as_json:
        _echo_json(rows)
        return
    with _reading(sock, "flows", rows):
        text = _flows_table(rows) if rows else "no flows match"
    click.echo(text)


@click.command()
@_socket_option
@_json_option
@click.argument("src")
@click.argument("dst")
@click.option("--proto", type=click.Choice(["udp", "tcp"]), default="udp", show_default=True,
              help="The protocol of DST's port (addr+port destinations).")
def explain(sock: str, as_json: bool, src: str, dst: str, proto: str) -> None:
    """Why SRC -> DST is passed or dropped: the local and last-synced record,
    the window, the rates, and which check would fire on the next packet.

    \b
    Examples:
      sudo xpro explain 198.51.100.7 192.0.2.10
      sudo xpro explain 2001:db8::7 [2001:db8::10]:443 --proto tcp
    """
    from xpro.core.endpoint import parse_endpoint

    # Checked here too: a typo is a usage error (2), with or without a daemon.
    parse_endpoint(src, what="source")
    parse_endpoint(dst, what="destination")
    res = _ask(sock, "explain", src=src, dst=dst, proto=17 if proto == "udp" else 6)
    if as_json:
        if isinstance(res, dict):
            res.pop("text", None)
        _echo_json(res)
        return
    with _reading(sock, "explain", res):
        text = str(res["text"])
    click.echo(terminal_safe(text))


# ---------------------------------------------------------------------------
# xpro detach
# ---------------------------------------------------------------------------


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="XPRO_CONFIG",
              help="Take the pin directory from this configuration [XPRO_CONFIG].")
@click.option("--pin-dir", metavar="PATH", help="The pin directory to clean up "
              "(default: proxy.pin_dir of the configuration).")
@click.option("--interface", "interfaces", multiple=True, metavar="IF",
              help="Also remove any XDP program from this interface (repeatable).")
@click.option("--netns", metavar="NAME", help="The network namespace of --interface.")
def detach(config_path: str | None, pin_dir: str | None, interfaces: tuple[str, ...],
           netns: str | None) -> None:
    """Remove what a stopped or killed daemon left: its XDP links and pinned maps.

    Refuses while a daemon runs with that pin directory (stop it instead:
    it detaches itself), and a directory that is not on bpffs.  Removes only
    xpro's own pins; anything else in the directory stays, and is listed.

    \b
    Examples:
      sudo xpro detach
      sudo xpro detach --pin-dir /sys/fs/bpf/xpro-lab --interface eth1
    """
    from xpro.backends.xdp import detach_pinned
    from xpro.bpf.xdp import detach_xdp
    from xpro.daemon.proxy import RunLock
    from xpro.lab.namespaces import require_root

    require_root("xpro detach", "it removes the pinned XDP links and maps")
    if pin_dir is None:
        pin_dir = load_config(config_path).proxy.pin_dir
    done: list[str] = []
    if pin_dir:
        lock = RunLock("pin_dir", pin_dir)  # DaemonRunning if a daemon holds it
        try:
            done += detach_pinned(pin_dir, netns)
        finally:
            lock.release()
    for ifname in interfaces:
        ids = detach_xdp(ifname, netns=netns)
        done += [f"detached XDP program {i} from {ifname}" for i in ids]
    click.echo("\n".join(done) if done else f"nothing to detach ({pin_dir or 'no pin dir'} "
               "is empty)")


# ---------------------------------------------------------------------------
# xpro config show | check | reload
# ---------------------------------------------------------------------------


@click.group()
def config() -> None:
    """Show, check and reload the configuration."""


@config.command("show")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="XPRO_CONFIG",
              help="The TOML configuration file [XPRO_CONFIG].")
@click.option("--running", is_flag=True,
              help="Show the running daemon's configuration (via its control socket).")
@_socket_option
@_json_option
@click.option("--sources/--no-sources", default=True, show_default=True,
              help="Say where each value comes from (default, file, environment, flag).")
@click_options()
def config_show(config_path: str | None, running: bool, sock: str, as_json: bool,
                sources: bool, **params: Any) -> None:
    """Print the effective configuration: defaults < file < XPRO_* < flags.

    \b
    Examples:
      xpro config show --config /etc/xpro/xpro.toml
      XPRO_THRESHOLDS_T_F1=200 xpro config show --json
      sudo xpro config show --running
    """
    overrides = overrides_from_click(params)
    if running:
        res = _ask(sock, "config")
        with _reading(sock, "config", res, raw=False):
            out = json.dumps(res["values"], indent=2, sort_keys=True, default=str) \
                if as_json else str(res["toml"])
        click.echo(terminal_safe(out), nl=not out.endswith("\n"))
        return
    cfg = load_config(config_path, overrides=overrides)
    for w in cfg.warnings():
        click.echo(terminal_safe(f"warning: {w}"), err=True)
    if as_json:
        _echo_json(cfg.effective_config(with_sources=sources))
    else:
        click.echo(dumps(cfg, sources=sources), nl=False)


def _check_with_plugins(cfg: Any) -> None:
    """What only the installed plugins can judge, as the daemon will: the store
    URL (its scheme registered, the store's own parse of hosts, path and
    options; opened without connecting) and the destination parsers named.
    What ``xpro run`` would refuse is a problem of the file."""
    from xpro.plugins import destination_parsers, open_store

    problems = []
    where = cfg.sources.get("store.url", "default")
    try:
        open_store(cfg.store.url, mesh=cfg.store.mesh, options=cfg.store_options()).close()
    except XproError as exc:
        problems.append(f"{where}: store.url: {exc}")
    except Exception as exc:  # a third-party store's bug: still the file's problem to show
        problems.append(f"{where}: store.url: the store plugin failed on it: "
                        f"{type(exc).__name__}: {exc}")
    parsers = destination_parsers()
    # the afxdp section counts only for that backend (backend_options)
    missing = [n for n in cfg.afxdp.parsers if n not in parsers] \
        if cfg.proxy.backend == "afxdp" else []
    if missing:
        problems.append(f"{cfg.sources.get('afxdp.parsers', 'default')}: afxdp.parsers: no "
                        f"destination parser {', '.join(map(repr, missing))}; installed: "
                        f"{', '.join(parsers.names()) or 'none'} (see `xpro plugins`)")
    if problems:
        raise InvalidConfig(problems)


@config.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
@_json_option
def config_check(path: str, as_json: bool) -> None:
    """Validate a configuration file; exit 0 if it is valid, 2 with every problem if not.

    What is valid but unsafe (a store password over a plaintext URL) is
    printed as a warning; it does not change the exit code.  The file alone
    is checked: XPRO_* variables (the unit's Environment=) are not read, so
    check a change of them with `xpro config show` in their environment.

    \b
    Example:
      xpro config check /etc/xpro/xpro.toml && systemctl reload xpro
    """
    try:
        cfg = load_config(path, env={})
        _check_with_plugins(cfg)
    except InvalidConfig as exc:
        if as_json:
            _echo_json({"valid": False, "problems": list(exc.problems), "warnings": []})
            raise SystemExit(2) from None
        raise
    warnings = list(cfg.warnings())
    if as_json:
        _echo_json({"valid": True, "problems": [], "warnings": warnings})
    else:
        for w in warnings:
            click.echo(terminal_safe(f"warning: {w}"), err=True)
        click.echo(terminal_safe(f"{Path(path)}: valid"))


@config.command("reload")
@_socket_option
@_json_option
def config_reload(sock: str, as_json: bool) -> None:
    """Make the running daemon read its configuration again and apply it.

    Thresholds, modes and prefix lists change in the running program with
    no state lost; keys that need a restart (sizes, interfaces, the store)
    are listed and left as they are.  An invalid file changes nothing.

    \b
    Example:
      sudo xpro config reload
    """
    res = _ask(sock, "reload")
    if as_json:
        _echo_json(res)
        return
    with _reading(sock, "reload", res):
        lines = [f"{printable(c['key'])}: {printable(c['old'])} -> {printable(c['new'])} "
                 f"({'applied' if c['live'] else 'needs a restart, not applied'})"
                 for c in res["changes"]]
    click.echo(terminal_safe("\n".join(lines) or "reloaded: nothing changed"))


