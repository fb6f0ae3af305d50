"""dsync_core.mailboxlog: Dovecot's dovecot.mailbox.log."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dsync_core.mailboxlog import RECORD, ROTATE_SIZE, append_log, name_hash, read_log
from dsync_core.model import MailboxLogRecord, MailboxLogType

# Written by Dovecot 2.3.19: `doveadm mailbox create -s Archive/2024 Entwürfe` then
# `doveadm mailbox subscribe INBOX` (namespace separator '/').
DOVECOT_LOG = bytes.fromhex(
    "040000009857882c594eb1a582415bbf064abfe66b058420"
    "040000006410008c457778ad7e55a8c74b7088276b058420"
    "04000000dc063b45c92f64f79f0d1ed01e6d5b316b058420"
)
G1 = "0123456789abcdef0123456789abcdef"


def test_name_hash_is_sha1_prefix() -> None:
    assert name_hash("INBOX") == hashlib.sha1(b"INBOX").digest()[:16].hex()
    assert name_hash("Entwürfe") == hashlib.sha1("Entwürfe".encode()).digest()[:16].hex()
    assert len(name_hash("x")) == 32


def test_reads_dovecot_written_log(tmp_path: Path) -> None:
    p = tmp_path / "dovecot.mailbox.log"
    p.write_bytes(DOVECOT_LOG)
    recs = read_log(str(p))
    assert [r.type for r in recs] == [MailboxLogType.SUBSCRIBE] * 3
    assert [r.guid for r in recs] == [name_hash("Archive/2024"), name_hash("Entwürfe"), name_hash("INBOX")]
    assert {r.timestamp for r in recs} == {0x6B058420}


def test_write_matches_dovecot_bytes(tmp_path: Path) -> None:
    p = str(tmp_path / "dovecot.mailbox.log")
    ts = 0x6B058420
    append_log(p, [MailboxLogRecord(MailboxLogType.SUBSCRIBE, name_hash(n), ts) for n in ("Archive/2024", "Entwürfe")])
    append_log(p, [MailboxLogRecord(MailboxLogType.SUBSCRIBE, name_hash("INBOX"), ts)])
    assert Path(p).read_bytes() == DOVECOT_LOG


def test_record_layout(tmp_path: Path) -> None:
    p = str(tmp_path / "log")
    append_log(p, [MailboxLogRecord(MailboxLogType.DELETE_MAILBOX, G1, 0x01020304)])
    assert Path(p).read_bytes() == b"\x01\x00\x00\x00" + bytes.fromhex(G1) + b"\x01\x02\x03\x04"
    assert RECORD.size == 24


def test_round_trip_all_writable_types(tmp_path: Path) -> None:
    p = str(tmp_path / "log")
    types = [
        MailboxLogType.DELETE_MAILBOX,
        MailboxLogType.DELETE_DIR,
        MailboxLogType.RENAME,
        MailboxLogType.SUBSCRIBE,
        MailboxLogType.UNSUBSCRIBE,
    ]
    recs = [MailboxLogRecord(t, name_hash(str(i)), 1_700_000_000 + i) for i, t in enumerate(types)]
    append_log(p, recs)
    assert read_log(p) == recs
    append_log(p, [])
    assert os.path.getsize(p) == 5 * 24


def test_rotation_at_4k(tmp_path: Path) -> None:
    p = str(tmp_path / "dovecot.mailbox.log")
    recs = [MailboxLogRecord(MailboxLogType.RENAME, name_hash(f"box{i}"), 1000 + i) for i in range(400)]
    for r in recs[:171]:
        append_log(p, [r])
    # 171 * 24 = 4104 >= 4096: not rotated yet, the next append rotates first.
    assert not os.path.exists(p + ".2")
    assert os.path.getsize(p) == 171 * 24
    append_log(p, [recs[171]])
    assert os.path.getsize(p + ".2") == 171 * 24
    assert os.path.getsize(p) == 24
    assert read_log(p) == recs[:172], ".2 is read first, then the current file"
    for r in recs[172:]:
        append_log(p, [r])
    # A second rotation overwrote the first .2: the oldest records are gone, order kept.
    got = read_log(p)
    assert got == recs[len(recs) - len(got) :]
    assert len(got) < len(recs)
    assert os.path.getsize(p) < ROTATE_SIZE + 24


def test_broken_and_unknown_records_skipped(tmp_path: Path) -> None:
    p = tmp_path / "log"
    good = RECORD.pack(3, bytes.fromhex(G1), 5)
    unknown = RECORD.pack(9, bytes.fromhex(G1), 6)
    zero_guid = RECORD.pack(1, bytes(16), 7)
    p.write_bytes(good + unknown + zero_guid + good[:10])
    assert read_log(str(p)) == [MailboxLogRecord(MailboxLogType.RENAME, G1, 5)]


def test_missing_log_is_empty(tmp_path: Path) -> None:
    assert read_log(str(tmp_path / "nope")) == []


@pytest.mark.parametrize(
    "rec",
    [
        MailboxLogRecord(MailboxLogType.CREATE_DIR, G1, 1),  # Dovecot 2.3 would delete the log
        MailboxLogRecord(MailboxLogType.RENAME, "00" * 16, 1),
        MailboxLogRecord(MailboxLogType.RENAME, "abcd", 1),
    ],
)
def test_refuses_records_dovecot_cannot_read(tmp_path: Path, rec: MailboxLogRecord) -> None:
    p = tmp_path / "log"
    with pytest.raises(ValueError):
        append_log(str(p), [rec])
    assert not p.exists()
