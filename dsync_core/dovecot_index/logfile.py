"""Dovecot's transaction log (``dovecot.index.log``): header, record framing, record builders.

Format (storage-formats §6.5, §6.6): a 40-byte header (version 1.3), then records, each
``size`` (4 bytes, a 7-bits-per-byte encoding of size/4), ``type`` (LE u32) and a payload
padded to 4 bytes. All integers are little-endian; we refuse big-endian files.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import attrs

from ..errors import CorruptError

LOG_SUFFIX = ".log"
LOG_HDR_SIZE = 40
COMPAT_LITTLE_ENDIAN = 0x01

T_EXPUNGE = 0x0000CD91  # 0x1 with the protection bits 0xcd90
T_APPEND = 0x00000002
T_FLAG_UPDATE = 0x00000004
T_HEADER_UPDATE = 0x00000020
T_EXT_INTRO = 0x00000040
T_EXT_RESET = 0x00000080
T_EXT_HDR_UPDATE = 0x00000100
T_EXT_REC_UPDATE = 0x00000200
T_KEYWORD_UPDATE = 0x00000400
T_KEYWORD_RESET = 0x00000800
T_EXT_ATOMIC_INC = 0x00001000
T_EXPUNGE_GUID = 0x0000ED90  # 0x2000 with the protection bits
T_MODSEQ_UPDATE = 0x00008000
T_EXT_HDR_UPDATE32 = 0x00010000
T_INDEX_DELETED = 0x00020000
T_INDEX_UNDELETED = 0x00040000
T_BOUNDARY = 0x00080000
T_ATTRIBUTE_UPDATE = 0x00100000
TYPE_MASK = 0x0FFFFFFF
EXTERNAL = 0x10000000
SYNC = 0x20000000
EXT_ID_BY_NAME = 0xFFFFFFFF
INTERNAL_FLAGS = 0x40 | 0x80  # backend-private and dirty bits: not a user-visible change


def encode_size(size: int) -> bytes:
    """Dovecot's record-size encoding: size/4 in four bytes of 7 bits, high bit set."""
    if size % 4 or size < 8 or size >= 1 << 30:
        raise ValueError(f"bad log record size {size}")
    v = size // 4
    return bytes((0x80 | ((v >> 21) & 0x7F), 0x80 | ((v >> 14) & 0x7F), 0x80 | ((v >> 7) & 0x7F), 0x80 | (v & 0x7F)))


def decode_size(b: bytes) -> int | None:
    """The size encoded in 4 bytes, or None when a byte lacks its high bit (corrupt)."""
    if len(b) < 4 or any(x & 0x80 == 0 for x in b[:4]):
        return None
    v = ((b[0] & 0x7F) << 21) | ((b[1] & 0x7F) << 14) | ((b[2] & 0x7F) << 7) | (b[3] & 0x7F)
    return v * 4


def pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


@attrs.frozen
class LogHeader:
    hdr_size: int
    indexid: int
    file_seq: int
    prev_file_seq: int
    prev_file_offset: int
    create_stamp: int
    initial_modseq: int

    def encode(self) -> bytes:
        return struct.pack(
            "<BBHIIIIIQB7x", 1, 3, LOG_HDR_SIZE, self.indexid, self.file_seq, self.prev_file_seq,
            self.prev_file_offset, self.create_stamp, self.initial_modseq, COMPAT_LITTLE_ENDIAN,
        )


