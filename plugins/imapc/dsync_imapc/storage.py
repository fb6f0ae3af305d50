"""The ``imapc:`` storage: one IMAP account seen through the Storage interface.

See the package docstring for the design (GUIDs, mailbox GUIDs, modseqs, UIDs).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import io
import logging
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, BinaryIO

import attrs

from dsync_core.errors import ExistsError, NotFoundError, StorageError
from dsync_core.location import Location
from dsync_core.lock import FcntlLock
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
    is_system_flag,
    normalize_flag,
)
from dsync_core.settings import Settings
from dsync_core.storage import Mailbox, Storage, normalize_mailbox_name
from dsync_core.streams import CountedBody, LineEnds, chunk_line_ends

from .client import Connection, ConnectionLost
from .config import ImapcConfig, load_config
from .headerhash import disambiguate, header_hash, local_header_hash
from .names import ServerFolder, to_name, to_raw

#: Bodies fetched together in one UID FETCH stay below this many bytes (memory bound per
#: connection); a message above ``chunk_size`` is streamed in partial fetches instead.
BATCH_BYTES = 2 * 1024 * 1024

#: A chunk of a body and its line ends counted (``streams.chunk_line_ends``).
_Piece = tuple[bytes, tuple[int, bool, bool] | None]

log = logging.getLogger("dsync.imapc")
#: After a full listing, expunged messages are asked for by the gaps in its UIDs, up to
#: this many gaps (the command line stays below 16 KiB); beyond, for all UIDs (``1:*``).
MAX_GAPS = 1000
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) ([0-9:,]+)\]", re.I)


def uid_set(uids: Iterable[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``1:3,7``."""
    out: list[str] = []
    run: list[int] = []
    for u in sorted(set(uids)):
        if run and u == run[-1] + 1:
            run.append(u)
            continue
        if run:
            out.append(f"{run[0]}:{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [u]
    if run:
        out.append(f"{run[0]}:{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def parse_uid_set(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if ":" in part:
            a, b = (int(x) for x in part.split(":", 1))
            out.extend(range(min(a, b), max(a, b) + 1))
        else:
            out.append(int(part))
    return out


def _flags(raw: Iterable[bytes | str]) -> tuple[frozenset[str], frozenset[str]]:
    flags: set[str] = set()
    keywords: set[str] = set()
    for f in raw:
        s = f.decode("utf-8", "replace") if isinstance(f, bytes) else str(f)
        if s.lower() == "\\recent":
            continue
        if is_system_flag(s):
            flags.add(normalize_flag(s))
        elif not s.startswith("\\"):
            keywords.add(s)
    return frozenset(flags), frozenset(keywords)


def _ts(value: Any) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(value.timestamp())
    return 0


class _Cache:
    """What we keep about the server between calls (and, with a path, between runs):
    header-hash bases per (folder, UIDVALIDITY, UID) and GUIDs given on save or set."""

    def __init__(self, path: str | None) -> None:
        self.bases: dict[tuple[str, int], dict[int, str]] = {}
        self.overrides: dict[tuple[str, int], dict[int, str]] = {}
        self.mbox_guids: dict[str, str] = {}
        self.uidv: dict[str, tuple[int, int]] = {}  # folder -> (server's UIDVALIDITY, the one we show)
        self.log: list[MailboxLogRecord] = []  # deletes, renames, subscriptions done through us
        self.lock = threading.RLock()
        self.db: sqlite3.Connection | None = None
        if path:
            try:
                os.makedirs(path, exist_ok=True)
                self.db = sqlite3.connect(os.path.join(path, "dsync-imapc.sqlite"), check_same_thread=False)
                self.db.executescript(
                    "CREATE TABLE IF NOT EXISTS hash (box TEXT, uidvalidity INTEGER, uid INTEGER, base TEXT,"
                    " PRIMARY KEY (box, uidvalidity, uid)) WITHOUT ROWID;"
                    "CREATE TABLE IF NOT EXISTS guid (box TEXT, uidvalidity INTEGER, uid INTEGER, guid TEXT,"
                    " PRIMARY KEY (box, uidvalidity, uid)) WITHOUT ROWID;"
                    "CREATE TABLE IF NOT EXISTS mbox (name TEXT PRIMARY KEY, guid TEXT);"
                    "CREATE TABLE IF NOT EXISTS uidv (box TEXT PRIMARY KEY, real INTEGER, shown INTEGER);"
                    "CREATE TABLE IF NOT EXISTS mlog (seq INTEGER PRIMARY KEY AUTOINCREMENT, type INTEGER,"
                    " guid TEXT, ts INTEGER);"
                )
                for t, g, ts in self.db.execute("SELECT type, guid, ts FROM mlog ORDER BY seq"):
                    self.log.append(MailboxLogRecord(MailboxLogType(t), g, ts))
                for name, guid in self.db.execute("SELECT name, guid FROM mbox"):
                    self.mbox_guids[name] = guid
                for box, real, shown in self.db.execute("SELECT box, real, shown FROM uidv"):
                    self.uidv[box] = (real, shown)
            except (OSError, sqlite3.DatabaseError) as e:
                raise StorageError(f"imapc: cannot open the cache in {path}: {e}") from None

    def _load(self, table: str, key: tuple[str, int], into: dict[tuple[str, int], dict[int, str]]) -> dict[int, str]:
        with self.lock:
            got = into.get(key)
            if got is None:
                got = {}
                if self.db is not None:
                    col = "base" if table == "hash" else "guid"
                    got = {
                        u: v
                        for u, v in self.db.execute(
                            f"SELECT uid, {col} FROM {table} WHERE box=? AND uidvalidity=?", key
                        )
                    }
                into[key] = got
            return got

    def bases_of(self, key: tuple[str, int]) -> dict[int, str]:
        return self._load("hash", key, self.bases)

    def overrides_of(self, key: tuple[str, int]) -> dict[int, str]:
        return self._load("guid", key, self.overrides)

    def add(self, table: str, key: tuple[str, int], values: dict[int, str]) -> None:
        with self.lock:
            (self.bases_of(key) if table == "hash" else self.overrides_of(key)).update(values)
            if self.db is not None and values:
                with self.db:
                    self.db.executemany(
                        f"INSERT OR REPLACE INTO {table} VALUES (?,?,?,?)",
                        [(key[0], key[1], u, v) for u, v in values.items()],
                    )

    def set_mbox_guid(self, name: str, guid: str | None) -> None:
        with self.lock:
            if guid is None:
                self.mbox_guids.pop(name, None)
            else:
                self.mbox_guids[name] = guid
            if self.db is not None:
                with self.db:
                    if guid is None:
                        self.db.execute("DELETE FROM mbox WHERE name=?", (name,))
                    else:
                        self.db.execute("INSERT OR REPLACE INTO mbox VALUES (?,?)", (name, guid))

    def add_log(self, type_: MailboxLogType, guid: str) -> None:
        rec = MailboxLogRecord(type_, guid, int(time.time()))
        with self.lock:
            self.log.append(rec)
            if self.db is not None:
                with self.db:
                    self.db.execute("INSERT INTO mlog (type, guid, ts) VALUES (?,?,?)", (int(type_), guid, rec.timestamp))

    def shown_uidvalidity(self, box: str, real: int) -> int:
        """A UIDVALIDITY the engine asked for stands for the server's until the server's changes."""
        got = self.uidv.get(box)
        return got[1] if got is not None and got[0] == real else real

    def set_uidvalidity(self, box: str, real: int, shown: int) -> None:
        with self.lock:
            self.uidv[box] = (real, shown)
            if self.db is not None:
                with self.db:
                    self.db.execute("INSERT OR REPLACE INTO uidv VALUES (?,?,?)", (box, real, shown))

    def close(self) -> None:
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db = None


class ImapcStorage(Storage):
    scheme = "imapc"
    have_guids = True
    have_save_uids = False
    have_only_guid128 = True

    def __init__(self, location: Location, settings: Settings, user: Any = None) -> None:
        super().__init__(location.path or "")
        self.location = location
        self.cfg: ImapcConfig = load_config(settings)
        self.cache = _Cache(location.path or None)
        # Saved GUIDs survive only with a cache directory (imapc:~/imapc-cache).
        self.have_save_guids = self.cache.db is not None
        self._shared: dict[str, str] = {}  # "dead": why the run's connections are unusable
        self._pool: list[Connection] = []
        self._pool_lock = threading.Lock()
        self.conn = self._connect()
        self.have_modseqs = self.conn.condstore
        # Without CONDSTORE a mailbox's HIGHESTMODSEQ is the time this run started (in ms):
        # higher than any earlier run's, so a fast sync always compares the mailbox (never
        # skips a flag change it cannot see), and constant within the run.
        self._run_modseq = time.time_ns() // 1_000_000
        self._folders: dict[str, ServerFolder] | None = None
        self._sizes: dict[tuple[str, int], dict[int, int]] = {}  # (folder, UIDVALIDITY) -> UID -> RFC822.SIZE
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Listings read ahead on a worker connection (prefetch_listing), by raw folder name.
        self._ahead: dict[str, concurrent.futures.Future[_Listing]] = {}

    # -- connections -------------------------------------------------------------------
    def _connect(self) -> Connection:
        c = Connection(self.cfg)
        c.shared = self._shared
        return c

    @contextlib.contextmanager
    def _worker_conn(self) -> Iterator[Connection]:
        with self._pool_lock:
            c = self._pool.pop() if self._pool else None
        if c is None:
            c = self._connect()
        try:
            yield c
        finally:
            if not c.dead:
                with self._pool_lock:
                    self._pool.append(c)

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.cfg.connections, thread_name_prefix="imapc"
            )
        return self._executor

    # -- folders -----------------------------------------------------------------------
    def folders(self, refresh: bool = False) -> dict[str, ServerFolder]:
        if self._folders is not None and not refresh:
            return self._folders
        c = self.conn
        cfg = self.cfg
        special: dict[str, str] = {}
        with c.guard("LIST"):
            if "SPECIAL-USE" in c.caps and "LIST-EXTENDED" in c.caps:
                # One LIST with the special-use attributes (RFC 6154), imapclient has no call for it.
                typ, dat = c.client._imap._simple_command("LIST", '""', '"*"', "RETURN", "(SPECIAL-USE)")
                c.client._checkok("LIST", typ, dat)
                typ, dat = c.client._imap._untagged_response(typ, dat, "LIST")
                listing = c.client._proc_folder_list(dat)
            else:
                listing = c.client.xlist_folders() if "XLIST" in c.caps else c.client.list_folders()
        out: dict[str, ServerFolder] = {}
        for flags, sep, raw in listing:
            raw = _s(raw)
            sep_s = _s(sep) if sep else ""
            fl = {(_s(f)).lower() for f in flags}
            use = special.get(raw, "")
            for f in fl:
                if f in ("\\all", "\\archive", "\\drafts", "\\flagged", "\\junk", "\\sent", "\\trash",
                         "\\important") and not use:
                    use = next(_s(x) for x in flags if _s(x).lower() == f)
            if use and use.lower() in cfg.skip_special_use:
                continue
            name = to_name(raw, sep_s, cfg.list_prefix, cfg.alt_char)
            if name is None:
                continue
            try:
                name = normalize_mailbox_name(name)
            except Exception:
                continue  # a name we can't represent (empty level from a trailing separator)
            selectable = not (fl & {"\\noselect", "\\nonexistent"})
            out[name] = ServerFolder(raw, name, sep_s, selectable, use)
        if cfg.special_use_names:
            out = _special_use_names(out)
        if "INBOX" not in out:
            out["INBOX"] = ServerFolder("INBOX", "INBOX", "/", True)
        # Parents the server does not list (allowed by RFC 3501) are directories to us.
        for name in list(out):
            levels = name.split("/")
            for i in range(1, len(levels)):
                parent = "/".join(levels[:i])
                if parent not in out:
                    f = out[name]
                    out[parent] = ServerFolder(to_raw(parent, f.sep, cfg.list_prefix), parent, f.sep, False)
        self._folders = out
        return out

    def _sep(self) -> str:
        for f in self.folders().values():
            if f.sep:
                return f.sep
        return "/"

    def folder(self, name: str) -> ServerFolder:
        name = normalize_mailbox_name(name)
        f = self.folders().get(name)
        if f is None:
            f = self.folders(refresh=True).get(name)
        if f is None:
            raise NotFoundError(f"Mailbox doesn't exist: {name}")
        return f

    def mailbox_guid(self, name: str) -> str:
        override = self.cache.mbox_guids.get(name)
        if override:
            return override
        # By name: stable across runs, UIDVALIDITY changes and server moves (a rename on
        # the server is a delete and a create to the engine).
        return hashlib.sha1(f"imapc-mailbox\0{name}".encode()).hexdigest()[:32]

    def list_mailboxes(self) -> list[MailboxInfo]:
        out = []
        for name in sorted(self.folders(refresh=True), key=lambda n: (n != "INBOX", n.split("/"))):
            f = self._folders[name]  # type: ignore[index]
            out.append(
                MailboxInfo(name=name, guid=self.mailbox_guid(name) if f.selectable else "",
                            selectable=f.selectable, special_use=f.special_use)
            )
        return out

    def create_mailbox(self, name: str, *, guid: str | None = None, uidvalidity: int | None = None) -> MailboxInfo:
        name = normalize_mailbox_name(name)
        existing = self.folders(refresh=True).get(name)
        if existing is not None and existing.selectable:
            raise ExistsError(f"Mailbox already exists: {name}")
        raw = to_raw(name, self._sep(), self.cfg.list_prefix)
        with self.conn.guard(f"CREATE {name}"):
            self.conn.client.create_folder(raw)
        if guid:
            self.cache.set_mbox_guid(name, guid)
        self._folders = None
        st = self.conn_status(raw, name)
        uidv = int(st[b"UIDVALIDITY"])
        if uidvalidity and uidvalidity != uidv:
            self.cache.set_uidvalidity(raw, uidv, uidvalidity)
        return MailboxInfo(name=name, guid=self.mailbox_guid(name), uidvalidity=self.cache.shown_uidvalidity(raw, uidv),
                           uidnext=st[b"UIDNEXT"])

    def delete_mailbox(self, name: str) -> None:
        f = self.folder(name)
        self.conn.unselect()
        guid = self.mailbox_guid(f.name)
        with self.conn.guard(f"DELETE {name}", missing=name):
            self.conn.client.delete_folder(f.raw)
        self.cache.set_mbox_guid(f.name, None)
        self.cache.add_log(MailboxLogType.DELETE_MAILBOX, guid)
        self._folders = None

    def rename_mailbox(self, old: str, new: str) -> None:
        f = self.folder(old)
        new = normalize_mailbox_name(new)
        if new in self.folders(refresh=True):
            raise ExistsError(f"Mailbox already exists: {new}")
        self.conn.unselect()
        # GUIDs go with the folders (children too): they are name hashes unless set.
        moved = {n: self.mailbox_guid(n) for n in self.folders() if n == f.name or n.startswith(f.name + "/")}
        with self.conn.guard(f"RENAME {old}", missing=old):
            self.conn.client.rename_folder(f.raw, to_raw(new, f.sep or self._sep(), self.cfg.list_prefix))
        for n, guid in moved.items():
            self.cache.set_mbox_guid(n, None)
            self.cache.set_mbox_guid(new + n[len(f.name):], guid)
        self.cache.add_log(MailboxLogType.RENAME, name_hash(new))
        self._folders = None

    def mailbox_log(self) -> list[MailboxLogRecord]:
        # An IMAP server keeps no log of deletes and renames: ours holds what we did.
        return list(self.cache.log)

    def subscriptions(self) -> list[str]:
        with self.conn.guard("LSUB"):
            subs = self.conn.client.list_sub_folders()
        out = []
        for _flags, sep, raw in subs:
            name = to_name(_s(raw), _s(sep) if sep else "", self.cfg.list_prefix, self.cfg.alt_char)
            if name:
                out.append(name)
        return out

    def set_subscribed(self, name: str, subscribed: bool) -> None:
        raw = to_raw(normalize_mailbox_name(name), self._sep(), self.cfg.list_prefix)
        with self.conn.guard("SUBSCRIBE"):
            if subscribed:
                self.conn.client.subscribe_folder(raw)
            else:
                self.conn.client.unsubscribe_folder(raw)
        self.cache.add_log(MailboxLogType.SUBSCRIBE if subscribed else MailboxLogType.UNSUBSCRIBE,
                           name_hash(normalize_mailbox_name(name)))

    def open_mailbox(self, name: str) -> Mailbox:
        f = self.folder(name)
        if not f.selectable:
            raise NotFoundError(f"Mailbox doesn't exist: {f.name} (a directory only)")
        return ImapcMailbox(self, f)

    def prefetch_listing(self, name: str) -> None:
        # Only where the answer can be checked: with CONDSTORE a SELECT's HIGHESTMODSEQ
        # says whether anything changed between the read-ahead and its use.
        if not self.conn.condstore or self.cfg.connections < 2 or self.conn.dead:
            return
        try:
            folder = self.folder(name)
        except StorageError:
            return
        if not folder.selectable or (self.conn.gmail and folder.special_use.lower() == "\\all"):
            return
        # The engine asks for the next mailbox before it lists the current one: two are
        # kept; an older one was not used and is dropped.
        while len(self._ahead) >= 2:
            self._ahead.pop(next(iter(self._ahead))).cancel()
        self._ahead[folder.raw] = self.executor().submit(self._list_ahead, folder)

    def _list_ahead(self, folder: ServerFolder) -> _Listing:
        """A worker's full listing of ``folder`` (flags, dates, sizes, modseqs and the
        hashed header fields, their hashes computed here) with the SELECT it was read under."""
        with self._worker_conn() as wc:
            resp = wc.select(folder.raw, folder.name)
            exists = int(resp.get(b"EXISTS", 0))
            if exists == 0:
                return _Listing(_select_key(resp), {}, {})
            items = [*_META_ITEMS, "MODSEQ", _header_fields(self.cfg.hashed_headers)]
            got = raw_fetch(wc, "1:*", items, what="FLAGS", response=max(self.cfg.max_response, exists * 16384),
                            why="imapc_max_response_size")
        return _Listing(_select_key(resp), got, _hashes(got)[0])

    def _take_ahead(self, raw: str) -> _Listing | None:
        """The read-ahead listing of ``raw``, waiting for it if it is still on its way;
        None if there is none or it failed (the caller lists as usual)."""
        fut = self._ahead.pop(raw, None)
        if fut is None:
            return None
        try:
            return fut.result()
        except ConnectionLost:
            raise
        except (StorageError, concurrent.futures.CancelledError) as e:
            log.debug("%s: the listing read ahead is not used: %s", raw, getattr(e, "message", e))
            return None

    def conn_status(self, raw: str, name: str) -> dict[bytes, int]:
        what = ["MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN"]
        if self.conn.condstore:
            what.append("HIGHESTMODSEQ")
        with self.conn.guard(f"STATUS {name}", missing=name):
            return self.conn.client.folder_status(raw, what)

    # -- locking and lifecycle -----------------------------------------------------------
    def lock_path(self) -> str:
        if self.location.path:
            return os.path.join(self.location.path, ".dovecot-sync.lock")
        key = hashlib.sha1(f"{self.cfg.server}\0{self.cfg.user}".encode()).hexdigest()[:16]
        return os.path.join(tempfile.gettempdir(), f"dsync-imapc-{key}.lock")

    def lock(self, timeout: float = 30.0) -> FcntlLock:
        return FcntlLock(self.lock_path(), timeout=timeout, unlink_on_release=True)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        for c in [self.conn, *self._pool]:
            c.close()
        self._pool = []
        self.cache.close()


def _s(v: Any) -> str:
    return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v)


