"""Administering a store for a mesh: what ``xpro store init``, ``user`` and ``compact`` do.

A proxy needs few rights on the store: read and merge its mesh's records,
beat its heartbeat.  With the administrator's credentials, once per mesh,
:meth:`StoreAdmin.init` prepares the store (Redis: loads the merge function
library, which a proxy's user may not; etcd: a role with read/write on the
mesh's key prefix only), and :meth:`StoreAdmin.set_user` gives each proxy a
user of its own with exactly those rights:

* Redis: an ACL user with the key patterns ``{xpro:MESH}*`` and
  ``{xpro:MESH:*`` (this mesh's keys, no other) and only the commands the
  store sends (:data:`REDIS_COMMANDS`): ``FCALL``/``FCALL_RO`` but no
  ``FUNCTION LOAD``, no ``FLUSHALL``, no ``CONFIG``, no ``KEYS``...
  The functions run with the caller's rights, so the commands they call are
  granted too, on the same keys.
* etcd: a user with the role ``xpro-MESH``: read/write on ``xpro/MESH/``
  only.  It cannot compact (an etcd admin right): run the server with
  auto-compaction, or ``xpro store compact`` as the administrator.

See docs/security.rst (what a stolen proxy credential can and cannot do) and
docs/operations.rst (how to run it, rotate a password, set up TLS).
"""

from __future__ import annotations

import abc
import hashlib
import logging
import re
from collections.abc import Mapping
from typing import Any

from xpro.config import Secret
from xpro.config.kinds import split_url
from xpro.core.text import printable
from xpro.errors import ConfigError, StoreError
from xpro.stores import _redis_lua
from xpro.stores._common import check_mesh
from xpro.stores.etcd import EtcdStore, _etcd
from xpro.stores.redis import RedisStore, _redis

__all__ = ["REDIS_COMMANDS", "EtcdAdmin", "RedisAdmin", "StoreAdmin", "etcd_role",
           "open_admin", "proxy_user", "redis_acl_rules"]

log = logging.getLogger("xpro.stores.admin")

#: Every command a proxy's Redis user may run: what the store sends, what the
#: merge functions call inside Redis (they run with the caller's rights), and
#: what redis-py sends to connect and to find a cluster's slots (measured with
#: INFO commandstats over merges, reads, heartbeats and expiry, single and
#: cluster).  Nothing else: no FUNCTION LOAD/DELETE/FLUSH, EVAL, FLUSHALL,
#: FLUSHDB, CONFIG, ACL, KEYS, SCAN, DEBUG, SHUTDOWN, MONITOR, PUB/SUB.
REDIS_COMMANDS: tuple[str, ...] = (
    # connecting (SELECT for a database other than 0; CLIENT SETINFO from 7.2),
    # a cluster's slot map and command table
    "ping", "select", "client|setinfo", "cluster|slots", "command",
    # the store's own calls (xpro.stores.redis)
    "fcall", "fcall_ro", "function|list", "hget", "hgetall", "hset", "hsetnx", "hscan",
    "expire", "time",
    # inside the xpro_v1 functions (xpro.stores._redis_lua)
    "hmget", "hlen", "hdel", "del", "rpush", "lpop", "lindex", "lrange",
    # candidates, partials, known clients (xpro_v1_publish, _pull, _clients)
    "hkeys", "sadd", "srem", "smembers",
)


def proxy_user(mesh: str, proxy: str) -> str:
    """The store user of ``proxy`` in ``mesh``: ``xpro-MESH-PROXY``."""
    try:
        check_mesh(proxy)
    except ConfigError:
        raise ConfigError(f"proxy name {printable(proxy, 80)!r} cannot name a store user: use "
                          "1-64 letters, digits, '_', '.' or '-' (or --user NAME)") from None
    return f"xpro-{check_mesh(mesh)}-{proxy}"


def redis_key_patterns(mesh: str) -> tuple[str, str]:
    """The ACL key patterns of a mesh: its hash tags ``{xpro:MESH}`` and ``{xpro:MESH:B}``.

    Mesh names hold no ``:``, ``{``, ``}`` nor glob characters, so no pattern
    of one mesh matches a key of another.
    """
    return f"{{xpro:{check_mesh(mesh)}}}*", f"{{xpro:{mesh}:*"