def parse_header(data: bytes, path: str) -> LogHeader:
    if len(data) < 24:
        raise CorruptError(f"Transaction log {path}: file too short ({len(data)} bytes)")
    major, _minor, hdr_size = struct.unpack_from("<BBH", data, 0)
    if major != 1:
        raise CorruptError(f"Transaction log {path}: unsupported major version {major}")
    if hdr_size < 24 or hdr_size > len(data):
        raise CorruptError(f"Transaction log {path}: bad header size {hdr_size}")
    indexid, seq, prev_seq, prev_off, stamp = struct.unpack_from("<IIIII", data, 4)
    modseq = struct.unpack_from("<Q", data, 24)[0] if hdr_size >= 32 else 0
    if hdr_size >= 33 and data[32] & COMPAT_LITTLE_ENDIAN == 0:
        raise CorruptError(f"Transaction log {path}: written by a big-endian host (not supported)")
    if indexid == 0:
        raise CorruptError(f"Transaction log {path}: marked corrupted by Dovecot (indexid 0)")
    return LogHeader(hdr_size, indexid, seq, prev_seq, prev_off, stamp, modseq or 1)


@attrs.frozen
class LogRecord:
    offset: int  # where the record starts in the file
    end: int  # offset just after it
    type: int  # full type word, including EXTERNAL/SYNC bits
    payload: bytes

    @property
    def kind(self) -> int:
        return self.type & TYPE_MASK

    @property
    def external(self) -> bool:
        return bool(self.type & EXTERNAL)


def iter_records(data: bytes, start: int) -> Iterator[LogRecord]:
    """Records from ``start`` on. Stops before a truncated record or transaction.

    A BOUNDARY announces the byte length of its transaction: a transaction that reaches
    past the end of the data is still being written (or was cut by a crash) and is not
    returned at all.
    """
    off = start
    end = len(data)
    tx_end = 0
    while off + 8 <= end:
        size = decode_size(data[off : off + 4])
        if size is None or size < 8 or off + size > end:
            return
        rtype = struct.unpack_from("<I", data, off + 4)[0]
        if rtype & TYPE_MASK == T_BOUNDARY and off >= tx_end and size >= 12:
            tx_size = struct.unpack_from("<I", data, off + 8)[0]
            if off + tx_size > end:
                return
            tx_end = off + tx_size
        yield LogRecord(off, off + size, rtype, data[off + 8 : off + size])
        off += size


def flag_update_counts(payload: bytes) -> bool:
    """Whether a FLAG_UPDATE changes something users see (and so a modseq)."""
    for i in range(0, len(payload) - 11, 12):
        _u1, _u2, add, remove, modseq_inc = struct.unpack_from("<IIBBB", payload, i)
        if modseq_inc or (add | remove) & ~INTERNAL_FLAGS & 0xFF:
            return True
    return False


