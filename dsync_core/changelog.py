"""Modseqs, expunge records and a mailbox log for storages that have none of their own.

Maildir keeps flags in file names and nothing else: no modseqs, no record of what was
expunged. The engine needs both to sync incrementally, so a storage like that keeps a
:class:`ChangeLog` beside the mail. The default one is a SQLite database:

* every change is one transaction, so a crash never leaves a half-written update that
  could be taken for a real one;
* every committed batch gets the next modseq, and every message it touched carries it;
* expunges keep the message's GUID, so a peer can prove "deleted here" later;
* queries use an index on ``(mailbox, modseq)``: their cost follows the changes.

Entries also carry a backend-owned ``extra`` string (Maildir stores the file name there),
so a backend can answer from the log alone when nothing changed on disk.

Replace it with the ``dsync_changelog_open`` hook.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator

import attrs

from .errors import CorruptError, StorageError
from .model import ExpungeRecord, MailboxLogRecord, MailboxLogType, MessageRecord

SCHEMA_VERSION = 1


@attrs.frozen
class Entry:
    """What the change log knows of one message."""

    uid: int
    guid: str
    flags: frozenset[str] = frozenset()
    keywords: frozenset[str] = frozenset()
    modseq: int = 0
    internaldate: int = 0
    size: int | None = None
    vsize: int | None = None
    extra: str = ""

    def record(self) -> MessageRecord:
        return MessageRecord(
            uid=self.uid,
            guid=self.guid,
            flags=self.flags,
            keywords=self.keywords,
            modseq=self.modseq,
            internaldate=self.internaldate,
            size=self.size,
            vsize=self.vsize,
        )


@attrs.frozen
class MailboxMeta:
    highestmodseq: int = 0
    messages: int = 0
    unseen: int = 0
    stamp: str = ""


class MailboxChanges(abc.ABC):
    """The change log of one mailbox, keyed by mailbox GUID."""

    @abc.abstractmethod
    def meta(self) -> MailboxMeta:
        """HIGHESTMODSEQ, message and unseen counts, and the backend's scan stamp."""

    @abc.abstractmethod
    def entries(self, since_modseq: int = 0) -> Iterator[Entry]:
        """Entries with modseq above ``since_modseq``, ascending UID."""

    @abc.abstractmethod
    def entries_by_uid(self, uids: Iterable[int]) -> Iterator[Entry]:
        """The entries of these UIDs that exist, ascending UID."""

    def extras(self) -> dict[str, int]:
        """Every entry's ``extra`` (the backend's name for the message) -> UID: what a
        backend compares a directory listing with to find what changed, without building
        an entry per message."""
        return {e.extra: e.uid for e in self.entries()}

    def compare_extras(self, listed: set[str]) -> dict[str, int]:
        """Compare the entries' ``extra`` with a directory listing: returns the entries not
        listed (``extra`` -> UID), and leaves in ``listed`` only the names no entry has.
        Streams the entries (no second copy of 100k names)."""
        gone: dict[str, int] = {}
        for extra, uid in self.extras().items():
            if extra in listed:
                listed.discard(extra)
            else:
                gone[extra] = uid
        return gone

    def uids(self) -> set[int]:
        """The UIDs of every entry."""
        return {e.uid for e in self.entries()}

    @abc.abstractmethod
    def expunges(self, since_modseq: int = 0) -> list[ExpungeRecord]:
        """Expunge records above ``since_modseq``, ascending modseq then UID."""

    @abc.abstractmethod
    def commit(
        self,
        *,
        upserts: Iterable[Entry] = (),
        expunged: Iterable[int] = (),
        stamp: str | None = None,
        min_modseq: int = 0,
        known_expunges: Iterable[ExpungeRecord] = (),
    ) -> int:
        """Record a batch of changes atomically and return the HIGHESTMODSEQ after it.

        Upserted entries (new messages or changed flags) and expunged UIDs get one new
        modseq (an upserted entry's own modseq when that is higher); an entry whose content
        is unchanged keeps its modseq. ``stamp`` is the backend's opaque marker of what it
        has seen on disk. ``min_modseq`` raises HIGHESTMODSEQ to at least that value.
        ``known_expunges`` are expunges learnt elsewhere (e.g. Dovecot's own log) of UIDs
        this log has no entry or expunge record of; they keep their own modseqs (this log
        never listed those messages, so no reader can have missed their expunge).
        """

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget every entry (a UIDVALIDITY change); modseqs keep growing."""


class ChangeLog(abc.ABC):
    """All change logs of one storage, plus its mailbox log."""

    @abc.abstractmethod
    def mailbox(self, guid: str) -> MailboxChanges:
        """The change log of the mailbox with this GUID (created empty if new)."""

    @abc.abstractmethod
    def forget_mailbox(self, guid: str) -> None:
        """Drop the log of a deleted mailbox."""

    def locate(self, guids: Iterable[str]) -> dict[str, tuple[str, int]] | None:
        """Message GUID -> (mailbox GUID, UID) for these GUIDs, from every mailbox's log;
        ``None`` when this log cannot answer without reading everything."""
        return None

    @abc.abstractmethod
    def append_mailbox_log(self, records: Iterable[MailboxLogRecord]) -> None:
        """Append folder-level records (for storages without a mailbox log of their own)."""

    @abc.abstractmethod
    def mailbox_log(self) -> list[MailboxLogRecord]:
        """Folder-level records, oldest first."""

    def close(self) -> None:
        """Release resources."""


def _flags_str(flags: frozenset[str]) -> str:
    return " ".join(sorted(flags))


@functools.lru_cache(maxsize=4096)
def _flags_set(text: str) -> frozenset[str]:
    # Shared: a mailbox has few distinct flag sets, and one frozenset per message would
    # cost 200 bytes each (records of big mailboxes are held while a sync plans).
    return frozenset(text.split()) if text else frozenset()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mailbox (
    guid TEXT PRIMARY KEY,
    highestmodseq INTEGER NOT NULL DEFAULT 0,
    stamp TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS msg (
    mbox TEXT NOT NULL,
    uid INTEGER NOT NULL,
    guid TEXT NOT NULL,
    flags TEXT NOT NULL,
    keywords TEXT NOT NULL,
    modseq INTEGER NOT NULL,
    internaldate INTEGER NOT NULL,
    size INTEGER,
    vsize INTEGER,
    extra TEXT NOT NULL,
    seen INTEGER NOT NULL,
    PRIMARY KEY (mbox, uid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS msg_modseq ON msg (mbox, modseq);
CREATE INDEX IF NOT EXISTS msg_guid ON msg (guid);
CREATE TABLE IF NOT EXISTS expunge (
    mbox TEXT NOT NULL,
    uid INTEGER NOT NULL,
    guid TEXT NOT NULL,
    modseq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS expunge_modseq ON expunge (mbox, modseq);
-- A mailbox's message and unseen counts, valid while modseq = mailbox.highestmodseq (every
-- commit that changes a row raises highestmodseq, and keeps the counts in step), so status
-- costs no count over a big mailbox's rows.
CREATE TABLE IF NOT EXISTS counts (
    guid TEXT PRIMARY KEY,
    modseq INTEGER NOT NULL,
    messages INTEGER NOT NULL,
    unseen INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mailbox_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    type INTEGER NOT NULL,
    guid TEXT NOT NULL,
    timestamp INTEGER NOT NULL
);
"""