def redis_acl_rules(mesh: str, password: Secret | None, *, add: bool = False) -> list[str]:
    """The ``ACL SETUSER`` rules of a proxy's user (the password as its SHA-256).

    ``add``: keep the user's other passwords (a rotation's first step).
    """
    rules = ["on"] if add else ["reset", "on"]
    if password is not None:
        rules.append("#" + hashlib.sha256(password.reveal().encode()).hexdigest())
    rules += [f"~{p}" for p in redis_key_patterns(mesh)]
    rules += ["resetchannels", "-@all"]
    rules += [f"+{c}" for c in REDIS_COMMANDS]
    return rules


def etcd_role(mesh: str) -> str:
    """The etcd role of a mesh's proxies: ``xpro-MESH``."""
    return f"xpro-{check_mesh(mesh)}"


class StoreAdmin(abc.ABC):
    """The administrator's side of one store and one mesh."""

    mesh: str

    @abc.abstractmethod
    def init(self, *, enable_auth: bool = False) -> list[str]:
        """Prepare the store for the mesh; returns what was done, one line each."""

    @abc.abstractmethod
    def set_user(self, user: str, password: Secret, *, add: bool = False) -> list[str]:
        """Create ``user`` with a proxy's rights on the mesh, or set its password.

        ``add`` keeps its other passwords valid (Redis only), for a rotation
        without a moment in which the proxy's password is refused.
        """

    @abc.abstractmethod
    def delete_user(self, user: str) -> list[str]:
        """Remove ``user``."""

    @abc.abstractmethod
    def compact(self, keep_revisions: int) -> list[str]:
        """Compact the store's history, keeping the last ``keep_revisions`` (etcd)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> StoreAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisAdmin(StoreAdmin):
    """Redis: the function library on every master, ACL users on every node."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.mesh = store.mesh

    def _clients(self, *, primaries_only: bool = False) -> list[tuple[str, Any]]:
        """The node(s) to talk to: for a cluster, every node CLUSTER NODES lists.

        ACL users are not replicated in a cluster: every master *and* replica
        needs them, or a failover locks the proxies out.  (redis-py's own node
        list holds replicas only once CLUSTER SLOTS shows them.)
        """
        conn = self.store._connection()
        if conn.cluster is None:
            return [(self.store.where, conn.single)]
        if primaries_only:
            return [(str(n.name), conn.cluster.get_redis_connection(n))
                    for n in conn.cluster.get_primaries()]
        text = conn.cluster.execute_command(
            "CLUSTER", "NODES", target_nodes=conn.cluster.get_primaries()[0])
        redis = _redis()
        kw = {k: v for k, v in self.store._client_kwargs().items()
              if k not in ("retry",)}
        out: list[tuple[str, Any]] = []
        for line in (text.decode() if isinstance(text, bytes) else str(text)).splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            addr, flags = parts[1].split("@", 1)[0], parts[2].split(",")
            if {"fail", "noaddr", "handshake"} & set(flags):
                log.warning("redis cluster node %s is %s: not reached; run this again once "
                            "it is back", addr, parts[2])
                continue
            host, _, port = addr.rpartition(":")
            out.append((addr, redis.Redis(host=host.strip("[]"), port=int(port), **kw)))
        return out

    def _each(self, what: str, fn: Any, *, primaries_only: bool = False) -> list[str]:
        out: list[str] = []
        with self.store._errors(what):
            clients = self._clients(primaries_only=primaries_only)
            try:
                for name, client in clients:
                    try:
                        line = fn(name, client)
                    except _redis().exceptions.ResponseError as exc:
                        raise StoreError(f"redis at {name}: {what} failed: {exc}; the "
                                         "administrator's user needs the rights to do it "
                                         "(ACL, FUNCTION)") from exc
                    if line:
                        out.append(line)
            finally:
                if self.store._connection().cluster is not None and not primaries_only:
                    for _, client in clients:  # made for this call (CLUSTER NODES)
                        client.close()
        return out

    def init(self, *, enable_auth: bool = False) -> list[str]:
        with self.store._errors("connecting"):  # a cluster's constructor connects
            conn = self.store._connection()

        def load(name: str, client: Any) -> str:
            conn.prepared.discard(name)
            self.store._prepare(name, client, conn)
            return f"{name}: function library {_redis_lua.LIBRARY} loaded"

        out = self._each("loading the function library", load, primaries_only=True)
        if enable_auth:
            out.append("Redis needs no switch for authentication: every user but the ones "
                       "`xpro store user` makes is the administrator's concern (requirepass, "
                       "ACL)")
        return out

    def _save(self, name: str, client: Any) -> str:
        try:
            client.execute_command("ACL", "SAVE")
        except _redis().exceptions.ResponseError:
            return (f"{name}: no ACL file: the user lives until the server restarts; "
                    "configure aclfile (then `xpro store user` saves it) or run it again "
                    "after a restart")
        return f"{name}: ACL file saved"

    def set_user(self, user: str, password: Secret, *, add: bool = False) -> list[str]:
        rules = redis_acl_rules(self.mesh, password, add=add)

        def setuser(name: str, client: Any) -> str:
            _setuser(client, user, rules)
            how = "password added" if add else "set"
            return f"{name}: user {user} {how}: keys {' '.join(redis_key_patterns(self.mesh))}"

        out = self._each(f"setting user {user}", setuser)
        return out + self._each("saving the ACL", self._save)

    def delete_user(self, user: str) -> list[str]:
        def deluser(name: str, client: Any) -> str:
            n = int(client.execute_command("ACL", "DELUSER", user))
            return f"{name}: user {user} {'deleted' if n else 'did not exist'}"

        return self._each(f"deleting user {user}", deluser) + self._each("saving the ACL",
                                                                          self._save)

    def compact(self, keep_revisions: int) -> list[str]:
        raise ConfigError("Redis keeps no history: there is nothing to compact (this is for "
                          "etcd)")

    def close(self) -> None:
        self.store.close()


