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


def virtual_size(stream: BinaryIO) -> tuple[int, int]:
    """(physical, virtual) size of a stream: virtual counts each bare LF as CRLF."""
    size = 0
    bare_lf = 0
    prev_cr = False
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        size += len(chunk)
        lf = chunk.count(b"\n")
        crlf = chunk.count(b"\r\n") + (1 if prev_cr and chunk.startswith(b"\n") else 0)
        bare_lf += lf - crlf
        prev_cr = chunk.endswith(b"\r")
    return size, size + bare_lf


__all__ = ["CrlfToLf", "virtual_size", "CHUNK"]
