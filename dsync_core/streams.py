"""Small stream helpers: bodies are always read in chunks, never whole."""

from __future__ import annotations

import io
from typing import BinaryIO

CHUNK = 64 * 1024


class CrlfToLf(io.RawIOBase):
    """A read-only stream that turns CRLF into LF on the fly (doveadm save does this)."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self._pending_cr = False
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        while not self._buf:
            chunk = self.source.read(CHUNK)
            if not chunk:
                if self._pending_cr:
                    self._pending_cr = False
                    self._buf = b"\r"
                    break
                return 0
            if self._pending_cr:
                chunk = b"\r" + chunk
                self._pending_cr = False
            if chunk.endswith(b"\r"):
                chunk = chunk[:-1]
                self._pending_cr = True
            self._buf = chunk.replace(b"\r\n", b"\n")
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class LineEnds:
    """Counts the bare LFs of a body fed in chunks (a CRLF may straddle two).

    A message's virtual size (IMAP's RFC822.SIZE, Maildir's ``W=``, dbox's ``V``) counts
    each bare LF as CRLF: it is the physical size plus :attr:`bare_lf`."""

    __slots__ = ("bare_lf", "_prev_cr")

    def __init__(self) -> None:
        self.bare_lf = 0
        self._prev_cr = False

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        lf = chunk.count(b"\n")
        if lf:
            # Most bodies have no CR at all: a one-byte search spares the slower two-byte count.
            crlf = chunk.count(b"\r\n") if b"\r" in chunk else 0
            if self._prev_cr and chunk[:1] == b"\n":
                crlf += 1
            self.bare_lf += lf - crlf
        self._prev_cr = chunk[-1:] == b"\r"


def virtual_size(stream: BinaryIO) -> tuple[int, int]:
    """(physical, virtual) size of a stream: virtual counts each bare LF as CRLF."""
    size = 0
    ends = LineEnds()
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        size += len(chunk)
        ends.feed(chunk)
    return size, size + ends.bare_lf


class CountedBody(io.BytesIO):
    """A body held in memory whose sizes were counted by the thread that received it.

    ``counted`` is (physical, virtual) size of the whole body. A writer that reads the
    body from its start may take the virtual size from here instead of scanning the bytes
    again: the count then runs in a fetching thread while the writer waits on the disk.

    Such a body is whole in memory and tied to no connection, so a writer may read it on
    another thread, in any order relative to the other bodies of a save (the Maildir
    storage writes their tmp files on helper threads). Streamed bodies must be read in the
    order they were given, on the calling thread."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        ends = LineEnds()
        ends.feed(data)
        self.counted = (len(data), len(data) + ends.bare_lf)


def counted_sizes(body: object) -> tuple[int, int] | None:
    """The (physical, virtual) size a body stream carries (see :class:`CountedBody`), or
    ``None``: then the writer counts. Wrappers pass their stream's ``counted`` on."""
    counted = getattr(body, "counted", None)
    return counted if isinstance(counted, tuple) else None


__all__ = ["CrlfToLf", "LineEnds", "CountedBody", "counted_sizes", "virtual_size", "CHUNK"]