_UNKNOWN_RULE = re.compile(r"modifier '\+([a-z_|]+)': Unknown command")


def _setuser(client: Any, user: str, rules: list[str]) -> None:
    """``ACL SETUSER`` with ``rules``, leaving out commands this server does not
    have (``CLIENT SETINFO`` came with Redis 7.2): redis-py sends them only
    where they exist."""
    rules = list(rules)
    while True:
        try:
            client.execute_command("ACL", "SETUSER", user, *rules)
            return
        except _redis().exceptions.ResponseError as exc:
            m = _UNKNOWN_RULE.search(str(exc))
            if m is None or f"+{m[1]}" not in rules:
                raise
            log.debug("redis has no command %s: not granted", m[1])
            rules.remove(f"+{m[1]}")


class EtcdAdmin(StoreAdmin):
    """etcd: a role with read/write on the mesh's prefix; users with that role."""

    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self.mesh = store.mesh
        self.role = etcd_role(self.mesh)
        self._admin_password = store._password

    def _call(self, method: str, request: Any, what: str, *, exists_ok: bool = False
              ) -> bool:
        """Call the Auth service; False if it said "already exists" (and exists_ok)."""
        try:
            try:
                self.store.auth_call(method, request, what)
            except StoreError as exc:
                if "authentication is not enabled" not in str(exc):
                    raise
                # Auth is off: nobody needs a token (and etcd hands none out).
                log.warning("etcd at %s: authentication is off", self.store.where)
                self.store._password = None
                self.store._token = None
                self.store.auth_call(method, request, what)
        except StoreError as exc:
            if exists_ok and "already exists" in str(exc):
                return False
            if "not found" in str(exc) and method == "UserDelete":
                return False
            raise
        return True

    def _prefix(self) -> tuple[bytes, bytes]:
        p = self.store._p_rec[: -len(b"r/")]  # xpro/MESH/
        return p, self.store._prefix_end(p)

    def init(self, *, enable_auth: bool = False) -> list[str]:
        rpc, _ = _etcd()
        from etcd3.etcdrpc import auth_pb2  # type: ignore[import-untyped]

        out: list[str] = []
        made = self._call("RoleAdd", rpc.AuthRoleAddRequest(name=self.role),
                          f"adding role {self.role}", exists_ok=True)
        key, end = self._prefix()
        perm = auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=key,
                                   range_end=end)
        self._call("RoleGrantPermission",
                   rpc.AuthRoleGrantPermissionRequest(name=self.role, perm=perm),
                   f"granting {self.role} its prefix")
        out.append(f"role {self.role} {'created' if made else 'exists'}: read/write on "
                   f"{key.decode()} (the range [{key.decode()}, {end.decode()}))")
        if enable_auth:
            out += self._enable_auth()
        else:
            out.append("authentication: `etcdctl auth enable` (or `xpro store init "
                       "--enable-auth`) must be on, or these users protect nothing")
        return out

    def _enable_auth(self) -> list[str]:
        rpc, _ = _etcd()
        user = self.store._username or "root"
        pw = self._admin_password
        if user != "root" or not pw:
            raise ConfigError("--enable-auth needs the root user's password as the "
                              "administrator's (--admin-password-file or "
                              "XPRO_ADMIN_PASSWORD): etcd's authentication needs a root "
                              "user")
        self.store._password = None  # auth is still off: no token
        try:
            made = self._call("UserAdd", rpc.AuthUserAddRequest(name="root", password=pw),
                              "adding the root user", exists_ok=True)
            self._call("UserGrantRole", rpc.AuthUserGrantRoleRequest(user="root", role="root"),
                       "granting root its role")
            self._call("AuthEnable", rpc.AuthEnableRequest(), "enabling authentication")
        finally:
            self.store._password = pw
            self.store._token = None
        return [f"user root {'created' if made else 'exists'}; authentication enabled"]

    def set_user(self, user: str, password: Secret, *, add: bool = False) -> list[str]:
        if add:
            raise ConfigError("etcd keeps one password per user: rotate by setting the new "
                              "one (without --add) and restarting the proxy with it "
                              "(docs/operations.rst)")
        rpc, _ = _etcd()
        pw = password.reveal()
        made = self._call("UserAdd", rpc.AuthUserAddRequest(name=user, password=pw),
                          f"adding user {user}", exists_ok=True)
        if not made:
            self._call("UserChangePassword",
                       rpc.AuthUserChangePasswordRequest(name=user, password=pw),
                       f"changing the password of {user}")
        self._call("UserGrantRole", rpc.AuthUserGrantRoleRequest(user=user, role=self.role),
                   f"granting {user} the role {self.role}")
        return [f"user {user} {'created' if made else 'password changed'}, role {self.role}"]

    def delete_user(self, user: str) -> list[str]:
        rpc, _ = _etcd()
        gone = self._call("UserDelete", rpc.AuthUserDeleteRequest(name=user),
                          f"deleting user {user}")
        return [f"user {user} {'deleted' if gone else 'did not exist'}"]

    def compact(self, keep_revisions: int) -> list[str]:
        if keep_revisions < 0:
            raise ConfigError(f"--keep-revisions {keep_revisions}: must be 0 or more")
        now = self.store.revision()
        target = now - keep_revisions
        if target <= 1:
            return [f"revision {now}: nothing to compact"]
        done = self.store.compact(target)
        return [f"compacted the history up to revision {target} (now {now})" if done
                else f"already compacted up to revision {target} or later"]

    def close(self) -> None:
        self.store.close()


def open_admin(url: str, *, mesh: str, options: Mapping[str, Any] | None = None
               ) -> StoreAdmin:
    """The administrator's side of the store at ``url`` for ``mesh``.

    ``options`` as for the store (TLS files, ``username``/``password`` of the
    administrator).  Only xpro's own Redis and etcd stores have one.
    """
    try:
        scheme = split_url(url).scheme
    except ValueError:
        raise ConfigError("the store URL starts with SCHEME:// (redis://, etcd://...)"
                          ) from None
    if scheme in RedisStore.schemes:
        return RedisAdmin(RedisStore.from_url(url, mesh=mesh, options=options))
    if scheme in EtcdStore.schemes:
        return EtcdAdmin(EtcdStore.from_url(url, mesh=mesh, options=options))
    hint = (" (no store was given, and the default is memory://: give the mesh's store "
            "with --store URL or --config FILE)" if scheme == "memory" else "")
    raise ConfigError(f"{printable(scheme, 40)}:// stores have no users to set up{hint}: "
                      "`xpro store` is for Redis (redis://, rediss://, redis+cluster://) and "
                      "etcd (etcd://, etcds://)")
