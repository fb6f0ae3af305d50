"""Watch cur/ and new/ while we change them (Linux inotify), so that our own renames and
deliveries can be told apart from anybody else's without listing the directories again.

After our change, the events of a mailbox must be exactly our own entries appearing and
disappearing; anything else (another process's entry, a queue overflow, the directory
itself moved or removed) makes the caller fall back to a listing. Only meaningful on a
local filesystem: inotify does not see what other NFS clients do.

One inotify instance serves a whole storage (a user has only 128 by default, and Dovecot's
IDLE needs them too); each mailbox adds two watches to it.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from collections import Counter
from collections.abc import Iterable

IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
_MASK = IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
_APPEAR = IN_MOVED_TO | IN_CREATE
_VANISH = IN_MOVED_FROM | IN_DELETE
_GONE = IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT = struct.Struct("iIII")

_libc = None


def _inotify():  # type: ignore[no-untyped-def]
    global _libc
    if _libc is None:
        import ctypes  # only here: a sync that never watches need not load it

        lib = ctypes.CDLL(None, use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        _libc = lib
    return _libc


class Watcher:
    """One inotify instance; mailboxes (by a key) watch their directories through it."""

    def __init__(self) -> None:
        self.fd = -1
        self._wd: dict[int, tuple[str, str]] = {}  # watch descriptor -> (key, sub)
        self._seen: dict[str, list[tuple[str, int, str]]] = {}  # key -> (sub, mask, name) since its last check
        self._broken: set[str] = set()
        self._overflow = False

    @classmethod
    def start(cls) -> Watcher | None:
        """A watcher, or None where there is no inotify (not Linux, no instance left, ...)."""
        if not sys.platform.startswith("linux"):
            return None
        try:
            fd = _inotify().inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        w = cls()
        w.fd = fd
        return w

    def watch(self, key: str, dirs: dict[str, str]) -> bool:
        """Start watching ``dirs`` (``sub`` -> path) for ``key``; False if that failed (the
        key then never checks out)."""
        if self.fd < 0:
            return False
        if key in self._seen:
            return key not in self._broken
        self._seen[key] = []
        lib = _inotify()
        for sub, path in dirs.items():
            wd = lib.inotify_add_watch(self.fd, os.fsencode(path), _MASK)
            if wd < 0:
                self._broken.add(key)
                return False
            self._wd[wd] = (key, sub)
        return True

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            buf += chunk
        at = 0
        while at + _EVENT.size <= len(buf):
            wd, mask, _cookie, length = _EVENT.unpack_from(buf, at)
            raw = buf[at + _EVENT.size:at + _EVENT.size + length]
            at += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                self._overflow = True  # events were lost: nobody's change can be proved ours
                continue
            owner = self._wd.get(wd)
            if owner is None:
                continue
            key, sub = owner
            if mask & _GONE:
                self._broken.add(key)
                continue
            self._seen[key].append((sub, mask, os.fsdecode(raw.rstrip(b"\0"))))

    def only(self, key: str, added: Iterable[str], removed: Iterable[str]) -> bool:
        """Whether everything that happened in ``key``'s directories since its watch began
        (or since the last call) is ``added`` entries appearing and ``removed`` ones
        vanishing (``sub/name``), each once."""
        if self.fd < 0 or key not in self._seen:
            return False
        self._read()
        events, self._seen[key] = self._seen[key], []
        if self._overflow or key in self._broken:
            return False
        got_in: Counter[str] = Counter()
        got_out: Counter[str] = Counter()
        for sub, mask, name in events:
            if mask & _APPEAR:
                got_in[f"{sub}/{name}"] += 1
            elif mask & _VANISH:
                got_out[f"{sub}/{name}"] += 1
        return got_in == Counter(added) and got_out == Counter(removed)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
