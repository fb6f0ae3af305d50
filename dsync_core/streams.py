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
    each bare LF as CRLF: it is the physical size plus :attr:`bare_lf`. A chunk may be
    counted on another thread (:func:`chunk_line_ends`) and the result added here in order."""

    __slots__ = ("bare_lf", "_prev_cr")

    def __init__(self) -> None:
        self.bare_lf = 0
        self._prev_cr = False

    def feed(self, chunk: bytes) -> None:
        self.add(chunk_line_ends(chunk))

    def add(self, counted: tuple[int, bool, bool] | None) -> None:
        """Take the next chunk's :func:`chunk_line_ends` (``None``: an empty chunk)."""
        if counted is None:
            return
        bare, lf_first, cr_last = counted
        if self._prev_cr and lf_first:
            bare -= 1  # the chunk's first LF ends the CRLF the previous chunk began
        self.bare_lf += bare
        self._prev_cr = cr_last


def chunk_line_ends(chunk: bytes) -> tuple[int, bool, bool] | None:
    """One chunk's line ends counted on their own, for :meth:`LineEnds.add`: (its bare
    LFs, whether it starts with LF, whether it ends with CR); ``None`` for an empty chunk.
    It needs no state, so a fetching thread may count a chunk while the writer writes the
    one before."""
    if not chunk:
        return None
    lf = chunk.count(b"\n")
    # Most bodies have no CR at all: a one-byte search spares the slower two-byte count.
    crlf = chunk.count(b"\r\n") if lf and b"\r" in chunk else 0
    return lf - crlf, chunk[:1] == b"\n", chunk[-1:] == b"\r"


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
    storage writes their tmp files on helper threads; see :func:`any_thread`)."""

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


def any_thread(body: object) -> bool:
    """Whether any thread may read a body, in any order relative to the other bodies of a
    save: one held whole in memory (:class:`CountedBody`), or a stream that says so
    (``any_thread`` true: it is tied to no connection or stream position the caller
    uses). Other streamed bodies are read in the order given, on the calling thread.
    Wrappers pass this on."""
    return counted_sizes(body) is not None or getattr(body, "any_thread", False) is True


def counts_as_read(body: object) -> bool:
    """Whether a streamed body counts its own line ends as it is read (``counts_as_read``
    true): its :func:`counted_sizes` are known once it was read to the end. Wrappers pass
    this on too."""
    return getattr(body, "counts_as_read", False) is True


def held_bytes(body: object) -> int:
    """Bytes of a body held in memory now: its ``held`` (a streamed body's current chunk),
    else a :class:`CountedBody`'s size, else 0 (a file holds none). Wrappers pass it on."""
    held = getattr(body, "held", None)
    if isinstance(held, int):
        return held
    counted = counted_sizes(body)
    return counted[0] if counted is not None else 0


class BodySizes:
    """A writer's count of one body's (physical, virtual) size while it copies it.

    Bodies that were counted already (:class:`CountedBody`) or that count themselves as
    they are read (:func:`counts_as_read`) are not scanned again: the count then ran in
    the thread that fetched them. :meth:`result` is ``None`` when the body's own count
    does not cover what was read (it was not read from its start): count the copy."""

    __slots__ = ("body", "size", "_count", "_counted", "_ends")

    def __init__(self, body: object, count: bool = True) -> None:
        self.body = body
        self.size = 0
        self._count = count  # False: the writer wants the physical size only
        self._counted = counted_sizes(body)
        self._ends = LineEnds() if count and self._counted is None and not counts_as_read(body) else None

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._ends is not None:
            self._ends.feed(chunk)

    def result(self) -> tuple[int, int] | None:
        """(physical, virtual) size; both the physical one when not counting."""
        if not self._count:
            return self.size, self.size
        if self._ends is not None:
            return self.size, self.size + self._ends.bare_lf
        counted = self._counted or counted_sizes(self.body)
        return counted if counted is not None and counted[0] == self.size else None


__all__ = [
    "BodySizes",
    "CHUNK",
    "CountedBody",
    "CrlfToLf",
    "LineEnds",
    "any_thread",
    "chunk_line_ends",
    "counted_sizes",
    "counts_as_read",
    "held_bytes",
    "virtual_size",
]
