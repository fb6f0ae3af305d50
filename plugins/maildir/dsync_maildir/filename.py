"""Maildir file names: ``<base>[,S=n][,W=n][:2,FLAGS[,other]]``.

The base name (everything before the first ``:``) identifies a message; the info part
after ``:2,`` carries flag letters in ASCII order. Letters we do not manage (``P`` and
anything unknown) are kept when flags change, as Dovecot does.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time

import attrs

from dsync_core.lock import hostname

log = logging.getLogger("dsync.maildir")

#: Maildir letter <-> IMAP system flag.
LETTER_TO_FLAG = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
FLAG_TO_LETTER = {v: k for k, v in LETTER_TO_FLAG.items()}
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"

_BAD_CHARS = ("/", "\x00", "\r", "\n")


@attrs.frozen
class MaildirName:
    """A parsed file name inside ``cur/`` or ``new/``."""

    name: str
    base: str
    info: str | None  # text after the first ':' or None

    @property
    def letters(self) -> str:
        """The flag letters (only for a ``2,`` info part)."""
        if self.info is None or not self.info.startswith("2,"):
            return ""
        return self.info[2:].split(",", 1)[0]

    @property
    def size(self) -> int | None:
        return base_field(self.base, "S")

    @property
    def vsize(self) -> int | None:
        return base_field(self.base, "W")


def parse_name(name: str) -> MaildirName | None:
    """Parse a directory entry; ``None`` (with a warning) for names Dovecot would ignore."""
    if not name or name.startswith("."):
        return None  # hidden files are not messages; no warning (Dovecot is silent too)
    if any(c in name for c in _BAD_CHARS):
        log.warning("Ignoring Maildir file with invalid characters in its name: %r", name)
        return None
    base, sep, info = name.partition(":")
    if not base:
        log.warning("Ignoring Maildir file with an empty base name: %r", name)
        return None
    return MaildirName(name=name, base=base, info=info if sep else None)


def base_field(base: str, key: str) -> int | None:
    """Value of ``,<key>=<digits>`` in the base name, or ``None``."""
    parts = base.split(",")
    for p in parts[1:]:
        if p.startswith(key + "=") and p[2:].isdigit():
            return int(p[2:])
    return None


@functools.lru_cache(maxsize=1024)
def flags_from_letters(letters: str) -> frozenset[str]:
    return frozenset(LETTER_TO_FLAG[c] for c in letters if c in LETTER_TO_FLAG)


def keyword_indexes(letters: str) -> list[int]:
    return sorted({ord(c) - ord("a") for c in letters if "a" <= c <= "z"})


def letters_for(flags: frozenset[str], keyword_idx: list[int] | set[int]) -> str:
    out = {FLAG_TO_LETTER[f] for f in flags if f in FLAG_TO_LETTER}
    out.update(KEYWORD_LETTERS[i] for i in keyword_idx)
    return "".join(sorted(out))


def with_letters(name: MaildirName, managed: str) -> str:
    """The file name with managed letters (DFRST, a-z) replaced by ``managed``.

    Unknown letters (and ``P``) are kept; all letters end up in ASCII order; any
    ``,other`` fields after the flags are kept.
    """
    rest = ""
    if name.info is not None and name.info.startswith("2,"):
        old, _, rest = name.info[2:].partition(",")
        rest = "," + rest if _ else ""
        keep = {c for c in old if c not in LETTER_TO_FLAG and not ("a" <= c <= "z")}
    else:
        keep = set()
    letters = "".join(sorted(keep | set(managed)))
    if not letters and not rest:
        if name.info is None:
            return name.base
        return name.base + ":2,"
    return f"{name.base}:2,{letters}{rest}"


def valid_base(base: str) -> bool:
    """Whether a string can be used as a base name (a GUID kept as the file name)."""
    return bool(base) and not base.startswith(".") and not any(c in base for c in (*_BAD_CHARS, ":"))


@functools.cache
def _hostname() -> str:
    host = hostname() or "localhost"
    return host.replace("/", "\\057").replace(":", "\\072")


_last: tuple[int, int] = (0, 0)


def generate_base() -> str:
    """``<secs>.M<usecs>P<pid>.<hostname>``, unique within this process like Dovecot's."""
    global _last
    now = time.time_ns() // 1000
    secs, usecs = divmod(now, 1_000_000)
    if (secs, usecs) <= _last:
        secs, usecs = _last[0], _last[1] + 1
        if usecs >= 1_000_000:
            secs, usecs = secs + 1, 0
    _last = (secs, usecs)
    return f"{secs}.M{usecs}P{os.getpid()}.{_hostname()}"


def new_file_sort_key(base: str) -> tuple[int, int, bytes]:
    """Dovecot's order for files it has no UID for: seconds, then ``M<usecs>``, then name."""
    m = re.match(r"^(\d+)\.M(\d+)", base) or re.match(r"^(\d+)", base)
    secs = int(m.group(1)) if m else 0
    usecs = int(m.group(2)) if m and m.re.groups == 2 else 0
    return (secs, usecs, base.encode("utf-8", "surrogateescape"))


__all__ = [
    "MaildirName",
    "parse_name",
    "base_field",
    "flags_from_letters",
    "keyword_indexes",
    "letters_for",
    "with_letters",
    "valid_base",
    "generate_base",
    "new_file_sort_key",
    "LETTER_TO_FLAG",
    "FLAG_TO_LETTER",
]
