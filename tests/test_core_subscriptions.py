"""dsync_core.subscriptions: Dovecot's subscriptions file."""

from __future__ import annotations

import os
from pathlib import Path

from dsync_core.subscriptions import read_subscriptions, tab_escape, tab_unescape, write_subscriptions

# Written by Dovecot 2.3.19 (`doveadm mailbox create -s Archive/2024 Entwürfe`, then
# `doveadm mailbox subscribe INBOX`).
DOVECOT_FILE = b"V\t2\n\nArchive\t2024\nEntw&APw-rfe\nINBOX\n"


def test_reads_dovecot_file(tmp_path: Path) -> None:
    p = tmp_path / "subscriptions"
    p.write_bytes(DOVECOT_FILE)
    assert read_subscriptions(str(p)) == [["Archive", "2024"], ["Entw&APw-rfe"], ["INBOX"]]


def test_writes_dovecot_bytes(tmp_path: Path) -> None:
    p = tmp_path / "subscriptions"
    write_subscriptions(str(p), [["Archive", "2024"], ["Entw&APw-rfe"], ["INBOX"], ["INBOX"]])
    assert p.read_bytes() == DOVECOT_FILE
    assert sorted(os.listdir(tmp_path)) == ["subscriptions"], "no lock or temp file left behind"


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "subscriptions"
    write_subscriptions(str(p), [])
    assert p.read_bytes() == b"V\t2\n\n"
    assert read_subscriptions(str(p)) == []


def test_escaping(tmp_path: Path) -> None:
    levels = ["a\tb", "c\x01d", "e\nf\rg", "h\x00i"]
    assert tab_escape("a\tb\x01\r\n\x00") == "a\x01tb\x011\x01r\x01n\x010"
    assert tab_unescape(tab_escape("a\tb\x01\r\n\x00z")) == "a\tb\x01\r\n\x00z"
    p = tmp_path / "subscriptions"
    write_subscriptions(str(p), [levels])
    assert p.read_bytes() == b"V\t2\n\na\x01tb\tc\x011d\te\x01nf\x01rg\th\x010i\n"
    assert read_subscriptions(str(p)) == [levels]


def test_rewrite_replaces(tmp_path: Path) -> None:
    p = str(tmp_path / "subscriptions")
    write_subscriptions(p, [["A"], ["B"]])
    write_subscriptions(p, [["B"]])
    assert read_subscriptions(p) == [["B"]]


def test_version_1(tmp_path: Path) -> None:
    p = tmp_path / "subscriptions"
    p.write_bytes(b"INBOX\nArchive.2024\r\n\nLists.dev\n")
    assert read_subscriptions(str(p)) == [["INBOX"], ["Archive", "2024"], ["Lists", "dev"]]
    p.write_bytes(b"Archive/2024\n")
    assert read_subscriptions(str(p), v1_separator="/") == [["Archive", "2024"]]


def test_missing_file(tmp_path: Path) -> None:
    assert read_subscriptions(str(tmp_path / "nope")) == []
