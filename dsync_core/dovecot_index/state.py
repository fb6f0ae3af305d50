"""The state of a Dovecot index: ``dovecot.index`` plus the replayed transaction log(s).

:meth:`IndexState.load` reads the main index (if any) and replays ``dovecot.index.log``
(and ``.log.2`` when the index or the history starts there) the way Dovecot's
``mail_index_sync_map`` does (storage-formats §6.9): appends, flag and keyword updates,
external expunges, header and extension updates, with the running modseq of §6.8. The
result knows every message's UID, flags, keywords and modseq, the base header fields
(UIDVALIDITY, next UID, ...), every extension's header and per-message records, and the
expunges the logs still remember (with their modseqs and GUIDs).

:meth:`IndexState.refresh` continues from where the last read stopped when the log only
grew (or was rotated, when the rotated file is still there), so re-reading a busy mailbox
costs what changed, not its size. Reading takes no lock, as in Dovecot.
"""

from __future__ import annotations

import hashlib
import os
import struct
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping

import attrs

from ..errors import CorruptError
from . import logfile as lf

INDEX_PREFIX = "dovecot.index"
BASE_HEADER_SIZE = 120
OFF_INDEXID = 16
OFF_UID_VALIDITY = 24
OFF_NEXT_UID = 28
OFF_FIRST_RECENT_UID = 48
OFF_LOG_FILE_SEQ = 60
OFF_LOG_TAIL = 64
OFF_LOG_HEAD = 68

FLAG_ANSWERED = 0x01
FLAG_FLAGGED = 0x02
FLAG_DELETED = 0x04
FLAG_SEEN = 0x08
FLAG_DRAFT = 0x10
FLAG_BACKEND = 0x40  # sdbox: message is in ALT storage
SYSTEM_FLAG_BITS = {
    "\\Answered": FLAG_ANSWERED, "\\Flagged": FLAG_FLAGGED, "\\Deleted": FLAG_DELETED,
    "\\Seen": FLAG_SEEN, "\\Draft": FLAG_DRAFT,
}
USER_FLAG_MASK = 0x1F

EXT_KEYWORDS = "keywords"
EXT_MODSEQ = "modseq"
MAX_FILE_BYTES = 1 << 30


def flags_to_bits(flags: Iterable[str]) -> int:
    bits = 0
    for f in flags:
        bits |= SYSTEM_FLAG_BITS.get(f, 0)
    return bits


def bits_to_flags(bits: int) -> frozenset[str]:
    return frozenset(name for name, bit in SYSTEM_FLAG_BITS.items() if bits & bit)


def guid_128(guid: str) -> bytes:
    """A message GUID string as Dovecot's 128 bits (§0.1): hex decoded, else SHA-1 tail."""
    if len(guid) == 32:
        try:
            return bytes.fromhex(guid)
        except ValueError:
            pass
    return hashlib.sha1(guid.encode("utf-8")).digest()[4:20]


@attrs.define
class Extension:
    name: str
    reset_id: int = 0
    hdr: bytearray = attrs.field(factory=bytearray)
    record_size: int = 0
    record_align: int = 0
    records: dict[int, bytes] = attrs.field(factory=dict)

    def record_int(self, uid: int, fmt: str = "<I") -> int:
        rec = self.records.get(uid)
        if rec is None or len(rec) < struct.calcsize(fmt):
            return 0
        return struct.unpack_from(fmt, rec, 0)[0]


@attrs.define
class Message:
    uid: int
    flags: int
    # Immutable and shared when empty: a set per message cost 200 bytes x every message.
    keywords: frozenset[str] = frozenset()
    modseq: int = 0


