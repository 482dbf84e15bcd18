"""What every store shares: bounds, the vectorised merge, bucketing, secrets.

The merge rules live once, in :func:`xpro.core.model.merge`; :func:`merge_arrays` is
the same function over numpy arrays (tested record by record against it), used
by the memory and etcd stores and by tests of the Redis function.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from xpro.config import Secret
from xpro.config.kinds import (
    PASSWORD_ENV,
    mask_url,
    plaintext_password_warning,
    read_password_file,
    remember_secret,
)
from xpro.core.bounds import MAX_COUNT as BOUNDS_MAX_COUNT
from xpro.core.bounds import MAX_PPS, Bounds
from xpro.core.layout import FLOW_KEY, LOCAL, MASTER
from xpro.core.model import NS_PER_S, R_DEN, SyncParams
from xpro.errors import BadRecord, ConfigError

__all__ = [
    "DEFAULT_MAX_FUTURE_S",
    "KEY_SIZE",
    "MAX_COUNT",
    "MAX_RQ",
    "MAX_THRESHOLD",
    "RECORD_SIZE",
    "WIRE_BEFORE",
    "WIRE_LOCAL",
    "Replay",
    "as_keys",
    "batch_digest",
    "bucket_of",
    "check_local",
    "check_merge_input",
    "check_mesh",
    "check_params",
    "decode_values",
    "key_hash",
    "key_hex",
    "key_list",
    "keys_from_bytes",
    "max_ts",
    "merged_options",
    "opt_bool",
    "opt_int",
    "opt_num",
    "resolve_password",
    "resolve_username",
    "unknown_options",
    "valid_master",
    "warn_plaintext",
]

log = logging.getLogger("xpro.stores")

#: Counts above this are garbage (a negative i64 read as u64 is >= 2**63).
#: Two valid counts always add up below 2**63, so sums never wrap.
MAX_COUNT = BOUNDS_MAX_COUNT
#: Where a store reports a value it skipped: ``reject(what, why)``.
Reject = Callable[[str, str], None]
#: Thresholds (T_T1, T_T4, in ns) above this are refused (about 146 years).
MAX_THRESHOLD = 1 << 62
#: r_q must satisfy R_DEN <= r_q < MAX_RQ (r in [1, 1024)); the Redis function
#: divides 74-bit numbers in 32-bit limbs and needs r_q below 2**20.
MAX_RQ = 1 << 20
#: A timestamp more than this many seconds after now is "in the far future".
DEFAULT_MAX_FUTURE_S = 86_400

#: The master record as stored: three little-endian u64 (ts1, ts2, c), 24 bytes.
RECORD_SIZE = MASTER.itemsize
KEY_SIZE = FLOW_KEY.itemsize
#: The local side as sent to the Redis function: ts1, ts2, c, dc (u64 LE) and
#: mark (u8), packed: 33 bytes.
WIRE_LOCAL = np.dtype(
    [("ts1", "<u8"), ("ts2", "<u8"), ("c", "<u8"), ("dc", "<u8"), ("mark", "u1")]
)
#: What a merge call returns per record: a flag (0 absent, 1 existed, 2
#: corrupt or out of bounds and overwritten, 3 dated in the future and left
#: as it was: refused) and the record before the merge, 25 bytes.
WIRE_BEFORE = np.dtype([("flag", "u1"), ("ts1", "<u8"), ("ts2", "<u8"), ("c", "<u8")])
FLAG_ABSENT, FLAG_EXISTED, FLAG_CORRUPT, FLAG_REFUSED = 0, 1, 2, 3

_MESH_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_mesh(mesh: str) -> str:
    """A mesh name is a key namespace: letters, digits, ``_.-``, at most 64."""
    if not _MESH_RE.match(mesh):
        raise ConfigError(
            f"mesh name {mesh!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-'"
        )
    return mesh


def check_params(params: SyncParams) -> None:
    """Refuse thresholds the stores cannot merge exactly."""
    if not 0 <= params.t_t1 <= MAX_THRESHOLD or not 0 <= params.t_t4 <= MAX_THRESHOLD:
        raise ConfigError(
            f"sync thresholds t_t1={params.t_t1} ns, t_t4={params.t_t4} ns: "
            f"each must be between 0 and {MAX_THRESHOLD} ns"
        )
    if not R_DEN <= params.r_q < MAX_RQ:
        raise ConfigError(
            f"sync factor r = {params.r_q}/{R_DEN}: the stores need 1 <= r < {MAX_RQ // R_DEN}"
        )


def max_ts(max_future_s: float = DEFAULT_MAX_FUTURE_S, now_ns: int | None = None) -> int:
    """The largest timestamp accepted as valid now (now + ``max_future_s``)."""
    now = time.time_ns() if now_ns is None else now_ns
    return now + int(max_future_s * 1_000_000_000)


def default_bounds(max_future_s: float, now_ns: int | None = None) -> Bounds:
    """The bounds a store applies when its caller gives none: its own clock,
    ``max_future`` seconds ahead, the default count ceiling, no age limit."""
    now = time.time_ns() if now_ns is None else now_ns
    return Bounds(now=now, future=int(max_future_s * NS_PER_S), max_age=None, max_pps=MAX_PPS)


def key_hex(key: bytes) -> str:
    """A flow key as logs name it: source, destination, port/proto, in hex."""
    return f"{key[:16].hex()}/{key[16:32].hex()}/{key[32:36].hex()}"


def as_keys(keys: np.ndarray) -> np.ndarray:
    """``keys`` as a contiguous FLOW_KEY array (any 36-byte void is accepted)."""
    arr = np.ascontiguousarray(keys)
    if arr.dtype.itemsize != KEY_SIZE:
        raise TypeError(f"keys must be FLOW_KEY (36 bytes), not {arr.dtype}")
    return arr.view(FLOW_KEY) if arr.dtype != FLOW_KEY else arr


def key_list(keys: np.ndarray) -> list[bytes]:
    """The 36-byte keys as a list of bytes objects."""
    raw = as_keys(keys).tobytes()
    return [raw[i : i + KEY_SIZE] for i in range(0, len(raw), KEY_SIZE)]


def keys_from_bytes(raw: bytes | Sequence[bytes]) -> np.ndarray:
    """FLOW_KEY array from concatenated or listed 36-byte keys."""
    blob = raw if isinstance(raw, bytes | bytearray) else b"".join(raw)
    return np.frombuffer(bytes(blob), dtype=FLOW_KEY).copy()


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def valid_master(rec: np.ndarray, limit_ts: int) -> np.ndarray:
    """Which MASTER records are in bounds: timestamps <= ``limit_ts``, c <= MAX_COUNT."""
    return (rec["ts1"] <= limit_ts) & (rec["ts2"] <= limit_ts) & (rec["c"] <= MAX_COUNT)


def check_local(local: np.ndarray, limit_ts: int | None = None) -> np.ndarray:
    """Which LOCAL records can be merged: bounds as for the master, mark 0 or 1.

    The sync should drop (and log) the others before calling ``merge``, which
    refuses a batch that holds any (:class:`~xpro.errors.BadRecord`).
    """
    lim = max_ts() if limit_ts is None else limit_ts
    return (
        (local["ts1"] <= lim)
        & (local["ts2"] <= lim)
        & (local["c"] <= MAX_COUNT)
        & (local["dc"] <= MAX_COUNT)
        & (local["mark"] <= 1)
    )


def check_merge_input(keys: np.ndarray, local: np.ndarray, params: SyncParams,
                      limit_ts: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a merge batch once, at the boundary; return (keys, local) contiguous."""
    check_params(params)
    k = as_keys(keys)
    loc = np.ascontiguousarray(local)
    if loc.dtype != LOCAL:
        raise TypeError(f"local must have the LOCAL dtype, not {loc.dtype}")
    if k.shape != loc.shape or k.ndim != 1:
        raise ValueError(f"keys {k.shape} and local {loc.shape} must be parallel 1-d arrays")
    ok = check_local(loc, limit_ts)
    if not ok.all():
        bad = [key_hex(b) for b in key_list(k[~ok][:5])]
        raise BadRecord(
            f"{int((~ok).sum())} local record(s) out of bounds (timestamps after "
            f"{limit_ts}, counts above 2**62 or mark not 0/1), e.g. {', '.join(bad)}: "
            "drop them before merging (xpro.stores._common.check_local)"
        )
    if len(k) > 1 and _has_duplicates(k):
        raise ValueError("keys must not repeat within one merge batch")
    return k, loc


