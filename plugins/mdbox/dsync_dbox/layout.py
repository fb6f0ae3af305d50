"""Mailbox name <-> directory mapping of sdbox and mdbox (Dovecot's ``fs`` list layout).

``Archive/2024`` lives in ``<root>/mailboxes/Archive/2024/``; it is selectable when its
``dbox-Mails/`` directory exists (sdbox keeps ``u.<uid>`` files and, without ``INDEX=``,
the ``dovecot.index*`` files there). With ``INDEX=<dir>`` the index files of the mailbox
are in ``<dir>/mailboxes/Archive/2024/`` and ``dovecot.mailbox.log`` in ``<dir>``.
Levels are modified UTF-7 on disk unless the location has ``UTF-8``.
"""

from __future__ import annotations

import logging
import os

from dsync_core.errors import InvalidNameError
from dsync_core.fsstorage import DirectoryLayout
from dsync_core.storage import HIERARCHY_SEP, normalize_mailbox_name

log = logging.getLogger("dsync.dbox")


class DboxLayout(DirectoryLayout):
    def __init__(self, root: str, *, index: str | None = None, alt: str | None = None, utf8: bool = False,
                 dirname: str = "dbox-Mails", mailboxdir: str = "mailboxes") -> None:
        super().__init__(root, index=index, utf8=utf8)
        self.alt_root = os.path.abspath(alt) if alt else None
        self.dirname = dirname
        self.mailboxdir = mailboxdir

    def roots(self) -> set[str]:
        return {r for r in (self.root, self.index_root, self.alt_root) if r}

    def validate(self, name: str) -> str:
        name = normalize_mailbox_name(name)
        for level in name.split(HIERARCHY_SEP):
            if level == self.dirname:
                raise InvalidNameError(f"Invalid mailbox name {name!r}: {level!r} is reserved for dbox")
        return name

    def _under(self, root: str, name: str) -> str:
        return os.path.join(root, self.mailboxdir, *self.storage_levels(name))

    def mailbox_path(self, name: str) -> str:
        """The hierarchy directory of a mailbox (holds ``dbox-Mails`` and children)."""
        return self._under(self.root, name)

    def mail_dir(self, name: str) -> str:
        return os.path.join(self.mailbox_path(name), self.dirname)

    def index_dir(self, name: str) -> str:
        if self.index_root == self.root:
            return self.mail_dir(name)
        return self._under(self.index_root, name)

    def alt_dir(self, name: str) -> str | None:
        if self.alt_root is None:
            return None
        return os.path.join(self._under(self.alt_root, name), self.dirname)

    def existing(self) -> dict[str, bool]:
        """Names found on disk -> whether they are selectable mailboxes."""
        found: dict[str, bool] = {}

        def walk(path: str, levels: list[str]) -> None:
            try:
                entries = list(os.scandir(path))
            except OSError:
                return
            for e in entries:
                if e.name == self.dirname or e.name.startswith(".") or not e.is_dir(follow_symlinks=False):
                    continue
                try:
                    name = normalize_mailbox_name(HIERARCHY_SEP.join(self.decode_level(x) for x in [*levels, e.name]))
                except InvalidNameError as err:
                    log.warning("Ignoring directory %s: %s", e.path, err.message)
                    continue
                found[name] = os.path.isdir(os.path.join(e.path, self.dirname))
                walk(e.path, [*levels, e.name])

        walk(os.path.join(self.root, self.mailboxdir), [])
        return found
