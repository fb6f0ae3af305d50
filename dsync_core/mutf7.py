"""IMAP modified UTF-7 (RFC 3501 section 5.1.3), the on-disk form of Dovecot folder names."""

from __future__ import annotations

import base64
import re

from .errors import InvalidNameError


def _b64_encode(chunk: str) -> str:
    raw = chunk.encode("utf-16-be", "surrogatepass")
    return base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")


def encode(name: str) -> str:
    """``Entwürfe`` -> ``Entw&APw-rfe``."""
    out: list[str] = []
    pending: list[str] = []
    for ch in name:
        o = ord(ch)
        if 0x20 <= o <= 0x7E:
            if pending:
                out.append("&" + _b64_encode("".join(pending)) + "-")
                pending = []
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    if pending:
        out.append("&" + _b64_encode("".join(pending)) + "-")
    return "".join(out)


# Modified BASE64: RFC 2045 BASE64 with ',' for '/' and no '=' padding.
_MBASE64 = re.compile(r"[A-Za-z0-9+,]+")


def decode(text: str) -> str:
    """``Entw&APw-rfe`` -> ``Entwürfe``; a malformed string is an :class:`InvalidNameError`."""
    out: list[str] = []
    i = 0
    n = len(text)
    prev_encoded_end = -1  # where the last encoded run ended, to refuse "&..-&..-"
    while i < n:
        ch = text[i]
        o = ord(ch)
        if o < 0x20 or o > 0x7E:
            raise InvalidNameError(f"Invalid modified UTF-7 name {text!r}: raw non-ASCII character")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise InvalidNameError(f"Invalid modified UTF-7 name {text!r}: unterminated '&'")
        chunk = text[i + 1 : end]
        if chunk == "":
            out.append("&")
            i = end + 1
            continue
        # Dovecot refuses these as RFC 3501 does: one run per non-ASCII stretch, no '='.
        if i == prev_encoded_end:
            raise InvalidNameError(f"Invalid modified UTF-7 name {text!r}: adjacent encoded runs")
        if not _MBASE64.fullmatch(chunk):
            raise InvalidNameError(f"Invalid modified UTF-7 name {text!r}: bad modified BASE64 {chunk!r}")
        i = prev_encoded_end = end + 1
        b64 = chunk.replace(",", "/")
        b64 += "=" * (-len(b64) % 4)
        try:
            raw = base64.b64decode(b64, validate=True)
            decoded = raw.decode("utf-16-be")
        except (ValueError, UnicodeDecodeError):
            raise InvalidNameError(f"Invalid modified UTF-7 name {text!r}") from None
        if any(0x20 <= ord(c) <= 0x7E for c in decoded):
            raise InvalidNameError(f"Invalid modified UTF-7 name {text!r}: encoded printable ASCII")
        out.append(decoded)
    return "".join(out)


__all__ = ["encode", "decode"]