class SqliteChangeLog(ChangeLog):
    """The default change log: one SQLite file per storage (``:memory:`` for tests)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._meta_cache: dict[str, tuple[tuple[int, int], MailboxMeta]] = {}
        try:
            if path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            with self._tx():
                for stmt in _SCHEMA.strip().split(";"):
                    if stmt.strip():
                        self.db.execute(stmt)
                row = self.db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
                if row is None:
                    self.db.execute("INSERT INTO meta VALUES ('version', ?)", (str(SCHEMA_VERSION),))
                elif row[0] != str(SCHEMA_VERSION):
                    raise CorruptError(f"Change log {path} has schema version {row[0]}, expected {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise CorruptError(f"Change log {path} is unreadable ({e}); remove it to rebuild it from the mail") from None
        except OSError as e:
            raise StorageError(f"Cannot open change log {path}: {e.strerror}") from None

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            else:
                self.db.execute("COMMIT")

    def mailbox(self, guid: str) -> MailboxChanges:
        return _SqliteMailboxChanges(self, guid)

    def forget_mailbox(self, guid: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM msg WHERE mbox=?", (guid,))
            db.execute("DELETE FROM expunge WHERE mbox=?", (guid,))
            db.execute("DELETE FROM mailbox WHERE guid=?", (guid,))
            db.execute("DELETE FROM counts WHERE guid=?", (guid,))

    def locate(self, guids: Iterable[str]) -> dict[str, tuple[str, int]] | None:
        wanted = sorted(set(guids))
        out: dict[str, tuple[str, int]] = {}
        with self._lock:
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for guid, mbox, uid in self.db.execute(
                    f"SELECT guid, mbox, uid FROM msg WHERE guid IN ({marks}) ORDER BY mbox, uid", chunk
                ):
                    out.setdefault(guid, (mbox, uid))
        return out

    def append_mailbox_log(self, records: Iterable[MailboxLogRecord]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT INTO mailbox_log (type, guid, timestamp) VALUES (?, ?, ?)",
                [(int(r.type), r.guid, r.timestamp) for r in records],
            )

    def mailbox_log(self) -> list[MailboxLogRecord]:
        with self._lock:
            rows = self.db.execute("SELECT type, guid, timestamp FROM mailbox_log ORDER BY seq").fetchall()
        return [MailboxLogRecord(MailboxLogType(t), g, ts) for t, g, ts in rows]

    def close(self) -> None:
        with self._lock:
            self.db.close()


_COLS = "uid, guid, flags, keywords, modseq, internaldate, size, vsize, extra"


def _entry(row: tuple) -> Entry:  # type: ignore[type-arg]
    uid, guid, flags, keywords, modseq, internaldate, size, vsize, extra = row
    return Entry(uid, guid, _flags_set(flags), _flags_set(keywords), modseq, internaldate, size, vsize, extra)


class _SqliteMailboxChanges(MailboxChanges):
    def __init__(self, log: SqliteChangeLog, guid: str) -> None:
        self.log = log
        self.guid = guid

    def meta(self) -> MailboxMeta:
        db = self.log.db
        with self.log._lock:
            # Counting a big mailbox's rows costs milliseconds and a sync asks often: reuse
            # the answer while no connection (ours: total_changes; others: data_version) wrote.
            version = (db.total_changes, db.execute("PRAGMA data_version").fetchone()[0])
            cached = self.log._meta_cache.get(self.guid)
            if cached is not None and cached[0] == version:
                return cached[1]
            row = db.execute("SELECT highestmodseq, stamp FROM mailbox WHERE guid=?", (self.guid,)).fetchone()
            hm, stamp = row if row else (0, "")
            counts = self._counts(db, hm)
            meta = MailboxMeta(highestmodseq=hm, messages=counts[0], unseen=counts[1], stamp=stamp)
            self.log._meta_cache[self.guid] = (version, meta)
        return meta

    def _counts(self, db: sqlite3.Connection, highestmodseq: int) -> tuple[int, int]:
        """(messages, unseen): stored ones while valid, else counted (the next commit
        stores them)."""
        row = db.execute("SELECT modseq, messages, unseen FROM counts WHERE guid=?", (self.guid,)).fetchone()
        if row is not None and row[0] == highestmodseq:
            return row[1], row[2]
        counted = db.execute(
            "SELECT count(*), coalesce(sum(1 - seen), 0) FROM msg WHERE mbox=?", (self.guid,)
        ).fetchone()
        return counted[0], counted[1]

    def entries(self, since_modseq: int = 0) -> Iterator[Entry]:
        db = self.log.db
        with self.log._lock:
            if since_modseq <= 0:
                rows = db.execute(f"SELECT {_COLS} FROM msg WHERE mbox=? ORDER BY uid", (self.guid,)).fetchall()
            else:
                rows = db.execute(
                    # INDEXED BY: without it SQLite walks the whole mailbox in UID order to skip a sort.
                    f"SELECT {_COLS} FROM msg INDEXED BY msg_modseq WHERE mbox=? AND modseq>? ORDER BY uid",
                    (self.guid, since_modseq),
                ).fetchall()
        return (_entry(r) for r in rows)

    def entries_by_uid(self, uids: Iterable[int]) -> Iterator[Entry]:
        wanted = sorted(set(uids))
        out: list[Entry] = []
        db = self.log.db
        with self.log._lock:
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                marks = ",".join("?" * len(chunk))
                out.extend(
                    _entry(r)
                    for r in db.execute(
                        f"SELECT {_COLS} FROM msg WHERE mbox=? AND uid IN ({marks}) ORDER BY uid", (self.guid, *chunk)
                    )
                )
        return iter(out)

    def extras(self) -> dict[str, int]:
        with self.log._lock:
            return dict(self.log.db.execute("SELECT extra, uid FROM msg WHERE mbox=?", (self.guid,)))

    def compare_extras(self, listed: set[str]) -> dict[str, int]:
        # Chunks of rows, each compared with set operations done in C: as fast as fetching
        # everything at once, with the memory of one chunk.
        gone: dict[str, int] = {}
        with self.log._lock:
            cur = self.log.db.execute("SELECT extra, uid FROM msg WHERE mbox=?", (self.guid,))
            while rows := cur.fetchmany(8192):
                chunk = dict(rows)
                for extra in chunk.keys() - listed:
                    gone[extra] = chunk[extra]
                listed.difference_update(chunk.keys())
        return gone

    def uids(self) -> set[int]:
        """The UIDs of every message the log holds."""
        with self.log._lock:
            return {u for (u,) in self.log.db.execute("SELECT uid FROM msg WHERE mbox=?", (self.guid,))}

    def expunges(self, since_modseq: int = 0) -> list[ExpungeRecord]:
        with self.log._lock:
            rows = self.log.db.execute(
                "SELECT uid, guid, modseq FROM expunge WHERE mbox=? AND modseq>? ORDER BY modseq, uid",
                (self.guid, since_modseq),
            ).fetchall()
        return [ExpungeRecord(u, g, m) for u, g, m in rows]

    def commit(
        self,
        *,
        upserts: Iterable[Entry] = (),
        expunged: Iterable[int] = (),
        stamp: str | None = None,
        min_modseq: int = 0,
        known_expunges: Iterable[ExpungeRecord] = (),
    ) -> int:
        upserts = list(upserts)
        learnt = list(known_expunges)
        expunged = sorted(set(expunged))
        with self.log._tx() as db:
            row = db.execute("SELECT highestmodseq FROM mailbox WHERE guid=?", (self.guid,)).fetchone()
            if row is None:
                db.execute("INSERT INTO mailbox (guid) VALUES (?)", (self.guid,))
                highest = 0
            else:
                highest = row[0]
            new_modseq = highest + 1
            changed = False
            messages, unseen = self._counts(db, highest)
            if upserts:
                existing = {
                    e.uid: e for e in self.entries_by_uid(e.uid for e in upserts)
                }
                for e in {e.uid: e for e in upserts}.values():  # the last of a UID wins, as in SQL
                    old = existing.get(e.uid)
                    unseen += "\\Seen" not in e.flags
                    if old is None:
                        messages += 1
                    else:
                        unseen -= "\\Seen" not in old.flags
                rows = []
                for e in upserts:
                    old = existing.get(e.uid)
                    same = old is not None and (old.guid, old.flags, old.keywords) == (e.guid, e.flags, e.keywords)
                    modseq = old.modseq if same and old is not None else max(new_modseq, e.modseq)
                    if not same:
                        changed = True
                    rows.append(
                        (
                            self.guid, e.uid, e.guid, _flags_str(e.flags), _flags_str(e.keywords), modseq,
                            e.internaldate, e.size, e.vsize, e.extra, 1 if "\\Seen" in e.flags else 0,
                        )
                    )
                db.executemany(
                    "INSERT OR REPLACE INTO msg (mbox, uid, guid, flags, keywords, modseq, internaldate, size,"
                    " vsize, extra, seen) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )
            if expunged:
                for i in range(0, len(expunged), 500):
                    chunk = expunged[i : i + 500]
                    marks = ",".join("?" * len(chunk))
                    gone = db.execute(
                        f"SELECT uid, guid, seen FROM msg WHERE mbox=? AND uid IN ({marks})", (self.guid, *chunk)
                    ).fetchall()
                    if gone:
                        changed = True
                        messages -= len(gone)
                        unseen -= sum(1 for _u, _g, seen in gone if not seen)
                        db.executemany(
                            "INSERT INTO expunge (mbox, uid, guid, modseq) VALUES (?,?,?,?)",
                            [(self.guid, u, g, new_modseq) for u, g, _s in gone],
                        )
                        db.execute(f"DELETE FROM msg WHERE mbox=? AND uid IN ({marks})", (self.guid, *chunk))
            top = max(e.modseq for e in upserts) if upserts else 0
            if learnt:
                known = {u for (u,) in db.execute("SELECT uid FROM expunge WHERE mbox=?", (self.guid,))}
                known |= {u for (u,) in db.execute("SELECT uid FROM msg WHERE mbox=?", (self.guid,))}
                # Their own modseqs: such an expunge is news to nobody who read this log (it
                # never listed the message), so it need not sort above what readers saw.
                rows = list({x.uid: (self.guid, x.uid, x.guid, x.modseq) for x in learnt if x.uid not in known}.values())
                if rows:
                    top = max(top, *(r[3] for r in rows))
                    db.executemany("INSERT INTO expunge (mbox, uid, guid, modseq) VALUES (?,?,?,?)", rows)
            result = max(highest, min_modseq, top, new_modseq if changed else 0)
            db.execute(
                "UPDATE mailbox SET highestmodseq=?, stamp=coalesce(?, stamp) WHERE guid=?",
                (result, stamp, self.guid),
            )
            db.execute("INSERT OR REPLACE INTO counts VALUES (?,?,?,?)", (self.guid, result, messages, unseen))
        return result

    def reset(self) -> None:
        with self.log._tx() as db:
            db.execute("DELETE FROM msg WHERE mbox=?", (self.guid,))
            db.execute("DELETE FROM expunge WHERE mbox=?", (self.guid,))
            db.execute("UPDATE mailbox SET stamp='' WHERE guid=?", (self.guid,))
            db.execute("DELETE FROM counts WHERE guid=?", (self.guid,))


__all__ = ["ChangeLog", "MailboxChanges", "MailboxMeta", "Entry", "SqliteChangeLog"]