def uid_ranges(uids: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted distinct UIDs -> [(first, last), ...] runs."""
    out: list[tuple[int, int]] = []
    for u in sorted(set(uids)):
        if out and out[-1][1] + 1 == u:
            out[-1] = (out[-1][0], u)
        else:
            out.append((u, u))
    return out


class Transaction:
    """Builds one log transaction; :meth:`encode` frames it with a BOUNDARY when needed.

    Every record is EXTERNAL unless ``external=False`` (Dovecot treats appends and
    expunges as done only when external; see §6.6).
    """

    def __init__(self, *, external: bool = True) -> None:
        self.external = external
        self.records: list[tuple[int, bytes]] = []

    def __bool__(self) -> bool:
        return bool(self.records)

    def add(self, kind: int, payload: bytes) -> None:
        if not payload:
            raise ValueError("empty log record payload")
        self.records.append((kind, pad4(payload)))

    # -- base header and extensions ----------------------------------------------------
    def header_update(self, offset: int, data: bytes) -> None:
        self.add(T_HEADER_UPDATE, struct.pack("<HH", offset, len(data)) + data)

    def header_u32(self, offset: int, value: int) -> None:
        self.header_update(offset, struct.pack("<I", value))

    def ext_intro(self, name: str, *, hdr_size: int = 0, record_size: int = 0, record_align: int = 0,
                  reset_id: int = 0, flags: int = 0) -> None:
        raw = name.encode("ascii")
        self.add(T_EXT_INTRO, struct.pack("<IIIHHHH", EXT_ID_BY_NAME, reset_id, hdr_size, record_size,
                                          record_align, flags, len(raw)) + raw)

    def ext_hdr_update(self, offset: int, data: bytes) -> None:
        self.add(T_EXT_HDR_UPDATE, struct.pack("<HH", offset, len(data)) + data)

    def ext_rec_update(self, items: Sequence[tuple[int, bytes]]) -> None:
        if items:
            self.add(T_EXT_REC_UPDATE, b"".join(struct.pack("<I", uid) + pad4(data) for uid, data in items))

    def ext_atomic_inc(self, items: Sequence[tuple[int, int]]) -> None:
        """EXT_ATOMIC_INC {uid, diff} for the current extension (mdbox map ``ref``)."""
        if items:
            self.add(T_EXT_ATOMIC_INC, b"".join(struct.pack("<Ii", uid, diff) for uid, diff in items))

    # -- messages ----------------------------------------------------------------------
    def append(self, items: Sequence[tuple[int, int]]) -> None:
        """APPEND {uid, flags} for ascending UIDs."""
        if items:
            self.add(T_APPEND, b"".join(struct.pack("<IB3x", uid, flags) for uid, flags in items))

    def flag_update(self, items: Sequence[tuple[int, int, int, int]]) -> None:
        """FLAG_UPDATE {uid1, uid2, add, remove}."""
        if items:
            self.add(T_FLAG_UPDATE, b"".join(struct.pack("<IIBBBx", a, b, add, rem, 0) for a, b, add, rem in items))

    def keyword_update(self, name: str, add: bool, uids: Sequence[int]) -> None:
        raw = name.encode("utf-8")
        if not uids:
            return
        head = pad4(struct.pack("<BxH", 0 if add else 1, len(raw)) + raw)
        body = b"".join(struct.pack("<II", a, b) for a, b in uid_ranges(uids))
        self.add(T_KEYWORD_UPDATE, head + body)

    def keyword_reset(self, uids: Sequence[int]) -> None:
        if uids:
            self.add(T_KEYWORD_RESET, b"".join(struct.pack("<II", a, b) for a, b in uid_ranges(uids)))

    def expunge_guid(self, items: Sequence[tuple[int, bytes]]) -> None:
        if items:
            self.add(T_EXPUNGE_GUID, b"".join(struct.pack("<I", uid) + guid for uid, guid in items))

    def modseq_update(self, items: Sequence[tuple[int, int]]) -> None:
        """MODSEQ_UPDATE {uid, modseq}; uid 0 raises the mailbox's HIGHESTMODSEQ."""
        if items:
            self.add(T_MODSEQ_UPDATE, b"".join(
                struct.pack("<III", uid, m & 0xFFFFFFFF, m >> 32) for uid, m in items))

    # -- framing -----------------------------------------------------------------------
    def _frame(self, kind: int, payload: bytes) -> bytes:
        bits = EXTERNAL if self.external or kind == T_BOUNDARY else 0
        return encode_size(8 + len(payload)) + struct.pack("<I", kind | bits) + payload

    def encode(self) -> bytes:
        body = b"".join(self._frame(k, p) for k, p in self.records)
        if len(self.records) <= 1:
            return body
        total = 12 + len(body)
        return self._frame(T_BOUNDARY, struct.pack("<I", total)) + body


def tail_update(log_size_before: int) -> bytes:
    """The HEADER_UPDATE of ``log_file_tail_offset`` that Dovecot appends after a transaction."""
    rec_size = 8 + 8
    return encode_size(rec_size) + struct.pack("<IHHI", T_HEADER_UPDATE | EXTERNAL, 64, 4, log_size_before + rec_size)


def read_bounded(f: BinaryIO, limit: int) -> bytes:
    """At most ``limit`` bytes of an open file, allocating only what it holds
    (``f.read(limit)`` would reserve ``limit`` bytes first: a gigabyte per small log)."""
    size = os.fstat(f.fileno()).st_size
    return f.read(min(size + 1, limit) if size < limit else limit)
