"""Suite-wide helpers: directory markers, root skips, stale namespace cleanup.

* A test without one of the suite markers gets the one of its directory
  (``tests/unit`` -> ``unit``, ...), so ``-m unit`` selects exactly that tree.
* Tests marked ``kernel``, ``integration``, ``e2e`` or ``requires_root`` are
  skipped with a reason when the suite does not run as root; :data:`requires_root`
  is the same as a decorator.
* SIGTERM (``timeout`` in ``scripts/test``) unwinds like Ctrl-C, so fixtures
  still remove their namespaces.
* A session that runs as root first removes network namespaces that dead runs
  left behind (:func:`xpro.lab.namespaces.cleanup_stale`; live runs are never touched).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType

import pytest

SUITE_MARKERS = ("unit", "kernel", "integration", "e2e")
ROOT_MARKERS = ("kernel", "integration", "e2e", "requires_root")
_TESTS = Path(__file__).resolve().parent

IS_ROOT = os.geteuid() == 0
_SESSION_PID = os.getpid()
ROOT_REASON = "needs root (BPF programs, network namespaces): run the suite with sudo"

#: Skip a test unless the suite runs as root.
requires_root = pytest.mark.requires_root


def _sigterm(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _SESSION_PID:
        os._exit(128 + signum)  # a forked child never unwinds into the session's code
    raise KeyboardInterrupt


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires_root: skipped unless the suite runs as root (any directory)"
    )
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            top = item.path.resolve().relative_to(_TESTS).parts[0]
        except (ValueError, IndexError):
            top = ""
        if top in SUITE_MARKERS and not any(item.get_closest_marker(m) for m in SUITE_MARKERS):
            item.add_marker(getattr(pytest.mark, top))
        if not IS_ROOT and any(item.get_closest_marker(m) for m in ROOT_MARKERS):
            item.add_marker(pytest.mark.skip(reason=ROOT_REASON))


@pytest.fixture(scope="session", autouse=True)
def _stale_namespaces() -> None:
    if IS_ROOT:
        from xpro.lab.namespaces import cleanup_stale

        cleanup_stale()
