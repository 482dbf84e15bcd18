"""Strings from outside, made safe to show: one line, no terminal control.

Peer names come from the master store (heartbeats), where any proxy of the
mesh -- or anyone who can write to the store -- puts them; error texts come
from store servers and plugins.  Shown raw, a name like ``"\\x1b[2J\\nEVIL"``
clears the operator's terminal, forges a line of ``xpro status`` or of a
text log.  :func:`printable` escapes every character that is not printable
(C0 and C1 controls, escape, newline, bidirectional overrides, zero-width
and other format characters, separators other than the space) as ``\\n``,
``\\r``, ``\\t``, ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``, and the
backslash as ``\\\\``, so the escaping is reversible and two different names
never look the same.
"""

from __future__ import annotations

__all__ = ["printable", "terminal_safe"]


_SHORT = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    short = _SHORT.get(ch)
    if short is not None:
        return short
    if ch == " " or ch.isprintable():
        return ch
    n = ord(ch)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def printable(text: object, limit: int | None = None) -> str:
    """``str(text)`` with every non-printable character (and ``\\``) escaped.

    ``limit``: at most this many characters of ``text`` are shown, then
    ``...(N more)``.  Leave it out where two names must stay distinct
    (metric labels).
    """
    s = str(text)
    more = 0
    if limit is not None and len(s) > limit:
        s, more = s[:limit], len(s) - limit
    if not (s.isprintable() and "\\" not in s):
        s = "".join(map(_escape, s))
    return f"{s}...({more} more)" if more else s


def terminal_safe(text: object) -> str:
    """``str(text)`` line by line with every non-printable character escaped
    as :func:`printable` does, but the line ends kept and the backslash left
    alone: for a message made of parts that may already be escaped (an error
    that quotes a config key as the operator typed it), so that nothing in it
    reaches the terminal as a control sequence."""
    return "\n".join(line if line.isprintable() else
                      "".join(ch if ch == "\\" else _escape(ch) for ch in line)
                      for line in str(text).split("\n"))
