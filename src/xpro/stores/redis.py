"""The Redis master store: ``redis://``, ``rediss://``, ``redis+cluster://``.

The master side of the merge runs inside Redis as a function library
(:mod:`xpro.stores._redis_lua`), one call per bucket and chunk, pipelined, so
each record is merged atomically however many proxies merge at once.  The
master is sharded into ``buckets`` hash-tagged key groups ``{xpro:MESH:B}`` by
a hash of the flow key, so a Redis Cluster spreads the load even when every
flow targets one destination (docs/stores.rst).  Reads are incremental through a
per-bucket change log.  The encoding and the failure behaviour are described
in ``docs/stores.rst``.

redis-py is an optional dependency (``pip install 'xpro[redis]'``): it is
imported when a Redis URL is opened, so the plugin always registers.
"""

from __future__ import annotations

import logging
import math
import re
import struct
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from xpro.config.kinds import HOST_LIST_PORTS, mask_url, redact, split_hosts, split_url
from xpro.core.bounds import Bounds
from xpro.core.layout import DST_KEY, FLOW_KEY, MASTER
from xpro.core.merge import merge_arrays
from xpro.core.model import SyncParams
from xpro.core.pull import AGG_KEY, PARTIAL, PullRule, judge_arrays, partial_deltas
from xpro.core.status import ProxyStatus
from xpro.errors import BadRecord, ConfigError, StoreError, StoreUnavailable
from xpro.hooks.specs import hookimpl
from xpro.stores import _redis_lua
from xpro.stores._common import (
    DEFAULT_MAX_FUTURE_S,
    FLAG_CORRUPT,
    FLAG_EXISTED,
    FLAG_REFUSED,
    KEY_SIZE,
    RECORD_SIZE,
    Reject,
    Replay,
    batch_digest,
    bucket_of,
    check_merge_input,
    check_mesh,
    decode_heartbeat,
    decode_values,
    default_bounds,
    encode_heartbeat,
    key_hex,
    key_list,
    keys_from_bytes,
    max_ts,
    merged_options,
    opt_bool,
    opt_int,
    opt_num,
    resolve_password,
    resolve_username,
    unknown_options,
    warn_plaintext,
)
from xpro.stores.base import REFUSED, Store

if TYPE_CHECKING:
    from xpro.hooks.registry import Registry

__all__ = ["ENCODING", "KNOWN_OPTIONS", "WIRE", "RedisCursor", "RedisPullCursor", "RedisStore",
           "xpro_add_stores"]

#: How much older than the records' horizon a heartbeat may be before the
#: expiry deletes it (:meth:`RedisStore._prune_heartbeats`).
HEARTBEAT_GRACE_NS = 60_000_000_000

#: The function's refusal of a merge older than the client's last one, with
#: that one's op (xpro.stores._redis_lua).
_STALE_RE = re.compile(r"XPRO stale merge replay (\d{1,16})")

log = logging.getLogger("xpro.stores.redis")

ENCODING = 1
#: A Lua number is exact below 2**53; relative timestamps stay below 2**52 so
#: that a sum with a threshold (also below 2**52) is exact too.
_W52 = 1 << 52
_LO32 = 0xFFFFFFFF
#: The local side as the merge function reads it (57 bytes, see _redis_lua).
WIRE = np.dtype(
    [
        ("ts1", "<u8"), ("ts2", "<u8"), ("c", "<u8"), ("dc", "<u8"),
        ("a1", "<f8"), ("a2", "<f8"), ("ad", "<f8"), ("mark", "u1"),
    ]
)
_SENTINEL = b"xpro:encoding"

KNOWN_OPTIONS = (
    "ca", "cert", "key", "verify", "username", "password", "password_file", "buckets", "batch",
    "timeout",    "connect_timeout", "log_retention", "max_future", "heartbeat_ttl", "retry_time",
)


@dataclass(frozen=True)
class RedisCursor:
    """Where a reader is: the store's epoch and, per bucket, the log entries seen.

    ``scans``: the buckets being read in full, as (bucket, HSCAN cursor,
    entries in the log when the read began); ``more``: changes were left for
    the next read (its ``limit`` was reached).
    """

    epoch: str
    versions: tuple[int, ...]
    scans: tuple[tuple[int, int, int], ...] = ()
    more: bool = False


@dataclass(frozen=True)
class RedisPullCursor:
    """A pull reader's position: per bucket, the candidate-log and partial-log
    entries seen (``more``: candidates were left for the next read)."""

    epoch: str
    cands: tuple[int, ...]
    parts: tuple[int, ...]
    more: bool = False


@dataclass
class _Call:
    """One command, routed by the key ``route``: arguments, or already packed (RESP)."""

    args: tuple[Any, ...]
    route: str
    bucket: int = -1
    idx: np.ndarray | None = None
    packed: bytes | None = None


@dataclass
class _Conn:
    """The connection: one client, or a cluster and its per-node clients."""

    single: Any = None
    cluster: Any = None
    prepared: set[str] = field(default_factory=set)


def _redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ConfigError(
            "redis:// stores need the redis package: pip install 'xpro[redis]'"
        ) from None
    return redis


