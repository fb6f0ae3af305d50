"""dsync_core.storage: mailbox name validation."""

from __future__ import annotations

import pytest

from dsync_core.errors import InvalidNameError
from dsync_core.storage import MAX_NAME_BYTES, MAX_NAME_LEVELS, normalize_mailbox_name, parent_names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("inbox", "INBOX"),
        ("Inbox/Sub", "INBOX/Sub"),
        ("INBOX", "INBOX"),
        ("INBOXES", "INBOXES"),
        ("Archive/inbox", "Archive/inbox"),
        ("Entwürfe", "Entwürfe"),
        ("a b/..c/d.", "a b/..c/d."),
        ("a&b", "a&b"),
    ],
)
def test_normalize(name: str, expected: str) -> None:
    assert normalize_mailbox_name(name) == expected


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("/abs", "begins with"),
        ("a/", "ends with"),
        ("a//b", "empty hierarchy level"),
        ("../x", "'..'"),
        ("a/./b", "'.'"),
        ("a\x01b", "control character"),
        ("a\tb", "control character"),
        ("a\x7fb", "control character"),
        ("a\x85b", "control character"),
        ("a\ud800b", "control character"),
        (b"INBOX", "not a string"),
    ],
)
def test_invalid(name: str, why: str) -> None:
    with pytest.raises(InvalidNameError, match="Invalid mailbox name") as ei:
        normalize_mailbox_name(name)
    assert why in str(ei.value)


def test_limits() -> None:
    ok = "x" * MAX_NAME_BYTES
    assert normalize_mailbox_name(ok) == ok
    with pytest.raises(InvalidNameError, match="longer than"):
        normalize_mailbox_name(ok + "x")
    with pytest.raises(InvalidNameError, match="longer than"):
        normalize_mailbox_name("ü" * (MAX_NAME_BYTES // 2 + 1))  # counts bytes, not characters
    deep = "/".join(["d"] * MAX_NAME_LEVELS)
    assert normalize_mailbox_name(deep) == deep
    with pytest.raises(InvalidNameError, match="levels"):
        normalize_mailbox_name(deep + "/d")


def test_parent_names() -> None:
    assert parent_names("a/b/c") == ["a", "a/b"]
    assert parent_names("a") == []
