"""The etcd v3 master store: ``etcd://host:port[,host:port...]``, ``etcds://`` (TLS).

The client: cslab-etcd3 (a maintained fork of python-etcd3, same top-level
name ``etcd3``), which installs and imports with current protobuf and grpcio.
This store uses its generated gRPC stubs and messages (``etcd3.etcdrpc``) and
drives them itself: one channel per endpoint, failover to the next endpoint and
retry on UNAVAILABLE / DEADLINE_EXCEEDED, token refresh, transactions sent
concurrently as gRPC futures.  Its high-level MultiEndpointEtcd3Client does
fail over, but only on the call after a failure, parks a failed endpoint for
300 s and never retries or refreshes an auth token (docs/stores.rst).

Layout under ``xpro/MESH/``: ``r/<36-byte key>`` the records (24 bytes, as in
Redis), ``l/<time>/<client>/<op>/<chunk>`` one change-log entry per merge
transaction, ``v`` (rewritten by every merge: its mod_revision says whether
anything changed), ``lt`` (the highest revision of a trimmed log entry),
``hb/<proxy>`` heartbeats, ``cfg`` the encoding.

Merges are compare-and-swap transactions on each record's mod_revision, at
most 120 records (plus the log entry and ``v``) per transaction; a transaction
that loses is recomputed from the fresh values its failure branch returns and
sent again with backoff, and after ``max_retries`` losses StoreConflict.
"""

from __future__ import annotations

import logging
import math
import random
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from xpro.config.kinds import (
    HOST_LIST_PORTS,
    mask_url,
    read_small_file,
    redact,
    split_hosts,
    split_url,
)
from xpro.core.bounds import FUTURE, REASONS, Bounds
from xpro.core.layout import DST_KEY, FLOW_KEY, MASTER
from xpro.core.merge import merge_arrays
from xpro.core.model import SyncParams
from xpro.core.pull import AGG_KEY, PARTIAL, PullRule, judge_arrays, partial_deltas
from xpro.core.status import ProxyStatus
from xpro.core.text import printable
from xpro.errors import ConfigError, StoreConflict, StoreError, StoreUnavailable
from xpro.hooks.specs import hookimpl
from xpro.stores._common import (
    DEFAULT_MAX_FUTURE_S,
    FLAG_ABSENT,
    FLAG_CORRUPT,
    FLAG_EXISTED,
    FLAG_REFUSED,
    KEY_SIZE,
    MAX_COUNT,
    RECORD_SIZE,
    Replay,
    batch_digest,
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

__all__ = ["CHUNK", "ENCODING", "KNOWN_OPTIONS", "EtcdCursor", "EtcdStore", "xpro_add_stores"]

log = logging.getLogger("xpro.stores.etcd")

T = TypeVar("T")

ENCODING = 1
#: Records per merge transaction: 120 compares and puts, plus the log entry
#: and ``v``, stay within etcd's default --max-txn-ops of 128.
CHUNK = 120
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]
KNOWN_OPTIONS = (
    "ca", "cert", "key", "server_name", "username", "password", "password_file", "timeout",
    "retry_time",    "max_retries", "log_retention", "max_future", "page",
)


def _etcd() -> Any:
    try:
        import etcd3.etcdrpc as rpc  # type: ignore[import-untyped]
        import grpc  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError("etcd:// stores need the etcd client: pip install 'xpro[etcd]'"
                          ) from None
    return rpc, grpc


@dataclass(frozen=True)
class EtcdCursor:
    """A reader's position: the cluster and the revision it has read up to.

    ``scan_from``: a full read of the records is under way, from this key on
    (``revision`` is then the one it began at); ``more``: changes were left
    for the next read (its ``limit`` was reached).
    """

    cluster: int
    revision: int
    scan_from: bytes | None = None
    more: bool = False


