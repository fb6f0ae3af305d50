"""Plain values that cross boundaries: between storages, the engine, plugins and the wire.

All are attrs classes, frozen where they can be, so a plugin can never change a value
another component is still looking at.
"""

from __future__ import annotations

import enum
from typing import BinaryIO

import attrs

#: IMAP system flags a storage keeps (``\\Recent`` is per session and never stored).
SYSTEM_FLAGS: tuple[str, ...] = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SYSTEM_FLAGS_LOWER = {f.lower(): f for f in SYSTEM_FLAGS}


def normalize_flag(flag: str) -> str:
    """Return a system flag in its canonical spelling, a keyword unchanged."""
    return _SYSTEM_FLAGS_LOWER.get(flag.lower(), flag)


def is_system_flag(flag: str) -> bool:
    return flag.lower() in _SYSTEM_FLAGS_LOWER


def guid128_hex(guid: str) -> str:
    """A message GUID as Dovecot's 128 bits, in hex (storage-formats §0.1): a 32-hex-digit
    GUID as it is, any other string as the last 16 bytes of its SHA-1."""
    if len(guid) == 32:
        try:
            return bytes.fromhex(guid).hex()
        except ValueError:
            pass
    import hashlib  # here: most runs never need it, and loading OpenSSL costs start-up time

    return hashlib.sha1(guid.encode("utf-8")).digest()[4:20].hex()


def same_guid(g1: str, g2: str) -> bool:
    """Whether two message GUIDs name the same message; an expunge record taken from
    Dovecot's log holds only the 128-bit form of a string GUID."""
    if g1 == g2:
        return True
    if not g1 or not g2:
        return False
    return guid128_hex(g1) == guid128_hex(g2)


def _flagset(value: object) -> frozenset[str]:
    if isinstance(value, str):
        raise TypeError("flags must be a collection of strings, not a string")
    return frozenset(value)  # type: ignore[arg-type]


@attrs.frozen
class MailboxInfo:
    """One entry of a storage's mailbox tree.

    ``name`` is the full user-visible name with ``/`` between hierarchy levels.
    A ``selectable=False`` entry is a directory that only holds children (``\\Noselect``).
    """

    name: str
    guid: str = ""
    uidvalidity: int = 0
    uidnext: int = 0
    selectable: bool = True
    special_use: str = ""


@attrs.frozen
class MailboxStatus:
    """What ``STATUS`` tells about a mailbox, plus its GUID."""

    guid: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    messages: int
    unseen: int = 0
    recent: int = 0
    vsize: int = 0
    first_unseen_seq: int = 0


@attrs.frozen
class MessageRecord:
    """A message's metadata: everything but the body.

    ``internaldate`` is the IMAP INTERNALDATE (received time) in UNIX seconds;
    ``size`` the physical size as stored, ``vsize`` the RFC822.SIZE with CRLF line ends
    (``None`` when the storage cannot tell without reading the body).
    """

    uid: int
    guid: str
    flags: frozenset[str] = attrs.field(default=frozenset(), converter=_flagset)
    keywords: frozenset[str] = attrs.field(default=frozenset(), converter=_flagset)
    modseq: int = 0
    internaldate: int = 0
    size: int | None = None
    vsize: int | None = None
    save_date: int = 0


@attrs.frozen
class ExpungeRecord:
    """A message that was expunged at ``modseq``; ``guid`` may be empty if unknown."""

    uid: int
    guid: str
    modseq: int


class MailboxLogType(enum.IntEnum):
    """Record types of Dovecot's ``dovecot.mailbox.log`` (the numbers are Dovecot's)."""

    DELETE_MAILBOX = 1
    DELETE_DIR = 2
    RENAME = 3
    SUBSCRIBE = 4
    UNSUBSCRIBE = 5
    CREATE_DIR = 6


@attrs.frozen
class MailboxLogRecord:
    """A folder-level change with its time.

    ``guid`` is 32 hex digits: the mailbox GUID for ``DELETE_MAILBOX``, otherwise a
    128-bit hash of the mailbox name (see :func:`dsync_core.mailboxlog.name_hash`).
    """

    type: MailboxLogType
    guid: str
    timestamp: int


@attrs.frozen
class SaveRequest:
    """A message to save. ``body`` is a readable binary stream, read in chunks.

    Leave ``uid`` or ``guid`` empty to let the storage choose; a storage that cannot keep
    a wanted UID raises instead of silently picking another one.
    """

    body: BinaryIO
    uid: int | None = None
    guid: str | None = None
    flags: frozenset[str] = attrs.field(default=frozenset(), converter=_flagset)
    keywords: frozenset[str] = attrs.field(default=frozenset(), converter=_flagset)
    internaldate: int | None = None
    save_date: int | None = None


