"""dsync_core.mutf7: IMAP modified UTF-7 (RFC 3501 5.1.3)."""

from __future__ import annotations

import pytest

from dsync_core import mutf7
from dsync_core.errors import InvalidNameError

PAIRS = [
    ("Entwürfe", "Entw&APw-rfe"),
    ("a&b", "a&-b"),
    ("&", "&-"),
    ("INBOX", "INBOX"),
    # RFC 3501 5.1.3's example.
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("☺!", "&Jjo-!"),
    ("😀", "&2D3eAA-"),  # outside the BMP: a UTF-16 surrogate pair
    ("Ä&Ö", "&AMQ-&-&ANY-"),
    ("tab\there", "tab&AAk-here"),
    ("&ü", "&-&APw-"),
    ("ü&", "&APw-&-"),
]


@pytest.mark.parametrize(("text", "encoded"), PAIRS)
def test_encode_decode(text: str, encoded: str) -> None:
    assert mutf7.encode(text) == encoded
    assert mutf7.decode(encoded) == text


@pytest.mark.parametrize("text", ["", "plain ascii ~!@#$%^*()", "日本語テキスト", "mixé & ñ/x", "\u00a0nbsp"])
def test_round_trip(text: str) -> None:
    enc = mutf7.encode(text)
    assert all(0x20 <= ord(c) <= 0x7E for c in enc)
    assert mutf7.decode(enc) == text


@pytest.mark.parametrize(
    "bad",
    [
        "&",  # unterminated
        "&Jjo",  # unterminated
        "Entwürfe",  # raw 8-bit
        "a\x01b",  # control character
        "&AGE-",  # encodes printable ASCII 'a'
        "&AA-",  # odd number of bytes
        "&2D0-",  # lone surrogate
        "&Jj!o-",  # not base64
        "&Jjo=-",  # padding is not part of modified BASE64
        "&APw/-",  # '/' is spelled ',' in modified BASE64
        "&AP w-",
        "&APw-&APw-",  # two adjacent runs: Dovecot (and RFC 3501) want one
    ],
)
def test_invalid(bad: str) -> None:
    with pytest.raises(InvalidNameError, match="Invalid modified UTF-7"):
        mutf7.decode(bad)
