"""Alerts: what the daemon hands to every ``xpro_alert`` sink.

An :class:`Alert` is what the daemon hands to every ``xpro_alert``
implementation (:mod:`xpro.hooks.specs`): a frozen value with the kind, the
severity, a message for a human, the proxy, the time and details for a
machine.  The built-in sink that logs every alert is
:mod:`xpro.plugins.builtin.alert_log`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

__all__ = ["KINDS", "SEVERITIES", "Alert", "AlertKind", "Severity", "format_alert"]

#: What an alert is about.
AlertKind = Literal["store_down", "store_up", "src_overload", "dst_overload", "workload",
                    "dst_closed", "dst_reopened", "known_full", "clock_skew", "clock_ok",
                    "store_data", "datapath_down"]
#: How urgent it is.
Severity = Literal["info", "warning", "critical"]

#: Every alert kind.
KINDS: tuple[str, ...] = get_args(AlertKind)
#: Every severity, least urgent first.
SEVERITIES: tuple[str, ...] = get_args(Severity)

#: The severity of each kind when the caller gives none.
DEFAULT_SEVERITY: Mapping[str, Severity] = MappingProxyType({
    "store_down": "critical",
    "store_up": "info",
    "src_overload": "warning",
    "dst_overload": "warning",
    "workload": "warning",
    "dst_closed": "critical",
    "dst_reopened": "info",
    "known_full": "critical",
    "clock_skew": "warning",
    "clock_ok": "info",
    "store_data": "warning",
    "datapath_down": "critical",
})


@dataclass(frozen=True)
class Alert:
    """One alert, as every ``xpro_alert`` implementation receives it.

    ``details`` holds what a machine needs (``src``, ``dst``, ``rate``,
    ``limit``, ``workload``...); its values should be JSON-serialisable.
    """

    kind: AlertKind
    message: str
    proxy: str
    severity: Severity = "warning"
    time_ns: int = field(default_factory=time.time_ns)
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"alert kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"alert severity {self.severity!r} is not one of "
                             f"{', '.join(SEVERITIES)}")
        # Frozen all the way down: a sink cannot change what the next sink sees.
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))

    @classmethod
    def make(cls, kind: AlertKind, message: str, proxy: str, *,
             severity: Severity | None = None, time_ns: int | None = None,
             **details: Any) -> Alert:
        """An alert with the kind's default severity and the current time unless given."""
        return cls(kind=kind, message=message, proxy=proxy,
                   severity=severity or DEFAULT_SEVERITY.get(kind, "warning"),
                   time_ns=time.time_ns() if time_ns is None else time_ns,
                   details=details)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-serialisable when ``details`` is)."""
        return {"kind": self.kind, "severity": self.severity, "message": self.message,
                "proxy": self.proxy, "time_ns": self.time_ns, "details": dict(self.details)}

    def to_json(self) -> str:
        """One line of JSON; values that JSON cannot represent become strings."""
        return json.dumps(self.to_dict(), sort_keys=True, default=str)


def format_alert(alert: Alert) -> str:
    """The alert as one ``key=value`` log line (values JSON-quoted where needed)."""
    parts = [f"kind={alert.kind}", f"severity={alert.severity}",
             f"proxy={json.dumps(alert.proxy)}", f"time_ns={alert.time_ns}",
             f"message={json.dumps(alert.message)}"]
    parts.extend(f"{k}={json.dumps(v, default=str)}" for k, v in sorted(alert.details.items()))
    return "alert " + " ".join(parts)
