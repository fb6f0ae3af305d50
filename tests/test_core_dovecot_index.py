"""HIGHESTMODSEQ from Dovecot's transaction log, on hand-made logs (real ones: interop tests)."""

from __future__ import annotations

import struct

from dsync_core import dovecot_index as di


def _size(n: int) -> bytes:
    v = n // 4
    return bytes([0x80 | ((v >> 21) & 0x7F), 0x80 | ((v >> 14) & 0x7F), 0x80 | ((v >> 7) & 0x7F), 0x80 | (v & 0x7F)])


def _rec(rtype: int, payload: bytes) -> bytes:
    return _size(8 + len(payload)) + struct.pack("<I", rtype) + payload


def _log(*records: bytes, initial: int = 1) -> bytes:
    hdr = struct.pack("<BBHIIIII", 1, 3, 40, 1700000000, 1, 0, 0, 1700000000) + struct.pack("<Q", initial)
    hdr += bytes([1]) + bytes(7)
    assert len(hdr) == 40
    return hdr + b"".join(records)


def test_size_encoding_examples_from_the_format_notes() -> None:
    assert _size(12) == bytes.fromhex("80808083")
    assert _size(1000) == bytes.fromhex("808081fa")


def test_counts_one_per_record_not_per_message(tmp_path) -> None:  # type: ignore[no-untyped-def]
    append = _rec(di.T_APPEND | di.EXTERNAL, struct.pack("<IB3x", 1, 0) + struct.pack("<IB3x", 2, 0))
    kw = _rec(di.T_KEYWORD_UPDATE, struct.pack("<BxH", 0, 4) + b"Work" + struct.pack("<II", 1, 2))
    flags_internal = _rec(di.T_FLAG_UPDATE, struct.pack("<IIBBBx", 1, 2, 0x80, 0, 0))
    flags_seen = _rec(di.T_FLAG_UPDATE, struct.pack("<IIBBBx", 1, 1, 0x08, 0, 0))
    expunge_request = _rec(di.T_EXPUNGE, struct.pack("<II", 2, 2))  # not external: a pending request
    expunge = _rec(di.T_EXPUNGE | di.EXTERNAL, struct.pack("<II", 2, 2))
    p = tmp_path / "dovecot.index.log"
    p.write_bytes(_log(append, kw, flags_internal, flags_seen, expunge_request, expunge))
    # initial 1, +APPEND, +KEYWORD_UPDATE, +FLAG_UPDATE(\Seen), +external EXPUNGE
    assert di.log_highest_modseq(str(p)) == 5
    assert di.highest_modseq(str(tmp_path)) == 5


def test_modseq_update_raises_and_truncated_tail_is_ignored(tmp_path) -> None:  # type: ignore[no-untyped-def]
    append = _rec(di.T_APPEND | di.EXTERNAL, struct.pack("<IB3x", 1, 0))
    raise_to = _rec(di.T_MODSEQ_UPDATE, struct.pack("<III", 1, 40, 0))
    half = _rec(di.T_APPEND | di.EXTERNAL, struct.pack("<IB3x", 2, 0))[:-3]
    p = tmp_path / "dovecot.index.log"
    p.write_bytes(_log(append, raise_to, half, initial=7))
    assert di.log_highest_modseq(str(p)) == 40


def test_partial_transaction_behind_a_boundary_is_not_counted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    append = _rec(di.T_APPEND | di.EXTERNAL, struct.pack("<IB3x", 1, 0))
    boundary = _rec(di.T_BOUNDARY | di.EXTERNAL, struct.pack("<I", 12 + len(append) + 100))
    p = tmp_path / "dovecot.index.log"
    p.write_bytes(_log(boundary, append))
    assert di.log_highest_modseq(str(p)) == 1


def test_missing_or_garbage_gives_none(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert di.highest_modseq(str(tmp_path)) is None
    (tmp_path / "dovecot.index.log").write_bytes(b"\x00garbage")
    (tmp_path / "dovecot.index").write_bytes(b"\x07" + bytes(50))
    assert di.highest_modseq(str(tmp_path)) is None
