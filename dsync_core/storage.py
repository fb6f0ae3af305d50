"""The abstract storage interface every backend implements.

A backend (Maildir, dbox, IMAP, your own) is two classes: a :class:`Storage` (one user's
mail: the mailbox tree, subscriptions, the mailbox log, a user lock) and the
:class:`Mailbox` objects it opens (messages with UIDs, GUIDs, flags, modseqs and bodies).
A plugin returns an opened Storage from the ``dsync_storage_open`` hook.

Names are full user-visible names with ``/`` between hierarchy levels. The interface is
batch-shaped on purpose: ``records()`` streams every record changed since a modseq,
``save()`` takes many messages at once so that a backend can make a whole batch durable
with one round of fsyncs, ``update_flags()`` and ``expunge()`` take many UIDs.

:class:`dsync_core.testing` holds a conformance suite that checks a backend against this
contract; run it on yours.
"""

from __future__ import annotations

import abc
import contextlib
import os
import unicodedata
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import BinaryIO, ClassVar

from .errors import InvalidNameError, NotFoundError, StorageError
from .lock import FcntlLock
from .model import (
    ExpungeRecord,
    FlagUpdate,
    MailboxInfo,
    MailboxLogRecord,
    MailboxStatus,
    MessageRecord,
    SaveRequest,
)

HIERARCHY_SEP = "/"
MAX_NAME_BYTES = 4096
MAX_NAME_LEVELS = 64


