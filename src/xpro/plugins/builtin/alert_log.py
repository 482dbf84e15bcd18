"""The built-in alert sink (entry point ``alert_log``).

Its ``xpro_alert`` writes each alert as one structured log line on the
``xpro.alerts`` logger, so alerts are never lost even with no sink installed.
"""

from __future__ import annotations

import logging

from xpro.core.alert import Alert, format_alert
from xpro.hooks import hookimpl

__all__ = ["xpro_alert"]

log = logging.getLogger("xpro.alerts")

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}


@hookimpl
def xpro_alert(alert: Alert) -> None:
    """The built-in sink: one structured log line per alert."""
    log.log(_LEVELS[alert.severity], "%s", format_alert(alert))
