"""Unit tests of the core pieces the dbox plugin stands on: dbox files and index logs."""

from __future__ import annotations

import io
import os
import struct

import pytest

from dsync_core import dbox
from dsync_core import dovecot_index as di
from dsync_core.dovecot_index import logfile as lf
from dsync_core.errors import CorruptError, ExistsError

GUID = bytes.fromhex("0123456789abcdef0123456789abcdef")


def worked_example() -> lf.Transaction:
    """storage-formats §8: two messages, keywords, next UID 12."""
    tx = lf.Transaction()
    tx.ext_intro("dbox-hdr", hdr_size=24)
    tx.ext_hdr_update(0, struct.pack("<I", 0) + GUID + bytes(4))
    tx.header_u32(24, 1234567890)
    tx.append([(5, 0x08), (9, 0x02)])
    tx.keyword_update("$Junk", True, [9])
    tx.keyword_update("Work", True, [9])
    tx.header_u32(28, 12)
    return tx


def test_worked_example_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    di.create_log(str(tmp_path), worked_example(), indexid=1700000000, fsync=False)
    data = (tmp_path / "dovecot.index.log").read_bytes()
    assert len(data) == 248
    assert data[0x28:0x34] == bytes.fromhex("80808083 00000810 c0000000")
    assert data[0x7C:0x8C] == bytes.fromhex("80808084 20000010 18000400 d2029649")
    assert data[0xA4:0xB0] == bytes.fromhex("80808087 00040010 00000500")
    assert data[0xD8:0xE8] == bytes.fromhex("80808084 20000010 1c000400 0c000000")
    assert data[0xE8:] == bytes.fromhex("80808084 20000010 40000400 f8000000")
    st = di.IndexState.load(str(tmp_path))
    assert (st.uid_validity, st.next_uid, st.highest_modseq) == (1234567890, 12, 4)
    assert {u: (di.bits_to_flags(m.flags), m.keywords) for u, m in st.messages.items()} == {
        5: ({"\\Seen"}, set()), 9: ({"\\Flagged"}, {"$Junk", "Work"})}
    assert st.ext_header("dbox-hdr")[4:20] == GUID
    assert st.keywords == ["$Junk", "Work"]
    with pytest.raises(ExistsError):
        di.create_log(str(tmp_path), worked_example(), fsync=False)


def test_append_refresh_and_truncated_tail(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = str(tmp_path)
    di.create_log(d, worked_example(), fsync=False)
    st = di.IndexState.load(d)

    def build(s: di.IndexState):  # type: ignore[no-untyped-def]
        tx = lf.Transaction()
        tx.append([(s.next_uid, 0)])
        tx.flag_update([(5, 5, 0, 0x08)])
        tx.expunge_guid([(9, di.guid_128("not-a-hex-guid@example.org"))])
        return tx, s.next_uid

    st2, uid = di.append_transaction(d, build, state=st, fsync=False)
    assert st2 is st, "the state must continue incrementally"
    assert uid == 12 and sorted(st.messages) == [5, 12]
    assert st.messages[5].flags == 0 and st.messages[5].modseq == 6
    assert [(e.uid, e.modseq) for e in st.expunges_since(6)] == [(9, 7)]
    assert st.expunges[0].guid == di.guid_128("not-a-hex-guid@example.org")
    fresh = di.IndexState.load(d)
    assert {u: (m.flags, m.modseq) for u, m in fresh.messages.items()} == {
        u: (m.flags, m.modseq) for u, m in st.messages.items()}
    assert fresh.highest_modseq == st.highest_modseq == 7
    # A transaction cut short by a crash is invisible to readers and blocks writers.
    with open(os.path.join(d, "dovecot.index.log"), "ab") as f:
        f.write(lf.Transaction().encode() + worked_example().encode()[:40])
    assert di.IndexState.load(d).highest_modseq == 7
    with pytest.raises(CorruptError):
        di.append_transaction(d, build, fsync=False)


def test_dbox_file_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    body = b"Subject: hi\n\nhello\n"
    path = str(tmp_path / "u.1")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size, vsize = dbox.write_message(fd, io.BytesIO(body), {"R": "6553f0c4", "G": "5f3c" * 8, "Q": "kept"},
                                         create_time=0x6553F100)
    finally:
        os.close(fd)
    raw = open(path, "rb").read()
    assert raw == (b"2 M1e C6553f100\n\x01\x02N          0000000000000013\n" + body
                   + b"\n\x01\x03\nR6553f0c4\nV16\nG" + b"5f3c" * 8 + b"\nQkept\n\n")
    assert (size, vsize) == (19, 22)
    msg = dbox.read_single(path)
    assert (msg.guid, msg.received, msg.vsize, msg.body_size, msg.metadata["Q"]) == ("5f3c" * 8, 0x6553F0C4, 22, 19,
                                                                                    "kept")
    with dbox.open_body(path) as f:
        assert f.read(5) + f.read() == body
    with open(path, "r+b") as f:
        f.seek(16)
        f.write(b"XX")
    with pytest.raises(CorruptError):
        dbox.read_single(path)
