"""The dbox file format shared by sdbox (``u.<uid>``) and mdbox (``m.<id>``), version 2.

Layout (storage-formats §3): a header line ``2 M1e C<create time hex>\\n``; per message a
30-byte header (``\\x01\\x02N``, spaces, the body size in 16 uppercase hex digits, LF), the
body, the metadata magic ``\\n\\x01\\x03\\n``, ``<key><value>\\n`` lines and an empty line.
We write what Dovecot writes, in its order (R, V, [P, O], G, [B], then unknown keys kept
from a copied message); we read version 1 and 2 files and ignore unknown keys.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterable
from typing import BinaryIO

import attrs

from .errors import CorruptError, StorageError, UsageError
from .streams import CHUNK, BodySizes, LineEnds

MSG_HEADER_SIZE = 30
MAGIC_PRE = b"\x01\x02"
MAGIC_POST = b"\n\x01\x03\n"
META_GUID = "G"
META_RECEIVED = "R"
META_VSIZE = "V"
META_PHYSICAL = "Z"
META_POP3_UIDL = "P"
META_POP3_ORDER = "O"
META_ORIG_MAILBOX = "B"
META_ATTACHMENTS = "X"
_WRITE_ORDER = (META_PHYSICAL, META_RECEIVED, META_VSIZE, META_POP3_UIDL, META_POP3_ORDER, META_GUID,
                META_ORIG_MAILBOX, META_ATTACHMENTS)
_MAX_META = 1024 * 1024


def file_header(create_time: int | None = None) -> bytes:
    t = int(time.time()) if create_time is None else create_time
    return f"2 M{MSG_HEADER_SIZE:x} C{t:x}\n".encode()


def message_header(body_size: int) -> bytes:
    return MAGIC_PRE + b"N " + b" " * 8 + b" " + f"{body_size:016X}".encode() + b"\n"


def metadata_block(meta: dict[str, str]) -> bytes:
    """The metadata block (magic, lines, empty line), known keys in Dovecot's order."""
    lines = [MAGIC_POST]
    keys = [k for k in _WRITE_ORDER if k in meta] + sorted(k for k in meta if k not in _WRITE_ORDER)
    for k in keys:
        value = meta[k]
        if len(k) != 1 or "\n" in value or "\r" in value:
            raise UsageError(f"dbox metadata {k!r} cannot hold {value!r}")
        lines.append(f"{k}{value}\n".encode())
    lines.append(b"\n")
    return b"".join(lines)


@attrs.frozen
class DboxMessage:
    """Where one message sits in a dbox file, and its metadata."""

    offset: int  # the message header
    body_offset: int
    body_size: int
    metadata: dict[str, str] = attrs.field(hash=False)
    end: int  # just after the metadata block

    @property
    def guid(self) -> str:
        return self.metadata.get(META_GUID, "")

    @property
    def received(self) -> int | None:
        return _hex(self.metadata.get(META_RECEIVED))

    @property
    def vsize(self) -> int | None:
        return _hex(self.metadata.get(META_VSIZE))


