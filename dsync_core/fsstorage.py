"""Shared plumbing of storages kept in directories on this machine (Maildir, sdbox, mdbox).

What every such backend needs and Dovecot does the same way for all of them: folder names
as modified UTF-7 levels, files owned by the mail root's owner when we run as root,
directories created and removed only inside the mail roots, Dovecot's
``dovecot.mailbox.log`` and its ``subscriptions`` file. A backend subclasses
:class:`DirectoryLayout` (where things live) and :class:`DirectoryStorage`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from typing import Any

from . import mailboxlog, mutf7, subscriptions
from .durable import fsync_dirs, write_file_atomic
from .errors import EX_DATAERR, DsyncError, InvalidNameError, NotFoundError, StorageError
from .model import MailboxLogRecord, MailboxLogType
from .settings import read_text_file
from .storage import HIERARCHY_SEP, Storage, normalize_mailbox_name

log = logging.getLogger("dsync.storage")

#: Dovecot's name for a directory on its way out in a directory-per-mailbox layout.
DIRECTORY_TRASH = "..DOVECOT-TrasH"
#: Our file of fast-sync marks, in the index root (Dovecot ignores it).
SYNC_MARKS_FILE = "dsync.sync-marks"
MAX_MARK_PEERS = 32


class DirectoryLayout:
    """Where a directory-based store keeps things. Subclasses add the mailbox paths."""

    #: The separator a version-1 ``subscriptions`` file uses between levels.
    v1_separator = "/"
    def trash_dir(self, root: str) -> str:
        """Where a mailbox's directory goes on its way out of ``root`` (same file system, so
        one rename moves it): a name that neither Dovecot's lister nor ours takes for a
        mailbox."""
        return os.path.join(root, DIRECTORY_TRASH)

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
        self.fsync = True  # backends set it from their settings (mail_fsync)

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

    def _trash_for(self, path: str) -> str:
        """A fresh trash directory in the root that holds ``path`` (same file system, so
        that moving into it is one atomic rename). A leftover of a killed run goes first."""
        path = os.path.abspath(path)
        root = max((r for r in self.layout.roots() if path.startswith(r.rstrip("/") + "/")), key=len, default=None)
        if root is None:
            raise StorageError(f"Refusing to remove {path}")
        trash = self.layout.trash_dir(root)
        if os.path.lexists(trash):
            shutil.rmtree(trash, ignore_errors=True)
        self.makedirs(os.path.dirname(trash))
        return trash

    def clear_trash(self) -> None:
        """Finish a removal that a killed run left half-done (cheap: one lstat per root)."""
        for root in self.layout.roots():
            trash = self.layout.trash_dir(root)
            if os.path.lexists(trash):
                shutil.rmtree(trash, ignore_errors=True)

    def _remove_entries(self, directory: str, names: Iterable[str]) -> None:
        """Remove the entries ``names`` of ``directory`` as if at once: each is renamed into
        a trash directory (in the given order, so the first one decides when the mailbox
        stops existing), the renames are made durable, then the trash is removed. A run
        killed half-way leaves a complete mailbox or none, never one with half its files
        (which would read as a mailbox whose messages were expunged)."""
        moves = [(os.path.join(directory, n), n) for n in names if os.path.lexists(os.path.join(directory, n))]
        if not moves:
            return
        trash = self._trash_for(directory if os.path.abspath(directory) not in self.layout.roots()
                                else os.path.join(directory, moves[0][1]))
        try:
            os.mkdir(trash, 0o700)
            self.own(trash)
            for src, n in moves:
                os.rename(src, os.path.join(trash, n))
        except OSError as e:
            raise StorageError(f"Cannot remove {directory}: {e.strerror}") from None
        fsync_dirs([directory, os.path.dirname(trash)], enabled=self.fsync)
        shutil.rmtree(trash, ignore_errors=True)

    def _remove_dir(self, path: str) -> None:
        """Remove a directory tree atomically: one rename into the trash, then the rest."""
        path = os.path.abspath(path)
        if path in self.layout.roots() or not self._inside(path):
            raise StorageError(f"Refusing to remove {path}")
        if not os.path.lexists(path):
            return
        trash = self._trash_for(path)
        try:
            os.rename(path, trash)
        except OSError as e:
            raise StorageError(f"Cannot remove {path}: {e.strerror}") from None
        fsync_dirs([os.path.dirname(path), os.path.dirname(trash)], enabled=self.fsync)
        shutil.rmtree(trash, ignore_errors=True)

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

    # -- sync marks (what the last fast sync with a peer saw) --------------------------------
    def _marks_path(self) -> str:
        return os.path.join(self.layout.index_root, SYNC_MARKS_FILE)

    def _read_marks(self) -> dict[str, Any]:
        if not os.path.exists(self._marks_path()):
            return {}
        try:
            data = json.loads(read_text_file(self._marks_path(), "sync marks") or "{}")
        except (ValueError, DsyncError) as e:
            # Only an optimisation: a damaged file means "compare everything" this time.
            log.warning("Ignoring %s: %s", self._marks_path(), getattr(e, "message", e))
            return {}
        peers = data.get("peers") if isinstance(data, dict) else None
        return peers if isinstance(peers, dict) else {}

    def sync_marks(self, peer: str) -> dict[str, tuple[int, ...]] | None:
        entry = self._read_marks().get(peer)
        boxes = entry.get("boxes") if isinstance(entry, dict) else None
        if not isinstance(boxes, dict):
            return {}
        return {g: tuple(v) for g, v in boxes.items()
                if isinstance(v, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in v)}

    def set_sync_marks(self, peer: str, marks: dict[str, tuple[int, ...]]) -> None:
        peers = self._read_marks()
        peers[peer] = {"t": int(time.time()), "boxes": {g: list(v) for g, v in sorted(marks.items())}}
        # Bounded: the peers synced with most recently.
        keep = sorted(peers, key=lambda k: peers[k].get("t", 0) if isinstance(peers[k], dict) else 0)[-MAX_MARK_PEERS:]
        data = json.dumps({"version": 1, "peers": {k: peers[k] for k in keep}}, sort_keys=True).encode()
        write_file_atomic(self._marks_path(), data, mode=self.file_mode, enabled=self.fsync)
        self.own(self._marks_path())

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