class EtcdStore(Store):
    """A mesh's master records in etcd (v3 API, one or more endpoints)."""

    schemes: ClassVar[tuple[str, ...]] = ("etcd", "etcds")

    def __init__(self, *, url: str, mesh: str, endpoints: Sequence[tuple[str, int]], tls: bool,
                 username: str | None, password: str | None, opts: Mapping[str, Any]) -> None:
        self.url = mask_url(url)
        self.mesh = check_mesh(mesh)
        self.endpoints = list(endpoints)
        self.tls = tls
        self._username = username
        self._password = password
        self.timeout = opt_num(opts, "timeout", 5.0, 0.1, 3600)
        self.retry_time = opt_num(opts, "retry_time", 3.0, 0, 3600)
        self.max_retries = opt_int(opts, "max_retries", 50, 1, 10_000)
        self.log_retention = opt_int(opts, "log_retention", 300, 1, 10**7)
        self.max_future = opt_num(opts, "max_future", DEFAULT_MAX_FUTURE_S, 1, 10**8)
        self.page = opt_int(opts, "page", 10_000, 100, 1_000_000)
        self._tls_files = {n: opts.get(n) for n in ("ca", "cert", "key")}
        self._server_name = opts.get("server_name")
        self.client_id = uuid.uuid4().hex[:16]
        self._op = 0
        self._replay: Replay | None = None
        self._replay_stamp = 0
        self._lock = threading.RLock()
        self._channels: list[Any] = [None] * len(self.endpoints)
        self._closed = False
        self._current = random.randrange(len(self.endpoints))
        self._token: str | None = None
        p = b"xpro/" + self.mesh.encode() + b"/"
        self._p_rec = p + b"r/"
        self._p_log = p + b"l/"
        self._p_hb = p + b"hb/"
        self._k_ver = p + b"v"
        self._k_trim = p + b"lt"
        self._k_cfg = p + b"cfg"
        self._p_lease = p + b"lease/"
        # Candidates, partials, known clients (docs/sync.rst, "What a round pulls").
        self._p_clog = p + b"c/"
        self._p_cset = p + b"cs/"
        self._p_rows = p + b"a/"
        self._p_alog = p + b"al/"
        self._p_known = p + b"k/"
        self._k_pub = p + b"pv"
        self._k_ptrim = p + b"pt"
        #: This client's partial rows: (slot, dst) -> [ts1, ts2, c, n], the
        #: sum of the moves it published (ts1 all ones: none added).
        self._rows: dict[tuple[int, bytes], list[int]] = {}
        self._rule: PullRule | None = None
        self._published: set[int] = set()
        self._cfg_ok = False

    @classmethod
    def from_url(cls, url: str, *, mesh: str = "xpro", options: Mapping[str, Any] | None = None
                 ) -> EtcdStore:
        """``etcd://[user:pass@]host:port[,host:port...]`` or ``etcds://`` (TLS)."""
        try:
            parts = split_url(url)
        except ValueError:
            raise ConfigError(f"store URL {mask_url(url)}: no scheme (etcd://HOST:PORT)"
                              ) from None
        scheme = parts.scheme
        if scheme not in cls.schemes:
            raise ConfigError(f"{scheme}:// is not an etcd URL scheme (etcd://, etcds://)")
        try:
            endpoints = split_hosts(parts.hosts, HOST_LIST_PORTS[scheme])
        except ValueError as exc:
            raise ConfigError(f"store URL {mask_url(url)}: {exc}") from None
        if not endpoints:
            endpoints = [("127.0.0.1", 2379)]
        if parts.path.strip("/"):
            raise ConfigError(f"store URL {mask_url(url)}: etcd URLs take no path")
        opts = merged_options(parts.query, options)
        unknown_options(opts, KNOWN_OPTIONS, scheme)
        password = resolve_password(parts.password, opts)
        username = resolve_username(parts.username, opts)
        warn_plaintext(url, None if scheme == "etcds" else password)
        if password and not username:
            username = "root"
        return cls(url=url, mesh=mesh, endpoints=endpoints, tls=scheme == "etcds",
                   username=username, password=password, opts=opts)

    def __repr__(self) -> str:
        return f"EtcdStore({self.url!r}, mesh={self.mesh!r})"

    __str__ = __repr__

    @property
    def where(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.endpoints)

    # ------------------------------------------------------------------
    # Channels, failover, errors
    # ------------------------------------------------------------------

    def _channel(self, i: int) -> Any:
        if self._closed:
            raise StoreUnavailable(f"etcd store at {self.where}: closed")
        ch = self._channels[i]
        if ch is None:
            _, grpc = _etcd()
            host, port = self.endpoints[i]
            target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            opts: list[tuple[str, Any]] = list(_GRPC_OPTIONS)
            if self._server_name:
                opts.append(("grpc.ssl_target_name_override", str(self._server_name)))
            if self.tls:
                files = {n: _tls_file(n, v) for n, v in self._tls_files.items()}
                creds = grpc.ssl_channel_credentials(
                    root_certificates=files["ca"], private_key=files["key"],
                    certificate_chain=files["cert"])
                ch = grpc.secure_channel(target, creds, options=opts)
            else:
                ch = grpc.insecure_channel(target, options=opts)
            self._channels[i] = ch
            if self._closed:  # closed while it was being made: not to escape close()
                ch.close()
                raise StoreUnavailable(f"etcd store at {self.where}: closed")
        return ch

    def _stub(self) -> Any:
        rpc, _ = _etcd()
        return rpc.KVStub(self._channel(self._current))

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        if self._password is None:
            return None
        if self._token is None:
            rpc, _ = _etcd()
            auth = rpc.AuthStub(self._channel(self._current))
            resp = auth.Authenticate(
                rpc.AuthenticateRequest(name=self._username or "root", password=self._password),
                timeout=self.timeout)
            self._token = resp.token
        return (("token", self._token),)

    def _fail_over(self) -> None:
        with self._lock:
            ch = self._channels[self._current]
            self._channels[self._current] = None
            self._current = (self._current + 1) % len(self.endpoints)
            self._token = None
        if ch is not None:
            ch.close()

    def _rpc(self, fn: Callable[[Any, Any], T], what: str) -> T:
        """Run ``fn(stub, metadata)``, failing over between endpoints until retry_time.

        Every call made through here is safe to repeat (reads, idempotent
        writes, and merge transactions guarded by their log entry).
        """
        _, grpc = _etcd()
        deadline = time.monotonic() + self.retry_time
        tried = 0
        delay = 0.05
        while True:
            try:
                return fn(self._stub(), self._metadata())
            except grpc.RpcError as exc:
                code = exc.code()
                detail = redact(exc.details() or "")
                if "authentication failed" in detail or "user ID or password" in detail:
                    raise StoreUnavailable(
                        f"etcd store at {self.where}: authentication failed during {what}: "
                        f"{detail}; check the user and password (URL, $XPRO_STORE_PASSWORD or "
                        "password_file)") from exc
                if code == grpc.StatusCode.UNAUTHENTICATED or "auth token" in detail:
                    if tried > 0 and self._token is None:
                        raise StoreUnavailable(
                            f"etcd store at {self.where}: authentication failed during {what}: "
                            f"{detail}; check the user and password (URL, "
                            "$XPRO_STORE_PASSWORD or password_file)") from exc
                    self._token = None
                    tried += 1
                    continue
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                            grpc.StatusCode.CANCELLED) or "leader" in detail:
                    tried += 1
                    self._fail_over()
                    if tried < len(self.endpoints):
                        continue  # the next endpoint at once
                    if time.monotonic() > deadline:
                        raise StoreUnavailable(
                            f"etcd store at {self.where} unavailable during {what}: "
                            f"{code.name}: {detail.rstrip('. ')}; check that the members run "
                            "and are reachable (a daemon keeps filtering on local state and "
                            "retries)"
                        ) from exc
                    time.sleep(delay)
                    delay = min(2 * delay, 1.0)
                    continue
                if "permission denied" in detail:
                    raise StoreUnavailable(
                        f"etcd store at {self.where}: user {self._username or 'root'} may not "
                        f"do {what} on mesh {self.mesh!r} (permission denied): run `xpro store "
                        "init` for this mesh and proxy, and use the user it made") from exc
                if "too many operations" in detail:
                    raise ConfigError(
                        f"etcd at {self.where} refuses {CHUNK + 2} operations per "
                        "transaction: run it with --max-txn-ops=128 or more") from exc
                raise StoreError(f"etcd store at {self.where}: {what} failed: {code.name}: "
                                 f"{detail}") from exc

    @contextmanager
    def _guard(self) -> Iterator[None]:
        with self._lock:
            yield

    # ------------------------------------------------------------------
    # Request builders
    # ------------------------------------------------------------------

    @staticmethod
    def _range_op(rpc: Any, key: bytes, **kw: Any) -> Any:
        return rpc.RequestOp(request_range=rpc.RangeRequest(key=key, **kw))

    def _txn(self, rpc: Any, compare: list[Any], success: list[Any], failure: list[Any]
             ) -> Any:
        return rpc.TxnRequest(compare=compare, success=success, failure=failure)

    def _call_txns(self, reqs: Sequence[Any], what: str) -> list[Any]:
        """Send transactions concurrently (gRPC futures) and wait for all."""
        if not reqs:
            return []

        def run(stub: Any, md: Any) -> list[Any]:
            futs = [stub.Txn.future(r, timeout=self.timeout, metadata=md) for r in reqs]
            return [f.result() for f in futs]

        return self._rpc(run, what)

    def _prefix_end(self, prefix: bytes) -> bytes:
        return prefix[:-1] + bytes([prefix[-1] + 1])

    def _range_all(self, prefix: bytes, revision: int = 0, min_mod: int = 0, keys_only: bool = False
                   ) -> tuple[list[Any], int, int]:
        """Every kv under ``prefix`` at ``revision`` (0: now), paginated.

        Returns (kvs, revision read, cluster id).
        """
        rpc, _ = _etcd()
        end = self._prefix_end(prefix)
        out: list[Any] = []
        start = prefix
        rev = revision
        cluster = 0
        while True:
            req = rpc.RangeRequest(key=start, range_end=end, limit=self.page, revision=rev,
                                   min_mod_revision=min_mod, keys_only=keys_only)
            resp: Any = self._rpc(_ranger(req, self.timeout), "range read")
            rev = resp.header.revision
            cluster = resp.header.cluster_id
            out.extend(resp.kvs)
            if not resp.more or not resp.kvs:
                return out, rev, cluster
            start = resp.kvs[-1].key + b"\0"

    def _check_cfg(self) -> None:
        if self._cfg_ok:
            return
        rpc, _ = _etcd()
        want = f"encoding={ENCODING}".encode()
        req = self._txn(
            rpc,
            [rpc.Compare(key=self._k_cfg, target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL,
                         version=0)],
            [rpc.RequestOp(request_put=rpc.PutRequest(key=self._k_cfg, value=want))],
            [self._range_op(rpc, self._k_cfg)],
        )
        (resp,) = self._call_txns([req], "reading the mesh configuration")
        if not resp.succeeded:
            kvs = resp.responses[0].response_range.kvs
            have = kvs[0].value if kvs else b""
            if have != want:
                raise ConfigError(
                    f"mesh {self.mesh!r} on etcd {self.where} has {have[:40]!r}, this xpro "
                    f"writes {want.decode()}: use another mesh name or upgrade")
        self._cfg_ok = True

    # ------------------------------------------------------------------
    # Store API
    # ------------------------------------------------------------------

    def merge(self, keys: np.ndarray, local: np.ndarray, params: SyncParams,
              bounds: Bounds | None = None, rule: PullRule | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """Compare-and-swap transactions of up to 120 records, retried on conflict.

        Atomic per record.  If it raises :class:`StoreUnavailable`, calling it
        again with the same arguments applies each transaction at most once
        (its log entry marks it as done and holds what it saw).
        """
        now = time.time_ns()
        limit = max_ts(self.max_future, now)
        b = bounds or default_bounds(self.max_future, now)
        k, loc = check_merge_input(keys, local, params, limit)
        n = len(k)
        existed = np.zeros(n, dtype=bool)
        before = np.zeros(n, dtype=MASTER)
        if n == 0:
            return existed, before
        with self._guard():
            self._check_cfg()
            if self._replay is not None and self._replay.digest == batch_digest(k, loc, params):
                op, stamp = self._replay.op, self._replay_stamp
            else:
                self._op += 1
                op, stamp = self._op, now
            self._replay, self._replay_stamp = None, stamp
            try:
                existed, before = self._merge(k, loc, params, op, stamp, b)
                if rule is not None:
                    self._rule = rule
                    if op not in self._published:
                        written = ~((before == REFUSED) & ~existed)
                        _, after = merge_arrays(loc, np.ones(n, dtype=bool), before, existed,
                                                params)
                        self._publish(k, before, existed & written, after, written, rule,
                                      f"{stamp:016x}/{self.client_id}/{op:08x}")
                        self._published = {op}
                return existed, before
            except BaseException:
                self._replay = Replay(batch_digest(k, loc, params), op)
                raise

    def _merge(self, k: np.ndarray, loc: np.ndarray, params: SyncParams, op: int, stamp: int,
               bounds: Bounds) -> tuple[np.ndarray, np.ndarray]:
        rpc, _ = _etcd()
        n = len(k)
        existed = np.zeros(n, dtype=bool)
        before = np.zeros(n, dtype=MASTER)
        kl = key_list(k)
        chunks = [np.arange(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]
        logkeys = [
            self._p_log + f"{stamp:016x}/{self.client_id}/{op:08x}/{ci:06x}".encode()
            for ci in range(len(chunks))
        ]
        # Read every chunk's records and its log entry (replays).
        reads = [
            self._txn(rpc, [], [self._range_op(rpc, self._p_rec + kl[i]) for i in idx]
                      + [self._range_op(rpc, lk)], [])
            for idx, lk in zip(chunks, logkeys, strict=True)
        ]
        state = [resp.responses for resp in self._call_txns(reads, "merge (read)")]
        todo = list(range(len(chunks)))
        attempt = 0
        corrupt: list[bytes] = []
        while todo:
            cas: list[Any] = []
            plans: list[tuple[int, np.ndarray, np.ndarray]] = []
            for ci in todo:
                idx = chunks[ci]
                ranges = state[ci]
                logkv = ranges[-1].response_range.kvs
                if logkv:  # applied by an earlier attempt of this very merge
                    if not self._take_logged(logkv[0].value, idx, existed, before):
                        for i in idx:
                            self.reject(key_hex(kl[i]), "the merge's log entry was altered")
                    continue
                vals = [r.response_range.kvs for r in ranges[:-1]]
                revs = [kv[0].mod_revision if kv else 0 for kv in vals]
                m_rec, flags = self._decode_for_merge(vals, bounds)
                ex = flags == FLAG_EXISTED
                _, new = merge_arrays(loc[idx], np.ones(len(idx), dtype=bool), m_rec, ex, params)
                entry = (struct.pack("<I", len(idx)) + b"".join(kl[i] for i in idx)
                         + flags.tobytes() + m_rec.tobytes())
                compare = [
                    rpc.Compare(key=self._p_rec + kl[i], target=rpc.Compare.MOD,
                                result=rpc.Compare.EQUAL, mod_revision=rv)
                    for i, rv in zip(idx, revs, strict=True)
                ] + [rpc.Compare(key=logkeys[ci], target=rpc.Compare.VERSION,
                                 result=rpc.Compare.EQUAL, version=0)]
                newb = new.tobytes()
                success = [
                    rpc.RequestOp(request_put=rpc.PutRequest(
                        key=self._p_rec + kl[i],
                        value=newb[j * RECORD_SIZE : (j + 1) * RECORD_SIZE]))
                    for j, i in enumerate(idx) if flags[j] != FLAG_REFUSED
                ] + [
                    rpc.RequestOp(request_put=rpc.PutRequest(key=logkeys[ci], value=entry)),
                    rpc.RequestOp(request_put=rpc.PutRequest(key=self._k_ver, value=b"")),
                ]
                failure = [self._range_op(rpc, self._p_rec + kl[i]) for i in idx] + [
                    self._range_op(rpc, logkeys[ci])]
                cas.append(self._txn(rpc, compare, success, failure))
                plans.append((ci, m_rec, flags))
            again: list[int] = []
            for (ci, m_rec, flags), resp in zip(plans, self._call_txns(cas, "merge"),
                                                strict=True):
                idx = chunks[ci]
                if resp.succeeded:
                    existed[idx] = flags == FLAG_EXISTED
                    before[idx] = m_rec
                    before[idx[flags == FLAG_REFUSED]] = REFUSED
                    for i in idx[flags == FLAG_REFUSED]:
                        self.reject(key_hex(kl[i]), "merge refused: the record is dated in "
                                    "the future")
                    if (flags == FLAG_CORRUPT).any():
                        corrupt.extend(kl[i] for i in idx[flags == FLAG_CORRUPT])
                else:
                    state[ci] = resp.responses
                    again.append(ci)
            todo = again
            if todo:
                attempt += 1
                if attempt >= self.max_retries:
                    raise StoreConflict(
                        f"etcd merge into mesh {self.mesh!r}: {len(todo)} transaction(s) "
                        f"lost the compare-and-swap {attempt} times (too many proxies "
                        "merging the same flows?); the sync retries next round")
                time.sleep(random.uniform(0, min(0.002 * 2**attempt, 0.2)))
        for n_bad, kb in enumerate(corrupt):
            if n_bad < 100:
                log.warning("etcd mesh %s: record %s was corrupt; replaced by this proxy's "
                            "record", self.mesh, key_hex(kb))
            self.reject(key_hex(kb), "merged into: corrupt or out of bounds")
        return existed, before

    def _decode_for_merge(self, vals: Sequence[Any], bounds: Bounds
                          ) -> tuple[np.ndarray, np.ndarray]:
        """Stored values -> (records, flags); corrupt or out-of-bounds ones count as absent."""
        m = len(vals)
        recs = np.zeros(m, dtype=MASTER)
        flags = np.full(m, FLAG_ABSENT, dtype=np.uint8)
        for j, kv in enumerate(vals):
            if not kv:
                continue
            v = kv[0].value
            if len(v) == RECORD_SIZE:
                recs[j] = np.frombuffer(v, dtype=MASTER)[0]
                flags[j] = FLAG_EXISTED
            else:
                flags[j] = FLAG_CORRUPT
        why = bounds.check(recs)
        future = (flags == FLAG_EXISTED) & (why == FUTURE)
        flags[future] = FLAG_REFUSED  # dated in the future: left as it is
        bad = (flags == FLAG_EXISTED) & (why != 0)
        if bad.any():
            log.info("etcd mesh %s: %d record(s) out of bounds (%s) count as absent", self.mesh,
                     int(bad.sum()), REASONS[int(why[bad][0])])
        flags[bad] = FLAG_CORRUPT
        recs[flags != FLAG_EXISTED] = 0
        return recs, flags

    def _take_logged(self, entry: bytes, idx: np.ndarray, existed: np.ndarray,
                     before: np.ndarray) -> bool:
        """What a transaction applied earlier saw, from its log entry.

        An entry that does not match its transaction (someone rewrote it)
        tells nothing of what the master held, but the transaction was
        applied: its records come back as absent (the caller keeps its own
        view, nothing is merged twice) and False is returned.
        """
        m = len(idx)
        if len(entry) != 4 + m * (KEY_SIZE + 1 + RECORD_SIZE) or \
                struct.unpack_from("<I", entry)[0] != m:
            log.warning("etcd mesh %s: a merge log entry of this proxy does not match its "
                        "transaction (was the store modified by hand?); its %d records count "
                        "as absent", self.mesh, m)
            existed[idx] = False
            before[idx] = 0
            return False
        off = 4 + m * KEY_SIZE
        flags = np.frombuffer(entry, dtype=np.uint8, count=m, offset=off)
        existed[idx] = flags == FLAG_EXISTED
        before[idx] = np.frombuffer(entry, dtype=MASTER, count=m, offset=off + m)
        before[idx[flags == FLAG_REFUSED]] = REFUSED
        return True

    def changes(self, cursor: Any | None, limit: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, EtcdCursor]:
        """Records changed since ``cursor`` (a revision), read through the change log.

        With a ``limit``: the log entries in revision order while their keys
        stay within it (at least one entry), and a full read of the records
        ``limit`` at a time over several calls.
        """
        rpc, _ = _etcd()
        lim_ts = max_ts(self.max_future)
        with self._guard():
            req = self._txn(rpc, [], [self._range_op(rpc, self._k_ver),
                                      self._range_op(rpc, self._k_trim)], [])
            (resp,) = self._call_txns([req], "reading changes")
            rev, cluster = resp.header.revision, resp.header.cluster_id
            ver_kv = resp.responses[0].response_range.kvs
            trim_kv = resp.responses[1].response_range.kvs
            trimmed = _int(trim_kv[0].value) if trim_kv else 0
            cur = cursor if (isinstance(cursor, EtcdCursor) and cursor.cluster == cluster
                             and cursor.revision <= rev) else None
            if cur is not None and cur.scan_from is not None:
                # A full read under way: go on with it (at the current revision;
                # what changed since it began is read from the log afterwards).
                kvs, nxt = self._range_some(self._p_rec, cur.scan_from, limit)
                keys, recs = self._decode_kvs(kvs, lim_ts)
                return keys, recs, EtcdCursor(cluster, cur.revision, nxt, True)
            since = cur.revision if cur is not None else -1
            new_cursor = EtcdCursor(cluster, rev)
            if since >= 0 and (not ver_kv or ver_kv[0].mod_revision <= since):
                return _empty_keys(), np.zeros(0, dtype=MASTER), new_cursor
            if since < 0 or trimmed > since:
                kvs, nxt = self._range_some(self._p_rec, self._p_rec, limit, revision=rev)
                if nxt is not None:
                    new_cursor = EtcdCursor(cluster, rev, nxt, True)
            else:
                entries, _, _ = self._range_all(self._p_log, revision=rev, min_mod=since + 1)
                entries.sort(key=lambda kv: kv.mod_revision)
                wanted: dict[bytes, None] = {}
                broken = False
                for kv in entries:
                    e = kv.value
                    m = struct.unpack_from("<I", e)[0] if len(e) >= 4 else -1
                    if m < 0 or len(e) != 4 + m * (KEY_SIZE + 1 + RECORD_SIZE):
                        broken = True
                        continue
                    if limit is not None and wanted and len(wanted) + m > limit:
                        new_cursor = EtcdCursor(cluster, kv.mod_revision - 1, None, True)
                        break
                    for j in range(m):
                        wanted[e[4 + j * KEY_SIZE : 4 + (j + 1) * KEY_SIZE]] = None
                if broken:
                    log.warning("etcd mesh %s: a change-log entry is corrupt; reading every "
                                "record", self.mesh)
                    self.reject("change log", "an entry is corrupt")
                    kvs, nxt = self._range_some(self._p_rec, self._p_rec, limit, revision=rev)
                    new_cursor = EtcdCursor(cluster, rev, nxt, nxt is not None)
                else:
                    kvs = self._get_many([self._p_rec + kb for kb in wanted], rev)
        keys, recs = self._decode_kvs(kvs, lim_ts)
        return keys, recs, new_cursor

    def _range_some(self, prefix: bytes, start: bytes, limit: int | None, revision: int = 0
                    ) -> tuple[list[Any], bytes | None]:
        """The kvs under ``prefix`` from key ``start`` on, about ``limit`` of them
        (None: all); returns them and the key to go on from (None: the end)."""
        if limit is None:
            kvs, _, _ = self._range_all(prefix, revision=revision)
            return kvs, None
        rpc, _ = _etcd()
        end = self._prefix_end(prefix)
        out: list[Any] = []
        while len(out) < limit:
            req = rpc.RangeRequest(key=start, range_end=end, revision=revision,
                                   limit=min(self.page, max(1, limit - len(out))))
            resp: Any = self._rpc(_ranger(req, self.timeout), "range read")
            out.extend(resp.kvs)
            if not resp.more or not resp.kvs:
                return out, None
            start = resp.kvs[-1].key + b"\0"
        return out, start

    def _get_many(self, keys: Sequence[bytes], revision: int) -> list[Any]:
        rpc, _ = _etcd()
        reqs = [
            self._txn(rpc, [], [self._range_op(rpc, kb, revision=revision)
                                for kb in keys[s : s + 128]], [])
            for s in range(0, len(keys), 128)
        ]
        out: list[Any] = []
        for resp in self._call_txns(reqs, "reading changed records"):
            for r in resp.responses:
                out.extend(r.response_range.kvs)
        return out

    def _decode_kvs(self, kvs: Sequence[Any], limit: int) -> tuple[np.ndarray, np.ndarray]:
        keys: list[bytes] = []
        vals: list[bytes | None] = []
        plen = len(self._p_rec)
        for kv in kvs:
            kb = kv.key[plen:]
            if len(kb) != KEY_SIZE:
                log.warning("etcd mesh %s: skipping key %r: not a flow key", self.mesh,
                            kv.key[:80])
                self.reject(repr(kv.key[:80]), "not a flow key")
                continue
            keys.append(kb)
            vals.append(kv.value)
        return decode_values(keys, vals, limit, f"etcd mesh {self.mesh}", self.reject)

    # ------------------------------------------------------------------
    # Candidates, partials, known clients
    # ------------------------------------------------------------------

    candidates = True

    def _row_key(self, slot: int, dst: bytes, client: str | None = None) -> bytes:
        return self._p_rows + struct.pack(">Q", slot) + dst + b"/" + (
            (client or self.client_id).encode())

    def _publish(self, k: np.ndarray, before: np.ndarray, had: np.ndarray, after: np.ndarray,
                 has: np.ndarray, rule: PullRule, name: str) -> None:
        """Publish the moves of a merge (or deletion), judged here from its exact
        before and after: the candidate log and set, this client's partial
        rows (a destination's partial is the sum of every client's row, so
        proxies never contend on one key), the known-client index.  Puts of
        values computed once: sent again, they change nothing."""
        rpc, _ = _etcd()
        judged, cs_add, cs_del, elig = judge_arrays(k, before, had, after, has, rule)
        unelig = had & ~has
        ak, t1, t2, dc, dn = partial_deltas(k, before, had, after, has, rule)
        big = (1 << 64) - 1
        ops: list[Any] = []

        def put(key: bytes, value: bytes) -> None:
            ops.append(rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value)))

        def delete(key: bytes) -> None:
            ops.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key)))

        rows = dict(self._rows)
        fields: list[bytes] = []
        for a, x1, x2, c, m in zip(ak, t1.tolist(), t2.tolist(), dc.tolist(), dn.tolist(),
                                   strict=True):
            dst, slot = a["dst"].tobytes(), int(a["slot"])
            row = rows.get((slot, dst), [big, 0, 0, 0])
            row = [min(row[0], x1), max(row[1], x2), row[2] + c, row[3] + m]
            rows[(slot, dst)] = row
            put(self._row_key(slot, dst), struct.pack("<QQqq", *row))
            fields.append(dst + struct.pack("<Q", slot))
        for kb in key_list(k[cs_add]):
            put(self._p_cset + kb, b"")
        for kb in key_list(k[cs_del]):
            delete(self._p_cset + kb)
        for kb in key_list(k[elig]):
            put(self._p_known + _dst0(kb) + b"/" + kb, b"")
        for kb in key_list(k[unelig]):
            delete(self._p_known + _dst0(kb) + b"/" + kb)
        if judged.any():
            put(self._p_clog + name.encode(), k[judged].tobytes())
        if fields:
            put(self._p_alog + name.encode(), b"".join(fields))
        if not ops:
            return
        put(self._k_pub, b"")
        reqs = [self._txn(rpc, [], ops[i : i + 120], []) for i in range(0, len(ops), 120)]
        self._call_txns(reqs, "publishing candidates and partials")
        self._rows = rows

    def pull(self, cursor: Any | None, limit: int | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, EtcdCursor]:
        """Candidates and partials changed since ``cursor`` (a revision), through
        their logs; everything (the candidate set, every row) for None or a
        cursor older than the logs' trimming.  Candidates come whole: ``limit``
        is not applied."""
        rpc, _ = _etcd()
        lim_ts = max_ts(self.max_future)
        with self._guard():
            req = self._txn(rpc, [], [self._range_op(rpc, self._k_pub),
                                      self._range_op(rpc, self._k_ptrim)], [])
            (resp,) = self._call_txns([req], "pulling candidates")
            rev, cluster = resp.header.revision, resp.header.cluster_id
            pub_kv = resp.responses[0].response_range.kvs
            trim_kv = resp.responses[1].response_range.kvs
            trimmed = _int(trim_kv[0].value) if trim_kv else 0
            cur = cursor if (isinstance(cursor, EtcdCursor) and cursor.cluster == cluster
                             and cursor.revision <= rev) else None
            since = cur.revision if cur is not None else -1
            out = EtcdCursor(cluster, rev)
            if since >= 0 and (not pub_kv or pub_kv[0].mod_revision <= since):
                return (_empty_keys(), np.zeros(0, dtype=MASTER), np.zeros(0, dtype=AGG_KEY),
                        np.zeros(0, dtype=PARTIAL), out)
            cand: dict[bytes, None] = {}
            parts: dict[bytes, None] = {}
            full = since < 0 or trimmed > since
            if full:
                kvs, _, _ = self._range_all(self._p_cset, revision=rev, keys_only=True)
                for kv in kvs:
                    cand[kv.key[len(self._p_cset):]] = None
            else:
                for kv in self._range_all(self._p_clog, revision=rev, min_mod=since + 1)[0]:
                    v = kv.value
                    for i in range(0, len(v) - KEY_SIZE + 1, KEY_SIZE):
                        cand[v[i : i + KEY_SIZE]] = None
                for kv in self._range_all(self._p_alog, revision=rev, min_mod=since + 1)[0]:
                    v = kv.value
                    for i in range(0, len(v) - 27, 28):
                        parts[v[i : i + 28]] = None
            kvs = self._get_many([self._p_rec + kb for kb in cand], rev)
            keys, recs = self._decode_kvs(kvs, lim_ts)
            if full:
                rows, _, _ = self._range_all(self._p_rows, revision=rev)
            else:
                reqs = []
                fl = list(parts)
                for i in range(0, len(fl), 120):
                    reqs.append(self._txn(rpc, [], [
                        self._range_op(rpc, pre, range_end=self._prefix_end(pre), revision=rev)
                        for pre in (self._p_rows + f[20:28][::-1] + f[:20] + b"/"
                                    for f in fl[i : i + 120])], []))
                rows = [kv for r in self._call_txns(reqs, "reading partials")
                        for x in r.responses for kv in x.response_range.kvs]
        ak, pv = self._sum_rows(rows)
        return keys, recs, ak, pv, out

    def _sum_rows(self, rows: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Every client's rows summed per (destination, slot): the partials."""
        big = (1 << 64) - 1
        plen = len(self._p_rows)
        tot: dict[tuple[int, bytes], list[int]] = {}
        for kv in rows:
            key, v = kv.key, kv.value
            if len(v) != 32 or len(key) < plen + 29 or key[plen + 28 : plen + 29] != b"/":
                self.reject(repr(key[:80]), "not a partial row")
                continue
            slot = struct.unpack(">Q", key[plen : plen + 8])[0]
            dst = key[plen + 8 : plen + 28]
            x1, x2, c, n = struct.unpack("<QQqq", v)
            # A client's row is the sum of the moves it published, so it may be
            # negative (flows that left the slot); not larger than any count.
            if abs(c) > MAX_COUNT or abs(n) > MAX_COUNT:
                self.reject(repr(key[:80]), "a partial row out of bounds")
                continue
            t = tot.setdefault((slot, dst), [big, 0, 0, 0])
            t[0], t[1] = min(t[0], x1), max(t[1], x2)
            t[2] += c
            t[3] += n
        ak = np.zeros(len(tot), dtype=AGG_KEY)
        pv = np.zeros(len(tot), dtype=PARTIAL)
        for i, ((slot, dst), (x1, x2, c, n)) in enumerate(tot.items()):
            ak[i]["dst"] = np.frombuffer(dst, dtype=DST_KEY)[0]
            ak[i]["slot"] = slot
            if n > 0:
                pv[i] = (0 if x1 == big else x1, x2, max(0, min(c, MAX_COUNT)),
                         min(n, MAX_COUNT))
            elif n < 0:  # more flows left than ever entered: not what proxies write
                self.reject(f"partial {dst.hex()}/{slot}", "its rows sum below zero flows")
        return ak, pv

    def clients(self, dsts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The known-client index ``k/<dst>/<key>`` of these destinations."""
        dk = np.array(dsts, dtype=DST_KEY).reshape(-1)
        dk["pad"] = 0
        found: list[bytes] = []
        with self._guard():
            for d in dk:
                pre = self._p_known + d.tobytes() + b"/"
                kvs, _, _ = self._range_all(pre, keys_only=True)
                found.extend(kv.key[len(pre):] for kv in kvs)
            kvs = self._get_many([self._p_rec + kb for kb in found if len(kb) == KEY_SIZE], 0)
        return self._decode_kvs(kvs, max_ts(self.max_future))

    def heartbeat(self, proxy: str, workload: float, now: int, offset: int | None = None
                  ) -> None:
        if not math.isfinite(workload) or workload < 0:
            raise ValueError(f"workload {workload!r} must be a finite number >= 0")
        rpc, _ = _etcd()
        req = rpc.PutRequest(key=self._p_hb + proxy.encode(),
                             value=encode_heartbeat(workload, now, offset))
        self._rpc(lambda stub, md: stub.Put(req, timeout=self.timeout, metadata=md), "heartbeat")

    def proxies(self) -> dict[str, ProxyStatus]:
        kvs, _, _ = self._range_all(self._p_hb)
        limit = max_ts(self.max_future)
        out: dict[str, ProxyStatus] = {}
        for kv in kvs:
            name = kv.key[len(self._p_hb):].decode("utf-8", "replace")
            hb = decode_heartbeat(kv.value)
            if hb is None:
                log.warning("etcd mesh %s: skipping heartbeat of %r: %d bytes", self.mesh, name,
                            len(kv.value))
                self.reject(f"heartbeat {name!r}", f"{len(kv.value)} bytes")
                continue
            w, seen, off = hb
            if not math.isfinite(w) or w < 0 or seen > limit:
                log.warning("etcd mesh %s: skipping heartbeat of %r: out of bounds", self.mesh,
                            name)
                self.reject(f"heartbeat {name!r}", "out of bounds")
                continue
            out[name] = ProxyStatus(workload=w, last_seen=seen, offset=off)
        return out

    def expire(self, before: int, bounds: Bounds | None = None) -> int:
        """Delete records with ts2 < ``before`` (and corrupt or out-of-bounds ones) and
        trim the log.

        Each deletion is guarded by the record's mod_revision, so a record
        merged meanwhile stays.  A proxy never compacts the cluster's history
        (that would reach every other key of the cluster, and a proxy's user
        may not): the etcd server's auto-compaction does it, or an
        administrator with :meth:`compact` (``xpro store compact``).
        """
        rpc, _ = _etcd()
        b = bounds or default_bounds(self.max_future)
        with self._guard():
            kvs, _, _ = self._range_all(self._p_rec)
            doomed: list[Any] = []
            for kv in kvs:
                v = kv.value
                if len(v) != RECORD_SIZE or len(kv.key) != len(self._p_rec) + KEY_SIZE:
                    doomed.append(kv)
                    continue
                rec = np.frombuffer(v, dtype=MASTER)
                if rec["ts2"][0] < before or not b.ok(rec)[0]:
                    doomed.append(kv)
            reqs = [
                self._txn(
                    rpc,
                    [rpc.Compare(key=kv.key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL,
                                 mod_revision=kv.mod_revision) for kv in doomed[s : s + 128]],
                    [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=kv.key))
                     for kv in doomed[s : s + 128]],
                    [],
                )
                for s in range(0, len(doomed), 128)
            ]
            deleted = 0
            gone: list[Any] = []
            for req, resp in zip(reqs, self._call_txns(reqs, "expire"), strict=True):
                chunk = doomed[: len(req.success)]
                doomed = doomed[len(req.success):]
                if resp.succeeded:
                    deleted += len(req.success)
                    gone.extend(chunk)
                else:  # some changed meanwhile: delete the others one by one
                    for kv, c, opx in zip(chunk, req.compare, req.success, strict=True):
                        one = self._txn(rpc, [c], [opx], [])
                        (r1,) = self._call_txns([one], "expire")
                        deleted += int(r1.succeeded)
                        if r1.succeeded:
                            gone.append(kv)
            self._trim_log(rpc)
            if self._rule is not None:
                self._expire_partials(rpc, gone, before, b.limit, self._rule)
        return deleted

    def _expire_partials(self, rpc: Any, gone: Sequence[Any], before: int, limit: int,
                         rule: PullRule) -> None:
        """The deleted records leave their partials; rows no flow can be live in
        any more, rows in a slot after the latest time in bounds (``limit``: no
        merge writes them) and log entries older than log_retention go."""
        plen = len(self._p_rec)
        good = [kv for kv in gone if len(kv.value) == RECORD_SIZE
                and len(kv.key) == plen + KEY_SIZE]
        if good:
            k = keys_from_bytes([kv.key[plen:] for kv in good])
            v = np.frombuffer(b"".join(kv.value for kv in good), dtype=MASTER).copy()
            n = len(k)
            self._publish(k, v, np.ones(n, bool), np.zeros(n, dtype=MASTER), np.zeros(n, bool),
                          rule, f"{time.time_ns():016x}/{self.client_id}/x")
        first, last = rule.live_from(before), limit // rule.slot_ns
        dead_end = self._p_rows + struct.pack(">Q", first)
        ahead = self._p_rows + struct.pack(">Q", last + 1)
        cut = f"{time.time_ns() - self.log_retention * 10**9:016x}".encode()
        top = 0
        for pre in (self._p_clog, self._p_alog):
            kvs, _, _ = self._range_all(pre, keys_only=True)
            old = [kv for kv in kvs if kv.key < pre + cut]
            top = max([top, *(kv.mod_revision for kv in old)])
        drop = [(self._p_rows, dead_end), (ahead, self._prefix_end(self._p_rows)),
                *((pre, pre + cut) for pre in (self._p_clog, self._p_alog))]
        ops = [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k, range_end=e))
               for k, e in drop]
        if top:
            ops.append(rpc.RequestOp(request_put=rpc.PutRequest(key=self._k_ptrim,
                                                                value=str(top).encode())))
        self._call_txns([self._txn(rpc, [], ops, [])], "expiring partials")
        self._rows = {at: r for at, r in self._rows.items() if first <= at[0] <= last}

    def _trim_log(self, rpc: Any) -> None:
        """Delete change-log entries older than log_retention, recording their revisions."""
        cut = self._p_log + f"{time.time_ns() - self.log_retention * 10**9:016x}".encode()
        kvs, rev, _ = self._range_all(self._p_log, keys_only=True)
        old = [kv for kv in kvs if kv.key < cut]
        if not old:
            return
        top = max(kv.mod_revision for kv in old)
        req = self._txn(
            rpc,
            [rpc.Compare(key=self._p_log, range_end=cut, target=rpc.Compare.MOD,
                         result=rpc.Compare.LESS, mod_revision=rev + 1)],
            [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=self._p_log,
                                                                       range_end=cut)),
             rpc.RequestOp(request_put=rpc.PutRequest(key=self._k_trim, value=str(top).encode()))],
            [],
        )
        (resp,) = self._call_txns([req], "trimming the change log")
        if not resp.succeeded:
            log.info("etcd mesh %s: change log changed while trimming; next time", self.mesh)

    def lease(self, name: str, holder: str, seconds: float) -> bool:
        """A key ``lease/NAME`` holding the holder and its end (the holder's clock),
        taken or renewed by a compare-and-swap on its revision.  etcd's own
        leases would use the server's clock but need a keep-alive stream; a
        few seconds of skew only let two proxies expire at once, which is
        safe."""
        rpc, _ = _etcd()
        key = self._p_lease + name.encode()
        now = time.time_ns()
        value = f"{holder} {now + int(seconds * 1e9)}".encode()
        with self._guard():
            req = rpc.RangeRequest(key=key)
            resp: Any = self._rpc(_ranger(req, self.timeout), "reading a lease")
            if resp.kvs:
                kv = resp.kvs[0]
                who, _, until = kv.value.decode("utf-8", "replace").partition(" ")
                try:
                    end = int(until)
                except ValueError:
                    end = 0  # unreadable: free
                # an end further off than any proxy writes (seconds from its
                # clock, a few seconds off ours) holds nothing: taken over; two
                # proxies expiring at once is safe
                if who != holder and now < end <= now + 2 * int(seconds * 1e9) + 60 * 10**9:
                    return False
                cmp = rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL,
                                  mod_revision=kv.mod_revision)
            else:
                cmp = rpc.Compare(key=key, target=rpc.Compare.VERSION,
                                  result=rpc.Compare.EQUAL, version=0)
            txn = self._txn(rpc, [cmp], [rpc.RequestOp(request_put=rpc.PutRequest(
                key=key, value=value))], [])
            (out,) = self._call_txns([txn], "taking a lease")
            return bool(out.succeeded)

    def revision(self) -> int:
        """The cluster's current revision."""
        rpc, _ = _etcd()
        req = rpc.RangeRequest(key=self._k_cfg)
        resp: Any = self._rpc(lambda stub, md: stub.Range(req, timeout=self.timeout,
                                                           metadata=md), "reading the revision")
        return int(resp.header.revision)

    def compact(self, revision: int) -> bool:
        """Compact the cluster's history up to ``revision`` (etcd's admin right).

        The whole cluster, not only this mesh: only a user with the ``root``
        role may.  Returns False if it was compacted that far already.
        """
        rpc, _ = _etcd()
        req = rpc.CompactionRequest(revision=revision)
        try:
            self._rpc(lambda stub, md: stub.Compact(req, timeout=self.timeout, metadata=md),
                      "compaction")
        except StoreError as exc:
            if "compacted" not in str(exc):
                raise
            return False
        return True

    def auth_call(self, method: str, request: Any, what: str) -> Any:
        """One call of etcd's Auth service (``UserAdd``, ``RoleGrantPermission``...)
        with this store's credentials and failover (for :mod:`xpro.stores.admin`)."""
        rpc, _ = _etcd()

        def run(_stub: Any, md: Any) -> Any:
            auth = rpc.AuthStub(self._channel(self._current))
            return getattr(auth, method)(request, timeout=self.timeout, metadata=md)

        return self._rpc(run, what)

    def ping(self) -> None:
        rpc, _ = _etcd()
        req = rpc.RangeRequest(key=self._k_cfg)
        self._rpc(lambda stub, md: stub.Range(req, timeout=self.timeout, metadata=md), "ping")

    def close(self) -> None:
        """Close the channels, for good: a call in flight on them (from another
        thread) is cancelled, and every later call raises StoreUnavailable."""
        self._closed = True
        # Not under self._lock: a merge or a read holds it for its whole RPC,
        # which is the call a stop must cancel.  gRPC channels close from any
        # thread; _channel() refuses to open one once _closed is set.
        channels, self._channels = self._channels, [None] * len(self._channels)
        for ch in channels:
            if ch is not None:
                ch.close()

    # For tests and tools.
    def record_key(self, key: bytes) -> bytes:
        """The etcd key of one flow record."""
        return self._p_rec + key

    def raw_put(self, key: bytes, value: bytes) -> None:
        """Write raw bytes under an etcd key (tests inject bad data with it)."""
        rpc, _ = _etcd()
        req = rpc.PutRequest(key=key, value=value)
        self._rpc(lambda stub, md: stub.Put(req, timeout=self.timeout, metadata=md), "raw put")


def _tls_file(name: str, path: object) -> bytes | None:
    """The contents of a TLS file of the options (``ca``, ``cert``, ``key``)."""
    if not path:
        return None
    try:
        return read_small_file(str(path))
    except OSError as exc:
        raise ConfigError(f"store.tls_{name}: cannot read {printable(str(path))} "
                          f"({exc.strerror or exc})") from None


def _ranger(req: Any, timeout: float) -> Callable[[Any, Any], Any]:
    def run(stub: Any, md: Any) -> Any:
        return stub.Range(req, timeout=timeout, metadata=md)

    return run


def _int(b: bytes) -> int:
    try:
        return int(b.decode())
    except (UnicodeDecodeError, ValueError):
        return 1 << 62  # unreadable: assume everything was trimmed


def _dst0(key: bytes) -> bytes:
    """A flow key's destination with pad 0."""
    return key[16:35] + b"\0"


def _empty_keys() -> np.ndarray:
    return np.zeros(0, dtype=FLOW_KEY)


@hookimpl
def xpro_add_stores(registry: Registry[Any]) -> None:
    for scheme in EtcdStore.schemes:
        registry.add(scheme, EtcdStore)
