"""Dovecot's ``subscriptions`` file (version 2, with version 1 read too).

Version 2 starts ``V\\t2\\n\\n``; each line is a storage name with hierarchy levels joined by
TAB and each level tab-escaped (0x01 -> 0x01 '1', TAB -> 0x01 't', CR -> 0x01 'r',
LF -> 0x01 'n', NUL -> 0x01 '0'). Rewritten under a dotlock, then renamed into place.
"""

from __future__ import annotations

from .errors import StorageError
from .lock import ABANDONED_AFTER, DotLock

_ESC = {"\x01": "\x011", "\t": "\x01t", "\r": "\x01r", "\n": "\x01n", "\x00": "\x010"}
_UNESC = {v[1]: k for k, v in _ESC.items()}


def tab_escape(s: str) -> str:
    return "".join(_ESC.get(c, c) for c in s)


def tab_unescape(s: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\x01" and i + 1 < len(s):
            out.append(_UNESC.get(s[i + 1], s[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def read_subscriptions(path: str, v1_separator: str = ".") -> list[list[str]]:
    """Subscribed storage names, each as its list of hierarchy levels."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise StorageError(f"Cannot read {path}: {e.strerror}") from None
    lines = text.split("\n")
    out: list[list[str]] = []
    if lines and lines[0] == "V\t2":
        for line in lines[1:]:
            if line:
                out.append([tab_unescape(p) for p in line.split("\t")])
    else:
        for line in lines:
            line = line.rstrip("\r")
            if line:
                out.append(line.split(v1_separator))
    return out


def write_subscriptions(path: str, names: list[list[str]]) -> None:
    """Rewrite the file atomically (dotlock, temp file, fsync, rename)."""
    seen: set[tuple[str, ...]] = set()
    lines = ["V\t2", ""]
    for levels in names:
        key = tuple(levels)
        if key in seen:
            continue
        seen.add(key)
        lines.append("\t".join(tab_escape(p) for p in levels))
    data = ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")
    try:
        with DotLock(path, timeout=30, stale_after=120, abandoned_after=ABANDONED_AFTER) as lock:
            # Dovecot writes the new content into the .lock file, then renames it over.
            lock.write_content(data)
            lock.replace_target()
    except OSError as e:
        raise StorageError(f"Cannot write {path}: {e.strerror}") from None


__all__ = ["read_subscriptions", "write_subscriptions", "tab_escape", "tab_unescape"]
