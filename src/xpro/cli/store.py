"""``xpro store``: set up the master store for a mesh with the administrator's credentials.

``init`` once per mesh (Redis: the merge functions; etcd: the mesh's role),
``user`` per proxy (a user with only the rights the sync needs on the mesh's
keys, a password file to copy to the proxy), ``compact`` for etcd's history.
A thin layer over :mod:`xpro.stores.admin`; docs/operations.rst says when to
run what, docs/security.rst what a proxy's user can and cannot do.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from xpro.config import Secret, click_options, load_config, overrides_from_click
from xpro.config.kinds import read_password_file, split_url
from xpro.core.text import printable
from xpro.errors import ConfigError

__all__ = ["store"]

#: The administrator's password, when not in a file (never a proxy's).
ADMIN_PASSWORD_ENV = "XPRO_ADMIN_PASSWORD"
_STORE_KEYS = ["store.url", "store.mesh", "store.tls_ca", "store.tls_cert", "store.tls_key",
               "store.tls_verify"]


def _admin_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--admin-password-file", type=click.Path(dir_okay=False), default=None,
                      allow_from_autoenv=False,
                      help="A file holding the administrator's password (first line); "
                      f"else ${ADMIN_PASSWORD_ENV}, else the password in the URL.")(fn)
    fn = click.option("--admin-user", metavar="NAME", default=None, allow_from_autoenv=False,
                      help="The administrator's user (Redis: an ACL user allowed ACL and "
                      "FUNCTION; etcd: root).  Default: the URL's, else Redis's default "
                      "user or etcd's root.")(fn)
    fn = click_options(_STORE_KEYS, set_option=False)(fn)
    return click.option("--config", "config_path", type=click.Path(dir_okay=False),
                        envvar="XPRO_CONFIG",
                        help="Take the store URL, mesh and TLS files from this configuration "
                        "[XPRO_CONFIG].")(fn)


def _without_userinfo(url: str) -> str:
    p = split_url(url)
    query = f"?{p.query}" if p.query else ""
    return f"{p.scheme}://{p.hosts}{p.path}{query}"


def _open(config_path: str | None, admin_user: str | None, admin_password_file: str | None,
          params: dict[str, Any]) -> Any:
    """The :class:`~xpro.stores.admin.StoreAdmin` the options describe."""
    from xpro.stores.admin import open_admin

    cfg = load_config(config_path, overrides=overrides_from_click(params))
    url = cfg.store.url
    opts = {k: v for k, v in cfg.store_options().items()
            if k not in ("username", "password", "password_file")}
    password: str | None = None
    if admin_password_file is not None:
        why = "its first line is empty"
        try:
            password = read_password_file(admin_password_file) or None
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not UTF-8 text"
        if password is None:
            raise ConfigError(f"--admin-password-file {printable(admin_password_file)}: cannot "
                              f"read the password ({why})") from None
    elif os.environ.get(ADMIN_PASSWORD_ENV):
        password = os.environ[ADMIN_PASSWORD_ENV]
    if admin_user is not None or password is not None:
        url = _without_userinfo(url)  # the given credentials, not the URL's
        opts["username"] = admin_user
        opts["password"] = Secret(password) if password else None
    else:
        opts["password"] = None  # never a proxy's $XPRO_STORE_PASSWORD
    return open_admin(url, mesh=cfg.store.mesh, options=opts)


def _write_secret(path: Path, value: str) -> None:
    """``value`` into a new file ``path``, mode 0600 from the start (an existing
    file is never overwritten: FileExistsError)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (value + "\n").encode())
    finally:
        os.close(fd)


def _password_for(path: Path) -> tuple[Secret, bool]:
    """The password on the first line of ``path`` if the file exists, else a new
    one written to a new file there (True).  A file that exists is only read."""
    shown = printable(str(path))
    try:
        first = read_password_file(path)
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"--password-file {shown}: cannot read the proxy's password there "
                          f"({why}): give a file that holds it on its first line, or a path "
                          "where none exists yet for a new one") from None
    else:
        if not first:
            raise ConfigError(f"--password-file {shown}: its first line is empty: put the "
                              "proxy's password there, or give a path where no file exists "
                              "yet for a new one (an existing file is never overwritten)")
        return Secret(first), False
    value = secrets.token_urlsafe(32)
    try:
        _write_secret(path, value)
    except OSError as exc:
        raise ConfigError(f"--password-file {shown}: cannot write a new password there "
                          f"({exc.strerror}): give a writable path") from None
    return Secret(value), True


def _user_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--user``: a name the proxy's ``store.username`` would take."""
    if value is None:
        return None
    from xpro.config.schema import SCHEMA

    kind = next(o.kind for o in SCHEMA if o.key == "store.username")
    try:
        name: str = kind.from_text(value)
    except Exception as exc:  # the kind's refusal: its text says what is allowed
        raise click.BadParameter(str(exc)) from None
    if name != value:
        raise click.BadParameter(f"{printable(value)!r}: no spaces around the name")
    return name


