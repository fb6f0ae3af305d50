"""Users: a passwd-file userdb (Dovecot's format) and the system's user database.

Which userdb answers is configured as in dovecot.conf::

    userdb {
      driver = passwd-file
      args = /etc/dovecot/users
    }

(flattened by the settings parser to ``userdb/driver`` and ``userdb/args``; named sections
``userdb NAME { ... }`` work too, in order), or on the command line as
``-o userdb=passwd-file:/etc/dovecot/users``. With no userdb configured, users come from
the system's user database (``driver = passwd``): that is the ``trylast`` default in
:mod:`dsync_core.defaults`, so a plugin's userdb (SQL, LDAP) still comes first.

A passwd-file line is ``user:password:uid:gid:gecos:home:shell:extra_fields`` where the
extra fields are space-separated ``key=value`` pairs such as
``userdb_mail=maildir:~/Maildir userdb_mail_replica=remote:backup.example.org``.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import re
import threading

import attrs

from .errors import ConfigError
from .location import expand_vars, user_variables
from .model import UserInfo
from .plugin import hookimpl
from .settings import Settings

log = logging.getLogger("dsync.userdb")

PASSWD_FILE = "passwd-file"
_FIELD_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]*")
SYSTEM = "passwd"


@attrs.frozen
class UserdbConfig:
    """One configured userdb: its driver and its ``args`` string."""

    driver: str
    args: str = ""


def configured_userdbs(settings: Settings) -> list[UserdbConfig]:
    """The userdbs the settings configure, in order; empty when none is."""
    out: list[UserdbConfig] = []
    simple = settings.get("userdb", "").strip()
    if simple:
        driver, _, args = simple.partition(":")
        out.append(UserdbConfig(driver.strip(), args.strip()))
    if settings.get("userdb/driver"):
        out.append(UserdbConfig(settings["userdb/driver"].strip(), settings.get("userdb/args", "").strip()))
    # Named sections: userdb NAME { driver = ... } -> userdb/NAME/driver
    for key, value in settings.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "userdb" and parts[2] == "driver":
            out.append(UserdbConfig(value.strip(), settings.get(f"userdb/{parts[1]}/args", "").strip()))
    return out


def _uses_system(settings: Settings) -> bool:
    dbs = configured_userdbs(settings)
    return not dbs or any(db.driver == SYSTEM for db in dbs)


def _check_drivers(settings: Settings) -> None:
    for db in configured_userdbs(settings):
        if db.driver not in (PASSWD_FILE, SYSTEM):
            raise ConfigError(f"Unknown userdb driver {db.driver!r} (built in: {PASSWD_FILE}, {SYSTEM})")


# -- the system's user database ----------------------------------------------------------------


def system_lookup(user: str, settings: Settings | None = None) -> UserInfo | None:
    """A system user; ``None`` also when ``settings`` configure userdbs that exclude it."""
    if settings is not None:
        _check_drivers(settings)
        if not _uses_system(settings):
            return None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    return UserInfo(name=pw.pw_name, home=pw.pw_dir, uid=pw.pw_uid, gid=pw.pw_gid)


def system_iter(settings: Settings) -> list[UserInfo]:
    """System users in Dovecot's valid uid range (``first_valid_uid``..``last_valid_uid``)."""
    _check_drivers(settings)
    if not _uses_system(settings):
        return []
    first = settings.get_int("first_valid_uid", 500)
    last = settings.get_int("last_valid_uid", 0)
    out = []
    for pw in pwd.getpwall():
        if pw.pw_uid < first or (last and pw.pw_uid > last):
            continue
        out.append(UserInfo(name=pw.pw_name, home=pw.pw_dir, uid=pw.pw_uid, gid=pw.pw_gid))
    return out


# -- passwd-file ---------------------------------------------------------------------------------


@attrs.frozen
class PasswdFileArgs:
    """``args = [username_format=%n] /path/with/%d/vars``."""

    path: str
    username_format: str = "%u"


def parse_passwd_file_args(args: str) -> PasswdFileArgs:
    path = ""
    fmt = "%u"
    for word in args.split():
        if word.startswith("username_format="):
            fmt = word.partition("=")[2] or "%u"
        elif "=" in word and not word.startswith("/") and word.partition("=")[0].isidentifier():
            continue  # scheme=..., other passdb options: not ours
        else:
            path = word
    if not path:
        raise ConfigError(f"userdb passwd-file: no file name in args {args!r}")
    return PasswdFileArgs(path=path, username_format=fmt)


def _id(value: str, kind: str, user: str, where: str) -> int | None:
    """A uid/gid field: a number or a system user/group name (as Dovecot allows); empty = unset."""
    if value == "":
        return None
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid if kind == "UID" else grp.getgrnam(value).gr_gid
    except KeyError:
        raise ConfigError(f"{where}: User {user} has invalid {kind} {value!r}") from None