def raw_fetch(conn: Connection, uids: str, items: list[str], modifiers: list[str] | None = None,
              what: str = "FETCH", *, literal: int | None = None, response: int | None = None,
              why: str = "", response_why: str = "") -> dict[int, dict[bytes, Any]]:
    """UID FETCH of a UID set string (``1:*`` allowed), every answer returned. ``literal`` and
    ``response`` bound what the server may send for it (``why``, ``response_why``: whence)."""
    c = conn.client
    with conn.guard(f"UID FETCH {what}"), conn.limited(literal=literal, literal_why=why, response=response,
                                                       response_why=response_why or why):
        args = ["UID", "FETCH", uids, "(" + " ".join(items) + ")"]
        if modifiers:
            args.append("(" + " ".join(modifiers) + ")")
        # Untagged answers nobody took (unsolicited ones) would pile up over a session: each
        # command's answer is bounded, their sum would not be.
        c._imap.untagged_responses.clear()
        tag = c._imap._command(*args)
        typ, data = c._imap._command_complete("FETCH", tag)
        c._checkok("fetch", typ, data)
        typ, data = c._imap._untagged_response(typ, data, "FETCH")
        fast = _fast_parse(data)
        if fast is not None:
            return fast
        from imapclient.response_parser import parse_fetch_response

        return dict(parse_fetch_response(data, False, True))


