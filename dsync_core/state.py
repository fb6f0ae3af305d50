"""The ``-s`` state string: what a stateful run starts from and prints at its end.

Version 2 (ours; Dovecot's version 1 has one last-common modseq, we keep one per side
because the engine sees both sides and their modseqs are not comparable): base64url
(no padding) of a 4-byte header (``0x02 0 0 0``), then per mailbox 48 bytes: 16-byte GUID,
UIDVALIDITY (u32), last common UID (u32), last common modseq of the source (u64) and of
the destination (u64), message count (u32), all little-endian; then the CRC-32 of
everything before it (u32). ``""`` means "no state yet".
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib
from collections.abc import Iterable

from .brain import StateEntry
from .errors import StateError

VERSION = 2
_HEADER = bytes([VERSION, 0, 0, 0])
_ENTRY = struct.Struct("<16sIIQQI")
_CRC = struct.Struct("<I")


def encode_state(entries: Iterable[StateEntry]) -> str:
    body = bytearray(_HEADER)
    for e in sorted(entries, key=lambda e: e.guid):
        try:
            raw = bytes.fromhex(e.guid)
        except ValueError:
            continue  # a GUID that is not 128 bits cannot be kept: that mailbox starts fresh
        if len(raw) != 16:
            continue
        body += _ENTRY.pack(raw, e.uidvalidity, e.last_common_uid, e.modseq_a, e.modseq_b, e.messages)
    body += _CRC.pack(zlib.crc32(body))
    return base64.urlsafe_b64encode(bytes(body)).rstrip(b"=").decode("ascii")


def decode_state(text: str | None) -> dict[str, StateEntry]:
    """Mailbox GUID -> entry. Raises :class:`StateError` for anything malformed."""
    if not text:
        return {}
    text = text.strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise StateError(f"Invalid state string {text[:20]!r}: not base64url") from None
    if len(raw) < len(_HEADER) + _CRC.size or (len(raw) - len(_HEADER) - _CRC.size) % _ENTRY.size:
        raise StateError(f"Invalid state string {text[:20]!r}: wrong length")
    (crc,) = _CRC.unpack_from(raw, len(raw) - _CRC.size)
    if zlib.crc32(raw[: -_CRC.size]) != crc:
        raise StateError(f"Invalid state string {text[:20]!r}: checksum mismatch")
    if raw[0] != VERSION:
        raise StateError(f"Invalid state string {text[:20]!r}: unknown version {raw[0]}")
    out: dict[str, StateEntry] = {}
    for off in range(len(_HEADER), len(raw) - _CRC.size, _ENTRY.size):
        g, uv, uid, ma, mb, n = _ENTRY.unpack_from(raw, off)
        out[g.hex()] = StateEntry(g.hex(), uv, uid, ma, mb, n)
    return out


__all__ = ["encode_state", "decode_state", "VERSION"]
