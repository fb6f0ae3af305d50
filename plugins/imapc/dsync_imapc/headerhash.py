"""Message GUIDs from header hashes (dsync-algorithm.md §4.9, adapted).

An IMAP server gives no GUIDs, so a message's GUID is a hash of what the server says about
it and never changes: the lines of a fixed set of header fields (``HEADER.FIELDS``, in
message order, as the server returns them) and the RFC822.SIZE. Normalisation follows
Dovecot's hash version 3: CRLF -> LF, spaces dropped, each run of bytes below 0x20 (but LF),
at or above 0x7F, or ``?`` becomes one ``?`` (servers differ in how they re-encode 8-bit
headers and fold lines). The digest is SHA-1 cut to 128 bits, 32 hex digits, so that
storages that need 128-bit GUIDs (dbox) can keep it.

A message that has none of the fields is hashed by its whole header block instead.
Identical headers *and* size in one mailbox (the same mail appended twice) would collide:
the second and later occurrences, in UID order, get ``hash(base || '#' || n)``. That keeps
both copies; its only cost is that expunging the first occurrence renames the second.
"""

from __future__ import annotations

import hashlib
import re

_REPLACE = re.compile(rb"(?:[\x00-\x09\x0b-\x1f\x7f-\xff?])+")


def normalize(block: bytes) -> bytes:
    block = block.replace(b"\r\n", b"\n").replace(b" ", b"")
    return _REPLACE.sub(b"?", block)


def header_hash(block: bytes, size: int | None) -> str:
    h = hashlib.sha1()
    h.update(normalize(block))
    h.update(b"\0size=%d" % (size or 0))
    return h.hexdigest()[:32]


def local_header_hash(data: bytes, fields: tuple[str, ...], size: int | None = None) -> str:
    """The hash a server would give ``data`` once stored: the lines of ``fields`` (with their
    continuation lines) as ``HEADER.FIELDS`` returns them, and the size with CRLF line ends.
    ``data`` may be the header alone when ``size`` (the whole message's, CRLF) is given."""
    end = len(data)
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = data.find(sep)
        if i >= 0:
            end = min(end, i + len(sep))
    head = data[:end].replace(b"\r\n", b"\n").split(b"\n")
    wanted = {f.lower().encode() for f in fields}
    out: list[bytes] = []
    keep = False
    for line in head:
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        keep = line.split(b":", 1)[0].strip().lower() in wanted if b":" in line else False
        if keep:
            out.append(line)
    # No wanted field at all: the whole header block, as the server's BODY[HEADER] gives it.
    block = b"\r\n".join(out) + b"\r\n\r\n" if out else b"\r\n".join(head)
    crlf_size = size if size is not None else len(data) + data.count(b"\n") - data.count(b"\r\n")
    return header_hash(block, crlf_size)


def disambiguate(pairs: list[tuple[int, str]]) -> dict[int, str]:
    """``[(uid, base hash)]`` -> ``{uid: guid}``, later duplicates numbered in UID order."""
    seen: dict[str, int] = {}
    out: dict[int, str] = {}
    for uid, base in sorted(pairs):
        n = seen.get(base, 0)
        seen[base] = n + 1
        out[uid] = base if n == 0 else hashlib.sha1(f"{base}#{n}".encode()).hexdigest()[:32]
    return out
