"""Dovecot's ``dovecot-uidvalidity`` allocator at the root of a mail location.

The file holds the last value handed out as 8 lowercase hex digits; an empty marker file
``dovecot-uidvalidity.<8 hex>`` carries the same value in its name. Allocating renames the
marker from ``n`` to ``n+1`` (atomic, so two allocators never get the same value; the loser
retries upward) and then rewrites the main file. With nothing there it starts from the
current UNIX time, as Dovecot does. Every format uses it for new mailboxes, so a mailbox
re-created under an old name gets a new UIDVALIDITY.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

from .errors import StorageError

FILENAME = "dovecot-uidvalidity"
_MARKER_RE = re.compile(r"^dovecot-uidvalidity\.([0-9a-f]{8})$")
_RETRIES = 10


def _next(value: int) -> int:
    value = (value + 1) & 0xFFFFFFFF
    return value or 1


def _write_main(path: str, value: int, chown: Callable[[str], None] | None) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"%08x" % value)
        finally:
            os.close(fd)
        if chown:
            chown(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise StorageError(f"Cannot write {path}: {e.strerror}") from None


def _rescan(root: str, chown: Callable[[str], None] | None) -> int:
    """Highest marker value present; create one from the current time if there is none."""
    best = 0
    try:
        for name in os.listdir(root):
            m = _MARKER_RE.match(name)
            if m:
                best = max(best, int(m.group(1), 16))
    except OSError as e:
        raise StorageError(f"Cannot list {root}: {e.strerror}") from None
    if best:
        return best
    best = int(time.time()) & 0xFFFFFFFF or 1
    marker = os.path.join(root, f"{FILENAME}.{best:08x}")
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        os.close(fd)
        if chown:
            chown(marker)
    except FileExistsError:
        pass
    except OSError as e:
        raise StorageError(f"Cannot create {marker}: {e.strerror}") from None
    return best


def allocate_uidvalidity(root: str, *, chown: Callable[[str], None] | None = None) -> int:
    """Hand out the next UIDVALIDITY of the mail location at ``root``.

    ``chown`` is called on files this creates (so a process running as root can keep the
    tree owned by the mail user).
    """
    path = os.path.join(root, FILENAME)
    try:
        with open(path, "rb") as f:
            cur = int(f.read(64).strip() or b"0", 16)
    except (OSError, ValueError):
        cur = 0
    for attempt in range(2):
        if cur == 0 or attempt == 1:
            cur = _rescan(root, chown)
        for _ in range(_RETRIES):
            new = _next(cur)
            try:
                os.rename(os.path.join(root, f"{FILENAME}.{cur:08x}"), os.path.join(root, f"{FILENAME}.{new:08x}"))
            except FileNotFoundError:
                cur = new
                continue
            except OSError as e:
                raise StorageError(f"Cannot rename {FILENAME} marker in {root}: {e.strerror}") from None
            _write_main(path, new, chown)
            return new
    raise StorageError(f"Cannot allocate a UIDVALIDITY in {root}: {FILENAME} markers keep changing")


__all__ = ["allocate_uidvalidity", "FILENAME"]