def parse_passwd_line(line: str, where: str) -> UserInfo | None:
    """One passwd-file line; ``None`` for blank lines and comments.

    Raises :class:`ConfigError` naming ``where`` (``file:line``) for a malformed line.
    """
    line = line.rstrip("\r\n")
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    parts = line.split(":", 7)
    name = parts[0]
    if not name:
        raise ConfigError(f"{where}: empty user name")
    if len(parts) < 2:
        raise ConfigError(f"{where}: missing ':' after user name {name!r}")
    if any(c in name for c in " \t") or any(ord(c) < 0x20 for c in name):
        raise ConfigError(f"{where}: invalid user name {name!r}")
    parts += [""] * (8 - len(parts))
    _password, uid_s, gid_s, _gecos, home, _shell, extra = parts[1:]
    uid = _id(uid_s, "UID", name, where)
    gid = _id(gid_s, "GID", name, where)
    fields: dict[str, str] = {}
    plain: dict[str, str] = {}
    for item in extra.split():
        key, _, value = item.partition("=")
        if not _FIELD_RE.fullmatch(key):
            raise ConfigError(f"{where}: User {name} has an invalid extra field {item!r} (expected key=value)")
        if key.startswith("userdb_"):
            fields[key[len("userdb_"):]] = value
        else:
            plain[key] = value
    # Dovecot's userdb takes the userdb_ fields; plain ones (mail=...) are accepted too, the prefixed win.
    for key, value in plain.items():
        fields.setdefault(key, value)
    for key, attr in (("uid", "uid"), ("gid", "gid")):
        if key in fields:
            ident = _id(fields.pop(key), key.upper(), name, where)
            if attr == "uid":
                uid = ident
            else:
                gid = ident
    if "home" in fields:
        home = fields.pop("home")
    return UserInfo(name=name, home=home, uid=uid, gid=gid, fields=fields)


def parse_passwd_text(text: str, path: str = "<string>") -> dict[str, UserInfo]:
    """Every user of a passwd-file, in file order; a name given twice keeps its first line."""
    users: dict[str, UserInfo] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        info = parse_passwd_line(line, f"{path}:{lineno}")
        if info is None:
            continue
        if info.name in users:
            log.warning("passwd-file %s:%d: User %s exists more than once", path, lineno, info.name)
            continue
        users[info.name] = info
    return users


_cache: dict[str, tuple[tuple[int, int, int], dict[str, UserInfo]]] = {}
_cache_lock = threading.Lock()


def read_passwd_file(path: str) -> dict[str, UserInfo]:
    """The users of a passwd-file, re-read only when the file changed."""
    try:
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with _cache_lock:
            hit = _cache.get(path)
            if hit and hit[0] == stamp:
                return hit[1]
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"passwd-file {path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"passwd-file {path}: not UTF-8 text") from None
    users = parse_passwd_text(text, path)
    with _cache_lock:
        _cache[path] = (stamp, users)
    return users


def _passwd_files(settings: Settings) -> list[PasswdFileArgs]:
    return [parse_passwd_file_args(db.args) for db in configured_userdbs(settings) if db.driver == PASSWD_FILE]


def passwd_file_lookup(user: str, settings: Settings) -> UserInfo | None:
    for cfg in _passwd_files(settings):
        variables = user_variables(user, None)
        key = expand_vars(cfg.username_format, variables)
        path = expand_vars(cfg.path, variables)
        if "%" in cfg.path and not os.path.exists(path):
            continue  # e.g. /etc/%d/passwd for a domain that has no file
        info = read_passwd_file(path).get(key)
        if info is not None:
            return info
    return None


def passwd_file_iter(settings: Settings) -> list[UserInfo]:
    out: list[UserInfo] = []
    for cfg in _passwd_files(settings):
        if "%" in cfg.path:
            raise ConfigError(f"userdb passwd-file {cfg.path}: cannot list users of a file name with %variables")
        out.extend(read_passwd_file(cfg.path).values())
    return out


# -- hooks (registered in DEFAULT_PLUGINS before dsync_core.defaults) -----------------------------


@hookimpl
def dsync_userdb_lookup(user: str, settings: Settings) -> UserInfo | None:
    return passwd_file_lookup(user, settings)


@hookimpl
def dsync_userdb_iter(settings: Settings) -> list[UserInfo]:
    return passwd_file_iter(settings)


# -- helpers for commands ---------------------------------------------------------------------


def wildcard_match(mask: str, name: str) -> bool:
    """Dovecot's ``wildcard_match_icase``: ``*`` any run, ``?`` one character, case-insensitive."""
    pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in mask)
    return re.fullmatch(pattern, name, re.IGNORECASE | re.DOTALL) is not None


def iter_users(settings: Settings) -> list[UserInfo]:
    """Every user of every userdb; the first entry for a name wins (the hook's contract)."""
    from .plugin.manager import get_plugin_manager

    seen: dict[str, UserInfo] = {}
    for lst in get_plugin_manager().hook.dsync_userdb_iter(settings=settings):
        for info in lst or []:
            seen.setdefault(info.name, info)
    return list(seen.values())


__all__ = [
    "UserdbConfig",
    "configured_userdbs",
    "system_lookup",
    "system_iter",
    "PasswdFileArgs",
    "parse_passwd_file_args",
    "parse_passwd_line",
    "parse_passwd_text",
    "read_passwd_file",
    "passwd_file_lookup",
    "passwd_file_iter",
    "wildcard_match",
    "iter_users",
]
