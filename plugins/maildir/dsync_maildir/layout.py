"""Mailbox name <-> directory mapping for the two Maildir layouts.

* Maildir++ (default): ``Archive/2024`` lives in ``<root>/.Archive.2024/`` (on-disk
  separator ``.``) with an empty ``maildirfolder`` marker file.
* ``LAYOUT=fs``: ``Archive/2024`` lives in ``<root>/Archive/2024/``.

INBOX is the root itself (or the ``INBOX=`` path). Levels are stored in modified UTF-7
unless the location has the ``UTF-8`` option. A level that contains the on-disk separator
is refused before anything touches the disk, with Dovecot's wording.
"""

from __future__ import annotations

import logging
import os

from dsync_core.errors import InvalidNameError
from dsync_core.fsstorage import DIRECTORY_TRASH, DirectoryLayout
from dsync_core.storage import HIERARCHY_SEP, normalize_mailbox_name

log = logging.getLogger("dsync.maildir")

MAILDIR_SUBDIRS = ("cur", "new", "tmp")


class Layout(DirectoryLayout):
    """Where a mailbox's mail, control and index files live."""

    def __init__(
        self,
        root: str,
        *,
        fs: bool = False,
        utf8: bool = False,
        inbox: str | None = None,
        control: str | None = None,
        index: str | None = None,
    ) -> None:
        super().__init__(root, index=index, utf8=utf8)
        self.fs = fs
        self.sep = "/" if fs else "."
        self.inbox = os.path.abspath(inbox) if inbox else self.root
        self.control_root = os.path.abspath(control) if control else self.root

    def roots(self) -> set[str]:
        return {self.root, self.control_root, self.index_root, self.inbox}

    @property
    def v1_separator(self) -> str:  # type: ignore[override]
        return self.sep

    def trash_dir(self, root: str) -> str:
        if root != self.root:
            return super().trash_dir(root)
        # Maildir++ lists every ".name" directory as a mailbox (Dovecot's trash there has no
        # dot); LAYOUT=fs lists every directory but cur, new and tmp (Dovecot's included).
        return os.path.join(root, "tmp", DIRECTORY_TRASH) if self.fs else os.path.join(root, "DOVECOT-TRASHED")

    @property
    def subscriptions_dir(self) -> str:
        return self.control_root

    # -- names ---------------------------------------------------------------------
    def validate(self, name: str) -> str:
        """Normalize a user name and refuse what cannot be stored in this layout."""
        name = normalize_mailbox_name(name)
        for level in name.split(HIERARCHY_SEP):
            for bad in dict.fromkeys((self.sep, "/")):
                if bad in level:
                    raise InvalidNameError(
                        f"Invalid mailbox name {name!r}: Character not allowed in mailbox name: '{bad}'"
                    )
            if self.fs and (level.startswith(".") or level in MAILDIR_SUBDIRS):
                raise InvalidNameError(f"Invalid mailbox name {name!r}: level {level!r} is reserved in LAYOUT=fs")
        return name

    # -- paths ---------------------------------------------------------------------
    def _relative(self, name: str) -> str:
        levels = self.storage_levels(name)
        if self.fs:
            return os.path.join(*levels)
        return "." + ".".join(levels)

    def mail_dir(self, name: str) -> str:
        if name == "INBOX":
            return self.inbox
        return os.path.join(self.root, self._relative(name))

    def control_dir(self, name: str) -> str:
        if self.control_root == self.root:
            return self.mail_dir(name)
        return self.control_root if name == "INBOX" else os.path.join(self.control_root, self._relative(name))

    def index_dir(self, name: str) -> str:
        if self.index_root == self.root:
            return self.mail_dir(name)
        if name == "INBOX":
            # Dovecot keeps INBOX's index in its own subdirectory of INDEX= (verified 2.3.19).
            return os.path.join(self.index_root, "INBOX" if self.fs else ".INBOX")
        return os.path.join(self.index_root, self._relative(name))

    # -- listing -------------------------------------------------------------------
    def _decode(self, levels: list[str], where: str) -> str | None:
        try:
            name = HIERARCHY_SEP.join(self.decode_level(x) for x in levels)
            name = normalize_mailbox_name(name)
        except InvalidNameError as e:
            log.warning("Ignoring directory %s: %s", where, e.message)
            return None
        return name

    def existing(self) -> dict[str, bool]:
        """Names of mailbox directories on disk -> whether they hold a mailbox."""
        found: dict[str, bool] = {}
        skip = {self.control_root, self.index_root, self.inbox} - {self.root}
        if not self.fs:
            try:
                entries = list(os.scandir(self.root))
            except FileNotFoundError:
                return found
            for e in entries:
                if not e.name.startswith(".") or e.name in (".", "..") or not e.is_dir():
                    continue
                if os.path.join(self.root, e.name) in skip:
                    continue
                levels = e.name[1:].split(".")
                if any(level == "" for level in levels):
                    log.warning("Ignoring directory %s: empty hierarchy level", e.path)
                    continue
                name = self._decode(levels, e.path)
                if name is not None and name != "INBOX":
                    found[name] = True
            return found

        def walk(path: str, levels: list[str]) -> None:
            try:
                entries = list(os.scandir(path))
            except OSError:
                return
            for e in entries:
                if e.name.startswith(".") or e.name in MAILDIR_SUBDIRS or not e.is_dir():
                    continue
                if e.path in skip:
                    continue
                name = self._decode([*levels, e.name], e.path)
                if name is None:
                    continue
                found[name] = os.path.isdir(os.path.join(e.path, "cur"))
                walk(e.path, [*levels, e.name])

        walk(self.root, [])
        found.pop("INBOX", None)
        return found


__all__ = ["Layout", "MAILDIR_SUBDIRS"]
