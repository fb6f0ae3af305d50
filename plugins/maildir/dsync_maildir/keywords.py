"""``dovecot-keywords``: which keyword each file-name letter ``a``..``z`` stands for.

One ``<index> <name>`` line per used letter. Names compare case-insensitively; letters
once given are never reassigned; new keywords take the first free slot. Dovecot notices
changes by the mtime in whole seconds only, so a rewrite always moves the mtime on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from dsync_core.errors import StorageError
from dsync_core.lock import ABANDONED_AFTER, DotLock

FILENAME = "dovecot-keywords"
MAX_KEYWORDS = 26


class TooManyKeywordsError(StorageError):
    """More than 26 keywords: the ones listed do not fit into Maildir file names."""


class Keywords:
    def __init__(self, names: list[str | None] | None = None) -> None:
        self.names: list[str | None] = list(names or [None] * MAX_KEYWORDS)
        self.changed = False

    @classmethod
    def parse(cls, data: bytes) -> Keywords:
        kw = cls()
        seen: set[str] = set()
        for line in data.decode("utf-8", "surrogateescape").split("\n"):
            idx_s, sp, name = line.partition(" ")
            if not sp or not idx_s.isdigit() or not name:
                continue
            idx = int(idx_s)
            if idx >= MAX_KEYWORDS or name.lower() in seen:
                continue
            seen.add(name.lower())
            kw.names[idx] = name
        return kw

    def name(self, idx: int) -> str:
        """The keyword for a letter; Dovecot's ``unknown-<n>`` for a letter without a line."""
        name = self.names[idx]
        return name if name is not None else f"unknown-{idx}"

    def names_for(self, indexes: Iterable[int]) -> frozenset[str]:
        return frozenset(self.name(i) for i in indexes)

    def index_of(self, keyword: str) -> int | None:
        low = keyword.lower()
        for i, n in enumerate(self.names):
            if n is not None and n.lower() == low:
                return i
        return None

    def spelling(self, keyword: str) -> str:
        """The existing spelling of a keyword (case-insensitive match), else itself."""
        i = self.index_of(keyword)
        return self.names[i] or keyword if i is not None else keyword

    def assign(self, keywords: Iterable[str]) -> dict[str, int]:
        """Indexes for all keywords, allocating free slots; raise if some do not fit."""
        out: dict[str, int] = {}
        missing: list[str] = []
        for k in sorted(set(keywords)):
            i = self.index_of(k)
            if i is None:
                if k.lower() not in {m.lower() for m in missing}:
                    missing.append(k)
            else:
                out[k] = i
        free = [i for i, n in enumerate(self.names) if n is None]
        if len(missing) > len(free):
            lost = missing[len(free):]
            raise TooManyKeywordsError(
                "Maildir file names hold at most 26 keywords; these do not fit: " + ", ".join(lost)
            )
        for k, i in zip(missing, free):
            self.names[i] = k
            out[k] = i
            self.changed = True
        for k in keywords:
            if k not in out:
                out[k] = self.index_of(k)  # type: ignore[assignment]
        return out

    def format(self) -> bytes:
        return "".join(f"{i} {n}\n" for i, n in enumerate(self.names) if n is not None).encode(
            "utf-8", "surrogateescape"
        )


def read(path: str) -> tuple[Keywords, os.stat_result | None]:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            return Keywords.parse(f.read()), st
    except FileNotFoundError:
        return Keywords(), None
    except OSError as e:
        raise StorageError(f"Cannot read {path}: {e.strerror}") from None


def write(path: str, kw: Keywords, old_stat: os.stat_result | None, *, fsync: bool = True,
          chown: Callable[[str], None] | None = None) -> None:
    """Write through ``dovecot-keywords.lock`` renamed over the file (uidlist lock held)."""
    lock = DotLock(path, timeout=30, stale_after=120, abandoned_after=ABANDONED_AFTER)
    try:
        lock.acquire()
        try:
            lock.write_content(kw.format(), fsync=fsync)
            if chown:
                chown(lock.path)
            if old_stat is not None:
                # Dovecot compares whole-second mtimes: make sure it moves on.
                new_sec = max(int(os.stat(lock.path).st_mtime), int(old_stat.st_mtime) + 1)
                os.utime(lock.path, (new_sec, new_sec))
            lock.replace_target()
        finally:
            lock.release()
    except OSError as e:
        raise StorageError(f"Cannot write {path}: {e.strerror}") from None
    kw.changed = False


__all__ = ["Keywords", "TooManyKeywordsError", "read", "write", "FILENAME", "MAX_KEYWORDS"]
