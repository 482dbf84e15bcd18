"""The structures of ``bpf/xpro_shared.h`` as numpy dtypes.

The C header is the source of truth; ``tests/kernel/test_layout.py`` checks
every dtype here against the BTF of the compiled object, field by field.
numpy structured arrays let the daemon move whole map batches without a
Python loop per record (docs/sync.rst, "One round").
"""

from __future__ import annotations

import enum
import ipaddress

import numpy as np

#: Destination key modes (``config.dst_mode``).
DST_ADDR = 0
DST_ADDR_PORT = 1

#: Verdict modes (``config.mode`` and ``dst_policy`` values).
MODE_ENFORCE = 0
MODE_MONITOR = 1

#: Policy for malformed IP packets.
MALFORMED_DROP = 0
MALFORMED_PASS = 1

#: Parser bounds.
MAX_VLAN = 2
MAX_EXTHDR = 8

#: The key pad of a destination's closed-drops record (a packet's key has pad 0).
DST_PAD_CLOSED = 1
#: In addr+port mode, the key pad of an address's own aggregate (port 0,
#: proto 0), and of that aggregate's closed-drops record (ADDR | CLOSED).
DST_PAD_ADDR = 2
DST_PAD_ADDR_CLOSED = 3

#: XDP return codes.
XDP_ABORTED = 0
XDP_DROP = 1
XDP_PASS = 2


class Reason(enum.IntEnum):
    """Why a packet got its verdict: the index into the per-CPU ``stats`` array."""

    PASS = 0
    NON_IP = 1
    ALLOW = 2
    DENY = 3
    MALFORMED = 4
    SRC_RATE = 5
    DST_RATE = 6
    MON_SRC_RATE = 7
    MON_DST_RATE = 8
    DST_CLOSED = 9
    MON_DST_CLOSED = 10


N_REASONS = len(Reason)


class Known(enum.IntEnum):
    """Values of the ``known`` map (``enum xpro_known_class``): how the daemon
    classified a (source, destination key) for a closed destination."""

    CLIENT = 1  # served while the destination is closed (counted in kc)
    HEAVY = 2  # over T_F1 in the mesh: through its flow record, never served when closed


class EventKind(enum.IntEnum):
    """Ring-buffer warning kinds."""

    SRC_OVERLOAD = 1
    DST_OVERLOAD = 2


DST_KEY = np.dtype(
    [("addr", "S16"), ("port", ">u2"), ("proto", "u1"), ("pad", "u1")], align=False
)
FLOW_KEY = np.dtype([("src", "S16"), ("dst", DST_KEY)])

FLOW = np.dtype(
    [
        ("ts1", "<u8"),
        ("ts2", "<u8"),
        ("c", "<u8"),
        ("warn_ts", "<u8"),
        ("base_c", "<u8"),
        ("gen", "<u4"),
        ("base_gen", "<u4"),
        ("epoch", "<u4"),
        ("pad", "<u4"),
    ]
)

#: A destination's aggregate (what the daemon reads of ``struct xpro_dst``).
_DST_FIELDS = [("ts1", "<u8"), ("ts2", "<u8"), ("c", "<u8"), ("warn_ts", "<u8"), ("kc", "<u8")]
DST = np.dtype(_DST_FIELDS)

#: ``struct xpro_dst``, the value of the ``dsts`` map: the aggregate (absent
#: while its ts2 is 0) and the destination's closed-drops record ``cd``
#: (absent while its ts2 is 0).
DST_REC = np.dtype([*_DST_FIELDS, ("cd", FLOW)])

#: ``struct xpro_known_filter``: the filter of the known sources of the
#: destinations of one slot (``xpro.core.keys.known_filters`` builds it).
KNOWN_FILTER_WORDS = 256
KNOWN_FILTER = np.dtype([("w", "<u8", (KNOWN_FILTER_WORDS,))])

STAT = np.dtype([("packets", "<u8"), ("bytes", "<u8")])

LPM_KEY = np.dtype([("prefixlen", "<u4"), ("addr", "S16")])

