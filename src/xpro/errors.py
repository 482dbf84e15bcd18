"""The xpro exception tree.

Library code raises these; only the CLI turns them into a message and an exit
code.  Every message says what happened and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "AttachError",
    "BadRecord",
    "BpfLoadError",
    "BpffsError",
    "ConfigError",
    "DatapathError",
    "InterfaceBusy",
    "LibbpfMissing",
    "LinkTypeNotSupported",
    "ModeNotSupported",
    "NetnsError",
    "NoSuchInterface",
    "PluginError",
    "PrivilegeError",
    "StoreConflict",
    "StoreError",
    "StoreUnavailable",
    "XproError",
]


class XproError(Exception):
    """Base of every error xpro raises on purpose."""

    #: Process exit code the CLI uses for this kind of error.
    exit_code = 1


class ConfigError(XproError):
    """A configuration value is missing, of the wrong type or out of range."""

    exit_code = 2


class PluginError(XproError):
    """A plugin failed to load or a hook raised."""


class DatapathError(XproError):
    """Loading, attaching or driving a BPF program failed."""


class PrivilegeError(DatapathError):
    """The operation needs root or CAP_BPF/CAP_NET_ADMIN."""

    exit_code = 77


class LibbpfMissing(DatapathError):
    """libbpf.so.1 could not be loaded."""


class BpfLoadError(DatapathError):
    """The kernel refused the program; carries the tail of the verifier log."""

    def __init__(self, message: str, verifier_log: str = "") -> None:
        super().__init__(message)
        self.verifier_log = verifier_log


class AttachError(DatapathError):
    """Attaching to or detaching from an interface failed."""


class NoSuchInterface(AttachError):
    """The named interface does not exist (in this network namespace)."""


class NetnsError(AttachError):
    """A network namespace is missing, or changing a namespace, link or address failed."""


class ModeNotSupported(AttachError):
    """The driver does not support the requested XDP mode (e.g. HW offload)."""


class InterfaceBusy(AttachError):
    """Another XDP program already holds the interface."""


class LinkTypeNotSupported(AttachError):
    """The interface's frames have no Ethernet header (a tun, WireGuard or IP tunnel)."""


class BpffsError(DatapathError):
    """bpffs is not mounted and could not be mounted."""


class StoreError(XproError):
    """Base of master-store errors."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now; retrying may help."""


class StoreConflict(StoreError):
    """A compare-and-swap lost too many times."""


class BadRecord(StoreError):
    """A record in the store does not parse or is out of bounds."""
