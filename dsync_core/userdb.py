"""Users: the system's user database as the built-in default userdb."""

from __future__ import annotations

import pwd

from .model import UserInfo
from .settings import Settings


def system_lookup(user: str) -> UserInfo | None:
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    return UserInfo(name=pw.pw_name, home=pw.pw_dir, uid=pw.pw_uid, gid=pw.pw_gid)


def system_iter(settings: Settings) -> list[UserInfo]:
    """System users in Dovecot's valid uid range (``first_valid_uid``..``last_valid_uid``)."""
    first = settings.get_int("first_valid_uid", 500)
    last = settings.get_int("last_valid_uid", 0)
    out = []
    for pw in pwd.getpwall():
        if pw.pw_uid < first or (last and pw.pw_uid > last):
            continue
        out.append(UserInfo(name=pw.pw_name, home=pw.pw_dir, uid=pw.pw_uid, gid=pw.pw_gid))
    return out


__all__ = ["system_lookup", "system_iter"]
