"""dsync-maildir: Dovecot-compatible ``maildir:`` storage for dsync-py.

Location options: ``LAYOUT=fs`` (default Maildir++), ``INBOX=<path>``, ``CONTROL=<path>``,
``INDEX=<path>`` and ``UTF-8`` (folder names on disk in UTF-8 instead of modified UTF-7),
e.g. ``maildir:~/Maildir:LAYOUT=fs:INDEX=/var/index/%u``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dsync_core.plugin import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from dsync_core.location import Location
    from dsync_core.model import UserInfo
    from dsync_core.settings import Settings
    from dsync_core.storage import Storage

SCHEME = "maildir"


@hookimpl
def dsync_storage_open(location: Location, settings: Settings, user: UserInfo | None) -> Storage | None:
    if location.scheme != SCHEME:
        return None
    from .storage import MaildirStorage  # imported only when a Maildir is opened

    return MaildirStorage(location, settings, user)


@hookimpl
def dsync_storage_schemes() -> list[str]:
    return [SCHEME]