class MessageTable(Mapping[int, Message]):
    """Every message of an index: UID, flags, keywords and modseq, in parallel arrays
    (14 bytes a message instead of a ~300-byte object and dict slot: a 100k-message
    mailbox's state fits in 1.4 MB). Reads give :class:`Message` snapshots; changes go
    through the ``set_*`` methods. UIDs are kept ascending; an expunged message leaves a
    hole that is squeezed out once holes are half the table."""

    __slots__ = ("_uids", "_flags", "_modseqs", "_alive", "_keywords", "_len")

    def __init__(self) -> None:
        self._uids = array("I")
        self._flags = bytearray()
        self._modseqs = array("Q")
        self._alive = bytearray()
        self._keywords: dict[int, frozenset[str]] = {}  # only messages that have some
        self._len = 0

    def _find(self, uid: int) -> int:
        """The slot of a live ``uid``, or -1."""
        i = bisect_left(self._uids, uid)
        if i < len(self._uids) and self._uids[i] == uid and self._alive[i]:
            return i
        return -1

    def _slot(self, uid: int) -> int:
        i = self._find(uid)
        if i < 0:
            raise KeyError(uid)
        return i

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self._find(uid) >= 0

    def __iter__(self) -> Iterator[int]:
        alive = self._alive
        return (u for i, u in enumerate(self._uids) if alive[i])

    def _message(self, i: int) -> Message:
        uid = self._uids[i]
        return Message(uid, self._flags[i], self._keywords.get(uid, frozenset()), self._modseqs[i])

    def __getitem__(self, uid: int) -> Message:
        return self._message(self._slot(uid))

    def get(self, uid: int, default: Message | None = None) -> Message | None:  # type: ignore[override]
        i = self._find(uid)
        return self._message(i) if i >= 0 else default

    def values(self) -> Iterator[Message]:  # type: ignore[override]
        return self.values_since(-1)

    def values_since(self, modseq: int) -> Iterator[Message]:
        """Messages with a modseq above ``modseq``, ascending UID (-1: all)."""
        kw, empty = self._keywords, frozenset()
        for uid, flags, mod, alive in zip(self._uids, self._flags, self._modseqs, self._alive):
            if alive and mod > modseq:
                yield Message(uid, flags, kw.get(uid, empty), mod)

    def count_without_flag(self, bit: int) -> int:
        """Messages whose flags lack ``bit`` (as unseen counts \\Seen), at C speed."""
        table = bytes(0 if i & bit else 1 for i in range(256))
        dead = len(self._uids) - self._len
        # A hole's flags byte is whatever it was: count holes out by their flags.
        holes = sum(1 for i, a in enumerate(self._alive) if not a and not self._flags[i] & bit) if dead else 0
        return self._flags.translate(table).count(1) - holes

    def count_from_uid(self, uid: int) -> int:
        """Messages with a UID of at least ``uid``."""
        i = bisect_left(self._uids, uid)
        return len(self._uids) - i - self._alive[i:].count(0)

    def items(self) -> Iterator[tuple[int, Message]]:  # type: ignore[override]
        return ((m.uid, m) for m in self.values())

    def uids_between(self, uid1: int, uid2: int) -> list[int]:
        """Live UIDs in ``uid1..uid2`` (inclusive), ascending."""
        lo, hi = bisect_left(self._uids, uid1), bisect_right(self._uids, uid2)
        alive = self._alive
        return [self._uids[i] for i in range(lo, hi) if alive[i]]

    def add(self, uid: int, flags: int, modseq: int = 0, keywords: frozenset[str] = frozenset()) -> bool:
        """A new message; False (and nothing changed) when ``uid`` is already there."""
        uids = self._uids
        if uids and uid <= uids[-1]:
            i = bisect_left(uids, uid)
            if uids[i] == uid:
                if self._alive[i]:
                    return False
                # The hole of an expunged message: reused in place.
                self._flags[i], self._modseqs[i], self._alive[i] = flags & 0xFF, modseq, 1
            else:
                uids.insert(i, uid)
                self._flags.insert(i, flags & 0xFF)
                self._modseqs.insert(i, modseq)
                self._alive.insert(i, 1)
        else:
            uids.append(uid)
            self._flags.append(flags & 0xFF)
            self._modseqs.append(modseq)
            self._alive.append(1)
        if keywords:
            self._keywords[uid] = keywords
        self._len += 1
        return True

    def add_many(self, records: list[tuple[int, int]], modseq: int) -> int:
        """``(uid, flags)`` of an append record, all with ``modseq``; UIDs already there
        (or 0) are skipped. Returns the highest UID named (0 if none)."""
        if not records:
            return 0
        uids = self._uids
        first, top = records[0][0], max(u for u, _ in records)
        ascending = all(records[i][0] < records[i + 1][0] for i in range(len(records) - 1))
        if ascending and first >= 1 and (not uids or first > uids[-1]):
            # The usual case (Dovecot appends in ascending UID order): arrays extended at once.
            n = len(records)
            uids.extend(u for u, _ in records)
            self._flags.extend(f & 0xFF for _, f in records)
            self._modseqs.extend(array("Q", [modseq]) * n)
            self._alive.extend(b"\x01" * n)
            self._len += n
            return top
        for uid, flags in records:
            if uid >= 1:
                self.add(uid, flags, modseq)
        return top

    def remove(self, uid: int) -> bool:
        i = self._find(uid)
        if i < 0:
            return False
        self._alive[i] = 0
        self._keywords.pop(uid, None)
        self._len -= 1
        if len(self._uids) > 64 and self._len * 2 < len(self._uids):
            self._squeeze()
        return True

    def _squeeze(self) -> None:
        keep = [i for i in range(len(self._uids)) if self._alive[i]]
        self._uids = array("I", (self._uids[i] for i in keep))
        self._flags = bytearray(self._flags[i] for i in keep)
        self._modseqs = array("Q", (self._modseqs[i] for i in keep))
        self._alive = bytearray(b"\x01" * len(keep))

    def set_flags(self, uid: int, flags: int) -> None:
        self._flags[self._slot(uid)] = flags & 0xFF

    def set_modseq(self, uid: int, modseq: int) -> None:
        self._modseqs[self._slot(uid)] = modseq

    def set_keywords(self, uid: int, keywords: frozenset[str]) -> None:
        self._slot(uid)
        if keywords:
            self._keywords[uid] = keywords
        else:
            self._keywords.pop(uid, None)

    def keywords_of(self, uid: int) -> frozenset[str]:
        self._slot(uid)
        return self._keywords.get(uid, frozenset())

    def modseq_of(self, uid: int) -> int:
        return self._modseqs[self._slot(uid)]

    def fill_modseqs(self, modseq: int) -> None:
        """Messages without a modseq (0) get ``modseq``."""
        mods = self._modseqs
        for i in range(len(mods)):
            if mods[i] == 0:
                mods[i] = modseq

    def update_flags(self, uid: int, add: int, remove: int) -> None:
        i = self._slot(uid)
        self._flags[i] = (self._flags[i] & ~remove & 0xFF) | add

    def raise_modseqs(self, at_least: int) -> None:
        """Every message's modseq to at least ``at_least``."""
        mods = self._modseqs
        for i in range(len(mods)):
            if mods[i] < at_least:
                mods[i] = at_least