class RedisStore(Store):
    """A mesh's master records in Redis (single server or Cluster)."""

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss", "redis+cluster", "rediss+cluster")

    def __init__(
        self,
        *,
        url: str,
        mesh: str,
        nodes: Sequence[tuple[str, int]],
        cluster: bool,
        tls: bool,
        username: str | None,
        password: str | None,
        db: int,
        opts: Mapping[str, Any],
    ) -> None:
        self.url = mask_url(url)
        self.mesh = check_mesh(mesh)
        self.nodes = list(nodes)
        self.cluster = cluster
        self.tls = tls
        self._username = username
        self._password = password
        self.db = db
        self.buckets = opt_int(opts, "buckets", 256 if cluster else 64, 1, 65536)
        self.batch = opt_int(opts, "batch", 2000, 1, 7000)
        self.timeout = opt_num(opts, "timeout", 10.0, 0.1, 3600)
        self.connect_timeout = opt_num(opts, "connect_timeout", 3.0, 0.1, 600)
        self.log_retention = opt_int(opts, "log_retention", 300, 1, 10**7)
        self.max_future = opt_num(opts, "max_future", DEFAULT_MAX_FUTURE_S, 1, 10**8)
        self.heartbeat_ttl = opt_int(opts, "heartbeat_ttl", 86_400, 1, 10**8)
        self.retry_time = opt_num(opts, "retry_time", 2.0, 0, 600)
        self._tls_opts = {
            "ca": opts.get("ca"),
            "cert": opts.get("cert"),
            "key": opts.get("key"),
            "verify": opt_bool(opts, "verify", True),
        }
        self.client_id = uuid.uuid4().hex[:16]
        self._op = 0
        self._replay: Replay | None = None
        self._conn: _Conn | None = None
        self._closed = False
        self._epoch: str | None = None
        #: The rule of the last judged merge: expire moves partials by it too.
        self._rule: PullRule | None = None
        self._tags = [f"{{xpro:{self.mesh}:{b}}}" for b in range(self.buckets)]
        self._cfg_key = f"{{xpro:{self.mesh}}}:cfg"
        self._lease_key = f"{{xpro:{self.mesh}}}:lease:"
        self._cfg_pinned = False  # the configuration was read and accepted once
        self._epoch_seen: str | None = None
        self._cfg_warned: set[str] = set()
        self._no_clock = False
        self._hb_key = f"{{xpro:{self.mesh}}}:hb"

    # ------------------------------------------------------------------
    # Construction
    # ------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, *, mesh: str = "xpro", options: Mapping[str, Any] | None = None
                 ) -> RedisStore:
        """``redis://[user:pass@]host:port[/db]``, ``rediss://`` (TLS) or
        ``redis+cluster://[user:pass@]host:port[,host:port...]``.

        Options come from the URL query (``?buckets=512&verify=false``) and
        from ``options`` (which win); see docs/stores.rst for the list.
        """
        try:
            parts = split_url(url)
        except ValueError:
            raise ConfigError(f"store URL {mask_url(url)}: no scheme (redis://HOST:PORT)"
                              ) from None
        scheme = parts.scheme
        if scheme not in cls.schemes:
            raise ConfigError(f"{scheme}:// is not a Redis URL scheme ({', '.join(cls.schemes)})")
        cluster = scheme.endswith("+cluster")
        tls = scheme.startswith("rediss")
        try:
            nodes = split_hosts(parts.hosts or "", HOST_LIST_PORTS[scheme])
        except ValueError as exc:
            raise ConfigError(f"store URL {mask_url(url)}: {exc}") from None
        if not nodes:
            nodes = [("127.0.0.1", 6379)]
        if len(nodes) > 1 and not cluster:
            raise ConfigError(
                f"store URL {mask_url(url)}: several hosts need redis+cluster:// "
                "(a single Redis takes one host:port)"
            )
        db = 0
        path = parts.path.strip("/")
        if path:
            if cluster:
                raise ConfigError(f"store URL {mask_url(url)}: Redis Cluster has no databases")
            try:
                db = int(path)
            except ValueError:
                raise ConfigError(f"store URL {mask_url(url)}: database {path!r} is not a number"
                                  ) from None
        opts = merged_options(parts.query, options)
        unknown_options(opts, KNOWN_OPTIONS, scheme)
        password = resolve_password(parts.password, opts)
        username = resolve_username(parts.username, opts)
        warn_plaintext(url, None if tls else password)
        return cls(url=url, mesh=mesh, nodes=nodes, cluster=cluster, tls=tls, username=username,
                   password=password, db=db, opts=opts)

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, mesh={self.mesh!r}, buckets={self.buckets})"

    __str__ = __repr__

    @property
    def where(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.nodes)

    def _client_kwargs(self) -> dict[str, Any]:
        _redis()
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        kw: dict[str, Any] = {
            "username": self._username,
            "password": self._password,
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.connect_timeout,
            "protocol": 2,  # the replies are parsed as RESP2 (flat lists)
        }
        if not self.cluster:
            kw["db"] = self.db
            kw["retry"] = Retry(ExponentialBackoff(cap=0.2, base=0.01), 2)
        if self.tls:
            t = self._tls_opts
            kw.update(
                ssl=True,
                ssl_ca_certs=t["ca"],
                ssl_certfile=t["cert"],
                ssl_keyfile=t["key"],
                ssl_cert_reqs="required" if t["verify"] else "none",
                ssl_check_hostname=bool(t["verify"]),
            )
        return kw

    # ------------------------------------------------------------------
    # Connections, errors, routing
    # ------------------------------------------------------------------

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        redis = _redis()
        exc_types = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.ClusterError,
            redis.exceptions.ClusterDownError,
            redis.exceptions.TryAgainError,
            redis.exceptions.RedisClusterException,
            OSError,
        )
        try:
            yield
        except StoreError:
            raise
        except exc_types as exc:
            self._drop_connection()
            hint = ("check the credentials (URL, $XPRO_STORE_PASSWORD or password_file)"
                    if isinstance(exc, redis.exceptions.AuthenticationError)
                    else "check that the server runs and is reachable (a daemon keeps "
                    "filtering on local state and retries)")
            raise StoreUnavailable(
                f"redis store at {self.where} unavailable during {what}: "
                f"{type(exc).__name__}: {redact(str(exc)).rstrip('. ')}; {hint}"
            ) from exc

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                if conn.cluster is not None:
                    conn.cluster.close()
                if conn.single is not None:
                    conn.single.close()
            except Exception:  # closing a broken connection must not mask the error
                log.debug("closing the redis connection failed", exc_info=True)

    def _connection(self) -> _Conn:
        if self._closed:
            raise StoreUnavailable(f"redis store at {self.where}: closed")
        if self._conn is None:
            redis = _redis()
            kw = self._client_kwargs()
            if self.cluster:
                from redis import cluster as rcluster

                node_cls: Any = rcluster.ClusterNode  # untyped in redis-py
                rc = rcluster.RedisCluster(
                    startup_nodes=[node_cls(h, p) for h, p in self.nodes],
                    require_full_coverage=False,
                    **kw,
                )
                self._conn = _Conn(cluster=rc)
            else:
                h, p = self.nodes[0]
                self._conn = _Conn(single=redis.Redis(host=h, port=p, **kw))
            if self._closed:  # closed while it was being made: not to escape close()
                self._drop_connection()
                raise StoreUnavailable(f"redis store at {self.where}: closed")
        return self._conn

    def _node_client(self, conn: _Conn, route: str) -> tuple[str, Any]:
        if conn.cluster is None:
            return self.where, conn.single
        from redis.crc import key_slot

        node = conn.cluster.nodes_manager.get_node_from_slot(key_slot(route.encode()))
        return str(node.name), conn.cluster.get_redis_connection(node)

    def _prepare(self, name: str, client: Any, conn: _Conn) -> None:
        """Load the function library on a node unless it already holds this text."""
        if name in conn.prepared:
            return
        libs = client.function_list(library=_redis_lua.LIBRARY, withcode=True)
        code = None
        for lib in libs or []:
            d = _pairs(lib)
            if d.get("library_name") == _redis_lua.LIBRARY:
                code = d.get("library_code")
        if code != _redis_lua.CODE:
            # A proxy's own user (xpro store init) may not load functions: the
            # administrator loads them once, with `xpro store init`.
            try:
                client.function_load(_redis_lua.CODE, replace=True)
            except _redis().exceptions.NoPermissionError:
                state = "is missing" if code is None else "is from another xpro version"
                raise StoreUnavailable(
                    f"redis store at {name}: the {_redis_lua.LIBRARY} function library "
                    f"{state} and user {self._username or 'default'} may not load it: run "
                    "`xpro store init` with the administrator's credentials (again after "
                    "a server restart without persistence, or an upgrade of xpro)") from None
            log.info("loaded the %s function library on %s", _redis_lua.LIBRARY, name)
        conn.prepared.add(name)

    def _execute(self, calls: Sequence[_Call], what: str) -> list[Any]:
        """Run ``calls``, pipelined per node; retry what a failover or restart explains.

        Every call xpro makes is safe to repeat: merges are replay-protected,
        the rest are reads or idempotent writes.  Replies are raw RESP2 values;
        error replies of any other kind are returned in place, for the caller
        to judge.  The commands to all nodes are sent before any reply is read,
        and Redis starts working while later ones are still being sent.
        """
        ex = _redis().exceptions
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        deadline = time.monotonic() + self.retry_time
        delay = 0.02
        attempts = 0
        with self._errors(what):
            while pending:
                attempts += 1
                conn = self._connection()
                groups: dict[str, tuple[Any, list[int]]] = {}
                for i in pending:
                    name, client = self._node_client(conn, calls[i].route)
                    groups.setdefault(name, (client, []))[1].append(i)
                retry: list[int] = []
                refresh = False
                last: Exception | None = None
                sent: list[tuple[str, Any, Any, list[int]]] = []
                unread: list[tuple[Any, Any]] = []  # connections with replies pending
                try:
                    for name, (client, idxs) in groups.items():
                        rc = None
                        try:
                            self._prepare(name, client, conn)
                            rc = client.connection_pool.get_connection()
                            unread.append((client, rc))
                            for i in idxs:
                                c = calls[i]
                                rc.send_packed_command(
                                    [c.packed] if c.packed is not None
                                    else rc.pack_command(*c.args),
                                    check_health=False,
                                )
                            sent.append((name, client, rc, idxs))
                        except (ex.ConnectionError, ex.TimeoutError, OSError) as exc:
                            if isinstance(exc, ex.AuthenticationError):
                                raise
                            last, refresh = exc, True
                            retry.extend(idxs)
                            conn.prepared.discard(name)
                    for name, client, rc, idxs in sent:
                        try:
                            for i in idxs:
                                try:
                                    results[i] = rc.read_response()
                                except ex.ResponseError as err:
                                    results[i] = err
                        except (ex.ConnectionError, ex.TimeoutError, OSError) as exc:
                            last, refresh = exc, True
                            retry.extend(idxs)
                            conn.prepared.discard(name)
                            continue
                        unread.remove((client, rc))
                        client.connection_pool.release(rc)
                finally:
                    # A connection whose replies were not all read is out of step:
                    # close it, whatever happened.
                    for client, rc in unread:
                        rc.disconnect()
                        client.connection_pool.release(rc)
                for name, _client, _rc, idxs in sent:
                    for i in idxs:
                        res = results[i]
                        if not isinstance(res, Exception):
                            continue
                        msg = str(res)
                        if isinstance(res, ex.NoPermissionError) or msg.startswith("NOPERM"):
                            raise StoreUnavailable(
                                f"redis store at {name}: user {self._username or 'default'} "
                                f"may not run {calls[i].args[0]} on {calls[i].route} (mesh "
                                f"{self.mesh!r}): {msg}; run `xpro store init --proxy NAME` "
                                "for this mesh and use the user it made") from res
                        if "Function not found" in msg or "NOSCRIPT" in msg:
                            conn.prepared.discard(name)
                            retry.append(i)
                        elif isinstance(res, _retryable(ex)) or msg.startswith(
                            ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "READONLY",
                             "LOADING")
                        ):
                            retry.append(i)
                            refresh = True
                        else:
                            continue
                        last = res
                if not retry:
                    break
                # A single server gets one immediate retry (a connection that
                # went stale when the server restarted); a cluster gets
                # retry_time to fail over.
                if (conn.cluster is None and attempts >= 2) or (
                    conn.cluster is not None and time.monotonic() > deadline
                ):
                    assert last is not None
                    if isinstance(last, ex.ConnectionError | ex.TimeoutError | OSError):
                        raise last
                    raise ex.ConnectionError(f"{type(last).__name__}: {last}") from last
                if refresh and conn.cluster is not None:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    try:
                        conn.cluster.nodes_manager.initialize()
                    except (ex.RedisError, OSError) as exc:
                        log.debug("cluster topology refresh failed: %s", exc)
                    conn.prepared.clear()
                pending = sorted(set(retry))
        return results

    # ------------------------------------------------------------------
    # Mesh configuration: bucket count, encoding, epoch
    # ------------------------------------------------------------------

    def _check_cfg(self) -> str:
        """Create or check the mesh's configuration; return its epoch."""
        epoch = uuid.uuid4().hex
        calls = [
            _Call(("HSETNX", self._cfg_key, "buckets", self.buckets), self._cfg_key),
            _Call(("HSETNX", self._cfg_key, "encoding", ENCODING), self._cfg_key),
            _Call(("HSETNX", self._cfg_key, "epoch", epoch), self._cfg_key),
            _Call(("HGETALL", self._cfg_key), self._cfg_key),
        ]
        res = self._execute(calls, "reading the mesh configuration")
        cfg = res[-1]
        if isinstance(cfg, Exception):
            if self._cfg_pinned and self._epoch_seen:
                # Once connected, a proxy keeps the configuration it accepted.
                self._cfg_rejected("config", f"{self._cfg_key} is not a hash ({cfg})")
                self._epoch = self._epoch_seen
                return self._epoch
            raise BadRecord(f"redis key {self._cfg_key} is not a hash ({cfg}): delete it")
        d = {_text(k): _text(v) for k, v in _pairs_b(cfg)}
        if self._cfg_pinned and (d.get("encoding") != str(ENCODING)
                                 or d.get("buckets") != str(self.buckets)):
            # Rewritten under a running proxy: not adopted (docs/stores.rst).
            self._cfg_rejected("config", f"{self._cfg_key} says encoding "
                               f"{d.get('encoding')!r}, buckets {d.get('buckets')!r}; keeping "
                               f"encoding {ENCODING}, {self.buckets} buckets")
        elif d.get("encoding") != str(ENCODING):
            raise ConfigError(
                f"mesh {self.mesh!r} on {self.where} uses store encoding {d.get('encoding')}, "
                f"this xpro writes encoding {ENCODING}: use another mesh name or upgrade"
            )
        elif d.get("buckets") != str(self.buckets):
            raise ConfigError(
                f"mesh {self.mesh!r} on {self.where} has {d.get('buckets')} buckets but this "
                f"proxy is configured with buckets={self.buckets}: every proxy of a mesh must "
                "use the same value"
            )
        self._epoch = d.get("epoch") or epoch
        self._epoch_seen = self._epoch
        self._cfg_pinned = True
        return self._epoch

    def _cfg_rejected(self, what: str, why: str) -> None:
        """A configuration value not adopted: logged once per text, reported every time."""
        if why not in self._cfg_warned:
            self._cfg_warned.add(why)
            log.warning("redis mesh %s: %s", self.mesh, why)
        self.reject(what, why)

    # ------------------------------------------------------------------
    # Store API
    # ------------------------------------------------------------------

    def merge(self, keys: np.ndarray, local: np.ndarray, params: SyncParams,
              bounds: Bounds | None = None, rule: PullRule | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """Merge through the ``xpro_v1_merge`` function, per bucket, pipelined.

        Atomic per record.  If it raises :class:`StoreUnavailable`, calling it
        again with the same arguments is safe: each bucket's batch is applied
        at most once, and the replay returns what the first application saw.
        The function treats a stored record out of ``bounds`` as absent; a
        bucket whose call fails (bad data the function refuses) comes back
        :data:`~xpro.stores.base.REFUSED`, the other buckets as merged.
        """
        now = time.time_ns()
        limit = max_ts(self.max_future, now)
        b = bounds or default_bounds(self.max_future, now)
        k, loc = check_merge_input(keys, local, params, limit)
        n = len(k)
        existed = np.zeros(n, dtype=bool)
        before = np.zeros(n, dtype=MASTER)
        if rule is not None:
            self._rule = rule
        if n == 0:
            return existed, before
        if self._epoch is None:
            self._check_cfg()
        # A call that failed half way left its identity in _replay; the same
        # arguments again reuse its op, so the server replays what it applied.
        if self._replay is not None and self._replay.digest == batch_digest(k, loc, params):
            op = self._replay.op
        else:
            self._op += 1
            op = self._op
        self._replay = None

        bh = max(0, b.now - (1 << 51)) >> 32
        base = bh << 32
        wire = _encode_local(loc, base)
        fixed = _fixed_args(params, base, bh, b)
        buckets = bucket_of(k, self.buckets)
        order = np.argsort(buckets, kind="stable")
        edges = np.searchsorted(buckets[order], np.arange(self.buckets + 1))
        ks = k[order]
        kraw = ks.tobytes()
        wraw = wire[order].tobytes()
        kresp = _resp_keys(ks)
        ws, rs = WIRE.itemsize, _KEY_RESP
        stamp = struct.pack(">I", now // 1_000_000_000)
        calls: list[_Call] = []
        for bk in np.flatnonzero(np.diff(edges)):
            tag = self._tags[bk]
            lo, hi = int(edges[bk]), int(edges[bk + 1])
            for ci, s in enumerate(range(lo, hi, self.batch)):
                e = min(s + self.batch, hi)
                head: tuple[Any, ...] = (
                    "FCALL", "xpro_v1_merge", 4, f"{tag}:r", f"{tag}:l", f"{tag}:m",
                    f"{tag}:d:{self.client_id}", op, ci, *fixed, wraw[s * ws : e * ws],
                    stamp + kraw[s * KEY_SIZE : e * KEY_SIZE],
                )
                packed = _resp_head(head, len(head) + e - s) + kresp[s * rs : e * rs]
                calls.append(_Call(head, f"{tag}:r", int(bk), order[s:e], packed))
        try:
            results = self._execute(calls, "merge")
        except BaseException:
            self._replay = Replay(batch_digest(k, loc, params), op)
            raise
        corrupt: list[bytes] = []
        for call, res in zip(calls, results, strict=True):
            assert call.idx is not None
            if isinstance(res, Exception):
                # Not applied (the function checks before it writes): the
                # caller keeps these records' counts for its next merge.
                stale = _STALE_RE.search(str(res))
                if stale is not None:  # number the next call past the master's
                    self._op = max(self._op, int(stale[1]))
                log.warning("redis refused a merge of %d records into bucket %d of mesh %r: "
                            "%s", len(call.idx), call.bucket, self.mesh, res)
                before[call.idx] = REFUSED
                for kb in key_list(k[call.idx]):
                    self.reject(key_hex(kb), f"merge refused: {res}")
                continue
            m = len(call.idx)
            blob = bytes(res)
            if len(blob) != m * (1 + RECORD_SIZE):
                # Applied, but what the master held is unknown: absent.
                log.warning("redis returned %d bytes for a merge of %d records in bucket %d: "
                            "is another program using the keys?", len(blob), m, call.bucket)
                for kb in key_list(k[call.idx]):
                    self.reject(key_hex(kb), "merge reply of the wrong length")
                continue
            flags = np.frombuffer(blob[:m], dtype=np.uint8)
            existed[call.idx] = flags == FLAG_EXISTED
            before[call.idx] = np.frombuffer(blob[m:], dtype=MASTER)
            if (flags == FLAG_REFUSED).any():
                before[call.idx[flags == FLAG_REFUSED]] = REFUSED
                for kb in key_list(k[call.idx[flags == FLAG_REFUSED]]):
                    self.reject(key_hex(kb), "merge refused: the record is dated in the future")
            if (flags == FLAG_CORRUPT).any():
                corrupt.extend(key_list(k[call.idx[flags == FLAG_CORRUPT]]))
        for i, kb in enumerate(corrupt):
            if i < 100:
                log.warning("redis mesh %s: record %s was corrupt; replaced by this proxy's record",
                            self.mesh, key_hex(kb))
            self.reject(key_hex(kb), "merged into: corrupt or out of bounds")
        if rule is not None:
            try:
                self._publish(k, loc, existed, before, buckets, params, rule, op, stamp)
            except BaseException:
                self._replay = Replay(batch_digest(k, loc, params), op)
                raise
        return existed, before

    def _publish(self, k: np.ndarray, loc: np.ndarray, existed: np.ndarray, before: np.ndarray,
                 buckets: np.ndarray, params: SyncParams, rule: PullRule, op: int,
                 stamp: bytes) -> None:
        """Publish what a merge did, judged here from its exact before and after
        (:mod:`xpro.core.pull`)."""
        written = ~((before == REFUSED) & ~existed)
        _, after = merge_arrays(loc, np.ones(len(loc), dtype=bool), before, existed, params)
        self._publish_moves(k, before, existed & written, after, written, buckets, rule, op,
                            stamp)

    def _publish_moves(self, k: np.ndarray, before: np.ndarray, had: np.ndarray,
                       after: np.ndarray, has: np.ndarray, buckets: np.ndarray, rule: PullRule,
                       op: int | str, stamp: bytes) -> None:
        """One ``xpro_v1_publish`` call per bucket, pipelined: the candidates and
        known clients of the bucket's flows, the partials of the bucket's
        destinations; at most once per (op, bucket).  Beside the merge, not in
        it: the server's work follows the candidates and the destinations
        touched, not the records merged."""
        judged, cs_add, cs_del, elig = judge_arrays(k, before, had, after, has, rule)
        unelig = had & ~has
        ak, t1, t2, dc, dn = partial_deltas(k, before, had, after, has, rule)
        home = self._dst_buckets(ak["dst"])
        pk = np.zeros(len(ak), dtype=_DELTA)
        pk["dst"], pk["slot"] = ak["dst"], ak["slot"]
        pk["t1"] = t1
        pk["t2"] = np.where(t1 == np.iinfo(np.uint64).max, np.iinfo(np.uint64).max, t2)
        pk["plus"] = np.maximum(dc, 0)
        pk["minus"] = np.maximum(-dc, 0)
        pk["dn"] = dn
        per = np.bincount(buckets[judged | cs_del | elig | unelig], minlength=self.buckets) \
            + np.bincount(home, minlength=self.buckets)
        calls: list[_Call] = []
        for bk in np.flatnonzero(per):
            tag = self._tags[bk]
            mine = buckets == bk
            calls.append(_Call((
                "FCALL", "xpro_v1_publish", 7, f"{tag}:r", f"{tag}:m", f"{tag}:c", f"{tag}:cs",
                f"{tag}:a", f"{tag}:al", f"{tag}:p:{self.client_id}", op, "p", stamp,
                k[mine & judged].tobytes(), k[mine & cs_add].tobytes(),
                k[mine & cs_del].tobytes(), pk[home == bk].tobytes(), k[mine & elig].tobytes(),
                k[mine & unelig].tobytes()), f"{tag}:r", int(bk)))
        for call, res in zip(calls, self._execute(calls, "publish"), strict=True):
            if isinstance(res, Exception):
                log.warning("redis mesh %s: publishing a merge's candidates and partials in "
                            "bucket %d failed: %s", self.mesh, call.bucket, res)

    def _dst_buckets(self, dsts: np.ndarray) -> np.ndarray:
        """The bucket of each destination's partials: that of its key with a zero source."""
        fk = np.zeros(len(dsts), dtype=FLOW_KEY)
        fk["dst"] = dsts
        fk["dst"]["pad"] = 0
        return bucket_of(fk, self.buckets)

    def changes(self, cursor: Any | None, limit: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, RedisCursor]:
        """Records changed since ``cursor``; O(changed records) per bucket with changes.

        With a ``limit``, each bucket gives at most ``limit // buckets`` keys
        (whole change-log entries, at least one), and a bucket read in full
        (its log trimmed past the cursor, the first read) is scanned
        ``limit`` records at a time over several calls.
        """
        lim_ts = max_ts(self.max_future)
        epoch = self._epoch or self._check_cfg()
        scans: dict[int, tuple[int, int]] = {}
        if (
            isinstance(cursor, RedisCursor)
            and cursor.epoch == epoch
            and len(cursor.versions) == self.buckets
        ):
            seen = list(cursor.versions)
            scans = {b: (hc, v0) for b, hc, v0 in cursor.scans if 0 <= b < self.buckets}
        else:
            seen = [-1] * self.buckets
        cap = 0 if limit is None else max(1, limit // self.buckets)
        calls = [_Call(("HGET", self._cfg_key, "epoch"), self._cfg_key)]
        for b, tag in enumerate(self._tags):
            if b not in scans:
                calls.append(_Call(("FCALL_RO", "xpro_v1_changes", 3, f"{tag}:r", f"{tag}:l",
                                    f"{tag}:m", seen[b], cap), f"{tag}:r", b))
        res = self._execute(calls, "reading changes")
        now_epoch = _text(res[0]) if res[0] is not None and not isinstance(res[0], Exception) \
            else None
        if now_epoch != epoch:
            # The store was emptied or replaced -- or the key rewritten: start
            # over with a full read, and say so.
            log.warning("redis mesh %s: the store's epoch changed (emptied or replaced?); "
                        "reading everything again", self.mesh)
            self.reject("config epoch", "changed: every record is read again")
            self._epoch = None
            if cursor is None:
                epoch = self._check_cfg()
            else:
                return self.changes(None, limit)
        versions = list(seen)
        got_keys: list[bytes] = []
        got_vals: list[bytes | None] = []
        more = False
        for call, r in zip(calls[1:], res[1:], strict=True):
            b = call.bucket
            if isinstance(r, Exception):
                log.error("redis mesh %s: bucket %d cannot be read (%s); skipping it", self.mesh,
                          b, r)
                continue
            mode = int(r[1])
            if mode == 3:
                versions[b] = int(r[0])
                log.error("redis mesh %s: %s is not a hash; skipping bucket %d (delete the key, "
                          "or let the next merge into it replace it)", self.mesh,
                          self.bucket_keys(b)["records"], b)
            elif mode == 1:
                scans[b] = (0, int(r[0]))
            elif mode == 0:
                kb, vals = bytes(r[2]), r[3]
                head = int(r[4]) if len(r) > 4 else int(r[0])  # the log's length now
                if len(kb) % KEY_SIZE or len(kb) // KEY_SIZE != len(vals):
                    log.warning("redis mesh %s: bucket %d's change log is corrupt; reading the "
                                "bucket in full", self.mesh, b)
                    scans[b] = (0, head)
                    continue
                versions[b] = int(r[0])
                more = more or int(r[0]) < head
                got_keys.extend(kb[i : i + KEY_SIZE] for i in range(0, len(kb), KEY_SIZE))
                got_vals.extend(vals)
            else:
                versions[b] = int(r[0])
        if scans:
            budget = None if limit is None else max(1, limit - len(got_keys))
            fk, fv, done = self._scan_some(scans, budget)
            got_keys.extend(fk)
            got_vals.extend(fv)
            for b in done:
                versions[b] = scans.pop(b)[1]
            more = more or bool(scans)
        ks, recs = decode_values(got_keys, got_vals, lim_ts, f"redis mesh {self.mesh}",
                                 self.reject)
        return ks, recs, RedisCursor(epoch, tuple(versions),
                                     tuple((b, hc, v0) for b, (hc, v0) in sorted(scans.items())),
                                     more)

    candidates = True

    def pull(self, cursor: Any | None, limit: int | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, RedisPullCursor]:
        """Candidates and partials changed since ``cursor``, per bucket
        (``xpro_v1_pull``, pipelined): O(candidates + partials changed)."""
        lim_ts = max_ts(self.max_future)
        epoch = self._epoch or self._check_cfg()
        if (isinstance(cursor, RedisPullCursor) and cursor.epoch == epoch
                and len(cursor.cands) == self.buckets):
            cseen, aseen = list(cursor.cands), list(cursor.parts)
        else:
            cseen, aseen = [-1] * self.buckets, [-1] * self.buckets
        cap = 0 if limit is None else max(1, limit // self.buckets)
        calls = [_Call(("HGET", self._cfg_key, "epoch"), self._cfg_key)]
        for b, tag in enumerate(self._tags):
            calls.append(_Call(("FCALL_RO", "xpro_v1_pull", 6, f"{tag}:r", f"{tag}:m",
                                f"{tag}:c", f"{tag}:cs", f"{tag}:a", f"{tag}:al",
                                cseen[b], aseen[b], cap), f"{tag}:r", b))
        res = self._execute(calls, "pulling candidates")
        now_epoch = _text(res[0]) if res[0] is not None and not isinstance(res[0], Exception) \
            else None
        if now_epoch != epoch:
            log.warning("redis mesh %s: the store's epoch changed (emptied or replaced?); "
                        "pulling everything again", self.mesh)
            self.reject("config epoch", "changed: every candidate is pulled again")
            self._epoch = None
            if cursor is None:
                epoch = self._check_cfg()
            else:
                return self.pull(None, limit)
        got_keys: list[bytes] = []
        got_vals: list[bytes | None] = []
        akeys: list[bytes] = []
        avals: list[bytes] = []
        shards: list[int] = []
        more = False
        for call, r in zip(calls[1:], res[1:], strict=True):
            b = call.bucket
            if isinstance(r, Exception):
                log.error("redis mesh %s: bucket %d cannot be pulled (%s); skipping it",
                          self.mesh, b, r)
                continue
            kb, vals = bytes(r[2]), r[3]
            if len(kb) % KEY_SIZE == 0 and len(kb) // KEY_SIZE == len(vals):
                got_keys.extend(kb[i : i + KEY_SIZE] for i in range(0, len(kb), KEY_SIZE))
                got_vals.extend(vals)
                cseen[b] = int(r[0])
                more = more or int(r[0]) < int(r[1])
            else:
                cseen[b] = -1  # a corrupt log: everything again next time
            ab, pv = bytes(r[6]), r[7]
            w = _AGG_FIELD
            if len(ab) % w == 0 and len(ab) // w == len(pv):
                for i in range(len(pv)):
                    v = pv[i]
                    if v is not None and len(v) == PARTIAL.itemsize:
                        akeys.append(ab[i * w : (i + 1) * w])
                        avals.append(bytes(v))
                        shards.append(b)
                aseen[b] = int(r[4])
            else:
                aseen[b] = -1
        ks, recs = decode_values(got_keys, got_vals, lim_ts, f"redis mesh {self.mesh}",
                                 self.reject)
        ak = np.zeros(len(akeys), dtype=AGG_KEY)
        if akeys:
            raw = np.frombuffer(b"".join(akeys), dtype=np.dtype([("dst", DST_KEY),
                                                                 ("slot", "<u8")]))
            ak["dst"], ak["slot"] = raw["dst"], raw["slot"]
            ak["shard"] = shards
        parts = np.frombuffer(b"".join(avals), dtype=PARTIAL).copy() if avals \
            else np.zeros(0, dtype=PARTIAL)
        return ks, recs, ak, parts, RedisPullCursor(epoch, tuple(cseen), tuple(aseen), more)

    def clients(self, dsts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The known-client index of these destinations, every bucket (``xpro_v1_clients``)."""
        dk = np.array(dsts, dtype=DST_KEY).reshape(-1)
        dk["pad"] = 0
        if not len(dk):
            return np.zeros(0, dtype=FLOW_KEY), np.zeros(0, dtype=MASTER)
        if self._epoch is None:
            self._check_cfg()
        blob = dk.tobytes()
        calls = [_Call(("FCALL_RO", "xpro_v1_clients", 1, f"{tag}:r", blob), f"{tag}:r", b)
                 for b, tag in enumerate(self._tags)]
        got_keys: list[bytes] = []
        got_vals: list[bytes | None] = []
        for call, r in zip(calls, self._execute(calls, "reading known clients"), strict=True):
            if isinstance(r, Exception):
                log.error("redis mesh %s: bucket %d's known clients cannot be read (%s)",
                          self.mesh, call.bucket, r)
                continue
            kb, vals = bytes(r[0]), r[1]
            if len(kb) % KEY_SIZE or len(kb) // KEY_SIZE != len(vals):
                self.reject(f"bucket {call.bucket}", "known clients: a reply of the wrong length")
                continue
            got_keys.extend(kb[i : i + KEY_SIZE] for i in range(0, len(kb), KEY_SIZE))
            got_vals.extend(vals)
        return decode_values(got_keys, got_vals, max_ts(self.max_future),
                             f"redis mesh {self.mesh}", self.reject)

    def _scan_some(self, scans: dict[int, tuple[int, int]], budget: int | None
                   ) -> tuple[list[bytes], list[bytes | None], list[int]]:
        """Go on with the full reads of ``scans`` (bucket -> (HSCAN cursor, log
        entries at the start)), until about ``budget`` records were read (None:
        to the end).  Updates ``scans``; returns the records and the buckets done."""
        found: dict[bytes, bytes | None] = {}
        done: list[int] = []
        while len(done) < len(scans) and (budget is None or len(found) < budget):
            todo = [b for b in scans if b not in done]
            if budget is not None:  # as many buckets as the budget needs, ~10 a call each
                todo = todo[: max(1, (budget - len(found)) // 10)]
            count = 10000 if budget is None else max(10, min(10000, (budget - len(found))
                                                          // len(todo)))
            calls = [_Call(("HSCAN", f"{self._tags[b]}:r", scans[b][0], "COUNT", count),
                           f"{self._tags[b]}:r", b) for b in todo]
            for call, r in zip(calls, self._execute(calls, "reading all records"), strict=True):
                b = call.bucket
                if isinstance(r, Exception):
                    log.error("redis mesh %s: bucket %d cannot be scanned (%s); skipping it",
                              self.mesh, b, r)
                    done.append(b)
                    continue
                nxt, items = r
                d = dict(zip(items[0::2], items[1::2], strict=True))
                d.pop(_SENTINEL, None)
                for kf in [kf for kf in d if len(kf) != KEY_SIZE]:
                    log.warning("redis mesh %s: skipping field %r in bucket %d: not a flow key",
                                self.mesh, kf[:64], b)
                    self.reject(repr(kf[:64]), "not a flow key")
                    del d[kf]
                found.update(d)  # HSCAN may return a field twice: one is kept
                scans[b] = (int(nxt), scans[b][1])
                if int(nxt) == 0:
                    done.append(b)
        return list(found), list(found.values()), done

    def _scan(self, buckets: Sequence[int]) -> tuple[list[bytes], list[bytes | None]]:
        """Every record of these buckets (HSCAN, pipelined across buckets)."""
        cursors = dict.fromkeys(buckets, 0)
        found: dict[int, dict[bytes, bytes]] = {b: {} for b in buckets}
        while cursors:
            calls = [
                _Call(("HSCAN", f"{self._tags[b]}:r", c, "COUNT", 10000), f"{self._tags[b]}:r",
                      b)
                for b, c in cursors.items()
            ]
            res = self._execute(calls, "reading all records")
            for call, r in zip(calls, res, strict=True):
                b = call.bucket
                if isinstance(r, Exception):
                    log.error("redis mesh %s: bucket %d cannot be scanned (%s); skipping it",
                              self.mesh, b, r)
                    del cursors[b]
                    continue
                nxt, items = r
                # HSCAN may repeat a field across calls: a dict keeps one.
                found[b].update(zip(items[0::2], items[1::2], strict=True))
                if int(nxt) == 0:
                    del cursors[b]
                else:
                    cursors[b] = int(nxt)
        keys: list[bytes] = []
        vals: list[bytes | None] = []
        for b in buckets:
            d = found[b]
            d.pop(_SENTINEL, None)
            ks = list(d)
            if any(len(kf) != KEY_SIZE for kf in ks):
                for kf in [kf for kf in ks if len(kf) != KEY_SIZE]:
                    log.warning("redis mesh %s: skipping field %r in bucket %d: not a flow key",
                                self.mesh, kf[:64], b)
                    self.reject(repr(kf[:64]), "not a flow key")
                    del d[kf]
                ks = list(d)
            keys.extend(ks)
            vals.extend(d.values())
        return keys, vals

    def heartbeat(self, proxy: str, workload: float, now: int, offset: int | None = None
                  ) -> None:
        if not math.isfinite(workload) or workload < 0:
            raise ValueError(f"workload {workload!r} must be a finite number >= 0")
        value = encode_heartbeat(workload, now, offset)
        calls = [
            _Call(("HSET", self._hb_key, proxy, value), self._hb_key),
            _Call(("EXPIRE", self._hb_key, self.heartbeat_ttl), self._hb_key),
        ]
        for r in self._execute(calls, "heartbeat"):
            if isinstance(r, Exception):
                raise BadRecord(f"redis key {self._hb_key} is not a hash ({r}): delete it")

    def proxies(self) -> dict[str, ProxyStatus]:
        (r,) = self._execute([_Call(("HGETALL", self._hb_key), self._hb_key)], "reading proxies")
        if isinstance(r, Exception):
            log.error("redis mesh %s: heartbeats unreadable (%s)", self.mesh, r)
            return {}
        return decode_heartbeats(_pairs_b(r), max_ts(self.max_future), f"redis mesh {self.mesh}",
                                 self.reject)

    def expire(self, before: int, bounds: Bounds | None = None) -> int:
        """Delete records with ts2 < ``before`` (and corrupt or out-of-bounds ones);
        trim old change logs."""
        if not 0 <= before < 1 << 64:
            raise ValueError(f"before={before} is not a u64 timestamp")
        b = bounds or default_bounds(self.max_future)
        limit, oldest = b.limit, b.oldest
        ppn = -1.0 if b.max_pps is None else b.max_pps / 1e9
        keys, vals = self._scan(range(self.buckets))
        if not keys:
            cands: list[bytes] = []
        else:
            bad = np.array([v is None or len(v) != RECORD_SIZE for v in vals], dtype=bool)
            raw = b"".join(v if (v is not None and len(v) == RECORD_SIZE) else bytes(RECORD_SIZE)
                           for v in vals)
            recs = np.frombuffer(raw, dtype=MASTER)
            old = (recs["ts2"] < np.uint64(before)) | ~b.ok(recs) | bad
            cands = [keys[i] for i in np.flatnonzero(old)]
        per_bucket: dict[int, list[bytes]] = {b: [] for b in range(self.buckets)}
        if cands:
            for kb, bk in zip(cands, bucket_of(keys_from_bytes(cands), self.buckets),
                              strict=True):
                per_bucket[int(bk)].append(kb)
        calls = []
        for bk, lst in per_bucket.items():
            tag = self._tags[bk]
            chunks = [lst[i : i + 4000] for i in range(0, len(lst), 4000)] or [[]]
            for ch in chunks:
                args: tuple[Any, ...] = (
                    before >> 32, before & _LO32, limit >> 32, limit & _LO32,
                    oldest >> 32, oldest & _LO32, repr(ppn),
                    self.log_retention, int(time.time()), b"".join(ch))
                if self._rule is None:
                    head: tuple[Any, ...] = ("FCALL", "xpro_v1_expire", 3, f"{tag}:r",
                                             f"{tag}:l", f"{tag}:m")
                else:  # deleted records are returned; dead partials go
                    head = ("FCALL", "xpro_v1_expire", 4, f"{tag}:r", f"{tag}:l", f"{tag}:m",
                            f"{tag}:a")
                    args = (*args, self._rule.live_from(before), limit // self._rule.slot_ns)
                calls.append(_Call((*head, *args), f"{tag}:r", bk))
        total = 0
        gone_k: list[bytes] = []
        gone_v: list[bytes] = []
        for call, r in zip(calls, self._execute(calls, "expire"), strict=True):
            if isinstance(r, Exception):
                log.error("redis mesh %s: expiring bucket %d failed: %s", self.mesh, call.bucket,
                          r)
                continue
            if isinstance(r, list):
                kb, vb = bytes(r[1]), bytes(r[2])
                if len(kb) // KEY_SIZE * RECORD_SIZE == len(vb) and not len(kb) % KEY_SIZE:
                    gone_k.append(kb)
                    gone_v.append(vb)
                total += int(r[0])
            else:
                total += int(r)
        if self._rule is not None and gone_k:
            # The deleted records' contributions leave their partials (docs/sync.rst).
            dk = keys_from_bytes(b"".join(gone_k))
            dv = np.frombuffer(b"".join(gone_v), dtype=MASTER).copy()
            n = len(dk)
            self._publish_moves(dk, dv, np.ones(n, bool), np.zeros(n, dtype=MASTER),
                                np.zeros(n, bool), bucket_of(dk, self.buckets), self._rule,
                                f"x{uuid.uuid4().hex}", struct.pack(">I", int(time.time())))
        # a minute more than the records: a beat is every round, and a clock
        # a little behind the lease holder's must not lose its proxy's entry
        self._prune_heartbeats(max(0, before - HEARTBEAT_GRACE_NS))
        return total

    def _prune_heartbeats(self, before: int) -> None:
        """Delete the heartbeats not beaten since ``before`` (proxies gone, or
        junk dated in the past) and the fields that are not heartbeats: the
        hash lives as long as any proxy beats, and every round reads it whole
        (docs/security.rst, "A store writer")."""
        (r,) = self._execute([_Call(("HGETALL", self._hb_key), self._hb_key)], "reading proxies")
        if isinstance(r, Exception):
            return
        dead = [name for name, v in _pairs_b(r)
                if (hb := decode_heartbeat(v)) is None or hb[1] < before]
        calls = [_Call(("HDEL", self._hb_key, *dead[i : i + 4000]), self._hb_key)
                 for i in range(0, len(dead), 4000)]
        for res in self._execute(calls, "pruning heartbeats") if calls else ():
            if isinstance(res, Exception):
                log.warning("redis mesh %s: pruning heartbeats: %s", self.mesh, res)
        if dead:
            log.info("redis mesh %s: %d heartbeat field(s) of proxies gone or not heartbeats "
                     "deleted", self.mesh, len(dead))

    def clock(self) -> int | None:
        """The server's ``TIME``; None (logged once) if this user may not ask."""
        try:
            (r,) = self._execute([_Call(("TIME",), self._cfg_key)], "reading the clock")
        except StoreUnavailable as exc:
            if "NOPERM" not in str(exc) and "may not" not in str(exc):
                raise
            r = exc
        if isinstance(r, Exception) or not isinstance(r, list | tuple) or len(r) != 2:
            if not self._no_clock:
                self._no_clock = True
                log.warning("redis mesh %s: the store's clock cannot be read (%s); clock "
                            "offsets are not measured (grant +time: `xpro store init`)",
                            self.mesh, r)
            return None
        return int(r[0]) * 1_000_000_000 + int(r[1]) * 1000

    def lease(self, name: str, holder: str, seconds: float) -> bool:
        """``xpro_v1_lease`` on ``{xpro:MESH}:lease:NAME``: the server's clock times it."""
        key = self._lease_key + name
        (r,) = self._execute([_Call(("FCALL", "xpro_v1_lease", 1, key, holder,
                                     max(1, math.ceil(seconds))), key)], "taking a lease")
        if isinstance(r, Exception):
            log.warning("redis mesh %s: lease %s: %s", self.mesh, name, r)
            return False
        return int(r) == 1

    def ping(self) -> None:
        with self._errors("ping"):
            conn = self._connection()
            if conn.cluster is not None:
                for node in conn.cluster.get_primaries():
                    conn.cluster.get_redis_connection(node).ping()
            else:
                conn.single.ping()

    def close(self) -> None:
        """Close the connections, for good: a call blocked on them (from another
        thread) fails at once, and every later call raises StoreUnavailable."""
        self._closed = True
        self._drop_connection()

    # ------------------------------------------------------------------
    # For tests and tools
    # ------------------------------------------------------------------

    def bucket_keys(self, bucket: int) -> dict[str, str]:
        """The Redis key names of one bucket (for tests, tools and docs)."""
        tag = self._tags[bucket]
        return {"records": f"{tag}:r", "log": f"{tag}:l", "meta": f"{tag}:m"}

    def key_bucket(self, key: bytes) -> int:
        """The bucket of one 36-byte flow key."""
        return int(bucket_of(keys_from_bytes([key]), self.buckets)[0])

    def raw_client(self, route: str) -> Any:
        """The redis-py client of the node that holds ``route`` (tests inject bad data)."""
        return self._node_client(self._connection(), route)[1]


# --------------------------------------------------------------------------
# Encoding helpers
# --------------------------------------------------------------------------


_KEY_RESP = len(b"$36\r\n") + KEY_SIZE + 2
_KEY_RESP_DTYPE = np.dtype([("h", "S5"), ("k", f"V{KEY_SIZE}"), ("t", "S2")])


def _resp_keys(keys: np.ndarray) -> bytes:
    """The keys as consecutive RESP bulk strings, built without a Python loop."""
    out = np.empty(len(keys), dtype=_KEY_RESP_DTYPE)
    out["h"] = b"$36\r\n"
    out["k"] = keys.view(f"V{KEY_SIZE}")
    out["t"] = b"\r\n"
    return out.tobytes()


def _resp_head(args: Sequence[Any], argc: int) -> bytes:
    """A RESP array header for ``argc`` arguments and the first ones, packed."""
    parts = [b"*%d\r\n" % argc]
    for a in args:
        v = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n" % len(v))
        parts.append(v)
        parts.append(b"\r\n")
    return b"".join(parts)


def _retryable(ex: Any) -> tuple[type[Exception], ...]:
    return (ex.ConnectionError, ex.TimeoutError, ex.MovedError, ex.AskError, ex.TryAgainError,
            ex.ClusterDownError, ex.ReadOnlyError)


_AGG_FIELD = 28  # a partial's field: the destination (20 bytes), the slot (u64)
#: A partial's delta as xpro_v1_publish reads it.
_DELTA = np.dtype([("dst", DST_KEY), ("slot", "<u8"), ("t1", "<u8"), ("t2", "<u8"),
                   ("plus", "<u8"), ("minus", "<u8"), ("dn", "<i4")])


def _encode_local(loc: np.ndarray, base: int) -> np.ndarray:
    """LOCAL records as the merge function reads them (see _redis_lua)."""
    w = np.zeros(len(loc), dtype=WIRE)
    for f in ("ts1", "ts2", "c", "dc"):
        w[f] = loc[f]
    r1 = loc["ts1"].astype(np.int64) - base
    r2 = loc["ts2"].astype(np.int64) - base
    fast = (r1 >= 0) & (r1 < _W52) & (r2 >= 0) & (r2 < _W52) & (loc["dc"] < np.uint64(_W52))
    w["a1"] = np.where(fast, r1, 0)
    w["a2"] = np.where(fast, r2, 0)
    w["ad"] = np.where(fast, loc["dc"].astype(np.float64), 0)
    w["mark"] = loc["mark"].astype(np.uint8) + np.where(fast, 0, 2).astype(np.uint8)
    return w


def _fixed_args(params: SyncParams, base: int, bh: int, bounds: Bounds
                ) -> tuple[int | str, ...]:
    """ARGV 3..17 of the merge function: the base, thresholds exact and as doubles,
    the bounds of a stored record (latest timestamp, earliest ts2, packets per ns)."""
    t1, t4 = params.t_t1, params.t_t4
    limit, oldest = bounds.limit, bounds.oldest
    mxr = limit - base
    fast = t1 < _W52 and t4 < _W52 and 0 <= mxr < _W52
    ppn = -1.0 if bounds.max_pps is None else bounds.max_pps / 1e9
    return (
        bh, t1 if fast else -1, t4, params.r_q, mxr if fast else 0,
        t1 >> 32, t1 & _LO32, t4 >> 32, t4 & _LO32, limit >> 32, limit & _LO32,
        repr(float(oldest - base)), oldest >> 32, oldest & _LO32, repr(ppn),
    )


def decode_heartbeats(items: Any, limit: int, where: str, reject: Reject | None = None
                      ) -> dict[str, ProxyStatus]:
    """Heartbeat values (16 bytes: W as f64, last seen as u64); bad ones skipped."""
    out: dict[str, ProxyStatus] = {}
    for name, value in items:
        pname = _text(name)
        v = bytes(value) if value is not None else b""
        hb = decode_heartbeat(v)
        if hb is None:
            log.warning("%s: skipping heartbeat of %r: %d bytes, not 16 or 24", where, pname,
                        len(v))
            if reject is not None:
                reject(f"heartbeat {pname!r}", f"{len(v)} bytes")
            continue
        w, seen, off = hb
        if not math.isfinite(w) or w < 0 or seen > limit:
            log.warning("%s: skipping heartbeat of %r: out of bounds (W=%r, last seen %d)",
                        where, pname, w, seen)
            if reject is not None:
                reject(f"heartbeat {pname!r}", "out of bounds")
            continue
        out[pname] = ProxyStatus(workload=w, last_seen=seen, offset=off)
    return out


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes | bytearray) else str(v)


def _pairs(item: Any) -> dict[str, Any]:
    """FUNCTION LIST entries come as dicts (RESP3) or flat lists (RESP2)."""
    if isinstance(item, dict):
        return {_text(k): v if k in (b"library_code", "library_code") else _maybe_text(v)
                for k, v in item.items()}
    out: dict[str, Any] = {}
    for i in range(0, len(item) - 1, 2):
        k = _text(item[i])
        v = item[i + 1]
        out[k] = _text(v) if k == "library_code" else _maybe_text(v)
    return out


def _maybe_text(v: Any) -> Any:
    return _text(v) if isinstance(v, bytes | bytearray) else v


def _pairs_b(items: Sequence[Any]) -> list[tuple[bytes, bytes]]:
    return [(bytes(items[i]), bytes(items[i + 1])) for i in range(0, len(items) - 1, 2)]



@hookimpl
def xpro_add_stores(registry: Registry[Any]) -> None:
    for scheme in RedisStore.schemes:
        registry.add(scheme, RedisStore)