def _hex(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(value, 16)
    except ValueError:
        return None


def write_message(fd: int, body: BinaryIO, meta: dict[str, str], *, create_time: int | None = None,
                  with_file_header: bool = True, compute_vsize: bool = True) -> tuple[int, int]:
    """Stream one message into ``fd`` (at its current end); return (body size, vsize).

    As Dovecot does, a zeroed message header is written first and filled in with
    ``pwrite`` once the size is known, so a crash leaves a recognisably broken record.
    ``V`` (virtual size: LF counted as CRLF) is added to ``meta`` unless given.
    """
    pos = os.lseek(fd, 0, os.SEEK_END)
    if with_file_header:
        _write_all(fd, file_header(create_time))
        pos = os.lseek(fd, 0, os.SEEK_CUR)
    hdr_pos = pos
    _write_all(fd, b"\0" * MSG_HEADER_SIZE)
    sizes = BodySizes(body, count=compute_vsize)
    while True:
        chunk = body.read(CHUNK)
        if not chunk:
            break
        if isinstance(chunk, str):
            raise UsageError("Message bodies must be binary streams")
        sizes.feed(chunk)
        _write_all(fd, chunk)
    size = sizes.size
    counted = sizes.result()
    if counted is None:
        # The stream was not read from its start: count what was written.
        ends = LineEnds()
        for off in range(0, size, CHUNK):
            ends.feed(os.pread(fd, min(CHUNK, size - off), hdr_pos + MSG_HEADER_SIZE + off))
        counted = (size, size + ends.bare_lf)
    vsize = counted[1]
    meta = dict(meta)
    meta.setdefault(META_VSIZE, f"{vsize:x}")
    _write_all(fd, metadata_block(meta))
    os.pwrite(fd, message_header(size), hdr_pos)
    return size, vsize


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_file_header(f: BinaryIO, path: str) -> tuple[int, int, int]:
    """(version, message header size, offset of the first message) of a dbox file."""
    line = f.readline(256)
    if not line.endswith(b"\n"):
        raise CorruptError(f"dbox file {path}: broken file header")
    parts = line[:-1].split(b" ")
    try:
        version = int(parts[0])
    except ValueError:
        raise CorruptError(f"dbox file {path}: broken file header") from None
    if version not in (1, 2):
        raise CorruptError(f"dbox file {path}: unsupported version {version}")
    hdr_size = MSG_HEADER_SIZE
    for p in parts[1:]:
        if p[:1] == b"M":
            try:
                hdr_size = int(p[1:], 16)
            except ValueError:
                raise CorruptError(f"dbox file {path}: broken file header") from None
    if hdr_size < MSG_HEADER_SIZE:
        raise CorruptError(f"dbox file {path}: message header size {hdr_size} is too small")
    return version, hdr_size, len(line)


def read_message(f: BinaryIO, offset: int, msg_header_size: int, path: str) -> DboxMessage:
    """The message whose header starts at ``offset``, with its metadata."""
    f.seek(offset)
    hdr = f.read(msg_header_size)
    if len(hdr) < msg_header_size or hdr[:2] != MAGIC_PRE or hdr[-1:] != b"\n":
        raise CorruptError(f"dbox file {path}: broken message header at offset {offset}")
    try:
        body_size = int(hdr[13:29], 16)
    except ValueError:
        raise CorruptError(f"dbox file {path}: broken message size at offset {offset}") from None
    body_offset = offset + msg_header_size
    f.seek(body_offset + body_size)
    if f.read(len(MAGIC_POST)) != MAGIC_POST:
        raise CorruptError(f"dbox file {path}: metadata missing after the message at offset {offset}")
    meta: dict[str, str] = {}
    consumed = 0
    while True:
        line = f.readline(_MAX_META)
        consumed += len(line)
        if not line or line in (b"\n", b"\r\n") or line[:1] == b" " or consumed >= _MAX_META:
            break
        text = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
        if text:
            meta.setdefault(text[0], text[1:])
    return DboxMessage(offset, body_offset, body_size, meta, f.tell())


def read_single(path: str) -> DboxMessage:
    """The (only) message of an sdbox ``u.<uid>`` file."""
    try:
        with open(path, "rb") as f:
            _v, hsize, first = read_file_header(f, path)
            return read_message(f, first, hsize, path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise StorageError(f"Cannot read {path}: {e.strerror}") from None


def read_all(path: str) -> Iterable[DboxMessage]:
    """Every message of a multi-message (mdbox ``m.<id>``) file, in file order."""
    with open(path, "rb") as f:
        _v, hsize, off = read_file_header(f, path)
        end = os.fstat(f.fileno()).st_size
        while off < end:
            msg = read_message(f, off, hsize, path)
            yield msg
            off = msg.end


class BodyReader(io.RawIOBase):
    """A read-only stream over ``[start, start + size)`` of an open file."""

    def __init__(self, f: BinaryIO, start: int, size: int) -> None:
        self._f = f
        self._start = start
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, min(self._size, base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


def open_body(path: str, msg: DboxMessage | None = None) -> BinaryIO:
    """A stream of the message body in an sdbox file (or of ``msg`` in a multi file)."""
    f = open(path, "rb")
    try:
        if msg is None:
            _v, hsize, first = read_file_header(f, path)  # type: ignore[arg-type]
            msg = read_message(f, first, hsize, path)  # type: ignore[arg-type]
    except BaseException:
        f.close()
        raise
    return io.BufferedReader(BodyReader(f, msg.body_offset, msg.body_size), CHUNK)  # type: ignore[arg-type, return-value]


__all__ = [
    "DboxMessage", "BodyReader", "write_message", "read_single", "read_all", "read_message", "read_file_header",
    "open_body", "file_header", "message_header", "metadata_block", "META_GUID", "META_RECEIVED", "META_VSIZE",
    "META_POP3_UIDL", "META_POP3_ORDER", "META_ORIG_MAILBOX", "META_ATTACHMENTS", "META_PHYSICAL",
]
