"""Dovecot's ``dovecot.mailbox.log``: the folder change log dsync reads and writes.

24-byte records: type (u8), 3 zero bytes, a 16-byte GUID or name hash, a big-endian u32
UNIX time. Rotated to ``.log.2`` at 4 KiB; readers read ``.2`` first. Records are appended
with single ``O_APPEND`` writes, which is how Dovecot writes them too (no lock).
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections.abc import Iterable

from .errors import StorageError
from .model import MailboxLogRecord, MailboxLogType

RECORD = struct.Struct(">B3x16sI")
ROTATE_SIZE = 4096
FILENAME = "dovecot.mailbox.log"
# Dovecot 2.3 treats a type above 5 as corruption and deletes the whole log.
_WRITABLE = {
    MailboxLogType.DELETE_MAILBOX,
    MailboxLogType.DELETE_DIR,
    MailboxLogType.RENAME,
    MailboxLogType.SUBSCRIBE,
    MailboxLogType.UNSUBSCRIBE,
}


def name_hash(vname: str) -> str:
    """The 128-bit hash Dovecot logs for a name: the first 16 bytes of its SHA-1, as hex."""
    return hashlib.sha1(vname.encode("utf-8")).digest()[:16].hex()


def read_log(path: str) -> list[MailboxLogRecord]:
    """Records of ``path.2`` then ``path``; broken trailing bytes and unknown types skipped."""
    out: list[MailboxLogRecord] = []
    for p in (path + ".2", path):
        try:
            with open(p, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise StorageError(f"Cannot read {p}: {e.strerror}") from None
        usable = len(data) - len(data) % RECORD.size
        for off in range(0, usable, RECORD.size):
            rtype, guid, ts = RECORD.unpack_from(data, off)
            try:
                kind = MailboxLogType(rtype)
            except ValueError:
                continue
            if guid == bytes(16):
                continue
            out.append(MailboxLogRecord(kind, guid.hex(), ts))
    return out


def append_log(path: str, records: Iterable[MailboxLogRecord]) -> None:
    """Append records, rotating the file at 4 KiB as Dovecot does."""
    data = b""
    for r in records:
        if r.type not in _WRITABLE:
            raise ValueError(f"refusing to write mailbox log type {r.type!r}: Dovecot 2.3 would discard the log")
        guid = bytes.fromhex(r.guid)
        if len(guid) != 16 or guid == bytes(16):
            raise ValueError(f"mailbox log record needs a non-zero 128-bit GUID, got {r.guid!r}")
        data += RECORD.pack(int(r.type), guid, r.timestamp & 0xFFFFFFFF)
    if not data:
        return
    try:
        try:
            if os.stat(path).st_size >= ROTATE_SIZE:
                os.replace(path, path + ".2")
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        raise StorageError(f"Cannot write {path}: {e.strerror}") from None


def now() -> int:
    return int(time.time())


__all__ = ["read_log", "append_log", "name_hash", "FILENAME", "RECORD"]
