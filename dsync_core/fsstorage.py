"""Shared plumbing of storages kept in directories on this machine (Maildir, sdbox, mdbox).

What every such backend needs and Dovecot does the same way for all of them: folder names
as modified UTF-7 levels, files owned by the mail root's owner when we run as root,
directories created and removed only inside the mail roots, Dovecot's
``dovecot.mailbox.log`` and its ``subscriptions`` file. A backend subclasses
:class:`DirectoryLayout` (where things live) and :class:`DirectoryStorage`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from typing import Any

from . import mailboxlog, mutf7, subscriptions
from .errors import EX_DATAERR, InvalidNameError, NotFoundError, StorageError
from .model import MailboxLogRecord, MailboxLogType
from .storage import HIERARCHY_SEP, Storage, normalize_mailbox_name

log = logging.getLogger("dsync.storage")


class DirectoryLayout:
    """Where a directory-based store keeps things. Subclasses add the mailbox paths."""

    #: The separator a version-1 ``subscriptions`` file uses between levels.
    v1_separator = "/"

    def __init__(self, root: str, *, index: str | None = None, utf8: bool = False) -> None:
        self.root = os.path.abspath(root)
        self.index_root = os.path.abspath(index) if index else self.root
        self.utf8 = utf8

    def roots(self) -> set[str]:
        """Every directory tree we may create or remove things in."""
        return {self.root, self.index_root}

    @property
    def subscriptions_dir(self) -> str:
        return self.root

    def validate(self, name: str) -> str:
        """Normalize a user-visible name; subclasses refuse what their layout cannot store."""
        return normalize_mailbox_name(name)

    def existing(self) -> dict[str, bool]:
        """Names found on disk -> whether each is a selectable mailbox (else a directory)."""
        raise NotImplementedError

    def encode_level(self, level: str) -> str:
        return level if self.utf8 else mutf7.encode(level)

    def decode_level(self, level: str) -> str:
        return level if self.utf8 else mutf7.decode(level)

    def storage_levels(self, name: str) -> list[str]:
        return [self.encode_level(level) for level in name.split(HIERARCHY_SEP)]


class DirectoryStorage(Storage):
    """A :class:`Storage` whose mail lives under ``layout.roots()``."""

    layout: DirectoryLayout

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self._owner: tuple[int, int] | None = None
        # Dovecot gives new directories the mode of the mail root and files that mode
        # without x bits; it refuses to rename between directories whose modes differ.
        self.dir_mode = 0o700
        self.file_mode = 0o600

    def _adopt_owner(self) -> None:
        """Take owner and permissions from the mail root (or its nearest existing parent
        when it is new): when root works on a user's mail, everything goes to that user."""
        probe = self.root
        while not os.path.exists(probe) and os.path.dirname(probe) != probe:
            probe = os.path.dirname(probe)
        st = os.stat(probe)
        if os.geteuid() == 0 and st.st_uid != 0:
            self._owner = (st.st_uid, st.st_gid)
        if probe == self.root:
            self.dir_mode = st.st_mode & 0o777 | 0o700
            self.file_mode = self.dir_mode & 0o666

    def own(self, path: str) -> None:
        """Give a file we created the owner and mode of the mail root's files."""
        if self._owner is not None:
            with contextlib.suppress(OSError):
                os.lchown(path, *self._owner)
        if self.file_mode != 0o600:
            with contextlib.suppress(OSError):
                if not os.path.islink(path):
                    os.chmod(path, self.dir_mode if os.path.isdir(path) else self.file_mode)

    def _inside(self, path: str) -> bool:
        path = os.path.abspath(path)
        return any(path == r or path.startswith(r.rstrip("/") + "/") for r in self.layout.roots())

    def makedirs(self, path: str) -> None:
        """Create a directory (and parents) inside our roots only, owned like the root."""
        path = os.path.abspath(path)
        if not self._inside(path):
            raise StorageError(f"Refusing to create {path}: outside the mail location")
        if os.path.isdir(path):
            return
        parent = os.path.dirname(path)
        if parent != path and not os.path.isdir(parent):
            if self._inside(parent):
                self.makedirs(parent)
            else:
                os.makedirs(parent, mode=0o700, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            return
        if self.dir_mode != 0o700:
            os.chmod(path, self.dir_mode)  # explicitly: mkdir's mode is masked by the umask
        self.own(path)

    def _rmtree(self, path: str) -> None:
        path = os.path.abspath(path)
        if path in self.layout.roots() or not self._inside(path):
            raise StorageError(f"Refusing to remove {path}")
        shutil.rmtree(path, ignore_errors=True)

    # -- mailboxes ---------------------------------------------------------------------------
    def _exists(self, name: str) -> bool:
        """Is there a selectable mailbox by this (validated) name?"""
        raise NotImplementedError

    def _children(self, name: str) -> list[str]:
        prefix = name + HIERARCHY_SEP
        return sorted(n for n in self.layout.existing() if n.startswith(prefix))

    def _mailbox_write_lock(self, box: Any) -> contextlib.AbstractContextManager[Any]:
        """The lock that keeps other writers (Dovecot) out of a mailbox while it goes away."""
        return contextlib.nullcontext()

    def _remove_mailbox_files(self, name: str, *, has_children: bool) -> None:
        raise NotImplementedError

    def _forget_mailbox(self, guid: str) -> None:
        """Drop what the storage keeps about a deleted mailbox outside its directory."""

    def delete_mailbox(self, name: str) -> None:
        name = self.layout.validate(name)
        if name == "INBOX":
            raise StorageError("INBOX can't be deleted.", exit_code=EX_DATAERR)
        if not self._exists(name):
            raise NotFoundError(f"Mailbox doesn't exist: {name}")
        with self.open_mailbox(name) as box:
            guid = box.guid
            with self._mailbox_write_lock(box):
                self._remove_mailbox_files(name, has_children=bool(self._children(name)))
        self._forget_mailbox(guid)
        self._log(MailboxLogType.DELETE_MAILBOX, guid)

    # -- Dovecot's mailbox log ------------------------------------------------------------
    def _mailbox_log_path(self) -> str:
        return os.path.join(self.layout.index_root, mailboxlog.FILENAME)

    def _log(self, kind: MailboxLogType, guid: str) -> None:
        path = self._mailbox_log_path()
        mailboxlog.append_log(path, [MailboxLogRecord(kind, guid, mailboxlog.now())])
        self.own(path)

    def mailbox_log(self) -> list[MailboxLogRecord]:
        return mailboxlog.read_log(self._mailbox_log_path())

    # -- subscriptions ---------------------------------------------------------------------
    def _subs_path(self) -> str:
        return os.path.join(self.layout.subscriptions_dir, "subscriptions")

    def subscriptions(self) -> list[str]:
        out: list[str] = []
        sep = self.layout.v1_separator
        for levels in subscriptions.read_subscriptions(self._subs_path(), v1_separator=sep):
            try:
                name = normalize_mailbox_name(HIERARCHY_SEP.join(self.layout.decode_level(x) for x in levels))
            except InvalidNameError as e:
                log.warning("Ignoring subscription %r in %s: %s", levels, self._subs_path(), e.message)
                continue
            if name not in out:
                out.append(name)
        return out

    def set_subscribed(self, name: str, subscribed: bool) -> None:
        name = self.layout.validate(name)
        levels = self.layout.storage_levels(name)
        current = subscriptions.read_subscriptions(self._subs_path(), v1_separator=self.layout.v1_separator)
        has = levels in current
        if subscribed and not has:
            subscriptions.write_subscriptions(self._subs_path(), [*current, levels])
        elif not subscribed and has:
            subscriptions.write_subscriptions(self._subs_path(), [x for x in current if x != levels])
        self.own(self._subs_path())
        kind = MailboxLogType.SUBSCRIBE if subscribed else MailboxLogType.UNSUBSCRIBE
        self._log(kind, mailboxlog.name_hash(name))


__all__ = ["DirectoryLayout", "DirectoryStorage"]