def _has_duplicates(k: np.ndarray) -> bool:
    """Whether a key repeats: sort 64-bit hashes; compare bytes only on a hash tie."""
    h = np.sort(key_hash(k))
    if not (h[1:] == h[:-1]).any():
        return False
    raw = k.view(f"V{KEY_SIZE}")
    return len(np.unique(raw)) != len(raw)


def decode_values(keys: Sequence[bytes], values: Sequence[bytes | None], limit_ts: int,
                  where: str, reject: Reject | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode raw stored values; skip (and log, and ``reject``) the ones that are bad.

    ``keys`` are 36-byte keys.  Returns ``(keys, records)`` of the good ones.
    ``None`` values (a record deleted meanwhile) are skipped silently.  Works
    on whole lists at C speed (map, join, numpy); only bad records cost a
    Python step each.
    """
    vals = list(values)
    if None in vals:
        keep = [i for i, v in enumerate(vals) if v is not None]
        keys = [keys[i] for i in keep]
        vals = [vals[i] for i in keep]
    lens = np.fromiter(map(len, vals), dtype=np.int64, count=len(vals))  # type: ignore[arg-type]
    good = lens == RECORD_SIZE
    if not good.all():
        for n, i in enumerate(np.flatnonzero(~good).tolist()):
            if n < 100:
                log.warning("%s: skipping record %s: %d bytes, not %d", where,
                            key_hex(keys[i]), lens[i], RECORD_SIZE)
            if reject is not None:
                reject(key_hex(keys[i]), f"{lens[i]} bytes, not {RECORD_SIZE}")
        idx = np.flatnonzero(good).tolist()
        keys = [keys[i] for i in idx]
        vals = [vals[i] for i in idx]
    recs = np.frombuffer(b"".join(vals), dtype=MASTER).copy()  # type: ignore[arg-type]
    ks = keys_from_bytes(keys)
    ok = valid_master(recs, limit_ts)
    if not ok.all():
        for n, i in enumerate(np.flatnonzero(~ok).tolist()):
            r = recs[i]
            if n < 100:
                log.warning("%s: skipping record %s: out of bounds (ts1=%d ts2=%d c=%d, "
                            "limit ts %d)", where, key_hex(keys[i]), r["ts1"], r["ts2"], r["c"],
                            limit_ts)
            if reject is not None:
                reject(key_hex(keys[i]), "out of bounds")
        ks, recs = ks[ok], recs[ok]
    return ks, recs


#: A heartbeat as stored: W (f64), last seen (u64) and, from this version
#: on, the proxy's clock offset to the store (i64; NO_OFFSET: unmeasured).
HEARTBEAT = struct.Struct("<dQ")
HEARTBEAT_OFFSET = struct.Struct("<dQq")
NO_OFFSET = -(1 << 63)


def encode_heartbeat(workload: float, now: int, offset: int | None) -> bytes:
    """16 bytes (W, last seen), or 24 with the clock offset."""
    if offset is None:
        return HEARTBEAT.pack(float(workload), int(now))
    return HEARTBEAT_OFFSET.pack(float(workload), int(now), int(offset))


def decode_heartbeat(value: bytes) -> tuple[float, int, int | None] | None:
    """(W, last seen, offset or None) from 16 or 24 bytes; None if neither."""
    if len(value) == HEARTBEAT.size:
        w, seen = HEARTBEAT.unpack(value)
        return w, seen, None
    if len(value) == HEARTBEAT_OFFSET.size:
        w, seen, off = HEARTBEAT_OFFSET.unpack(value)
        return w, seen, None if off == NO_OFFSET else off
    return None


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX = np.uint64(0xBF58476D1CE4E5B9)


def bucket_of(keys: np.ndarray, buckets: int) -> np.ndarray:
    """The bucket of each flow key: :func:`key_hash` modulo ``buckets``."""
    return (key_hash(keys) % np.uint64(buckets)).astype(np.int64)


def key_hash(keys: np.ndarray) -> np.ndarray:
    """A fixed 64-bit hash of each flow key (it picks the bucket).

    FNV-1a over the key's nine little-endian 32-bit words, then
    ``h ^= h >> 29; h *= 0xBF58476D1CE4E5B9; h ^= h >> 32``.  Every proxy of a
    mesh must compute the same, so this formula is part of the store
    encoding (docs/stores.rst).
    """
    k = as_keys(keys)
    words = np.frombuffer(k.tobytes(), dtype="<u4").reshape(-1, KEY_SIZE // 4)
    h = np.full(len(k), _FNV_OFFSET, dtype=np.uint64)
    for j in range(words.shape[1]):
        h = (h ^ words[:, j].astype(np.uint64)) * _FNV_PRIME
    h ^= h >> np.uint64(29)
    h *= _MIX
    h ^= h >> np.uint64(32)
    return h


# --------------------------------------------------------------------------
# Replays: a merge retried with the same arguments applies at most once
# --------------------------------------------------------------------------


def batch_digest(keys: np.ndarray, local: np.ndarray, params: SyncParams) -> bytes:
    """Identifies a merge call, so that a retry of the same call can be recognised."""
    h = hashlib.blake2b(digest_size=16)
    h.update(keys.tobytes())
    h.update(local.tobytes())
    h.update(f"{params.t_t1},{params.t_t4},{params.r_q}".encode())
    return h.digest()


@dataclass
class Replay:
    """The identity of the merge that last failed half way (see Store.merge docs)."""

    digest: bytes
    op: int


# --------------------------------------------------------------------------
# URLs, options, secrets
# --------------------------------------------------------------------------



def merged_options(query: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """URL query options, overridden by explicit ``options``."""
    out: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
    if options:
        out.update(options)
    return out


def opt_bool(opts: Mapping[str, Any], name: str, default: bool) -> bool:
    v = opts.get(name, default)
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", "none"):
        return False
    raise ConfigError(f"store option {name}={v!r}: use true or false")


def opt_num(opts: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    v = opts.get(name, default)
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"store option {name}={v!r} is not a number") from None
    if not lo <= x <= hi:
        raise ConfigError(f"store option {name}={x:g} is out of range [{lo:g}, {hi:g}]")
    return x


def opt_int(opts: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    x = opt_num(opts, name, default, lo, hi)
    if x != int(x):
        raise ConfigError(f"store option {name}={x:g} must be a whole number")
    return int(x)


def resolve_password(url_password: str | None, opts: Mapping[str, Any]) -> str | None:
    """The secret: from the URL, else option ``password`` (a
    :class:`~xpro.config.Secret` or a string), else $XPRO_STORE_PASSWORD, else
    the file named by option ``password_file``.

    Whatever it returns is remembered for redaction
    (:func:`xpro.config.kinds.redact`): no log line or message shows it.
    """
    pw = _find_password(url_password, opts)
    remember_secret(pw)
    return pw


def _find_password(url_password: str | None, opts: Mapping[str, Any]) -> str | None:
    if url_password:
        return url_password
    if "password" in opts:  # given explicitly (None or "": no password, not the env's)
        given = opts["password"]
        text = given.reveal() if isinstance(given, Secret) else str(given or "")
        return text or None
    env = os.environ.get(PASSWORD_ENV)
    if env:
        return env
    pf = opts.get("password_file")
    if pf:
        try:
            text = read_password_file(str(pf))
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise ConfigError(f"store option password_file={pf}: cannot read it ({why})"
                              ) from None
        if not text:
            raise ConfigError(f"store option password_file={pf}: its first line is empty (the "
                              "password is the file's first line)")
        return text
    return None


def resolve_username(url_username: str | None, opts: Mapping[str, Any]) -> str | None:
    """The user: from the URL, else option ``username``."""
    if url_username:
        return url_username
    given = opts.get("username")
    return str(given) if given else None


_warned: set[str] = set()


def warn_plaintext(url: str, password: str | None) -> None:
    """Log, once per URL and process, that a password goes over a plaintext URL."""
    text = plaintext_password_warning(url, bool(password))
    shown = mask_url(url)
    if text is None or shown in _warned:
        return
    _warned.add(shown)
    log.warning(text, extra={"event": "store_plaintext_password", "store": shown})


def unknown_options(opts: Mapping[str, Any], known: Iterable[str], scheme: str) -> None:
    extra = sorted(set(opts) - set(known))
    if extra:
        raise ConfigError(
            f"unknown {scheme}:// store option(s) {', '.join(extra)} "
            f"(known: {', '.join(sorted(known))})"
        )

