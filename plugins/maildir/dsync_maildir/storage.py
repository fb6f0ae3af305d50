"""MaildirStorage and MaildirMailbox: Dovecot-compatible Maildir with a change log beside it.

Flags live in file names, UIDs in ``dovecot-uidlist``, keyword letters in
``dovecot-keywords``. Modseqs and expunge records come from the core change log, keyed by
mailbox GUID. A mailbox is rescanned only when the stat of ``cur/``, ``new/``,
``dovecot-uidlist`` or ``dovecot-keywords`` differs from the stamp saved with the change
log; otherwise every answer comes from the change log without listing a directory.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import logging
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import attrs

from dsync_core import dovecot_index, mailboxlog
from dsync_core.changelog import ChangeLog, Entry, MailboxChanges
from dsync_core.durable import fsync_dirs, fsync_enabled, sync_files
from dsync_core.errors import (
    EX_DATAERR,
    ConfigError,
    CorruptError,
    DsyncError,
    ExistsError,
    InvalidNameError,
    NotFoundError,
    StorageError,
    UsageError,
)
from dsync_core.fsstorage import DirectoryStorage
from dsync_core.location import Location
from dsync_core.lock import DotLock
from dsync_core.model import (
    ExpungeRecord,
    FlagUpdate,
    MailboxInfo,
    MailboxLogType,
    MailboxStatus,
    MessageRecord,
    SaveRequest,
    UserInfo,
    normalize_flag,
)
from dsync_core.settings import Settings
from dsync_core.storage import HIERARCHY_SEP, Mailbox, parent_names
from dsync_core.streams import CHUNK, BodySizes, any_thread, virtual_size
from dsync_core.uidvalidity import allocate_uidvalidity

from . import filename as fn
from . import keywords as kwmod
from . import uidlist as ulmod
from .dovecot_index_sync import DovecotIndexSync
from .layout import MAILDIR_SUBDIRS, Layout
from .racy import RacyRule
from .watch import Watcher

log = logging.getLogger("dsync.maildir")

LOCK_TIMEOUT = 120.0
#: Inside ``writing()``, the uidlist lock is kept from one write to the next while it has
#: been held for less than this (seconds); Dovecot's own writers wait for it meanwhile.
LINGER_SECONDS = 1.0
CHANGELOG_NAME = "dsync-changelog.sqlite"
#: Threads that write the tmp files of bodies held in memory (streams.CountedBody) while
#: save() writes the streamed ones itself; 0: save() writes every one. Creating and filling
#: a file is kernel work done without the GIL: it overlaps the fetching threads' Python work.
TMP_WRITERS = 2
#: A mailbox this big is watched while we change it (see MaildirMailbox._watching).
WATCH_MIN_MESSAGES = 10000
_INDEX_FILES = ("dovecot.index", "dovecot.index.log", "dovecot.index.log.2", "dovecot.index.cache")
_CONTROL_FILES = (ulmod.FILENAME, kwmod.FILENAME, "maildirfolder")


def _is_guid128(value: str) -> bool:
    if len(value) != 32:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def _new_guid() -> str:
    return secrets.token_hex(16)


_MASK64 = (1 << 64) - 1


def _names_digest(names: Iterable[str]) -> int:
    """An order-free digest of a set of names (the sum of their hashes): what a process
    remembers of a directory listing instead of the names (constant memory), updated by
    adding and subtracting the hashes of names added and removed. Python's string hash is
    keyed per process, so nobody can choose names that collide; the digest never leaves
    the process."""
    return sum(map(hash, names)) & _MASK64


class _MailboxMemory:
    """What this process knows of one mailbox beyond its change log."""

    __slots__ = ("stamp", "names", "summary", "name", "watched", "pending")

    def __init__(self, name: str = "") -> None:
        self.name = name
        # What cur/ and new/ were last verified to hold (their stamp, and a digest of every
        # entry name as "sub/name"), so that our own saves need not rescan after each batch.
        # A stamp taken within the directories' timestamp tick stays in memory (see racy.py).
        self.stamp: str | None = None
        self.names: int | None = None  # _names_digest of that listing
        # What saves need of dovecot-uidlist (see UidlistSummary), kept while the file is
        # unchanged: batches of saves would otherwise read 100k lines each time (a sync
        # quadratic in the mailbox size), and holding the parsed list is 150 bytes a message.
        self.summary: ulmod.UidlistSummary | None = None
        # Whether the storage's watcher watches cur/ and new/ (from before our first change
        # until the storage closes), and (UIDVALIDITY, UIDNEXT) when the stamp after our last
        # change was still in its timestamp tick: the storage's close persists it once the
        # tick is over.
        self.watched = False
        self.pending: tuple[int, int] | None = None


class MaildirStorage(DirectoryStorage):
    scheme = "maildir"
    have_guids = True
    have_save_guids = True
    have_only_guid128 = False
    have_modseqs = True

    def __init__(
        self,
        location: Location,
        settings: Settings | None = None,
        user: UserInfo | None = None,
        *,
        changelog: ChangeLog | None = None,
    ) -> None:
        if not location.path:
            raise ConfigError(f"Mail location {location}: the Maildir path is missing")
        super().__init__(os.path.abspath(location.path))
        self.settings = settings if settings is not None else Settings()
        self.user = user
        opts = location.options
        layout = (opts.get("LAYOUT") or "maildir++").lower()
        if layout not in ("maildir++", "fs"):
            raise ConfigError(f"Mail location {location}: unknown LAYOUT={opts.get('LAYOUT')} (use fs or maildir++)")
        self.layout = Layout(
            self.root,
            fs=layout == "fs",
            utf8="UTF-8" in opts,
            inbox=opts.get("INBOX") or None,
            control=opts.get("CONTROL") or None,
            index=opts.get("INDEX") or None,
        )
        self.fsync = fsync_enabled(self.settings)
        self.racy_rule = RacyRule(self.root, nfs=self.settings.get_bool("mail_nfs_storage"))
        self._watcher: Watcher | None = None
        self._watcher_tried = False
        self._memory: dict[str, _MailboxMemory] = {}
        self._tmp_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._create_root()
        self.clear_trash()
        if changelog is None:
            from dsync_core.plugin.manager import get_plugin_manager

            path = os.path.join(self.layout.index_root, CHANGELOG_NAME)
            changelog = get_plugin_manager().hook.dsync_changelog_open(path=path, settings=self.settings)
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    self.own(path + suffix)
        assert changelog is not None
        self.changelog: ChangeLog = changelog

    # -- filesystem helpers ------------------------------------------------------------
    def _create_root(self) -> None:
        try:
            self._adopt_owner()
            if not os.path.isdir(self.root):
                os.makedirs(self.root, mode=0o700, exist_ok=True)
                self.own(self.root)
            for d in {self.layout.control_root, self.layout.index_root, self.layout.inbox}:
                self.makedirs(d)
            for sub in MAILDIR_SUBDIRS:
                self.makedirs(os.path.join(self.layout.inbox, sub))
        except OSError as e:
            raise StorageError(f"Cannot create Maildir {self.root}: {e.strerror}") from None

    def _exists(self, name: str) -> bool:
        if name == "INBOX":
            return True
        d = self.layout.mail_dir(name)
        if self.layout.fs:
            return os.path.isdir(os.path.join(d, "cur"))
        return os.path.isdir(d)

    # -- mailbox tree ------------------------------------------------------------------
    def list_mailboxes(self) -> list[MailboxInfo]:
        found = self.layout.existing()
        found["INBOX"] = True
        for name in list(found):
            for parent in parent_names(name):
                found.setdefault(parent, False)
        out: list[MailboxInfo] = []
        for name in sorted(found, key=lambda n: (n != "INBOX", n.split(HIERARCHY_SEP))):
            if not found[name]:
                out.append(MailboxInfo(name=name, selectable=False))
                continue
            with self.open_mailbox(name) as box:
                out.append(MailboxInfo(name=name, guid=box.guid, uidvalidity=box.header_uidvalidity))
        return out

    def create_mailbox(self, name: str, *, guid: str | None = None, uidvalidity: int | None = None) -> MailboxInfo:
        name = self.layout.validate(name)
        if guid is not None and not _is_guid128(guid):
            raise UsageError(f"Invalid mailbox GUID {guid!r}: expected 32 hex digits")
        if uidvalidity is not None and not (0 < uidvalidity < 2**32):
            raise UsageError(f"Invalid UIDVALIDITY {uidvalidity}: must be 1..4294967295")
        if self._exists(name):  # INBOX always exists (use update_status to change it)
            raise ExistsError(f"Mailbox already exists: {name}")
        if guid is not None:
            # A change log kept for this GUID belongs to a mailbox that is gone (a run killed
            # between removing its directory and dropping its log, or a delete by Dovecot):
            # the new mailbox has no history, and Dovecot's index must not be built from it.
            self._forget_mailbox(guid)
        d = self.layout.mail_dir(name)
        try:
            self.makedirs(d)
            for sub in MAILDIR_SUBDIRS:
                self.makedirs(os.path.join(d, sub))
            if not self.layout.fs and name != "INBOX":
                marker = os.path.join(d, "maildirfolder")
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, 0o600))
                self.own(marker)
            self.makedirs(self.layout.control_dir(name))
            self.makedirs(self.layout.index_dir(name))
        except OSError as e:
            raise StorageError(f"Cannot create mailbox {name}: {e.strerror}") from None
        box = MaildirMailbox(self, name, create_header=False)
        try:
            box.init_header(guid=guid, uidvalidity=uidvalidity)
            with box.locked():
                ul, _ = ulmod.read(box.uidlist_path)
                if ul is not None:
                    box.tell_dovecot(ul.uidvalidity, ul.effective_next_uid, uidlist=ul)
            return MailboxInfo(name=name, guid=box.guid, uidvalidity=box.header_uidvalidity)
        finally:
            box.close()

    def tmp_writers(self) -> concurrent.futures.ThreadPoolExecutor | None:
        """The threads that write tmp files of in-memory bodies (None: no such threads)."""
        if self._tmp_pool is None and TMP_WRITERS > 0:
            self._tmp_pool = concurrent.futures.ThreadPoolExecutor(TMP_WRITERS, thread_name_prefix="maildir-tmp")
        return self._tmp_pool

    def _mailbox_write_lock(self, box: MaildirMailbox) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return box.locked()

    def _forget_mailbox(self, guid: str) -> None:
        self.changelog.forget_mailbox(guid)

    def _forget_memory(self, name: str) -> None:
        """Drop what this process remembers of a mailbox (and its children) that moved or went."""
        top = self.layout.mail_dir(name)
        for d in [d for d in self._memory if d == top or d.startswith(top + os.sep) or d.startswith(top + ".")]:
            del self._memory[d]

    def _remove_mailbox_files(self, name: str, *, has_children: bool) -> None:
        self._forget_memory(name)
        # The mail directory first: once it (or its cur/) is gone the mailbox is gone, and
        # each step is one rename, so a killed run never leaves half a mailbox behind.
        dirs = dict.fromkeys([self.layout.mail_dir(name), self.layout.control_dir(name), self.layout.index_dir(name)])
        if not self.layout.fs or not has_children:
            # Maildir++ children are sibling directories: the whole directory can go.
            for d in dirs:
                self._remove_dir(d)
            return
        for d in dirs:
            # LAYOUT=fs with children: the directory stays; cur/ goes first (it makes a mailbox).
            self._remove_entries(d, (*MAILDIR_SUBDIRS, *_CONTROL_FILES, *_INDEX_FILES))

    def rename_mailbox(self, old: str, new: str) -> None:
        old = self.layout.validate(old)
        new = self.layout.validate(new)
        self._forget_memory(old)
        if old == "INBOX":
            raise StorageError("Renaming INBOX isn't supported.", exit_code=EX_DATAERR)
        if new == old or new.startswith(old + HIERARCHY_SEP):
            raise InvalidNameError(f"Can't rename mailbox {old} to {new}: can't rename mailbox under itself")
        existing = self.layout.existing()
        children = [n for n in existing if n.startswith(old + HIERARCHY_SEP)]
        if old not in existing and not children:
            raise NotFoundError(f"Mailbox doesn't exist: {old}")
        if new == "INBOX" or (new in existing and (existing[new] or not self.layout.fs)):
            raise ExistsError(f"Mailbox already exists: {new}")
        if new in existing:
            # LAYOUT=fs: only a directory holding children has that name; the mailbox moves into it.
            self._rename_into_directory(old, new)
            self._log(MailboxLogType.RENAME, mailboxlog.name_hash(new))
            return
        if self.layout.fs:
            pairs = [(old, new)]
        else:
            pairs = [(n, new + n[len(old):]) for n in sorted([old, *children]) if n in existing]
        getters = [self.layout.mail_dir]
        if self.layout.control_root != self.root:
            getters.append(self.layout.control_dir)
        if self.layout.index_root != self.root:
            getters.append(self.layout.index_dir)
        try:
            for src, dst in pairs:
                for get in getters:
                    s, d = get(src), get(dst)
                    if not os.path.isdir(s):
                        continue
                    if os.path.exists(d):
                        raise ExistsError(f"Mailbox already exists: {dst}")
                    self.makedirs(os.path.dirname(d))
                    os.rename(s, d)
        except OSError as e:
            raise StorageError(f"Can't rename mailbox {old} to {new}: {e.strerror}") from None
        fsync_dirs({os.path.dirname(get(p)) for get in getters for _, p in pairs}, enabled=self.fsync)
        self._log(MailboxLogType.RENAME, mailboxlog.name_hash(new))

    def _rename_into_directory(self, old: str, new: str) -> None:
        """Rename ``old`` onto ``new``, a directory that only holds children (LAYOUT=fs): the
        entries of ``old`` (its Maildir subdirectories, files and child directories) move into
        it. Nothing moves if any entry would collide."""
        getters = [self.layout.mail_dir]
        if self.layout.control_root != self.root:
            getters.append(self.layout.control_dir)
        if self.layout.index_root != self.root:
            getters.append(self.layout.index_dir)
        moves: list[tuple[str, str, list[str]]] = []
        try:
            for get in getters:
                s, d = get(old), get(new)
                if not os.path.isdir(s):
                    continue
                if not os.path.isdir(d):
                    moves.append((s, d, []))
                    continue
                names = os.listdir(s)
                left = set(os.listdir(d))
                if os.path.dirname(s) == d:
                    left.discard(os.path.basename(s))  # old itself leaves the directory
                clash = sorted(left & set(names))
                if clash:
                    raise ExistsError(f"Mailbox already exists: {new} (it holds {clash[0]})")
                moves.append((s, d, names))
            for s, d, names in moves:
                if not names and not os.path.isdir(d):
                    self.makedirs(os.path.dirname(d))
                    os.rename(s, d)
                    continue
                # Via a hidden name inside the target, so that a child named like old's last
                # level can move up; the layout never lists names starting with ".".
                tmp = os.path.join(d, f".dsync-rename-{secrets.token_hex(8)}")
                os.rename(s, tmp)
                for n in names:
                    os.rename(os.path.join(tmp, n), os.path.join(d, n))
                os.rmdir(tmp)
        except OSError as e:
            raise StorageError(f"Can't rename mailbox {old} to {new}: {e.strerror}") from None
        fsync_dirs({d for _s, d, _n in moves} | {os.path.dirname(s) for s, _d, _n in moves}, enabled=self.fsync)

    # -- mailboxes ---------------------------------------------------------------------
    def open_mailbox(self, name: str) -> MaildirMailbox:
        name = self.layout.validate(name)
        if not self._exists(name):
            raise NotFoundError(f"Mailbox doesn't exist: {name}")
        return MaildirMailbox(self, name)

    def locate_messages(self, guids: Iterable[str]) -> dict[str, tuple[str, int]] | None:
        return self.changelog.locate(guids)

    def watcher(self) -> Watcher | None:
        """The inotify watcher of this storage (started on first use; None where the
        filesystem is not local or there is no inotify)."""
        if not self._watcher_tried and self.racy_rule.fine:
            self._watcher_tried = True
            self._watcher = Watcher.start()
        return self._watcher

    def _persist_own_stamps(self) -> None:
        """Keep the stamps our own changes left in their timestamp tick: once the tick is
        over (one short sleep for all mailboxes), a watch that saw nothing since our last
        change proves cur/ and new/ still hold what the change log says."""
        pending = [m for m in self._memory.values() if m.pending is not None and m.watched]
        if not pending or self._watcher is None:
            return
        mtimes = []
        for m in pending:
            for sub in ("cur", "new"):
                with contextlib.suppress(OSError):
                    mtimes.append(os.stat(os.path.join(self.layout.mail_dir(m.name), sub)).st_mtime_ns)
        self.racy_rule.settle(mtimes)
        for m in pending:
            # A mailbox renamed or deleted meanwhile is not opened (that would create it).
            if not os.path.isdir(os.path.join(self.layout.mail_dir(m.name), "cur")):
                continue
            with contextlib.suppress(DsyncError, OSError):
                MaildirMailbox(self, m.name)._persist_pending()

    def close(self) -> None:
        if self._tmp_pool is not None:
            self._tmp_pool.shutdown()
            self._tmp_pool = None
        try:
            self._persist_own_stamps()
        finally:
            if self._watcher is not None:
                self._watcher.close()
                self._watcher = None
            for m in self._memory.values():
                m.watched = False
        self.changelog.close()
        path = os.path.join(self.layout.index_root, CHANGELOG_NAME)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                self.own(path + suffix)


class _StagedBody(io.RawIOBase):
    """A body whose tmp file a helper thread writes (or wrote) ahead of the save that takes
    it (:meth:`MaildirMailbox.stage`). Closed without that save, it removes the file."""

    def __init__(self, mailbox_dir: str, tmp: str, gen: str, mtime: int, body: BinaryIO,
                 future: concurrent.futures.Future[tuple[int, int]]) -> None:
        self.mailbox_dir = mailbox_dir
        self.tmp = tmp
        self.gen = gen
        self.mtime = mtime
        self.body = body
        self.future = future
        self.taken = False  # a save() took it over, cleanup included

    def readable(self) -> bool:
        return False

    def readinto(self, b: Any) -> int:
        raise UsageError("A staged Maildir body can only be saved to the mailbox that staged it")

    def close(self) -> None:
        if not self.closed and not self.taken:
            self.future.cancel()
            concurrent.futures.wait([self.future])  # no tmp file may appear after the unlink
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
            with contextlib.suppress(OSError):
                self.body.close()
        super().close()


class MaildirMailbox(Mailbox):
    storage: MaildirStorage

    def __init__(self, storage: MaildirStorage, name: str, *, create_header: bool = True) -> None:
        super().__init__(storage, name)
        lay = storage.layout
        self.dir = lay.mail_dir(name)
        self.control = lay.control_dir(name)
        self.uidlist_path = os.path.join(self.control, ulmod.FILENAME)
        self.keywords_path = os.path.join(self.control, kwmod.FILENAME)
        self._lock = DotLock(self.uidlist_path, timeout=LOCK_TIMEOUT, stale_after=120)
        self._lock_depth = 0
        self._lingering = False  # inside writing(): the lock may outlive a write
        self._kept = False  # held between two writes (no locked() block open)
        self._held_since = 0.0
        self._guid = ""
        self.header_uidvalidity = 0
        self.changes: MailboxChanges | None = None
        self._dovecot_state: dovecot_index.IndexState | None = None  # refreshed, not re-read
        # Shared by every object of this mailbox in this process (the engine opens it anew
        # for each step of a sync).
        self._mem = storage._memory.setdefault(self.dir, _MailboxMemory(name))
        self.dovecot = DovecotIndexSync(lay.index_dir(name), name, fsync=storage.fsync, chown=storage.own)
        # Dovecot creates missing cur/new/tmp of an existing mailbox directory.
        for sub in MAILDIR_SUBDIRS:
            p = os.path.join(self.dir, sub)
            if not os.path.isdir(p):
                storage.makedirs(p)
        if not os.path.isdir(self.control):
            storage.makedirs(self.control)
        if create_header:
            header, _ = ulmod.read_header(self.uidlist_path)
            if header is None or not header.guid:
                self.init_header()
            else:
                self._set_guid(header.guid)
                self.header_uidvalidity = header.uidvalidity

    # -- header and lock ---------------------------------------------------------------
    def _set_guid(self, guid: str) -> None:
        self._guid = guid
        self.changes = self.storage.changelog.mailbox(guid)

    @property
    def guid(self) -> str:
        return self._guid

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``dovecot-uidlist.lock`` (reentrant within this object)."""
        if self._lock_depth == 0 and not self._kept:
            self._lock.acquire()
            self.storage.own(self._lock.path)
            self._held_since = time.monotonic()
        self._kept = False
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                if self._lingering and time.monotonic() - self._held_since < LINGER_SECONDS:
                    self._kept = True  # the next write of this run takes it as it is
                else:
                    self._lock.release()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        # Each lock is a file created and removed: on ext4 without a journal the inode
        # allocator then steps over every inode freed in the last minute, for every file
        # created near it. One lock per second of writes instead of one per batch.
        self._lingering = True
        try:
            yield
        finally:
            self._lingering = False
            if self._kept and self._lock_depth == 0:
                self._kept = False
                self._lock.release()

    def init_header(self, *, guid: str | None = None, uidvalidity: int | None = None) -> None:
        """Create the uidlist, or add a missing mailbox GUID to it (as Dovecot does)."""
        with self.locked():
            ul, st = ulmod.read(self.uidlist_path)
            if ul is None:
                ul = ulmod.Uidlist(
                    uidvalidity=uidvalidity
                    or allocate_uidvalidity(self.storage.layout.control_root, chown=self.storage.own),
                    next_uid=1,
                    guid=guid or _new_guid(),
                )
                ulmod.rewrite(self.uidlist_path, ul, None, fsync=self.storage.fsync, chown=self.storage.own)
            elif not ul.guid or guid or uidvalidity:
                ul.guid = guid or ul.guid or _new_guid()
                if uidvalidity:
                    ul.uidvalidity = uidvalidity
                ul.next_uid = ul.effective_next_uid
                ulmod.rewrite(self.uidlist_path, ul, st, fsync=self.storage.fsync, chown=self.storage.own)
            self._set_guid(ul.guid)
            self.header_uidvalidity = ul.uidvalidity

    def _read_uidlist(self) -> tuple[ulmod.Uidlist | None, os.stat_result | None]:
        """``uidlist.read``: the whole list, parsed (a full rescan, a rewrite)."""
        return ulmod.read(self.uidlist_path)

    def _uidlist_summary(self) -> tuple[ulmod.UidlistSummary | None, os.stat_result | None]:
        """The summary of dovecot-uidlist, from memory while the file is unchanged (ours
        follows our own appends)."""
        cached = self._mem.summary
        try:
            st = os.stat(self.uidlist_path)
        except FileNotFoundError:
            self._mem.summary = None
            return None, None
        if cached is not None and cached.key == (st.st_ino, st.st_size, st.st_mtime_ns):
            return cached, cached.stat
        self._mem.summary = None
        summary, st2 = ulmod.read_summary(self.uidlist_path)
        self._mem.summary = summary
        return summary, st2

    # -- change detection --------------------------------------------------------------
    def _disk_stamp(self, listed_at: int | None = None) -> tuple[str, bool]:
        """The stat of cur/, new/, the uidlist and the keywords file, and whether it is
        racy for a listing that started at ``listed_at`` (see :mod:`.racy`)."""
        parts: list[str] = []
        racy = False
        now = time.time_ns()
        rule = self.storage.racy_rule
        for p in (os.path.join(self.dir, "cur"), os.path.join(self.dir, "new"), self.uidlist_path, self.keywords_path):
            try:
                st = os.stat(p)
            except FileNotFoundError:
                parts.append("-")
                continue
            parts.append(f"{st.st_ino}.{st.st_size}.{st.st_mtime_ns}")
            # Only directory mtimes are racy: an entry added in the same timestamp tick as
            # our listing would not change them again. A file rewritten in that tick still
            # changes inode or size (uidlist and keywords are replaced, never edited).
            if p.endswith(("cur", "new")) and rule.racy(st.st_mtime_ns, now, listed_at):
                racy = True
        return " ".join(parts), racy

    def _watching(self) -> Watcher | None:
        """The watcher, watching cur/ and new/ from now if this is our first change (call
        before looking at the mailbox). None where it would not see every writer: off
        Linux, or on a network filesystem."""
        if not self._mem.watched:
            # Closing an inotify instance waits for the kernel (10-20 ms): more than a
            # rescan of a small mailbox costs.
            if self.changes is None or self.changes.meta().messages < WATCH_MIN_MESSAGES:
                return None
        watcher = self.storage.watcher()
        if watcher is None or not watcher.watch(self.dir, {sub: os.path.join(self.dir, sub) for sub in ("cur", "new")}):
            return None
        self._mem.watched = True
        return watcher

    def _persist_pending(self) -> None:
        """See MaildirStorage._persist_own_stamps."""
        mem = self._mem
        watcher = self.storage.watcher()
        if mem.pending is None or not mem.watched or watcher is None or self.changes is None:
            return
        with self.locked():
            listed_at = self._settle(wait=False)
            before, racy = self._disk_stamp(listed_at)
            quiet = watcher.only(self.dir, set(), set())
            after, racy_after = self._disk_stamp(listed_at)
            if quiet and before == after == mem.stamp and not (racy or racy_after):
                self.changes.commit(stamp=self._stamp(after, *mem.pending))
            mem.pending = None

    def _settle(self, *, wait: bool = True) -> int | None:
        """When a listing of cur/ and new/ may start for its stamp to be kept (a few ms of
        sleep at most, when ``wait`` and a directory changed within the last two ticks)."""
        rule = self.storage.racy_rule
        if not rule.fine:
            return None
        mtimes = []
        for sub in ("cur", "new"):
            with contextlib.suppress(FileNotFoundError):
                mtimes.append(os.stat(os.path.join(self.dir, sub)).st_mtime_ns)
        return rule.settle(mtimes, wait=wait)

    def _saved_stamp(self) -> dict[str, object]:
        assert self.changes is not None
        text = self.changes.meta().stamp
        if not text:
            return {}
        try:
            data = json.loads(text)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def _refresh(self) -> tuple[int, int]:
        """(UIDVALIDITY, UIDNEXT), rescanning only when the disk changed since last time."""
        disk, _ = self._disk_stamp()
        saved = self._saved_stamp()
        if saved.get("g") == self._guid and saved.get("v") and (
            saved.get("disk") == disk or (self._mem.stamp is not None and self._mem.stamp == disk)
        ):
            return int(saved["v"]), int(saved["n"])  # type: ignore[call-overload]
        return self._rescan()

    def _rescan(self) -> tuple[int, int]:
        with self.locked():
            listed_at = self._settle()
            disk, racy = self._disk_stamp(listed_at)
            quick = self._rescan_changed(disk, racy, listed_at)
            if quick is not None:
                return quick
            ul, ul_st = self._read_uidlist()
            if ul is None or not ul.guid:
                self.init_header()
                ul, ul_st = self._read_uidlist()
                assert ul is not None
            if ul.guid != self._guid:
                self._set_guid(ul.guid)
            assert self.changes is not None
            saved = self._saved_stamp()
            if saved.get("v") and saved.get("v") != ul.uidvalidity:
                self.changes.reset()
            self.header_uidvalidity = ul.uidvalidity
            kw, _ = kwmod.read(self.keywords_path)

            files: dict[str, tuple[str, fn.MaildirName]] = {}
            names: set[str] = set()
            for sub in ("new", "cur"):
                try:
                    it = os.scandir(os.path.join(self.dir, sub))
                except FileNotFoundError:
                    continue
                with it:
                    for e in it:
                        names.add(f"{sub}/{e.name}")
                        parsed = fn.parse_name(e.name)
                        if parsed is None:
                            continue
                        if parsed.base in files:
                            log.warning(
                                "Duplicate Maildir base name %r in %s: ignoring %s/%s",
                                parsed.base, self.dir, sub, e.name,
                            )
                            continue
                        files[parsed.base] = (sub, parsed)

            by_base = ul.by_base()
            unknown = sorted((b for b in files if b not in by_base), key=fn.new_file_sort_key)
            nxt = ul.effective_next_uid
            new_records = []
            for b in unknown:
                new_records.append(ulmod.UidlistRecord(nxt, b))
                nxt += 1
            own = self.storage.own
            if ul.needs_rewrite:
                ul.records.extend(new_records)
                ul.next_uid = ul.effective_next_uid
                ulmod.rewrite(self.uidlist_path, ul, ul_st, fsync=self.storage.fsync, chown=own)
            elif new_records:
                ulmod.append(self.uidlist_path, ul, new_records, fsync=self.storage.fsync)

            old = {e.uid: e for e in self.changes.entries()}
            upserts: list[Entry] = []
            present: set[int] = set()
            for rec in ul.records:
                f = files.get(rec.base)
                if f is None:
                    continue
                sub, mn = f
                extra = f"{sub}/{mn.name}"
                letters = mn.letters
                flags = fn.flags_from_letters(letters)
                kws = kw.names_for(fn.keyword_indexes(letters))
                guid = rec.guid or rec.base
                prev = old.get(rec.uid)
                present.add(rec.uid)
                if prev is not None and (prev.extra, prev.guid, prev.flags, prev.keywords) == (extra, guid, flags, kws):
                    continue
                if prev is not None and prev.guid == guid:
                    internaldate, size, vsize = prev.internaldate, prev.size, prev.vsize
                else:
                    try:
                        st = os.stat(os.path.join(self.dir, sub, mn.name))
                    except FileNotFoundError:
                        racy = True  # renamed or removed while we looked: look again next time
                        if prev is None:
                            present.discard(rec.uid)
                        continue
                    internaldate = int(st.st_mtime)
                    size = mn.size if mn.size is not None else st.st_size
                    vsize = mn.vsize
                upserts.append(Entry(rec.uid, guid, flags, kws, 0, internaldate, size, vsize, extra))
            expunged = [uid for uid in old if uid not in present]
            uidnext = ul.effective_next_uid
            dl = self._dovecot_log_mark()
            upserts, learnt = self._dovecot_history(ul.uidvalidity, uidnext, upserts, present | set(old))
            disk_now, racy_now = self._disk_stamp(listed_at)
            # cur/ and new/ as seen before listing; the uidlist/keywords as we left them.
            final = " ".join(disk.split(" ")[:2] + disk_now.split(" ")[2:])
            stamp = json.dumps({"disk": "" if (racy or racy_now) else final, "v": ul.uidvalidity,
                                "n": uidnext, "g": ul.guid, "ul": self._uidlist_mark(), "dl": dl})
            # Keep HIGHESTMODSEQ at least where Dovecot's own index has it, so that both
            # tools report the same value for a mailbox Dovecot has used (and ours stays above).
            # An empty mailbox Dovecot never saw still has HIGHESTMODSEQ 1 there (a new log's start).
            dovecot_modseq = dovecot_index.highest_modseq(self.storage.layout.index_dir(self.name)) or 1
            self.changes.commit(upserts=upserts, expunged=expunged, stamp=stamp, min_modseq=dovecot_modseq,
                                known_expunges=learnt)
            # In memory even in the racy window: an entry added in the same tick after our
            # listing is missed by this process only (the persisted stamp is then empty).
            unchanged = disk_now.split(" ")[:2] == disk.split(" ")[:2]
            self._mem.stamp, self._mem.names = (disk_now, _names_digest(names)) if unchanged else (None, None)
            return ul.uidvalidity, uidnext

    def _uidlist_mark(self) -> list[int] | None:
        """(inode, size) of dovecot-uidlist: every record up to there is in the change log
        (or its file was gone), so the next rescan reads only what was appended since."""
        try:
            st = os.stat(self.uidlist_path)
        except FileNotFoundError:
            return None
        return [st.st_ino, st.st_size]

    def _dovecot_log_mark(self) -> list[int] | None:
        """(inode, size) of Dovecot's transaction log as a rescan read it: while it stays the
        same, Dovecot recorded nothing that a rescan would take from it."""
        try:
            st = os.stat(self.dovecot.log_path)
        except FileNotFoundError:
            return None
        return [st.st_ino, st.st_size]

    def _rescan_changed(self, disk: str, racy: bool, listed_at: int | None = None) -> tuple[int, int] | None:
        """Rescan by difference: compare the listing of cur/ and new/ with the file names the
        change log holds, and read only what was appended to dovecot-uidlist since the last
        scan, so that the cost follows what changed (plus one listing), not the mailbox size.

        None when that is not possible (no record of the last scan, the uidlist rewritten,
        a file the log does not know that the uidlist already lists, a duplicate base
        name): the caller rescans fully. Call with the uidlist lock held."""
        assert self.changes is not None
        saved = self._saved_stamp()
        mark = saved.get("ul")
        if saved.get("g") != self._guid or not saved.get("v") or not (isinstance(mark, list) and len(mark) == 2):
            return None
        uidvalidity, uidnext = int(saved["v"]), int(saved["n"])  # type: ignore[call-overload]
        ul_ino, ul_size = int(mark[0]), int(mark[1])
        try:
            with open(self.uidlist_path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != ul_ino or st.st_size < ul_size:
                    return None  # rewritten (a new UIDVALIDITY, compaction, ...): read it whole
                f.seek(ul_size)
                grown = f.read(st.st_size - ul_size)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"Cannot read {self.uidlist_path}: {e.strerror}") from None
        grown = grown[: grown.rfind(b"\n") + 1]
        tail = ulmod.parse_tail(grown, 3, 0, self.uidlist_path) if grown else []
        if tail is None:
            return None
        if tail:
            uidnext = max(uidnext, tail[-1].uid + 1)
        names: set[str] = set()
        for sub in ("new", "cur"):
            with contextlib.suppress(FileNotFoundError):
                names.update(map(f"{sub}/".__add__, os.listdir(os.path.join(self.dir, sub))))
        # The digest only serves checking our own changes by a listing; where the watcher
        # checks them (a local filesystem) it is not needed.
        digest = None if self.storage.racy_rule.fine else _names_digest(names)
        # The change log's names against the listing, in chunks compared in C (a loop over
        # 100k rows in Python was most of a one-change sync at that size): what is left of
        # the listing was added.
        gone = self.changes.compare_extras(names)
        added = sorted(names)
        del names
        upserts: list[Entry] = []
        expunged: list[int] = []
        new_uids: set[int] = set()
        if gone or added:
            gone_by_base: dict[str, int] = {}
            for x in gone:
                mn = fn.parse_name(x.partition("/")[2])
                gone_by_base[mn.base if mn is not None else x] = gone[x]
            prev = {e.uid: e for e in self.changes.entries_by_uid(gone_by_base.values())}
            in_tail = {r.base: r for r in tail}
            kw, _ = kwmod.read(self.keywords_path)
            fresh: list[tuple[str, fn.MaildirName]] = []  # files without a UID yet
            bases: set[str] = set()
            for x in added:
                sub, _, name = x.partition("/")
                mn = fn.parse_name(name)
                if mn is None:
                    continue
                if mn.base in bases:
                    return None  # the same message twice: the full rescan warns and picks one
                bases.add(mn.base)
                letters = mn.letters
                flags, kws = fn.flags_from_letters(letters), kw.names_for(fn.keyword_indexes(letters))
                uid = gone_by_base.pop(mn.base, None)
                if uid is not None:  # renamed: new flags (or moved from new/ to cur/)
                    old = prev.get(uid)
                    if old is None:
                        return None
                    upserts.append(Entry(uid, old.guid, flags, kws, 0, old.internaldate, old.size, old.vsize, x))
                    continue
                rec = in_tail.get(mn.base)
                if rec is None:
                    fresh.append((sub, mn))
                    continue
                e = self._new_entry(rec.uid, rec.guid or rec.base, sub, mn, flags, kws)
                if e is None:
                    racy = True
                    continue
                upserts.append(e)
                new_uids.add(rec.uid)
            if fresh:
                if self._uidlist_lists(ul_size, [mn.base for _, mn in fresh]):
                    return None
                fresh.sort(key=lambda f: fn.new_file_sort_key(f[1].base))
                records = []
                for sub, mn in fresh:
                    records.append(ulmod.UidlistRecord(uidnext, mn.base))
                    letters = mn.letters
                    e = self._new_entry(uidnext, mn.base, sub, mn, fn.flags_from_letters(letters),
                                        kw.names_for(fn.keyword_indexes(letters)))
                    if e is None:
                        racy = True
                    else:
                        upserts.append(e)
                        new_uids.add(uidnext)
                    uidnext += 1
                stub = ulmod.Uidlist(uidvalidity=uidvalidity, next_uid=uidnext,
                                     records=[ulmod.UidlistRecord(records[0].uid - 1, "")])
                ulmod.append(self.uidlist_path, stub, records, fsync=self.storage.fsync)
            expunged = list(gone_by_base.values())
        dl = saved.get("dl")
        learnt: list[ExpungeRecord] = []
        if (upserts or expunged) and dl != self._dovecot_log_mark():
            dl = self._dovecot_log_mark()
            upserts, learnt = self._dovecot_history(uidvalidity, uidnext, upserts,
                                                    self.changes.uids() | set(gone.values()) | new_uids)
        disk_now, racy_now = self._disk_stamp(listed_at)
        final = " ".join(disk.split(" ")[:2] + disk_now.split(" ")[2:])
        stamp = json.dumps({"disk": "" if (racy or racy_now) else final, "v": uidvalidity, "n": uidnext,
                            "g": self._guid, "ul": self._uidlist_mark(), "dl": dl})
        min_modseq = 0
        if upserts or expunged or learnt:
            min_modseq = dovecot_index.highest_modseq(self.storage.layout.index_dir(self.name)) or 1
        self.changes.commit(upserts=upserts, expunged=expunged, stamp=stamp, min_modseq=min_modseq,
                            known_expunges=learnt)
        unchanged = disk_now.split(" ")[:2] == disk.split(" ")[:2]
        self._mem.stamp, self._mem.names = (disk_now, digest) if unchanged else (None, None)
        self.header_uidvalidity = uidvalidity
        return uidvalidity, uidnext

    def _new_entry(self, uid: int, guid: str, sub: str, mn: fn.MaildirName, flags: frozenset[str],
                   kws: frozenset[str]) -> Entry | None:
        """An entry for a file first seen now (None: it vanished while we looked)."""
        try:
            st = os.stat(os.path.join(self.dir, sub, mn.name))
        except FileNotFoundError:
            return None
        size = mn.size if mn.size is not None else st.st_size
        return Entry(uid, guid, flags, kws, 0, int(st.st_mtime), size, mn.vsize, f"{sub}/{mn.name}")

    def _uidlist_lists(self, upto: int, bases: list[str]) -> bool:
        """Whether dovecot-uidlist's first ``upto`` bytes hold a record of one of ``bases``
        (a byte search: a few files need not cost a parse of the whole list)."""
        if len(bases) > 64:
            return True  # many: a full rescan is as cheap
        with open(self.uidlist_path, "rb") as f:
            head = f.read(upto)
        return any(ulmod.names(head, base) for base in bases)

    def _dovecot_history(
        self, uidvalidity: int, uidnext: int, upserts: list[Entry], known: set[int]
    ) -> tuple[list[Entry], list[ExpungeRecord]]:
        """What Dovecot's own index knows of the changes a rescan found.

        A changed message whose flags and keywords in Dovecot's index are what the disk
        has takes Dovecot's per-message modseq (the change log raises it above every modseq
        it handed out before), so "changed later" compares the way Dovecot would instead
        of one modseq for the whole rescan. Expunges Dovecot's log remembers of UIDs our log
        never saw are returned as expunge records (GUID in its 128-bit hex form, empty when
        Dovecot did not record it, as for Maildir), so a peer
        can prove them even before our first look at the mailbox.
        """
        index_dir = self.storage.layout.index_dir(self.name)
        if not os.path.exists(os.path.join(index_dir, dovecot_index.INDEX_PREFIX + dovecot_index.LOG_SUFFIX)):
            return upserts, []
        try:
            state = self._dovecot_state.refresh() if self._dovecot_state is not None else None
            if state is None:
                state = dovecot_index.IndexState.load(index_dir)
        except (DsyncError, OSError) as e:
            log.debug("Mailbox %s: Dovecot's index not read (%s)", self.name, e)
            self._dovecot_state = None
            return upserts, []
        self._dovecot_state = state
        if not state.exists or state.uid_validity != uidvalidity:
            return upserts, []
        out: list[Entry] = []
        for e in upserts:
            m = state.messages.get(e.uid)
            if (m is not None and m.modseq > 0 and dovecot_index.bits_to_flags(m.flags) == e.flags
                    and frozenset(m.keywords) == e.keywords):
                e = attrs.evolve(e, modseq=m.modseq)
            out.append(e)
        learnt = [
            ExpungeRecord(x.uid, x.guid.hex() if any(x.guid) else "", x.modseq)  # zeros: GUID unknown
            for x in state.expunges
            if x.uid not in known and x.uid < uidnext
        ]
        return out, learnt

    def _update_stamp_values(self, uidvalidity: int, uidnext: int) -> None:
        """After our own uidlist change: keep the cached UIDNEXT right, force a rescan."""
        assert self.changes is not None
        self._mem.stamp = self._mem.names = None
        self.changes.commit(stamp=self._stamp("", uidvalidity, uidnext))

    def _stamp(self, disk: str, uidvalidity: int, uidnext: int) -> str:
        """A stamp after our own change: what the last scan knew of the uidlist and of
        Dovecot's log stays true (our change is in the change log already), unless the
        uidlist was replaced (then the mark no longer matches and a full rescan follows)."""
        saved = self._saved_stamp()
        keep = {k: saved[k] for k in ("ul", "dl") if k in saved} if saved.get("g") == self._guid else {}
        return json.dumps({"disk": disk, "v": uidvalidity, "n": uidnext, "g": self._guid, **keep})

    def _after_own_save(self, uidvalidity: int, uidnext: int, added: set[str], removed: frozenset[str] = frozenset(),
                        watch: Watcher | None = None) -> None:
        """After our own save (or rename, or unlink): if cur/ and new/ now hold exactly what
        we knew plus what we added minus what we removed (nobody else wrote meanwhile), the
        change log is complete and no rescan is needed; otherwise (or without knowledge)
        force one."""
        known = self._mem.names
        assert self.changes is not None
        listed_at = self._settle(wait=False)
        before, racy = self._disk_stamp(listed_at)
        self._mem.pending = None
        if watch is not None:
            # The watch saw everything since before our change: if that is only our own
            # entries, cur/ and new/ still hold what the change log says, without a listing.
            ours = watch.only(self.dir, added, removed)
            after, racy_after = self._disk_stamp(listed_at)
            if ours and before == after:
                self._mem.stamp = after
                if known is not None:
                    self._mem.names = (known + _names_digest(added) - _names_digest(removed)) & _MASK64
                disk = "" if (racy or racy_after) else after
                if not disk:
                    self._mem.pending = (uidvalidity, uidnext)  # the storage's close may keep it
                self.changes.commit(stamp=self._stamp(disk, uidvalidity, uidnext))
                return
        if known is None:
            self._update_stamp_values(uidvalidity, uidnext)
            return
        digest = 0
        for sub in ("new", "cur"):
            with contextlib.suppress(FileNotFoundError):
                prefix = sub + "/"
                digest += _names_digest(prefix + n for n in os.listdir(os.path.join(self.dir, sub)))
        after, racy_after = self._disk_stamp(listed_at)
        expected = known + _names_digest(added) - _names_digest(removed)
        if before != after or (digest & _MASK64) != (expected & _MASK64):
            self._update_stamp_values(uidvalidity, uidnext)
            return
        self._mem.stamp, self._mem.names = after, digest & _MASK64
        # Persisted only when outside the racy window (see _disk_stamp).
        disk = "" if (racy or racy_after) else after
        self.changes.commit(stamp=self._stamp(disk, uidvalidity, uidnext))

    def tell_dovecot(
        self,
        uidvalidity: int,
        next_uid: int,
        *,
        at_least: int = 0,
        present: dict[int, tuple[frozenset[str], frozenset[str]]] | None = None,
        expunged: list[tuple[int, str]] | None = None,
        uidlist: ulmod.Uidlist | ulmod.UidlistSummary | None = None,
    ) -> int:
        """Describe our change in Dovecot's index (creating one if the mailbox has none);
        return Dovecot's HIGHESTMODSEQ after it, 0 if its index was left alone.
        Call with the uidlist lock held, after the change is on disk; ``uidlist`` (as read
        under that lock) is needed to announce new messages or a higher next UID."""
        assert self.changes is not None
        changes = self.changes
        if not os.path.isdir(self.dovecot.dir):
            self.storage.makedirs(self.dovecot.dir)
        present = present or {}
        gone = expunged or []

        def everything() -> dict[int, tuple[frozenset[str], frozenset[str]]]:
            out = {e.uid: (e.flags, e.keywords) for e in changes.entries()}
            out.update(present)
            for uid, _guid in gone:
                out.pop(uid, None)
            return out

        return self.dovecot.record(
            uidvalidity=uidvalidity, next_uid=next_uid, at_least=at_least, present=present, expunged=gone,
            everything=everything, uidlist_uids=_uids_of(uidlist),
            keyword_order=self.keyword_order(),
        )

    # -- reading -----------------------------------------------------------------------
    def status(self) -> MailboxStatus:
        uidvalidity, uidnext = self._refresh()
        assert self.changes is not None
        meta = self.changes.meta()
        return MailboxStatus(
            guid=self._guid,
            uidvalidity=uidvalidity,
            uidnext=uidnext,
            highestmodseq=meta.highestmodseq,
            messages=meta.messages,
            unseen=meta.unseen,
        )

    def records(self, since_modseq: int = 0) -> Iterator[MessageRecord]:
        self._refresh()
        assert self.changes is not None
        return (e.record() for e in self.changes.entries(since_modseq))

    def records_by_uid(self, uids: Iterable[int]) -> Iterator[MessageRecord]:
        self._refresh()
        assert self.changes is not None
        return (e.record() for e in self.changes.entries_by_uid(uids))

    def expunges(self, since_modseq: int = 0) -> list[ExpungeRecord]:
        self._refresh()
        assert self.changes is not None
        return self.changes.expunges(since_modseq)

    def keyword_order(self) -> list[str]:
        """``dovecot-keywords`` order: the order in which our log and Dovecot's own sync
        introduce keywords to Dovecot's index, which doveadm prints flags in."""
        kw, _ = kwmod.read(self.keywords_path)
        return [n for n in kw.names if n is not None]

    def _entry(self, uid: int) -> Entry | None:
        assert self.changes is not None
        for e in self.changes.entries_by_uid([uid]):
            return e
        return None

    def open_bodies(self, uids: list[int]) -> Iterator[tuple[int, BinaryIO | None]]:
        # One refresh and one query for the whole batch, not one per message.
        self._refresh()
        assert self.changes is not None
        where = {e.uid: e.extra for e in self.changes.entries_by_uid(uids)}
        for uid in uids:
            path = where.get(uid)
            body: BinaryIO | None = None
            if path is not None:
                try:
                    body = open(os.path.join(self.dir, path), "rb")
                except FileNotFoundError:
                    pass  # renamed (flags) or expunged meanwhile: look again
                except OSError as err:
                    raise StorageError(f"Cannot read {os.path.join(self.dir, path)}: {err.strerror}") from None
            if body is None:
                try:
                    body = self.open_body(uid)
                except NotFoundError:
                    body = None
            yield uid, body

    def open_body(self, uid: int) -> BinaryIO:
        self._refresh()
        for attempt in range(2):
            e = self._entry(uid)
            if e is not None:
                try:
                    return open(os.path.join(self.dir, e.extra), "rb")
                except FileNotFoundError:
                    pass
                except OSError as err:
                    raise StorageError(f"Cannot read {os.path.join(self.dir, e.extra)}: {err.strerror}") from None
            if attempt == 0:
                self._rescan()
        raise NotFoundError(f"Message UID {uid} doesn't exist in mailbox {self.name}")

    # -- writing -----------------------------------------------------------------------
    def _keyword_indexes(self, kw: kwmod.Keywords, keywords: frozenset[str]) -> list[int]:
        idx = kw.assign(keywords)
        return sorted({idx[k] for k in keywords})

    def stage(self, requests: list[SaveRequest]) -> list[SaveRequest]:
        """Bodies any thread may read (``streams.any_thread``: held in memory, or streams
        that say so) get their tmp files written on the helper threads now, while the
        engine saves the batch before (tmp files need no lock)."""
        pool = self.storage.tmp_writers()
        if pool is None:
            return requests
        out = []
        for r in requests:
            if not any_thread(r.body):
                out.append(r)  # tied to the caller's stream: save() reads it, in order
                continue
            gen = fn.generate_base()
            tmp = os.path.join(self.dir, "tmp", gen)
            mtime = r.internaldate if r.internaldate is not None else int(time.time())
            fut = pool.submit(self._write_tmp, tmp, r.body, mtime)
            out.append(attrs.evolve(r, body=_StagedBody(self.dir, tmp, gen, mtime, r.body, fut)))
        return out

    def save(self, requests: Iterable[SaveRequest]) -> list[MessageRecord]:
        reqs = list(requests)
        if not reqs:
            return []
        st = self.storage
        own = st.own
        with self.locked():
            watch = self._watching()
            self._refresh()
            ul, _ = self._uidlist_summary()
            assert ul is not None and self.changes is not None
            kw, kw_st = kwmod.read(self.keywords_path)
            nxt = ul.effective_next_uid
            wanted = [r.uid for r in reqs if r.uid is not None]
            if len(set(wanted)) != len(wanted):
                raise ExistsError(f"Cannot save to {self.name}: the same UID is wanted twice in one batch")
            for u in wanted:
                if u < nxt:
                    raise ExistsError(
                        f"Cannot save UID {u} in mailbox {self.name}: UIDs below the next UID {nxt} "
                        "cannot be added to a Maildir"
                    )
            # Check every keyword fits before writing anything.
            kw.assign(frozenset().union(*(r.keywords for r in reqs)))
            taken = set(wanted)
            uids: list[int] = []
            cand = nxt
            for r in reqs:
                if r.uid is not None:
                    uids.append(r.uid)
                    continue
                while cand in taken:
                    cand += 1
                uids.append(cand)
                taken.add(cand)
            batch_bases: set[str] = set()  # the names this batch gives out
            # Incoming GUIDs fit to be file names that the uidlist names already: those
            # become a G field of a new name (one question for the whole batch).
            taken = ul.taken([r.guid for r in reqs if r.guid and fn.valid_base(r.guid)])
            tmp_dir = os.path.join(self.dir, "tmp")
            plans: list[dict[str, object]] = []
            pending: list[concurrent.futures.Future[tuple[int, int]] | tuple[int, int]] = []
            try:
                pool = st.tmp_writers()
                for r in reqs:
                    if isinstance(r.body, _StagedBody):
                        if r.body.mailbox_dir != self.dir or r.body.taken or r.body.closed:
                            raise UsageError(f"A staged body can only be saved once, to the mailbox that staged it ({self.name})")
                        r.body.taken = True  # its tmp file is ours to remove from here on
                        plans.append({"tmp": r.body.tmp, "gen": r.body.gen, "mtime": r.body.mtime})
                        pending.append(r.body.future)
                        continue
                    gen = fn.generate_base()
                    tmp = os.path.join(tmp_dir, gen)
                    mtime = r.internaldate if r.internaldate is not None else int(time.time())
                    plans.append({"tmp": tmp, "gen": gen, "mtime": mtime})
                    # A body held in memory (or a stream that says so) may be read by any
                    # thread; other streamed ones are read here, in the order given.
                    if pool is not None and any_thread(r.body):
                        pending.append(pool.submit(self._write_tmp, tmp, r.body, mtime))
                    else:
                        pending.append(self._write_tmp(tmp, r.body, mtime))
                for r, uid, p, w in zip(reqs, uids, plans, pending):
                    size, vsize = w if isinstance(w, tuple) else w.result()
                    gen, mtime = str(p["gen"]), int(p["mtime"])  # type: ignore[call-overload]
                    guid_field: str | None = None
                    base = f"{gen},S={size},W={vsize}"
                    if r.guid:
                        if (
                            fn.valid_base(r.guid)
                            and fn.base_field(r.guid, "S") == size
                            and fn.base_field(r.guid, "W") == vsize
                            and r.guid not in batch_bases
                            and r.guid not in taken
                        ):
                            base = r.guid
                        elif any(c.isspace() for c in r.guid) or any(ord(c) < 0x20 for c in r.guid):
                            log.warning("Cannot keep message GUID %r in %s: it contains whitespace", r.guid, self.name)
                        else:
                            guid_field = r.guid
                    batch_bases.add(base)
                    flags = frozenset(normalize_flag(f) for f in r.flags)
                    keywords = frozenset(kw.spelling(k) for k in r.keywords)
                    letters = fn.letters_for(flags, self._keyword_indexes(kw, keywords))
                    p.update(
                        uid=uid, base=base, generated=f"{gen},S={size},W={vsize}", gfield=guid_field,
                        letters=letters, size=size, vsize=vsize,
                        mtime=mtime, flags=frozenset(fn.flags_from_letters(letters)), keywords=keywords,
                    )
                sync_files([str(p["tmp"]) for p in plans], enabled=st.fsync)
                if kw.changed:
                    kwmod.write(self.keywords_path, kw, kw_st, fsync=st.fsync, chown=own)
                for p in plans:
                    self._choose_name(p, batch_bases)
                # The uidlist records (UID, and the GUID in a G field) are durable before any
                # file appears: a crash in between leaves records without files, which Dovecot
                # and we ignore, never a file whose GUID was forgotten (a duplicate on re-sync).
                new_records = []
                for p in sorted(plans, key=lambda p: int(p["uid"])):  # type: ignore[call-overload]
                    fields = {"G": str(p["gfield"])} if p["gfield"] else ulmod.NO_FIELDS
                    new_records.append(ulmod.UidlistRecord(int(p["uid"]), str(p["base"]), fields))  # type: ignore[call-overload]
                ulmod.append(self.uidlist_path, ul, new_records, fsync=st.fsync)
                with contextlib.suppress(OSError):
                    ul.described(os.stat(self.uidlist_path))  # we hold its lock: only our append changed it
                for p in plans:
                    self._link_into_place(p)
            except BaseException:
                for w in pending:  # no tmp file may appear after the cleanup below
                    if not isinstance(w, tuple):
                        w.cancel()
                concurrent.futures.wait([w for w in pending if not isinstance(w, tuple)])
                for p in plans:
                    with contextlib.suppress(OSError):
                        os.unlink(str(p["tmp"]))
                raise
            fsync_dirs([os.path.join(self.dir, "new"), os.path.join(self.dir, "cur")], enabled=st.fsync)
            dovecot_modseq = self.tell_dovecot(
                ul.uidvalidity, ul.effective_next_uid, at_least=self.changes.meta().highestmodseq + 1,
                present={int(p["uid"]): (p["flags"], p["keywords"]) for p in plans},  # type: ignore[call-overload,misc]
                uidlist=ul,
            )
            entries = [
                Entry(
                    uid=int(p["uid"]),  # type: ignore[call-overload]
                    guid=str(p["gfield"] or p["base"]),
                    flags=p["flags"],  # type: ignore[arg-type]
                    keywords=p["keywords"],  # type: ignore[arg-type]
                    modseq=dovecot_modseq,
                    internaldate=int(p["mtime"]),  # type: ignore[call-overload]
                    size=int(p["size"]),  # type: ignore[call-overload]
                    vsize=int(p["vsize"]),  # type: ignore[call-overload]
                    extra=str(p["extra"]),
                )
                for p in plans
            ]
            modseq = self.changes.commit(upserts=entries, min_modseq=dovecot_modseq)
            self._after_own_save(ul.uidvalidity, ul.effective_next_uid, {str(p["extra"]) for p in plans},
                                 watch=watch)
            return [attrs_evolve_modseq(e.record(), modseq) for e in entries]

    def _write_tmp(self, path: str, body: BinaryIO, mtime: int) -> tuple[int, int]:
        """Stream a body into ``tmp/`` and give it ``mtime`` (Dovecot's received date);
        return (size, vsize with bare LF counted as CRLF)."""
        sizes = BodySizes(body)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise StorageError(f"Cannot create {path}: {e.strerror}") from None
        try:
            self.storage.own(path)
            while True:
                chunk = body.read(CHUNK)
                if not chunk:
                    break
                if isinstance(chunk, str):
                    raise UsageError("Message bodies must be binary streams")
                sizes.feed(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            os.utime(fd, (time.time(), mtime))  # by descriptor: no second path lookup
        except OSError as e:
            raise StorageError(f"Cannot write {path}: {e.strerror}") from None
        finally:
            os.close(fd)
        counted = sizes.result()
        if counted is not None:
            return counted
        with open(path, "rb") as f:  # the stream was not read from its start: count the file
            return virtual_size(f)

    def _choose_name(self, p: dict[str, object], batch_bases: set[str]) -> None:
        """Settle the final base name before the uidlist names it.

        A name we generated is unique (seconds, microseconds, our PID and the host, never
        given twice by this process), as Dovecot trusts its own. A name adopted from the
        other side (its GUID) was checked against the uidlist, which names every file on
        disk; this guards against the same name appearing since. A replacement goes into
        ``batch_bases``."""
        base = str(p["base"])
        if base == p["generated"]:
            return
        if any(os.path.lexists(os.path.join(self.dir, d, base)) for d in ("new", "cur")):
            if not p["gfield"]:
                p["gfield"] = base
            p["base"] = f"{fn.generate_base()},S={p['size']},W={p['vsize']}"
            batch_bases.add(str(p["base"]))

    def _link_into_place(self, p: dict[str, object]) -> None:
        letters = str(p["letters"])
        sub = "cur" if letters else "new"
        base = str(p["base"])
        name = f"{base}:2,{letters}" if letters else base
        dest = os.path.join(self.dir, sub, name)
        tmp = str(p["tmp"])
        try:
            if base == p["generated"]:
                # Our own unique name: one rename, as Dovecot saves (a link and an unlink
                # are two directory updates and add no safety for a name nobody else has).
                os.rename(tmp, dest)
            else:
                os.link(tmp, dest)  # an adopted name: never replace a file that has it
                os.unlink(tmp)
        except FileExistsError:
            raise StorageError(f"Cannot save {dest}: a file of that name appeared meanwhile; run again") from None
        except OSError as e:
            raise StorageError(f"Cannot save {dest}: {e.strerror}") from None
        p["extra"] = f"{sub}/{name}"

    def update_flags(self, updates: Iterable[FlagUpdate]) -> list[MessageRecord]:
        ups = list(updates)
        if not ups:
            return []
        st = self.storage
        with self.locked():
            watch = self._watching()
            self._refresh()
            assert self.changes is not None
            current = {e.uid: e for e in self.changes.entries_by_uid(u.uid for u in ups)}
            kw, kw_st = kwmod.read(self.keywords_path)
            targets: dict[int, tuple[frozenset[str], frozenset[str]]] = {}
            for u in ups:
                e = current.get(u.uid)
                if e is None:
                    continue
                flags, kws = targets.get(u.uid, (e.flags, e.keywords))
                add_f = frozenset(normalize_flag(f) for f in u.add_flags)
                rem_f = frozenset(normalize_flag(f) for f in u.remove_flags)
                flags = frozenset(f for f in (flags - rem_f) | add_f if f in fn.FLAG_TO_LETTER)
                low_rem = {k.lower() for k in u.remove_keywords}
                kws = frozenset(k for k in kws if k.lower() not in low_rem) | frozenset(
                    kw.spelling(k) for k in u.add_keywords
                )
                targets[u.uid] = (flags, kws)
            kw.assign(frozenset().union(*(k for _, k in targets.values())) if targets else frozenset())
            if kw.changed:
                kwmod.write(self.keywords_path, kw, kw_st, fsync=st.fsync, chown=st.own)
            upserts: list[Entry] = []
            rescanned = False
            for uid, (flags, kws) in targets.items():
                e = current[uid]
                letters = fn.letters_for(flags, self._keyword_indexes(kw, kws))
                for _ in range(2):
                    sub, _, name = e.extra.partition("/")
                    mn = fn.parse_name(name)
                    if mn is None:
                        break
                    new_name = fn.with_letters(mn, letters)
                    if new_name == name:
                        upserts.append(attrs_evolve_entry(e, flags, kws, e.extra))
                        break
                    try:
                        os.rename(os.path.join(self.dir, sub, name), os.path.join(self.dir, sub, new_name))
                    except FileNotFoundError:
                        if rescanned:
                            break
                        self._rescan()
                        rescanned = True
                        fresh = self._entry(uid)
                        if fresh is None:
                            break
                        e = fresh
                        continue
                    except OSError as err:
                        raise StorageError(f"Cannot rename {name} in {self.dir}: {err.strerror}") from None
                    upserts.append(attrs_evolve_entry(e, flags, kws, f"{sub}/{new_name}"))
                    break
            fsync_dirs([os.path.join(self.dir, "new"), os.path.join(self.dir, "cur")], enabled=st.fsync)
            if not upserts:
                return []
            changed = any((u.flags, u.keywords) != (current[u.uid].flags, current[u.uid].keywords) for u in upserts)
            ul_hdr, _ = ulmod.read_header(self.uidlist_path)
            dovecot_modseq = 0
            if ul_hdr is not None:
                dovecot_modseq = self.tell_dovecot(
                    ul_hdr.uidvalidity, ul_hdr.next_uid,
                    at_least=self.changes.meta().highestmodseq + (1 if changed else 0),
                    present={u.uid: (u.flags, u.keywords) for u in upserts},
                )
            self.changes.commit(upserts=upserts, min_modseq=dovecot_modseq)
            renamed = [(current[u.uid].extra, u.extra) for u in upserts if u.extra != current[u.uid].extra]
            saved = self._saved_stamp()
            if renamed and saved.get("v") and saved.get("g") == self._guid:
                # What we renamed is in the change log: spare the next look a rescan.
                self._after_own_save(int(saved["v"]), int(saved["n"]),  # type: ignore[call-overload]
                                     {new for _, new in renamed}, frozenset(old for old, _ in renamed), watch=watch)
            return list(self.records_by_uid_nolock([u.uid for u in upserts]))

    def records_by_uid_nolock(self, uids: list[int]) -> Iterator[MessageRecord]:
        assert self.changes is not None
        return (e.record() for e in self.changes.entries_by_uid(uids))

    def expunge(self, uids: Iterable[int]) -> list[ExpungeRecord]:
        wanted = sorted(set(uids))
        if not wanted:
            return []
        with self.locked():
            self._refresh()
            assert self.changes is not None
            gone: list[Entry] = []
            for e in self.changes.entries_by_uid(wanted):
                try:
                    os.unlink(os.path.join(self.dir, e.extra))
                except FileNotFoundError:
                    # Renamed meanwhile? Find it again before deciding.
                    self._rescan()
                    fresh = self._entry(e.uid)
                    if fresh is None:
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.dir, fresh.extra))
                except OSError as err:
                    raise StorageError(f"Cannot expunge {e.extra} in {self.dir}: {err.strerror}") from None
                gone.append(e)
            fsync_dirs([os.path.join(self.dir, "new"), os.path.join(self.dir, "cur")], enabled=self.storage.fsync)
            if not gone:
                return []
            ul_hdr, _ = ulmod.read_header(self.uidlist_path)
            dovecot_modseq = 0
            if ul_hdr is not None:
                dovecot_modseq = self.tell_dovecot(
                    ul_hdr.uidvalidity, ul_hdr.next_uid, at_least=self.changes.meta().highestmodseq + 1,
                    expunged=[(e.uid, e.guid) for e in gone],
                )
            modseq = self.changes.commit(expunged=[e.uid for e in gone], min_modseq=dovecot_modseq)
            return [ExpungeRecord(e.uid, e.guid, modseq) for e in gone]

    def update_status(
        self,
        *,
        uidvalidity: int | None = None,
        min_uidnext: int | None = None,
        min_highestmodseq: int | None = None,
        guid: str | None = None,
    ) -> MailboxStatus:
        if guid is not None and not _is_guid128(guid):
            raise UsageError(f"Invalid mailbox GUID {guid!r}: expected 32 hex digits")
        if uidvalidity is not None and not (0 < uidvalidity < 2**32):
            raise UsageError(f"Invalid UIDVALIDITY {uidvalidity}: must be 1..4294967295")
        st = self.storage
        with self.locked():
            self._refresh()
            summary, _ = self._uidlist_summary()
            assert summary is not None and self.changes is not None
            # The whole list is parsed only to rewrite it; the usual end of a sync (a higher
            # HIGHESTMODSEQ, a UIDNEXT already reached) needs the summary only.
            rewrite = (
                (uidvalidity is not None and uidvalidity != summary.uidvalidity)
                or (min_uidnext is not None and min_uidnext > summary.effective_next_uid)
                or (guid is not None and guid.lower() != summary.header.guid)
            )
            listed: ulmod.Uidlist | ulmod.UidlistSummary = summary
            changed = False
            if rewrite:
                ul, ul_st = self._read_uidlist()
                assert ul is not None
                listed = ul
                reset = False
                if uidvalidity is not None and uidvalidity != ul.uidvalidity:
                    ul.uidvalidity = uidvalidity
                    changed = reset = True
                if min_uidnext is not None and min_uidnext > ul.effective_next_uid:
                    ul.next_uid = min_uidnext
                    changed = True
                old_guid = ul.guid
                if guid is not None and guid.lower() != ul.guid:
                    ul.guid = guid.lower()
                    changed = True
                if changed:
                    ul.next_uid = ul.effective_next_uid
                    ulmod.rewrite(self.uidlist_path, ul, ul_st, fsync=st.fsync, chown=st.own)
                    self.header_uidvalidity = ul.uidvalidity
                if ul.guid != old_guid:
                    st.changelog.forget_mailbox(old_guid)
                    self._set_guid(ul.guid)
                if reset:
                    self.changes.reset()
                if changed:
                    self._update_stamp_values(ul.uidvalidity, ul.effective_next_uid)
                    self._rescan()
            if min_highestmodseq:
                self.changes.commit(min_modseq=min_highestmodseq)
            if changed or min_highestmodseq:
                dovecot_modseq = self.tell_dovecot(
                    listed.uidvalidity, listed.effective_next_uid, at_least=self.changes.meta().highestmodseq,
                    uidlist=listed,
                )
                self.changes.commit(min_modseq=dovecot_modseq)
        return self.status()

    def reset(self, uidvalidity: int) -> MailboxStatus:
        """Remove every message file, then rewrite ``dovecot-uidlist`` with the new
        UIDVALIDITY, next UID 1 and no records (same GUID). Dovecot's own index of the
        mailbox is removed and started afresh: an index whose UIDVALIDITY differs from the
        uidlist's is reset by Dovecot anyway (storage-formats §2.5 item 6), and one with
        the same UIDVALIDITY but higher UIDs must not survive."""
        if not 0 < uidvalidity < 2**32:
            raise UsageError(f"Invalid UIDVALIDITY {uidvalidity}: must be 1..4294967295")
        st = self.storage
        with self.locked():
            self._refresh()
            ul, ul_st = ulmod.read(self.uidlist_path)
            assert ul is not None and self.changes is not None
            highest = self.changes.meta().highestmodseq
            for sub in ("new", "cur"):
                d = os.path.join(self.dir, sub)
                with contextlib.suppress(FileNotFoundError), os.scandir(d) as it:
                    for e in it:
                        if fn.parse_name(e.name) is None:
                            continue
                        try:
                            os.unlink(e.path)
                        except FileNotFoundError:
                            pass
                        except OSError as err:
                            raise StorageError(f"Cannot remove {e.path}: {err.strerror}") from None
            fsync_dirs([os.path.join(self.dir, "new"), os.path.join(self.dir, "cur")], enabled=st.fsync)
            fresh = ulmod.Uidlist(uidvalidity=uidvalidity, next_uid=1, guid=ul.guid, version=ul.version,
                                  extra_header=ul.extra_header)
            ulmod.rewrite(self.uidlist_path, fresh, ul_st, fsync=st.fsync, chown=st.own)
            self.header_uidvalidity = uidvalidity
            self._drop_dovecot_index()
            self.changes.reset()
            self.changes.commit(min_modseq=highest + 1)
            self._update_stamp_values(uidvalidity, 1)
            self._rescan()
            dovecot_modseq = self.tell_dovecot(uidvalidity, 1, at_least=self.changes.meta().highestmodseq,
                                               uidlist=fresh)
            self.changes.commit(min_modseq=dovecot_modseq)
        return self.status()

    def _drop_dovecot_index(self) -> None:
        d = self.dovecot.dir
        with contextlib.suppress(FileNotFoundError), os.scandir(d) as it:
            for e in it:
                name = e.name
                if (name == dovecot_index.INDEX_PREFIX or name.startswith(dovecot_index.INDEX_PREFIX + ".")) and (
                    not name.endswith(".lock") and e.is_file(follow_symlinks=False)
                ):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(e.path)
        lay = self.storage.layout
        self.dovecot = DovecotIndexSync(lay.index_dir(self.name), self.name, fsync=self.storage.fsync,
                                        chown=self.storage.own)

    def close(self) -> None:
        if self._lock_depth or self._kept:
            self._lock_depth = 0
            self._kept = False
            self._lock.release()


def _uids_of(uidlist: ulmod.Uidlist | ulmod.UidlistSummary | None) -> Iterable[int] | None:
    """The uidlist's UIDs, newest first (re-iterable), for DovecotIndexSync.record."""
    if uidlist is None:
        return None
    if isinstance(uidlist, ulmod.UidlistSummary):
        return uidlist.uids_newest_first()
    return [r.uid for r in reversed(uidlist.records)]


def attrs_evolve_modseq(rec: MessageRecord, modseq: int) -> MessageRecord:
    import attrs

    return attrs.evolve(rec, modseq=modseq)


def attrs_evolve_entry(e: Entry, flags: frozenset[str], keywords: frozenset[str], extra: str) -> Entry:
    import attrs

    return attrs.evolve(e, flags=flags, keywords=keywords, extra=extra)


__all__ = ["MaildirStorage", "MaildirMailbox", "CorruptError"]