def normalize_mailbox_name(name: str) -> str:
    """Validate a user-visible mailbox name and return its canonical form.

    ``INBOX`` is case-insensitive (``inbox/Sub`` becomes ``INBOX/Sub``). Names that could
    escape the mail root or confuse a filesystem are refused with a message that says
    what is wrong: empty levels, ``.`` and ``..``, a leading or trailing ``/``, control
    characters, over-long names.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"Invalid mailbox name {name!r}: not a string")
    if name == "":
        raise InvalidNameError("Invalid mailbox name '': empty")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidNameError(f"Invalid mailbox name {name[:40]!r}...: longer than {MAX_NAME_BYTES} bytes")
    for ch in name:
        if ord(ch) < 0x20 or ord(ch) == 0x7F or unicodedata.category(ch) in ("Cc", "Cs"):
            raise InvalidNameError(f"Invalid mailbox name {name!r}: contains control character {ch!r}")
    if name.startswith(HIERARCHY_SEP):
        raise InvalidNameError(f"Invalid mailbox name {name!r}: begins with '{HIERARCHY_SEP}'")
    if name.endswith(HIERARCHY_SEP):
        raise InvalidNameError(f"Invalid mailbox name {name!r}: ends with '{HIERARCHY_SEP}'")
    levels = name.split(HIERARCHY_SEP)
    if len(levels) > MAX_NAME_LEVELS:
        raise InvalidNameError(f"Invalid mailbox name {name!r}: more than {MAX_NAME_LEVELS} levels")
    for level in levels:
        if level == "":
            raise InvalidNameError(f"Invalid mailbox name {name!r}: empty hierarchy level")
        if level in (".", ".."):
            raise InvalidNameError(f"Invalid mailbox name {name!r}: '{level}' is not allowed as a hierarchy level")
    if levels[0].upper() == "INBOX":
        levels[0] = "INBOX"
    return HIERARCHY_SEP.join(levels)


def parent_names(name: str) -> list[str]:
    """``a/b/c`` -> ``['a', 'a/b']``."""
    levels = name.split(HIERARCHY_SEP)
    return [HIERARCHY_SEP.join(levels[:i]) for i in range(1, len(levels))]


class Mailbox(abc.ABC):
    """One opened mailbox. Obtain it from :meth:`Storage.open_mailbox`; close it after use."""

    def __init__(self, storage: Storage, name: str) -> None:
        self.storage = storage
        self.name = name

    @property
    @abc.abstractmethod
    def guid(self) -> str:
        """The mailbox GUID, 32 lowercase hex digits; stable across renames."""

    @abc.abstractmethod
    def status(self) -> MailboxStatus:
        """Current UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, message and unseen counts."""

    @abc.abstractmethod
    def records(self, since_modseq: int = 0) -> Iterator[MessageRecord]:
        """Every existing message whose modseq is above ``since_modseq``, ascending UID.

        ``since_modseq=0`` returns all messages. The cost must follow the number of
        records returned, not the mailbox size, when a storage keeps modseqs.
        """

    def records_by_uid(self, uids: Iterable[int]) -> Iterator[MessageRecord]:
        """The records of the given UIDs that exist, ascending UID.

        The default scans all records; backends with an index should do better.
        """
        wanted = set(uids)
        for rec in self.records():
            if rec.uid in wanted:
                yield rec

    @abc.abstractmethod
    def expunges(self, since_modseq: int = 0) -> list[ExpungeRecord]:
        """Messages expunged at a modseq above ``since_modseq``, with their GUIDs."""

    def expunges_complete_since(self) -> int:
        """The smallest ``since_modseq`` for which :meth:`expunges` is complete.

        A storage whose expunge history is trimmed (Dovecot rotates its transaction logs)
        returns the modseq where its history starts; below that the engine must compare
        full UID lists instead. The default, 0, means the history is complete.
        """
        return 0

    @abc.abstractmethod
    def open_body(self, uid: int) -> BinaryIO:
        """A binary stream of the full message (headers and body); read it in chunks."""

    def open_bodies(self, uids: list[int]) -> Iterator[tuple[int, BinaryIO | None]]:
        """``(uid, body)`` for these UIDs in this order, ``None`` for a missing message.

        The default opens them one by one; a storage behind a network (imapc) fetches many
        per request. The caller reads and closes each body before taking the next.
        """
        for uid in uids:
            try:
                body = self.open_body(uid)
            except NotFoundError:
                body = None
            yield uid, body

    @abc.abstractmethod
    def save(self, requests: Iterable[SaveRequest]) -> list[MessageRecord]:
        """Save a batch of messages and return their records, in request order.

        A request with ``uid`` set must get exactly that UID; it must be at least the
        current UIDNEXT (a storage raises :class:`ExistsError` otherwise). Requests with
        ``uid=None`` get UIDs from UIDNEXT upward. The batch is durable when this returns.
        """

    @abc.abstractmethod
    def update_flags(self, updates: Iterable[FlagUpdate]) -> list[MessageRecord]:
        """Apply flag and keyword changes; return the changed records (new modseqs).

        UIDs that no longer exist are skipped silently (someone expunged them).
        """

    @abc.abstractmethod
    def expunge(self, uids: Iterable[int]) -> list[ExpungeRecord]:
        """Expunge messages; return what was expunged. Missing UIDs are skipped."""

    @abc.abstractmethod
    def update_status(
        self,
        *,
        uidvalidity: int | None = None,
        min_uidnext: int | None = None,
        min_highestmodseq: int | None = None,
        guid: str | None = None,
    ) -> MailboxStatus:
        """Change UIDVALIDITY or GUID, or raise UIDNEXT / HIGHESTMODSEQ to at least a value."""

    def reset(self, uidvalidity: int) -> MailboxStatus:
        """Expunge every message and restart UIDs at 1 under ``uidvalidity``; keep the GUID.

        For a mailbox that cannot be deleted and re-created (INBOX) when a backup must make
        its UIDs identical to the source's: IMAP allows UIDs to restart only together with a
        UIDVALIDITY change, so clients drop their caches. The expunge history is dropped
        too; HIGHESTMODSEQ never decreases. The default refuses: a storage that can do it
        overrides this.
        """
        raise StorageError(f"Mailbox {self.name}: this storage can't reset a mailbox (restart its UIDs)")

    def keyword_order(self) -> list[str]:
        """Keywords in the mailbox's own order (Dovecot prints flags in this order).

        The default is no particular order: callers then sort alphabetically.
        """
        return []

    def stage(self, requests: list[SaveRequest]) -> list[SaveRequest]:
        """Speed hint: these requests go to a later :meth:`save` of this mailbox (the engine
        stages the next batch before it saves the current one). A storage may start work
        that needs no lock now, such as writing bodies held in memory to temporary files
        on helper threads, and return requests whose bodies stand for that work. The
        caller passes what it gets to ``save()``, or closes those bodies (which undoes the
        work). The default returns the requests unchanged."""
        return requests

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """``with mb.writing(): ...`` around a run of writes (the engine's import of one
        mailbox): a storage may keep its write lock from one write to the next instead of
        taking it anew each time, for a moment at most so that other writers (Dovecot's
        deliveries) still get their turn. The default does nothing."""
        return contextlib.nullcontext()

    def close(self) -> None:
        """Release what the mailbox holds. The default does nothing."""

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Storage(abc.ABC):
    """One user's mail in one place. Capabilities are declared, not discovered by trial."""

    #: The location scheme this class serves (``maildir``).
    scheme: ClassVar[str] = ""
    #: Messages have GUIDs that survive copying.
    have_guids: ClassVar[bool] = True
    #: A GUID given on save is kept.
    have_save_guids: ClassVar[bool] = True
    #: A UID given on save is kept and UIDNEXT / HIGHESTMODSEQ can be raised (an IMAP
    #: server, imapc, chooses its UIDs and modseqs itself).
    have_save_uids: ClassVar[bool] = True
    #: GUIDs are always 128-bit (32 hex digits).
    have_only_guid128: ClassVar[bool] = False
    #: Modseqs survive restarts (HIGHESTMODSEQ is meaningful across runs).
    have_modseqs: ClassVar[bool] = True
    #: Not writable at all.
    read_only: ClassVar[bool] = False

    def __init__(self, root: str) -> None:
        self.root = root

    # -- mailbox tree ------------------------------------------------------------------
    @abc.abstractmethod
    def list_mailboxes(self) -> list[MailboxInfo]:
        """Every mailbox and directory, parents before children, INBOX included."""

    @abc.abstractmethod
    def create_mailbox(self, name: str, *, guid: str | None = None, uidvalidity: int | None = None) -> MailboxInfo:
        """Create a mailbox (and missing parents as directories).

        Raises :class:`ExistsError` if it exists, :class:`InvalidNameError` for a bad name.
        """

    @abc.abstractmethod
    def delete_mailbox(self, name: str) -> None:
        """Delete a mailbox and its messages, and log a ``DELETE_MAILBOX`` record.

        A mailbox with children loses only its messages and becomes a directory.
        """

    @abc.abstractmethod
    def rename_mailbox(self, old: str, new: str) -> None:
        """Rename a mailbox and its children, keeping GUIDs; log a ``RENAME`` record."""

    @abc.abstractmethod
    def mailbox_log(self) -> list[MailboxLogRecord]:
        """Folder-level deletes, renames and subscription changes, oldest first."""

    # -- subscriptions -------------------------------------------------------------------
    @abc.abstractmethod
    def subscriptions(self) -> list[str]:
        """Subscribed names (they need not exist)."""

    @abc.abstractmethod
    def set_subscribed(self, name: str, subscribed: bool) -> None:
        """Subscribe or unsubscribe, and log the change."""

    # -- mailboxes -----------------------------------------------------------------------
    @abc.abstractmethod
    def open_mailbox(self, name: str) -> Mailbox:
        """Open a selectable mailbox; :class:`NotFoundError` if there is none by that name."""

    def prefetch_listing(self, name: str) -> None:
        """A hint: the engine will soon read the whole listing (``records()``) of mailbox
        ``name``, after the one it works on now. A storage whose listing costs round trips
        (IMAP) may start reading it on another connection; ``records()`` must still return
        what is current when it is called. Never raises; the default does nothing."""

    def find_mailbox(self, name: str) -> MailboxInfo:
        name = normalize_mailbox_name(name)
        for info in self.list_mailboxes():
            if info.name == name:
                return info
        raise NotFoundError(f"Mailbox doesn't exist: {name}")

    # -- locking and lifecycle -----------------------------------------------------------
    def lock_path(self) -> str:
        """Where the per-user sync lock lives (Dovecot: ``.dovecot-sync.lock`` in home)."""
        return os.path.join(self.root, ".dovecot-sync.lock")

    def lock(self, timeout: float = 30.0) -> FcntlLock:
        """A per-user lock held while syncing: ``with storage.lock(60): ...``."""
        os.makedirs(os.path.dirname(self.lock_path()), exist_ok=True)
        return FcntlLock(self.lock_path(), timeout=timeout, unlink_on_release=True)

    def purge(self) -> None:
        """Reclaim space of expunged messages where the format needs it (mdbox)."""

    def locate_messages(self, guids: Iterable[str]) -> dict[str, tuple[str, int]] | None:
        """Where messages with these GUIDs are: message GUID -> (mailbox GUID, UID), as far
        as the storage knows without reading every mailbox (an index); ``None`` when it has
        no such index (the caller then reads the mailboxes). Mailboxes this storage no
        longer has may appear: callers check the mailbox GUIDs they get."""
        return None

    def sync_marks(self, peer: str) -> dict[str, tuple[int, ...]] | None:
        """What a fast sync with ``peer`` (an opaque key naming the other side and the mode)
        left behind: mailbox GUID -> both sides' counters at its end. ``None`` when this
        storage keeps no marks (then a fast sync skips mailboxes whose counters are equal
        on both sides, Dovecot's rule, which misses one change on each side)."""
        return None

    def set_sync_marks(self, peer: str, marks: dict[str, tuple[int, ...]]) -> None:
        """Replace the marks kept for ``peer`` (see :meth:`sync_marks`). Default: keep none."""

    def close(self) -> None:
        """Release everything the storage holds."""

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


__all__ = ["Storage", "Mailbox", "normalize_mailbox_name", "parent_names", "HIERARCHY_SEP"]