_F_UID = re.compile(rb"\bUID (\d+)")
_F_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")
_F_DATE = re.compile(rb'\bINTERNALDATE "([^"]+)"')
_DATE_TIME = re.compile(rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})")
_MONTHS = {m: i for i, m in enumerate(
    (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"), 1)}
_ZONES: dict[bytes, timezone] = {}


def internaldate(raw: bytes) -> datetime | None:
    """An IMAP date-time (``"17-Jul-1996 02:44:25 -0700"``) as an aware datetime, None if it
    is not one (strptime did the same at several times the cost, once per message)."""
    m = _DATE_TIME.fullmatch(raw)
    if m is None:
        return None
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    month = _MONTHS.get(mon.capitalize())
    key = sign + zh + zm
    tz = _ZONES.get(key)
    if tz is None:
        offset = timedelta(hours=int(zh), minutes=int(zm))
        if offset >= timedelta(hours=24):
            return None
        tz = _ZONES[key] = timezone(-offset if sign == b"-" else offset)
    try:
        return datetime(int(year), month or 0, int(day), int(hh), int(mm), int(ss), tzinfo=tz)
    except ValueError:
        return None
_F_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_F_MODSEQ = re.compile(rb"\bMODSEQ \((\d+)\)")
_F_LITERAL = re.compile(rb"(BODY\[[^\]]*\](?:<\d+>)?) \{\d+\}$")
_F_SIMPLE = re.compile(rb"^\d+ \(")  # imaplib drops the word FETCH


def _fast_parse(data: list[Any]) -> dict[int, dict[bytes, Any]] | None:
    """FETCH answers of the shapes we ask for (UID, FLAGS, INTERNALDATE, RFC822.SIZE, MODSEQ,
    at most one BODY[...] literal), parsed with a few regexes: imapclient's general parser
    costs more than the transfer. Anything else (quoted strings, X-GM-LABELS, NIL bodies)
    returns None and is left to imapclient."""
    out: dict[int, dict[bytes, Any]] = {}
    i = 0
    n = len(data)
    while i < n:
        item = data[i]
        i += 1
        if item is None or item == b"":
            continue
        if isinstance(item, tuple):
            head, literal = item
            m = _F_LITERAL.search(head)
            if m is None or not _F_SIMPLE.match(head):
                return None
            text = head[: m.start()]
            if i < n and isinstance(data[i], bytes):
                text += b" " + data[i]  # what follows the literal, up to the closing ")"
                i += 1
            d = _fields(text)
            if d is None:
                return None
            d[m.group(1).replace(b".PEEK", b"")] = literal
        else:
            if not _F_SIMPLE.match(item) or b"{" in item or b'"' in _F_DATE.sub(b"", item):
                return None
            d = _fields(item)
            if d is None:
                return None
        uid = d.pop(b"UID", None)
        if uid is None:
            continue  # an unsolicited FETCH (another session changed flags): not an answer
        out.setdefault(uid, {}).update(d)
    return out


def _fields(text: bytes) -> dict[bytes, Any] | None:
    d: dict[bytes, Any] = {}
    if (m := _F_UID.search(text)) is not None:
        d[b"UID"] = int(m.group(1))
    if (f := _F_FLAGS.search(text)) is not None:
        d[b"FLAGS"] = tuple(f.group(1).split())
    if (f := _F_DATE.search(text)) is not None:
        date = internaldate(f.group(1))
        if date is None:
            return None
        d[b"INTERNALDATE"] = date
    if (f := _F_SIZE.search(text)) is not None:
        d[b"RFC822.SIZE"] = int(f.group(1))
    if (f := _F_MODSEQ.search(text)) is not None:
        d[b"MODSEQ"] = (int(f.group(1)),)
    return d


_MAP_CRLF = re.compile(rb"\r\n|\r(?!\n)|\n")


_META_ITEMS = ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE"]


def _header_fields(names: Iterable[str]) -> str:
    return f"BODY.PEEK[HEADER.FIELDS ({' '.join(names)})]"


def _body_item(d: dict[bytes, Any]) -> Any:
    """The ``BODY[...]`` value of one message's FETCH answer (None without one)."""
    return next((v for k, v in d.items() if k.startswith(b"BODY[")), None)


def _select_key(resp: dict[bytes, Any]) -> tuple[int, int, int, int] | None:
    """(UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, EXISTS) of a SELECT answer; None without all four."""
    try:
        return (int(resp[b"UIDVALIDITY"]), int(resp[b"UIDNEXT"]), int(resp[b"HIGHESTMODSEQ"]), int(resp[b"EXISTS"]))
    except (KeyError, TypeError, ValueError):
        return None


def _hashes(got: dict[int, dict[bytes, Any]]) -> tuple[dict[int, str], list[int]]:
    """Header hashes of fetched ``HEADER.FIELDS`` blocks, and the UIDs whose block was empty
    (none of the fields: their whole header is hashed instead)."""
    new: dict[int, str] = {}
    bare: list[int] = []
    for u, d in got.items():
        block = _body_item(d) or b""
        if block.strip():
            new[u] = header_hash(block, d.get(b"RFC822.SIZE"))
        else:
            bare.append(u)
    return new, bare


@attrs.frozen
class _Listing:
    """A full listing read ahead: the SELECT it was read under, the FETCH answers, hashes."""

    select: tuple[int, int, int, int] | None
    got: dict[int, dict[bytes, Any]]
    hashes: dict[int, str]


def spool_crlf(body: BinaryIO, max_head: int) -> tuple[BinaryIO, bytes, int]:
    """``body`` copied with every line end made CRLF (as IMAP wants a message, and as
    imaplib's own APPEND did) into a temporary file that keeps 1 MiB in memory: the file at
    offset 0, the header block (up to ``max_head`` bytes, for header hashes) and the size."""
    spool = tempfile.SpooledTemporaryFile(max_size=1024 * 1024)
    head = b""
    size = 0
    carry = b""
    try:
        while True:
            chunk = body.read(1024 * 1024)
            data = carry + chunk
            carry = b""
            if chunk and data.endswith(b"\r"):
                data, carry = data[:-1], b"\r"  # maybe the first half of a CRLF
            data = _MAP_CRLF.sub(b"\r\n", data)
            if len(head) < max_head and b"\r\n\r\n" not in head:
                head += data[: max_head - len(head)]
            spool.write(data)
            size += len(data)
            if not chunk:
                break
    except BaseException:
        spool.close()
        raise
    end = head.find(b"\r\n\r\n")
    if end >= 0:
        head = head[: end + 4]
    spool.seek(0)
    return spool, head, size  # type: ignore[return-value]


class _ChunkedBody(io.RawIOBase):
    """A message body read from the server in partial fetches (``BODY.PEEK[]<off.len>``).

    With worker connections every chunk is fetched on one (the next while the writer
    writes this one, its line ends counted there): never more than two chunks in memory,
    and any thread may read the body. The body counts its line ends as it is read
    (``streams.counts_as_read``), so the writer need not scan it again."""

    counts_as_read = True

    def __init__(self, mb: ImapcMailbox, uid: int, size: int | None, first: _Piece | None = None) -> None:
        self.mb = mb
        self.uid = uid
        self.size = size
        self.off = 0
        self.buf = b""
        self.pos = 0  # read position in buf (slicing off what was read would copy the rest)
        self.eof = False
        self.ends = LineEnds()
        self._ex = mb.storage.executor() if mb.storage.cfg.connections > 1 else None
        self._next: concurrent.futures.Future[_Piece | None] | None = None
        if first is not None:  # a batch fetch brought (and counted) the first chunk already
            self._take(first)

    def readable(self) -> bool:
        return True

    @property
    def counted(self) -> tuple[int, int] | None:
        """(physical, virtual) size once the whole body was read, else None."""
        if self.eof and self.pos >= len(self.buf):
            return self.off, self.off + self.ends.bare_lf
        return None

    @property
    def held(self) -> int:
        """Bytes in memory: the current chunk (``streams.held_bytes``)."""
        return len(self.buf)

    def _take(self, piece: _Piece) -> None:
        data, counted = piece
        self.off += len(data)
        self.buf = data
        self.pos = 0
        self.ends.add(counted)
        if len(data) < self.mb.storage.cfg.chunk_size or (self.size is not None and self.off >= self.size):
            self.eof = True

    @property
    def any_thread(self) -> bool:
        """With worker connections every chunk comes from one, never from the main
        connection: any thread may read the body (``streams.any_thread``)."""
        return self._ex is not None

    def _fill(self) -> None:
        if self._next is None and self._ex is not None:
            self._next = self._ex.submit(self.mb._fetch_piece, self.uid, self.off)
        if self._next is not None:
            fut, self._next = self._next, None
            piece = fut.result()
        else:
            piece = self.mb._fetch_piece(self.uid, self.off, self.mb._reading())
        if piece is None:
            if self.off == 0:
                raise NotFoundError(f"{self.mb.name}: message UID {self.uid} was expunged on the server")
            self.eof = True
            return
        self._take(piece)

    def readinto(self, b: Any) -> int:
        if self.pos >= len(self.buf) and not self.eof:
            self._fill()
        if self._next is None and not self.eof and self._ex is not None:
            # Asked when this chunk is first read, not when the body is opened: a save
            # opens a batch of bodies before it reads them one after the other.
            self._next = self._ex.submit(self.mb._fetch_piece, self.uid, self.off)
        n = min(len(b), len(self.buf) - self.pos)
        b[:n] = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return n

    def close(self) -> None:
        if self._next is not None:  # a chunk asked ahead that nobody will read
            self._next.cancel()
            self._next = None
        super().close()


class _Buffered(io.BufferedReader):
    """A buffered :class:`_ChunkedBody` that passes its count on to the writer."""

    counts_as_read = True

    @property
    def counted(self) -> tuple[int, int] | None:
        return self.raw.counted  # type: ignore[attr-defined, no-any-return]

    @property
    def held(self) -> int:
        return self.raw.held  # type: ignore[attr-defined, no-any-return]

    @property
    def any_thread(self) -> bool:
        return self.raw.any_thread  # type: ignore[attr-defined, no-any-return]


def _buffered(body: _ChunkedBody) -> BinaryIO:
    return _Buffered(body, 64 * 1024)  # type: ignore[return-value]


class ImapcMailbox(Mailbox):
    storage: ImapcStorage

    def __init__(self, storage: ImapcStorage, folder: ServerFolder) -> None:
        super().__init__(storage, folder.name)
        self.folder = folder
        self._uidvalidity = 0
        self._exists = 0
        self._listed: list[int] | None = None  # all UIDs, from the last full listing
        self._listed_next = 0  # the UIDNEXT of the SELECT that listing was read under

    @property
    def guid(self) -> str:
        return self.storage.mailbox_guid(self.name)

    # -- selection -----------------------------------------------------------------------
    def _reading(self, write: bool = False) -> Connection:
        c = self.storage.conn
        if c.selected != self.folder.raw or (write and not c.selected_rw) or c.dead:
            resp = c.select(self.folder.raw, self.name, write=write)
            self._note_select(resp)
        return c

    def _note_select(self, resp: dict[bytes, Any]) -> None:
        self._uidvalidity = int(resp.get(b"UIDVALIDITY", 0))
        self._exists = int(resp.get(b"EXISTS", 0))

    def _reselect(self, write: bool = False) -> Connection:
        """SELECT again: the answer is the current EXISTS/UIDVALIDITY (new mail included)."""
        c = self.storage.conn
        resp = c.select(self.folder.raw, self.name, write=write or (c.selected == self.folder.raw and c.selected_rw))
        self._note_select(resp)
        return c

    def status(self) -> MailboxStatus:
        st = self.storage.conn_status(self.folder.raw, self.name)
        hm = int(st.get(b"HIGHESTMODSEQ", 0)) if self.storage.conn.condstore else self.storage._run_modseq
        return MailboxStatus(
            guid=self.guid,
            uidvalidity=self.storage.cache.shown_uidvalidity(self.folder.raw, int(st[b"UIDVALIDITY"])),
            uidnext=int(st[b"UIDNEXT"]),
            highestmodseq=hm,
            messages=int(st[b"MESSAGES"]),
            unseen=int(st.get(b"UNSEEN", 0)),
        )

    # -- records -------------------------------------------------------------------------
    def _meta_items(self) -> list[str]:
        items = list(_META_ITEMS)
        if self.storage.conn.condstore:
            items.append("MODSEQ")
        if self.storage.conn.gmail and self.folder.special_use.lower() == "\\all":
            items.append("X-GM-LABELS")
        return items

    def _fetch_meta(self, uids: str, since_modseq: int = 0) -> dict[int, dict[bytes, Any]]:
        c = self._reselect()
        self._listed = None
        ahead = self.storage._take_ahead(self.folder.raw) if uids == "1:*" and since_modseq <= 0 else None
        if self._exists == 0:
            return {}
        mods = [f"CHANGEDSINCE {since_modseq}"] if since_modseq > 0 and c.condstore else None
        key = (self.folder.raw, self._uidvalidity)
        gmail_all = self.storage.conn.gmail and self.folder.special_use.lower() == "\\all"
        # A full listing with no header hashes known yet (a first run, or no cache directory)
        # brings the hashed header fields along: one command and one pass instead of three
        # (the listing, UID SEARCH ALL for the duplicate numbering, the header fetch).
        full = uids == "1:*" and mods is None and not gmail_all and not self.storage.cache.bases_of(key)
        if ahead is not None and not (full and ahead.select is not None and ahead.select == _select_key(c.select_resp)):
            log.debug("%s: the listing read ahead is out of date: listing again", self.name)
        if full and ahead is not None and ahead.select is not None and ahead.select == _select_key(c.select_resp):
            # Read ahead under a SELECT that equals ours (HIGHESTMODSEQ included): nothing
            # changed in between, so it is the listing this FETCH would return.
            log.debug("%s: using the listing read ahead (%d messages)", self.name, len(ahead.got))
            self._hash_blocks(ahead.got, key, ahead.hashes)
            self._listed, self._listed_next = sorted(ahead.got), ahead.select[1]
            return ahead.got
        items = self._meta_items()
        if full:
            items.append(_header_fields(self.storage.cfg.hashed_headers))
        # One line per message: the answer may exceed the default bound in a big mailbox.
        big = max(self.storage.cfg.max_response, self._exists * (16384 if full else 1024))
        got = raw_fetch(c, uids, items, mods, what="FLAGS", response=big, why="imapc_max_response_size")
        if full:
            self._hash_blocks(got, key)
            self._listed = sorted(got)  # every UID of the mailbox, as of this SELECT
            self._listed_next = int(c.select_resp.get(b"UIDNEXT", 0) or 0)
        if gmail_all:
            got = {u: d for u, d in got.items() if not _gmail_labelled(d)}
        return got

    def _all_uids(self) -> list[int]:
        c = self._reading()
        with c.guard("UID SEARCH ALL"):
            return sorted(c.client.search("ALL"))

    def guids(self, uids: Iterable[int]) -> dict[int, str]:
        """GUIDs of these UIDs: a saved/set GUID if we have one, else the header hash."""
        key = (self.folder.raw, self._uidvalidity)
        overrides = self.storage.cache.overrides_of(key)
        bases = self.storage.cache.bases_of(key)
        uids = list(uids)
        if all(u in overrides for u in uids):
            return {u: overrides[u] for u in uids}
        # Disambiguation needs every UID of the mailbox (duplicates number in UID order).
        all_uids = self._listed if self._listed is not None else self._all_uids()
        missing = [u for u in all_uids if u not in bases]
        if missing:
            self._hash(missing, key)
        pairs = [(u, bases[u]) for u in all_uids if u in bases]
        final = disambiguate(pairs)
        final.update({u: g for u, g in overrides.items()})
        return {u: final[u] for u in uids if u in final}

    def _hash(self, uids: list[int], key: tuple[str, int]) -> None:
        cfg = self.storage.cfg
        c = self._reading()
        for i in range(0, len(uids), cfg.fetch_batch):
            chunk = uids[i : i + cfg.fetch_batch]
            got = raw_fetch(c, uid_set(chunk), ["UID", "RFC822.SIZE", _header_fields(cfg.hashed_headers)],
                            what="headers")
            self._hash_blocks(got, key)

    def _hash_blocks(self, got: dict[int, dict[bytes, Any]], key: tuple[str, int],
                     hashed: dict[int, str] | None = None) -> None:
        """Header hashes from fetched ``HEADER.FIELDS`` blocks (and RFC822.SIZE), into the
        cache; ``hashed``: those already computed (by the thread that read ahead)."""
        if hashed is None:
            new, bare = _hashes(got)
        else:
            new, bare = dict(hashed), [u for u in got if u not in hashed]
        c = self._reading()
        for i in range(0, len(bare), self.storage.cfg.fetch_batch):
            whole = raw_fetch(c, uid_set(bare[i : i + self.storage.cfg.fetch_batch]),
                              ["UID", "RFC822.SIZE", "BODY.PEEK[HEADER]"], what="headers")
            for u, d in whole.items():
                block = _body_item(d) or b""
                new[u] = header_hash(block, d.get(b"RFC822.SIZE"))
        self.storage.cache.add("hash", key, new)

    def _records(self, got: dict[int, dict[bytes, Any]]) -> list[MessageRecord]:
        if not got:
            return []
        guids = self.guids(got)
        sizes = self.storage._sizes.setdefault((self.folder.raw, self._uidvalidity), {})
        out = []
        for uid in sorted(got):
            d = got[uid]
            if uid not in guids:
                continue  # expunged between the two fetches
            flags, keywords = _flags(d.get(b"FLAGS", ()))
            modseq = d.get(b"MODSEQ")
            out.append(
                MessageRecord(
                    uid=uid,
                    guid=guids[uid],
                    flags=flags,
                    keywords=keywords,
                    modseq=int(modseq[0]) if modseq else self.storage._run_modseq,
                    internaldate=_ts(d.get(b"INTERNALDATE")),
                    size=d.get(b"RFC822.SIZE"),
                    vsize=d.get(b"RFC822.SIZE"),
                )
            )
            if d.get(b"RFC822.SIZE") is not None:
                sizes[uid] = d[b"RFC822.SIZE"]
        return out

    def records(self, since_modseq: int = 0) -> Iterator[MessageRecord]:
        return iter(self._records(self._fetch_meta("1:*", since_modseq)))

    def records_by_uid(self, uids: Iterable[int]) -> Iterator[MessageRecord]:
        uids = sorted(set(uids))
        if not uids:
            return iter(())
        got: dict[int, dict[bytes, Any]] = {}
        batch = self.storage.cfg.fetch_batch * 10
        for i in range(0, len(uids), batch):
            got.update(self._fetch_meta(uid_set(uids[i : i + batch])))
        return iter(self._records(got))

    def expunges_complete_since(self) -> int:
        """With QRESYNC, ``VANISHED (EARLIER)`` names every UID expunged since any modseq (a
        server whose history is shorter names more, never fewer). Without it the server
        names none: no modseq is complete, and the engine compares UID lists."""
        return 0 if self.storage.conn.qresync else 2**63 - 1

    def expunges(self, since_modseq: int = 0) -> list[ExpungeRecord]:
        c = self.storage.conn
        if not c.qresync:
            # Only QRESYNC tells what was expunged; expunges_complete_since() says so, and
            # the engine compares UID lists instead.
            return []
        uids = "1:*"
        if since_modseq <= 0 and self._listed is not None and self._listed_next > 0:
            # Just after a full listing, only UIDs it lacks can have been expunged (as of its
            # SELECT): none in a mailbox without holes, and no command needed then.
            gaps: list[str] = []
            prev = 0
            for u in [*self._listed, self._listed_next]:  # sorted, UIDNEXT last
                if u > prev + 1:
                    gaps.append(f"{prev + 1}:{u - 1}" if u > prev + 2 else str(prev + 1))
                prev = u
            if not gaps:
                return []
            if len(gaps) <= MAX_GAPS:
                uids = ",".join(gaps)
        self._reselect()
        c.take_untagged("VANISHED")
        # VANISHED (EARLIER): the UIDs expunged since the modseq (since 1: all the server
        # remembers). Their GUIDs come from the cache when it knew them, else "" (unknown).
        try:
            raw_fetch(c, uids, ["UID"], [f"CHANGEDSINCE {max(since_modseq, 1)}", "VANISHED"], what="VANISHED")
        except ConnectionLost:
            raise
        except StorageError:
            if self._exists:
                raise
            return []  # some servers refuse UID FETCH 1:* in an empty mailbox
        gone: list[int] = []
        for v in c.take_untagged("VANISHED"):
            text = _s(v)
            text = re.sub(r"^\(EARLIER\)\s*", "", text.strip(), flags=re.I)
            gone.extend(parse_uid_set(text))
        hm = self.status().highestmodseq
        key = (self.folder.raw, self._uidvalidity)
        known = {**disambiguate(list(self.storage.cache.bases_of(key).items())),
                 **self.storage.cache.overrides_of(key)}
        return [ExpungeRecord(u, known.get(u, ""), hm) for u in sorted(set(gone))]

    # -- bodies --------------------------------------------------------------------------
    def open_body(self, uid: int) -> BinaryIO:
        c = self._reading()
        got = raw_fetch(c, str(uid), ["UID", "RFC822.SIZE"], what="size")
        if uid not in got:
            raise NotFoundError(f"{self.name}: message UID {uid} doesn't exist on the server")
        return _buffered(_ChunkedBody(self, uid, got[uid].get(b"RFC822.SIZE")))

    def open_bodies(self, uids: list[int]) -> Iterator[tuple[int, BinaryIO | None]]:
        """Bodies in the given order: small ones fetched many per UID FETCH on up to
        ``imapc_max_connections`` connections in parallel, big ones streamed in chunks."""
        if not uids:
            return
        cfg = self.storage.cfg
        c = self._reading()
        # Sizes the listing brought (RFC822.SIZE of a UID never changes), the rest asked.
        known = self.storage._sizes.get((self.folder.raw, int(c.select_resp.get(b"UIDVALIDITY", 0))), {})
        sizes: dict[int, int] = {u: known[u] for u in uids if u in known}
        want = sorted(set(uids) - sizes.keys())
        for i in range(0, len(want), cfg.fetch_batch * 10):
            got = raw_fetch(c, uid_set(want[i : i + cfg.fetch_batch * 10]), ["UID", "RFC822.SIZE"], what="sizes")
            sizes.update({u: int(d.get(b"RFC822.SIZE", 0)) for u, d in got.items()})
        # Plan: groups of consecutive small messages (by the caller's order), big ones alone
        # (their first chunk fetched ahead like a batch, the rest in partial fetches).
        plan: list[tuple[str, list[int]]] = []
        group: list[int] = []
        total = 0
        for u in uids:
            s = sizes.get(u)
            if s is None or s > cfg.chunk_size:
                if group:
                    plan.append(("batch", group))
                    group, total = [], 0
                plan.append(("one" if s is None else "batch", [u]))
                continue
            if group and (total + s > BATCH_BYTES or len(group) >= cfg.fetch_batch):
                plan.append(("batch", group))
                group, total = [], 0
            group.append(u)
            total += s
        if group:
            plan.append(("batch", group))
        ex = self.storage.executor() if cfg.connections > 1 else None
        pending: collections.deque[tuple[str, list[int], Any]] = collections.deque()
        it = iter(plan)

        def submit() -> None:
            for kind, group in it:
                fut = None
                if kind == "batch":
                    fut = ex.submit(self._fetch_batch, group, sizes) if ex is not None else None
                pending.append((kind, group, fut))
                if fut is not None or kind == "batch":
                    break

        # Two batches asked per connection: each has its next answer coming while the
        # writer takes the current one (at most 2 x BATCH_BYTES per connection held).
        for _ in range(cfg.connections * 2):
            submit()
        try:
            while pending:
                kind, group, fut = pending.popleft()
                submit()
                if kind == "one":
                    u = group[0]
                    if u not in sizes:
                        yield u, None
                    else:
                        yield u, _buffered(_ChunkedBody(self, u, sizes[u]))
                    continue
                bodies = fut.result() if fut is not None else self._fetch_batch(group, sizes, self._reading())
                for u in group:
                    data = bodies.pop(u, None)
                    if isinstance(data, tuple):
                        # A big message's first chunk (or a body bigger than RFC822.SIZE
                        # said: servers' sizes can be wrong): the rest comes in partial
                        # fetches. Its size is not trusted to end the body.
                        yield u, _buffered(_ChunkedBody(self, u, None, data))
                        continue
                    yield u, data
        finally:
            for _k, _g, fut in pending:
                if fut is not None:
                    fut.cancel()

    @contextlib.contextmanager
    def _on(self, conn: Connection | None) -> Iterator[Connection]:
        """``conn``, or (None) a worker connection with this mailbox selected."""
        if conn is not None:
            yield conn
            return
        with self.storage._worker_conn() as wc:
            if wc.selected != self.folder.raw:
                wc.select(self.folder.raw, self.name)
            yield wc

    def _fetch_piece(self, uid: int, off: int, conn: Connection | None = None) -> _Piece | None:
        """One chunk of a body from ``off``, its line ends counted (on a worker connection
        unless ``conn`` is given); None when the server answers nothing for the UID."""
        chunk = self.storage.cfg.chunk_size
        with self._on(conn) as c:
            got = raw_fetch(c, str(uid), [f"BODY.PEEK[]<{off}.{chunk}>"], what=f"body of UID {uid}",
                            literal=chunk, response=chunk + 64 * 1024, why="imapc_fetch_chunk_size")
        item = got.get(uid)
        if item is None:
            return None
        data = _body_item(item) or b""
        return data, chunk_line_ends(data)

    def _fetch_batch(self, uids: list[int], sizes: dict[int, int],
                     conn: Connection | None = None) -> dict[int, CountedBody | _Piece]:
        """Small bodies in one UID FETCH. Each is asked as its first ``chunk_size`` bytes
        (``BODY.PEEK[]<0.n>``), so no literal can be longer than that whatever sizes the
        server claimed, and the whole answer is bounded by twice the planned bytes.

        A whole body comes back counted (:class:`CountedBody`): on a worker connection the
        line ends are counted here, while the writer waits on its disk. A body that filled
        the chunk may be longer: its first chunk comes back as a counted :data:`_Piece`."""
        chunk = self.storage.cfg.chunk_size
        planned = sum(sizes.get(u, 0) for u in uids)
        args = (uid_set(uids), ["UID", f"BODY.PEEK[]<0.{chunk}>"])
        bounds = {"what": "bodies", "literal": chunk, "response": 2 * planned + 4096 * len(uids) + 1024 * 1024,
                  "why": "imapc_fetch_chunk_size", "response_why": "twice the RFC822.SIZEs the server announced"}
        with self._on(conn) as c:
            got = raw_fetch(c, *args, **bounds)  # type: ignore[arg-type]
        out: dict[int, CountedBody | _Piece] = {}
        for u, d in got.items():
            data = _body_item(d)
            if data is not None:
                out[u] = (data, chunk_line_ends(data)) if len(data) >= chunk else CountedBody(data)
        return out

    # -- writing -------------------------------------------------------------------------
    def save(self, requests: Iterable[SaveRequest]) -> list[MessageRecord]:
        c = self.storage.conn
        out: list[MessageRecord] = []
        for req in requests:
            # The literal's size comes first: the body is spooled (1 MiB in memory, the
            # rest on disk) with its line ends made CRLF, then sent in pieces.
            spool, head, size = spool_crlf(req.body, self.storage.cfg.max_line)
            with spool:
                out.extend(self._append_one(c, req, spool, head, size))
        return out

    def _append_one(self, c: Connection, req: SaveRequest, spool: BinaryIO, head: bytes,
                    size: int) -> list[MessageRecord]:
        if req.guid and not self.storage.have_save_guids:
            own = local_header_hash(head, self.storage.cfg.hashed_headers, size)
            if req.guid != own:
                # Its GUID would be forgotten, and the next run would copy it back: refuse.
                raise StorageError(
                    f"{self.name}: can't keep the GUID of a message saved to an IMAP server without a cache "
                    "directory; give one in the location (imapc:~/imapc-cache)"
                )
        flags = sorted(req.flags | req.keywords)
        when = datetime.fromtimestamp(req.internaldate, UTC) if req.internaldate else None
        resp = c.append(self.folder.raw, self.name, flags, when, spool, size)
        m = _APPENDUID.search(resp)
        if m:
            uidvalidity, uid = int(m.group(1)), int(parse_uid_set(m.group(2).decode())[-1])
        else:
            # No UIDPLUS: the newest message is ours (assumes no delivery meanwhile).
            self._reselect()
            uidvalidity = self._uidvalidity
            uid = self._all_uids()[-1]
        self._uidvalidity = uidvalidity
        key = (self.folder.raw, uidvalidity)
        if req.guid:
            self.storage.cache.add("guid", key, {uid: req.guid})
        return list(self.records_by_uid([uid]))[:1]

    def update_flags(self, updates: Iterable[FlagUpdate]) -> list[MessageRecord]:
        updates = list(updates)
        if not updates:
            return []
        c = self._reading(write=True)
        groups: dict[tuple[frozenset[str], frozenset[str]], list[int]] = {}
        for up in updates:
            add = up.add_flags | up.add_keywords
            remove = (up.remove_flags | up.remove_keywords) - add
            groups.setdefault((frozenset(add), frozenset(remove)), []).append(up.uid)
        before = {r.uid: r for r in self.records_by_uid(u.uid for u in updates)}
        for (add, remove), uids in groups.items():
            uids = [u for u in uids if u in before]
            if not uids:
                continue
            with c.guard(f"STORE in {self.name}"):
                if add:
                    c.client.add_flags(uid_set(uids), sorted(add), silent=True)
                if remove:
                    c.client.remove_flags(uid_set(uids), sorted(remove), silent=True)
        after = list(self.records_by_uid(before))
        return [r for r in after if (r.flags, r.keywords) != (before[r.uid].flags, before[r.uid].keywords)]

    def expunge(self, uids: Iterable[int]) -> list[ExpungeRecord]:
        recs = list(self.records_by_uid(uids))
        if not recs:
            return []
        c = self._reading(write=True)
        us = uid_set(r.uid for r in recs)
        with c.guard(f"EXPUNGE in {self.name}"):
            c.client.add_flags(us, [b"\\Deleted"], silent=True)
            if c.uidplus:
                c.client.uid_expunge(us)
            else:
                c.client.expunge()
        hm = self.status().highestmodseq
        return [ExpungeRecord(r.uid, r.guid, hm) for r in recs]

    def update_status(
        self,
        *,
        uidvalidity: int | None = None,
        min_uidnext: int | None = None,
        min_highestmodseq: int | None = None,
        guid: str | None = None,
    ) -> MailboxStatus:
        st = self.status()
        if uidvalidity is not None and uidvalidity != st.uidvalidity:
            # A client can't change the server's UIDVALIDITY; we show the wanted one instead
            # for as long as the server's stays what it is now (UIDs are the server's anyway).
            real = int(self.storage.conn_status(self.folder.raw, self.name)[b"UIDVALIDITY"])
            self.storage.cache.set_uidvalidity(self.folder.raw, real, uidvalidity)
        if guid is not None:
            self.storage.cache.set_mbox_guid(self.name, guid)
        # UIDNEXT and HIGHESTMODSEQ belong to the server; a higher wish is ignored (the next
        # fast sync then compares this mailbox fully, which is correct, only slower).
        return self.status()


#: imapc_special_use_names=yes: the names special-use folders get on the other side.
SPECIAL_USE_NAMES = {"\\sent": "Sent", "\\drafts": "Drafts", "\\trash": "Trash", "\\junk": "Junk",
                     "\\archive": "Archive", "\\all": "Archive"}


def _special_use_names(folders: dict[str, ServerFolder]) -> dict[str, ServerFolder]:
    """Give special-use folders the usual names (``[Gmail]/Sent Mail`` -> ``Sent``) where that
    name is free; a folder that has the name already keeps it, and \\Archive beats \\All."""
    taken = set(folders)
    out = dict(folders)
    order = sorted(folders.values(), key=lambda f: (f.special_use.lower() == "\\all", f.name))
    for f in order:
        target = SPECIAL_USE_NAMES.get(f.special_use.lower())
        if not target or f.name == target or target in taken or not f.selectable:
            continue
        del out[f.name]
        out[target] = attrs.evolve(f, name=target)
        taken.add(target)
    return out


def _gmail_labelled(d: dict[bytes, Any]) -> bool:
    """Whether a message of Gmail's All Mail also sits in some label folder (then it is
    copied from there, not from All Mail again)."""
    labels = {_s(x).lower() for x in d.get(b"X-GM-LABELS", ())}
    return bool(labels - {"\\important", "\\starred"})
