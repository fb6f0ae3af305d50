"""Server folder names <-> dsync names (``/``-separated, Unicode).

The server's LIST gives each folder its hierarchy separator (``.``, ``/``, anything) and a
name in modified UTF-7 (RFC 3501 5.1.3). A dsync name splits at the server's separator and
decodes each level; a ``/`` inside a level (possible when the server's separator is ``.``)
becomes ``dsync_alt_char`` (``_``), as Dovecot does with characters a side can't store.
``imapc_list_prefix`` (e.g. ``INBOX`` on a Courier-style server whose folders all live under
``INBOX.``) is stripped from names, and added back when a folder is created.
"""

from __future__ import annotations

import attrs

from dsync_core import mutf7
from dsync_core.errors import InvalidNameError


@attrs.frozen
class ServerFolder:
    raw: str  # as the server spells it (modified UTF-7)
    name: str  # dsync name
    sep: str
    selectable: bool
    special_use: str = ""


def _decode_level(level: str) -> str:
    try:
        return mutf7.decode(level)
    except (InvalidNameError, ValueError):
        return level  # not valid modified UTF-7: some servers send UTF-8 or raw bytes; keep it


def to_name(raw: str, sep: str, prefix: str, alt: str) -> str | None:
    """The dsync name of a server folder, or None when it is outside ``prefix``."""
    if raw.upper() == "INBOX":
        return "INBOX"
    if prefix:
        p = prefix if prefix.endswith(sep) or not sep else prefix + sep
        if raw == prefix or raw.upper() == "INBOX" and prefix.upper() == "INBOX":
            return "INBOX"
        if not raw.startswith(p):
            return None
        raw = raw[len(p):]
    levels = raw.split(sep) if sep else [raw]
    out = [_decode_level(lv).replace("/", alt) for lv in levels]
    if out and out[0].upper() == "INBOX":
        out[0] = "INBOX"
    return "/".join(out)


def to_raw(name: str, sep: str, prefix: str) -> str:
    """The server name for a dsync name (for CREATE / RENAME / SELECT of a new folder)."""
    if name == "INBOX":
        return "INBOX"
    levels = name.split("/")
    for lv in levels:
        if sep and sep in lv:
            raise InvalidNameError(f"Invalid mailbox name {name!r}: contains the server's separator {sep!r}")
    raw = (sep or "/").join(mutf7.encode(lv) for lv in levels)
    if prefix:
        raw = prefix.rstrip(sep) + sep + raw
    return raw
