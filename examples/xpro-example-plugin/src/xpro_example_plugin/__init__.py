"""An example xpro plugin: two alert sinks and a command.

* ``XPRO_ALERT_FILE=/path``: every alert is appended to that file as one line
  of JSON.
* ``XPRO_WEBHOOK_URL=http://...``: every alert is POSTed there as JSON
  (``XPRO_WEBHOOK_TIMEOUT`` seconds, default 2).
* ``xpro example-alerts``: prints the alerts in ``XPRO_ALERT_FILE``.

Each setting is read when an alert arrives, so the daemon's environment
decides.  A sink that fails raises: xpro records the failure against this
plugin (``xpro plugins``) and still calls the other sinks.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import click

from xpro.hooks.specs import hookimpl

if TYPE_CHECKING:
    from xpro.core.alert import Alert

__version__ = "0.1.0"

_FILE_LOCK = threading.Lock()


def alert_file() -> Path | None:
    """The JSON-lines file from ``XPRO_ALERT_FILE``, or None."""
    value = os.environ.get("XPRO_ALERT_FILE", "")
    return Path(value) if value else None


def write_alert(path: Path, alert: Alert) -> None:
    """Append ``alert`` to ``path`` as one JSON line."""
    line = alert.to_json() + "\n"
    with _FILE_LOCK, path.open("a", encoding="utf-8") as f:
        f.write(line)


def post_alert(url: str, alert: Alert, timeout: float) -> None:
    """POST ``alert`` as JSON to ``url``; raises on a non-2xx answer."""
    req = urllib.request.Request(
        url,
        data=alert.to_json().encode(),
        headers={"Content-Type": "application/json", "User-Agent": "xpro-example-plugin"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        resp.read()


@hookimpl
def xpro_alert(alert: Alert) -> None:
    path = alert_file()
    if path is not None:
        write_alert(path, alert)
    url = os.environ.get("XPRO_WEBHOOK_URL", "")
    if url:
        post_alert(url, alert, float(os.environ.get("XPRO_WEBHOOK_TIMEOUT", "2")))


@hookimpl
def xpro_add_cli_commands(cli: click.Group) -> None:
    cli.add_command(example_alerts)


@click.command(name="example-alerts")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON lines.")
@click.option("--kind", help="Only alerts of this kind (store_down, src_overload, ...).")
def example_alerts(as_json: bool, kind: str | None) -> None:
    """Print the alerts the example sink wrote to XPRO_ALERT_FILE.

    \b
    Example:
      XPRO_ALERT_FILE=/var/log/xpro-alerts.jsonl xpro example-alerts --kind src_overload
    """
    path = alert_file()
    if path is None:
        raise click.UsageError("set XPRO_ALERT_FILE to the file the sink writes")
    if not path.exists():
        click.echo(f"no alerts yet ({path} does not exist)", err=True)
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        a = json.loads(line)
        if kind and a.get("kind") != kind:
            continue
        if as_json:
            click.echo(line)
        else:
            click.echo(f"{a['time_ns']} {a['proxy']} {a['severity']:<8} {a['kind']:<12} "
                       f"{a['message']}")
