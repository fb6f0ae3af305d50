"""dsync-dbox: Dovecot-compatible ``sdbox:`` and ``mdbox:`` storage for dsync-py.

Location syntax is Dovecot's: ``sdbox:~/sdbox``, ``mdbox:~/mdbox``, with options ``INDEX=<path>`` (index
files in a parallel tree), ``ALT=<path>`` (alternate storage, read), ``DIRNAME=``
(default ``dbox-Mails``), ``MAILBOXDIR=`` (default ``mailboxes``) and ``UTF-8``.
Message files, flags, keywords, UIDs and modseqs are where Dovecot keeps them: the
``u.<uid>`` files (sdbox) or ``storage/m.<id>`` files with the map index (mdbox), and
Dovecot's own per-mailbox index (``dovecot.index`` + ``dovecot.index.log``). mdbox honours
``mdbox_rotate_size`` (default 10M).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dsync_core.plugin import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from dsync_core.location import Location
    from dsync_core.model import UserInfo
    from dsync_core.settings import Settings
    from dsync_core.storage import Storage

SCHEMES = ("sdbox", "mdbox")


@hookimpl
def dsync_storage_open(location: Location, settings: Settings, user: UserInfo | None) -> Storage | None:
    if location.scheme == "sdbox":
        from .sdbox import SdboxStorage  # imported only when an sdbox is opened

        return SdboxStorage(location, settings, user)
    if location.scheme == "mdbox":
        from .mdbox import MdboxStorage

        return MdboxStorage(location, settings, user)
    return None


@hookimpl
def dsync_storage_schemes() -> list[str]:
    return list(SCHEMES)