@attrs.frozen
class Expunge:
    uid: int
    guid: bytes  # 16 bytes, or b"" when the log record did not say
    modseq: int


@attrs.frozen
class _FileStamp:
    ino: int
    seq: int
    indexid: int


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return lf.read_bounded(f, MAX_FILE_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise CorruptError(f"Cannot read {path}: {e.strerror}") from None


class IndexState:
    """One index as Dovecot would see it after syncing to the end of its log."""

    def __init__(self, index_dir: str, prefix: str = INDEX_PREFIX) -> None:
        self.dir = index_dir
        self.prefix = prefix
        self.base = bytearray(BASE_HEADER_SIZE)
        struct.pack_into("<I", self.base, OFF_NEXT_UID, 1)
        struct.pack_into("<I", self.base, OFF_FIRST_RECENT_UID, 1)
        self.ext_order: list[str] = []
        self.extensions: dict[str, Extension] = {}
        self.messages = MessageTable()
        self.keywords: list[str] = []
        self.expunges: list[Expunge] = []
        self.log_modseq = 0
        self.history_from = 0  # expunges() is complete for since_modseq >= this
        self.deleted = False
        self.exists = False
        self._log: _FileStamp | None = None
        self._log_offset = 0
        self._log_indexid = 0
        self._index_modseq = 0
        self._cur_ext: Extension | None = None
        self._cur_ext_ignore = True
        self._cur_rec_size = 0
        self._pending_seed = False

    # -- paths -------------------------------------------------------------------------
    @property
    def index_path(self) -> str:
        return os.path.join(self.dir, self.prefix)

    @property
    def log_path(self) -> str:
        return self.index_path + lf.LOG_SUFFIX

    # -- header fields -----------------------------------------------------------------
    def _u32(self, off: int) -> int:
        return struct.unpack_from("<I", self.base, off)[0]

    @property
    def indexid(self) -> int:
        return self._log_indexid or self._u32(OFF_INDEXID)

    @property
    def uid_validity(self) -> int:
        return self._u32(OFF_UID_VALIDITY)

    @property
    def next_uid(self) -> int:
        return max(self._u32(OFF_NEXT_UID), 1)

    @property
    def first_recent_uid(self) -> int:
        return self._u32(OFF_FIRST_RECENT_UID)

    @property
    def highest_modseq(self) -> int:
        return max(self.log_modseq, self._modseq_hdr())

    @property
    def log_offset(self) -> int:
        """Where the replay of the current log stopped (the end of its last complete record)."""
        return self._log_offset

    def _modseq_hdr(self) -> int:
        ext = self.extensions.get(EXT_MODSEQ)
        if ext is None or len(ext.hdr) < 8:
            return 0
        return struct.unpack_from("<Q", ext.hdr, 0)[0]

    def ext_header(self, name: str) -> bytes | None:
        ext = self.extensions.get(name)
        return bytes(ext.hdr) if ext is not None else None

    def message_keywords_sorted(self, msg: Message) -> list[str]:
        """A message's keywords in the index's keyword order (as Dovecot prints them)."""
        return [k for k in self.keywords if k in msg.keywords]

    def expunges_since(self, since_modseq: int) -> list[Expunge]:
        return [e for e in self.expunges if e.modseq > since_modseq]

    # -- loading -----------------------------------------------------------------------
    @classmethod
    def load(cls, index_dir: str, prefix: str = INDEX_PREFIX) -> IndexState:
        """Read the index; a missing log gives ``exists=False`` and an empty state."""
        last: CorruptError | None = None
        for _ in range(5):
            state = cls(index_dir, prefix)
            try:
                state._load_once()
                return state
            except _Raced as e:
                last = CorruptError(str(e))
        assert last is not None
        raise last

    def _load_once(self) -> None:
        log_data = _read(self.log_path)
        if log_data is None:
            if os.path.exists(self.index_path):
                raise CorruptError(f"Index {self.index_path} has no transaction log {self.log_path}")
            return
        try:
            log_ino = os.stat(self.log_path).st_ino
        except FileNotFoundError:
            raise _Raced(f"{self.log_path} vanished while reading") from None
        log_hdr = lf.parse_header(log_data, self.log_path)
        log2_path = self.log_path + ".2"
        log2_data = _read(log2_path)
        log2_hdr = None
        if log2_data is not None:
            try:
                log2_hdr = lf.parse_header(log2_data, log2_path)
            except CorruptError:
                log2_hdr = None
            if log2_hdr is not None and (log2_hdr.file_seq != log_hdr.prev_file_seq
                                         or log2_hdr.indexid != log_hdr.indexid):
                log2_hdr = None  # an older leftover, not the log before this one
        index_data = _read(self.index_path)
        start_seq, start_off = 0, 0
        if index_data is not None:
            self._load_index(index_data)
            if self._u32(OFF_INDEXID) != log_hdr.indexid:
                raise CorruptError(
                    f"Index {self.index_path} does not belong to its log (indexid "
                    f"{self._u32(OFF_INDEXID)} != {log_hdr.indexid}); run doveadm force-resync"
                )
            start_seq, start_off = self._u32(OFF_LOG_FILE_SEQ), self._u32(OFF_LOG_HEAD)
        files: list[tuple[bytes, lf.LogHeader]] = []
        if log2_hdr is not None and log2_data is not None:
            files.append((log2_data, log2_hdr))
        files.append((log_data, log_hdr))
        if index_data is None:
            first = files[0][1]
            if first.prev_file_seq != 0:
                raise CorruptError(
                    f"Transaction log {self.log_path} does not reach back to the mailbox's creation "
                    "and there is no dovecot.index; run doveadm force-resync"
                )
            start_seq, start_off = first.file_seq, first.hdr_size
        elif start_seq not in {h.file_seq for _, h in files}:
            if start_seq > log_hdr.file_seq:
                raise _Raced(f"{self.index_path} is newer than {self.log_path}")
            # The index is older than every log we have: Dovecot rotated twice meanwhile?
            raise _Raced(f"{self.index_path} refers to log file {start_seq}, which is gone")
        self.history_from = files[0][1].initial_modseq
        self._log_indexid = log_hdr.indexid
        applying = False
        for data, hdr in files:
            if hdr.file_seq == start_seq:
                applying = True
                begin = max(start_off, hdr.hdr_size)
            else:
                begin = hdr.hdr_size if applying else len(data) + 1
            end = self._replay(data, hdr, hdr.hdr_size, begin)
        self._log = _FileStamp(log_ino, log_hdr.file_seq, log_hdr.indexid)
        self._log_offset = end
        self.exists = True
        try:
            if os.stat(self.log_path).st_ino != log_ino:
                raise _Raced(f"{self.log_path} was rotated while reading")
        except FileNotFoundError:
            raise _Raced(f"{self.log_path} vanished while reading") from None

    def refresh(self) -> IndexState:
        """Bring the state up to date; continues incrementally when it can.

        Returns ``self`` when continuing worked, else a freshly loaded state.
        """
        if self._log is None:
            return IndexState.load(self.dir, self.prefix)
        try:
            st = os.stat(self.log_path)
        except FileNotFoundError:
            return IndexState.load(self.dir, self.prefix)
        if st.st_ino == self._log.ino:
            if st.st_size == self._log_offset:
                return self
            data = _read(self.log_path)
            if data is None:
                return IndexState.load(self.dir, self.prefix)
            hdr = lf.parse_header(data, self.log_path)
            if hdr.file_seq != self._log.seq:
                return IndexState.load(self.dir, self.prefix)
            self._log_offset = self._replay(data, hdr, self._log_offset, self._log_offset)
            return self
        # Rotated: finish the old file (now .log.2) and continue with the new one.
        old = _read(self.log_path + ".2")
        new = _read(self.log_path)
        if old is None or new is None:
            return IndexState.load(self.dir, self.prefix)
        try:
            old_hdr = lf.parse_header(old, self.log_path + ".2")
            new_hdr = lf.parse_header(new, self.log_path)
        except CorruptError:
            return IndexState.load(self.dir, self.prefix)
        if (old_hdr.file_seq != self._log.seq or new_hdr.prev_file_seq != old_hdr.file_seq
                or new_hdr.indexid != self._log.indexid):
            return IndexState.load(self.dir, self.prefix)
        self._replay(old, old_hdr, self._log_offset, self._log_offset)
        self._log = _FileStamp(st.st_ino, new_hdr.file_seq, new_hdr.indexid)
        self.history_from = old_hdr.initial_modseq
        self.expunges = [e for e in self.expunges if e.modseq > self.history_from]
        self._log_offset = self._replay(new, new_hdr, new_hdr.hdr_size, new_hdr.hdr_size)
        return self

    # -- dovecot.index -----------------------------------------------------------------
    def _load_index(self, data: bytes) -> None:
        path = self.index_path
        if len(data) < BASE_HEADER_SIZE or data[0] != 7:
            raise CorruptError(f"Index {path}: not a version 7 index")
        base_size, header_size, record_size = struct.unpack_from("<HII", data, 2)
        if data[12] & 1 == 0:
            raise CorruptError(f"Index {path}: written by a big-endian host (not supported)")
        if base_size < BASE_HEADER_SIZE or header_size < base_size or header_size > len(data) or record_size < 8:
            raise CorruptError(f"Index {path}: broken header sizes")
        self.base[:] = data[:BASE_HEADER_SIZE]
        count = self._u32(32)
        exts: list[tuple[Extension, int]] = []
        off = (base_size + 7) & ~7
        while off + 16 <= header_size:
            hdr_size, reset_id, rec_off, rec_size, align, name_size = struct.unpack_from("<IIHHHH", data, off)
            name = data[off + 16 : off + 16 + name_size].decode("ascii", "replace")
            data_off = (off + 16 + name_size + 7) & ~7
            if data_off + hdr_size > header_size or (rec_size and rec_off + rec_size > record_size):
                raise CorruptError(f"Index {path}: broken extension {name!r}")
            ext = Extension(name, reset_id, bytearray(data[data_off : data_off + hdr_size]), rec_size, align)
            exts.append((ext, rec_off))
            self.ext_order.append(name)
            self.extensions[name] = ext
            off = (data_off + hdr_size + 7) & ~7
        if header_size + count * record_size > len(data):
            raise CorruptError(f"Index {path}: {count} records do not fit in the file")
        kw_ext = self.extensions.get(EXT_KEYWORDS)
        if kw_ext is not None:
            self.keywords = _parse_keyword_header(bytes(kw_ext.hdr), path)
        modseq_hdr = self._modseq_hdr()
        self._index_modseq = modseq_hdr
        for i in range(count):
            roff = header_size + i * record_size
            uid, flags = struct.unpack_from("<IB", data, roff)
            msg = Message(uid, flags)
            for ext, rec_off in exts:
                if not ext.record_size:
                    continue
                raw = data[roff + rec_off : roff + rec_off + ext.record_size]
                if ext.name == EXT_KEYWORDS:
                    msg.keywords = frozenset(k for j, k in enumerate(self.keywords) if raw[j // 8] >> (j % 8) & 1)
                elif ext.name == EXT_MODSEQ:
                    msg.modseq = struct.unpack_from("<Q", raw, 0)[0]
                elif ext.name != "cache":
                    ext.records[uid] = bytes(raw)
            self.messages.add(uid, msg.flags, msg.modseq, msg.keywords)
        self._pending_seed = True

    # -- log replay --------------------------------------------------------------------
    def _replay(self, data: bytes, hdr: lf.LogHeader, start: int, apply_from: int) -> int:
        """Replay records of one log file from ``start``; apply changes from ``apply_from``.

        Records before ``apply_from`` are already in the main index: only the running
        modseq and the expunge history are taken from them. Returns the end offset.
        """
        if start <= hdr.hdr_size:
            self.log_modseq = hdr.initial_modseq
            start = hdr.hdr_size
        end = start
        for rec in lf.iter_records(data, start):
            apply = rec.offset >= apply_from
            if apply and self._pending_seed:
                self._seed_snapshot_modseqs()
            self._apply(rec, apply)
            end = rec.end
        if self._pending_seed and apply_from <= end:
            self._seed_snapshot_modseqs()  # dovecot.index was synced to the end of the log
        return end

    def _seed_snapshot_modseqs(self) -> None:
        """Messages from dovecot.index without a modseq record get the mailbox's modseq at
        the snapshot (Dovecot reports its highest modseq for them until it fills them in)."""
        self._pending_seed = False
        fallback = max(self.log_modseq, self._index_modseq)
        self.messages.fill_modseqs(fallback)

    def _uids_in(self, uid1: int, uid2: int) -> list[int]:
        if uid1 > uid2:
            uid1, uid2 = uid2, uid1
        return self.messages.uids_between(uid1, uid2)

    def _apply(self, rec: lf.LogRecord, apply: bool) -> None:
        kind, p = rec.kind, rec.payload
        if kind == lf.T_APPEND:
            self.log_modseq += 1
            if apply and len(p) >= 8:
                # A bulk append holds thousands of records: one pass, the next UID set once.
                top = self.messages.add_many(list(struct.iter_unpack("<IB3x", p[: len(p) & ~7])), self.log_modseq)
                struct.pack_into("<I", self.base, OFF_NEXT_UID, max(self.next_uid, top + 1))
        elif kind in (lf.T_EXPUNGE, lf.T_EXPUNGE_GUID):
            if not rec.external:
                return  # only a request for the backend; nothing is expunged yet
            self.log_modseq += 1
            if kind == lf.T_EXPUNGE_GUID:
                for i in range(0, len(p) - 19, 20):
                    uid = struct.unpack_from("<I", p, i)[0]
                    guid = p[i + 4 : i + 20]
                    self.expunges.append(Expunge(uid, guid, self.log_modseq))
                    if apply:
                        self._drop(uid)
            elif apply:
                guid_ext = self.extensions.get("guid")
                for i in range(0, len(p) - 7, 8):
                    u1, u2 = struct.unpack_from("<II", p, i)
                    for uid in self._uids_in(u1, u2):
                        guid = guid_ext.records.get(uid, b"") if guid_ext else b""
                        self.expunges.append(Expunge(uid, guid[:16], self.log_modseq))
                        self._drop(uid)
        elif kind == lf.T_FLAG_UPDATE:
            counts = lf.flag_update_counts(p)
            if counts:
                self.log_modseq += 1
            if apply:
                for i in range(0, len(p) - 11, 12):
                    u1, u2, add, remove, inc = struct.unpack_from("<IIBBB", p, i)
                    visible = inc or (add | remove) & ~lf.INTERNAL_FLAGS & 0xFF
                    for uid in self._uids_in(u1, u2):
                        self.messages.update_flags(uid, add, remove)
                        if visible:
                            self.messages.set_modseq(uid, self.log_modseq)
        elif kind == lf.T_KEYWORD_UPDATE:
            self.log_modseq += 1
            if apply and len(p) >= 4:
                modify, name_size = struct.unpack_from("<BxH", p, 0)
                name = p[4 : 4 + name_size].decode("utf-8", "replace")
                if name not in self.keywords:
                    self.keywords.append(name)
                self._ensure_ext(EXT_KEYWORDS)
                off = (4 + name_size + 3) & ~3
                for i in range(off, len(p) - 7, 8):
                    u1, u2 = struct.unpack_from("<II", p, i)
                    for uid in self._uids_in(u1, u2):
                        kws = self.messages.keywords_of(uid)
                        self.messages.set_keywords(uid, kws | {name} if modify == 0 else kws - {name})
                        self.messages.set_modseq(uid, self.log_modseq)
        elif kind == lf.T_KEYWORD_RESET:
            self.log_modseq += 1
            if apply:
                for i in range(0, len(p) - 7, 8):
                    u1, u2 = struct.unpack_from("<II", p, i)
                    for uid in self._uids_in(u1, u2):
                        self.messages.set_keywords(uid, frozenset())
                        self.messages.set_modseq(uid, self.log_modseq)
        elif kind == lf.T_MODSEQ_UPDATE:
            for i in range(0, len(p) - 11, 12):
                uid, low, high = struct.unpack_from("<III", p, i)
                value = (high << 32) | low
                self.log_modseq = max(self.log_modseq, value)
                if apply and uid in self.messages:
                    self.messages.set_modseq(uid, max(self.messages.modseq_of(uid), value))
        elif kind == lf.T_ATTRIBUTE_UPDATE:
            self.log_modseq += 1
        elif not apply:
            return
        elif kind == lf.T_HEADER_UPDATE:
            for off, data in _updates(p, "<HH"):
                if off < BASE_HEADER_SIZE:
                    chunk = data[: BASE_HEADER_SIZE - off]
                    self.base[off : off + len(chunk)] = chunk
        elif kind == lf.T_EXT_INTRO:
            self._ext_intro(p)
        elif kind == lf.T_EXT_RESET:
            if self._cur_ext is not None and len(p) >= 5:
                new_reset, preserve = struct.unpack_from("<IB", p, 0)
                self._cur_ext.reset_id = new_reset
                if not preserve:
                    self._cur_ext.hdr[:] = bytes(len(self._cur_ext.hdr))
                    self._cur_ext.records.clear()
                self._cur_ext_ignore = False
        elif kind in (lf.T_EXT_HDR_UPDATE, lf.T_EXT_HDR_UPDATE32):
            ext = self._cur_ext
            if ext is None or self._cur_ext_ignore:
                return
            fmt = "<HH" if kind == lf.T_EXT_HDR_UPDATE else "<II"
            for off, data in _updates(p, fmt):
                chunk = data[: max(0, len(ext.hdr) - off)]
                ext.hdr[off : off + len(chunk)] = chunk
                if ext.name == EXT_MODSEQ:
                    self._index_modseq = max(self._index_modseq, self._modseq_hdr())
        elif kind == lf.T_EXT_REC_UPDATE:
            ext = self._cur_ext
            size = self._cur_rec_size
            if ext is None or self._cur_ext_ignore or size == 0:
                return
            step = 4 + ((size + 3) & ~3)
            for i in range(0, len(p) - step + 1, step):
                uid = struct.unpack_from("<I", p, i)[0]
                if uid in self.messages:
                    data = p[i + 4 : i + 4 + size]
                    if ext.name == EXT_MODSEQ and size >= 8:
                        self.messages.set_modseq(uid, struct.unpack_from("<Q", data, 0)[0])
                    else:
                        ext.records[uid] = data[: ext.record_size].ljust(ext.record_size, b"\0")
        elif kind == lf.T_EXT_ATOMIC_INC:
            ext = self._cur_ext
            if ext is None or self._cur_ext_ignore or ext.record_size not in (1, 2, 4, 8):
                return
            fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[ext.record_size]
            mask = (1 << (8 * ext.record_size)) - 1
            for i in range(0, len(p) - 7, 8):
                uid, diff = struct.unpack_from("<Ii", p, i)
                if uid in self.messages:
                    value = (ext.record_int(uid, fmt) + diff) & mask
                    ext.records[uid] = struct.pack(fmt, value)
        elif kind == lf.T_INDEX_DELETED:
            self.deleted = True
        elif kind == lf.T_INDEX_UNDELETED:
            self.deleted = False

    def _drop(self, uid: int) -> None:
        if not self.messages.remove(uid):
            return
        for ext in self.extensions.values():
            ext.records.pop(uid, None)

    def _ensure_ext(self, name: str) -> Extension:
        ext = self.extensions.get(name)
        if ext is None:
            ext = Extension(name)
            self.extensions[name] = ext
            self.ext_order.append(name)
        return ext

    def _ext_intro(self, p: bytes) -> None:
        self._cur_ext, self._cur_ext_ignore, self._cur_rec_size = None, True, 0
        if len(p) < 20:
            return
        ext_id, reset_id, hdr_size, rec_size, rec_align, flags, name_size = struct.unpack_from("<IIIHHHH", p, 0)
        if ext_id != lf.EXT_ID_BY_NAME:
            if ext_id >= len(self.ext_order):
                raise CorruptError(f"Transaction log {self.log_path}: extension introduction for unknown id {ext_id}")
            name = self.ext_order[ext_id]
        else:
            name = p[20 : 20 + name_size].decode("ascii", "replace")
        self._cur_rec_size = rec_size
        ext = self.extensions.get(name)
        if ext is None:
            ext = self._ensure_ext(name)
            ext.reset_id, ext.record_size, ext.record_align = reset_id, rec_size, rec_align
            ext.hdr = bytearray(hdr_size)
            if name == EXT_MODSEQ:
                # Dovecot starts tracking modseqs here: every existing message gets at
                # least the current highest modseq (mail_index_modseq_sync_init).
                self.messages.raise_modseqs(self.log_modseq)
        elif reset_id != ext.reset_id:
            self._cur_ext = ext  # reset since this writer looked: ignore all but resets
            return
        else:
            no_shrink = bool(flags & 0x1)
            if hdr_size > len(ext.hdr) or (hdr_size < len(ext.hdr) and not no_shrink):
                ext.hdr = (ext.hdr + bytes(max(0, hdr_size - len(ext.hdr))))[:hdr_size]
            if rec_size != ext.record_size and (rec_size > ext.record_size or not no_shrink):
                ext.record_size, ext.record_align = rec_size, rec_align
                ext.records = {u: r[:rec_size].ljust(rec_size, b"\0") for u, r in ext.records.items()}
        self._cur_ext, self._cur_ext_ignore = ext, False


class _Raced(Exception):
    """The files changed under us while reading (rotation, index rewrite): read again."""


def _updates(p: bytes, fmt: str) -> Iterable[tuple[int, bytes]]:
    """{offset, size, data, pad to 4} entries of a (EXT_)HEADER_UPDATE payload."""
    hsize = struct.calcsize(fmt)
    i = 0
    while i + hsize <= len(p):
        off, size = struct.unpack_from(fmt, p, i)
        data = p[i + hsize : i + hsize + size]
        yield off, data
        i = (i + hsize + size + 3) & ~3


def _parse_keyword_header(hdr: bytes, path: str) -> list[str]:
    if len(hdr) < 4:
        return []
    count = struct.unpack_from("<I", hdr, 0)[0]
    names_start = 4 + 8 * count
    if names_start > len(hdr):
        raise CorruptError(f"Index {path}: broken keywords header")
    names: list[str] = []
    for i in range(count):
        name_off = struct.unpack_from("<I", hdr, 4 + 8 * i + 4)[0]
        start = names_start + name_off
        end = hdr.find(b"\0", start)
        if start >= len(hdr) or end < 0:
            raise CorruptError(f"Index {path}: broken keyword name {i}")
        names.append(hdr[start:end].decode("utf-8", "replace"))
    return names
