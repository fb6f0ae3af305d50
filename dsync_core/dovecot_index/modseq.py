"""HIGHESTMODSEQ of a Dovecot index (``dovecot.index``, ``dovecot.index.log``), read cheaply.

This is what a storage without a full index reader needs: the mailbox's HIGHESTMODSEQ as
Dovecot counts it, so that ``dsync mailbox status`` and ``doveadm mailbox status`` agree
on a mailbox Dovecot has used. The transaction log keeps a running modseq from its
header's ``initial_modseq``; APPEND, external EXPUNGE(_GUID), KEYWORD_UPDATE/RESET,
ATTRIBUTE_UPDATE and FLAG_UPDATE records each add one (per record, not per message), and
MODSEQ_UPDATE raises it. The ``modseq`` extension header of ``dovecot.index`` holds the
value at the last snapshot. Formats: docs in storage-formats §6 (little-endian only).
"""

from __future__ import annotations

import os
import struct

from .logfile import (
    EXTERNAL,
    INTERNAL_FLAGS,
    LOG_SUFFIX,
    T_APPEND,
    T_ATTRIBUTE_UPDATE,
    T_BOUNDARY,
    T_EXPUNGE,
    T_EXPUNGE_GUID,
    T_FLAG_UPDATE,
    T_KEYWORD_RESET,
    T_KEYWORD_UPDATE,
    T_MODSEQ_UPDATE,
    TYPE_MASK,
    decode_size,
)
from .logfile import read_bounded as lf_read_bounded

MAX_LOG_BYTES = 256 * 1024 * 1024


def log_highest_modseq(path: str) -> int | None:
    """The running modseq at the end of a transaction log, or None if there is no usable log."""
    try:
        with open(path, "rb") as f:
            data = lf_read_bounded(f, MAX_LOG_BYTES)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    if len(data) < 24 or data[0] != 1:
        return None
    hdr_size = struct.unpack_from("<H", data, 2)[0]
    if hdr_size < 24 or hdr_size > len(data):
        return None
    modseq = struct.unpack_from("<Q", data, 24)[0] if hdr_size >= 32 else 1
    modseq = modseq or 1
    off = hdr_size
    end = len(data)
    while off + 8 <= end:
        size = decode_size(data[off : off + 4])
        if size is None or size < 8 or off + size > end:
            break  # corrupt or a record still being written: stop before it
        rtype = struct.unpack_from("<I", data, off + 4)[0]
        kind = rtype & TYPE_MASK
        payload = data[off + 8 : off + size]
        if kind == T_BOUNDARY and len(payload) >= 4:
            tx_size = struct.unpack_from("<I", payload, 0)[0]
            if off + tx_size > end:
                break  # a partly written transaction is not a real one
        elif kind == T_APPEND or kind in (T_KEYWORD_UPDATE, T_KEYWORD_RESET, T_ATTRIBUTE_UPDATE):
            modseq += 1
        elif kind in (T_EXPUNGE, T_EXPUNGE_GUID):
            if rtype & EXTERNAL:
                modseq += 1
        elif kind == T_FLAG_UPDATE:
            if _flag_update_counts(payload):
                modseq += 1
        elif kind == T_MODSEQ_UPDATE:
            for i in range(0, len(payload) - 11, 12):
                _uid, low, high = struct.unpack_from("<III", payload, i)
                modseq = max(modseq, (high << 32) | low)
        off += size
    return modseq


def _flag_update_counts(payload: bytes) -> bool:
    for i in range(0, len(payload) - 11, 12):
        _u1, _u2, add, remove, modseq_inc = struct.unpack_from("<IIBBB", payload, i)
        if modseq_inc or (add | remove) & ~INTERNAL_FLAGS & 0xFF:
            return True
    return False


def index_modseq_header(path: str) -> int | None:
    """``highest_modseq`` from the ``modseq`` extension header of ``dovecot.index``."""
    try:
        with open(path, "rb") as f:
            data = f.read(1024 * 1024)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    if len(data) < 120 or data[0] != 7 or data[12] & 1 != 1:
        return None
    base_size, header_size = struct.unpack_from("<HI", data, 2)
    off = (base_size + 7) & ~7
    header_size = min(header_size, len(data))
    while off + 16 <= header_size:
        hdr_size, _reset, _rec_off, _rec_size, _align, name_size = struct.unpack_from("<IIHHHH", data, off)
        name = data[off + 16 : off + 16 + name_size]
        data_off = (off + 16 + name_size + 7) & ~7
        if name == b"modseq" and hdr_size >= 8 and data_off + 8 <= len(data):
            return struct.unpack_from("<Q", data, data_off)[0]
        off = (data_off + hdr_size + 7) & ~7
    return None


def highest_modseq(index_dir: str, prefix: str = "dovecot.index") -> int | None:
    """Dovecot's HIGHESTMODSEQ for the index in ``index_dir``, or None when it has none."""
    base = os.path.join(index_dir, prefix)
    values = [v for v in (log_highest_modseq(base + LOG_SUFFIX), index_modseq_header(base)) if v]
    return max(values) if values else None


__all__ = ["highest_modseq", "log_highest_modseq", "index_modseq_header"]
