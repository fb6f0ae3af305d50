"""An in-memory Storage, written to be read: how to implement ``dsync_core.storage``.

The storage itself only keeps what has no other home: the mailbox tree, message bodies and
subscriptions. Everything the sync engine asks about messages (flags, keywords, modseqs,
expunged UIDs with their GUIDs) and the folder-level mailbox log live in the core's
change log, the same component a Maildir backend uses. So this file shows how little a
backend has to write when it leans on :mod:`dsync_core.changelog`.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import attrs

from dsync_core.changelog import ChangeLog, Entry, MailboxChanges
from dsync_core.errors import ExistsError, InvalidNameError, NotFoundError, UsageError
from dsync_core.mailboxlog import name_hash
from dsync_core.model import (
    ExpungeRecord,
    FlagUpdate,
    MailboxInfo,
    MailboxLogRecord,
    MailboxLogType,
    MailboxStatus,
    MessageRecord,
    SaveRequest,
    normalize_flag,
)
from dsync_core.plugin.manager import get_plugin_manager
from dsync_core.settings import Settings
from dsync_core.storage import HIERARCHY_SEP, Mailbox, Storage, normalize_mailbox_name, parent_names

_CHUNK = 64 * 1024


@attrs.define
class _Box:
    # The change log is keyed by ``key``, not by the GUID: update_status(guid=...) may change
    # the GUID, and a key that never changes means no entries have to move when it does.
    key: str
    guid: str
    uidvalidity: int
    uidnext: int = 1
    selectable: bool = True  # False: a directory that only holds children (\Noselect)
    bodies: dict[int, bytes] = attrs.Factory(dict)


class _State:
    """Everything behind one ``memory:NAME``, shared by every storage opened on it."""

    def __init__(self, changelog: ChangeLog) -> None:
        self.lock = threading.RLock()  # one writer at a time, as a file lock would give
        self.changelog = changelog
        self.boxes: dict[str, _Box] = {}
        self.subscriptions: list[str] = []
        self.last_uidvalidity = int(time.time())
        # storage.lock() must exclude other processes, so it needs a real file (fcntl).
        # A forked child inherits this path with the state, so both lock the same file.
        self.lock_path = os.path.join(tempfile.gettempdir(), f"dsync-memstore-{uuid.uuid4().hex}.lock")
        self.new_box("INBOX")

    def new_box(self, name: str, guid: str | None = None, uidvalidity: int | None = None) -> _Box:
        if uidvalidity is None:
            # Like dovecot-uidvalidity: a re-created name gets a new value.
            self.last_uidvalidity += 1
            uidvalidity = self.last_uidvalidity
        box = _Box(key=uuid.uuid4().hex, guid=guid or uuid.uuid4().hex, uidvalidity=uidvalidity)
        self.boxes[name] = box
        return box

    def log(self, type_: MailboxLogType, guid: str) -> None:
        self.changelog.append_mailbox_log([MailboxLogRecord(type_, guid, int(time.time()))])


_STATES: dict[str, _State] = {}
_STATES_LOCK = threading.Lock()


def drop(name: str) -> None:
    """Forget ``memory:NAME`` (tests call it so no state leaks between them)."""
    with _STATES_LOCK:
        state = _STATES.pop(name, None)
    if state is not None:
        state.changelog.close()


def _sort_key(name: str) -> tuple[bool, tuple[str, ...]]:
    # INBOX first, then parents before children.
    return (name != "INBOX", tuple(name.split(HIERARCHY_SEP)))


class MemoryStorage(Storage):
    scheme = "memory"
    have_only_guid128 = True
    # Modseqs survive a reopen within the process; that is all "restart" means here.
    have_modseqs = True

    def __init__(self, name: str, state: _State) -> None:
        super().__init__(root=f"memory:{name}")
        self.state = state

    @classmethod
    def open(cls, name: str, settings: Settings) -> MemoryStorage:
        with _STATES_LOCK:
            state = _STATES.get(name)
            if state is None:
                # Ask the hook rather than constructing SqliteChangeLog ourselves, so that a
                # plugin replacing the change log replaces it for us too.
                changelog = get_plugin_manager().hook.dsync_changelog_open(path=":memory:", settings=settings)
                state = _STATES[name] = _State(changelog)
        return cls(name, state)

    # -- mailbox tree ------------------------------------------------------------------
    def list_mailboxes(self) -> list[MailboxInfo]:
        with self.state.lock:
            return [
                MailboxInfo(name, box.guid, box.uidvalidity, box.uidnext, box.selectable)
                for name, box in sorted(self.state.boxes.items(), key=lambda kv: _sort_key(kv[0]))
            ]

    def _make_parents(self, name: str) -> None:
        for parent in parent_names(name):
            if parent not in self.state.boxes:
                self.state.new_box(parent).selectable = False

    def create_mailbox(self, name: str, *, guid: str | None = None, uidvalidity: int | None = None) -> MailboxInfo:
        name = normalize_mailbox_name(name)
        with self.state.lock:
            old = self.state.boxes.get(name)
            if old is not None and old.selectable:
                raise ExistsError(f"Mailbox already exists: {name}")
            self._make_parents(name)
            box = self.state.new_box(name, guid, uidvalidity)  # replaces a directory placeholder
            return MailboxInfo(name, box.guid, box.uidvalidity, box.uidnext)

    def _selectable(self, name: str) -> _Box:
        box = self.state.boxes.get(name)
        if box is None or not box.selectable:
            raise NotFoundError(f"Mailbox doesn't exist: {name}")
        return box

    def delete_mailbox(self, name: str) -> None:
        name = normalize_mailbox_name(name)
        with self.state.lock:
            box = self._selectable(name)
            if name == "INBOX":
                raise ExistsError("INBOX can't be deleted")
            self.state.changelog.forget_mailbox(box.key)
            # The GUID in the log lets a peer tell "deleted here" from "never existed here".
            self.state.log(MailboxLogType.DELETE_MAILBOX, box.guid)
            if any(n.startswith(name + HIERARCHY_SEP) for n in self.state.boxes):
                self.state.new_box(name).selectable = False  # children keep a parent directory
            else:
                del self.state.boxes[name]

    def rename_mailbox(self, old: str, new: str) -> None:
        old, new = normalize_mailbox_name(old), normalize_mailbox_name(new)
        with self.state.lock:
            if old not in self.state.boxes:
                raise NotFoundError(f"Mailbox doesn't exist: {old}")
            if new.startswith(old + HIERARCHY_SEP):
                raise InvalidNameError(f"Can't rename mailbox {old} under itself")
            prefix = old + HIERARCHY_SEP
            moving = [n for n in self.state.boxes if n == old or n.startswith(prefix)]
            # A name held only by a directory (children, no mailbox) can be renamed onto:
            # the mailbox takes the directory's place, its children stay.
            for n in moving:
                there = self.state.boxes.get(new + n[len(old) :])
                if there is not None and (there.selectable or n != old):
                    raise ExistsError(f"Mailbox already exists: {new + n[len(old):]}")
            for n in moving:
                # The _Box object moves as is: GUID, UIDs and change log key stay.
                self.state.boxes[new + n[len(old) :]] = self.state.boxes.pop(n)
            self._make_parents(new)
            # Dovecot logs the hash of the new name; dsync uses it for rename timestamps.
            self.state.log(MailboxLogType.RENAME, name_hash(new))

    def mailbox_log(self) -> list[MailboxLogRecord]:
        return self.state.changelog.mailbox_log()

    # -- subscriptions -------------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        with self.state.lock:
            return list(self.state.subscriptions)

    def set_subscribed(self, name: str, subscribed: bool) -> None:
        name = normalize_mailbox_name(name)
        with self.state.lock:
            subs = self.state.subscriptions
            if subscribed and name not in subs:
                subs.append(name)
            elif not subscribed and name in subs:
                subs.remove(name)
            kind = MailboxLogType.SUBSCRIBE if subscribed else MailboxLogType.UNSUBSCRIBE
            self.state.log(kind, name_hash(name))  # a name hash: the name need not exist

    # -- mailboxes -----------------------------------------------------------------------
    def open_mailbox(self, name: str) -> MemoryMailbox:
        name = normalize_mailbox_name(name)
        with self.state.lock:
            return MemoryMailbox(self, name, self._selectable(name))

    def lock_path(self) -> str:
        return self.state.lock_path

    def close(self) -> None:
        # The state is shared with other storages on the same NAME; drop() frees it.
        pass


class MemoryMailbox(Mailbox):
    storage: MemoryStorage

    def __init__(self, storage: MemoryStorage, name: str, box: _Box) -> None:
        super().__init__(storage, name)
        self.box = box

    @property
    def _changes(self) -> MailboxChanges:
        return self.storage.state.changelog.mailbox(self.box.key)

    @property
    def _lock(self) -> threading.RLock:
        return self.storage.state.lock

    @property
    def guid(self) -> str:
        return self.box.guid

    def status(self) -> MailboxStatus:
        with self._lock:
            meta = self._changes.meta()  # counts come from the change log, no scan needed
            return MailboxStatus(
                guid=self.box.guid,
                uidvalidity=self.box.uidvalidity,
                uidnext=self.box.uidnext,
                highestmodseq=meta.highestmodseq,
                messages=meta.messages,
                unseen=meta.unseen,
            )

    def records(self, since_modseq: int = 0) -> Iterator[MessageRecord]:
        return (e.record() for e in self._changes.entries(since_modseq))

    def records_by_uid(self, uids: Iterable[int]) -> Iterator[MessageRecord]:
        return (e.record() for e in self._changes.entries_by_uid(uids))

    def expunges(self, since_modseq: int = 0) -> list[ExpungeRecord]:
        return self._changes.expunges(since_modseq)

    def open_body(self, uid: int) -> BinaryIO:
        with self._lock:
            body = self.box.bodies.get(uid)
        if body is None:
            raise NotFoundError(f"Message UID {uid} doesn't exist in {self.name}")
        return io.BytesIO(body)

    def save(self, requests: Iterable[SaveRequest]) -> list[MessageRecord]:
        requests = list(requests)
        with self._lock:
            # Check every wanted UID before storing anything, so a refused batch leaves no trace.
            uids: list[int] = []
            nxt = self.box.uidnext
            for req in requests:
                if req.uid is not None and req.uid < nxt:
                    raise ExistsError(f"{self.name}: UID {req.uid} is below UIDNEXT {nxt}")
                uid = req.uid if req.uid is not None else nxt
                uids.append(uid)
                nxt = uid + 1
            entries, bodies = [], {}
            for req, uid in zip(requests, uids):
                # Read in chunks, as a file-backed store would copy into tmp/.
                buf = bytearray()
                while chunk := req.body.read(_CHUNK):
                    buf += chunk
                bodies[uid] = bytes(buf)
                entries.append(
                    Entry(
                        uid=uid,
                        guid=req.guid or uuid.uuid4().hex,
                        flags=frozenset(normalize_flag(f) for f in req.flags),
                        keywords=req.keywords,
                        internaldate=req.internaldate if req.internaldate is not None else int(time.time()),
                        size=len(buf),
                    )
                )
            # Bodies first, then the log: a record never points at a missing body.
            self.box.bodies.update(bodies)
            self._changes.commit(upserts=entries)  # one commit = one new modseq for the batch
            self.box.uidnext = nxt
            saved = {e.uid: e.record() for e in self._changes.entries_by_uid(uids)}
        return [saved[u] for u in uids]

    def update_flags(self, updates: Iterable[FlagUpdate]) -> list[MessageRecord]:
        updates = list(updates)
        with self._lock:
            current = {e.uid: e for e in self._changes.entries_by_uid(u.uid for u in updates)}
            changed: dict[int, Entry] = {}
            for upd in updates:
                e = changed.get(upd.uid) or current.get(upd.uid)
                if e is None:
                    continue  # expunged meanwhile: skipped, as the contract says
                add = frozenset(normalize_flag(f) for f in upd.add_flags)
                remove = frozenset(normalize_flag(f) for f in upd.remove_flags)
                flags, keywords = attrs.evolve(upd, add_flags=add, remove_flags=remove).apply(e.flags, e.keywords)
                if (flags, keywords) != (e.flags, e.keywords):
                    changed[upd.uid] = attrs.evolve(e, flags=flags, keywords=keywords)
            if not changed:
                return []
            self._changes.commit(upserts=changed.values())
            return [e.record() for e in self._changes.entries_by_uid(changed)]

    def expunge(self, uids: Iterable[int]) -> list[ExpungeRecord]:
        with self._lock:
            gone = list(self._changes.entries_by_uid(uids))
            if not gone:
                return []
            # The change log keeps the GUIDs, so expunges() can report them later.
            modseq = self._changes.commit(expunged=[e.uid for e in gone])
            for e in gone:
                self.box.bodies.pop(e.uid, None)
            return [ExpungeRecord(e.uid, e.guid, modseq) for e in gone]

    def reset(self, uidvalidity: int) -> MailboxStatus:
        if not 0 < uidvalidity < 2**32:
            raise UsageError(f"Invalid UIDVALIDITY {uidvalidity}: must be 1..4294967295")
        with self._lock:
            highest = self._changes.meta().highestmodseq
            self._changes.reset()  # entries and expunge history go; modseqs keep growing
            self._changes.commit(min_modseq=highest + 1)
            self.box.bodies.clear()
            self.box.uidvalidity = uidvalidity
            self.box.uidnext = 1
            return self.status()

    def update_status(
        self,
        *,
        uidvalidity: int | None = None,
        min_uidnext: int | None = None,
        min_highestmodseq: int | None = None,
        guid: str | None = None,
    ) -> MailboxStatus:
        with self._lock:
            if uidvalidity is not None:
                self.box.uidvalidity = uidvalidity
            if min_uidnext is not None:
                self.box.uidnext = max(self.box.uidnext, min_uidnext)
            if min_highestmodseq is not None:
                self._changes.commit(min_modseq=min_highestmodseq)
            if guid is not None:
                self.box.guid = guid
            return self.status()