@attrs.frozen
class FlagUpdate:
    """Flag and keyword changes for one message. Adding wins over removing the same flag."""

    uid: int
    add_flags: frozenset[str] = attrs.field(default=frozenset(), converter=_flagset)
    remove_flags: frozenset[str] = attrs.field(default=frozenset(), converter=_flagset)
    add_keywords: frozenset[str] = attrs.field(default=frozenset(), converter=_flagset)
    remove_keywords: frozenset[str] = attrs.field(default=frozenset(), converter=_flagset)

    def apply(self, flags: frozenset[str], keywords: frozenset[str]) -> tuple[frozenset[str], frozenset[str]]:
        """Return ``(flags, keywords)`` after this update."""
        return (
            (flags - self.remove_flags) | self.add_flags,
            (keywords - self.remove_keywords) | self.add_keywords,
        )


@attrs.frozen
class UserInfo:
    """A user as a userdb reports it (``doveadm user`` fields)."""

    name: str
    home: str = ""
    uid: int | None = None
    gid: int | None = None
    fields: dict[str, str] = attrs.field(factory=dict, hash=False)


class SyncMode(enum.Enum):
    """What a run does to the two sides (doveadm's ``sync``, ``backup`` and ``sync -1``)."""

    TWOWAY = "sync"  # both sides end equal; nothing a user did is lost
    BACKUP = "backup"  # the destination ends identical to the source; its own changes are discarded
    ONEWAY = "oneway"  # ``sync -1``: the destination merges the source's changes; nothing deleted there


class SyncAlgorithm(enum.Enum):
    FAST = "fast"  # default: skip mailboxes whose status says nothing changed
    FULL = "full"  # ``-f``: compare every mailbox fully
    STATEFUL = "stateful"  # ``-s STATE``: start from the state of the last run


@attrs.frozen
class SyncRequest:
    """Everything one sync run is asked to do (the parsed command line, or an API call).

    ``source`` is the side named by ``mail_location`` (doveadm's local side) and
    ``destination`` the other; ``reverse`` (``-R``) swaps the direction of backup and
    one-way modes. Times are UNIX seconds.
    """

    mode: SyncMode = SyncMode.TWOWAY
    algorithm: SyncAlgorithm = SyncAlgorithm.FAST
    reverse: bool = False
    state: str | None = None  # -s STATE ("" starts a new state)
    mailbox: str | None = None  # -m MAILBOX ("" = tree and subscriptions only)
    mailbox_guid: str | None = None  # -g GUID ("" = tree and subscriptions only)
    excludes: tuple[str, ...] = ()  # -x MASK...
    since: int | None = None  # -t: only new mail received at/after
    until: int | None = None  # -e: only new mail received at/before
    lock_timeout: float | None = None  # -l SECS
    purge: bool = False  # -P
    notify: bool = False  # -U
    force: bool = False  # proceed even if the destination looks wiped
    dry_run: bool = False


@attrs.frozen
class ProgressEvent:
    """Progress of a run, for a progress bar or a log: ``kind`` is one of
    ``run_start``, ``mailbox_start``, ``messages`` (``done`` of ``total`` messages of the
    current mailbox), ``mailbox_done`` and ``run_done``."""

    kind: str
    mailbox: str = ""
    done: int = 0
    total: int = 0
    mailboxes_done: int = 0
    mailboxes_total: int = 0


@attrs.define
class SyncReport:
    """What a sync run did. ``unapplied`` lists changes that a re-run will retry (exit 2)."""

    mailboxes: int = 0  # mailboxes examined
    mailboxes_skipped: int = 0  # skipped because nothing changed (fast/stateful)
    mailboxes_created: int = 0
    mailboxes_deleted: int = 0
    mailboxes_renamed: int = 0
    messages_copied: int = 0  # bodies transferred between the sides
    messages_copied_locally: int = 0  # bodies copied within one side (GUID already there)
    flags_changed: int = 0
    expunged: int = 0
    conflicts: int = 0
    bytes: int = 0
    seconds: float = 0.0
    state: str = ""  # the new state string (stateful runs)
    unapplied: list[str] = attrs.field(factory=list)

    @property
    def exit_code(self) -> int:
        return 2 if self.unapplied else 0

    def as_dict(self) -> dict[str, object]:
        d = attrs.asdict(self)
        d["exit_code"] = self.exit_code
        return d


__all__ = [
    "SyncMode",
    "SyncAlgorithm",
    "SyncRequest",
    "SyncReport",
    "ProgressEvent",
    "SYSTEM_FLAGS",
    "normalize_flag",
    "is_system_flag",
    "guid128_hex",
    "same_guid",
    "MailboxInfo",
    "MailboxStatus",
    "MessageRecord",
    "ExpungeRecord",
    "MailboxLogType",
    "MailboxLogRecord",
    "SaveRequest",
    "FlagUpdate",
    "UserInfo",
]
