"""Fixtures the unit tests share."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator

import pytest


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """setup_logging replaces the xpro and root loggers' handlers and the
    exception hooks: put them back."""
    loggers = [logging.getLogger("xpro"), logging.getLogger()]
    saved = [(list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    hooks = (sys.excepthook, threading.excepthook)
    yield None
    for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
    sys.excepthook, threading.excepthook = hooks
