"""Built-in default hook implementations; all ``trylast`` so any plugin can override them."""

from __future__ import annotations

from .changelog import ChangeLog, SqliteChangeLog
from .model import UserInfo
from .plugin import hookimpl
from .settings import Settings
from .userdb import system_iter, system_lookup


@hookimpl(trylast=True)
def dsync_changelog_open(path: str, settings: Settings) -> ChangeLog:
    return SqliteChangeLog(path)


@hookimpl(trylast=True)
def dsync_userdb_lookup(user: str, settings: Settings) -> UserInfo | None:
    return system_lookup(user, settings)


@hookimpl(trylast=True)
def dsync_userdb_iter(settings: Settings) -> list[UserInfo]:
    return system_iter(settings)