EVENT = np.dtype(
    [
        ("ts", "<u8"),
        ("kind", "<u4"),
        ("pad", "<u4"),
        ("key", FLOW_KEY),
        ("pad2", "<u4"),
        ("c", "<u8"),
        ("window", "<u8"),
    ]
)

CONFIG = np.dtype(
    [
        ("t_t1", "<u8"),
        ("t_t2", "<u8"),
        ("t_t3", "<u8"),
        ("warn_period", "<u8"),
        ("fake_now", "<u8"),
        ("clock_offset", "<i8"),
        ("t_f1", "<u4"),
        ("t_f2", "<u4"),
        ("mode", "<u4"),
        ("dst_mode", "<u4"),
        ("malformed_policy", "<u4"),
        ("n_allow", "<u4"),
        ("n_deny", "<u4"),
        ("n_dst_policy", "<u4"),
        ("events", "<u4"),
        ("epoch", "<u4"),
        # source prefix masks, bytes in network order (big-endian words)
        ("src_mask6", ">u4", (4,)),
        ("src_mask4", ">u4"),
        ("t_f2_addr", "<u4"),
        ("known_slot_mask", "<u4"),
        ("pad", "<u4"),
    ]
)

APPLY = np.dtype(
    [
        ("c_delta", "<i8"),
        ("ts1", "<u8"),
        ("ts2", "<u8"),
        ("base_c", "<u8"),
        ("op", "<u4"),
        ("gen", "<u4"),
        ("result", "<i4"),
        ("base_gen", "<u4"),
        ("key", FLOW_KEY),
        ("pad", "<u4"),
    ]
)

#: Byte sizes the C compiler gives these structs (checked against BTF).
SIZES = {
    "xpro_dst_key": 20,
    "xpro_flow_key": 36,
    "xpro_flow": 56,
    "xpro_dst": 96,
    "xpro_stat": 16,
    "xpro_lpm_key": 20,
    "xpro_event": 72,
    "xpro_apply": 88,
    "xpro_config": 120,
    "xpro_known_filter": 8 * KNOWN_FILTER_WORDS,
}

#: The dtype of each map's key and value, by map name.
MAP_TYPES: dict[str, tuple[np.dtype, np.dtype]] = {
    "flows": (FLOW_KEY, FLOW),
    "dirty0": (FLOW_KEY, np.dtype("<u4")),
    "dirty1": (FLOW_KEY, np.dtype("<u4")),
    "dsts": (DST_KEY, DST_REC),
    "stats": (np.dtype("<u4"), STAT),
    "allow_src": (LPM_KEY, np.dtype("<u4")),
    "deny_src": (LPM_KEY, np.dtype("<u4")),
    "dst_policy": (LPM_KEY, np.dtype("<u4")),
    "known": (FLOW_KEY, np.dtype("<u4")),
    "known_slots": (np.dtype("<u4"), KNOWN_FILTER),
}


def addr16(addr: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """An address as the 16 bytes the program keys on (IPv4 as ::ffff:a.b.c.d)."""
    ip = ipaddress.ip_address(addr) if isinstance(addr, str) else addr
    if isinstance(ip, ipaddress.IPv4Address):
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def addr_str(raw: bytes) -> str:
    """The inverse of :func:`addr16`: mapped IPv4 prints as dotted quad."""
    raw = raw.ljust(16, b"\0")  # numpy strips trailing NULs from S16
    ip = ipaddress.IPv6Address(raw)
    mapped = ip.ipv4_mapped
    return str(mapped) if mapped is not None else str(ip)


#: A master record (the store's ts1, ts2, c).
MASTER = np.dtype([("ts1", "<u8"), ("ts2", "<u8"), ("c", "<u8")])

#: The local side of a merge: the paper's ts1', ts2', c', dc, mark.
LOCAL = np.dtype(
    [("ts1", "<u8"), ("ts2", "<u8"), ("c", "<u8"), ("dc", "<u8"), ("mark", "<u4"), ("pad", "<u4")]
)
