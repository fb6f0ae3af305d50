"""The engine's only view of one side of a sync: :class:`Replica`.

Every method is batch- or stream-shaped so that a replica behind a socket (issue 4) costs a
constant number of round trips per mailbox, never one per message: the whole tree in one
call, all changes of a mailbox in one call, all saves/flag changes/expunges of a mailbox in
one call, bodies as one ordered stream. :class:`LocalReplica` implements it over a
:class:`~dsync_core.storage.Storage`; values crossing the boundary are attrs classes.
"""

from __future__ import annotations

import abc
import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import attrs

from .errors import DsyncError, NotFoundError
from .model import (
    ExpungeRecord,
    FlagUpdate,
    MailboxLogRecord,
    MailboxStatus,
    MessageRecord,
    SaveRequest,
)
from .storage import Mailbox, Storage
from .streams import any_thread, counted_sizes, counts_as_read, held_bytes

#: How many bodies one ``save()`` batch holds open at most (Dovecot commits every 100). Fewer,
#: larger batches mean fewer fsync rounds; open files and spooled bodies bound it from above.
SAVE_BATCH = 200
#: ... and how many bytes of bodies held in memory (``streams.held_bytes``: bodies fetched
#: whole, a streamed body's current chunk) it gathers before it is saved: 200 bodies of
#: nearly a chunk each would otherwise hold 200 chunks. Two batches are held at a time
#: (the next one is gathered and staged while the current one is saved).
SAVE_BATCH_BYTES = 16 * 1024 * 1024


@attrs.frozen
class ReplicaInfo:
    """Who a side is and what its storage can do."""

    hostname: str
    location: str
    have_guids: bool = True
    have_save_guids: bool = True
    have_only_guid128: bool = False
    have_modseqs: bool = True
    read_only: bool = False


@attrs.frozen
class MailboxNode:
    """One mailbox or directory of a side's tree; ``status`` is None for directories."""

    name: str
    guid: str = ""
    selectable: bool = True
    status: MailboxStatus | None = None


@attrs.frozen
class TreeSnapshot:
    """A side's whole folder state, read in one call."""

    mailboxes: tuple[MailboxNode, ...]
    subscriptions: tuple[str, ...]
    log: tuple[MailboxLogRecord, ...]

    def by_guid(self) -> dict[str, MailboxNode]:
        return {m.guid: m for m in self.mailboxes if m.selectable and m.guid}

    def by_name(self) -> dict[str, MailboxNode]:
        return {m.name: m for m in self.mailboxes}


@attrs.frozen
class TreeChange:
    """One folder-level change for :meth:`Replica.apply_tree`.

    ``kind``: ``create`` (name, guid, uidvalidity), ``delete`` (name, guid: the mailbox is
    only deleted while it still has that GUID), ``rename`` (name -> new_name),
    ``subscribe`` / ``unsubscribe`` (name), ``set_guid`` (name -> guid),
    ``set_uidvalidity`` (name -> uidvalidity), ``reset`` (name, guid, uidvalidity: expunge
    every message and restart UIDs at 1, for a mailbox that can't be re-created, INBOX).
    """

    kind: str
    name: str
    new_name: str = ""
    guid: str = ""
    uidvalidity: int = 0


@attrs.frozen
class ChangeSet:
    """What :meth:`Replica.changes` returns for one mailbox."""

    status: MailboxStatus
    records: tuple[MessageRecord, ...]  # modseq > since_modseq or uid > since_uid, ascending UID
    expunges: tuple[ExpungeRecord, ...]  # modseq > since_modseq
    #: False when the storage's expunge history does not reach back to ``since_modseq``
    #: (a rotated log, a server without QRESYNC): expunges may be missing, so the engine
    #: must not plan incrementally from this answer.
    expunges_complete: bool = True


@attrs.frozen
class NewMessage:
    """A message to store at ``uid``. Where its body comes from is ``source``:

    * ``peer``: the next body of the ``bodies`` stream given to :meth:`Replica.import_batch`
      (they come in the order of the ``peer`` saves);
    * ``local``: a copy of ``(from_mailbox, from_uid)`` on the same side (GUID known there);
    * ``renumber``: a copy of ``from_uid`` of the same mailbox (the engine expunges the
      original afterwards, in a later batch).
    """

    uid: int
    guid: str
    flags: frozenset[str] = frozenset()
    keywords: frozenset[str] = frozenset()
    internaldate: int | None = None
    save_date: int | None = None
    source: str = "peer"
    from_mailbox: str = ""
    from_uid: int = 0