def _set_user(admin: Any, proxy: str, user: str | None, path: Path, *, add: bool) -> None:
    from xpro.stores.admin import proxy_user

    name = user or proxy_user(admin.mesh, proxy)
    password, new = _password_for(path)
    try:
        lines = admin.set_user(name, password, add=add)
    except BaseException:
        if new:  # kept: the store may hold it already (some nodes, or the user before a grant)
            click.echo(f"the new password stays in {printable(str(path))}: give the same "
                       "file again to finish", err=True)
        raise
    for line in lines:
        click.echo(line)
    click.echo(f"{'new password written to' if new else 'password taken from'} {path} "
               "(mode 0600; never printed)")
    click.echo(f"on proxy {proxy}: [store] username = \"{name}\", password_file = a root-only "
               f"copy of {path.name} (or XPRO_STORE_PASSWORD), and a TLS URL")


@click.group("store")
def store() -> None:
    """Set up the master store for a mesh (the administrator's credentials).

    \b
    Examples:
      xpro store init --config /etc/xpro/xpro.toml --proxy edge1 --proxy edge2
      xpro store user edge1 --config /etc/xpro/xpro.toml --password-file edge1.new --add
      xpro store compact --store etcds://10.0.0.5:2379 --store-tls-ca ca.pem
    """


@store.command("init")
@_admin_options
@click.option("--proxy", "proxies", multiple=True, metavar="NAME",
              help="Also make this proxy's user (repeatable): xpro-MESH-NAME.")
@click.option("--secrets-dir", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Where each proxy's password file goes (NAME.password, mode 0600); an "
              "existing one is reused, so running init again changes no password.")
@click.option("--enable-auth", is_flag=True,
              help="etcd: add the root user with the administrator's password and turn "
              "authentication on.")
def store_init(config_path: str | None, admin_user: str | None,
               admin_password_file: str | None, proxies: tuple[str, ...], secrets_dir: str,
               enable_auth: bool, **params: Any) -> None:
    """Prepare the store for the mesh, once, and make the proxies' users.

    Redis: loads the merge function library on every master (a proxy's user
    may not).  etcd: the role xpro-MESH with read/write on xpro/MESH/ only.
    Each --proxy gets a user with only the rights the sync needs on this
    mesh's keys; its password goes to a file, never to the terminal.
    """
    with _open(config_path, admin_user, admin_password_file, params) as admin:
        for line in admin.init(enable_auth=enable_auth):
            click.echo(line)
        if proxies:
            d = Path(secrets_dir)
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            for proxy in proxies:
                _set_user(admin, proxy, None, d / f"{proxy}.password", add=False)


@store.command("user")
@_admin_options
@click.argument("proxy")
@click.option("--user", "user", metavar="NAME", default=None, callback=_user_name,
              help="The user's name (default: xpro-MESH-PROXY), as store.username takes "
              "it.")
@click.option("--password-file", type=click.Path(dir_okay=False), default=None,
              help="The password: this file's, or a new one written to it (mode 0600) if it "
              "does not exist.  Default: ./PROXY.password.")
@click.option("--add", is_flag=True,
              help="Redis: add this password and keep the user's others (step one of a "
              "rotation; run again without --add once the proxy uses the new one).")
@click.option("--delete", is_flag=True, help="Remove the user.")
def store_user(config_path: str | None, admin_user: str | None,
               admin_password_file: str | None, proxy: str, user: str | None,
               password_file: str | None, add: bool, delete: bool, **params: Any) -> None:
    """Create PROXY's store user, set (rotate) its password, or delete it.

    \b
    Rotating a Redis password with no refused round:
      xpro store user edge1 --password-file edge1.new --add   # old and new work
      (install edge1.new on edge1, systemctl restart xpro)
      xpro store user edge1 --password-file edge1.new         # only the new works
    """
    from xpro.stores.admin import proxy_user

    if delete and (add or password_file):
        raise click.UsageError("--delete removes the user: it takes neither --add nor "
                               "--password-file")
    with _open(config_path, admin_user, admin_password_file, params) as admin:
        if delete:
            for line in admin.delete_user(user or proxy_user(admin.mesh, proxy)):
                click.echo(line)
            return
        _set_user(admin, proxy, user, Path(password_file or f"{proxy}.password"), add=add)


@store.command("compact")
@_admin_options
@click.option("--keep-revisions", type=click.IntRange(0), default=1000, show_default=True,
              help="Keep this many of the latest revisions (a reader in the middle of a "
              "paged read needs its revision).")
def store_compact(config_path: str | None, admin_user: str | None,
                  admin_password_file: str | None, keep_revisions: int,
                  **params: Any) -> None:
    """etcd: compact the cluster's history (proxies never do; their users may not).

    Or let etcd do it: --auto-compaction-mode=periodic --auto-compaction-retention=5m.
    """
    with _open(config_path, admin_user, admin_password_file, params) as admin:
        for line in admin.compact(keep_revisions):
            click.echo(line)