@attrs.frozen
class ImportBatch:
    """Changes to one mailbox, applied in this order: saves (ascending UID), flag updates,
    expunges, then the status raise. The engine sends saves before expunges of both sides
    so an interrupted run never loses the only copy of a message."""

    saves: tuple[NewMessage, ...] = ()
    flag_updates: tuple[FlagUpdate, ...] = ()
    expunges: tuple[int, ...] = ()
    min_uidnext: int | None = None
    min_highestmodseq: int | None = None


@attrs.frozen
class ImportResult:
    saved: int = 0
    copied_locally: int = 0
    bytes: int = 0
    flags_changed: int = 0
    expunged: int = 0
    errors: tuple[str, ...] = ()
    status: MailboxStatus | None = None


class Replica(abc.ABC):
    """One side of a sync, as the engine sees it."""

    @abc.abstractmethod
    def info(self) -> ReplicaInfo: ...

    @abc.abstractmethod
    def tree(self) -> TreeSnapshot:
        """Every mailbox (with status), subscriptions and the mailbox log, in one call."""

    @abc.abstractmethod
    def apply_tree(self, changes: Iterable[TreeChange]) -> list[str]:
        """Apply folder changes in order; return one error line per change that failed."""

    @abc.abstractmethod
    def statuses(self, guids: Iterable[str]) -> dict[str, MailboxStatus]:
        """Status of the mailboxes with these GUIDs that exist."""

    @abc.abstractmethod
    def changes(self, guid: str, since_modseq: int = 0, since_uid: int = 0) -> ChangeSet:
        """Records changed after ``since_modseq`` or above ``since_uid``, and expunges."""

    @abc.abstractmethod
    def records(self, guid: str, uids: Iterable[int]) -> list[MessageRecord]:
        """The records of these UIDs that exist."""

    def prefetch(self, guid: str) -> None:
        """A hint: :meth:`changes` of this mailbox (a full listing) comes next, after the
        mailbox being synced now (``Storage.prefetch_listing``). Does nothing by default."""

    @abc.abstractmethod
    def locate(self, guids: Iterable[str]) -> dict[str, tuple[str, int]]:
        """Where messages with these GUIDs are on this side: GUID -> (mailbox GUID, UID)."""

    @abc.abstractmethod
    def bodies(self, guid: str, uids: list[int]) -> Iterator[tuple[int, BinaryIO | None]]:
        """Stream of ``(uid, body)`` in the given order; ``None`` for a vanished message.

        The receiver reads each body in chunks and closes it."""

    @abc.abstractmethod
    def import_batch(
        self, guid: str, batch: ImportBatch, bodies: Iterator[tuple[int, BinaryIO | None]] | None = None
    ) -> ImportResult:
        """Apply a batch to a mailbox; ``bodies`` feeds the ``peer`` saves in order."""

    @abc.abstractmethod
    def lock(self, timeout: float) -> contextlib.AbstractContextManager[object]: ...

    def purge(self) -> None:
        """Reclaim space after a run (``-P``)."""

    def sync_marks(self, peer: str) -> dict[str, tuple[int, ...]] | None:
        """Marks the last run with ``peer`` left on this side (``Storage.sync_marks``);
        ``None`` when this side keeps none."""
        return None

    def set_sync_marks(self, peer: str, marks: dict[str, tuple[int, ...]]) -> None:
        """Replace the marks kept for ``peer``."""

    def close(self) -> None:
        """Release what the replica holds."""


class _ClosingStream:
    """Wraps a body so that reading it counts bytes."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    # Passed on to the writer (streams.CountedBody, counts_as_read, any_thread); a stream that
    # counts as it is read knows its sizes only at its end, so they are asked late.
    @property
    def counted(self) -> tuple[int, int] | None:
        return counted_sizes(self.raw)

    @property
    def counts_as_read(self) -> bool:
        return counts_as_read(self.raw)

    @property
    def any_thread(self) -> bool:
        return any_thread(self.raw)

    @property
    def held(self) -> int:
        return held_bytes(self.raw)

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.count += len(data)
        return data

    def close(self) -> None:
        self.raw.close()


@attrs.define
class _SaveBatch:
    """``saves[start:end]`` gathered for one ``save()``: its requests (staged) and the
    bodies opened for them."""

    start: int
    end: int
    reqs: list[SaveRequest] = attrs.Factory(list)
    opened: list[_ClosingStream] = attrs.Factory(list)

    def close(self) -> None:
        # Staged bodies first: closing one that no save() took removes what it wrote.
        opened = {id(o) for o in self.opened}
        for r in self.reqs:
            if id(r.body) not in opened:
                with contextlib.suppress(OSError):
                    r.body.close()
        for o in self.opened:
            with contextlib.suppress(OSError):
                o.close()


class _GatherFailed(Exception):
    """Reading the bodies of a save batch failed (``error``), at ``saves[last]`` at most."""

    def __init__(self, error: DsyncError, last: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.last = last


class LocalReplica(Replica):
    """A replica over a storage in this process."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._names: dict[str, str] = {}  # mailbox GUID -> name, from the last tree()
        self._guid_index: dict[str, tuple[str, int]] | None = None

    # -- reading -----------------------------------------------------------------------
    def info(self) -> ReplicaInfo:
        st = self.storage
        return ReplicaInfo(
            hostname=os.uname().nodename,  # gethostname(), without loading socket
            location=st.root,
            have_guids=st.have_guids,
            have_save_guids=st.have_save_guids,
            have_only_guid128=st.have_only_guid128,
            have_modseqs=st.have_modseqs,
            read_only=st.read_only,
        )

    def tree(self) -> TreeSnapshot:
        nodes: list[MailboxNode] = []
        names: dict[str, str] = {}
        for info in self.storage.list_mailboxes():
            if not info.selectable:
                nodes.append(MailboxNode(info.name, "", False, None))
                continue
            try:
                with self.storage.open_mailbox(info.name) as mb:
                    status = mb.status()
            except NotFoundError:
                continue  # deleted while we listed
            nodes.append(MailboxNode(info.name, status.guid, True, status))
            names[status.guid] = info.name
        self._names = names
        return TreeSnapshot(tuple(nodes), tuple(self.storage.subscriptions()), tuple(self.storage.mailbox_log()))

    def _name(self, guid: str) -> str:
        name = self._names.get(guid)
        if name is None:
            self.tree()
            name = self._names.get(guid)
        if name is None:
            raise NotFoundError(f"Mailbox with GUID {guid} doesn't exist")
        return name

    @contextlib.contextmanager
    def _open(self, guid: str) -> Iterator[Mailbox]:
        name = self._name(guid)
        try:
            mb = self.storage.open_mailbox(name)
        except NotFoundError:
            self.tree()
            mb = self.storage.open_mailbox(self._name(guid))
        try:
            if mb.guid != guid:
                raise NotFoundError(f"Mailbox {name} no longer has GUID {guid}")
            yield mb
        finally:
            mb.close()

    def statuses(self, guids: Iterable[str]) -> dict[str, MailboxStatus]:
        out: dict[str, MailboxStatus] = {}
        for g in guids:
            try:
                with self._open(g) as mb:
                    out[g] = mb.status()
            except NotFoundError:
                continue
        return out

    def changes(self, guid: str, since_modseq: int = 0, since_uid: int = 0) -> ChangeSet:
        with self._open(guid) as mb:
            status = mb.status()
            recs = {r.uid: r for r in mb.records(since_modseq)}
            if since_modseq > 0 and status.uidnext > since_uid + 1:
                # Messages above the last common UID that did not change since then.
                for r in mb.records_by_uid(range(since_uid + 1, status.uidnext)):
                    recs.setdefault(r.uid, r)
            exp = mb.expunges(since_modseq)
            complete = since_modseq == 0 or mb.expunges_complete_since() <= since_modseq
        return ChangeSet(status, tuple(recs[u] for u in sorted(recs)), tuple(exp), complete)

    def prefetch(self, guid: str) -> None:
        name = self._names.get(guid)
        if name is not None:
            self.storage.prefetch_listing(name)

    def records(self, guid: str, uids: Iterable[int]) -> list[MessageRecord]:
        uids = list(uids)
        if not uids:
            return []
        with self._open(guid) as mb:
            return list(mb.records_by_uid(uids))

    def locate(self, guids: Iterable[str]) -> dict[str, tuple[str, int]]:
        wanted = set(guids)
        if not wanted:
            return {}
        if not self._names:
            self.tree()
        if self._guid_index is None:
            # An index of the storage's own (the change log's), as fresh as the last look at
            # each mailbox: a stale answer only costs a transfer instead of a local copy.
            found = self.storage.locate_messages(wanted)
            if found is not None:
                return {g: where for g, where in found.items() if where[0] in self._names}
            index: dict[str, tuple[str, int]] = {}
            for mbox_guid in list(self._names):
                try:
                    with self._open(mbox_guid) as mb:
                        for r in mb.records():
                            index.setdefault(r.guid, (mbox_guid, r.uid))
                except NotFoundError:
                    continue
            self._guid_index = index
        return {g: self._guid_index[g] for g in wanted if g in self._guid_index}

    def bodies(self, guid: str, uids: list[int]) -> Iterator[tuple[int, BinaryIO | None]]:
        with self._open(guid) as mb:
            yield from mb.open_bodies(uids)

    # -- writing -----------------------------------------------------------------------
    def apply_tree(self, changes: Iterable[TreeChange]) -> list[str]:
        errors: list[str] = []
        st = self.storage
        for ch in changes:
            try:
                if ch.kind == "create":
                    st.create_mailbox(ch.name, guid=ch.guid or None, uidvalidity=ch.uidvalidity or None)
                elif ch.kind == "delete":
                    with st.open_mailbox(ch.name) as mb:
                        if ch.guid and mb.guid != ch.guid:
                            raise NotFoundError(f"Mailbox {ch.name} no longer has GUID {ch.guid}")
                    st.delete_mailbox(ch.name)
                elif ch.kind == "rename":
                    st.rename_mailbox(ch.name, ch.new_name)
                elif ch.kind in ("subscribe", "unsubscribe"):
                    st.set_subscribed(ch.name, ch.kind == "subscribe")
                elif ch.kind == "set_guid":
                    with st.open_mailbox(ch.name) as mb:
                        mb.update_status(guid=ch.guid)
                elif ch.kind == "set_uidvalidity":
                    with st.open_mailbox(ch.name) as mb:
                        mb.update_status(uidvalidity=ch.uidvalidity)
                elif ch.kind == "reset":
                    with st.open_mailbox(ch.name) as mb:
                        if ch.guid and mb.guid != ch.guid:
                            raise NotFoundError(f"Mailbox {ch.name} no longer has GUID {ch.guid}")
                        mb.reset(ch.uidvalidity)
                else:  # pragma: no cover - engine bug
                    raise DsyncError(f"Unknown tree change {ch.kind}")
            except DsyncError as e:
                errors.append(f"{ch.kind} {ch.name}: {e.message}")
        self._guid_index = None
        self.tree()
        return errors

    def import_batch(
        self, guid: str, batch: ImportBatch, bodies: Iterator[tuple[int, BinaryIO | None]] | None = None
    ) -> ImportResult:
        errors: list[str] = []
        saved = copied = nbytes = flags = expunged = 0
        with self._open(guid) as mb, mb.writing():
            saves = sorted(batch.saves, key=lambda s: s.uid)
            # The peer's bodies arrive in the order of the engine's list, which is by UID too.
            # The next batch is gathered and staged (Mailbox.stage) before the current one is
            # saved, so a storage writes its bodies while it makes the current one durable.
            pending: list[_SaveBatch] = []
            failed: str | None = None  # why gathering a batch failed: no save after it
            try:
                nxt = 0
                while True:
                    # Keep one batch gathered (and staged) ahead of the one being saved.
                    while failed is None and len(pending) < 2 and nxt < len(saves):
                        try:
                            pending.append(self._gather(mb, saves, nxt, bodies, errors))
                            nxt = pending[-1].end
                        except _GatherFailed as e:
                            failed = (f"{mb.name}: saving UIDs {saves[nxt].uid}..{saves[e.last].uid} "
                                      f"failed: {e.error.message}")
                    if not pending:
                        break
                    cur = pending.pop(0)
                    try:
                        if cur.reqs:
                            stored = mb.save(cur.reqs)
                            if self._guid_index is not None:
                                # Keep the GUID index current rather than rebuild it for the next
                                # batch (a windowed copy would read the whole store each window).
                                for rec in stored:
                                    self._guid_index.setdefault(rec.guid, (guid, rec.uid))
                            for s in saves[cur.start : cur.end]:
                                if s.source == "peer":
                                    saved += 1
                                else:
                                    copied += 1
                            nbytes += sum(o.count for o in cur.opened)
                    except DsyncError as e:
                        last = saves[cur.end - 1].uid
                        errors.append(f"{mb.name}: saving UIDs {saves[cur.start].uid}..{last} failed: {e.message}")
                        # Keep the peer's body stream aligned with the remaining saves.
                        break
                    finally:
                        cur.close()
            finally:
                for b in pending:
                    b.close()
            if failed is not None:
                errors.append(failed)
            if batch.flag_updates:
                try:
                    flags = len(mb.update_flags(batch.flag_updates))
                except DsyncError as e:
                    errors.append(f"{mb.name}: flag changes failed: {e.message}")
            if batch.expunges:
                try:
                    expunged = len(mb.expunge(batch.expunges))
                except DsyncError as e:
                    errors.append(f"{mb.name}: expunge failed: {e.message}")
            status = None
            if batch.min_uidnext is not None or batch.min_highestmodseq is not None:
                try:
                    status = mb.update_status(
                        min_uidnext=batch.min_uidnext, min_highestmodseq=batch.min_highestmodseq
                    )
                except DsyncError as e:
                    errors.append(f"{mb.name}: raising UIDNEXT/HIGHESTMODSEQ failed: {e.message}")
            if status is None:
                status = mb.status()
        if expunged:
            self._guid_index = None  # entries may point at what is gone
        return ImportResult(saved, copied, nbytes, flags, expunged, tuple(errors), status)

    def _gather(
        self,
        mb: Mailbox,
        saves: list[NewMessage],
        start: int,
        bodies: Iterator[tuple[int, BinaryIO | None]] | None,
        errors: list[str],
    ) -> _SaveBatch:
        """The save batch from ``saves[start]``: up to SAVE_BATCH messages, fewer once their
        bodies hold SAVE_BATCH_BYTES in memory; staged in ``mb``."""
        batch = _SaveBatch(start, start)
        held = 0
        try:
            while batch.end < len(saves) and batch.end - start < SAVE_BATCH and held < SAVE_BATCH_BYTES:
                s = saves[batch.end]
                batch.end += 1
                body = self._body_for(mb, s, bodies, errors)
                if body is None:
                    continue
                batch.opened.append(body)
                held += held_bytes(body)
                batch.reqs.append(
                    SaveRequest(
                        body=body,  # type: ignore[arg-type]
                        uid=s.uid,
                        guid=s.guid or None,
                        flags=s.flags,
                        keywords=s.keywords,
                        internaldate=s.internaldate,
                        save_date=s.save_date,
                    )
                )
            batch.reqs = mb.stage(batch.reqs)
        except DsyncError as e:
            batch.close()
            raise _GatherFailed(e, max(batch.end - 1, start)) from e
        except BaseException:
            batch.close()
            raise
        return batch

    def _body_for(
        self,
        mb: Mailbox,
        s: NewMessage,
        bodies: Iterator[tuple[int, BinaryIO | None]] | None,
        errors: list[str],
    ) -> _ClosingStream | None:
        try:
            if s.source == "peer":
                if bodies is None:
                    raise NotFoundError("no body stream")
                _uid, body = next(bodies)
                if body is None:
                    errors.append(f"{mb.name}: message {s.guid} vanished on the other side before it was copied")
                    return None
                return _ClosingStream(body)
            if s.source == "renumber":
                return _ClosingStream(mb.open_body(s.from_uid))
            with self._open(s.from_mailbox) as other:
                return _ClosingStream(other.open_body(s.from_uid))
        except (NotFoundError, StopIteration):
            errors.append(f"{mb.name}: message {s.guid} (UID {s.from_uid or s.uid}) vanished before it was copied")
            return None

    def lock(self, timeout: float) -> contextlib.AbstractContextManager[object]:
        return self.storage.lock(timeout)

    def purge(self) -> None:
        self.storage.purge()

    def sync_marks(self, peer: str) -> dict[str, tuple[int, ...]] | None:
        return self.storage.sync_marks(peer)

    def set_sync_marks(self, peer: str, marks: dict[str, tuple[int, ...]]) -> None:
        self.storage.set_sync_marks(peer, marks)

    def close(self) -> None:
        pass


def as_replica(side: Storage | Replica) -> Replica:
    return side if isinstance(side, Replica) else LocalReplica(side)


__all__ = [
    "Replica",
    "LocalReplica",
    "ReplicaInfo",
    "MailboxNode",
    "TreeSnapshot",
    "TreeChange",
    "ChangeSet",
    "NewMessage",
    "ImportBatch",
    "ImportResult",
    "as_replica",
    "SAVE_BATCH",
]
